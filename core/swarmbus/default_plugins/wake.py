"""Built-in ``wake`` handler and the command waker.

The ``wake`` handler asks ``swarmbus_wake_decision`` and, on a wake, ``swarmbus_wake``. The
command waker (``trylast``) answers ``swarmbus_wake`` when ``wake.command`` (``--invoke``) is
set: it runs that argv (never a shell) with the body on stdin and the envelope's metadata in
``SWARMBUS_*`` variables, in a scrubbed environment: broker credentials and anything else not
on an allow-list never reach the child. The child gets its own session and, on Linux, dies
with the daemon (``PR_SET_PDEATHSIG``) instead of being orphaned.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any

from swarmbus.api import Handler, HandlerContext, StoredMessage, WakeDecision, WakeOutcome
from swarmbus.hookspecs import hookimpl
from swarmbus.settings import Settings

ENV_ALLOW = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "XDG_RUNTIME_DIR")
OUTPUT_LIMIT = 4096


class WakeFailed(Exception):
    pass


def child_environment(message: StoredMessage, agent_id: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a wake child: an allow-list of the daemon's variables plus the
    envelope metadata as ``SWARMBUS_FROM, _TO, _ID, _SUBJECT, _CONTENT_TYPE, _PRIORITY, _TS``
    (and ``_REPLY_TO``/``_IN_REPLY_TO`` when set), as the predecessor set them."""
    base = os.environ if base is None else base
    env = {k: base[k] for k in ENV_ALLOW if k in base}
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


_PRCTL: list[Any] = []


def _prctl() -> Any:
    """libc's prctl, loaded in the parent: importing or loading libraries in a child forked
    from a multithreaded process can deadlock."""
    if not _PRCTL and sys.platform.startswith("linux"):
        import ctypes

        try:
            _PRCTL.append(ctypes.CDLL(None, use_errno=True).prctl)
        except (OSError, AttributeError):
            _PRCTL.append(None)
    return _PRCTL[0] if _PRCTL else None


def _die_with_parent(parent: int, prctl: Any) -> None:  # pragma: no cover - runs in the child
    if prctl is not None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die when the daemon dies
    if os.getppid() != parent:  # the daemon died before prctl took effect: no signal will come
        os._exit(1)


async def run_command(argv: list[str], stdin: bytes, env: dict[str, str]) -> tuple[int, bytes]:
    """Run ``argv`` without a shell; return (exit code, last 4 KiB of stdout+stderr).
    On cancellation (timeout, shutdown) the child's process group is killed."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        start_new_session=True,
        preexec_fn=functools.partial(_die_with_parent, os.getpid(), _prctl()),
    )
    try:
        out, _ = await proc.communicate(stdin)
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.shield(proc.wait())
        raise
    return int(proc.returncode or 0), out[-OUTPUT_LIMIT:]


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
