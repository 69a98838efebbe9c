"""A small client of Codex's app-server, enough to hand a wake to a thread.

``codex app-server --listen unix://PATH`` speaks JSON-RPC 2.0 without the ``"jsonrpc"`` field, as
WebSocket text frames over the Unix socket at PATH (``codex app-server generate-json-schema``
prints the protocol; verified with codex-cli 0.171.0). A live TUI attaches to the same server
with ``codex --remote unix://PATH``; the waker is one more client, for a few milliseconds per wake:

1. ``initialize {clientInfo, capabilities: {experimentalApi: true}}`` -> the ``initialized``
   notification;
2. ``thread/read {threadId}`` for the thread's status: ``notLoaded`` (or "thread not loaded")
   -> ``thread/resume {threadId, excludeTurns: true, approvalPolicy, sandbox}`` loads it;
3. ``active`` (a turn is running) -> ``thread/turns/list {threadId, limit: 1}`` for the running
   turn's id and ``turn/steer {threadId, input, expectedTurnId}``: the text joins that turn
   (the model sees it in the turn's next request); if that turn ended meanwhile ("no active turn
   to steer", "expected active turn id ..."), a new turn instead;
4. otherwise ``turn/start {threadId, input: [{type: "text", text}]}``; "thread not found"
   (-32600: the server unloaded it meanwhile) -> ``thread/resume``, then ``turn/start`` again.

The turn goes on after the waker disconnects (its notifications go to the clients subscribed to
the thread). ``-32001 "Server overloaded; retry later."`` is retried after a short backoff
(:data:`OVERLOAD_DELAYS`); anything else is an :class:`AppServerError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarmbus_codex._version import __version__

OVERLOADED = -32001
OVERLOAD_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8)
"""Seconds before each retry of an overloaded request (plus up to 25% jitter): 5 retries, ~1.6 s."""
MAX_FRAME = 16 * 1024 * 1024
CLIENT_NAME = "swarmbus"


class AppServerError(Exception):
    """The app-server answered a request with an error."""

    def __init__(self, method: str, code: int | None, message: str) -> None:
        super().__init__(f"{method}: {message} ({code})")
        self.method, self.code, self.message = method, code, message

    @property
    def overloaded(self) -> bool:
        return self.code == OVERLOADED

    @property
    def not_loaded(self) -> bool:
        """The server has not loaded the thread ("thread not found" / "thread not loaded")."""
        text = self.message.lower()
        return "thread not found" in text or "thread not loaded" in text

    @property
    def gone(self) -> bool:
        """Codex has no such thread at all ("no rollout found for thread id ...")."""
        return "no rollout found" in self.message.lower()

    @property
    def turn_moved(self) -> bool:
        """A steer found no running turn, or another one than expected."""
        text = self.message.lower()
        return "no active turn" in text or "expected active turn" in text

    @property
    def unknown_method(self) -> bool:
        return "unknown variant" in self.message.lower()


class Unreachable(Exception):
    """No app-server answered on that socket (missing, refused, or no handshake)."""


class ThreadGone(Exception):
    """Codex does not have the thread (it cannot be resumed)."""


@dataclass
class Client:
    """One connection, after the handshake."""

    ws: Any
    socket: Path
    user_agent: str = ""
    codex_home: str = ""
    overload_retries: int = 0
    _next_id: int = 0

    @classmethod
    async def connect(cls, socket: Path, *, timeout: float, title: str | None = None) -> Client:
        """Connect to ``socket`` and complete ``initialize`` / ``initialized`` within ``timeout``.

        :raises Unreachable: nothing answers there (or not like an app-server).
        """
        from websockets.asyncio.client import unix_connect

        if not socket.exists():
            raise Unreachable("no socket")
        # Codex puts a long socket path behind a symlink to a short one (sun_path holds 107 bytes)
        path = min(str(socket), os.path.realpath(socket), key=len)
        try:
            async with asyncio.timeout(timeout):
                ws = await unix_connect(path, uri="ws://localhost/", max_size=MAX_FRAME, compression=None,
                                        open_timeout=None, ping_interval=None)
                client = cls(ws, socket)
                try:
                    info = {"name": CLIENT_NAME, "version": __version__, **({"title": title} if title else {})}
                    hello = await client.request("initialize", {"clientInfo": info,
                                                                "capabilities": {"experimentalApi": True}})
                    await client.notify("initialized")
                except BaseException:
                    await client.close()
                    raise
        except TimeoutError:
            raise Unreachable(f"no handshake within {timeout:g}s") from None
        except AppServerError as exc:
            raise Unreachable(f"refused the handshake: {exc}") from None
        except (OSError, EOFError) as exc:
            raise Unreachable((exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__) from None
        except Exception as exc:  # websockets' InvalidHandshake, ConnectionClosed, a non-JSON answer
            raise Unreachable(f"not a Codex app-server ({type(exc).__name__}: {exc})") from None
        if isinstance(hello, dict):
            client.user_agent = str(hello.get("userAgent") or "")
            client.codex_home = str(hello.get("codexHome") or "")
        return client

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        message: dict[str, Any] = {"method": method}
        if params is not None:
            message["params"] = params
        await self.ws.send(json.dumps(message))

    async def request(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """The result of ``method``; an overloaded server is asked again after a backoff.

        :raises AppServerError: the server answered with an error.
        :raises websockets.ConnectionClosed: the connection dropped.
        """
        for attempt in range(len(OVERLOAD_DELAYS) + 1):
            try:
                return await self._call(method, params)
            except AppServerError as exc:
                if not exc.overloaded or attempt == len(OVERLOAD_DELAYS):
                    raise
            self.overload_retries += 1
            delay = OVERLOAD_DELAYS[attempt]
            await asyncio.sleep(delay + random.uniform(0, delay / 4))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _call(self, method: str, params: dict[str, Any] | None) -> Any:
        self._next_id += 1
        rid = self._next_id
        message: dict[str, Any] = {"id": rid, "method": method}
        if params is not None:
            message["params"] = params
        await self.ws.send(json.dumps(message))
        while True:
            raw = await self.ws.recv()
            try:
                frame = json.loads(raw)
            except ValueError:
                continue
            # notifications and the server's own requests carry a method; responses do not
            if not isinstance(frame, dict) or "method" in frame or frame.get("id") != rid:
                continue
            if "error" in frame:
                error = frame["error"] if isinstance(frame["error"], dict) else {}
                code = error.get("code")
                raise AppServerError(method, code if isinstance(code, int) else None, str(error.get("message", "")))
            return frame.get("result")


async def open_first(candidates: Sequence[tuple[Path, str]], *, timeout: float,
                     title: str | None = None) -> tuple[Client | None, list[str]]:
    """The first candidate socket where an app-server answers, and why each before it did not
    (``unix://PATH: reason``)."""
    why: list[str] = []
    for socket, _source in candidates:
        try:
            return await Client.connect(socket, timeout=timeout, title=title), why
        except Unreachable as exc:
            why.append(f"unix://{socket}: {exc}")
    return None, why


# -- handing a wake to a thread ------------------------------------------------------------------
@dataclass
class Accepted:
    """What the app-server accepted: the turn the text went into, and how."""

    thread_id: str
    turn_id: str
    steered: bool
    notes: list[str] = field(default_factory=list)


def text_input(text: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text}]


