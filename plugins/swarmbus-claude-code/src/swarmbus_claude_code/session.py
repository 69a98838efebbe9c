"""Wake the live Claude Code session through its own inbox socket (wake path ``session``).

Claude Code 2.1.224+ gives every session a local inbox: a Unix socket whose path and token it
exports to the processes it starts (hooks, Bash, MCP servers) as ``CLAUDE_CODE_MESSAGING_SOCKET``
and ``CLAUDE_CODE_MESSAGING_TOKEN``, beside ``CLAUDE_CODE_SESSION_ID`` and ``CLAUDE_PID``. A
message written there starts a turn when the session is idle and is read between tool calls when
it is busy; messages from the session's own children are delivered without an approval hold
(code.claude.com/docs/en/cross-session-messaging).

The line protocol, as the binary itself prints it (verified with 2.1.330): newline-delimited
JSON, an auth line ``{"type": "auth", "token": TOKEN}`` and then a user message line
``{"type": "user", "message": {"role": "user", "content": TEXT}}``. The socket never answers; it
closes its end once we close ours. Claude drops identical repeats and caps waiting messages at
50, so a coalesced wake is one post holding every message, framed as untrusted peer data by
``swarmbus.render_wake_prompt`` (Claude adds its own "another session sent a message" frame).

The swarmbus MCP server, a child of the session, finds it (:func:`session_from_environ`, the
``swarmbus_host_session`` hook) and registers it with the daemon; the wake path uses the most
recently registered live session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
from collections.abc import Mapping

from swarmbus import HandlerContext, HostSession, StoredMessage, WakeOutcome, render_wake_prompt
from swarmbus_claude_code.settings import NAME, config

SOCKET_ENV = "CLAUDE_CODE_MESSAGING_SOCKET"
TOKEN_ENV = "CLAUDE_CODE_MESSAGING_TOKEN"  # noqa: S105 - the variable's name
SESSION_ENV = "CLAUDE_CODE_SESSION_ID"
PID_ENV = "CLAUDE_PID"
WAKE_CHILD_ENV = "SWARMBUS_WAKE_CHILD"
"""Set in a headless wake's environment: a session the daemon started for one wake is not one
to post later wakes into (it exits when its run ends)."""
CLOSE_WAIT = 2.0
"""Seconds to wait for the session to close its end after our post (observed: 50-80 ms)."""
NO_SESSION = "no live Claude Code session (the swarmbus MCP server inside one registers it)"


def session_from_environ(environ: Mapping[str, str], parent_pid: int | None = None) -> HostSession | None:
    """The Claude Code session whose child has ``environ``, or None when it exports no inbox or
    is a headless run the daemon started for one wake (:data:`WAKE_CHILD_ENV`).
    ``pid`` is ``CLAUDE_PID``, else ``parent_pid`` (the MCP server's parent: claude itself)."""
    socket_path = environ.get(SOCKET_ENV, "")
    if not socket_path or environ.get(WAKE_CHILD_ENV):
        return None
    try:
        pid = int(environ.get(PID_ENV, ""))
    except ValueError:
        pid = parent_pid if parent_pid is not None else os.getppid()
    session_id = environ.get(SESSION_ENV) or f"pid-{pid}"
    endpoint = {"socket": socket_path}
    if environ.get(TOKEN_ENV):
        endpoint["token"] = environ[TOKEN_ENV]
    return HostSession(NAME, session_id, pid, endpoint)


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def live_session(context: HandlerContext) -> HostSession | None:
    """The most recently registered session whose inbox socket exists, or None."""
    if context.host_sessions is None:
        return None
    return next((s for s in context.host_sessions(NAME) if _is_socket(s.endpoint.get("socket", ""))), None)


def post_lines(token: str | None, text: str) -> bytes:
    """The bytes of one post: the auth line (when there is a token) and the user message line."""
    lines = []
    if token:
        lines.append(json.dumps({"type": "auth", "token": token}))
    lines.append(json.dumps({"type": "user", "message": {"role": "user", "content": text}}))
    return ("\n".join(lines) + "\n").encode("utf-8")


async def post(socket_path: str, data: bytes) -> None:
    """Write ``data`` to the inbox socket, close our end, and wait (up to :data:`CLOSE_WAIT`
    seconds) for the session to close its own. :raises OSError: the socket refused us."""
    reader, writer = await asyncio.open_unix_connection(socket_path)
    try:
        writer.write(data)
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_WAIT):
                await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def probe(context: HandlerContext) -> str | None:
    return None if live_session(context) is not None else NO_SESSION


async def wake(messages: list[StoredMessage], context: HandlerContext) -> WakeOutcome:
    session = live_session(context)
    if session is None:
        return WakeOutcome(False, NO_SESSION)
    text = render_wake_prompt(messages, context.agent_id, instructions=config(context.settings).extra_instructions)
    await post(session.endpoint["socket"], post_lines(session.endpoint.get("token"), text))
    count = len(messages)
    return WakeOutcome(True, f"posted {count} message{'s' if count != 1 else ''} to Claude Code session "
                             f"{session.session_id} (pid {session.pid})")


async def test(context: HandlerContext) -> str | None:
    """Connect to the live session's inbox and close without posting: no turn, no model call."""
    session = live_session(context)
    if session is None:
        return NO_SESSION
    _, writer = await asyncio.open_unix_connection(session.endpoint["socket"])
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None
