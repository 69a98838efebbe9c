"""The listener daemon (``swarmbus start``): the single MQTT receive owner for an agent id.

Receive path (paho's network thread, inside :class:`~swarmbus.transport.link.MqttLink`): each
inbound publish is committed to the store (or quarantined, or recognised as a duplicate)
and only then acknowledged (manual PUBACK). A store failure leaves it unacknowledged and
drops the connection, so the broker redelivers it later.

Dispatch (the asyncio event loop in the main thread): stored messages are handed to the
:class:`~swarmbus.daemon.dispatch.Dispatcher`; the control socket serves local sends and waits;
a heartbeat republishes the retained online presence every ``daemon.heartbeat_interval``
and supervises the link's thread.

Presence: retained ``online`` on every connect, retained ``offline`` on a clean stop (SIGINT
or SIGTERM), and the same ``offline`` as the Last Will for a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import time
from typing import Any

from swarmbus import __version__
from swarmbus.api import HandlerContext, StoredMessage
from swarmbus.daemon.dispatch import Dispatcher
from swarmbus.envelope import Envelope, EnvelopeError, new_envelope, utc_now_iso
from swarmbus.errors import StoreError
from swarmbus.ownership import Ownership
from swarmbus.paths import AgentPaths
from swarmbus.plugins import HookRelay, PluginManager
from swarmbus.settings import Settings
from swarmbus.store import Store
from swarmbus.topics import BROADCAST_TOPIC, QOS, inbox_topic, presence_payload, presence_topic, topic_for_recipient
from swarmbus.transport.link import MqttLink, PublishTicket, Subscription, Will

log = logging.getLogger("swarmbus.daemon")
_CONSUMER_RE = re.compile(r"\A[A-Za-z0-9_-]{1,64}\Z")


def receive_subscriptions(agent_id: str) -> list[Subscription]:
    """The daemon's subscriptions: its inbox, and broadcast with MQTT 5 no-local."""
    return [Subscription(inbox_topic(agent_id), QOS), Subscription(BROADCAST_TOPIC, QOS, no_local=True)]


