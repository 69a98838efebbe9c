"""Built-in ``wake`` handler and the command waker.

The ``wake`` handler asks ``swarmbus_wake_decision`` and, on a wake, ``swarmbus_wake``. The
command waker (``trylast``) answers ``swarmbus_wake`` when ``wake.command`` (``--invoke``) is
set: it runs that argv (never a shell) with the body on stdin and the envelope's metadata in
``SWARMBUS_*`` variables, in a scrubbed environment: broker credentials and anything else not
on an allow-list never reach the child. The child gets its own session and, on Linux, dies
with the daemon (``PR_SET_PDEATHSIG``) instead of being orphaned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from swarmbus.api import Handler, HandlerContext, StoredMessage, WakeDecision, WakeOutcome
from swarmbus.children import program_problem, run_child, scrubbed_env
from swarmbus.hookspecs import hookimpl
from swarmbus.settings import Settings

OUTPUT_LIMIT = 4096


class WakeFailed(Exception):
    pass


def child_environment(message: StoredMessage, agent_id: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a wake child: an allow-list of the daemon's variables plus the
    envelope metadata as ``SWARMBUS_FROM, _TO, _ID, _SUBJECT, _CONTENT_TYPE, _PRIORITY, _TS``
    (and ``_REPLY_TO``/``_IN_REPLY_TO`` when set), as the predecessor set them."""
    env = scrubbed_env(base=base)
    e = message.envelope
    env.update(
        SWARMBUS_AGENT_ID=agent_id,
        SWARMBUS_FROM=e.from_agent,
        SWARMBUS_TO=e.to,
        SWARMBUS_ID=e.id,
        SWARMBUS_SUBJECT=e.subject,
        SWARMBUS_CONTENT_TYPE=e.content_type,
        SWARMBUS_PRIORITY=e.priority,
        SWARMBUS_TS=e.ts,
    )
    if e.reply_to:
        env["SWARMBUS_REPLY_TO"] = e.reply_to
    if e.in_reply_to:
        env["SWARMBUS_IN_REPLY_TO"] = e.in_reply_to
    return env


def command_problem(settings: Settings) -> str | None:
    """Why the configured wake command (``wake.command``, ``--invoke``) cannot be run by this
    process, or None when it can or none is configured (see
    :func:`swarmbus.children.program_problem`: the program is looked up as a wake child would)."""
    argv = settings.wake.command
    return program_problem(argv[0]) if argv else None


async def run_command(argv: list[str], stdin: bytes, env: dict[str, str]) -> tuple[int, bytes]:
    """Run ``argv`` without a shell (see :func:`swarmbus.children.run_child`); return (exit code,
    last 4 KiB of stdout+stderr). On cancellation the child's process group is killed."""
    code, out, _ = await run_child(argv, stdin=stdin, env=env, merge_stderr=True)
    return code, out[-OUTPUT_LIMIT:]


@hookimpl
def swarmbus_register_handlers(register: Callable[[Handler], None], settings: Settings) -> None:
    async def wake_handler(message: StoredMessage, context: HandlerContext) -> str:
        decision = context.hooks.wake_decision(message, context.settings)
        if not decision.wake:
            return f"not woken: {decision.reason}"
        outcome = await context.hooks.wake(message, decision, context)
        if outcome is None:
            return f"not woken: no waker is configured ({decision.reason})"
        if not outcome.ok:
            raise WakeFailed(outcome.detail or "wake failed")
        return f"woken ({decision.reason}): {outcome.detail}"

    register(Handler("wake", wake_handler, description="wake the host agent when policy says so"))


@hookimpl(trylast=True)
def swarmbus_wake(message: StoredMessage, decision: WakeDecision, context: HandlerContext) -> object:
    argv = context.settings.wake.command
    if not argv:
        return None

    async def run() -> WakeOutcome:
        env = child_environment(message, context.agent_id)
        code, output = await run_command(list(argv), message.body.encode("utf-8"), env)
        text = output.decode("utf-8", "replace").strip()
        context.logger.info(
            "wake command exited %s for message %s", code, message.id,
            extra={"wake_output": text[-1000:], "message_id": message.id, "exit_code": code},
        )
        return WakeOutcome(code == 0, f"{argv[0]} exited {code}", exit_code=code)

    return run()
