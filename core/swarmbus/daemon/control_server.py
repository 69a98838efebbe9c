"""The server half of the daemon's control socket (protocol: :mod:`swarmbus.control`).

One JSON request per connection, answered with one JSON object, on the event loop: no request
waits for a thread, so any number of concurrent senders are answered within their own ``wait``,
and a request the daemon gets to only after its deadline is refused unsent.
The socket lives in a directory only this user can enter (see :mod:`swarmbus.paths`), is mode
0600, and every connection's peer is checked to be this user (``SO_PEERCRED`` on Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swarmbus.envelope import BROADCAST, Envelope, EnvelopeError
from swarmbus.errors import StoreError
from swarmbus.receipts import ACKNOWLEDGED, RECEIPT_STEPS, SURFACED
from swarmbus.store import Store

from .outbox import Outbox
from .sessions import REFRESH, HostSessions, SessionError, parse_session

if TYPE_CHECKING:
    from .peers import Peers
    from .receipts import Ladder

log = logging.getLogger("swarmbus.daemon")
_CONSUMER_RE = re.compile(r"\A[A-Za-z0-9_-]{1,64}\Z")
_MAX_REQUEST = 1 << 20  # a send carries at most a 64 KiB body, JSON-escaped
PRESENCE_WAIT = 0.5
"""Seconds a send's answer waits at most to learn whether its recipient was ever seen."""


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket (Linux), or None when the
    platform does not tell."""
    if sys.platform.startswith("linux") and hasattr(socket, "SO_PEERCRED"):
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return int(struct.unpack("3i", creds)[1])
    return None


class NewMessages:
    """Wakes every waiter when messages are stored (no task per wake-up)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Return once ``predicate()`` holds or ``timeout`` seconds passed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not predicate():
                    await self._event.wait()


