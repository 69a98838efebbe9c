"""swarmbus-priority: command wakes. For a woken message, run a command chosen by its priority,
sender or subject (``[plugins.priority]``), or ``wake.command`` (``swarmbus start --invoke``).

- argv only, never a shell; the body on stdin; the envelope in ``SWARMBUS_*`` variables; the
  scrubbed environment of :func:`swarmbus.scrubbed_env` (no broker credentials);
- a timeout after which the command's whole process group is killed;
- a concurrency limit per priority (optionally batching the messages that wait for it);
- exit status, duration and the tail of the output recorded with the ``wake`` delivery
  (``swarmbus inbox``).

Hooks: ``swarmbus_settings_sections`` (``[plugins.priority]``), ``swarmbus_wake`` (``trylast``,
so a host plugin that wakes its host answers first) and ``swarmbus_doctor_checks``
(``wake-command``). It imports only the public ``swarmbus`` API.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel

from swarmbus import (
    CheckResult,
    DoctorCheck,
    DoctorContext,
    HandlerContext,
    Settings,
    StoredMessage,
    WakeDecision,
    WakeOutcome,
    hookimpl,
    program_problem,
)
from swarmbus_priority.config import NAME, PrioritySettings, bucket, command_for, config, configured_commands
from swarmbus_priority.runner import Run, batch_input, child_environment, run_command
from swarmbus_priority.slots import run_batched, run_limited

__version__ = "0.1.0"
__all__ = ["NAME", "PrioritySettings", "child_environment", "command_for", "wake_with_command"]


# -- settings ---------------------------------------------------------------------------------
@hookimpl
def swarmbus_settings_sections(register: Callable[[str, type[BaseModel]], None]) -> None:
    register(NAME, PrioritySettings)


# -- the waker --------------------------------------------------------------------------------
async def wake_with_command(argv: list[str], message: StoredMessage, context: HandlerContext) -> WakeOutcome:
    """Run ``argv`` for ``message`` within its priority's limit (batched when configured); the
    outcome's ``detail`` is :meth:`Run.detail` (exit status, duration in ms, output tail) and
    ``exit_code`` the command's (None when it timed out or could not start)."""
    cfg = config(context.settings)
    name = bucket(message)
    limit = cfg.limit(name)

    async def once() -> Run:
        env = child_environment(message, context.agent_id)
        return await run_command(argv, message.body.encode("utf-8"), env, cfg.timeout)

    async def together(messages: list[StoredMessage]) -> Run:
        stdin, env = batch_input(messages, context.agent_id)
        return await run_command(argv, stdin, env, cfg.timeout)

    if cfg.batch:
        run = await run_batched(name, limit, argv, message, together)
    else:
        run = await run_limited(name, limit, once)
    context.logger.info(
        "wake command %s for message %s: %s", argv[0], message.id, run.error or f"exited {run.exit_code}",
        extra={"message_id": message.id, "exit_code": run.exit_code, "duration_ms": run.duration_ms},
    )
    return WakeOutcome(run.ok, run.detail(), exit_code=run.exit_code)


@hookimpl(trylast=True)
def swarmbus_wake(message: StoredMessage, decision: WakeDecision, context: HandlerContext) -> object:
    argv = command_for(message, context.settings)
    if argv is None:
        return None
    return wake_with_command(argv, message, context)


# -- doctor -----------------------------------------------------------------------------------
def check_wake_commands(ctx: DoctorContext) -> CheckResult:
    """Every configured command's program can be started by the daemon (looked up on the PATH a
    wake child gets)."""
    commands = configured_commands(ctx.settings)
    if not commands:
        return CheckResult("skip", "no wake command configured (wake.command / --invoke, [plugins.priority])")
    problems = [f"{where}: {problem}" for where, argv in commands if (problem := program_problem(argv[0]))]
    if problems:
        return CheckResult("fail", f"the wake command cannot run: {'; '.join(problems)}; every such wake fails",
                           fix="install it, or give its full path (wake.command / --invoke, [plugins.priority])")
    names = ", ".join(sorted({argv[0] for _, argv in commands}))
    return CheckResult("ok", f"wake command {names} can be run")


@hookimpl
def swarmbus_doctor_checks(register: Callable[[DoctorCheck], None], settings: Settings) -> None:
    register(DoctorCheck("wake-command", check_wake_commands, order=75))