class Daemon:
    def __init__(self, settings: Settings, pm: PluginManager) -> None:
        self.settings = settings
        self.pm = pm
        self.relay = HookRelay(pm)
        self.agent_id = settings.require_agent_id()
        self.paths = AgentPaths.for_agent(self.agent_id, settings.state_dir)
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._new_message: asyncio.Condition | None = None
        self._outbox_inflight: set[str] = set()
        self.started_at = time.time()
        self.link: MqttLink | None = None
        self.store: Store | None = None

    # -- entry point -------------------------------------------------------------------------
    def run(self) -> int:
        """Run until SIGINT/SIGTERM. Returns the exit code (0 on a clean stop).

        :raises OwnershipError: another process owns this agent id.
        :raises StoreError: the store cannot be opened.
        """
        self.paths.ensure()
        with Ownership(self.paths.lock, "daemon"):
            self.store = Store(self.paths.store, sync=self.settings.daemon.store_sync)
            try:
                return asyncio.run(self._main())
            finally:
                self.store.close()

    def _presence(self, status: str, **extra: Any) -> bytes:
        return presence_payload(
            self.agent_id, status, ts=utc_now_iso(),
            heartbeat_s=self.settings.daemon.heartbeat_interval if status == "online" else None,
            version=__version__, **extra,
        )

    async def _main(self) -> int:
        assert self.store is not None
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop = asyncio.Event()
        self._new_message = asyncio.Condition()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)

        handlers = self.relay.handlers(self.settings)
        context = HandlerContext(
            agent_id=self.agent_id, settings=self.settings,
            logger=logging.getLogger(f"swarmbus.handler.{self.agent_id}"),
            send=self._send_from_handler, hooks=self.relay,
        )
        self.dispatcher = Dispatcher(self.store, self.relay, handlers, context)
        broker = self.settings.broker
        self.link = MqttLink(
            broker,
            client_id=f"{broker.client_id_prefix}-{self.agent_id}",
            persistent=True,
            session_expiry=self.settings.daemon.session_expiry,
            manual_ack=True,
            will=Will(presence_topic(self.agent_id), self._presence("offline", reason="connection lost")),
            subscriptions=receive_subscriptions(self.agent_id),
            on_message=self._on_message,
            on_connected=self._on_connected,
            reconnect_min=self.settings.daemon.reconnect_min,
            reconnect_max=self.settings.daemon.reconnect_max,
            logger=logging.getLogger("swarmbus.transport"),
        )
        server = await self._serve_control()
        loaded = [name for name, info in self.pm.infos.items() if info.status == "loaded" and not info.builtin]
        record = {
            "event": "startup", "version": __version__, "agent_id": self.agent_id, "broker": broker.url,
            "client_id": self.link.client_id, "pid": os.getpid(), "plugins": loaded,
            "handlers": sorted(handlers), "wake_policy": self.settings.wake.policy,
            "store": str(self.paths.store), "socket": str(self.paths.socket),
        }
        # one line: key=value pairs in text logs, fields of the JSON object in JSON logs
        log.info("swarmbus daemon starting %s", " ".join(f"{k}={v}" for k, v in record.items() if k != "event"),
                 extra=record)
        # read before the link starts: a message stored meanwhile is dispatched by _on_stored, once
        for message in self.store.undispatched():
            self.dispatcher.submit(message)
        self.link.start()
        heartbeat = loop.create_task(self._heartbeat())
        try:
            await self._stop.wait()
        finally:
            log.info("stopping: publishing offline presence")
            heartbeat.cancel()
            server.close()
            await self.dispatcher.drain(timeout=2.0)
            await asyncio.to_thread(
                self.link.stop, final=(presence_topic(self.agent_id), self._presence("offline", reason="stopped"))
            )
            with contextlib.suppress(FileNotFoundError):
                self.paths.socket.unlink()
        return 0

    # -- link callbacks (network thread) ---------------------------------------------------------
    def _on_connected(self, session_present: bool) -> None:
        assert self.link is not None and self.store is not None
        self.link.publish(presence_topic(self.agent_id), self._presence("online"), retain=True)
        for message_id, topic, payload in self.store.outbox_pending():
            if message_id not in self._outbox_inflight:
                self._publish_spooled(message_id, topic, payload)

    def _on_message(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        assert self.link is not None and self.store is not None and self._loop is not None
        try:
            result = self.store.accept(topic, payload, self.agent_id)
        except StoreError as exc:
            log.error("could not store an inbound message (%s); not acknowledging it, reconnecting", exc)
            self.link.reconnect_soon()
            return
        self.link.ack(mid, qos)
        if result.outcome == "quarantined":
            log.warning("quarantined a message on %s: %s", topic, result.reason)
        elif result.outcome == "duplicate":
            log.info("duplicate of stored message seq %s ignored", result.seq)
        elif result.outcome == "stored" and result.message is not None:
            log.info("stored message %s from %s (seq %s)", result.message.id, result.message.from_agent, result.seq)
            self._loop.call_soon_threadsafe(self._on_stored, result.message)

    def _on_stored(self, message: StoredMessage) -> None:
        self.dispatcher.submit(message)
        self._loop.create_task(self._notify())  # type: ignore[union-attr]

    async def _notify(self) -> None:
        assert self._new_message is not None
        async with self._new_message:
            self._new_message.notify_all()

    # -- sending -----------------------------------------------------------------------------------
    def _publish_spooled(self, message_id: str, topic: str, payload: bytes) -> PublishTicket:
        assert self.link is not None and self.store is not None
        self._outbox_inflight.add(message_id)
        ticket = self.link.publish(topic, payload)
        store = self.store

        def on_ack() -> None:
            self._outbox_inflight.discard(message_id)
            store.outbox_published(message_id)

        ticket.on_done(on_ack)
        return ticket

    async def send_envelope(self, envelope: Envelope, wait: float) -> str:
        """Spool and publish; return ``published`` once PUBACKed within ``wait`` s, else ``queued``."""
        assert self.store is not None
        payload = envelope.to_wire()
        topic = topic_for_recipient(envelope.to)
        if not self.store.outbox_add(envelope.id, topic, payload):
            return "duplicate"
        ticket = self._publish_spooled(envelope.id, topic, payload)
        acked = await asyncio.to_thread(ticket.wait, wait) if wait > 0 else ticket.done.is_set()
        return "published" if acked else "queued"

    async def _send_from_handler(self, to: str, subject: str, body: str, **fields: Any) -> str:
        envelope = new_envelope(self.agent_id, to, subject, body, **fields)
        await self.send_envelope(envelope, wait=0)
        return envelope.id

    # -- heartbeat and supervision ---------------------------------------------------------------
    async def _heartbeat(self) -> None:
        assert self.link is not None
        interval = self.settings.daemon.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            if not self.link.thread_alive() and not self._stop.is_set():  # type: ignore[union-attr]
                log.error("MQTT link thread died; restarting it")
                self.link._thread = None
                self.link.start()
            if self.link.connected:
                self.link.publish(presence_topic(self.agent_id), self._presence("online"), retain=True)

    # -- control socket ----------------------------------------------------------------------------
    async def _serve_control(self) -> asyncio.AbstractServer:
        path = self.paths.socket
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        server = await asyncio.start_unix_server(self._serve_one, path=str(path))
        os.chmod(path, 0o600)
        return server

    def status(self) -> dict[str, Any]:
        assert self.link is not None and self.store is not None
        link = self.link
        return {
            "ok": True,
            "agent_id": self.agent_id,
            "pid": os.getpid(),
            "version": __version__,
            "started_at": self.started_at,
            "broker": self.settings.broker.url,
            "client_id": link.client_id,
            "connected": link.connected,
            "protocol": link.protocol,
            "session_present": link.session_present,
            "connected_since": link.connected_since,
            "last_error": link.last_error,
            "last_inbound_at": link.last_inbound_at,
            "last_puback_at": link.last_puback_at,
            "callback_errors": link.callback_errors,
            "link_thread_alive": link.thread_alive(),
            "handlers_running": self.dispatcher.busy,
            "last_seq": self.store.last_seq(),
            "counters": self.store.counters(),
            "outbox_pending": len(self.store.outbox_pending()),
            "store": str(self.paths.store),
        }

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=10)
            answer = await self._answer(json.loads(line or b"{}"))
        except Exception as exc:
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "kind": "failure"}
        try:
            writer.write(json.dumps(answer).encode("utf-8") + b"\n")
            await writer.drain()
        finally:
            writer.close()

    async def _answer(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "status":
            return self.status()
        if op == "send":
            try:
                envelope = Envelope.from_dict(req.get("envelope") or {})
            except EnvelopeError as exc:
                return {"ok": False, "error": str(exc), "kind": "usage"}
            if envelope.from_agent != self.agent_id:
                return {"ok": False, "error": f"this daemon sends as {self.agent_id!r}, not {envelope.from_agent!r}", "kind": "usage"}
            status = await self.send_envelope(envelope, float(req.get("wait", 5.0)))
            return {"ok": True, "id": envelope.id, "to": envelope.to, "status": status}
        if op == "wait":
            assert self._new_message is not None and self.store is not None
            after = int(req.get("after", 0))
            timeout = float(req.get("timeout", 30))
            store = self.store
            async with self._new_message:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._new_message.wait_for(lambda: store.last_seq() > after), timeout)
            return {"ok": True, "last_seq": store.last_seq()}
        if op == "read":
            return await self._read(req)
        return {"ok": False, "error": f"unknown op {op!r}", "kind": "usage"}

    async def _read(self, req: dict[str, Any]) -> dict[str, Any]:
        """Non-destructive read for one consumer: acknowledge ``ack_ids``, then return up to
        ``max`` unacknowledged messages, waiting up to ``wait`` seconds for one if none is."""
        assert self._new_message is not None and self.store is not None
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
        store = self.store
        acked = store.ack(consumer, ack_ids)
        if limit == 0:
            return {"ok": True, "acked": acked, "messages": []}
        messages = store.unacked(consumer, limit)
        if not messages and wait > 0:
            async with self._new_message:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._new_message.wait_for(lambda: bool(store.unacked(consumer, 1))), wait)
            messages = store.unacked(consumer, limit)
        return {"ok": True, "acked": acked, "messages": [m.to_json() for m in messages]}

