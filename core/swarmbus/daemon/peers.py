"""What the daemon knows about the agents it sends to, from their retained presence records.

The daemon **watches** an agent's presence record (``agents/<id>/presence``, not heartbeats)
only once it has a reason to: it sends that agent a message, it still redelivers to it after a
restart, or a plugin asks (``HandlerContext.watch_presence``). It does not subscribe to every
agent's record: with ``agents/+/presence`` each daemon of an N-agent fleet woke for every other
agent's start and stop, N² deliveries, and 100 daemons started 1.5x slower
(docs/benchmarks.md).

For each watched agent it keeps the last record, so a sender can tell a recipient that sends
delivery receipts (presence carries ``"receipts": 1``) from one that does not (the predecessor
swarmbus-py 0.2.0, or a swarmbus older than receipts), and from one never seen at all.

"Never seen" needs proof that the broker has no retained record: the broker sends a
subscription's retained messages before anything published after the SUBSCRIBE reaches the
subscriber, so once a **sentinel** published to the daemon's own sync topic after the
subscription comes back, a record that has not arrived does not exist. Each watch gets a
sequence number; the connection's first sentinel (``b"sync"``, the presence keeper's) covers
every watch made before the connect, and each later watch publishes ``b"peers <seq>"``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Literal

from swarmbus.envelope import BROADCAST
from swarmbus.presence_records import Presence, parse_presence
from swarmbus.topics import agent_of, presence_topic
from swarmbus.transport.link import Subscription

log = logging.getLogger("swarmbus.daemon")
Capability = Literal["receipts", "no receipts", "never seen", "unknown"]
MAX_WATCHED = 10_000
"""Agents watched at most (each is one subscription on the broker); past it, ``unknown``."""
SENTINEL_PREFIX = b"peers "


class Peers:
    """Presence records of the agents this daemon watches (use from the event loop).

    :param subscribe: ``(subscriptions)``: add them on the link (now if connected, and after
        every reconnect): :meth:`swarmbus.transport.link.MqttLink.subscribe`.
    :param send_sentinel: ``(payload)``: publish ``payload`` to this daemon's own sync topic,
        when connected (else the next connection's first sentinel covers the watch).
    :param on_online: ``(agent_id)`` when a watched agent's record turns online (after sync).
    :param on_change: ``(agent_id, online)`` whenever a watched agent's record changes between
        online and offline (after sync), for operator events.
    """

    def __init__(self, agent_id: str, subscribe: Callable[[list[Subscription]], object] = lambda subs: None,
                 send_sentinel: Callable[[bytes], bool] = lambda payload: False,
                 on_online: Callable[[str], object] | None = None,
                 on_change: Callable[[str, bool], object] | None = None) -> None:
        self.agent_id = agent_id
        self.subscribe = subscribe
        self.send_sentinel = send_sentinel
        self.on_online = on_online
        self.on_change = on_change
        self.synced = False
        """This connection's first sentinel came back (every watch made before it is synced)."""
        self._records: dict[str, Presence] = {}
        self._watched: dict[str, int] = {}  # agent -> watch sequence number
        self._seq = 0
        self._connect_mark = 0  # the last seq subscribed before this connection's first sentinel
        self._synced_upto = -1  # every watch with seq <= this has had its retained record
        self._waiters: list[tuple[str, asyncio.Future[None]]] = []

    # -- watching ------------------------------------------------------------------------------------
    def watch(self, agent: str) -> None:
        """Watch ``agent``'s presence from now on (idempotent; not our own id; at most
        :data:`MAX_WATCHED` agents)."""
        if agent in self._watched or agent in (self.agent_id, BROADCAST) or len(self._watched) >= MAX_WATCHED:
            return
        if agent_of(presence_topic(agent), "presence") is None:
            return  # not an agent id (broadcast, or junk): nothing to watch
        self._seq += 1
        self._watched[agent] = self._seq
        # QoS 0: a retained record comes again on every (re)subscribe, and on NATS a QoS 1
        # subscription is a replicated JetStream consumer, slow to make and refused with a node down
        self.subscribe([Subscription(presence_topic(agent), 0)])
        self.send_sentinel(SENTINEL_PREFIX + str(self._seq).encode())

    def watched(self) -> list[str]:
        return list(self._watched)

    async def known(self, agent: str, timeout: float) -> Capability:
        """:meth:`capability` once it is no longer ``unknown``, waiting at most ``timeout``
        seconds for the watch's record or sentinel (watches ``agent`` first)."""
        self.watch(agent)
        if self.capability(agent) != "unknown" or timeout <= 0 or agent not in self._watched:
            return self.capability(agent)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (agent, future)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            pass
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)
        return self.capability(agent)

    def _wake_waiters(self) -> None:
        if not self._waiters:
            return
        for agent, future in list(self._waiters):
            if not future.done() and self.capability(agent) != "unknown":
                future.set_result(None)

    # -- link events ---------------------------------------------------------------------------------
    @staticmethod
    def handles(topic: str) -> bool:
        return agent_of(topic, "presence") is not None

    def on_message(self, topic: str, payload: bytes) -> None:
        """A presence record (any bytes: a malformed or cleared one forgets nothing)."""
        record = parse_presence(topic, payload)
        if record is None or record.agent not in self._watched:
            return
        before = self._records.get(record.agent)
        self._records[record.agent] = record
        turned = before is None or before.online != record.online
        if turned and self.synced and record.online and self.on_online is not None:
            self.on_online(record.agent)
        if turned and self.synced and before is not None and self.on_change is not None:
            self.on_change(record.agent, record.online)
        self._wake_waiters()

    def on_connected(self) -> None:
        """A new connection: its subscriptions cover every watch so far; the retained records
        come again before the connection's first sentinel."""
        self.synced = False
        self._connect_mark = self._seq
        self._synced_upto = -1

    def on_synced(self) -> None:
        """The connection's first sentinel (``b"sync"``) came back."""
        self.synced = True
        self._synced_upto = max(self._synced_upto, self._connect_mark)
        self._wake_waiters()

    def on_sentinel(self, payload: bytes) -> bool:
        """A payload on our sync topic: True if it was a watch's sentinel (``b"peers <seq>"``)."""
        if not payload.startswith(SENTINEL_PREFIX):
            return False
        try:
            seq = int(payload[len(SENTINEL_PREFIX):])
        except ValueError:
            return True
        if self.synced:  # a sentinel of an earlier connection proves nothing about this one
            self._synced_upto = max(self._synced_upto, min(seq, self._seq))
            self._wake_waiters()
        return True

    # -- answers -------------------------------------------------------------------------------------
    def capability(self, agent: str) -> Capability:
        """``receipts`` (its last record says it sends them), ``no receipts`` (a record without
        the capability: the predecessor), ``never seen`` (the broker holds no record for that
        id) or ``unknown`` (not watched, or its watch not synced with the broker yet)."""
        record = self._records.get(agent)
        if record is not None:
            return "receipts" if record.receipts else "no receipts"
        seq = self._watched.get(agent)
        if seq is not None and seq <= self._synced_upto:
            return "never seen"
        return "unknown"

    def record(self, agent: str) -> Presence | None:
        return self._records.get(agent)
