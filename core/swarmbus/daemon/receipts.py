"""The delivery ladder on the daemon: recording steps, sending receipts, taking them in.

Receiving side: every newly stored message whose envelope asks for receipts (a daemon's sends
ask for ``stored``) gets a ``stored`` receipt on its sender's receipts topic (QoS 0; a duplicate
gets it again: the sender republishes until one arrives); a plain MQTT publisher, the
predecessor or a ``send --direct`` asks for none and gets none. The later steps
(``wake``, ``surfaced``, ``acknowledged``, ``replied``) are recorded in the ``ladder`` table and
sent only when the envelope asks for them (:func:`swarmbus.receipts.requested_steps`). The
``stored`` step of a received message is its ``messages.received_at``: nothing more is written
on the receive path.

Sending side: receipts arriving on ``agents/<us>/receipts`` are hostile input: each is parsed
(:func:`swarmbus.receipts.parse_receipt`, total), and recorded only for a message this daemon
sent to the agent that signed it (or broadcast); anything else is logged and dropped. A
``stored`` receipt ends the message's redelivery.

Every recorded step calls ``swarmbus_delivery_event`` and wakes :attr:`Ladder.changed` waiters.
Nothing here raises into the receive path: failures are logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from swarmbus.api import DeliveryEvent, StoredMessage
from swarmbus.envelope import BROADCAST, Envelope
from swarmbus.errors import StoreError
from swarmbus.plugins import HookRelay
from swarmbus.receipts import (
    PUBLISHED,
    REPLIED,
    STORED,
    Receipt,
    ReceiptError,
    parse_receipt,
    requested_steps,
)
from swarmbus.store import Store
from swarmbus.topics import receipt_filters, receipt_signer, receipts_topic, route_of
from swarmbus.transport.link import MqttLink, Subscription

from .control_server import NewMessages

log = logging.getLogger("swarmbus.daemon")
REJECT_LOG_EVERY = 60.0
"""Seconds between two warnings about rejected receipts (the rest are counted)."""


class Ladder:
    """See the module docstring. Use from the daemon's event loop.

    A receipt goes only to an envelope that asks for it (its ``receipts`` field,
    :func:`swarmbus.receipts.requested_steps`); a daemon's sends ask for ``stored``. With
    ``verify_senders`` receipts go out on ``agents/<sender>/receipts/<own id>`` and only those
    whose topic carries their ``by`` are accepted (a mismatch is refused either way).
    """

    def __init__(self, store: Store, agent_id: str, link: MqttLink, relay: HookRelay, *,
                 verify_senders: bool = False) -> None:
        self.store = store
        self.verify_senders = verify_senders
        self.agent_id = agent_id
        self.link = link
        self.relay = relay
        self.topic = receipts_topic(agent_id)
        self.changed = NewMessages()
        self.rejected = 0
        self._last_reject_log = 0.0

    def subscriptions(self) -> list[Subscription]:
        return [Subscription(t, 1) for t in receipt_filters(self.agent_id)]

    def handles(self, topic: str) -> bool:
        return receipt_signer(topic, self.agent_id)[0]

    # -- receiving side ------------------------------------------------------------------------------
    def stored(self, messages: list[StoredMessage]) -> None:
        """Newly stored messages: a ``stored`` receipt to each sender; a reply to a message we
        sent records ``replied`` for it."""
        replies = []
        for message in messages:
            self._send_receipt(message.envelope, STORED, message.received_at)
            self._event(message.id, STORED, "received", self.agent_id, message.from_agent, message.received_at)
            if message.envelope.in_reply_to is not None:
                replies.append(message)
        for reply in replies:
            original = reply.envelope.in_reply_to
            assert original is not None
            try:
                outcome = self.store.record_receipt(original, REPLIED, reply.from_agent, reply.received_at,
                                                    f"reply {reply.id}")
            except StoreError as exc:
                log.warning("could not record the reply to %s: %s", original, exc)
                continue
            if outcome == "new":
                self._sent_event(original, REPLIED, reply.from_agent, reply.received_at, f"reply {reply.id}")

    def duplicates(self, envelopes: Iterable[Envelope]) -> None:
        """Messages received again: their sender did not get our ``stored`` receipt; send it again."""
        now = time.time()
        for envelope in envelopes:
            self._send_receipt(envelope, STORED, now)

    def local_step(self, message: StoredMessage, step: str, detail: str = "", at: float | None = None) -> bool:
        """Record a later step of a received message (``wake``, ``surfaced``, ``acknowledged``,
        ``replied``), once per message and step; send its receipt if the envelope asked for it.
        Returns True when it was new. Never raises (a store failure is logged)."""
        at = time.time() if at is None else at
        try:
            new = self.store.record_steps([(message.id, step, self.agent_id, at, detail)])
        except StoreError as exc:
            log.warning("could not record step %s of message %s: %s", step, message.id, exc)
            return False
        if not new:
            return False
        if step in requested_steps(message.envelope):
            self._send_receipt(message.envelope, step, at, detail)
        self._event(message.id, step, "received", self.agent_id, message.from_agent, at, detail)
        return True

    def local_steps(self, message_ids: Iterable[str], step: str, detail: str = "") -> int:
        """:meth:`local_step` for stored messages by id (unknown ids are skipped); how many were new."""
        count = 0
        for message_id in dict.fromkeys(message_ids):
            try:
                message = self.store.message_by_id(message_id)
            except Exception as exc:  # a broken row must not fail the read that surfaced it
                log.warning("could not read message %s to record %s: %s", message_id, step, exc)
                continue
            if message is not None and self.local_step(message, step, detail):
                count += 1
        return count

    def _send_receipt(self, envelope: Envelope, step: str, at: float, detail: str = "") -> None:
        if envelope.from_agent == self.agent_id:
            return
        if step == STORED and not requested_steps(envelope):
            return  # nobody would read it: a plain publisher, the predecessor, a `send --direct`
        payload = Receipt(envelope.id, step, self.agent_id, at, detail).to_wire()
        try:
            # QoS 0: a lost receipt heals itself (the sender republishes; the duplicate gets one
            # again), and a burst of receipts must not pile up in the client's in-flight queue
            by = self.agent_id if self.verify_senders else None
            self.link.publish(receipts_topic(envelope.from_agent, by), payload, qos=0)
        except Exception as exc:  # the sender republishes until it has one; never stall intake
            log.warning("could not publish the %s receipt for %s: %s", step, envelope.id, exc)

    # -- sending side --------------------------------------------------------------------------------
    def published(self, message_id: str, topic: str) -> None:
        """The broker acknowledged a message we sent."""
        route = route_of(topic)
        peer = route.recipient if route is not None else BROADCAST
        self._sent_event(message_id, PUBLISHED, self.agent_id, time.time(), "", peer=peer)

    def gave_up(self, message_id: str, recipient: str, why: str) -> None:
        self._sent_event(message_id, "gave up", self.agent_id, time.time(), why, peer=recipient)

    def on_receipt(self, topic: str, payload: bytes) -> None:
        """An inbound receipt (any bytes) on one of :meth:`subscriptions`. Never raises."""
        try:
            receipt = parse_receipt(payload)
        except ReceiptError as exc:
            return self._reject(str(exc))
        signer = receipt_signer(topic, self.agent_id)[1]
        if signer is not None and signer != receipt.by:
            return self._reject(f"spoofed: a receipt signed {receipt.by!r} on {topic}")
        if signer is None and self.verify_senders:
            return self._reject(f"unverified: a receipt from {receipt.by!r} on {topic} (security.verify_senders)")
        try:
            outcome = self.store.record_receipt(receipt.message_id, receipt.step, receipt.by, receipt.at,
                                                receipt.detail)
        except StoreError as exc:  # the receiver sends `stored` again when we republish
            log.warning("could not record a %s receipt for %s: %s", receipt.step, receipt.message_id, exc)
            return None
        if outcome in ("not ours", "wrong receiver"):
            return self._reject(f"{receipt.step} receipt from {receipt.by} for {receipt.message_id[:40]!r}: {outcome}")
        if outcome == "new":
            self._sent_event(receipt.message_id, receipt.step, receipt.by, receipt.at, receipt.detail)
        return None

    def _reject(self, reason: str) -> None:
        self.rejected += 1
        now = time.monotonic()
        if now - self._last_reject_log >= REJECT_LOG_EVERY:
            self._last_reject_log = now
            log.warning("ignored a receipt on %s: %s (%d ignored so far)", self.topic, reason, self.rejected)

    # -- events ----------------------------------------------------------------------------------------
    def _sent_event(self, message_id: str, step: str, by: str, at: float, detail: str, peer: str | None = None) -> None:
        self._event(message_id, step, "sent", by, peer if peer is not None else by, at, detail)

    def _event(self, message_id: str, step: str, side: str, by: str, peer: str, at: float, detail: str = "") -> None:
        self.changed.notify()
        self.relay.delivery_event(DeliveryEvent(message_id, step, side, by, peer, at, detail))  # type: ignore[arg-type]
