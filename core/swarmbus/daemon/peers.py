"""What the daemon knows about other agents from their retained presence records.

The daemon subscribes to ``agents/+/presence`` (records only, not heartbeats). For each agent it
keeps the last record, so a sender can tell a recipient that sends delivery receipts (presence
carries ``"receipts": 1``) from one that does not (the predecessor swarmbus-py 0.2.0, or a
swarmbus older than receipts), and from one never seen at all. The broker sends every retained
record right after the subscription, before this daemon's own sync sentinel comes back, so once
:attr:`Peers.synced` is set "never seen" means the broker holds no record for that id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

from swarmbus.presence_records import Presence, parse_presence
from swarmbus.topics import PEER_PRESENCE_FILTER, agent_of
from swarmbus.transport.link import Subscription

log = logging.getLogger("swarmbus.daemon")
Capability = Literal["receipts", "no receipts", "never seen", "unknown"]
MAX_PEERS = 100_000
"""Records kept at most (a broker full of made-up ids must not grow memory without bound)."""


class Peers:
    """Presence records of other agents (use from the event loop).

    :param on_online: ``(agent_id)`` when an agent's record turns online (live, after sync).
    """

    def __init__(self, agent_id: str, on_online: Callable[[str], object] | None = None) -> None:
        self.agent_id = agent_id
        self.on_online = on_online
        self.synced = False
        self._records: dict[str, Presence] = {}

    @staticmethod
    def subscriptions() -> list[Subscription]:
        return [Subscription(PEER_PRESENCE_FILTER, 1)]

    @staticmethod
    def handles(topic: str) -> bool:
        return agent_of(topic, "presence") is not None

    def on_message(self, topic: str, payload: bytes) -> None:
        """A presence record (any bytes: a malformed or cleared one forgets nothing)."""
        record = parse_presence(topic, payload)
        if record is None:
            return
        before = self._records.get(record.agent)
        if before is None and len(self._records) >= MAX_PEERS:
            return
        self._records[record.agent] = record
        if record.online and (before is None or not before.online) and self.synced and self.on_online is not None:
            self.on_online(record.agent)

    def on_connected(self) -> None:
        """A new connection: the retained records come again before the sync sentinel."""
        self.synced = False

    def on_synced(self) -> None:
        self.synced = True

    def capability(self, agent: str) -> Capability:
        """``receipts`` (its last record says it sends them), ``no receipts`` (a record without
        the capability: the predecessor), ``never seen`` (no record on the broker) or
        ``unknown`` (not synced with the broker yet)."""
        record = self._records.get(agent)
        if record is not None:
            return "receipts" if record.receipts else "no receipts"
        return "never seen" if self.synced else "unknown"

    def record(self, agent: str) -> Presence | None:
        return self._records.get(agent)
