"""The listener daemon (``swarmbus start``): the single MQTT receive owner for an agent id.

This module wires the pieces together and runs them, all on one asyncio event loop (so a message
goes from the socket to the store to a wake child without a thread handoff); each piece has its
own module:

- :class:`~swarmbus.transport.aio_link.AsyncMqttLink` reads publishes in bursts, and the
  :class:`~swarmbus.daemon.receiver.Receiver` commits each burst before acknowledging it, and
  batches the dispatch bookkeeping;
- the :class:`~swarmbus.daemon.dispatch.Dispatcher` runs handlers in lanes (a slow one holds up
  no other), with a bounded number of messages in memory;
- the :class:`~swarmbus.daemon.control_server.ControlServer` serves local sends, reads and waits;
  :class:`~swarmbus.daemon.outbox.Outbox` spools sends;
- :class:`~swarmbus.daemon.presence.PresenceKeeper` keeps presence and makes sure no other live
  daemon holds the same agent id.

Blocking work stays off the loop: connecting and the presence check before each connect run in
a worker thread; wake children are spawned, not waited for by a thread.

Presence: retained ``online`` once connected, retained ``offline`` on a clean stop (SIGINT or
SIGTERM), ``offline`` as the Last Will for a crash.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Iterable
from typing import Any

from swarmbus._version import __version__
from swarmbus.api import HandlerContext, OperatorEvent, StoredMessage
from swarmbus.board.ledger import FILE_NAME as BOARD_FILE
from swarmbus.board.ledger import Ledger
from swarmbus.board.runtime import TaskBoard, collect_handlers
from swarmbus.children import ChildReaper
from swarmbus.default_plugins import manual
from swarmbus.default_plugins.attention import Attention
from swarmbus.envelope import Envelope, new_envelope
from swarmbus.errors import StoreError
from swarmbus.ownership import Ownership
from swarmbus.paths import AgentPaths
from swarmbus.plugins import HookRelay, PluginManager
from swarmbus.receipts import ACKNOWLEDGED, REPLIED, SURFACED, WAKE
from swarmbus.settings import Settings
from swarmbus.store import Prepared, Store
from swarmbus.supervise import current_supervisor
from swarmbus.topics import QOS, inbox_topic, receipt_filters, receive_filters, route_of
from swarmbus.transport.aio_link import AsyncMqttLink
from swarmbus.transport.link import Subscription
from swarmbus.transport.negotiated import ProtocolMemory

from .control_server import ControlServer, NewMessages
from .dispatch import Dispatcher
from .outbox import Outbox
from .peers import Peers
from .presence import PresenceKeeper
from .receipts import Ladder
from .receiver import Receiver
from .redeliver import Redeliverer
from .services import ServiceRunner
from .sessions import HostSessions

log = logging.getLogger("swarmbus.daemon")
EXIT_CONFLICT = 1
RECEIVE_MAXIMUM = 100
"""MQTT 5 Receive Maximum the daemon asks for: received publishes wait unacknowledged in memory
only while the store cannot commit them, so this bounds that memory on any broker."""


class Daemon:
    def __init__(self, settings: Settings, pm: PluginManager) -> None:
        self.settings = settings
        self.pm = pm
        self.relay = HookRelay(pm)
        self.agent_id = settings.require_agent_id()
        self.paths = AgentPaths.for_agent(self.agent_id, settings.state_dir)
        self.started_at = time.time()
        self.supervisor = current_supervisor()
        self.exit_code = 0
        self.stop_reason: str | None = None

    # -- entry point -------------------------------------------------------------------------
    def run(self) -> int:
        """Run until SIGINT/SIGTERM, or until another live daemon is found holding the agent id.
        Returns the exit code (0 on a clean stop, 1 when it stopped for a conflict).

        :raises OwnershipError: another process owns this agent id in this state dir.
        :raises StoreError: the store cannot be opened.
        :raises UsageError: the control socket's directory is not private to this user.
        """
        self.paths.ensure()
        with Ownership(self.paths.lock, "daemon"), Store(self.paths.store, sync=self.settings.daemon.store_sync) as store, \
                Ledger(self.paths.root / BOARD_FILE, sync=self.settings.daemon.store_sync) as ledger:
            self.ledger = ledger
            return asyncio.run(self._main(store))

    async def _main(self, store: Store) -> int:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        settings, agent_id = self.settings, self.agent_id

        self.new_messages = NewMessages()
        self.presence = PresenceKeeper(settings, agent_id, self._on_conflict)
        broker = settings.broker
        self.link = AsyncMqttLink(
            broker,
            client_id=f"{broker.client_id_prefix}-{agent_id}",
            persistent=True,
            session_expiry=settings.daemon.session_expiry,
            manual_ack=True,
            will=self.presence.will(),
            subscriptions=[*(Subscription(t, QOS, no_local=n) for t, n in receive_filters(agent_id)),
                           *self.presence.subscriptions(), *(Subscription(t, QOS) for t in receipt_filters(agent_id))],
            on_message=self._on_message,
            on_connected=self._on_connected,
            on_taken_over=lambda: self._on_conflict(
                f"another client connected as {self.link.client_id} and took over this agent's MQTT session"),
            on_disconnected=self.presence.on_disconnected,
            before_connect=self.presence.before_connect,
            receive_maximum=RECEIVE_MAXIMUM,
            reconnect_min=settings.daemon.reconnect_min,
            reconnect_max=settings.daemon.reconnect_max,
            logger=logging.getLogger("swarmbus.transport"),
            protocol_memory=ProtocolMemory.in_state_dir(settings.state_dir),
        )
        self.ladder = Ladder(store, agent_id, self.link, self.relay, verify_senders=settings.security.verify_senders)
        self.receiver = Receiver(store, agent_id, self.link, on_stored=self._on_stored,
                                 on_recorded=lambda seqs: self.dispatcher.recorded(seqs),
                                 on_duplicates=self.ladder.duplicates,
                                 verify_senders=settings.security.verify_senders)
        self.link.on_cycle = self.receiver.cycle
        self.presence.link = self.link
        self.outbox = Outbox(store, self.receiver, self.link, verify_senders=settings.security.verify_senders)
        self.link.on_reset = self.outbox.forget_inflight
        self.peers = Peers(agent_id, subscribe=self.link.subscribe, send_sentinel=self._send_sentinel,
                           on_online=lambda peer: self.redeliverer.recipient_online(peer),
                           on_change=self._peer_presence_changed)
        for recipient in store.redelivery_recipients():  # still redelivered to after a restart
            self.peers.watch(recipient)
        self.redeliverer = Redeliverer(store, self.link, self.peers, settings.daemon, self.outbox.republish,
                                       self.ladder.gave_up)
        self.outbox.plan = self.redeliverer.plan
        self.outbox.on_sent = self._on_sent
        self.outbox.on_published = self.ladder.published
        self.outbox.on_refused = self._on_refused

        handlers = self.relay.handlers(settings)
        self.board = self._task_board(store)
        self.attention = Attention(store, self.relay, settings)
        self.outbox.on_spooled = self.attention.note_sent
        self.attention.on_released = self._released_woken
        self.sessions = HostSessions(self.paths.root / "host-sessions.json")
        context = HandlerContext(
            agent_id=agent_id, settings=settings, logger=logging.getLogger(f"swarmbus.handler.{agent_id}"),
            send=self._send_from_handler, hooks=self.relay, attention=self.attention, mark_step=self._mark_step,
            watch_presence=self._watch_presence, presence=self._presence_of, host_sessions=self.sessions.live,
            waiting_readers=lambda: self.control.waiting, board=self.board,
        )
        self.context = context
        self.dispatcher = Dispatcher(store, self.relay, handlers, context, self._record_outcomes,
                                     backlog=settings.daemon.backlog)
        self.services = ServiceRunner(self.relay.services(context), context)  # plugins' long-running tasks
        self.control = ControlServer(self.paths.make_socket_path(), agent_id=agent_id, store=store,
                                     outbox=self.outbox, new_messages=self.new_messages, status=self.status,
                                     ladder=self.ladder, peers=self.peers, policy=self._policy_request,
                                     sessions=self.sessions, wake_test=self._wake_test, tasks=self.board.control)
        self.reaper = ChildReaper.install()
        await self.control.start()
        loaded = [name for name, info in self.pm.infos.items() if info.status == "loaded" and not info.builtin]
        record = {
            "event": "startup", "version": __version__, "agent_id": agent_id, "broker": broker.url,
            "client_id": self.link.client_id, "pid": os.getpid(), "instance": self.presence.instance,
            "plugins": loaded, "handlers": sorted(handlers), "wake_policy": settings.wake.policy,
            "store": str(self.paths.store), "socket": str(self.control.path),
        }
        # one line: key=value pairs in text logs, fields of the JSON object in JSON logs
        log.info("swarmbus daemon starting %s", " ".join(f"{k}={v}" for k, v in record.items() if k != "event"),
                 extra=record)
        self.dispatcher.start()  # before the link: what a crash left undispatched is taken in first, in order
        self.attention.start(context)  # held messages: their timer (those already due are woken now)
        self.link.start()
        self.services.start()
        heartbeat = loop.create_task(self._heartbeat())
        try:
            await self._stop.wait()
        finally:
            await self._shutdown(heartbeat)
        return self.exit_code

    async def _shutdown(self, heartbeat: asyncio.Task[None]) -> None:
        heartbeat.cancel()
        await self.services.close()
        self.board.close()
        self.control.close()
        self.paths.release_socket_path()
        self.attention.close()
        self.redeliverer.close()
        await self.dispatcher.drain(timeout=2.0)
        final = None
        if self.stop_reason is None:
            log.info("stopping: publishing offline presence")
            final = (self.presence.topic, self.presence.record("offline", reason="stopped"))
        self.receiver.cycle()  # the last outcomes
        await self.link.aclose(final=final)
        self.reaper.close()

    def _on_conflict(self, text: str) -> None:
        """Another live daemon holds this agent id: stop without touching its presence (any thread)."""
        def stop() -> None:
            if self.stop_reason is None:
                self.stop_reason = text
                self.exit_code = EXIT_CONFLICT
                log.error("stopping: %s; stop it first, or run this daemon with another --agent-id", text)
                self._stop.set()

        self._loop.call_soon_threadsafe(stop)

    # -- link callbacks --------------------------------------------------------------------------
    def _send_sentinel(self, payload: bytes) -> bool:
        """Publish a presence watch's sentinel on our sync topic, when connected (else the next
        connection's first sentinel covers the watch)."""
        if not self.link.connected:
            return False
        self.link.publish(self.presence.sync_topic, payload, qos=QOS)
        return True

    def _on_connected(self, session_present: bool) -> None:
        self.peers.on_connected()
        self.presence.on_connected()
        self.outbox.publish_pending()
        self.board.on_connected(self.link.protocol)

    def _on_message(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        if self.presence.handles(topic):
            if topic == self.presence.sync_topic and self.peers.on_sentinel(payload):
                self.link.ack(mid, qos)  # a presence watch's sentinel: its retained record came before it
                return
            self.presence.on_message(topic, payload)
            self.link.ack(mid, qos)
            if topic == self.presence.sync_topic and not self.peers.synced:
                self.peers.on_synced()  # every watched presence record came before the sentinel
                self.redeliverer.scheduled()
            return
        if self.ladder.handles(topic):
            self.ladder.on_receipt(topic, payload)
            self.link.ack(mid, qos)
            return
        if self.peers.handles(topic):
            self.peers.on_message(topic, payload)
            self.link.ack(mid, qos)
            return
        if self.board.handles(topic):
            self.board.on_offer(topic, payload)  # a claim it makes is committed before this returns
            self.link.ack(mid, qos)
            return
        self.receiver.on_message(topic, payload, mid, qos)

    # -- the task board -----------------------------------------------------------------------------------
    def _task_board(self, store: Store) -> TaskBoard:
        """The task board (:mod:`swarmbus.board`), wired into the receive path, the link, the
        outbox and the quarantine; the built-in ``tasks`` plugin runs its service.

        :raises ValueError: a plugin registered a task type twice (the daemon does not start)."""
        board = TaskBoard(self.ledger, self.settings, self.agent_id, collect_handlers(self.relay, self.settings))

        def publish(topic: str, payload: bytes, retain: bool) -> None:
            self.link.publish(topic, payload, retain=retain, qos=QOS)

        def quarantine(topic: str, payload: bytes, reason: str, message_id: str | None) -> None:
            kept = Prepared.__new__(Prepared)  # a publish already judged: no parsing, just the quarantine row
            kept.topic, kept.payload, kept.kind, kept.reason = topic, payload, "quarantine", reason
            kept.message_id, kept.envelope = message_id, None
            try:
                store.commit_prepared([kept])
            except StoreError as exc:
                log.error("could not quarantine a publish on %s (%s): %s", topic, reason, exc)
                return
            log.warning("quarantined a publish on %s: %s", topic, reason)

        def unsubscribe(topics: list[str]) -> None:
            self.link.unsubscribe(topics)

        async def send(envelope: Envelope) -> str:
            return await self.outbox.send(envelope, wait=0)

        def inject(envelope: Envelope) -> None:
            # a protocol message to this agent itself (it took its own task): straight to the
            # receive path, as if it had arrived (QoS 0: nothing to acknowledge)
            self.receiver.on_message(inbox_topic(self.agent_id, self.agent_id), envelope.to_wire(), 0, 0)
            self.link.wake()

        board.attach(publish=publish, subscribe=self.link.subscribe, send=send, quarantine=quarantine,
                     receipts=self.ladder.duplicates, unsubscribe=unsubscribe,
                     connected=lambda: self.link.connected, inject=inject)
        self.receiver.divert = board.divert
        return board

    # -- the event loop ----------------------------------------------------------------------------------
    def _on_stored(self, messages: list[StoredMessage]) -> None:
        self.dispatcher.offer(messages)
        self.new_messages.notify()
        self.ladder.stored(messages)

    def _on_refused(self, message_id: str, topic: str, reason: str) -> None:
        """The broker refused a send (an ACL): it is not published again; the ladder says why."""
        route = route_of(topic)
        recipient = route.recipient if route is not None else topic
        why = f"refused by the broker ({topic}): {reason}"
        log.warning("the broker refused message %s to %s: %s", message_id, recipient, reason)
        try:
            self.receiver.store.end_redeliveries([(message_id, "refused")], time.time())
        except StoreError as exc:
            log.warning("could not end the redelivery of %s: %s", message_id, exc)
        self.ladder.gave_up(message_id, recipient, why)

    def _on_sent(self, envelope: Envelope) -> None:
        """A send was spooled: schedule its redelivery; a reply records ``replied`` for the original."""
        self.redeliverer.scheduled()
        if envelope.in_reply_to is not None:
            original = self.dispatcher.reader.message_by_id(envelope.in_reply_to)
            if original is not None and original.from_agent != self.agent_id:
                self.ladder.local_step(original, REPLIED, f"reply {envelope.id}")

    def _record_outcomes(self, outcomes: list[tuple[int, str, str, str]], dispatched: list[int]) -> None:
        """The dispatcher's finished runs, to the writer; a ``wake`` outcome is a ladder step."""
        self.receiver.record(outcomes, dispatched)
        for seq, handler, status, detail in outcomes:
            if handler == "wake" and (status != "ok" or detail.startswith("woken")):  # an attempt, not a skip
                message = self.dispatcher.reader.message(seq)
                if message is not None:
                    self.ladder.local_step(message, WAKE, f"{status}: {detail}")

    def _released_woken(self, released: list[tuple[StoredMessage, str, str]]) -> None:
        """Held messages woken when their hold ended: the ladder's ``wake`` step for each."""
        for message, status, detail in released:
            self.ladder.local_step(message, WAKE, f"{status}: {detail}")

    def _mark_step(self, message_ids: Iterable[str], step: str, detail: str = "") -> int:
        """``HandlerContext.mark_step``: a host plugin recording ``surfaced``/``acknowledged``."""
        if step not in (SURFACED, ACKNOWLEDGED):
            raise ValueError(f"mark_step records {SURFACED} or {ACKNOWLEDGED}, not {step!r}")
        return self.ladder.local_steps(message_ids, step, detail)

    def _watch_presence(self, agents: Iterable[str]) -> None:
        """``HandlerContext.watch_presence``: follow these agents' presence records."""
        watch = getattr(self.peers, "watch", None)
        if watch is not None:
            for agent in agents:
                watch(agent)

    def _presence_of(self, agent: str) -> dict[str, Any] | None:
        """``HandlerContext.presence``: the last presence record of a watched agent, or None."""
        record = self.peers.record(agent)
        if record is None:
            return None
        return {"agent": record.agent, "online": record.online, "status": record.status, "ts": record.ts,
                "last_seen": record.last_seen, "instance": record.instance, "host": record.host,
                "reason": record.reason}

    def _peer_presence_changed(self, agent: str, online: bool) -> None:
        """A watched agent's presence turned online or offline: the ``peer_online`` /
        ``peer_offline`` operator event (never raises)."""
        record = self.peers.record(agent)
        detail = (record.reason or "") if record is not None else ""
        self.relay.operator_event(OperatorEvent("peer_online" if online else "peer_offline", agent, time.time(),
                                                detail=detail))

    async def _policy_request(self, req: dict[str, Any]) -> dict[str, Any]:
        """The control socket's ``hold``/``release``: the operator's hold on this agent's wakes."""
        return await manual.control(self.attention, self.agent_id, req)

    async def _send_from_handler(self, to: str, subject: str, body: str, **fields: Any) -> str:
        envelope = new_envelope(self.agent_id, to, subject, body, **fields)
        await self.outbox.send(envelope, wait=0)
        return envelope.id

    async def _heartbeat(self) -> None:
        interval = self.settings.daemon.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            self.presence.heartbeat()
            try:
                self.dispatcher.sweep()
            except Exception:
                log.exception("dispatch sweep failed; trying again at the next heartbeat")
            self.redeliverer.scheduled()
            try:
                self.attention.tick()
            except Exception:
                log.exception("checking held messages failed; trying again at the next heartbeat")

    def _holds_summary(self) -> dict[str, Any]:
        """``{"count", "next_until" (Unix s) | None, "next_rule", "next_reason"}`` of held wakes."""
        holds = self.dispatcher.reader.holds()
        first = holds[0] if holds else None
        return {"count": len(holds), "next_until": first.until if first else None,
                "next_rule": first.rule if first else None, "next_reason": first.reason if first else None}

    async def _wake_test(self) -> dict[str, Any]:
        """Each of this host's wake paths (``swarmbus_wake_paths``): ready or why not, and its
        end-to-end test where it has one; which would fire now."""
        from swarmbus.wake_router import probe_paths

        paths = self.relay.wake_paths(self.settings)
        if not paths:
            return {"ok": True, "host_type": self.settings.host_type, "paths": [], "would_fire": None}
        rows = []
        for name, why in await probe_paths(paths, self.context):
            rows.append({"name": name, "ready": why is None, "detail": why or "ready"})
        for row, path in zip(rows, paths, strict=True):
            if path.test is not None and row["ready"]:
                try:
                    async with asyncio.timeout(10):
                        problem = await path.test(self.context)
                except Exception as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                row["tested"] = problem is None
                row["detail"] = "tested end to end" if problem is None else f"test failed: {problem}"
                row["ready"] = problem is None
        fire = next((r["name"] for r in rows if r["ready"]), None)
        return {"ok": True, "host_type": self.settings.host_type, "paths": rows, "would_fire": fire}

    def status(self) -> dict[str, Any]:
        link, receiver, store = self.link, self.receiver, self.dispatcher.reader
        return {
            "ok": True,
            "agent_id": self.agent_id,
            "pid": os.getpid(),
            "instance": self.presence.instance,
            "version": __version__,
            "started_at": self.started_at,
            "supervisor": self.supervisor,
            "broker": link.url,
            "brokers": [self.settings.broker.url_of(e) for e in link.endpoints],
            "client_id": link.client_id,
            "connected": link.connected,
            "announced": self.presence.announced_at is not None,
            "protocol": link.protocol,
            "session_present": link.session_present,
            "connected_since": link.connected_since,
            "last_error": link.last_error,
            "connect_failures": link.connect_failures,
            "last_inbound_at": link.last_inbound_at,
            "last_puback_at": link.last_puback_at,
            "callback_errors": link.callback_errors,
            "link_running": link.thread_alive(),
            "unacked": receiver.unacked,
            "oldest_unacked_age": receiver.oldest_unacked_age,
            "store_error": receiver.store_error,
            "store_error_since": receiver.store_error_since,
            "handlers_running": self.dispatcher.running(),
            "handlers_queued": self.dispatcher.queued(),
            "messages_held": self.dispatcher.held,
            "last_seq": store.last_seq(),
            "counters": store.counters(),
            "outbox_pending": len(store.outbox_pending()),
            "redeliveries_pending": store.redeliveries_pending(),
            "holds": self._holds_summary(),
            "host_sessions": self.sessions.summary(),
            "manual_hold": manual.describe(self.attention.history.manual, time.time()),
            "unread": max(0, store.last_seq() - store.cursor("default")),
            "services": self.services.status(),
            "tasks": self.board.status(),
            "receipts_rejected": self.ladder.rejected,
            "store": str(self.paths.store),
            "conflict": self.stop_reason,
        }
