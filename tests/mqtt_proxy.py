"""A tiny TCP proxy in front of a broker that pretends to be an MQTT 3.1.1-only broker.

It inspects the first packet of every client connection (the CONNECT). When the protocol level
byte is 5 it answers, as a 3.1.1-only broker that understands enough of MQTT 5 to refuse it
politely would, with an MQTT 5 CONNACK carrying reason code 132 (Unsupported Protocol Version)
and closes the connection. Any other CONNECT (level 4 = 3.1.1, level 3 = 3.1) is forwarded,
and from then on bytes are pumped both ways unchanged.

Stdlib only (socket + threading). Use it as a context manager, or call :meth:`start` and
:meth:`stop`; ``stop`` closes every socket and joins every thread.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

# CONNACK, remaining length 3: session present 0, reason 0x84 (132), properties length 0
REFUSE_V5_CONNACK = bytes([0x20, 0x03, 0x00, 0x84, 0x00])


class ProxyError(Exception):
    pass


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ProxyError("peer closed mid-packet")
        data += chunk
    return data


def read_packet(sock: socket.socket) -> bytes:
    """Read one whole MQTT control packet (fixed header + remaining length + body)."""
    header = _recv_exact(sock, 1)
    length = 0
    multiplier = 1
    raw_len = b""
    for _ in range(4):
        byte = _recv_exact(sock, 1)
        raw_len += byte
        length += (byte[0] & 0x7F) * multiplier
        if not byte[0] & 0x80:
            break
        multiplier *= 128
    else:
        raise ProxyError("malformed remaining length")
    return header + raw_len + _recv_exact(sock, length)


def connect_protocol_level(packet: bytes) -> int:
    """The protocol level byte of a CONNECT packet (4 = MQTT 3.1.1, 5 = MQTT 5)."""
    if packet[0] >> 4 != 1:
        raise ProxyError(f"first packet is type {packet[0] >> 4}, not CONNECT")
    i = 1
    while packet[i] & 0x80:  # skip the remaining-length bytes
        i += 1
    i += 1
    name_len = int.from_bytes(packet[i : i + 2], "big")
    return packet[i + 2 + name_len]


class Mqtt311Proxy:
    """Listen on 127.0.0.1:<free port>, forward to ``upstream`` (host, port), refuse MQTT 5.

    With ``silent`` an MQTT 5 CONNECT gets no answer at all: the connection is closed (RabbitMQ
    3.10's MQTT plugin). Counters: ``refused_v5`` (MQTT 5 CONNECTs refused) and ``forwarded``
    (connections whose CONNECT was passed on), with the protocol levels seen in ``levels``.
    """

    def __init__(self, upstream_host: str, upstream_port: int, *, silent: bool = False) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.silent = silent  # close an MQTT 5 CONNECT without any CONNACK, as RabbitMQ 3.10 does
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(32)
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, name="mqtt-proxy-accept", daemon=True)
        self.refused_v5 = 0
        self.forwarded = 0
        self.levels: list[int] = []
        self.errors: list[str] = []

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> Mqtt311Proxy:
        self._acceptor.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every connection, join every thread."""
        self._stop.set()
        self._acceptor.join(timeout)
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
            threads = list(self._threads)
        for sock in sockets:
            self._close(sock)
        for thread in threads:
            thread.join(timeout)
        alive = [t.name for t in threads if t.is_alive()]
        if self._acceptor.is_alive():
            alive.append(self._acceptor.name)
        if alive:
            raise RuntimeError(f"proxy threads still running after stop: {alive}")

    def __enter__(self) -> Mqtt311Proxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- internals --------------------------------------------------------------------------------
    def _spawn(self, target: object, *args: object, name: str) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)  # type: ignore[arg-type]
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._stop.is_set():
                return False
            self._sockets.add(sock)
            return True

    def _close(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        with self._lock:
            self._sockets.discard(sock)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            if not self._track(client):
                client.close()
                return
            self._spawn(self._handle, client, name=f"mqtt-proxy-conn-{client.fileno()}")

    def _handle(self, client: socket.socket) -> None:
        try:
            connect = read_packet(client)
            level = connect_protocol_level(connect)
        except (OSError, ProxyError, IndexError) as exc:
            if not self._stop.is_set():
                self.errors.append(f"reading CONNECT: {exc}")
            self._close(client)
            return
        with self._lock:
            self.levels.append(level)
        if level == 5:
            if not self.silent:
                with contextlib.suppress(OSError):
                    client.sendall(REFUSE_V5_CONNACK)
            with self._lock:
                self.refused_v5 += 1
            self._close(client)
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError as exc:
            self.errors.append(f"connecting upstream: {exc}")
            self._close(client)
            return
        upstream.settimeout(None)
        if not self._track(upstream):
            upstream.close()
            self._close(client)
            return
        with self._lock:
            self.forwarded += 1
        try:
            upstream.sendall(connect)
        except OSError:
            self._close(upstream)
            self._close(client)
            return
        self._spawn(self._pump, upstream, client, name="mqtt-proxy-down")
        self._pump(client, upstream)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        """Copy src -> dst until either side closes; then close both."""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._close(src)
            self._close(dst)
