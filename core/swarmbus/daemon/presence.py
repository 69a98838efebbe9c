"""Presence, heartbeat, and one owner per agent id across machines and state dirs.

Records (see :mod:`swarmbus.topics`): the retained ``agents/<id>/presence`` record says
``online`` (published on connect), ``offline`` (clean stop) or, as the Last Will, ``offline`` with
reason ``connection lost``. Each carries this daemon run's ``instance`` id, ``host`` and
``pid``. The retained ``agents/<id>/presence/heartbeat`` is republished every
``daemon.heartbeat_interval`` seconds, so after a crash "last seen" is the last heartbeat.

Ownership: the file lock in the state dir keeps two daemons of one state dir apart; this module
keeps apart daemons that do not share one (another machine, another ``--state-dir``), which
would otherwise take the MQTT session from each other over and over and split the messages
between two stores.

- Before every connect, a one-shot connection reads the agent's presence: if another instance
  is online and has sent a heartbeat within three intervals (and is not a dead pid on this
  host), this daemon does not connect, and stops, saying who holds the id.
- After connecting, the daemon announces itself only once the retained record has arrived
  (a sentinel published to itself comes back behind it); if another live instance announced
  meanwhile, it stops instead.
- If the broker disconnects it because another client took over its session (MQTT 5 reason
  142), or another instance announces itself later (the later announcement yields), it stops.
- Brokers that just close the old connection on a takeover (mosquitto 2.0 does) leave no reason
  code: a connection lost within ``QUICK_LOSS`` seconds of being made, ``QUICK_LOSSES`` times
  within ``QUICK_WINDOW`` seconds while the broker stays reachable, is taken as another client
  connecting with this agent's client id over and over, and the daemon stops instead of
  ping-ponging with it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from swarmbus._version import __version__
from swarmbus.envelope import parse_timestamp, utc_now_iso
from swarmbus.errors import BrokerUnreachable, TimeoutExpired
from swarmbus.ownership import pid_alive
from swarmbus.presence_records import (
    Heartbeat,
    Presence,
    parse_heartbeat,
    parse_presence,
    presence_payload,
)
from swarmbus.receipts import RECEIPT_VERSION
from swarmbus.settings import Settings
from swarmbus.topics import (
    heartbeat_topic,
    presence_topic,
    sync_topic,
)
from swarmbus.transport.link import MqttLink, Subscription, Will

log = logging.getLogger("swarmbus.daemon")
QUICK_LOSS = 10.0
QUICK_LOSSES = 3
QUICK_WINDOW = 60.0


class PresenceKeeper:
    """The presence side of one daemon run. Methods marked *link thread* run in the MQTT link's
    thread; ``on_conflict(text)`` is called (once) when another live instance holds the id."""

    def __init__(self, settings: Settings, agent_id: str, on_conflict: Callable[[str], None]) -> None:
        self.settings = settings
        self.agent_id = agent_id
        self.on_conflict = on_conflict
        self.instance = os.urandom(8).hex()
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.heartbeat_s = settings.daemon.heartbeat_interval
        self.topic = presence_topic(agent_id)
        self.beat_topic = heartbeat_topic(agent_id)
        self.sync_topic = sync_topic(settings.broker.client_id_prefix, settings.broker.username, agent_id,
                                     self.instance)
        self.link: MqttLink | None = None
        self.announced_at: str | None = None
        self.conflict: str | None = None
        self._seen: Presence | None = None
        self._beat: Heartbeat | None = None
        self._connected_at = 0.0
        self._quick_losses: list[float] = []

    # -- payloads ---------------------------------------------------------------------------------
    def record(self, status: str, **extra: Any) -> bytes:
        """A presence payload for this instance (``ts`` now unless given as None)."""
        fields: dict[str, Any] = {"ts": utc_now_iso()}
        fields.update(extra)
        if status == "online":
            fields.setdefault("heartbeat_s", self.heartbeat_s)
        settings = self.settings  # role, capabilities and swarm: left out when unset
        return presence_payload(self.agent_id, status, version=__version__, instance=self.instance,
                                host=self.host, pid=self.pid, receipts=RECEIPT_VERSION, role=settings.role,
                                capabilities=list(settings.capabilities) or None, swarm=settings.swarm, **fields)

    def will(self) -> Will:
        """The Last Will: offline, reason ``connection lost``, no time (nobody knows when)."""
        return Will(self.topic, self.record("offline", ts=None, reason="connection lost"))

    def subscriptions(self) -> list[Subscription]:
        return [Subscription(self.topic, 1), Subscription(self.beat_topic, 1), Subscription(self.sync_topic, 1)]

    def handles(self, topic: str) -> bool:
        return topic in (self.topic, self.beat_topic, self.sync_topic)

    # -- ownership ----------------------------------------------------------------------------------
    def live_holder(self, record: Presence | None, beat: Heartbeat | None, now: float | None = None) -> str | None:
        """Who else holds this agent id, as text, or None when nobody live does."""
        if record is None or not record.online or record.instance in (None, self.instance):
            return None  # the predecessor's records carry no instance: nothing to tell from them
        if record.host == self.host and record.pid is not None and (record.pid == self.pid or not pid_alive(record.pid)):
            return None  # a previous run on this machine that is gone
        stamps = [record.ts] + ([beat.ts] if beat is not None and beat.instance == record.instance else [])
        try:
            last = max(parse_timestamp(t).timestamp() for t in stamps if t)
        except ValueError:
            return None
        interval = record.heartbeat_s or self.heartbeat_s
        age = (now or time.time()) - last
        if age > 3 * interval + 5:
            return None
        return (f"a live swarmbus daemon on host {record.host or '?'} (pid {record.pid or '?'}, instance "
                f"{record.instance}), last heard from {max(0.0, age):.0f}s ago")

    def before_connect(self) -> bool:
        """*link thread*: read the retained presence over a one-shot connection; False (and
        ``on_conflict``) when another live instance holds the id. An unreachable broker is not
        a conflict (the connect will fail and be retried)."""
        from swarmbus.oneshot import scan_presence

        try:
            found = scan_presence(self.settings, agent_id=self.agent_id, timeout=self.settings.broker.connect_timeout)
        except (BrokerUnreachable, TimeoutExpired):
            return True
        record = next((r for r in found if r.agent == self.agent_id), None)
        holder = self.live_holder(record, None if record is None or record.last_beat is None
                                  else Heartbeat(self.agent_id, record.last_beat, record.instance))
        if holder:
            self._conflict(holder)
            return False
        if len(self._quick_losses) >= QUICK_LOSSES:
            span = self._quick_losses[-1] - self._quick_losses[0]
            client_id = self.link.client_id if self.link is not None else "its client id"
            self._conflict(f"another client that keeps connecting as {client_id} (the broker dropped this "
                           f"daemon's connection {len(self._quick_losses)} times in {span:.0f}s, each soon after it "
                           "connected, while staying reachable); it is not a swarmbus daemon announcing itself")
            return False
        return True

    def on_disconnected(self, reason: str) -> None:
        """*link thread*: remember connections lost soon after they were made."""
        now = time.monotonic()
        if now - self._connected_at < QUICK_LOSS:
            self._quick_losses = [t for t in self._quick_losses if now - t < QUICK_WINDOW] + [now]
        else:
            self._quick_losses = []

    def _conflict(self, holder: str) -> None:
        if self.conflict is None:
            self.conflict = f"agent id {self.agent_id!r} is held by {holder}"
            self.on_conflict(self.conflict)

    # -- on the connection ---------------------------------------------------------------------------
    def on_connected(self) -> None:
        """*link thread*: wait for the retained record (sentinel) before announcing."""
        assert self.link is not None
        self._connected_at = time.monotonic()
        self.announced_at = None
        self._seen = self._beat = None
        self.link.publish(self.sync_topic, b"sync", qos=1)

    def on_message(self, topic: str, payload: bytes) -> None:
        """*link thread*: a record on our own presence topics, or our sentinel."""
        assert self.link is not None
        if topic == self.topic:
            record = parse_presence(topic, payload)
            self._seen = record
            if (self.announced_at and record is not None and record.online and record.instance != self.instance
                    and record.instance is not None and self._we_announced_later(record)):
                self._conflict(f"another daemon that announced itself later: host {record.host} pid {record.pid}"
                               f" (instance {record.instance}); the later one yields")
        elif topic == self.beat_topic:
            self._beat = parse_heartbeat(topic, payload)
        elif topic == self.sync_topic and self.announced_at is None and self.conflict is None:
            holder = self.live_holder(self._seen, self._beat)
            if holder:
                self._conflict(holder)
                return
            self.announced_at = utc_now_iso()
            self.link.publish(self.topic, self.record("online", ts=self.announced_at), retain=True)
            self.heartbeat()

    def _we_announced_later(self, other: Presence) -> bool:
        """True when we announced after ``other`` (ties broken by instance id): then we yield."""
        try:
            ours = parse_timestamp(self.announced_at or "").timestamp()
            theirs = parse_timestamp(other.ts or "").timestamp()
        except ValueError:
            return False
        return (ours, self.instance) > (theirs, other.instance or "")

    def heartbeat(self) -> None:
        """Publish the retained heartbeat (any thread)."""
        if self.link is not None and self.link.connected and self.announced_at:
            body = {"agent": self.agent_id, "ts": utc_now_iso(), "instance": self.instance}
            self.link.publish(self.beat_topic, json.dumps(body).encode(), retain=True)