class ControlServer:
    """Serves ``status``, ``send``, ``wait``, ``read``, ``step`` and ``mark`` for one daemon.

    ``ladder`` (the delivery ladder: :class:`~swarmbus.daemon.receipts.Ladder`) and ``peers``
    (other agents' presence) are optional: without them ``step`` and ``mark`` are refused and
    ``send`` says nothing about the recipient. ``policy`` answers ``hold`` and ``release`` (the
    operator's hold on wakes: :func:`swarmbus.default_plugins.manual.control`); without it they
    are refused."""

    def __init__(self, path: Path, *, agent_id: str, store: Store, outbox: Outbox,
                 new_messages: NewMessages, status: Callable[[], dict[str, Any]],
                 ladder: Ladder | None = None, peers: Peers | None = None,
                 policy: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] | None = None,
                 sessions: HostSessions | None = None,
                 wake_test: Callable[[], Awaitable[dict[str, Any]]] | None = None,
                 tasks: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] | None = None) -> None:
        self.tasks = tasks
        """Answers ``task`` requests (the task board: :meth:`swarmbus.board.runtime.TaskBoard.control`)."""
        self.policy = policy
        self.sessions = sessions
        self.wake_test = wake_test
        self.waiting = 0
        """How many ``wait`` requests are blocked right now (a Stop hook's ``swarmbus wait``)."""
        self.ladder = ladder
        self.peers = peers
        self.path = path
        self.agent_id = agent_id
        self.store = store
        self.outbox = outbox
        self.new_messages = new_messages
        self.status = status
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Bind the socket (a stale one is replaced) with mode 0600 from the start."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve_one, path=str(self.path), backlog=1024,
                                                           limit=_MAX_REQUEST)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        uid = peer_uid(sock) if sock is not None else None
        if uid is not None and uid != os.geteuid():
            log.warning("refused a control connection from uid %s", uid)
            writer.close()
            return
        try:
            async with asyncio.timeout(10):
                line = await reader.readline()
            answer = await self._answer(json.loads(line or b"{}"))
        except Exception as exc:
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "kind": "failure"}
        try:
            writer.write(json.dumps(answer).encode("utf-8") + b"\n")
            await writer.drain()
        except ConnectionError:
            log.info("a control client went away before its answer (%s)", answer.get("status", answer.get("error")))
        finally:
            writer.close()

    async def _answer(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "status":
            return self.status()
        if op == "send":
            return await self._send(req)
        if op == "wait":
            after, timeout = int(req.get("after", 0)), float(req.get("timeout", 30))
            store = self.store
            self.waiting += 1
            try:
                await self.new_messages.wait_for(lambda: store.last_seq() > after, timeout)
            finally:
                self.waiting -= 1
            return {"ok": True, "last_seq": store.last_seq()}
        if op == "session":
            return self._session(req)
        if op == "wake_test":
            if self.wake_test is None:
                return {"ok": False, "error": "this daemon has no wake paths to test", "kind": "usage"}
            return await self.wake_test()
        if op == "read":
            return await self._read(req)
        if op == "step":
            return await self._step(req)
        if op == "mark":
            return self._mark(req)
        if op == "task":
            if self.tasks is None:
                return {"ok": False, "error": "this daemon has no task board", "kind": "usage"}
            return await self.tasks(req)
        if op in ("hold", "release"):
            if self.policy is None:
                return {"ok": False, "error": "this daemon keeps no wake policy", "kind": "usage"}
            return await self.policy(req)
        return {"ok": False, "error": f"unknown op {op!r}", "kind": "usage"}

    def _session(self, req: dict[str, Any]) -> dict[str, Any]:
        """``{"op": "session", "action": "register" | "unregister", "session": {...}}``
        (:mod:`swarmbus.daemon.sessions`)."""
        if self.sessions is None:
            return {"ok": False, "error": "this daemon keeps no host sessions", "kind": "usage"}
        try:
            session = parse_session(req.get("session"))
        except SessionError as exc:
            return {"ok": False, "error": str(exc), "kind": "usage"}
        if req.get("action") == "unregister":
            return {"ok": True, "removed": self.sessions.unregister(session.host, session.session_id)}
        if req.get("action") != "register":
            return {"ok": False, "error": "action must be register or unregister", "kind": "usage"}
        if self.sessions.register(session):
            log.info("%s session %s (pid %d) registered for wakes", session.host, session.session_id, session.pid)
        return {"ok": True, "refresh": REFRESH}

    async def _send(self, req: dict[str, Any]) -> dict[str, Any]:
        try:
            envelope = Envelope.from_dict(req.get("envelope") or {})
        except EnvelopeError as exc:
            return {"ok": False, "error": str(exc), "kind": "usage"}
        if envelope.from_agent != self.agent_id:
            return {"ok": False, "error": f"this daemon sends as {self.agent_id!r}, not {envelope.from_agent!r}",
                    "kind": "usage"}
        try:
            wait = max(0.0, float(req.get("wait", 5.0)))
            deadline = float(req["deadline"]) if req.get("deadline") is not None else None
        except (TypeError, ValueError):
            return {"ok": False, "error": "wait and deadline must be numbers", "kind": "usage"}
        if deadline is not None:
            wait = min(wait, max(0.0, deadline - time.time()))
        try:
            status = await self.outbox.send(envelope, wait, deadline)
        except StoreError as exc:
            return {"ok": False, "error": f"the daemon could not spool the message, so it was not sent: {exc}",
                    "kind": "failure"}
        if status == "refused":
            topic, reason = self.outbox.refusals.pop(envelope.id, ("?", "refused"))
            return {"ok": False, "kind": "failure", "status": status, "id": envelope.id,
                    "error": f"the broker refused the publish to {topic}: {reason}; the message was not sent",
                    "hint": "these credentials may not write that topic: check the broker's ACL "
                            "(`swarmbus broker acl`), broker.username and security.verify_senders "
                            "(`swarmbus doctor` probes them)"}
        if status == "expired":
            return {"ok": False, "error": "the request reached the daemon after its deadline; it was not sent",
                    "kind": "failure", "status": status}
        answer: dict[str, Any] = {"ok": True, "id": envelope.id, "to": envelope.to, "status": status}
        if self.peers is not None and envelope.to != BROADCAST:
            # the first send to an agent waits for its presence watch (one broker round trip)
            answer["recipient"] = await self.peers.known(envelope.to, PRESENCE_WAIT if status == "published" else 0)
        return answer

    async def _step(self, req: dict[str, Any]) -> dict[str, Any]:
        """Wait up to ``timeout`` seconds until message ``id`` reached one of ``steps``; answer
        ``{"ok": true, "reached": bool, "ladder": [{"step", "by", "at", "detail"}...]}``."""
        message_id, steps = req.get("id"), req.get("steps")
        if not isinstance(message_id, str) or not isinstance(steps, list) or not all(s in RECEIPT_STEPS for s in steps):
            return {"ok": False, "error": f"step needs an id and steps from {', '.join(RECEIPT_STEPS)}", "kind": "usage"}
        try:
            timeout = float(req.get("timeout", 30))
        except (TypeError, ValueError):
            return {"ok": False, "error": "timeout must be a number", "kind": "usage"}
        if self.ladder is None or not 0 <= timeout <= 86400:
            return {"ok": False, "error": "this daemon keeps no delivery ladder" if self.ladder is None
                    else "timeout must be between 0 and 86400 seconds", "kind": "usage"}
        store, ladder = self.store, self.ladder
        await ladder.changed.wait_for(lambda: store.has_step(message_id, steps), timeout)
        return {"ok": True, "reached": store.has_step(message_id, steps),
                "ladder": [{"step": s.step, "by": s.by, "at": s.at, "detail": s.detail} for s in store.ladder(message_id)]}

    def _mark(self, req: dict[str, Any]) -> dict[str, Any]:
        """Record a later step (``surfaced``, ``acknowledged``) of received messages ``ids``:
        ``{"ok": true, "recorded": n}`` (unknown ids and steps already recorded count for nothing)."""
        ids, step, detail = req.get("ids"), req.get("step"), req.get("detail", "")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or len(ids) > 10_000:
            return {"ok": False, "error": "ids must be a list of message ids", "kind": "usage"}
        if step not in (SURFACED, ACKNOWLEDGED) or not isinstance(detail, str):
            return {"ok": False, "error": f"step must be {SURFACED} or {ACKNOWLEDGED}; detail a string", "kind": "usage"}
        if self.ladder is None:
            return {"ok": False, "error": "this daemon keeps no delivery ladder", "kind": "usage"}
        return {"ok": True, "recorded": self.ladder.local_steps(ids, step, detail[:500])}

    async def _read(self, req: dict[str, Any]) -> dict[str, Any]:
        """Non-destructive read for one consumer: acknowledge ``ack_ids``, then return up to
        ``max`` unacknowledged messages, waiting up to ``wait`` seconds for one if none is."""
        consumer, ack_ids = req.get("consumer"), req.get("ack_ids") or []
        if not isinstance(consumer, str) or not _CONSUMER_RE.match(consumer):
            return {"ok": False, "error": "consumer: use 1-64 of A-Z a-z 0-9 _ -", "kind": "usage"}
        if not isinstance(ack_ids, list) or not all(isinstance(i, str) for i in ack_ids):
            return {"ok": False, "error": "ack_ids must be a list of message ids", "kind": "usage"}
        try:
            limit, wait = int(req.get("max", 10)), float(req.get("wait", 0))
        except (TypeError, ValueError):
            return {"ok": False, "error": "max and wait must be numbers", "kind": "usage"}
        if limit < 0 or not 0 <= wait <= 86400:
            return {"ok": False, "error": "max must be >= 0 and wait between 0 and 86400 seconds", "kind": "usage"}
        acked = 0
        if ack_ids:
            try:
                acked = self.store.ack(consumer, ack_ids)
            except StoreError as exc:
                return {"ok": False, "error": f"could not record the acknowledgements: {exc}", "kind": "failure"}
            if self.ladder is not None:
                self.ladder.local_steps(ack_ids, ACKNOWLEDGED, f"by consumer {consumer}")
        if limit == 0:
            return {"ok": True, "acked": acked, "messages": []}
        store = self.store
        messages = store.unacked(consumer, limit)
        if not messages and wait > 0:
            await self.new_messages.wait_for(lambda: bool(store.unacked(consumer, 1)), wait)
            messages = store.unacked(consumer, limit)
        if messages and self.ladder is not None:
            self.ladder.local_steps([m.id for m in messages], SURFACED, f"read by consumer {consumer}")
        return {"ok": True, "acked": acked, "messages": [m.to_json() for m in messages]}
