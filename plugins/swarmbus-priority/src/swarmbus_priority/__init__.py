"""swarmbus-priority: command wakes. For a woken message, run a command chosen by its priority,
sender or subject (``[plugins.priority]``), or ``wake.command`` (``swarmbus start --invoke``).

- argv only, never a shell; the body on stdin; the envelope in ``SWARMBUS_*`` variables; the
  scrubbed environment of :func:`swarmbus.scrubbed_env` (no broker credentials);
- a timeout after which the command's whole process group is killed;
- a concurrency limit per priority;
- once per message, or (``batch = true``) once per coalesced wake for all its messages: the
  plugin answers ``swarmbus_wake_coalesce`` with ``batch``, and the core then hands it the
  messages that waited for the agent's previous wake in ``decision.batch``;
- exit status, duration and the tail of the output recorded with the ``wake`` delivery
  (``swarmbus inbox``).

Hooks: ``swarmbus_settings_sections`` (``[plugins.priority]``), ``swarmbus_wake`` and
``swarmbus_wake_coalesce`` (both ``trylast``, so a host plugin that wakes its host answers first)
and ``swarmbus_doctor_checks`` (``wake-command``). It imports only the public ``swarmbus`` API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

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
from swarmbus_priority.slots import run_limited

__version__ = "0.1.0"
__all__ = ["NAME", "PrioritySettings", "child_environment", "command_for", "wake_with_command"]


# -- settings ---------------------------------------------------------------------------------
@hookimpl
def swarmbus_settings_sections(register: Callable[[str, type[BaseModel]], None]) -> None:
    register(NAME, PrioritySettings)


# -- the waker --------------------------------------------------------------------------------
async def wake_with_command(argv: list[str], message: StoredMessage, context: HandlerContext) -> WakeOutcome:
    """Run ``argv`` for ``message`` within its priority's limit; the outcome's ``detail`` is
    :meth:`Run.detail` (exit status, duration in ms, output tail) and ``exit_code`` the command's
    (None when it timed out or could not start). With ``batch = true`` the input is a batch of one
    (one JSON envelope line on stdin, ``SWARMBUS_BATCH=1``)."""
    return await wake_messages([(argv, [message])], context)


async def wake_messages(groups: Sequence[tuple[list[str], list[StoredMessage]]], context: HandlerContext) -> WakeOutcome:
    """Run each ``(argv, messages)`` group's command, concurrently, each within the limit of its
    first message's priority: once for the whole group when ``batch = true`` (one JSON envelope
    per line on stdin), else once per message. One outcome for all: ok when every run was; the
    detail of the only run, or each run's detail prefixed with its message ids."""
    cfg = config(context.settings)

    async def run_for(argv: list[str], messages: list[StoredMessage]) -> Run:
        if cfg.batch:
            stdin, env = batch_input(messages, context.agent_id)
        else:
            stdin, env = messages[0].body.encode("utf-8"), child_environment(messages[0], context.agent_id)
        head = messages[0]
        run = await run_limited(bucket(head), cfg.limit(bucket(head)),
                                lambda: run_command(argv, stdin, env, cfg.timeout))
        context.logger.info(
            "wake command %s for %s: %s", argv[0], ", ".join(m.id for m in messages), run.error or f"exited {run.exit_code}",
            extra={"message_id": head.id, "message_ids": [m.id for m in messages], "exit_code": run.exit_code,
                   "duration_ms": run.duration_ms},
        )
        return run

    jobs = list(groups) if cfg.batch else [(argv, [m]) for argv, messages in groups for m in messages]
    runs = await asyncio.gather(*(run_for(argv, messages) for argv, messages in jobs))
    if len(runs) == 1:
        return WakeOutcome(runs[0].ok, runs[0].detail(), exit_code=runs[0].exit_code)
    failed = [r for r in runs if not r.ok]
    detail = "; ".join(f"[{', '.join(m.id for m in messages)}] {run.detail()}"
                       for (_, messages), run in zip(jobs, runs, strict=True))
    return WakeOutcome(not failed, detail, exit_code=failed[0].exit_code if failed else 0)


def command_groups(messages: Sequence[StoredMessage], settings: Settings) -> list[tuple[list[str], list[StoredMessage]]]:
    """The messages that have a command, grouped by it (in order of first appearance, each
    group oldest first)."""
    groups: dict[tuple[str, ...], list[StoredMessage]] = {}
    for message in messages:
        argv = command_for(message, settings)
        if argv is not None:
            groups.setdefault(tuple(argv), []).append(message)
    return [(list(argv), group) for argv, group in groups.items()]


@hookimpl(trylast=True)
def swarmbus_wake_coalesce(message: StoredMessage, settings: Settings) -> bool | None:
    """Coalesced wakes when ``batch = true`` (for the messages this plugin wakes), else one call
    per message."""
    if command_for(message, settings) is None:
        return None
    return config(settings).batch


@hookimpl(trylast=True)
def swarmbus_wake(message: StoredMessage, decision: WakeDecision, context: HandlerContext) -> object:
    """Run the command of ``message`` and of each message in ``decision.batch`` (a coalesced
    wake): each distinct command once for its messages with ``batch = true``, else once per
    message. None when ``message`` has no command."""
    if command_for(message, context.settings) is None:
        return None
    return wake_messages(command_groups([message, *decision.batch], context.settings), context)


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
