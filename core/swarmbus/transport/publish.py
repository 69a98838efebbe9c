"""One QoS 1 publish on a short-lived connection, synchronously: no pydantic, and no thread
but the timer of the CLI's one-line wait notice (only when the CLI enabled it).

:func:`publish_once` is what ``swarmbus send --direct`` (and ``send`` when no daemon runs) and
:func:`swarmbus.oneshot.send_direct` do: connect, publish at QoS 1, drive paho's ``loop()``
in the calling thread until the PUBACK, disconnect. It follows the same rules as the daemon's
:class:`~swarmbus.transport.link.MqttLink`:

- MQTT 5 first, MQTT 3.1.1 when the broker refuses 5 (CONNACK reason 132 "Unsupported
  protocol version", or a 3.1.1-style return code 1), unless ``protocol`` pins one;
- ``TCP_NODELAY`` on the socket (paho never sets it);
- a connection that fails for a reason that may pass (TCP connection reset, DNS, timeout,
  closed before the CONNACK) is retried with a short backoff until ``connect_timeout``; a TCP
  connection refused (nothing listens there), a CONNACK that refuses the client (bad
  credentials, not authorised, server busy, ...) or a server certificate that does not verify
  fails at once: a one-shot send reports, it does not wait a refusal out (the daemon does);
- while it waits, a command says so once on stderr (:class:`~swarmbus.transport.reach.WaitNotice`,
  when the CLI enabled it);
- a unique client id (``<prefix>-<agent>-send-<random>``), so a send never takes over the
  daemon's persistent session.

The broker settings may be a :class:`swarmbus.broker_options.BrokerOptions` (the CLI fast
path) or a :class:`swarmbus.settings.BrokerSettings`: only their shared attributes are used.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time

from swarmbus.errors import BrokerRefused, BrokerUnreachable, ConfigError, PublishRefused, TimeoutExpired
from swarmbus.transport import defer_import
from swarmbus.transport.reach import WaitNotice, refused

TYPE_CHECKING = False  # not from typing: see swarmbus.config
if TYPE_CHECKING:
    from pathlib import Path
    from types import ModuleType
    from typing import Any, Protocol

    from swarmbus.transport.negotiated import ProtocolMemory

    class BrokerLike(Protocol):
        """The broker attributes :func:`publish_once` reads (read-only)."""

        @property
        def host(self) -> str: ...

        @property
        def transport(self) -> str: ...

        @property
        def ws_path(self) -> str: ...

        @property
        def tls(self) -> bool: ...

        @property
        def ca_certs(self) -> Path | None: ...

        @property
        def certfile(self) -> Path | None: ...

        @property
        def keyfile(self) -> Path | None: ...

        @property
        def username(self) -> str | None: ...

        @property
        def client_id_prefix(self) -> str: ...

        @property
        def protocol(self) -> str: ...

        @property
        def keepalive(self) -> int: ...

        @property
        def connect_timeout(self) -> float: ...

        @property
        def effective_port(self) -> int: ...

        @property
        def endpoints(self) -> list[tuple[str, int]]: ...

        def url_of(self, endpoint: tuple[str, int]) -> str: ...

        @property
        def url(self) -> str: ...

        def resolved_password(self) -> str | None: ...


V5 = "5"
V311 = "3.1.1"
_UNSUPPORTED_PROTOCOL = 132
_HINT = "is the broker running? check `swarmbus config show` and `swarmbus doctor`"
ACL_HINT = ("these credentials may not write that topic: check the broker's ACL (`swarmbus broker acl`), "
            "broker.username and security.verify_senders (`swarmbus doctor` probes them)")


def one_shot_client_id(prefix: str, agent_id: str | None, role: str) -> str:
    """A unique client id for short-lived connections, ``<prefix>-<agent_id>-<role>-<8 hex>``,
    so they never take over the daemon's persistent session ``<prefix>-<agent_id>``."""
    return f"{prefix}-{agent_id or 'anon'}-{role}-{os.urandom(4).hex()}"


# -- importing paho cheaply -------------------------------------------------------------------------

# Standard modules paho-mqtt imports at import time but a plain publish never uses: besides
# urllib.request (deferred for every user, see swarmbus.transport), ssl (~6 ms: only with TLS, or
# while handling an exception in _sock_recv/_sock_send), and hashlib, base64, uuid (~5 ms: only for
# the websockets handshake, or a client id paho makes up itself; we always pass one).
_DEFERRED = ("ssl", "hashlib", "base64", "uuid")


def _paho() -> ModuleType:
    """``paho.mqtt.client``, imported with stand-ins for :data:`_DEFERRED` when nothing imported
    it yet (see :func:`swarmbus.transport.defer_import`)."""
    if "paho.mqtt.client" not in sys.modules:
        for name in _DEFERRED:
            defer_import(name)
    import paho.mqtt.client as mqtt

    return mqtt


