"""Job traffic on the broker: one short-lived connection that subscribes, publishes and reads.

:class:`JobBus` opens one MQTT connection (:class:`swarmbus.transport.link.MqttLink`, a clean
session with a one-shot client id, so it never takes over an agent's daemon session), subscribes
to the given job filters at QoS 1, and then publishes a sentinel on its connection-private sync
topic (``swarmbus/sync/<user>/<token>``, which ``swarmbus broker acl`` lets every principal use).
The broker sends the retained messages of a new subscription before anything published after
it, so when the sentinel comes back every retained record and outcome has arrived: that is the
**snapshot** (:meth:`JobBus.snapshot`); what comes after is **live** (:meth:`JobBus.next`). No
sleep is involved.

Everything read is turned into a :class:`Seen`: a valid record or event, or the reason it was
refused (:attr:`Seen.error`); an empty retained payload (a cleared topic) is skipped. A peer can
publish anything under ``swarmbus/jobs/#``: nothing it sends raises here.

Publishes are QoS 1 and wait for the PUBACK; a PUBACK with an MQTT 5 failure reason (135 "Not
authorized") raises :class:`~swarmbus.errors.PublishRefused`. On MQTT 3.1.1 a broker cannot
refuse a publish (mosquitto acknowledges it and drops it), so :meth:`JobBus.publish` with
``confirm`` then waits for the message to come back on the bus's own subscription.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import queue
import secrets
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from swarmbus.errors import PublishRefused, TimeoutExpired
from swarmbus.jobs.model import JobDataError, JobEvent, JobRecord, decode_event, decode_record, encode
from swarmbus.settings import BrokerSettings, Settings
from swarmbus.topics import (
    QOS,
    job_events_topic,
    job_outcome_topic,
    job_record_topic,
    job_topic_of,
    sync_topic,
)
from swarmbus.transport.link import MqttLink, Subscription, one_shot_client_id
from swarmbus.transport.negotiated import ProtocolMemory
from swarmbus.transport.publish import ACL_HINT

__all__ = ["JobBus", "Seen", "publish_event", "publish_record"]

MAX_QUEUED = 10_000
"""Live messages held for a slow reader; more are dropped (and counted in :attr:`JobBus.dropped`)."""
CONFIRM_GRACE = 0.25
"""Seconds an MQTT 3.1.1 publish may still come back after the marker published after it did."""
_ECHOES = 256  # recent (topic, payload digest) pairs kept for MQTT 3.1.1 publish confirmation
V311 = "3.1.1"
QUIET_LOG = logging.getLogger("swarmbus.jobs.link")
"""The logger of quiet connections: only errors reach the CLI's stderr."""
QUIET_LOG.setLevel(logging.ERROR)


@dataclass(frozen=True)
class Seen:
    """One message read under ``swarmbus/jobs/#``.

    ``kind`` is ``record``, ``events`` or ``outcome`` (None: not a job topic); exactly one of
    ``record``, ``event`` and ``error`` is set (``error`` says why the message was refused);
    ``early`` is True for what arrived before the sync sentinel (the retained snapshot).
    """

    topic: str
    kind: str | None
    agent: str | None
    record: JobRecord | None = None
    event: JobEvent | None = None
    error: str | None = None
    early: bool = False


def read(topic: str, payload: bytes, *, early: bool = False) -> Seen | None:
    """Turn one message into a :class:`Seen`; None for an empty payload (a cleared retained
    topic). Never raises."""
    if not payload:
        return None
    where = job_topic_of(topic)
    if where is None:
        return Seen(topic, None, None, error="not a job topic (swarmbus/jobs/<job_id>/record|events|outcome/<agent>)",
                    early=early)
    try:
        if where.kind == "record":
            return Seen(topic, where.kind, where.agent, record=decode_record(payload, job_id=where.job_id,
                                                                              owner=where.agent), early=early)
        event = decode_event(payload, job_id=where.job_id, by=where.agent)
    except JobDataError as exc:
        return Seen(topic, where.kind, where.agent, error=str(exc), early=early)
    if where.kind == "outcome" and not event.terminal:
        return Seen(topic, where.kind, where.agent, error=f"an outcome must be completed or error, not {event.event}",
                    early=early)
    return Seen(topic, where.kind, where.agent, event=event, early=early)


