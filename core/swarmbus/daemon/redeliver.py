"""Redelivery: republish a sent message until the receiver's ``stored`` receipt arrives.

A directed send is spooled with a redelivery row (``redeliveries``: persisted, so it survives a
restart). Until its ``stored`` receipt arrives (:class:`~swarmbus.daemon.receipts.Ladder`), the
same payload, same id, is published again at ``daemon.redeliver_min`` seconds, doubling up to
``daemon.redeliver_max``; the receiver recognises the id as a duplicate, keeps one copy and sends
the receipt again. It ends with the receipt, at ``daemon.redeliver_give_up`` seconds after the
send, at the envelope's ``expires_at``, or as soon as the recipient's presence shows a daemon that
sends no receipts (the predecessor swarmbus-py 0.2.0: it would store every copy). A recipient
never seen (no presence record) is retried: it may simply not have started yet, and when its
presence turns online every redelivery to it is due at once.

This closes, end to end, the windows where a message is lost after the broker acknowledged it:
nobody subscribed yet (an agent that starts later), or a broker that crashed before saving it.
Broadcasts are never redelivered (there is no one receipt to wait for). Redeliveries are counted
in the daemon's status (``redeliveries_pending``) and logged (info per republish, a warning when
one gives up); ``swarmbus trace`` shows the attempts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from swarmbus.envelope import BROADCAST, Envelope, parse_timestamp
from swarmbus.errors import StoreError
from swarmbus.settings import DaemonSettings
from swarmbus.store import Redelivery, Store
from swarmbus.transport.link import MqttLink

from .peers import Peers

log = logging.getLogger("swarmbus.daemon")
BATCH = 100
"""Redeliveries handled per run (the rest are due at once and run next)."""


def backoff(attempts: int, minimum: float, maximum: float) -> float:
    """Seconds before republish number ``attempts + 1``: ``minimum * 2**attempts``, capped."""
    return min(maximum, minimum * 2.0 ** min(attempts, 40))


class Redeliverer:
    """See the module docstring. Use from the daemon's event loop.

    :param republish: ``(message_id) -> bool``: publish the spooled payload again (False when it
        is not spooled or the link already holds it unacknowledged).
    :param on_gave_up: ``(message_id, recipient, why)`` when a redelivery ends without a receipt.
    """

    def __init__(self, store: Store, link: MqttLink, peers: Peers, settings: DaemonSettings,
                 republish: Callable[[str], bool], on_gave_up: Callable[[str, str, str], object]) -> None:
        self.store = store
        self.link = link
        self.peers = peers
        self.minimum = settings.redeliver_min
        self.maximum = max(settings.redeliver_max, settings.redeliver_min)
        self.give_up = settings.redeliver_give_up
        self.republish = republish
        self.on_gave_up = on_gave_up
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    def plan(self, envelope: Envelope) -> tuple[str, float, float] | None:
        """The redelivery row for a new send ``(recipient, first_at, give_up_at)``, or None for a
        broadcast or a recipient whose presence shows it sends no receipts. Watches the
        recipient's presence from now on."""
        if envelope.to == BROADCAST:
            return None
        self.peers.watch(envelope.to)
        if self.peers.capability(envelope.to) == "no receipts":
            return None
        now = time.time()
        return envelope.to, now + self.minimum, now + self.give_up

    def scheduled(self) -> None:
        """A redelivery was added or made due: make sure the timer fires by then."""
        try:
            next_at = self.store.next_redelivery_at()
        except Exception:
            log.exception("could not read the redelivery schedule; trying again at the next heartbeat")
            return
        if next_at is None:
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= next_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = next_at
        self._timer = asyncio.get_running_loop().call_later(max(0.0, next_at - time.time()), self._fire)

    def recipient_online(self, agent_id: str) -> None:
        """``agent_id``'s presence turned online: what waits for it is due now."""
        try:
            if self.store.redeliver_now(agent_id, time.time()):
                self.scheduled()
        except StoreError as exc:
            log.warning("could not reschedule redeliveries to %s: %s", agent_id, exc)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None

    def _fire(self) -> None:
        self._timer = self._timer_at = None
        if not (self.link.connected and self.peers.synced):
            return  # the connect (after presence sync) calls run_due
        try:
            more = self.run_due()
        except Exception:
            log.exception("redelivery failed; trying again at the next heartbeat")
            return
        if more:
            asyncio.get_running_loop().call_soon(self._fire)
        else:
            self.scheduled()

    def run_due(self, now: float | None = None) -> bool:
        """Republish or end every redelivery that is due; True when more are due than one run takes."""
        now = time.time() if now is None else now
        due = self.store.redeliveries_due(now, BATCH)
        ended: list[tuple[Redelivery, str]] = []
        for item in due:
            why = self._ends(item, now)
            if why is not None:
                ended.append((item, why))
                continue
            next_at = now + backoff(item.attempts + 1, self.minimum, self.maximum)
            if self.republish(item.message_id):
                log.info("no stored receipt from %s for message %s yet: published it again (attempt %d; next in %.0fs)",
                         item.recipient, item.message_id, item.attempts + 1, next_at - now)
                self.store.redelivered(item.message_id, now, next_at)
            else:  # still in flight (no PUBACK yet): look again later, without counting an attempt
                self.store.redelivered(item.message_id, item.last_at, next_at, counted=False)
        if ended:
            self.store.end_redeliveries([(item.message_id, why) for item, why in ended], now)
            for item, why in ended:
                log_fn = log.info if why == "no receipts" else log.warning
                log_fn("stopped redelivering message %s to %s after %d attempt(s): %s", item.message_id,
                       item.recipient, item.attempts, why)
                self.on_gave_up(item.message_id, item.recipient, why)
        return len(due) >= BATCH

    def _ends(self, item: Redelivery, now: float) -> str | None:
        if self.peers.capability(item.recipient) == "no receipts":
            return "no receipts"
        if now >= item.give_up_at:
            return "gave up"
        entry = self.store.outbox_entry(item.message_id)
        if entry is None:
            return "gave up"
        try:
            expires_at = Envelope.from_wire(entry.payload).expires_at
            if expires_at is not None and parse_timestamp(expires_at).timestamp() <= now:
                return "expired"
        except Exception:  # our own spooled payload: it parsed when it was sent
            return "gave up"
        return None
