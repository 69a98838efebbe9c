"""A fake Codex app-server: JSON-RPC without the ``"jsonrpc"`` field, as WebSocket text frames on
a Unix socket, like ``codex app-server --listen unix://PATH`` (codex-cli 0.171.0).

It runs a ``websockets`` asyncio server in a background thread, so synchronous tests, the
plugin's own asyncio code and a daemon in another process can all talk to it. It speaks the subset
a waker uses, validating what it is given, and records every frame it gets:

- ``initialize`` must come first (with ``clientInfo.name`` and ``version``), then the
  ``initialized`` notification before any other request; every answer is preceded by a
  notification, and once per connection by a server request whose id is the same as the client's
  pending request (a client must not take it for the answer);
- ``thread/start`` (a new loaded thread), ``thread/resume`` (loads a thread it knows; "no rollout
  found" for one it does not), ``thread/read`` (status ``notLoaded`` / ``idle`` / ``active``;
  "thread not loaded" for an unknown id), ``thread/turns/list`` (the running turn first);
- ``turn/start``: "thread not found" (-32600) for a thread that is not loaded; on a thread with a
  running turn it answers that turn (as the real server does); else a new turn, which completes
  at once unless ``hold_turns`` is set;
- ``turn/steer``: needs ``expectedTurnId`` to be the running turn ("no active turn to steer",
  "expected active turn id ...").

Controls: :meth:`add_thread`, :meth:`begin_turn` (a turn some other client runs),
:meth:`overload` (answer ``-32001 "Server overloaded; retry later."`` the next N times),
:meth:`lose_thread_once` (the next ``turn/start`` finds the thread unloaded, as when the server
unloaded it between the read and the start), :meth:`end_turn_after_list` (the running turn ends
between the waker's look and its steer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, unix_serve

from swarmbus import testing

INVALID_REQUEST = -32600
INVALID_PARAMS = -32602
OVERLOADED = -32001


class Refuse(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class FakeThread:
    id: str
    loaded: bool = True
    running: str | None = None  # the id of the turn in progress
    turns: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)  # every text that reached the thread
    settings: dict[str, Any] = field(default_factory=dict)  # what thread/start or thread/resume set


@dataclass
class Frame:
    at: float
    conn: int
    message: dict[str, Any]

    @property
    def method(self) -> str | None:
        return self.message.get("method")

    @property
    def params(self) -> dict[str, Any]:
        return self.message.get("params") or {}


class FakeAppServer:
    def __init__(self, socket: Path, *, codex_home: str = "/fake/codex-home", hold_turns: bool = False) -> None:
        self.socket = socket
        self.codex_home = codex_home
        self.hold_turns = hold_turns
        self.threads: dict[str, FakeThread] = {}
        self.frames: list[Frame] = []
        self.connections = 0
        self._overload: dict[str, int] = {}
        self._lose_once = False
        self._end_after_list = False
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # -- control --------------------------------------------------------------------------------
    def add_thread(self, thread_id: str | None = None, *, loaded: bool = True) -> str:
        tid = thread_id or str(uuid.uuid4())
        with self._cond:
            self.threads[tid] = FakeThread(tid, loaded=loaded)
        return tid

    def begin_turn(self, thread_id: str) -> str:
        """A turn in progress on the thread, as if the user's TUI had started it."""
        turn = str(uuid.uuid4())
        with self._cond:
            thread = self.threads[thread_id]
            thread.loaded, thread.running = True, turn
            thread.turns.append(turn)
        return turn

    def end_turn(self, thread_id: str) -> None:
        with self._cond:
            self.threads[thread_id].running = None

    def overload(self, method: str, times: int) -> None:
        """Answer the next ``times`` requests of ``method`` with -32001."""
        with self._cond:
            self._overload[method] = times

    def lose_thread_once(self) -> None:
        """The next ``turn/start`` finds its thread unloaded ("thread not found")."""
        with self._cond:
            self._lose_once = True

    def end_turn_after_list(self) -> None:
        """The running turn ends right after the next ``thread/turns/list`` (a steer then finds none)."""
        with self._cond:
            self._end_after_list = True

    # -- what it got ----------------------------------------------------------------------------
    def calls(self, method: str | None = None) -> list[Frame]:
        with self._cond:
            return [f for f in self.frames if f.method is not None and (method is None or f.method == method)]

    def methods(self, conn: int | None = None) -> list[str]:
        return [f.method for f in self.calls() if f.method and (conn is None or f.conn == conn)]

    def texts(self, method: str) -> list[str]:
        return [item["text"] for f in self.calls(method) for item in f.params.get("input", [])]

    def wait_for(self, predicate: Callable[[FakeAppServer], Any], timeout: float = 20.0) -> Any:
        """Block until ``predicate(self)`` is truthy (checked again on every frame received)."""
        return testing.wait_on(self._cond, lambda: predicate(self), timeout,
                               lambda: f"fake app-server: got {[f.method for f in self.frames]}")

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> FakeAppServer:
        ready = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop

            async def main() -> None:
                try:
                    self._server = await unix_serve(self._handle, str(self.socket), max_size=16 * 1024 * 1024,
                                                    compression=None)
                except BaseException as exc:
                    failed.append(exc)
                    ready.set()
                    return
                ready.set()
                await self._server.wait_closed()

            loop.run_until_complete(main())
            loop.close()

        self.socket.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=run, name="fake-codex-app-server", daemon=True)
        self._thread.start()
        if not ready.wait(10) or failed:
            raise RuntimeError(f"fake app-server did not start on {self.socket}: {failed}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._server is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._server.close)
        if self._thread is not None:
            self._thread.join(10)
        self.socket.unlink(missing_ok=True)

    def __enter__(self) -> FakeAppServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- protocol -------------------------------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        with self._cond:
            self.connections += 1
            conn = self.connections
        state = {"initialize": False, "initialized": False, "teased": False}
        with contextlib.suppress(Exception):  # a client that drops is not the fake's problem
            async for raw in ws:
                message = json.loads(raw)
                with self._cond:
                    self.frames.append(Frame(time.monotonic(), conn, message))
                    self._cond.notify_all()
                if "jsonrpc" in message:
                    await ws.close(1002, "codex app-server messages have no jsonrpc field")
                    return
                if "id" not in message:  # a notification
                    if message.get("method") == "initialized":
                        state["initialized"] = True
                    continue
                rid = message["id"]
                await ws.send(json.dumps({"method": "thread/status/changed", "params": {"note": "noise"}}))
                if state["initialized"] and not state["teased"]:
                    state["teased"] = True  # a server request with the same id as the pending request
                    await ws.send(json.dumps({"id": rid, "method": "item/tool/requestUserInput", "params": {}}))
                try:
                    result = self._answer(message, state)
                except Refuse as exc:
                    await ws.send(json.dumps({"id": rid, "error": {"code": exc.code, "message": exc.message}}))
                    continue
                await ws.send(json.dumps({"id": rid, "result": result}))

    def _answer(self, message: dict[str, Any], state: dict[str, bool]) -> Any:
        method = message.get("method")
        params = message.get("params")
        if method == "initialize":
            info = (params or {}).get("clientInfo") or {}
            if not isinstance(info.get("name"), str) or not isinstance(info.get("version"), str):
                raise Refuse(INVALID_PARAMS, "clientInfo.name and clientInfo.version are required")
            state["initialize"] = True
            return {"userAgent": f"{info['name']}/9.9.9-fake (fake)", "codexHome": self.codex_home,
                    "platformFamily": "unix", "platformOs": "linux"}
        if not state["initialize"] or not state["initialized"]:
            raise Refuse(INVALID_REQUEST, "Not initialized")
        with self._cond:
            if self._overload.get(str(method), 0) > 0:
                self._overload[str(method)] -= 1
                raise Refuse(OVERLOADED, "Server overloaded; retry later.")
            if not isinstance(params, dict):
                raise Refuse(INVALID_PARAMS, "params are required")
            handler = getattr(self, "_m_" + str(method).replace("/", "_"), None)
            if handler is None:
                raise Refuse(INVALID_REQUEST, f"Invalid request: unknown variant `{method}`")
            try:
                return handler(params)
            finally:
                self._cond.notify_all()  # wait_for re-checks what the answer changed

    def _thread_of(self, params: dict[str, Any], *, loaded: bool, missing: str) -> FakeThread:
        tid = params.get("threadId")
        if not isinstance(tid, str):
            raise Refuse(INVALID_PARAMS, "threadId is required")
        thread = self.threads.get(tid)
        if thread is None:
            raise Refuse(INVALID_REQUEST, f"{missing}: {tid}")
        if loaded and not thread.loaded:
            raise Refuse(INVALID_REQUEST, f"thread not found: {tid}")
        return thread

    @staticmethod
    def _texts(params: dict[str, Any]) -> list[str]:
        items = params.get("input")
        if not isinstance(items, list) or not items:
            raise Refuse(INVALID_PARAMS, "input must be a non-empty list")
        texts = []
        for item in items:
            if not isinstance(item, dict) or item.get("type") != "text" or not isinstance(item.get("text"), str):
                raise Refuse(INVALID_PARAMS, f"unsupported input item {item!r}")
            texts.append(item["text"])
        return texts

    def _status(self, thread: FakeThread) -> dict[str, Any]:
        if not thread.loaded:
            return {"type": "notLoaded"}
        return {"type": "active", "activeFlags": []} if thread.running else {"type": "idle"}

    def _thread_json(self, thread: FakeThread) -> dict[str, Any]:
        return {"id": thread.id, "status": self._status(thread), "turns": [], "preview": "", "ephemeral": False}

    def _m_thread_start(self, params: dict[str, Any]) -> Any:
        thread = FakeThread(str(uuid.uuid4()), settings=dict(params))
        self.threads[thread.id] = thread
        return {"thread": self._thread_json(thread), "cwd": params.get("cwd") or "/", "model": "mock-1",
                "modelProvider": "mock", "approvalPolicy": params.get("approvalPolicy") or "on-request",
                "approvalsReviewer": "user", "sandbox": {"type": "readOnly"}}

    def _m_thread_resume(self, params: dict[str, Any]) -> Any:
        tid = params.get("threadId")
        if tid not in self.threads:
            raise Refuse(INVALID_REQUEST, f"no rollout found for thread id {tid}")
        thread = self.threads[str(tid)]
        thread.loaded = True
        thread.settings.update({k: v for k, v in params.items() if k != "threadId"})
        return {"thread": self._thread_json(thread), "cwd": "/", "model": "mock-1", "modelProvider": "mock",
                "approvalPolicy": "never", "approvalsReviewer": "user", "sandbox": {"type": "readOnly"}}

    def _m_thread_read(self, params: dict[str, Any]) -> Any:
        thread = self._thread_of(params, loaded=False, missing="thread not loaded")
        return {"thread": self._thread_json(thread)}

    def _m_thread_turns_list(self, params: dict[str, Any]) -> Any:
        thread = self._thread_of(params, loaded=False, missing="thread not loaded")
        data = [{"id": t, "status": "inProgress" if t == thread.running else "completed", "items": []}
                for t in reversed(thread.turns)]
        if self._end_after_list:
            self._end_after_list = False
            thread.running = None
        return {"data": data[: params.get("limit") or len(data)], "nextCursor": None}

    def _m_turn_start(self, params: dict[str, Any]) -> Any:
        if self._lose_once and params.get("threadId") in self.threads:
            self._lose_once = False
            self.threads[params["threadId"]].loaded = False
        thread = self._thread_of(params, loaded=True, missing="thread not found")
        texts = self._texts(params)
        thread.inputs += texts
        if thread.running is None:  # a new turn; else the text joins the running one
            turn = str(uuid.uuid4())
            thread.turns.append(turn)
            thread.running = turn if self.hold_turns else None
        else:
            turn = thread.running
        return {"turn": {"id": turn, "items": [], "itemsView": "notLoaded", "status": "inProgress", "error": None}}

    def _m_turn_steer(self, params: dict[str, Any]) -> Any:
        thread = self._thread_of(params, loaded=True, missing="thread not found")
        texts = self._texts(params)
        expected = params.get("expectedTurnId")
        if not isinstance(expected, str):
            raise Refuse(INVALID_PARAMS, "expectedTurnId is required")
        if thread.running is None:
            raise Refuse(INVALID_REQUEST, "no active turn to steer")
        if thread.running != expected:
            raise Refuse(INVALID_REQUEST, f"expected active turn id `{expected}` but found `{thread.running}`")
        thread.inputs += texts
        return {"turnId": thread.running}
