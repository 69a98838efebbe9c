"""Running one wake command: its environment, its timeout, and what is recorded about it.

The child is started by :func:`swarmbus.run_child`: no shell, its own process group (session),
killed with its whole group when the run is cancelled (timeout, daemon shutdown) and when the
daemon dies, and an environment built here from :func:`swarmbus.scrubbed_env` (an allow-list:
broker credentials and every other daemon variable stay out) plus the envelope's metadata.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from swarmbus import StoredMessage, run_child, scrubbed_env

TAIL_CHARS = 400
"""How much of the end of a command's output (stdout and stderr together) is recorded."""


def child_environment(message: StoredMessage, agent_id: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a wake command: :func:`swarmbus.scrubbed_env` of ``base`` (default:
    the daemon's environment) plus the envelope as the predecessor (swarmbus-py) set it:
    ``SWARMBUS_AGENT_ID, _FROM, _TO, _ID, _SUBJECT, _CONTENT_TYPE, _PRIORITY, _TS``, and
    ``_REPLY_TO``/``_IN_REPLY_TO`` when the envelope has them."""
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


def batch_input(messages: Sequence[StoredMessage], agent_id: str,
                base: Mapping[str, str] | None = None) -> tuple[bytes, dict[str, str]]:
    """stdin and environment of a batched run: one JSON envelope (wire fields) per line, oldest
    first; the environment of the first message plus ``SWARMBUS_BATCH`` (how many) and
    ``SWARMBUS_IDS`` (their ids, comma-separated)."""
    lines = b"".join(json.dumps(m.envelope.to_dict(), ensure_ascii=False).encode("utf-8") + b"\n" for m in messages)
    env = child_environment(messages[0], agent_id, base)
    env.update(SWARMBUS_BATCH=str(len(messages)), SWARMBUS_IDS=",".join(m.id for m in messages))
    return lines, env


@dataclass(frozen=True)
class Run:
    """What one command run did. ``exit_code`` is None when it did not finish (timed out, or
    could not be started); negative when a signal ended it. ``duration_ms`` is wall time from
    start to exit (or to the kill). ``tail``: the last :data:`TAIL_CHARS` characters of its
    output, stripped."""

    program: str
    exit_code: int | None
    duration_ms: int
    tail: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def detail(self) -> str:
        """One line for the delivery record (``swarmbus inbox``): ``notify-me exited 3 in 12 ms;
        output: ...`` or ``notify-me timed out after 5 s (process group killed) ...``."""
        if self.error:
            head = f"{self.program} {self.error} after {self.duration_ms} ms"
        else:
            head = f"{self.program} exited {self.exit_code} in {self.duration_ms} ms"
        return f"{head}; output: {self.tail}" if self.tail else head


async def run_command(argv: Sequence[str], stdin: bytes, env: Mapping[str, str], timeout: float) -> Run:
    """Run ``argv`` (never through a shell) with ``stdin`` and ``env``; after ``timeout`` seconds
    kill its whole process group. Never raises for the command's sake: a program that cannot be
    started or a timeout is a :class:`Run` with ``exit_code`` None and ``error`` set.

    :raises asyncio.CancelledError: the awaiting task was cancelled (the group is killed first).
    """
    program = argv[0]
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            code, out, _ = await run_child(argv, stdin=stdin, env=env, merge_stderr=True)
    except TimeoutError:
        return Run(program, None, _ms_since(started), error=f"timed out after {timeout:g} s (process group killed)")
    except OSError as exc:
        return Run(program, None, _ms_since(started), error=f"could not be started ({exc.strerror or exc})")
    return Run(program, code, _ms_since(started), tail=output_tail(out))


def output_tail(output: bytes) -> str:
    """The last :data:`TAIL_CHARS` characters of ``output`` on one line (its non-empty lines
    joined with `` / ``), undecodable bytes replaced."""
    text = output[-4 * TAIL_CHARS:].decode("utf-8", "replace")
    return " / ".join(line.strip() for line in text.splitlines() if line.strip())[-TAIL_CHARS:]


def _ms_since(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