# -- the publish ------------------------------------------------------------------------------------


class _Retry(Exception):
    """This connection attempt failed for a reason that may pass; try again if time is left."""


class _Fallback(Exception):
    """The broker refused MQTT 5: connect again with 3.1.1."""


class _State:
    """What paho's callbacks report; holds no reference to the client (no cycle: paho closes
    its wake-up socket pair when the client is freed)."""

    def __init__(self) -> None:
        self.connack: Any = None
        self.acked: set[int] = set()
        self.refused: dict[int, str] = {}  # mid -> the PUBACK's MQTT 5 failure reason
        self.silent = False  # an MQTT 5 connection closed without any CONNACK

    def on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        raw = getattr(sock, "_socket", sock)  # the websocket wrapper keeps the TCP socket here
        with contextlib.suppress(OSError, AttributeError):  # not a TCP socket: nothing to tune
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connack = reason

    def on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        if getattr(reason, "is_failure", False):
            self.refused[mid] = str(reason)
        self.acked.add(mid)


def _client(mqtt: Any, broker: BrokerLike, client_id: str, protocol: str, password: str | None,
            state: _State) -> Any:
    v5 = protocol == V5
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=None if v5 else True,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        transport=broker.transport,
        reconnect_on_failure=False,
    )
    client.suppress_exceptions = False
    if broker.transport == "websockets":
        client.ws_set_options(path=broker.ws_path)
    if broker.tls:
        import ssl

        try:
            client.tls_set(
                ca_certs=str(broker.ca_certs) if broker.ca_certs else None,
                certfile=str(broker.certfile) if broker.certfile else None,
                keyfile=str(broker.keyfile) if broker.keyfile else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot use the broker TLS files (ca_certs, certfile, keyfile): {exc}") from None
    if broker.username is not None or password is not None:
        client.username_pw_set(broker.username or "", password)
    client.on_socket_open = state.on_socket_open
    client.on_connect = state.on_connect
    client.on_publish = state.on_publish
    return client


def _close(client: Any) -> None:
    with contextlib.suppress(Exception):  # already broken: nothing left to close politely
        client.disconnect()  # sends DISCONNECT if the socket is still open, then closes it


def _cert_rejected(exc: BaseException) -> bool:
    import ssl  # already loaded for real when TLS is in use

    return isinstance(exc, ssl.SSLCertVerificationError)


class _Refused(Exception):
    """Nothing listens on this node (TCP connection refused)."""


def _connect(mqtt: Any, broker: BrokerLike, endpoint: tuple[str, int], client: Any, state: _State, protocol: str,
             deadline: float) -> None:
    """Open the connection to ``endpoint`` and wait for a successful CONNACK (raises otherwise)."""
    host, port = endpoint
    url = broker.url_of(endpoint)
    client.connect_timeout = max(0.05, deadline - time.monotonic())
    try:
        if protocol == V5:
            client.connect(host, port, broker.keepalive, clean_start=True)
        else:
            client.connect(host, port, broker.keepalive)
    except (OSError, ValueError, mqtt.WebsocketConnectionError) as exc:
        if isinstance(exc, ConnectionRefusedError):
            raise _Refused from None
        reason = f"{type(exc).__name__}: {exc}"
        if broker.tls and _cert_rejected(exc):
            raise BrokerUnreachable(f"broker unreachable ({url}): {reason}", hint=_HINT) from None
        raise _Retry(reason) from None
    while state.connack is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Retry(f"no CONNACK within {broker.connect_timeout:.0f}s")
        rc = client.loop(timeout=min(remaining, 1.0))
        if rc != mqtt.MQTT_ERR_SUCCESS and state.connack is None:
            if protocol == V5 and broker.protocol == "auto":
                state.silent = True
            raise _Retry(f"the broker closed the connection before its CONNACK ({mqtt.error_string(rc)})")
    reason = state.connack
    if reason.is_failure:
        value = int(reason.value) if hasattr(reason, "value") else int(reason)
        if protocol == V5 and value in (_UNSUPPORTED_PROTOCOL, 1) and broker.protocol == "auto":
            raise _Fallback
        raise BrokerUnreachable(f"broker unreachable ({url}): connection refused: {reason}", hint=_HINT)


def _connect_retrying(mqtt: Any, broker: BrokerLike, client_id: str, protocol: str, password: str | None,
                      deadline: float, memory: ProtocolMemory | None = None) -> tuple[Any, _State, str]:
    """Connect (to each node in turn, falling back to 3.1.1, retrying what may pass) until
    ``deadline``; return the connected client, its state and the MQTT version used."""
    endpoints = broker.endpoints
    delay = 0.1
    index = 0
    refused_round: list[bool] = []
    silent = 0
    negotiated = False
    last = "no attempt"
    while True:
        endpoint = endpoints[index]
        state = _State()
        client = _client(mqtt, broker, client_id, protocol, password, state)
        try:
            _connect(mqtt, broker, endpoint, client, state, protocol, deadline)
        except _Fallback:
            _close(client)
            protocol, negotiated = V311, True
            continue
        except (_Retry, _Refused) as exc:
            _close(client)
            silent = silent + 1 if state.silent else 0
            if silent >= 2:  # twice closed without a CONNACK to MQTT 5 (RabbitMQ 3.10): use 3.1.1
                protocol, negotiated, silent = V311, True, 0
                continue
            if silent == 1:
                continue  # once more at once: a broker shutting down closes without a CONNACK too
            refused_round.append(isinstance(exc, _Refused))
            last = str(exc) if isinstance(exc, _Retry) else "connection refused"
            index = (index + 1) % len(endpoints)
            if len(refused_round) < len(endpoints):
                continue  # the next node at once
            if all(refused_round):
                if len(endpoints) == 1:
                    raise refused(broker.url, *endpoints[0]) from None
                nodes = ", ".join(broker.url_of(e) for e in endpoints)
                raise BrokerRefused(f"broker unreachable: nothing is listening on any of {nodes} "
                                        "(connection refused)", hint=_HINT) from None
            refused_round = []
            pause = min(delay, deadline - time.monotonic())
            if pause <= 0:
                where = broker.url if len(endpoints) == 1 else ", ".join(broker.url_of(e) for e in endpoints)
                raise BrokerUnreachable(f"broker unreachable ({where}): {last}", hint=_HINT) from None
            time.sleep(pause)  # backoff before the next round, not synchronisation
            delay = min(delay * 2, 1.0)
            continue
        except BaseException:
            _close(client)
            raise
        if negotiated and memory is not None:
            memory.remember(broker.url_of(endpoint), V311)
        return client, state, protocol


def publish_once(broker: BrokerLike, topic: str, payload: bytes, *, agent_id: str | None,
                 timeout: float = 10.0, retain: bool = False, memory: ProtocolMemory | None = None) -> str:
    """Connect to ``broker``, publish ``payload`` on ``topic`` at QoS 1, wait for the PUBACK,
    disconnect. Runs in the calling thread; returns the MQTT version used (``"5"`` or
    ``"3.1.1"``). The client id is :func:`one_shot_client_id` for ``agent_id``, role ``send``.

    Connecting (every attempt, including the 3.1.1 fallback) may take up to
    ``broker.connect_timeout`` seconds; the PUBACK then up to ``timeout`` seconds.

    :raises BrokerUnreachable: no connection within ``broker.connect_timeout`` (with the last
        reason: DNS, timeout, no CONNACK, ...); at once when the TCP connection is refused
        (nothing listens there), the broker refused the client or the server certificate did
        not verify; or the connection dropped before the PUBACK.
    :raises TimeoutExpired: no PUBACK within ``timeout`` seconds.
    :raises PublishRefused: the PUBACK carried an MQTT 5 failure reason (135 "Not authorized":
        the broker's ACL denies these credentials that topic). On MQTT 3.1.1 a broker cannot say
        so: mosquitto acknowledges a denied publish and drops it.
    :raises ConfigError: the password file or the TLS files cannot be read.
    """
    mqtt = _paho()
    password = broker.resolved_password()
    client_id = one_shot_client_id(broker.client_id_prefix, agent_id, "send")
    protocol = V311 if broker.protocol == V311 else V5
    if broker.protocol == "auto" and memory is not None and memory.get(broker.url) == V311:
        protocol = V311  # this broker refused or ignored MQTT 5 before (swarmbus.transport.negotiated)
    deadline = time.monotonic() + broker.connect_timeout
    host, port = broker.endpoints[0]
    notice = WaitNotice(host, port, broker.connect_timeout)
    notice.arm()  # a connect may block (DNS, an unanswered SYN): the notice comes from a timer
    try:
        client, state, protocol = _connect_retrying(mqtt, broker, client_id, protocol, password, deadline, memory)
    finally:
        notice.cancel()
    try:
        info = client.publish(topic, payload, qos=1, retain=retain)
        ack_deadline = time.monotonic() + timeout
        while info.mid not in state.acked:
            remaining = ack_deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutExpired(f"no PUBACK from {broker.url} within {timeout:.0f}s")
            rc = client.loop(timeout=min(remaining, 1.0))
            if rc != mqtt.MQTT_ERR_SUCCESS and info.mid not in state.acked:
                raise BrokerUnreachable(
                    f"broker unreachable ({broker.url}): the connection dropped before the PUBACK "
                    f"({mqtt.error_string(rc)}); the message may or may not have been delivered",
                    hint=_HINT,
                )
        if info.mid in state.refused:
            raise PublishRefused(f"{broker.url} refused the publish to {topic}: {state.refused[info.mid]}",
                                 hint=ACL_HINT)
    finally:
        _close(client)
    return protocol
