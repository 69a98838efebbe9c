"""The receive path, and the store's writes, on the daemon's event loop.

Every inbound publish on the agent's inbox or on broadcast is parsed as it is read (parsing
never raises: anything unparseable becomes a quarantine entry with its reason) and queued.
After each read burst the link calls :meth:`Receiver.cycle`, which

1. commits the queued publishes in **one** transaction (group commit): each ends stored,
   duplicate or quarantined;
2. only then acknowledges them (PUBACK), for publishes that arrived on the current connection
   (older ones are redelivered by the broker and recognised as duplicates);
3. hands the newly stored messages to the dispatcher;
4. records dispatch outcomes and PUBACKed sends that piled up, batched, in one more transaction,
   at most :data:`BOOKKEEPING_DELAY` after they happened (so acknowledging a burst never waits
   for bookkeeping, and bookkeeping for many messages is one write).

When the store itself fails (disk full, I/O error, read-only), received publishes are kept in
memory and not acknowledged, and the commit is retried with backoff; the broker stops sending
once its in-flight window is full (the daemon asks for an MQTT 5 Receive Maximum of 100), so
memory stays bounded. Bookkeeping that fails is kept and
retried the same way, and the dispatcher keeps the affected messages until it is written. The
state (``store_error``, the oldest unacknowledged publish) is in the daemon's status and checked
by ``swarmbus doctor``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from swarmbus.api import StoredMessage
from swarmbus.envelope import Envelope
from swarmbus.errors import StoreError
from swarmbus.store import Prepared, Store
from swarmbus.transport.link import MqttLink

log = logging.getLogger("swarmbus.daemon")
BOOKKEEPING_DELAY = 0.02
"""Seconds outcomes wait before they are written: they coalesce, and a message arriving
meanwhile is committed and acknowledged first."""

Outcome = tuple[int, str, str, str]  # seq, handler, status, detail


class _Inbound:
    __slots__ = ("generation", "mid", "prepared", "qos", "received")

    def __init__(self, prepared: Prepared, mid: int, qos: int, generation: int, received: float) -> None:
        self.prepared = prepared
        self.mid = mid
        self.qos = qos
        self.generation = generation
        self.received = received


class Receiver:
    """Intake and bookkeeping for one agent's store. See the module docstring.

    :param on_stored: ``(messages)`` with each committed batch's new messages, in seq order.
    :param on_recorded: ``(seqs)`` once the dispatch of these messages is committed as finished.
    :param on_duplicates: ``(envelopes)`` of each committed batch's duplicates (messages already
        stored: their sender republished them), if given.
    :param verify_senders: quarantine messages whose topic does not carry their sender's id
        (:class:`swarmbus.store.Prepared`).
    """

    def __init__(
        self,
        store: Store,
        agent_id: str,
        link: MqttLink,
        *,
        on_stored: Callable[[list[StoredMessage]], object],
        on_recorded: Callable[[list[int]], object],
        on_duplicates: Callable[[list[Envelope]], object] | None = None,
        verify_senders: bool = False,
    ) -> None:
        self.store = store
        self.verify_senders = verify_senders
        self.on_duplicates = on_duplicates
        self.agent_id = agent_id
        self.link = link
        self.on_stored = on_stored
        self.on_recorded = on_recorded
        self._pending: list[_Inbound] = []
        self._outcomes: list[Outcome] = []
        self._dispatched: list[int] = []
        self._published: list[str] = []
        self._retry: asyncio.TimerHandle | None = None
        self._scheduled = False
        self._failures = 0
        self.store_error: str | None = None
        self.store_error_since: float | None = None
        self.divert: Callable[[list[Prepared]], set[int]] | None = None
        """Takes the publishes of a burst that are not for the store before it commits (the task
        board's protocol messages, :meth:`swarmbus.board.runtime.TaskBoard.divert`): applies them
        in its own transaction and returns their indices, which the store then skips; every one
        is acknowledged with the burst. Raising StoreError fails the whole burst (retried)."""

    # -- from the link --------------------------------------------------------------------------
    def on_message(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        """Parse one inbound publish (never raises) and queue it for the next commit."""
        self._pending.append(_Inbound(Prepared(topic, payload, self.agent_id, self.verify_senders), mid, qos, self.link.generation,
                                      time.time()))

    def cycle(self) -> None:
        """Commit, acknowledge and hand over what arrived; then write the bookkeeping."""
        self._scheduled = False
        if self._retry is not None:
            return  # a failed write waits for its retry
        if self._pending and not self._commit_intake():
            return self._retry_later()
        if (self._outcomes or self._dispatched or self._published) and not self._record():
            return self._retry_later()
        if self._failures:
            self._failures = 0
            log.warning("the store accepts writes again (it failed since %s: %s)",
                        time.strftime("%H:%M:%S", time.localtime(self.store_error_since or 0)), self.store_error)
            self.store_error = self.store_error_since = None

    # -- from the dispatcher and the outbox ------------------------------------------------------------
    def record(self, outcomes: list[Outcome], dispatched: list[int]) -> None:
        """Record handler outcomes and finished dispatches (batched: written within
        :data:`BOOKKEEPING_DELAY` seconds)."""
        self._outcomes.extend(outcomes)
        self._dispatched.extend(dispatched)
        self._soon()

    def published(self, message_id: str) -> None:
        """A spooled send was PUBACKed (recorded with the next bookkeeping write)."""
        self._published.append(message_id)
        self._soon()

    @property
    def oldest_unacked_age(self) -> float | None:
        """Seconds since the oldest publish still waiting for its commit and PUBACK arrived."""
        return time.time() - self._pending[0].received if self._pending else None

    @property
    def unacked(self) -> int:
        return len(self._pending)

    # -- internals ----------------------------------------------------------------------------------
    def _soon(self) -> None:
        if not self._scheduled and self._retry is None:
            self._scheduled = True
            asyncio.get_running_loop().call_later(BOOKKEEPING_DELAY, self.cycle)

    def _commit_intake(self) -> bool:
        batch = self._pending
        kept = batch
        try:
            if self.divert is not None:  # first: a failed store commit then retries both, and the board dedups
                taken = self.divert([i.prepared for i in batch])
                if taken:
                    kept = [inbound for n, inbound in enumerate(batch) if n not in taken]
            results = self.store.commit_prepared([i.prepared for i in kept]) if kept else []
        except StoreError as exc:
            self._failed(exc, f"not acknowledging {len(batch)} received message(s)")
            return False
        self._pending = []
        link = self.link
        if link.connected:
            generation = link.generation
            for inbound in batch:
                if inbound.generation == generation and inbound.qos:
                    link.ack(inbound.mid, inbound.qos)
        stored = []
        duplicates: list[Envelope] = []
        for inbound, result in zip(kept, results, strict=True):
            if result.outcome == "stored" and result.message is not None:
                stored.append(result.message)
            elif result.outcome == "quarantined":
                log.warning("quarantined a message on %s: %s", inbound.prepared.topic, result.reason)
            elif result.outcome == "duplicate":
                log.debug("duplicate of stored message seq %s ignored", result.seq)
                if inbound.prepared.envelope is not None:
                    duplicates.append(inbound.prepared.envelope)
        if stored:
            self.on_stored(stored)
        if duplicates and self.on_duplicates is not None:
            self.on_duplicates(duplicates)
        return True

    def _record(self) -> bool:
        outcomes, dispatched, published = self._outcomes, self._dispatched, self._published
        try:
            self.store.record_outcomes(outcomes, dispatched, published)
        except StoreError as exc:
            self._failed(exc, "dispatch bookkeeping kept in memory")
            return False
        self._outcomes, self._dispatched, self._published = [], [], []
        if dispatched:
            self.on_recorded(dispatched)
        return True

    def _failed(self, exc: StoreError, consequence: str) -> None:
        if self.store_error is None:
            self.store_error_since = time.time()
            log.error("the store cannot be written (%s): %s; retrying", exc, consequence)
        self.store_error = str(exc)
        self._failures += 1

    def _retry_later(self) -> None:
        delay = min(5.0, 0.1 * 2.0 ** min(self._failures, 6))

        def retry() -> None:
            self._retry = None
            self.cycle()

        self._retry = asyncio.get_running_loop().call_later(delay, retry)
