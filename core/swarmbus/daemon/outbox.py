"""Sending through the daemon: spooled durably, published on its connection, answered truthfully.

A send checks the caller's deadline, commits the envelope to the ``outbox`` table and publishes
it at QoS 1; the caller (the control socket, or a handler's ``context.send``) then waits up to its
``wait`` seconds for the PUBACK: ``published`` if it came, else ``queued`` (it stays spooled and
is published after a reconnect or a restart), or ``refused`` when the broker answered with an
MQTT 5 failure reason (an ACL): then it is not published again, and its ladder says why. A
request taken after its deadline is refused
before anything is spooled (``expired``), so a sender that gave up on an answer never finds its
message delivered later. Waiting is a future on the event loop: any number of concurrent
senders, no thread held for any of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from swarmbus.envelope import BROADCAST, Envelope
from swarmbus.receipts import STORED, with_request
from swarmbus.store import Store
from swarmbus.topics import topic_for_recipient
from swarmbus.transport.link import MqttLink, PublishTicket

from .receiver import Receiver


class Outbox:
    """Spooled sends for one daemon (use from the event loop). With ``verify_senders`` each send
    goes to the topic that carries this agent's id (:func:`swarmbus.topics.topic_for_recipient`)."""

    def __init__(self, store: Store, receiver: Receiver, link: MqttLink, *, verify_senders: bool = False) -> None:
        self.store = store
        self.verify_senders = verify_senders
        self.receiver = receiver
        self.link = link
        self._inflight: set[str] = set()  # ids handed to paho and not yet PUBACKed (it resends them itself)
        self.on_spooled: Callable[[str], object] | None = None
        """Called with the recipient of each newly spooled send (the wake policy's loop guard)."""
        self.plan: Callable[[Envelope], tuple[str, float, float] | None] | None = None
        """Gives a new send's redelivery row ``(recipient, first_at, give_up_at)``, or None."""
        self.on_sent: Callable[[Envelope], object] | None = None
        """Called with each newly spooled envelope, after it is handed to the link."""
        self.on_published: Callable[[str, str], object] | None = None
        """Called with ``(message_id, topic)`` when the broker acknowledged a send."""
        self.on_refused: Callable[[str, str, str], object] | None = None
        """Called with ``(message_id, topic, reason)`` when the broker refused a send."""
        self.refusals: dict[str, tuple[str, str]] = {}
        """``message_id -> (topic, reason)`` of refused sends a caller still waits on (popped by it)."""

    def _publish(self, message_id: str, topic: str, payload: bytes) -> PublishTicket:
        self._inflight.add(message_id)
        ticket = self.link.publish(topic, payload)

        def acked() -> None:
            self._inflight.discard(message_id)
            self.receiver.published(message_id)  # refused too: publishing it again would not help
            if ticket.refused is not None:
                if self.on_refused is not None:
                    self.on_refused(message_id, topic, ticket.refused)
                return
            if self.on_published is not None:
                self.on_published(message_id, topic)

        ticket.on_done(acked)
        return ticket

    def republish(self, message_id: str) -> bool:
        """Publish a spooled send again, same id and payload (redelivery); False when it is not
        spooled or the link still holds its previous publish unacknowledged."""
        if message_id in self._inflight:
            return False
        entry = self.store.outbox_entry(message_id)
        if entry is None:
            return False
        self._publish(entry.message_id, entry.topic, entry.payload)
        return True

    def forget_inflight(self) -> None:
        """The link dropped what it had queued (a new client): the next connect publishes every
        spooled send again."""
        self._inflight.clear()

    def publish_pending(self) -> None:
        """(Re)publish every spooled send paho does not already hold (on connect)."""
        for message_id, topic, payload in self.store.outbox_pending():
            if message_id not in self._inflight:
                self._publish(message_id, topic, payload)

    async def send(self, envelope: Envelope, wait: float, deadline: float | None = None) -> str:
        """Spool and publish ``envelope``. Returns ``published`` (PUBACKed within ``wait`` s),
        ``refused`` (the broker refused it within ``wait`` s; the topic and reason are in
        :attr:`refusals` under its id),
        ``queued`` (spooled; published later), ``duplicate`` (this id is already spooled) or
        ``expired`` (``deadline``, Unix seconds, passed before it could be spooled: not sent).

        :raises StoreError: the spool could not be written (nothing was sent).
        """
        if deadline is not None and time.time() > deadline:
            return "expired"
        redeliver = self.plan(envelope) if self.plan is not None else None
        if redeliver is not None or envelope.to == BROADCAST:
            # a directed send is redelivered until its `stored` receipt; a broadcast's receipts
            # tell `swarmbus trace` who stored it
            envelope = with_request(envelope, [STORED])
        payload = envelope.to_wire()
        topic = topic_for_recipient(envelope.to, envelope.from_agent if self.verify_senders else None)
        if not self.store.outbox_add(envelope.id, topic, payload, redeliver):
            return "duplicate"
        if self.on_spooled is not None:
            self.on_spooled(envelope.to)
        ticket = self._publish(envelope.id, topic, payload)
        if self.on_sent is not None:
            self.on_sent(envelope)
        if ticket.done.is_set():
            return self._outcome(envelope.id, topic, ticket)
        if wait <= 0:
            return "queued"
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ticket.on_done(lambda: _resolve(acked))
        try:
            async with asyncio.timeout(wait):
                await acked
        except TimeoutError:
            return "queued"
        return self._outcome(envelope.id, topic, ticket)

    def _outcome(self, message_id: str, topic: str, ticket: PublishTicket) -> str:
        if ticket.refused is None:
            return "published"
        self.refusals[message_id] = (topic, ticket.refused)
        return "refused"


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
