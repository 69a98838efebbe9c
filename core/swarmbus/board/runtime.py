"""The task board inside one daemon: arbiter for the tasks its agent posts, claimer for others'.

The daemon (:mod:`swarmbus.daemon.listener`) builds one :class:`TaskBoard` and wires it in:

- **receive**: every publish the receiver took in is offered to :meth:`TaskBoard.divert` before
  the receiver commits the burst; protocol messages (content type
  :data:`~swarmbus.board.wire.TASK_CONTENT_TYPE`) are applied to the board database in one
  transaction and acknowledged (PUBACK, and a ``stored`` receipt that ends the sender's
  redelivery) only after it committed; a malformed one is quarantined like any bad message; a
  grant of a task for the host is *also* stored as an ordinary message, so the wake policy and
  ``swarmbus read`` see it. They never reach ``swarmbus read`` otherwise.
- **offers**: the offer topics of the agent's role, capabilities and swarm are subscribed on the
  first connection (MQTT 5: as shared subscriptions, so each offer goes to one agent of a pool;
  MQTT 3.1.1: plainly, every agent of the pool gets each offer); :meth:`TaskBoard.on_offer`
  claims what fits while there is capacity and queues the rest.
- **control socket**: ``{"op": "task", "action": "post" | "complete" | "fail", ...}``
  (:meth:`TaskBoard.control`).
- **service**: :meth:`TaskBoard.run` (the built-in ``tasks`` plugin registers it): sends the
  ``outbound`` messages through the daemon's durable outbox, expires leases and offers open
  tasks again, renews the leases of the tasks held here, runs tasks with plugin handlers.

Everything runs on the daemon's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from swarmbus.api import HandlerContext, Task, TaskHandler
from swarmbus.envelope import Envelope, EnvelopeError, new_envelope, parse_timestamp
from swarmbus.errors import StoreError
from swarmbus.settings import Settings
from swarmbus.store import Prepared
from swarmbus.transport.link import Subscription

from . import arbiter, claimer
from .effects import Effects, Key
from .ledger import Ledger, TaskRow
from .wire import (
    MANY,
    MAX_ATTEMPTS,
    MAX_LEASE,
    MIN_LEASE,
    PRIORITIES,
    TASK_CONTENT_TYPE,
    TO_ARBITER,
    Offer,
    TaskMessage,
    TaskSpec,
    TaskWireError,
    check_names,
    check_task_id,
    check_type,
    check_value,
    clean_text,
    dumps,
    ineligible,
    is_offer_topic,
    iso,
    new_task_id,
    offer_filters,
    parse_message,
    parse_offer,
    shared,
    state_topic,
    subject_of,
)

log = logging.getLogger("swarmbus.tasks")
OFFER_TTL = 300.0
"""Seconds after which an offer (by its own time) is too old to claim: the arbiter offers an
open task again anyway."""
QUEUE_LIMIT = 1000
"""The most offers kept waiting for capacity (the oldest are dropped first)."""
REPUBLISH_LIMIT = 1000
"""State records republished after each (re)connect: the most recently changed tasks."""
PURGE_AFTER = 86_400.0
"""Seconds applied-message ids and sent outbound messages are kept (redelivery gives up by then)."""


def collect_handlers(relay: Any, settings: Settings) -> dict[str, TaskHandler]:
    """Every :class:`~swarmbus.TaskHandler` registered through ``swarmbus_task_handlers``, by type.

    :raises ValueError: a type registered twice, or not a task type."""
    found: dict[str, TaskHandler] = {}

    def register(handler: TaskHandler) -> None:
        try:
            check_type(handler.type)
        except TaskWireError as exc:
            raise ValueError(f"task handler: {exc}") from None
        if handler.type in found:
            raise ValueError(f"task handler for type {handler.type!r} registered twice")
        found[handler.type] = handler

    relay.task_handlers(register, settings)
    return found


class TaskBoard:
    """See the module docstring. ``handlers``: the plugin task handlers, by type. The daemon
    sets the wiring attributes (:meth:`attach`) before the link starts."""

    def __init__(self, ledger: Ledger, settings: Settings, agent_id: str,
                 handlers: Mapping[str, TaskHandler] | None = None) -> None:
        self.ledger = ledger
        self.settings = settings
        self.agent_id = agent_id
        self.handlers = dict(handlers or {})
        cfg = settings.tasks
        self.cfg = cfg
        self.role = settings.role
        self.capabilities = tuple(sorted(settings.capabilities))
        self.swarm = settings.swarm
        self.host = cfg.host == "yes" or (cfg.host == "auto" and bool(settings.host_type or settings.wake.command))
        self.publish: Callable[[str, bytes, bool], object] = lambda topic, payload, retain: None
        self.subscribe: Callable[[list[Subscription]], object] = lambda subs: None
        self.unsubscribe: Callable[[list[str]], object] | None = None
        self.send: Callable[[Envelope], Awaitable[str]] | None = None
        self.quarantine: Callable[[str, bytes, str, str | None], object] = lambda topic, payload, reason, mid: None
        self.receipts: Callable[[list[Envelope]], object] = lambda envelopes: None
        self.connected: Callable[[], bool] = lambda: True
        self.inject: Callable[[Envelope], object] | None = None
        self.context: HandlerContext | None = None
        self.subscriptions: list[str] = []
        self.shared = False
        self.counters: dict[str, int] = {}
        self._queue: OrderedDict[Key, Offer] = OrderedDict()
        self._runs: dict[Key, asyncio.Task[None]] = {}
        self._pending_runs: list[Key] = []
        self._renew_at: dict[Key, float] = {}
        self._answers: dict[Key, list[asyncio.Future[tuple[str, str]]]] = {}
        self._wake: asyncio.Event | None = None
        self._next_claim_check = 0.0
        self._next_purge = 0.0
        self._connected_once = False
        self._sending = False
        self._injected: set[str] = set()  # outbound messages to this agent itself, handed to its receiver

    def attach(self, *, publish: Callable[[str, bytes, bool], object], subscribe: Callable[[list[Subscription]], object],
               send: Callable[[Envelope], Awaitable[str]], quarantine: Callable[[str, bytes, str, str | None], object],
               receipts: Callable[[list[Envelope]], object],
               unsubscribe: Callable[[list[str]], object] | None = None,
               connected: Callable[[], bool] | None = None,
               inject: Callable[[Envelope], object] | None = None) -> None:
        """Wire the board to the daemon: ``publish(topic, payload, retain)`` at QoS 1 on the
        daemon's link, ``subscribe(subscriptions)`` (kept over reconnects), ``send(envelope)``
        (spool in the durable outbox; returns its status), ``quarantine(topic, payload, reason,
        message_id)`` (a row in the store's quarantine), ``receipts(envelopes)`` (``stored``
        receipts for protocol messages taken in), ``unsubscribe(topics)``, ``connected()`` (is the
        link up: leases do not expire while this arbiter cannot hear renewals), ``inject(envelope)``
        (hand a message to this agent itself to the daemon's own receive path: no broker round
        trip, no redelivery waiting for a receipt nobody sends to itself)."""
        self.publish, self.subscribe, self.send = publish, subscribe, send
        self.quarantine, self.receipts, self.unsubscribe = quarantine, receipts, unsubscribe
        self.inject = inject
        if connected is not None:
            self.connected = connected

    def _count(self, name: str, by: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + by

    # -- what this agent takes ---------------------------------------------------------------------------
    def kind_of(self, task_type: str) -> str | None:
        """``plugin`` (a handler runs it), ``host`` (the host agent takes it) or None."""
        if task_type in self.handlers:
            return "plugin"
        return "host" if self.host else None

    @property
    def takes_tasks(self) -> bool:
        return bool(self.handlers) or self.host

    def _free(self, host: bool) -> int:
        """How many more tasks of this kind (for the host, or run by handlers) may be claimed now."""
        limit = self.cfg.host_capacity if host else self.cfg.capacity
        marks = ",".join("?" * len(claimer.ACTIVE))
        used = self.ledger.query(f"SELECT COUNT(*) FROM work WHERE host = ? AND state IN ({marks})",  # noqa: S608
                                 (int(host), *claimer.ACTIVE))[0][0]
        return limit - int(used)

    # -- the link -------------------------------------------------------------------------------------------
    @staticmethod
    def handles(topic: str) -> bool:
        """True for an offer topic (the daemon hands those to :meth:`on_offer`)."""
        return is_offer_topic(topic)

    def on_connected(self, protocol: str) -> None:
        """Every (re)connect: subscribe to the offers (the first time; MQTT 5 shared when the
        connection is MQTT 5 and ``[tasks] shared`` allows), give held claims a fresh lease (their
        renewals could not arrive while this arbiter was away), offer open tasks now, and
        republish the state records of recently changed tasks."""
        if not self._connected_once:
            self._connected_once = True
            self._subscribe_offers(protocol)
        now = time.time()
        fx = Effects()

        def write(db: sqlite3.Connection) -> None:
            arbiter.grace(db, fx, now)
            db.execute("UPDATE tasks SET next_offer_at = ? WHERE state = 'open'", (now,))

        try:
            self.ledger.write(write)
        except StoreError as exc:
            log.error("task board: %s", exc)
        for row in self.ledger.query("SELECT task_id FROM tasks ORDER BY updated_at DESC LIMIT ?", (REPUBLISH_LIMIT,)):
            fx.states.add(row[0])
        self._after(fx)
        self._kick()

    def _subscribe_offers(self, protocol: str) -> None:
        filters = offer_filters(self.swarm, self.role, self.capabilities) if self.takes_tasks else []
        self.shared = bool(filters) and (self.cfg.shared == "yes" or (self.cfg.shared == "auto" and protocol == "5"))
        # ~many (tasks needing several capabilities) is never shared: not every agent of that pool
        # has them all, and an offer the broker hands to one that lacks one would be lost to the rest
        topics = [shared(f) if self.shared and not f.endswith(f"/{MANY}/+") else f for f in filters]
        rows = self.ledger.query("SELECT value FROM meta WHERE key = 'offer_subscriptions'")
        before: list[str] = []
        with contextlib.suppress(ValueError, TypeError):
            before = [str(t) for t in json.loads(rows[0][0])] if rows else []
        stale = [t for t in before if t not in topics]
        if stale and self.unsubscribe is not None:
            self.unsubscribe(stale)  # the persistent session still holds them (another role, or MQTT version)
        try:
            self.ledger.write(lambda db: db.execute("INSERT OR REPLACE INTO meta VALUES ('offer_subscriptions', ?)",
                                                    (json.dumps(topics),)))
        except StoreError as exc:
            log.warning("task board: could not record the offer subscriptions: %s", exc)
        self.subscriptions = topics
        if topics:
            self.subscribe([Subscription(t, 1) for t in topics])
            log.info("task board: taking offers for swarm %s, role %s, capabilities %s (%s; %s)",
                     self.swarm or "-", self.role or "-", ", ".join(self.capabilities) or "-",
                     "shared subscriptions" if self.shared else "every agent of a pool gets each offer",
                     ", ".join(sorted(self.handlers)) + (" and host tasks" if self.host else "")
                     if self.handlers else "host tasks")

    def on_offer(self, topic: str, payload: bytes) -> None:
        """An offer arrived (any bytes: never raises). Claim it when it fits this agent and there
        is room; queue it while there is none; a malformed one is quarantined."""
        try:
            offer = parse_offer(topic, payload)
        except TaskWireError as exc:
            self._count("offers_rejected")
            self.quarantine(topic, payload, f"invalid task offer: {exc}", None)
            return
        except Exception as exc:  # a parser bug must not stall the receive path
            self._count("offers_rejected")
            self.quarantine(topic, payload, f"unparseable task offer ({type(exc).__name__}: {str(exc)[:200]})", None)
            return
        self._count("offers")
        kind = self.kind_of(offer.type)
        if kind is None or ineligible(offer.role, offer.capabilities, offer.swarm, self.role, self.capabilities,
                                      self.swarm) is not None:
            self._count("offers_not_for_us")
            return
        try:
            if time.time() - parse_timestamp(offer.offered_at).timestamp() > OFFER_TTL:
                self._count("offers_too_old")
                return
        except ValueError:
            return
        key = (offer.owner, offer.task_id)
        if self._free(kind == "host") > 0:
            self._claim(offer, kind == "host")
            return
        self._queue.pop(key, None)
        self._queue[key] = offer
        while len(self._queue) > QUEUE_LIMIT:
            self._queue.popitem(last=False)

    def _claim(self, offer: Offer, host: bool) -> bool:
        fx = Effects()
        try:
            done = self.ledger.write(lambda db: claimer.claim(db, fx, offer, host, self.role, self.capabilities,
                                                              self.swarm, time.time()))
        except StoreError as exc:
            log.error("task board: could not claim %s: %s", offer.task_id, exc)
            return False
        if done:
            self._count("claims")
        self._after(fx)
        return done

    def _drain_queue(self) -> None:
        """Claim queued offers, oldest first, while there is room (fresh ones only)."""
        now = time.time()
        free = {True: self._free(True), False: self._free(False)}
        for key, offer in list(self._queue.items()):
            if free[True] <= 0 and free[False] <= 0:
                return
            host = self.kind_of(offer.type) == "host"
            if free[host] <= 0:
                continue
            del self._queue[key]
            with contextlib.suppress(ValueError):
                if now - parse_timestamp(offer.offered_at).timestamp() > OFFER_TTL:
                    continue
            if self._claim(offer, host):
                free[host] -= 1

    # -- protocol messages, before the receiver commits -------------------------------------------------------
    def divert(self, batch: list[Prepared]) -> set[int]:
        """Apply the protocol messages of a received burst (one transaction), before anything is
        acknowledged. Returns the indices of those taken here; the receiver commits the others
        (ordinary messages; grants of host tasks, which are both; protocol messages found
        malformed, which this marks as quarantined).

        :raises StoreError: the board database failed: nothing was applied; the receiver keeps
            the burst unacknowledged and tries again.
        """
        picked = [(n, p) for n, p in enumerate(batch)
                  if p.kind == "message" and p.envelope is not None and p.envelope.content_type == TASK_CONTENT_TYPE]
        if not picked:
            return set()
        taken: set[int] = set()
        receipts: list[Envelope] = []
        fx = Effects()
        now = time.time()

        def write(db: sqlite3.Connection) -> None:
            for n, p in picked:
                envelope = p.envelope
                assert envelope is not None
                try:
                    message = parse_message(envelope.body)
                    host_grant = message.op == "grant" and message.task is not None and \
                        self.kind_of(message.task.type) != "plugin"
                    fresh = db.execute("INSERT OR IGNORE INTO inbound VALUES (?, ?)", (envelope.id, now)).rowcount == 1
                    if envelope.from_agent == self.agent_id:  # one it handed itself: sent now
                        db.execute("UPDATE outbound SET spooled_at = ? WHERE id = ? AND spooled_at IS NULL",
                                   (now, envelope.id))
                        self._injected.discard(envelope.id)
                    keep = False
                    if fresh:
                        with self.ledger.transaction():  # a savepoint: a bad message undoes only its own writes
                            keep = self._apply(db, fx, envelope.from_agent, message, now)
                except TaskWireError as exc:
                    self._quarantined(p, f"invalid task message: {exc}")
                    continue
                except sqlite3.Error:
                    raise
                except Exception as exc:  # a bug must not stall the receive path: keep the bytes, say why
                    log.exception("task board: could not apply message %s", envelope.id)
                    self._quarantined(p, f"task message could not be applied ({type(exc).__name__}: {str(exc)[:200]})")
                    continue
                if host_grant and (keep or not fresh):
                    continue  # stored as an ordinary message too (the store recognises a duplicate)
                taken.add(n)
                receipts.append(envelope)

        self.ledger.write(write)  # StoreError: nothing was applied; the receiver tries the burst again
        self._count("messages", len(taken))
        if receipts:
            self.receipts(receipts)
        self._after(fx)
        return taken

    @staticmethod
    def _quarantined(p: Prepared, reason: str) -> None:
        assert p.envelope is not None
        p.kind, p.reason, p.message_id, p.envelope = "quarantine", reason, p.envelope.id, None

    def _apply(self, db: sqlite3.Connection, fx: Effects, sender: str, message: TaskMessage, now: float) -> bool:
        """One protocol message from ``sender``; True when it must also be stored as an ordinary
        message (a new grant of a task for the host). :raises TaskWireError: it contradicts itself."""
        op = message.op
        if op in TO_ARBITER:
            {"claim": arbiter.claim, "renew": arbiter.renew, "complete": arbiter.complete,
             "fail": arbiter.fail}[op](db, fx, sender, message, now)
            self._count(f"{op}s_in")
            return False
        if op == "grant":
            spec = message.task
            assert spec is not None
            if spec.owner != sender:
                raise TaskWireError(f"a grant of {spec.owner}'s task {spec.task_id} sent by {sender}")
            host = self.kind_of(spec.type) != "plugin"
            new = claimer.grant(db, fx, sender, message, host, now)
            self._count("grants" if new else "grants_ignored")
            return new and host
        if op == "refuse":
            claimer.refused(db, fx, sender, message, now)
            self._count(f"refusals_of_{message.of}")
        else:
            claimer.acked(db, fx, sender, message, now)
        return False

    # -- after a commit -----------------------------------------------------------------------------------------
    def _after(self, fx: Effects) -> None:
        """Carry out what a committed step left to do. Never raises (it runs on the receive path):
        what fails here is repaired by the next step, reconnect or tick (state records are
        published again, open tasks offered again, held tasks renewed from the database)."""
        try:
            self._carry_out(fx)
        except Exception:
            log.exception("task board: could not carry out a committed step in full")

    def _carry_out(self, fx: Effects) -> None:
        for task_id in sorted(fx.states):
            self._publish_state(task_id)
        for offer in fx.offers:
            self.publish(offer.topic, dumps(offer.to_json()).encode("utf-8"), False)
            self._count("offers_published")
        now = time.time()
        for key in fx.granted:
            row = self.ledger.work(*key)
            self._renew_at[key] = now + _renew_every(row.lease if row is not None else None)
        for key in fx.cancels:
            self._renew_at.pop(key, None)
            run = self._runs.pop(key, None)
            if run is not None:
                log.warning("task board: the lease of %s (from %s) is lost; cancelling its run", key[1], key[0])
                run.cancel()
        for key in fx.runs:
            self._start_run(key)
        for key, answer in fx.answered.items():
            self._renew_at.pop(key, None)
            for future in self._answers.pop(key, []):
                if not future.done():
                    future.set_result(answer)
        if fx.freed and self._queue:
            self._drain_queue()
        if fx.outbound:
            self._kick()

    def _publish_state(self, task_id: str) -> None:
        row = self.ledger.task(task_id)
        if row is not None:
            self.publish(state_topic(task_id, row.spec.owner), dumps(row.record()).encode("utf-8"), True)

    def _kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # -- the service --------------------------------------------------------------------------------------------
    async def run(self, context: HandlerContext) -> None:
        """The board's service (``swarmbus_services``): send, expire, offer, renew, run."""
        self.context = context
        self._wake = asyncio.Event()
        self._recover()
        while True:
            self._wake.clear()
            await self._pump()
            now = time.time()
            self._tick(now)
            delay = self._next_delay(time.time())
            if delay > 0 and not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()

    def _recover(self) -> None:
        """After a (re)start: run again the plugin tasks a stop interrupted (their lease may still
        hold; the arbiter refuses their result if not), renew what is held."""
        now = time.time()
        for row in self.ledger.works(claimer.HELD):
            self._renew_at[row.key] = now
            if row.state == "running" and not row.host:
                self._start_run(row.key)
        for key in self._pending_runs:
            self._start_run(key)
        self._pending_runs = []

    def _next_delay(self, now: float) -> float:
        deadlines = [now + 30.0, self._next_claim_check]
        with contextlib.suppress(sqlite3.Error):
            due = self.ledger.next_deadline() if self.connected() else None  # (a reconnect kicks the loop)
            if due is not None:
                deadlines.append(due)
        if self._renew_at:
            deadlines.append(min(self._renew_at.values()))
        return max(0.0, min(deadlines) - now)

    def _tick(self, now: float) -> None:
        """Expire leases and offer open tasks (only while connected: a lease must not run out
        because this arbiter could not hear its renewals), abandon unanswered claims, renew."""
        fx = Effects()
        due = self.ledger.next_deadline() if self.connected() else None
        check_claims = now >= self._next_claim_check

        def write(db: sqlite3.Connection) -> None:
            if due is not None and due <= now:
                arbiter.expire(db, fx, now)
                arbiter.offer_due(db, fx, now, self.cfg.offer_interval, self.cfg.offer_max)
            if check_claims:
                claimer.abandon_stale_claims(db, fx, now)

        if (due is not None and due <= now) or check_claims:
            try:
                self.ledger.write(write)
            except StoreError as exc:
                log.error("task board: %s; trying again", exc)
            if check_claims:
                self._next_claim_check = now + 5.0
                for row in self.ledger.works(claimer.HELD):  # (a safety net: every held task is renewed)
                    self._renew_at.setdefault(row.key, now)
            self._after(fx)
        self._renew_due(now)
        if now >= self._next_purge:
            self._next_purge = now + 3600.0
            try:
                self.ledger.purge(now - PURGE_AFTER)
            except StoreError as exc:
                log.warning("task board: could not purge old rows: %s", exc)

    def _renew_due(self, now: float) -> None:
        for key, at in list(self._renew_at.items()):
            if at > now:
                continue
            row = self.ledger.work(*key)
            if row is None or row.state not in claimer.HELD or row.fence is None:
                self._renew_at.pop(key, None)
                continue
            self._renew_at[key] = now + _renew_every(row.lease)
            # a renewal is worth something only until the lease it renews would end: it expires
            # then (its redelivery stops; an arbiter that was away gives every claim a fresh lease)
            self._spawn(self._send_message(key[0], TaskMessage("renew", key[1], fence=row.fence),
                                           expires_in=row.lease or 60.0))

    def _spawn(self, coroutine: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        task.add_done_callback(_log_failure)

    async def _send_message(self, to: str, message: TaskMessage, expires_in: float | None = None) -> None:
        if self.send is None:
            return
        expires = iso(time.time() + expires_in) if expires_in is not None else None
        envelope = new_envelope(self.agent_id, to, subject_of(message), message.encode(),
                                content_type=TASK_CONTENT_TYPE, priority="low", expires_at=expires)
        if to == self.agent_id and self.inject is not None:
            self.inject(envelope)
            return
        await self.send(envelope)

    async def _pump(self) -> None:
        """Hand the committed ``outbound`` messages to the daemon's durable outbox, oldest first."""
        if self.send is None or self._sending:
            return
        self._sending = True
        try:
            while True:
                rows = [r for r in self.ledger.pending_outbound() if r["id"] not in self._injected]
                if not rows:
                    return
                spooled = []
                for r in rows:
                    try:
                        envelope = new_envelope(self.agent_id, r["to_agent"], r["subject"], r["body"],
                                                content_type=TASK_CONTENT_TYPE, priority=r["priority"], id=r["id"])
                        if r["to_agent"] == self.agent_id and self.inject is not None:
                            self._injected.add(r["id"])  # marked sent when the receive path applies it
                            self.inject(envelope)
                            continue
                        await self.send(envelope)
                    except EnvelopeError as exc:  # cannot happen for what the board writes; never retry it
                        log.error("task board: dropped outbound message %s to %s: %s", r["id"], r["to_agent"], exc)
                    except StoreError as exc:
                        log.error("task board: the outbox cannot be written (%s); trying again", exc)
                        break
                    spooled.append((time.time(), r["id"]))
                if spooled:
                    self.ledger.write(lambda db, s=spooled: db.executemany(  # type: ignore[misc]
                        "UPDATE outbound SET spooled_at = ? WHERE id = ?", s))
                if len(spooled) < len(rows):
                    return  # the outbox failed, or messages to this agent wait for its receive path
        except StoreError as exc:
            log.error("task board: %s; trying again", exc)
        finally:
            self._sending = False

    # -- running tasks with plugin handlers ------------------------------------------------------------------------
    def _start_run(self, key: Key) -> None:
        if key in self._runs:
            return
        if self.context is None:
            self._pending_runs.append(key)
            return
        row = self.ledger.work(*key)
        if row is None or row.spec is None or row.fence is None or row.state != "running":
            return
        spec = row.spec
        handler = self.handlers.get(spec.type)
        task = Task(spec.task_id, spec.type, spec.owner, spec.payload, row.attempt or 1, row.fence, spec.max_attempts,
                    spec.role, spec.capabilities, spec.swarm, spec.lease, spec.created_at)
        self._runs[key] = asyncio.get_running_loop().create_task(self._run(key, handler, task),
                                                                 name=f"swarmbus-task-{spec.task_id}")

    async def _run(self, key: Key, handler: TaskHandler | None, task: Task) -> None:
        result: Any = None
        error: str | None = None
        try:
            if handler is None:
                error = f"no handler for task type {task.type} here any more"
            else:
                assert self.context is not None
                result = await handler.run(task, self.context)
                check_value(result, "result")
        except asyncio.CancelledError:
            self._runs.pop(key, None)
            raise
        except TaskWireError as exc:
            error = f"the handler's result cannot be sent: {exc}"
        except Exception as exc:
            error = clean_text(f"{type(exc).__name__}: {exc}")
            log.warning("task %s (%s) failed: %s", task.task_id, task.type, error)
        self._runs.pop(key, None)
        why = self._finish(key, result, error)
        if why is not None:
            log.warning("task board: the outcome of %s was not sent: %s", task.task_id, why)

    def _finish(self, key: Key, result: Any, error: str | None, final: bool = False) -> str | None:
        fx = Effects()
        now = time.time()
        why = self.ledger.write(lambda db: claimer.finish(db, fx, key, now, result=result, error=error, final=final))
        self._after(fx)
        return why

    # -- the control socket ------------------------------------------------------------------------------------------
    async def control(self, req: dict[str, Any]) -> dict[str, Any]:
        """``{"op": "task", "action": ...}``: ``post`` (``type``, ``role``, ``capabilities``,
        ``payload``, ``max_attempts``, ``lease``, ``priority``) answers ``{"ok": true, "task":
        <state record>}``; ``complete`` (``task_id``, ``owner``, ``result``, ``timeout``) and
        ``fail`` (``task_id``, ``owner``, ``error``, ``final``, ``timeout``) send this agent's
        outcome of a task it holds and answer with the arbiter's answer: ``{"ok": true,
        "answer"}`` accepted, ``{"ok": false, "kind": "failure", "error"}`` refused (why), or
        no answer within ``timeout`` seconds (``"pending": true``: it is still delivered)."""
        action = req.get("action")
        try:
            if action == "post":
                return self._post(req)
            if action in ("complete", "fail"):
                return await self._finish_request(req, action)
        except TaskWireError as exc:
            return {"ok": False, "error": str(exc), "kind": "usage"}
        except StoreError as exc:
            return {"ok": False, "error": f"the task board cannot be written: {exc}", "kind": "failure"}
        return {"ok": False, "error": f"unknown task action {action!r}", "kind": "usage"}

    def _post(self, req: dict[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        max_attempts = req.get("max_attempts") or cfg.max_attempts
        lease = req.get("lease") or cfg.lease
        priority = req.get("priority") or "high"
        if not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or not 1 <= max_attempts <= MAX_ATTEMPTS:
            raise TaskWireError(f"max attempts must be from 1 to {MAX_ATTEMPTS}, not {max_attempts!r}")
        if not isinstance(lease, int | float) or isinstance(lease, bool) or not MIN_LEASE <= lease <= MAX_LEASE \
                or math.isnan(lease):
            raise TaskWireError(f"the lease must be from {MIN_LEASE:g} to {MAX_LEASE:g} seconds, not {lease!r}")
        if priority not in PRIORITIES:
            raise TaskWireError(f"priority must be one of {', '.join(PRIORITIES)}, not {priority!r}")
        role = req.get("role")
        now = time.time()
        spec = TaskSpec(new_task_id(), check_type(req.get("type")), self.agent_id, check_value(req.get("payload")),
                        None if role is None else check_names([role], "role")[0],
                        check_names(req.get("capabilities") or []), self.swarm, float(lease), max_attempts, priority,
                        iso(now) or "")
        fx = Effects()

        def write(db: sqlite3.Connection) -> None:
            arbiter.post(db, fx, spec, now)
            arbiter.offer_due(db, fx, now, cfg.offer_interval, cfg.offer_max)

        self.ledger.write(write)
        self._after(fx)
        self._kick()
        row = self.ledger.task(spec.task_id)
        assert row is not None
        return {"ok": True, "task": row.record()}

    async def _finish_request(self, req: dict[str, Any], action: str) -> dict[str, Any]:
        task_id = check_task_id(req.get("task_id"))
        owner = req.get("owner")
        rows = [w for w in self.ledger.work_by_task(task_id) if owner in (None, w.owner)]
        if not rows:
            return {"ok": False, "kind": "failure", "error": f"{self.agent_id} never claimed a task {task_id}"
                    + (f" of {owner}" if owner else "")}
        held = [w for w in rows if w.state in claimer.HELD] or rows
        if len({w.owner for w in held}) > 1:
            return {"ok": False, "kind": "usage", "error": f"{task_id} is a task of several agents here "
                    f"({', '.join(sorted({w.owner for w in held}))}): say whose with --owner"}
        key = held[0].key
        try:
            timeout = float(req.get("timeout", 30.0))
        except (TypeError, ValueError):
            raise TaskWireError("timeout must be a number of seconds") from None
        if action == "complete":
            why = self._finish(key, check_value(req.get("result"), "result"), None)
        else:
            final = req.get("final", False)
            error = req.get("error")
            if not isinstance(error, str) or not error.strip():
                raise TaskWireError("a failure needs an error text")
            why = self._finish(key, None, clean_text(error), bool(final))
        if why is not None:
            return {"ok": False, "kind": "failure", "error": f"not sent: {why}", "task_id": task_id, "owner": key[0]}
        run = self._runs.pop(key, None)
        if run is not None:
            run.cancel()  # the outcome is given: a plugin run still going is not needed
        future: asyncio.Future[tuple[str, str]] = asyncio.get_running_loop().create_future()
        self._answers.setdefault(key, []).append(future)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, min(timeout, 3600.0))):
                await asyncio.shield(future)
        waiting = self._answers.get(key, [])
        if future in waiting:
            waiting.remove(future)
        if future.done() and not future.cancelled():
            state, answer = future.result()
            if state == "done":
                return {"ok": True, "task_id": task_id, "owner": key[0], "answer": answer}
            return {"ok": False, "kind": "failure", "task_id": task_id, "owner": key[0], "refused": True,
                    "error": f"the arbiter {key[0]} refused it: {answer}"}
        return {"ok": False, "kind": "failure", "task_id": task_id, "owner": key[0], "pending": True,
                "error": f"no answer from the arbiter {key[0]} within {timeout:g}s; the {action} is spooled and is "
                         "delivered when it is reachable (`swarmbus task show` tells the answer)"}

    # -- the daemon's status, and shutdown -----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        posted = {str(r[0]): int(r[1]) for r in self.ledger.query("SELECT state, COUNT(*) FROM tasks GROUP BY state")}
        held = {str(r[0]): int(r[1]) for r in self.ledger.query("SELECT state, COUNT(*) FROM work GROUP BY state")}
        return {"posted": posted, "claimed": held, "running": len(self._runs), "queued_offers": len(self._queue),
                "offer_subscriptions": list(self.subscriptions), "shared": self.shared, "host": self.host,
                "handlers": sorted(self.handlers), "counters": dict(self.counters)}

    def close(self) -> None:
        for run in self._runs.values():
            run.cancel()
        self._runs.clear()

    def record(self, task_id: str) -> dict[str, Any] | None:
        row: TaskRow | None = self.ledger.task(task_id)
        return row.record() if row is not None else None


def _renew_every(lease: float | None) -> float:
    """Seconds between renewals of a claim with this lease: a third of it (a renewal may be lost
    or late twice before the lease ends)."""
    return max(0.1, (lease or 60.0) / 3.0)


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("task board: a renewal could not be sent: %s", task.exception())
