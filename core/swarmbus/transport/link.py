"""The only module that talks to paho-mqtt: a supervised MQTT connection.

:class:`MqttLink` owns one paho ``Client`` and one thread of its own that connects, drives
``client.loop()`` and reconnects with jittered exponential backoff. It designs around the
paho-mqtt 2.x traps recorded in ``../shared/reference/mqtt-brokers-and-clients.md`` §6:

- every callback is wrapped, and the loop runs in our own thread under a ``try``, so an
  exception in a callback is logged and counted instead of silently killing the network
  thread while ``is_connected()`` keeps answering True;
- ``TCP_NODELAY`` is set on every new socket (paho never sets it; without it a
  receive-then-send exchange stalls ~40 ms on delayed ACK);
- MQTT 5 sessions that must survive a disconnect connect with ``clean_start=False`` *and*
  a Session Expiry Interval (without it the broker discards the session at every disconnect);
- MQTT 5 is tried first and 3.1.1 is used when the broker refuses 5 (CONNACK "Unsupported
  protocol version", reason 132, or a 3.1.1-style return code 1) or twice in a row closes the
  connection without any CONNACK (RabbitMQ 3.10's MQTT plugin); the outcome is remembered per
  broker URL (:mod:`~swarmbus.transport.negotiated`) so later processes go straight to 3.1.1;
- a broker may have several nodes (``broker.hosts``): a failed attempt, or a connection that
  drops, moves to the next node at once; only after every node failed does the backoff apply
  (the persistent session resumes on whichever node answers, when the cluster replicates it);
- :meth:`MqttLink.wait_connected` (one-shot commands) gives up at once on a refused TCP
  connection (nothing listens there) and otherwise says once on stderr what it waits for
  (:mod:`~swarmbus.transport.reach`); the link itself keeps retrying until stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from swarmbus.errors import BrokerNotReady, BrokerRefused, BrokerUnreachable, PublishRefused, TimeoutExpired
from swarmbus.transport.negotiated import ProtocolMemory
from swarmbus.transport.publish import ACL_HINT, one_shot_client_id
from swarmbus.transport.reach import WaitNotice, refused

TYPE_CHECKING = False
if TYPE_CHECKING:
    from swarmbus.settings import BrokerSettings

__all__ = ["MqttLink", "PublishTicket", "Subscription", "Will", "backoff_delay", "one_shot_client_id"]

log = logging.getLogger("swarmbus.transport")

V5 = "5"
V311 = "3.1.1"
_UNSUPPORTED_PROTOCOL = 132
SESSION_TAKEN_OVER = 142
"""MQTT 5 DISCONNECT reason: another connection with the same client id took the session."""
_DRAIN_PACKETS = 256  # publishes read back to back into one batch before on_cycle runs
# CONNACK codes that retrying will not fix: 3.1.1 bad user name or password (4) / not
# authorized (5); MQTT 5 bad user name or password (134), not authorized (135), banned (138),
# bad authentication method (140). One-shot commands fail at once on these; the daemon
# keeps retrying (the broker's configuration may be fixed while it runs).
_PERMANENT_REFUSALS = frozenset({4, 5, 134, 135, 138, 140})


def backoff_delay(attempt: int, minimum: float, maximum: float) -> float:
    """Full-jitter exponential backoff: uniform in [min/2, min * 2**attempt], capped at max.

    ``attempt`` counts consecutive failures from 1. Jitter keeps a fleet from reconnecting
    in lockstep after a broker restart (the predecessor's bug B12).
    """
    floor = min(minimum / 2, maximum)
    ceiling = min(maximum, minimum * (2 ** max(0, attempt - 1)))
    return random.uniform(floor, max(floor, ceiling))


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class Subscription:
    topic: str
    qos: int = 1
    no_local: bool = False


@dataclass
class PublishTicket:
    """Tracks one QoS 1 publish until its PUBACK. ``refused`` is the broker's reason when the
    PUBACK carried an MQTT 5 failure reason code (e.g. 135 "Not authorized": an ACL denied it);
    MQTT 3.1.1 has no such code (mosquitto then acknowledges and drops a denied publish)."""

    mid: int
    done: threading.Event = field(default_factory=threading.Event)
    acked_at: float | None = None
    refused: str | None = None
    _callbacks: list[Callable[[], object]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wait(self, timeout: float) -> bool:
        return self.done.wait(timeout)

    def on_done(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` once the PUBACK arrives (now, if it already has); it runs in
        the link's thread and must be quick."""
        with self._lock:
            if not self.done.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def _complete(self, refused: str | None = None) -> None:
        with self._lock:
            self.refused = refused
            self.acked_at = time.time()
            self.done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("error in PUBACK callback")


MessageCallback = Callable[[str, bytes, int, int], None]  # topic, payload, mid, qos


class MqttLink:
    """One supervised connection to the broker.

    :param client_id: the MQTT client identifier.
    :param persistent: keep the session across disconnects (MQTT 5: clean_start=False plus
        ``session_expiry`` seconds; 3.1.1: clean_session=False).
    :param manual_ack: acknowledge inbound QoS 1 publishes only when :meth:`ack` is called.
    :param subscriptions: (re)subscribed after every successful connect.
    :param on_message: ``(topic, payload, mid, qos)``, called in the link's thread.
    :param on_connected: ``(session_present: bool)``, called after subscribing.
    :param on_cycle: called in the link's thread after each read burst and after every
        :meth:`wake` (the place to commit a batch of received messages and acknowledge them,
        and to run work other threads handed over); returns the seconds until it wants to run
        again even if nothing happens (None: no deadline).
    :param on_taken_over: called once, in the link's thread, when the broker disconnects us
        because another client connected with our client id (MQTT 5 reason 142); the link then
        stops reconnecting.
    :param before_connect: called in the link's thread before each connection attempt; returning
        False stops the link instead.
    :param receive_maximum: MQTT 5 Receive Maximum: the most QoS 1 publishes the broker may have
        in flight to us unacknowledged (bounds what waits in memory while the store cannot commit;
        mosquitto also caps it with its own ``max_inflight_messages``, 20 by default).

    The link's thread drives paho through its external-loop API (``loop_read``,
    ``loop_write``, ``loop_misc`` around our own ``select``): every socket write happens in
    this one thread (paho's ``publish``/``ack`` from other threads only queue, and wake us),
    publishes that arrive together are read back to back so ``on_cycle`` can commit them in
    one transaction, and an idle link wakes only for keepalive.
    """

    def __init__(
        self,
        broker: BrokerSettings,
        *,
        client_id: str,
        persistent: bool = False,
        session_expiry: int = 0,
        manual_ack: bool = False,
        will: Will | None = None,
        subscriptions: Iterable[Subscription] = (),
        on_message: MessageCallback | None = None,
        on_connected: Callable[[bool], None] | None = None,
        on_disconnected: Callable[[str], None] | None = None,
        on_cycle: Callable[[], float | None] | None = None,
        on_taken_over: Callable[[], None] | None = None,
        before_connect: Callable[[], bool] | None = None,
        receive_maximum: int | None = None,
        reconnect_min: float = 0.5,
        reconnect_max: float = 5.0,
        logger: logging.Logger | None = None,
        protocol_memory: ProtocolMemory | None = None,
    ) -> None:
        self.broker = broker
        self.endpoints = broker.endpoints
        """``[(host, port), ...]``: the broker's nodes, tried in order (``broker.hosts``)."""
        self._endpoint = 0  # the node in use, or tried next
        self._round: list[bool] = []  # this round of failed attempts: was each TCP connection refused?
        self._connack = False  # a CONNACK (any) came on the current connection
        self.protocol_memory = protocol_memory
        self.client_id = client_id
        self.persistent = persistent
        self.session_expiry = session_expiry
        self.manual_ack = manual_ack
        self.will = will
        self.subscriptions = list(subscriptions)
        self.on_message = on_message
        self.on_connected = on_connected
        self.on_disconnected = on_disconnected
        self.on_cycle = on_cycle
        self.on_taken_over = on_taken_over
        self.before_connect = before_connect
        self.receive_maximum = receive_maximum
        self._wake_r = self._wake_w = -1  # the thread driver's wake-up pipe (made by start())
        self._packets = 0  # packets handled by callbacks: tells a read burst from an empty socket
        self.generation = 0  # connection number; acks are only valid on the connection that received
        self.taken_over = False
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.log = logger or log
        self.protocol = V311 if broker.protocol == V311 else V5
        if broker.protocol == "auto" and protocol_memory is not None and protocol_memory.get(self.url) == V311:
            self.protocol = V311  # this broker closed or refused MQTT 5 before: straight to 3.1.1
        self._negotiated = False  # this link fell back to 3.1.1 (remembered once that connects)
        self._silent_v5 = 0  # MQTT 5 connections in a row closed without any CONNACK
        self.on_reset: Callable[[], None] | None = None
        """Called after the paho client was replaced (MQTT 3.1.1 fallback): publishes queued
        before are dropped with it and must be made again (the daemon's outbox does)."""
        self._password = broker.resolved_password()
        self._lock = threading.Lock()
        self._tickets: dict[int, PublishTicket] = {}
        self._early_acks: dict[int, str | None] = {}  # mid -> refusal reason, PUBACKs before publish() returned
        self._connected = threading.Event()
        self._no_reconnect = threading.Event()
        self._halt = threading.Event()
        self._kick = threading.Event()
        self._refused = threading.Event()
        self._tcp_refused = False  # the last attempt's TCP connection was refused: nothing listens
        self._closed_early = False  # since the last CONNACK, a node closed a connection before its CONNACK
        self._fallback = False
        self.retry_log_level = logging.WARNING
        self._thread: threading.Thread | None = None
        self._client = self._new_client()
        self.last_error: str | None = None
        self.connect_count = 0
        self.connect_failures = 0
        """Consecutive attempts that failed (to connect, or soon after), 0 once connected."""
        self.callback_errors = 0
        self.connected_since: float | None = None
        self.last_inbound_at: float | None = None
        self.last_puback_at: float | None = None
        self.session_present: bool | None = None
        self.refused_subscriptions: set[str] = set()
        """Topic filters the broker refused in a SUBACK (e.g. not authorised), since the start."""
        self._pending_subs: dict[int, list[str]] = {}  # SUBSCRIBE mid -> its topic filters

    # -- client construction ----------------------------------------------------------------
    def _new_client(self) -> mqtt.Client:
        b = self.broker
        v5 = self.protocol == V5
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if v5 else not self.persistent,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            transport=b.transport,
            reconnect_on_failure=False,
            manual_ack=self.manual_ack,
        )
        client.suppress_exceptions = True
        client.connect_timeout = b.connect_timeout
        client.max_queued_messages_set(0)
        if b.transport == "websockets":
            client.ws_set_options(path=b.ws_path)
        if b.tls:
            client.tls_set(
                ca_certs=str(b.ca_certs) if b.ca_certs else None,
                certfile=str(b.certfile) if b.certfile else None,
                keyfile=str(b.keyfile) if b.keyfile else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        if b.username is not None or self._password is not None:
            client.username_pw_set(b.username or "", self._password)
        if self.will is not None:
            client.will_set(self.will.topic, self.will.payload, self.will.qos, self.will.retain)
        client.on_connect = self._guard(self._handle_connect)
        client.on_disconnect = self._guard(self._handle_disconnect)
        client.on_message = self._guard(self._handle_message)
        client.on_publish = self._guard(self._handle_publish)
        client.on_subscribe = self._guard(self._handle_subscribe)
        client.on_socket_open = self._guard(self._handle_socket_open)
        # with a register-write callback set, paho never writes from the caller's thread: other
        # threads' publish()/ack() queue the packet and we wake the link's select
        client.on_socket_register_write = self._guard(self._handle_register_write)
        return client

    def _guard(self, fn: Callable[..., None]) -> Callable[..., None]:
        def guarded(*args: Any) -> None:
            try:
                fn(*args)
            except Exception:
                self.callback_errors += 1
                self.log.exception("error in MQTT callback %s (connection kept)", fn.__name__)

        return guarded

    # -- paho callbacks (link thread) -------------------------------------------------------
    def _handle_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        raw = getattr(sock, "_socket", sock)  # the websocket wrapper keeps the TCP socket here
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            self.log.debug("could not set TCP_NODELAY")

    def _handle_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.wake()

    def _handle_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connack = True
        if reason.is_failure:
            value = int(reason.value) if hasattr(reason, "value") else int(reason)
            if self.protocol == V5 and value in (_UNSUPPORTED_PROTOCOL, 1) and self.broker.protocol == "auto":
                self.last_error = "broker refused MQTT 5; falling back to 3.1.1"
                self._fallback = True
            else:
                self.last_error = f"connection refused: {reason}"
                if value in _PERMANENT_REFUSALS:
                    self._refused.set()
            return
        self.session_present = bool(getattr(flags, "session_present", False))
        subs: list[tuple[str, Any]] = []
        for sub in self.subscriptions:
            if self.protocol == V5:
                subs.append((sub.topic, SubscribeOptions(qos=sub.qos, noLocal=sub.no_local)))
            else:
                subs.append((sub.topic, sub.qos))
        if subs:
            self._track_subscribe(client.subscribe(subs), [topic for topic, _ in subs])
        self.connect_count += 1
        self.connect_failures = 0
        self._closed_early = False
        self._round = []
        if self._negotiated and self.protocol_memory is not None:
            self.protocol_memory.remember(self.url, V311)  # later processes skip the refused MQTT 5 attempt
        self.connected_since = time.time()
        self.last_error = None
        self._connected.set()
        self.log.info(
            "connected to %s as %s (MQTT %s, session present: %s)",
            self.url, self.client_id, self.protocol, self.session_present,
        )
        if self.on_connected:
            self.on_connected(self.session_present)

    def _handle_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if getattr(reason, "value", None) == SESSION_TAKEN_OVER and not self.taken_over:
            self.taken_over = True
            self._no_reconnect.set()
            self.last_error = "session taken over by another client with the same client id"
            self.log.error("the broker says another client connected as %s and took over this session", self.client_id)
            if self.on_taken_over:
                self.on_taken_over()
        was = self._connected.is_set()
        self._connected.clear()
        self.connected_since = None
        if was and not self._no_reconnect.is_set():
            self.log.warning("disconnected from %s: %s", self.url, reason)
            if self.on_disconnected:
                self.on_disconnected(str(reason))

    def _handle_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._packets += 1
        self.last_inbound_at = time.time()
        if self.on_message is not None:
            try:
                topic = msg.topic
            except UnicodeDecodeError:  # MQTT requires UTF-8 topics; keep a readable form anyway
                topic = bytes(msg._topic).decode("utf-8", "replace")
            self.on_message(topic, bytes(msg.payload), msg.mid, msg.qos)
        elif self.manual_ack:
            client.ack(msg.mid, msg.qos)

    def _track_subscribe(self, sent: tuple[int, int | None], topics: list[str]) -> None:
        rc, mid = sent
        if rc == mqtt.MQTT_ERR_SUCCESS and mid is not None:
            self._pending_subs[mid] = topics

    def _handle_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        topics = self._pending_subs.pop(mid, [])
        for topic, reason in zip(topics, reasons, strict=False):
            if getattr(reason, "is_failure", False):
                self.refused_subscriptions.add(topic)
                self.log.warning("the broker refused the subscription to %s: %s", topic, reason)

    def _handle_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self._packets += 1
        now = time.time()
        self.last_puback_at = now
        refused = str(reason) if getattr(reason, "is_failure", False) else None
        if refused is not None:
            self.log.warning("the broker refused a publish (mid %d): %s", mid, refused)
        with self._lock:
            ticket = self._tickets.pop(mid, None)
            if ticket is None:
                self._early_acks[mid] = refused
                return
        ticket._complete(refused)

    # -- the supervised loop ----------------------------------------------------------------
    def start(self) -> None:
        """Start the link's thread; it connects and keeps reconnecting until :meth:`stop`."""
        if self._thread is not None:
            return
        if self._wake_r < 0:
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._run, name=f"swarmbus-mqtt-{self.client_id}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The URL of the node in use (or tried next), without credentials."""
        return self.broker.url_of(self.endpoints[self._endpoint])

    def _connect_once(self) -> None:
        b = self.broker
        host, port = self.endpoints[self._endpoint]
        client = self._client
        self._connack = False
        if self.protocol == V5:
            props = None
            if (self.persistent and self.session_expiry) or self.receive_maximum:
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                if self.persistent and self.session_expiry:
                    props.SessionExpiryInterval = self.session_expiry
                if self.receive_maximum:
                    props.ReceiveMaximum = self.receive_maximum
            client.connect(host, port, b.keepalive, clean_start=not self.persistent, properties=props)
        else:
            client.connect(host, port, b.keepalive)

    def _run(self) -> None:
        failures = 0
        while not self._no_reconnect.is_set():
            if self.before_connect is not None and not self._call_before_connect():
                self._no_reconnect.set()
                break
            self._fallback = False
            self._use_remembered_protocol()
            try:
                self._connect_once()
            except (OSError, ssl.SSLError, ValueError, mqtt.WebsocketConnectionError) as exc:
                failures += 1
                self._idle(self._connect_failed(exc, failures))
                continue
            self.generation += 1
            started = time.monotonic()
            try:
                self._serve()
            except Exception:
                self.callback_errors += 1
                self.log.exception("MQTT network loop failed; reconnecting")
                with contextlib.suppress(Exception):  # best effort on a broken socket
                    self._client.disconnect()
            if self._halt.is_set():
                break
            failures, wait = self._connection_ended(started, failures)
            if wait is None:
                break
            self._idle(wait)

    def _connect_failed(self, exc: BaseException, failures: int) -> float:
        """Connection attempt number ``failures`` in a row raised ``exc`` (both drivers): remember
        why (a refused TCP connection or a certificate that does not verify ends
        :meth:`wait_connected` at once), log it, and return the seconds to wait before the next."""
        url = self.url
        self.last_error = f"{type(exc).__name__}: {exc}" + (f" ({url})" if len(self.endpoints) > 1 else "")
        self.connect_failures += 1
        refused_here = isinstance(exc, ConnectionRefusedError)
        delay, all_refused = self._next_node(failures, refused=refused_here)
        self._tcp_refused = all_refused or (refused_here and len(self.endpoints) == 1)
        if all_refused or isinstance(exc, ssl.SSLCertVerificationError):
            self._refused.set()  # nothing listens on any node (or the certificate does not verify)
        self.log.log(self.retry_log_level, "cannot connect to %s (%s); %s in %.1fs", url, self.last_error,
                     f"trying {self.url}" if self.url != url else "retrying", delay)
        return delay

    def _next_node(self, failures: int, *, refused: bool = False) -> tuple[float, bool]:
        """An attempt on the current node failed: move to the next node. Returns ``(seconds to
        wait, every node refused the TCP connection)``: no wait before the next node of this
        round; the backoff (by rounds) once every node failed."""
        self._round.append(refused)
        self._endpoint = (self._endpoint + 1) % len(self.endpoints)
        if len(self._round) < len(self.endpoints):
            return 0.0, False
        all_refused = all(self._round)
        self._round = []
        rounds = -(-failures // len(self.endpoints))
        return backoff_delay(max(1, rounds), self.reconnect_min, self.reconnect_max), all_refused

    def _connection_ended(self, started: float, failures: int) -> tuple[int, float | None]:
        """After a connection ended (both drivers): commit what arrived on it (it is not
        acknowledged), then decide the next attempt: ``(failures, seconds to wait)``, 0 for at once
        (MQTT 5 was refused: 3.1.1 next), None to stop."""
        self._connected.clear()
        self._cycle()
        if self._no_reconnect.is_set():
            return failures, None
        silent = not self._connack and self.protocol == V5 and self.broker.protocol == "auto"
        self._silent_v5 = self._silent_v5 + 1 if silent else 0
        if silent and self._silent_v5 == 1:
            return failures, 0.0  # once more at once: a broker shutting down closes without a CONNACK too
        if self._fallback or self._silent_v5 >= 2:
            why = ("refused MQTT 5" if self._fallback else
                   "closed the connection without answering an MQTT 5 CONNECT")
            self.log.warning("broker %s %s; using MQTT 3.1.1", self.url, why)
            self.protocol = V311
            self._negotiated = True
            self._silent_v5 = 0
            self._replace_client()
            return failures, 0.0
        url = self.url
        self._tcp_refused = False  # this node accepted the connection
        if not self._connack:
            self._closed_early = True
            self.last_error = f"{url} closed the connection without a CONNACK"
        lasted = time.monotonic() - started > 30
        failures = 1 if lasted else failures + 1
        self.connect_failures = failures
        if len(self.endpoints) > 1:  # the node went away: the next one at once, then by rounds
            if lasted:
                self._round = []
            delay, _ = self._next_node(failures)
        else:
            delay = backoff_delay(failures, self.reconnect_min, self.reconnect_max)
        self.log.info("reconnecting to %s in %.1fs", self.url if self.url != url else url, delay)
        return failures, delay

    def _use_remembered_protocol(self) -> None:
        """Before an attempt: if another process learned since this link was made that the node
        speaks only 3.1.1 (the daemon's presence probe, a one-shot), go straight to it."""
        if (self.protocol == V5 and self.broker.protocol == "auto" and self.protocol_memory is not None
                and self.protocol_memory.get(self.url) == V311):
            self.protocol = V311
            self._replace_client()

    def _replace_client(self) -> None:
        """A new paho client (another MQTT version): what the old one had queued is gone, so its
        tickets never complete; :attr:`on_reset` lets the owner publish its spool again."""
        self._client = self._new_client()
        with self._lock:
            self._tickets.clear()
            self._early_acks.clear()
        if self.on_reset is not None:
            try:
                self.on_reset()
            except Exception:
                self.callback_errors += 1
                self.log.exception("error in the link's reset callback")

    def _call_before_connect(self) -> bool:
        try:
            return bool(self.before_connect and self.before_connect())
        except Exception:
            self.callback_errors += 1
            self.log.exception("error before connecting (connecting anyway)")
            return True

    def _serve(self) -> None:
        """Drive one connection until it drops or the link stops."""
        client = self._client
        tick = min(5.0, self.broker.keepalive / 4)  # keepalive pings need a visit now and then
        while not self._halt.is_set():
            sock: Any = client.socket()
            if sock is None:
                return
            pending = getattr(sock, "pending", None)  # bytes TLS has decrypted but select cannot see
            timeout = tick
            deadline = self._cycle()
            if deadline is not None:
                timeout = min(timeout, max(0.0, deadline))
            if pending is not None and pending():
                timeout = 0.0
            wlist = [sock] if client.want_write() else []
            try:
                readable, _, _ = select.select([sock, self._wake_r], wlist, [], timeout)
            except (OSError, ValueError, TypeError):
                return  # the socket was closed under us
            if self._wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            if sock in readable or (pending is not None and pending()):
                if client.loop_read() != mqtt.MQTT_ERR_SUCCESS:
                    return
                for _ in range(_DRAIN_PACKETS):  # read what is already there, to commit it as one batch
                    seen = self._packets
                    if client.loop_read() != mqtt.MQTT_ERR_SUCCESS:
                        return
                    if self._packets == seen:
                        break
                self._cycle()
            if client.want_write() and client.loop_write() != mqtt.MQTT_ERR_SUCCESS:
                return
            if client.loop_misc() != mqtt.MQTT_ERR_SUCCESS:
                return
            if self._kick.is_set():
                self._kick.clear()
                client.disconnect()

    def _cycle(self) -> float | None:
        if self.on_cycle is None:
            return None
        try:
            return self.on_cycle()
        except Exception:
            self.callback_errors += 1
            self.log.exception("error in the link's cycle callback (connection kept)")
            return 1.0

    def _idle(self, seconds: float) -> None:
        """Wait between connection attempts while still running ``on_cycle`` for work that
        other threads hand over (e.g. commits that do not need the connection)."""
        deadline = time.monotonic() + seconds
        while not self._no_reconnect.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            wanted = self._cycle()
            timeout = min(left, 1.0 if wanted is None else max(0.0, wanted))
            try:
                readable, _, _ = select.select([self._wake_r], [], [], timeout)
            except (OSError, ValueError):
                return
            if readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)

    def wake(self) -> None:
        """Make the link's thread run a cycle soon (thread-safe, never blocks)."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"\0")

    # -- public API ---------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def thread_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait_connected(self, timeout: float) -> None:
        """Block until connected, for at most ``timeout`` seconds; after a second, say once on
        stderr what it waits for (when the CLI enabled :mod:`~swarmbus.transport.reach` notices).

        :raises BrokerUnreachable: on timeout (with the last error), or at once when the TCP
            connection was refused (nothing listens there), the broker refused the credentials
            or its certificate failed to verify.
        """
        deadline = time.monotonic() + timeout
        notice = WaitNotice(self.broker.host, self.broker.effective_port, timeout)
        while not self._connected.wait(0.05) and not self._refused.is_set() and time.monotonic() < deadline:
            notice.poll()
        notice.cancel()
        if not self._connected.is_set():
            if self._tcp_refused and len(self.endpoints) == 1:
                raise refused(self.broker.url, *self.endpoints[0])
            if self._tcp_refused:
                nodes = ", ".join(self.broker.url_of(e) for e in self.endpoints)
                raise BrokerRefused(f"broker unreachable: nothing is listening on any of {nodes} (connection "
                                        "refused)", hint="start the broker, or check broker.hosts with "
                                        "`swarmbus config show`")
            error = BrokerNotReady if self._closed_early else BrokerUnreachable
            raise error(
                f"broker unreachable ({self.url}): {self.last_error or f'no CONNACK within {timeout:.0f}s'}",
                hint="is the broker running? check `swarmbus config show` and `swarmbus doctor`",
            )

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1) -> PublishTicket:
        """Queue a publish (sent now if connected, else after reconnect). Thread-safe."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        ticket = PublishTicket(info.mid)
        with self._lock:
            if info.mid in self._early_acks:
                ticket._complete(self._early_acks.pop(info.mid))
            elif qos == 0:
                ticket._complete()
            else:
                self._tickets[info.mid] = ticket
        return ticket

    def publish_and_wait(self, topic: str, payload: bytes, *, retain: bool = False, timeout: float = 10.0) -> None:
        """Publish at QoS 1 and wait for the PUBACK. Raises TimeoutExpired."""
        ticket = self.publish(topic, payload, retain=retain)
        if not ticket.wait(timeout):
            raise TimeoutExpired(f"no PUBACK from {self.url} within {timeout:.0f}s")
        if ticket.refused is not None:
            raise PublishRefused(f"{self.url} refused the publish to {topic}: {ticket.refused}",
                                 hint=ACL_HINT)

    def subscribe(self, subs: Iterable[Subscription]) -> None:
        """Add subscriptions now (if connected) and after every reconnect."""
        new = list(subs)
        self.subscriptions.extend(new)
        if self.connected:
            if self.protocol == V5:
                sent = self._client.subscribe([(s.topic, SubscribeOptions(qos=s.qos, noLocal=s.no_local)) for s in new])
            else:
                sent = self._client.subscribe([(s.topic, s.qos) for s in new])
            self._track_subscribe(sent, [s.topic for s in new])

    def unsubscribe(self, topics: list[str]) -> None:
        """Drop ``topics`` (filters) now, if connected, and from the ones renewed after every
        reconnect: e.g. subscriptions a persistent session kept from an earlier configuration."""
        gone = set(topics)
        self.subscriptions = [s for s in self.subscriptions if s.topic not in gone]
        if self.connected and topics:
            self._client.unsubscribe(list(topics))

    def ack(self, mid: int, qos: int) -> None:
        """Send the PUBACK for an inbound publish (manual-ack mode)."""
        self._client.ack(mid, qos)

    def reconnect_soon(self) -> None:
        """Drop the connection so the broker redelivers unacknowledged messages after the
        backoff."""
        self._kick.set()
        self.wake()

    def stop(self, *, final: tuple[str, bytes] | None = None, timeout: float = 5.0) -> None:
        """Stop reconnecting; publish ``final`` (retained, QoS 1) and wait for its PUBACK
        when connected; send DISCONNECT; join the thread."""
        self._no_reconnect.set()
        self.wake()
        if final is not None and self.connected:
            try:
                self.publish_and_wait(final[0], final[1], retain=True, timeout=timeout)
            except TimeoutExpired:
                self.log.warning("final presence was not acknowledged within %.0fs", timeout)
        with contextlib.suppress(Exception):  # already closed
            self._client.disconnect()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._halt.set()
                self.wake()
                self._thread.join(timeout)
        self._connected.clear()
        if self._thread is None or not self._thread.is_alive():
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake_r = self._wake_w = -1