class JobBus:
    """One connection for a job command (see the module docstring). Use it as a context manager:
    entering connects, subscribes to ``filters`` and waits for the snapshot; leaving disconnects.

    :param settings: where the broker is (``settings.broker``) and the state dir (remembered MQTT
        versions).
    :param agent_id: who this is (its client id, and its sync topic when the broker user name is
        not an agent id).
    :param filters: job topic filters to subscribe to (none: publish only).
    :param broker: other broker settings to use instead of ``settings.broker`` (another user).
    :param sync_timeout: seconds to wait for the snapshot.
    :param sync: False: no sync topic, no snapshot (entering only waits for the connection); for a
        credential that may not use a sync topic.
    :param quiet: log the connection's warnings (a disconnect, a refused publish) only at debug
        level: a one-shot command reports what matters itself (mosquitto disconnects a client
        after refusing its publish).

    :raises BrokerUnreachable: no connection within ``broker.connect_timeout``, or refused.
    :raises TimeoutExpired: the snapshot did not arrive within ``sync_timeout``.
    """

    def __init__(self, settings: Settings, *, agent_id: str | None, filters: list[str] | tuple[str, ...] = (),
                 broker: BrokerSettings | None = None, role: str = "job", sync_timeout: float = 10.0,
                 sync: bool = True, quiet: bool = True) -> None:
        self.broker = broker or settings.broker
        self.filters = list(filters)
        self.sync_timeout = sync_timeout
        self.sync = sync
        self.sentinel = sync_topic(self.broker.client_id_prefix, self.broker.username, agent_id, secrets.token_hex(8))
        self.dropped = 0
        self._early: list[Seen] = []
        self._live: queue.Queue[Seen] = queue.Queue(MAX_QUEUED)
        self._synced = threading.Event()
        self._echo_lock = threading.Condition()
        self._echoes: collections.deque[tuple[str, bytes]] = collections.deque(maxlen=_ECHOES)
        self._markers: set[bytes] = set()
        self.link = MqttLink(
            self.broker,
            client_id=one_shot_client_id(self.broker.client_id_prefix, agent_id, role),
            subscriptions=[*(Subscription(f, QOS) for f in self.filters),
                           *([Subscription(self.sentinel, QOS)] if sync else [])],
            on_message=self._on_message,
            on_connected=self._on_connected,
            reconnect_min=0.2,
            reconnect_max=2.0,
            protocol_memory=ProtocolMemory.in_state_dir(settings.state_dir),
            logger=QUIET_LOG if quiet else None,
        )
        self.link.retry_log_level = logging.DEBUG

    # -- the link's thread ----------------------------------------------------------------------
    def _on_connected(self, session_present: bool) -> None:
        if self.sync:
            self.link.publish(self.sentinel, b"sync", qos=1)
        else:
            self._synced.set()

    def _on_message(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        if topic == self.sentinel:
            if payload == b"sync":
                self._synced.set()
            else:
                with self._echo_lock:
                    self._markers.add(payload)
                    self._echo_lock.notify_all()
            return
        with self._echo_lock:
            self._echoes.append((topic, hashlib.blake2b(payload, digest_size=16).digest()))
            self._echo_lock.notify_all()
        early = not self._synced.is_set()
        seen = read(topic, payload, early=early)
        if seen is None:
            return
        if early:
            self._early.append(seen)
            return
        try:
            self._live.put_nowait(seen)
        except queue.Full:
            self.dropped += 1

    # -- use ---------------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        self.link.start()
        try:
            self.link.wait_connected(self.broker.connect_timeout)
            if not self._synced.wait(self.sync_timeout):
                raise TimeoutExpired(f"{self.link.url} did not send the retained job records within "
                                     f"{self.sync_timeout:g}s")
        except BaseException:
            self.link.stop(timeout=2.0)
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.link.stop(timeout=2.0)

    @property
    def protocol(self) -> str:
        """The MQTT version in use: ``"5"`` or ``"3.1.1"``."""
        return self.link.protocol

    @property
    def refused_filters(self) -> set[str]:
        """Filters the broker refused in its SUBACK (MQTT 5; mosquitto grants a subscription its
        ACL denies and then delivers nothing)."""
        return set(self.link.refused_subscriptions) & set(self.filters)

    def snapshot(self) -> list[Seen]:
        """What arrived before the sentinel: the retained records and outcomes (in arrival order)."""
        return list(self._early)

    def next(self, timeout: float) -> Seen | None:
        """The next live message, waiting at most ``timeout`` seconds (None when none came)."""
        try:
            return self._live.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, timeout: float = 10.0,
                confirm: bool = False) -> None:
        """Publish at QoS 1 and wait for the PUBACK.

        With ``confirm`` on an MQTT 3.1.1 connection (and a sync topic), also make sure the
        message came back on this bus's subscriptions, which must cover ``topic``: 3.1.1 has no
        way to refuse a publish, so a broker whose ACL denies it acknowledges and drops it. A
        marker is published on the sync topic after it; the broker routes one connection's
        publishes in order, so when the marker is back and the message is not (after a short
        grace for brokers that do not keep that order), it was dropped.

        :raises PublishRefused: the broker refused it (MQTT 5 reason code, e.g. 135 "Not
            authorized"), or on 3.1.1 with ``confirm`` it never came back.
        :raises TimeoutExpired: no PUBACK within ``timeout`` seconds.
        """
        self.link.publish_and_wait(topic, payload, retain=retain, timeout=timeout)
        if not (confirm and self.sync and self.protocol == V311 and payload):
            return
        digest = hashlib.blake2b(payload, digest_size=16).digest()
        marker = b"confirm-" + secrets.token_hex(8).encode()
        self.link.publish(self.sentinel, marker, qos=1)
        deadline = time.monotonic() + timeout
        grace: float | None = None
        with self._echo_lock:
            while (topic, digest) not in self._echoes:
                now = time.monotonic()
                if grace is None and marker in self._markers:
                    grace = now + CONFIRM_GRACE
                if now >= min(deadline, grace or deadline):
                    raise PublishRefused(
                        f"{self.link.url} acknowledged the publish to {topic} but did not deliver it: on MQTT "
                        "3.1.1 that is how a broker's ACL refuses a publish (it cannot say so)", hint=ACL_HINT)
                self._echo_lock.wait(min(deadline, grace or deadline) - now)


