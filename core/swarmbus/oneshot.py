"""Short-lived MQTT work for the CLI: direct sends, one-shot receives and presence scans.

A one-shot receive is used only when no daemon owns the agent id. It takes the same
ownership lock the daemon takes, connects with the daemon's persistent session
(``swarmbus-<id>``) so messages queued for the agent while nothing ran are delivered, commits
each to the agent's store before acknowledging it (exactly as the daemon does, but without
running handlers), and lets the caller read from the store.

"Everything queued has arrived" is detected with a sentinel, not a sleep: after subscribing,
we publish to a private sync topic we are subscribed to; the broker queues it behind the
session's queued messages, so its arrival means they have all been delivered.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterable

from swarmbus.envelope import Envelope
from swarmbus.errors import TimeoutExpired
from swarmbus.ownership import Ownership
from swarmbus.paths import AgentPaths
from swarmbus.presence_records import (
    Heartbeat,
    Presence,
    merge_heartbeats,
    parse_heartbeat,
    parse_presence,
)
from swarmbus.settings import BrokerSettings, Settings
from swarmbus.store import Store
from swarmbus.topics import (
    PRESENCE_FILTER,
    QOS,
    heartbeat_topic,
    presence_topic,
    receive_filters,
    sync_topic,
    topic_for_recipient,
)
from swarmbus.transport.link import MqttLink, Subscription, one_shot_client_id
from swarmbus.transport.negotiated import ProtocolMemory

SCAN_QOS = 0
"""The presence scan subscribes at QoS 0: retained records still come, in order before the
sentinel, and on NATS a QoS 0 subscription is a plain one (SUBACK in ~10 ms) where each QoS 1
subscription is a replicated JetStream consumer (0.2-0.8 s, and refused after 4 s while a cluster
node is down)."""


def send_direct(settings: Settings, envelope: Envelope, *, timeout: float = 10.0) -> None:
    """Connect, publish at QoS 1, wait for the PUBACK, disconnect: synchronously, in the
    calling thread (:func:`swarmbus.transport.publish.publish_once`).

    :raises BrokerUnreachable: no connection within ``broker.connect_timeout``, or refused.
    :raises TimeoutExpired: no PUBACK within ``timeout`` seconds.
    """
    from swarmbus.transport.publish import publish_once

    sender = envelope.from_agent if settings.security.verify_senders else None
    publish_once(settings.broker, topic_for_recipient(envelope.to, sender), envelope.to_wire(),
                 agent_id=envelope.from_agent, timeout=timeout, memory=ProtocolMemory.in_state_dir(settings.state_dir))


class _Sentinel:
    def __init__(self, broker: BrokerSettings, agent_id: str | None) -> None:
        self.topic = sync_topic(broker.client_id_prefix, broker.username, agent_id, secrets.token_hex(8))
        self.arrived = threading.Event()


def receive_once(
    settings: Settings,
    agent_id: str,
    *,
    wait_for_new: float = 0.0,
    drain_timeout: float = 10.0,
) -> int:
    """Receive what the broker holds for ``agent_id`` into its store; return how many new
    messages were stored. With ``wait_for_new`` > 0, keep listening up to that many seconds
    until at least one new message is stored.

    :raises OwnershipError: a daemon (or another reader) owns the id.
    :raises BrokerUnreachable: the broker cannot be reached.
    """
    paths = AgentPaths.for_agent(agent_id, settings.state_dir)
    paths.ensure()
    broker = settings.broker
    stored = threading.Event()
    count = 0
    sentinel = _Sentinel(broker, agent_id)
    with Ownership(paths.lock, "one-shot reader"), Store(paths.store, sync=settings.daemon.store_sync) as store:
        link: MqttLink

        def on_message(topic: str, payload: bytes, mid: int, qos: int) -> None:
            nonlocal count
            if topic == sentinel.topic:
                link.ack(mid, qos)
                sentinel.arrived.set()
                return
            result = store.accept(topic, payload, agent_id, dispatch=False,
                                  verify_senders=settings.security.verify_senders)
            link.ack(mid, qos)
            if result.outcome == "stored":
                count += 1
                stored.set()

        def on_connected(session_present: bool) -> None:
            link.publish(sentinel.topic, b"sync", qos=1)

        link = MqttLink(
            broker,
            client_id=f"{broker.client_id_prefix}-{agent_id}",
            persistent=True,
            session_expiry=settings.daemon.session_expiry,
            manual_ack=True,
            subscriptions=[*(Subscription(t, QOS, no_local=n) for t, n in receive_filters(agent_id)),
                           Subscription(sentinel.topic, 1)],
            on_message=on_message,
            on_connected=on_connected,
            reconnect_min=0.2,
            reconnect_max=2.0,
            protocol_memory=ProtocolMemory.in_state_dir(settings.state_dir),
        )
        link.retry_log_level = logging.DEBUG
        link.start()
        try:
            link.wait_connected(broker.connect_timeout)
            if not sentinel.arrived.wait(drain_timeout):
                raise TimeoutExpired(f"queued messages did not finish arriving within {drain_timeout:.0f}s")
            if wait_for_new > 0 and count == 0:
                stored.wait(wait_for_new)
            link._client.unsubscribe(sentinel.topic)
        finally:
            link.stop(timeout=2.0)
    return count


def scan_presence(settings: Settings, *, timeout: float = 5.0, agent_id: str | None = None,
                  known: Iterable[str] = ()) -> list[Presence]:
    """Every retained presence record on the broker (or only ``agent_id``'s), sorted by agent
    id, each with the last heartbeat of its instance. The ``known`` agent ids are also asked
    for by exact topic: a broker that delivers no retained messages to wildcard subscriptions
    (RabbitMQ before 3.13) still answers for them.

    :raises BrokerUnreachable: the broker cannot be reached.
    :raises TimeoutExpired: the retained set did not arrive within ``timeout`` seconds.
    """
    broker = settings.broker
    sentinel = _Sentinel(broker, settings.agent_id)
    found: dict[str, Presence] = {}
    beats: dict[str, Heartbeat] = {}
    link: MqttLink

    def on_message(topic: str, payload: bytes, mid: int, qos: int) -> None:
        if topic == sentinel.topic:
            sentinel.arrived.set()
            return
        record = parse_presence(topic, payload)
        if record is not None:
            found[record.agent] = record
            return
        beat = parse_heartbeat(topic, payload)
        if beat is not None:
            beats[beat.agent] = beat

    def on_connected(session_present: bool) -> None:
        link.publish(sentinel.topic, b"sync", qos=1)

    topic_filter = PRESENCE_FILTER if agent_id is None else presence_topic(agent_id) + "/#"
    exact = [] if agent_id is not None else [
        Subscription(t, SCAN_QOS) for a in dict.fromkeys(known) for t in (presence_topic(a), heartbeat_topic(a))]
    link = MqttLink(
        broker,
        client_id=one_shot_client_id(broker.client_id_prefix, agent_id or settings.agent_id, "list"),
        subscriptions=[Subscription(topic_filter, SCAN_QOS), *exact, Subscription(sentinel.topic, SCAN_QOS)],
        on_message=on_message,
        on_connected=on_connected,
        reconnect_min=0.2,
        reconnect_max=1.0,
        protocol_memory=ProtocolMemory.in_state_dir(settings.state_dir),
    )
    link.retry_log_level = logging.DEBUG
    link.start()
    try:
        link.wait_connected(broker.connect_timeout)
        if not sentinel.arrived.wait(timeout):
            raise TimeoutExpired(f"presence scan did not complete within {timeout:.0f}s")
    finally:
        link.stop(timeout=2.0)
    return merge_heartbeats(found, beats)


def known_agents(settings: Settings, limit: int = 1000) -> list[str]:
    """Agent ids known on this machine: every agent dir under the state dir, and the peers each
    agent's store has heard from or sent to (see :meth:`Store.known_peers`)."""
    from swarmbus.envelope import AGENT_ID_RE
    from swarmbus.paths import default_state_dir

    root = (settings.state_dir or default_state_dir()) / "agents"
    found: dict[str, None] = {}
    try:
        dirs = sorted(p for p in root.iterdir() if p.is_dir() and AGENT_ID_RE.match(p.name))
    except OSError:
        return []
    for directory in dirs[:limit]:
        found[directory.name] = None
        store_path = directory / "store.sqlite3"
        if store_path.exists() and len(found) < limit:
            try:
                with Store(store_path) as store:
                    found.update(dict.fromkeys(store.known_peers(limit)))
            except Exception as exc:  # a store we cannot read only means fewer names to ask for
                logging.getLogger("swarmbus.cli").debug("list: cannot read %s: %s", store_path, exc)
    return [a for a in found if AGENT_ID_RE.match(a)][:limit]


def stale(record: Presence, now: float | None = None) -> bool:
    """An online record whose last sign of life (its own time or its last heartbeat) is older
    than three heartbeat intervals."""
    from swarmbus.envelope import parse_timestamp

    seen = record.last_seen
    if not record.online or seen is None or record.heartbeat_s is None:
        return False
    try:
        age = (now or time.time()) - parse_timestamp(seen).timestamp()
    except ValueError:
        return False
    return age > 3 * record.heartbeat_s


def retire_agent(settings: Settings, agent_id: str) -> list[str]:
    """Remove what a retired agent left on the broker: its persistent session (a connection with
    its client id and a clean start ends it; MQTT 5 with a session expiry of 0, 3.1.1 with a
    clean session) and its retained presence record and heartbeat (cleared with empty retained
    publishes). Returns what was done, one line each. The caller makes sure the agent's daemon
    does not run: connecting with its client id takes its session over.

    :raises BrokerUnreachable: the broker cannot be reached.
    :raises TimeoutExpired: a publish was not acknowledged in time.
    """
    broker = settings.broker
    link = MqttLink(broker, client_id=f"{broker.client_id_prefix}-{agent_id}", persistent=False,
                    reconnect_min=0.2, reconnect_max=1.0,
                    protocol_memory=ProtocolMemory.in_state_dir(settings.state_dir))
    link.retry_log_level = logging.DEBUG
    link.start()
    done = []
    try:
        link.wait_connected(broker.connect_timeout)
        done.append(f"ended {agent_id}'s broker session (client id {link.client_id}) on {link.url}")
        for topic in (presence_topic(agent_id), heartbeat_topic(agent_id)):
            link.publish_and_wait(topic, b"", retain=True, timeout=broker.connect_timeout)
        done.append(f"cleared {agent_id}'s retained presence and heartbeat")
    finally:
        link.stop(timeout=2.0)
    return done