async def start_thread(client: Client, params: dict[str, Any]) -> str:
    result = await client.request("thread/start", params)
    thread = (result or {}).get("thread") if isinstance(result, dict) else None
    tid = thread.get("id") if isinstance(thread, dict) else None
    if not isinstance(tid, str) or not tid:
        raise AppServerError("thread/start", None, f"no thread id in the answer: {str(result)[:200]}")
    return tid


async def thread_status(client: Client, thread_id: str) -> str:
    """``notLoaded``, ``idle``, ``active``, ``systemError``, or ``unknown`` (no ``thread/read``)."""
    try:
        result = await client.request("thread/read", {"threadId": thread_id})
    except AppServerError as exc:
        if exc.not_loaded:
            return "notLoaded"
        if exc.unknown_method:
            return "unknown"
        raise
    status = ((result or {}).get("thread") or {}).get("status") if isinstance(result, dict) else None
    kind = status.get("type") if isinstance(status, dict) else None
    return kind if isinstance(kind, str) else "unknown"


async def resume_thread(client: Client, thread_id: str, overrides: dict[str, Any]) -> str:
    """Load the thread into the server; its status. :raises ThreadGone: Codex has no such thread."""
    try:
        result = await client.request("thread/resume", {"threadId": thread_id, "excludeTurns": True, **overrides})
    except AppServerError as exc:
        if exc.gone or exc.not_loaded:
            raise ThreadGone(exc.message) from None
        raise
    status = ((result or {}).get("thread") or {}).get("status") if isinstance(result, dict) else None
    kind = status.get("type") if isinstance(status, dict) else None
    return kind if isinstance(kind, str) else "idle"


async def running_turn(client: Client, thread_id: str) -> str | None:
    """The id of the thread's turn in progress, or None."""
    try:
        result = await client.request("thread/turns/list", {"threadId": thread_id, "limit": 1})
    except AppServerError:
        return None
    data = (result or {}).get("data") if isinstance(result, dict) else None
    if not data or not isinstance(data[0], dict) or data[0].get("status") != "inProgress":
        return None
    tid = data[0].get("id")
    return tid if isinstance(tid, str) and tid else None


async def deliver(client: Client, thread_id: str, text: str, *, resume_overrides: dict[str, Any]) -> Accepted:
    """Hand ``text`` to the thread as described in the module docstring.

    :raises ThreadGone: Codex does not have the thread.
    :raises AppServerError: the server refused (after the overload retries).
    """
    notes: list[str] = []
    resumed = False
    status = await thread_status(client, thread_id)
    if status == "notLoaded":
        status = await resume_thread(client, thread_id, resume_overrides)
        resumed = True
        notes.append("resumed the thread")
    if status == "active":
        turn = await running_turn(client, thread_id)
        if turn is not None:
            try:
                result = await client.request("turn/steer", {"threadId": thread_id, "input": text_input(text),
                                                             "expectedTurnId": turn})
            except AppServerError as exc:
                if not exc.turn_moved:
                    raise
                notes.append(f"turn {turn} ended before the steer")
            else:
                steered = (result or {}).get("turnId") if isinstance(result, dict) else None
                return Accepted(thread_id, str(steered or turn), True, notes)
    params = {"threadId": thread_id, "input": text_input(text)}
    try:
        result = await client.request("turn/start", params)
    except AppServerError as exc:
        if not exc.not_loaded or resumed:
            raise
        await resume_thread(client, thread_id, resume_overrides)
        notes.append("resumed the thread after \"thread not found\"")
        result = await client.request("turn/start", params)
    turn = (result or {}).get("turn") if isinstance(result, dict) else None
    turn_id = turn.get("id") if isinstance(turn, dict) else None
    if not isinstance(turn_id, str) or not turn_id:
        raise AppServerError("turn/start", None, f"no turn id in the answer: {str(result)[:200]}")
    return Accepted(thread_id, turn_id, False, notes)