def publish_record(bus: JobBus, record: JobRecord, *, timeout: float = 10.0, confirm: bool = False) -> None:
    """Publish ``record``, retained, on ``swarmbus/jobs/<job_id>/record/<owner>``.

    :raises PublishRefused: the broker refused it (see :meth:`JobBus.publish`).
    :raises TimeoutExpired: no PUBACK within ``timeout`` seconds.
    """
    bus.publish(job_record_topic(record.job_id, record.owner), encode(record), retain=True, timeout=timeout,
                confirm=confirm)


def publish_event(bus: JobBus, event: JobEvent, *, timeout: float = 10.0, confirm: bool = False) -> None:
    """Publish ``event`` on ``swarmbus/jobs/<job_id>/events/<by>``; a terminal one (completed,
    error) first retained on ``swarmbus/jobs/<job_id>/outcome/<by>``, so the outcome is kept
    even if the connection drops between the two.

    :raises PublishRefused: the broker refused it (see :meth:`JobBus.publish`).
    :raises TimeoutExpired: no PUBACK within ``timeout`` seconds.
    """
    data = encode(event)
    if event.terminal:
        bus.publish(job_outcome_topic(event.job_id, event.by), data, retain=True, timeout=timeout, confirm=confirm)
    bus.publish(job_events_topic(event.job_id, event.by), data, timeout=timeout, confirm=confirm)
