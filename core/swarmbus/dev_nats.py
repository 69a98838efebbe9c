"""Run a private NATS server (one node, or a cluster of N nodes on loopback) with JetStream and
its MQTT listener, for local development and tests.

NATS implements MQTT 3.1.1 on top of JetStream: sessions, retained messages and QoS 1 messages
for offline subscribers are kept in JetStream streams (``$MQTT_sess``, ``$MQTT_rmsgs``,
``$MQTT_msgs``), which a cluster replicates. This module writes one ``nats.conf`` per node and
starts, kills and restarts the nodes as child processes. Like :mod:`swarmbus.dev_broker` it uses
the standard library only and imports nothing from swarmbus but that module's port helpers.

Typical use::

    from swarmbus.dev_nats import NatsConfig, start_nats

    with start_nats(NatsConfig(state_dir=Path("/tmp/nats"), nodes=3)) as nats:
        print(nats.urls)           # ["mqtt://127.0.0.1:40123", "mqtt://127.0.0.1:40127", ...]
        print(nats.hosts_value)    # "127.0.0.1:40123,127.0.0.1:40127,..." for SWARMBUS_BROKER_HOSTS
        nats.kill(0)               # SIGKILL node 0, as in a crash
        nats.restart(0)            # same config and ports; it rejoins the cluster

Everything a node writes lives in ``<state_dir>/n<i>/`` (``i`` from 1): ``nats.conf``,
``nats.log`` (the server's log), ``nats.console.log`` (its stdout and stderr: the errors printed
before the log file is open) and ``jetstream/`` (the store; nats-server adds a ``jetstream``
directory under the configured ``store_dir``).

Checked against nats-server 2.9.10 (Debian 12):

* The ``mqtt`` block takes ``listen``, ``stream_replicas`` and ``consumer_replicas``
  (https://docs.nats.io/reference/config/mqtt; an unknown option is a config error). With
  ``stream_replicas`` = N the MQTT streams are created with N replicas ("Creating MQTT
  streams/consumers with replicas 3" in the log); consumers left at the default inherit the
  stream's replicas (``num_replicas`` 0 in ``/jsz``, with the cluster's three peers listed).
* MQTT needs ``server_name`` and, standalone, JetStream ("mqtt requires JetStream to be enabled
  if running in standalone mode").
* The first MQTT connection of an account creates the MQTT streams, which takes seconds on a
  cluster; :func:`start_nats` makes that connection before it returns.
* A route to the node's own cluster port only logs "Duplicate Route"; the routes written here
  leave it out.
* ``/jsz`` (monitoring port) reports ``meta_cluster.leader`` once the cluster elected a
  metadata leader. ``/healthz`` is no readiness signal for a restarted cluster node: it fails
  ("JetStream consumer '$G > $MQTT_rmsgs > ...' is not current") until an MQTT client connects
  to that node, and logs a warning at each failed check.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from swarmbus.dev_broker import free_port, log_tails

__all__ = [
    "NatsConfig",
    "NatsNode",
    "NatsServerNotFound",
    "RunningNats",
    "find_nats_server",
    "load_layout",
    "mqtt_answers",
    "node_meta_leader",
    "node_ready",
    "plan_nodes",
    "render_nats_conf",
    "save_layout",
    "start_nats",
    "write_nats_confs",
]

CONF_NAME = "nats.conf"
LOG_NAME = "nats.log"
CONSOLE_LOG_NAME = "nats.console.log"
STORE_NAME = "jetstream"
DEFAULT_CLUSTER = "swarmbus"

INSTALL_HINT = (
    "nats-server is not installed (looked on PATH and in /usr/sbin, /usr/local/sbin, /usr/local/bin, "
    "/opt/homebrew/bin). Install it with `sudo apt-get install nats-server` (Debian/Ubuntu) or "
    "`brew install nats-server` (macOS)."
)

_FALLBACK_PATHS: tuple[str, ...] = (
    "/usr/sbin/nats-server",
    "/usr/local/sbin/nats-server",
    "/usr/local/bin/nats-server",
    "/opt/homebrew/bin/nats-server",
)

# Logged once every listener is open: seeing it in *our* log after our start proves that our
# process owns the ports, not some other process that happens to accept connections on them.
_READY_RE = re.compile(rb"\[INF\] Server is ready")


class NatsServerNotFound(RuntimeError):
    """Raised when no nats-server executable can be found. The message says how to install it."""

    def __init__(self, message: str = INSTALL_HINT) -> None:
        super().__init__(message)


@dataclass(frozen=True)
class NatsNode:
    """One node of a :class:`NatsConfig`: its 0-based ``index``, ``name`` (``server_name``, also
    its directory name ``n<index+1>``), directory, bind address and ports (TCP, on ``host``):
    ``mqtt_port`` (MQTT 3.1.1 clients), ``client_port`` (NATS clients), ``http_port``
    (monitoring: ``/healthz``, ``/jsz``), ``cluster_port`` (routes; None for a single node)."""

    index: int
    name: str
    dir: Path
    host: str
    mqtt_port: int
    client_port: int
    http_port: int
    cluster_port: int | None = None

    @property
    def conf_path(self) -> Path:
        """``<dir>/nats.conf``."""
        return self.dir / CONF_NAME

    @property
    def log_path(self) -> Path:
        """``<dir>/nats.log``: the server's log (``log_file``)."""
        return self.dir / LOG_NAME

    @property
    def console_log_path(self) -> Path:
        """``<dir>/nats.console.log``: the server's stdout and stderr."""
        return self.dir / CONSOLE_LOG_NAME

    @property
    def store_dir(self) -> Path:
        """``<dir>/jetstream``: the configured JetStream ``store_dir``."""
        return self.dir / STORE_NAME

    @property
    def mqtt_url(self) -> str:
        """``"mqtt://host:mqtt_port"`` (IPv6 in brackets)."""
        return f"mqtt://{_hostport(self.host, self.mqtt_port)}"

    @property
    def mqtt_host(self) -> str:
        """``"host:mqtt_port"``, one entry of ``SWARMBUS_BROKER_HOSTS`` / ``[broker] hosts``."""
        return _hostport(self.host, self.mqtt_port)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class NatsConfig:
    """Settings for a private NATS server or cluster.

    Attributes:
        state_dir: where every node's directory goes (created on start; paths may be ``str``).
        nodes: how many nodes, 1 or more. More than one makes a cluster named ``cluster_name``
            whose nodes route to each other on loopback.
        mqtt_port: node ``i``'s MQTT port is ``mqtt_port + i``; None: free ports.
        bind: the address every listener binds (default loopback).
        cluster_name: the cluster's name (clusters only).
        stream_replicas: replicas of the MQTT streams; None: ``nodes`` (each node holds a copy,
            so a cluster of 3 keeps working with one node down).
        ack_wait: seconds after which NATS redelivers a QoS 1 message a client did not
            acknowledge (the ``mqtt.ack_wait`` option); None: the server's default (30 s).
        extra_lines: lines appended verbatim at the end of every node's config.
        probe_credentials: ``(user, password)`` the readiness probe connects with, for a server
            whose config requires users (``swarmbus broker --engine nats --secure``); not shown
            in reprs.

    Raises:
        ValueError: for fewer than 1 node, an out-of-range port, replicas outside 1..nodes, a
            path or bind address with whitespace or a quote, a non-positive ``ack_wait``, or a
            multi-line ``extra_lines`` entry.
    """

    state_dir: Path
    nodes: int = 1
    mqtt_port: int | None = None
    bind: str = "127.0.0.1"
    cluster_name: str = DEFAULT_CLUSTER
    stream_replicas: int | None = None
    ack_wait: float | None = None
    extra_lines: tuple[str, ...] = ()
    probe_credentials: tuple[str, str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        state = Path(self.state_dir).expanduser().absolute()
        if any(ch.isspace() or ch == '"' for ch in str(state)):
            raise ValueError(f"state_dir must not contain whitespace or quotes: {str(state)!r}")
        object.__setattr__(self, "state_dir", state)
        object.__setattr__(self, "extra_lines", tuple(self.extra_lines))
        if self.nodes < 1:
            raise ValueError(f"nodes must be >= 1, got {self.nodes}")
        if self.mqtt_port is not None and not 1 <= self.mqtt_port <= 65536 - self.nodes:
            raise ValueError(f"mqtt_port must leave room for {self.nodes} ports in 1..65535, got {self.mqtt_port}")
        if self.stream_replicas is not None and not 1 <= self.stream_replicas <= self.nodes:
            raise ValueError(f"stream_replicas must be in 1..{self.nodes}, got {self.stream_replicas}")
        if self.ack_wait is not None and self.ack_wait <= 0:
            raise ValueError(f"ack_wait must be > 0 seconds, got {self.ack_wait}")
        if not self.bind or any(ch.isspace() or ch == '"' for ch in self.bind):
            raise ValueError(f"bind must be a non-empty address without whitespace or quotes: {self.bind!r}")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.cluster_name):
            raise ValueError(f"cluster_name must be letters, digits, '_' or '-': {self.cluster_name!r}")
        for line in self.extra_lines:
            if "\n" in line or "\r" in line:
                raise ValueError(f"extra_lines entries must be single lines: {line!r}")

    @property
    def replicas(self) -> int:
        """The MQTT streams' replicas: ``stream_replicas``, or ``nodes``."""
        return self.stream_replicas or self.nodes

    @property
    def connect_host(self) -> str:
        """Address a local client should dial: the bind address, or loopback for a wildcard."""
        if self.bind in ("0.0.0.0", "*"):  # noqa: S104 - mapped to loopback for local clients
            return "127.0.0.1"
        if self.bind == "::":
            return "::1"
        return self.bind


def plan_nodes(cfg: NatsConfig) -> list[NatsNode]:
    """The nodes of ``cfg``: names ``n1``..``nN``, directories ``<state_dir>/n<i>``, MQTT ports
    from ``cfg.mqtt_port`` (or free ones), and free ports (picked now, by the OS) for the NATS
    client, monitoring and cluster listeners. Another process can take a free port before the
    node binds it: :func:`start_nats` then fails with the node's log tail, and a caller may
    plan again."""
    host = cfg.connect_host
    nodes = []
    for i in range(cfg.nodes):
        nodes.append(NatsNode(
            index=i,
            name=f"n{i + 1}",
            dir=cfg.state_dir / f"n{i + 1}",
            host=host,
            mqtt_port=cfg.mqtt_port + i if cfg.mqtt_port is not None else free_port(host),
            client_port=free_port(host),
            http_port=free_port(host),
            cluster_port=free_port(host) if cfg.nodes > 1 else None,
        ))
    return nodes


def _duration(seconds: float) -> str:
    return f"{seconds:g}s" if seconds >= 1 else f"{round(seconds * 1000)}ms"


def render_nats_conf(cfg: NatsConfig, node: NatsNode, nodes: list[NatsNode]) -> str:
    """The text of ``node``'s nats.conf (nats-server 2.9 syntax), each group of lines under a
    ``#`` comment saying why it is there; ``extra_lines`` go in verbatim at the end. Paths in it
    are absolute; it ends with a newline."""
    bind = cfg.bind
    out = [
        f"# Generated by swarmbus.dev_nats: node {node.name} of a private NATS "
        + (f"cluster of {len(nodes)} nodes." if len(nodes) > 1 else "server (one node)."),
        "# Regenerated on every start; edit NatsConfig (or extra_lines), not this file.",
        "",
        "# MQTT needs an explicit server name; in a cluster it names this node in /jsz and the logs.",
        f"server_name: {node.name}",
        "",
        "# NATS clients (not used by swarmbus; the port is private and free).",
        f'listen: "{_hostport(bind, node.client_port)}"',
        "",
        "# Monitoring: /healthz and /jsz say when JetStream is ready (and who leads the cluster).",
        f'http: "{_hostport(bind, node.http_port)}"',
        "",
        "# The server's own log, with timestamps.",
        f'log_file: "{node.log_path}"',
        "logtime: true",
        "",
        "# JetStream keeps MQTT sessions, retained messages and QoS 1 messages for offline clients.",
        "jetstream {",
        f'  store_dir: "{node.store_dir}"',
        "}",
        "",
    ]
    if node.cluster_port is not None:
        routes = [f'"nats-route://{_hostport(cfg.connect_host, n.cluster_port)}"'
                  for n in nodes if n.index != node.index and n.cluster_port is not None]
        out += [
            f"# The cluster: routes to the other {len(routes)} nodes (not to itself: that only logs",
            "# 'Duplicate Route'). JetStream elects a metadata leader among them.",
            "cluster {",
            f"  name: {cfg.cluster_name}",
            f'  listen: "{_hostport(bind, node.cluster_port)}"',
            f"  routes: [{', '.join(routes)}]",
            "}",
            "",
        ]
    out += [
        "# The MQTT 3.1.1 listener (NATS answers an MQTT 5 CONNECT with 'unacceptable protocol",
        "# version'). stream_replicas: every MQTT stream has this many copies, so a cluster keeps",
        "# its sessions and retained messages when a node dies; consumers inherit it.",
        "mqtt {",
        f'  listen: "{_hostport(bind, node.mqtt_port)}"',
        f"  stream_replicas: {cfg.replicas}",
    ]
    if cfg.ack_wait is not None:
        out += [
            "  # Redeliver an unacknowledged QoS 1 message after this long (default 30s).",
            f'  ack_wait: "{_duration(cfg.ack_wait)}"',
        ]
    out.append("}")
    if cfg.extra_lines:
        out += ["", "# extra_lines from NatsConfig, verbatim.", *cfg.extra_lines]
    return "\n".join(out) + "\n"


def _private_dir(path: Path) -> None:
    if not path.is_dir():
        path.mkdir(parents=True, mode=0o700, exist_ok=True)
        path.chmod(0o700)  # mkdir's mode is masked by the umask


def write_nats_confs(cfg: NatsConfig, nodes: list[NatsNode] | None = None) -> list[NatsNode]:
    """Create the state dir and each node's directory (new ones get mode 0700) and write each
    node's ``nats.conf`` (mode 0600). ``nodes`` defaults to :func:`plan_nodes`. Returns the
    nodes written.

    Raises:
        OSError: a directory or file cannot be created.
    """
    nodes = nodes if nodes is not None else plan_nodes(cfg)
    _private_dir(cfg.state_dir)
    for node in nodes:
        _private_dir(node.dir)
        tmp = node.conf_path.with_name(CONF_NAME + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(render_nats_conf(cfg, node, nodes))
        os.replace(tmp, node.conf_path)
    return nodes


def find_nats_server() -> str | None:
    """The path of the nats-server executable, or None if it is not installed. Looks on PATH
    first, then in /usr/sbin (Debian's package), /usr/local/sbin, /usr/local/bin and
    /opt/homebrew/bin."""
    found = shutil.which("nats-server")
    if found:
        return found
    for candidate in _FALLBACK_PATHS:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


# MQTT 3.1.1 CONNECT, clean session, keepalive 10 s, client id "swarmbus-nats-probe-<random>":
# a new id each time, since NATS holds back ("flapping") a client id that reconnects at once,
# to another node of the cluster too.
def _probe_connect(credentials: tuple[str, str] | None = None) -> bytes:
    def field_(value: bytes) -> bytes:
        return len(value).to_bytes(2, "big") + value

    cid = f"swarmbus-nats-probe-{secrets.token_hex(6)}".encode()
    flags = 0x02 | (0xC0 if credentials else 0)  # clean session; user name and password
    body = b"\x00\x04MQTT\x04" + bytes([flags]) + b"\x00\x0a" + field_(cid)
    if credentials:
        body += field_(credentials[0].encode()) + field_(credentials[1].encode())
    length, remaining = bytearray(), len(body)  # MQTT's variable-length "remaining length"
    while True:
        remaining, digit = divmod(remaining, 128)
        length.append(digit | (0x80 if remaining else 0))
        if not remaining:
            return bytes([0x10]) + bytes(length) + body


def mqtt_answers(host: str, port: int, timeout: float = 5.0, credentials: tuple[str, str] | None = None) -> bool:
    """True when ``host``:``port`` accepts an MQTT 3.1.1 CONNECT (a CONNACK with return code 0),
    made with ``credentials`` ``(user, password)`` when given.
    NATS answers only once JetStream can store the session (the first connection of an account
    also creates the MQTT streams), so this waits up to ``timeout`` seconds for the answer. Never
    raises."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(_probe_connect(credentials))
            answer = b""
            while len(answer) < 4:
                chunk = sock.recv(4 - len(answer))
                if not chunk:
                    return False
                answer += chunk
            if answer[0] == 0x20 and answer[3] == 0:
                with contextlib.suppress(OSError):
                    sock.sendall(b"\xe0\x00")
                return True
    except OSError:
        pass
    return False



def _http_json(node: NatsNode, path: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """GET ``path`` on the node's monitoring port, parsed; None when it does not answer JSON
    (not up yet, or a 503 whose body is not JSON)."""
    url = f"http://{_hostport(node.host, node.http_port)}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # loopback http, a URL built here
            data = json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # /healthz answers 503 with a JSON body while not ready
        try:
            data = json.loads(exc.read())
        except (ValueError, OSError):
            return None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def node_meta_leader(node: NatsNode) -> str | None:
    """The JetStream metadata leader's name as ``node`` sees it (its ``/jsz``), or None: no
    leader yet, a single node, or the node does not answer."""
    leader = ((_http_json(node, "/jsz") or {}).get("meta_cluster") or {}).get("leader")
    return str(leader) if leader else None


def node_ready(node: NatsNode, *, cluster: bool, timeout: float = 5.0,
               credentials: tuple[str, str] | None = None) -> bool:
    """Whether ``node`` serves MQTT clients: it sees a metadata leader (when ``cluster``) and
    accepts an MQTT connection (with ``credentials``, when given) within ``timeout`` seconds.
    Never raises."""
    return ((not cluster or node_meta_leader(node) is not None)
            and mqtt_answers(node.host, node.mqtt_port, timeout, credentials))


LAYOUT_NAME = "layout.json"


def save_layout(path: Path, cfg: NatsConfig, nodes: list[NatsNode]) -> None:
    """Write the node layout (names, directories, ports) and the cluster settings to ``path``
    as JSON (mode 0600), so that another process can find the nodes again (:func:`load_layout`)."""
    data = {"nodes": [{"index": n.index, "name": n.name, "dir": str(n.dir), "host": n.host,
                       "mqtt_port": n.mqtt_port, "client_port": n.client_port, "http_port": n.http_port,
                       "cluster_port": n.cluster_port} for n in nodes],
            "cluster_name": cfg.cluster_name, "replicas": cfg.replicas, "bind": cfg.bind}
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
    os.replace(tmp, path)


def load_layout(path: Path) -> list[NatsNode] | None:
    """The nodes :func:`save_layout` wrote to ``path``; None when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [NatsNode(index=int(n["index"]), name=str(n["name"]), dir=Path(n["dir"]), host=str(n["host"]),
                         mqtt_port=int(n["mqtt_port"]), client_port=int(n["client_port"]),
                         http_port=int(n["http_port"]),
                         cluster_port=None if n.get("cluster_port") is None else int(n["cluster_port"]))
                for n in data["nodes"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


# Nodes still running, so that an interpreter exit (a crashed test run) does not leave orphaned
# nats-server processes holding ports.
_LIVE_PROCS: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _reap_live_procs() -> None:
    for proc in list(_LIVE_PROCS):
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _LIVE_PROCS.clear()


class RunningNats:
    """The nats-server processes started by :func:`start_nats`, one per node.

    Attributes:
        config: the :class:`NatsConfig`.
        nodes: the :class:`NatsNode` list (index ``i`` is node ``n<i+1>``).
        procs: the current process of each node (a new one after :meth:`restart`).
        urls: each node's ``"mqtt://host:port"``.
        hosts: each node's ``"host:port"``; :attr:`hosts_value` joins them with commas, the
            value of ``SWARMBUS_BROKER_HOSTS``.

    Used as a context manager it calls :meth:`stop` on exit.
    """

    def __init__(self, config: NatsConfig, nodes: list[NatsNode], nats_server: str, *, timeout: float) -> None:
        self.config = config
        self.nodes = nodes
        self.nats_server = nats_server
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * len(nodes)
        self._log_offsets: dict[int, int] = {}
        self.urls = [n.mqtt_url for n in nodes]
        self.hosts = [n.mqtt_host for n in nodes]
        deadline = time.monotonic() + timeout
        try:
            for node in nodes:
                self._spawn(node.index)
            for node in nodes:
                self._wait_node(node.index, deadline)
            self.wait_ready(max(0.0, deadline - time.monotonic()))
        except BaseException:
            for i in range(len(nodes)):
                self.kill(i)
            raise

    @property
    def url(self) -> str:
        """The first node's MQTT URL."""
        return self.urls[0]

    @property
    def hosts_value(self) -> str:
        """``"host:port,host:port,..."``: every node, for ``SWARMBUS_BROKER_HOSTS``."""
        return ",".join(self.hosts)

    @property
    def state_dir(self) -> Path:
        return self.config.state_dir

    def running(self, i: int) -> bool:
        """True while node ``i``'s process is alive."""
        proc = self.procs[i]
        return proc is not None and proc.poll() is None

    def _spawn(self, i: int) -> None:
        node = self.nodes[i]
        try:
            offset = node.log_path.stat().st_size
        except FileNotFoundError:
            offset = 0
        self._log_offsets[i] = offset
        with open(node.console_log_path, "ab") as console:
            proc = subprocess.Popen(
                [self.nats_server, "-c", str(node.conf_path)],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, cwd=node.dir,
            )
        self.procs[i] = proc
        _LIVE_PROCS.add(proc)

    def _logs(self, i: int) -> str:
        node = self.nodes[i]
        return log_tails((node.log_path, node.console_log_path))

    def _fail(self, i: int, message: str) -> RuntimeError:
        return RuntimeError(f"nats node {self.nodes[i].name}: {message}\n{self._logs(i)}")

    def _wait_node(self, i: int, deadline: float) -> None:
        """Wait until node ``i`` logged "Server is ready" (after this start) and its MQTT port
        accepts TCP connections."""
        node, proc = self.nodes[i], self.procs[i]
        assert proc is not None
        offset = self._log_offsets.get(i, 0)
        while True:
            if proc.poll() is not None:
                raise self._fail(i, f"nats-server exited with code {proc.returncode} during startup")
            ready = False
            with contextlib.suppress(OSError), open(node.log_path, "rb") as fh:
                if fh.seek(0, os.SEEK_END) < offset:
                    offset = 0
                fh.seek(offset)
                ready = bool(_READY_RE.search(fh.read()))
            if ready:
                try:
                    with socket.create_connection((node.host, node.mqtt_port), timeout=1.0):
                        return
                except OSError:
                    pass
            if time.monotonic() >= deadline:
                raise self._fail(i, "not ready (no 'Server is ready' in its log, or its MQTT port closed) "
                                 "before the deadline")
            time.sleep(0.02)

    def jsz(self, i: int, query: str = "") -> dict[str, Any] | None:
        """Node ``i``'s ``/jsz`` (JetStream state: ``meta_cluster.leader``, and with ``query``
        such as ``"accounts=true&streams=true&consumers=true"`` the streams), or None."""
        return _http_json(self.nodes[i], "/jsz" + (f"?{query}" if query else ""))

    def stream_leaders(self, i: int | None = None) -> dict[str, str | None]:
        """Each JetStream stream's leader (a node name, or None while it has none) as node ``i``
        (default: the first running node) sees it; the MQTT streams are ``$MQTT_sess``
        (sessions), ``$MQTT_msgs`` (QoS 1 messages) and ``$MQTT_rmsgs`` (retained messages).
        Empty when no node answers."""
        k = i if i is not None else next((k for k in range(len(self.nodes)) if self.running(k)), 0)
        data = self.jsz(k, "accounts=true&streams=true") or {}
        return {str(st.get("name")): (st.get("cluster") or {}).get("leader")
                for acc in data.get("account_details") or [] for st in acc.get("stream_detail") or []}

    def index_of(self, name: str) -> int:
        """The index of the node named ``name`` (``n1`` is 0). Raises ValueError for another name."""
        for node in self.nodes:
            if node.name == name:
                return node.index
        raise ValueError(f"no node named {name!r}")

    def healthy(self, i: int) -> bool:
        """Whether node ``i``'s ``/healthz`` says ``ok``."""
        return (_http_json(self.nodes[i], "/healthz") or {}).get("status") == "ok"

    def meta_leader(self, i: int | None = None) -> str | None:
        """The name of the JetStream metadata leader as node ``i`` (default: the first running
        node) sees it, or None (no leader, a single node, or nothing answers)."""
        candidates = [i] if i is not None else [k for k in range(len(self.nodes)) if self.running(k)]
        for k in candidates:
            leader = node_meta_leader(self.nodes[k])
            if leader:
                return leader
        return None

    def wait_ready(self, timeout: float = 30.0, nodes: list[int] | None = None) -> None:
        """Wait until each running node (or each of ``nodes``) sees a metadata leader (clusters)
        and accepts an MQTT connection; ``timeout`` in seconds. (Not ``/healthz``: a restarted
        node reports its retained-message consumer "not current" until an MQTT client connects.)

        Raises:
            RuntimeError: a node exited, or the deadline passed; with the log tails.
        """
        deadline = time.monotonic() + timeout
        wanted = nodes if nodes is not None else [k for k in range(len(self.nodes)) if self.running(k)]
        for k in wanted:
            node = self.nodes[k]
            while True:
                proc = self.procs[k]
                if proc is None or proc.poll() is not None:
                    raise self._fail(k, f"nats-server exited (code {proc.returncode if proc else None})")
                if node_ready(node, cluster=len(self.nodes) > 1, credentials=self.config.probe_credentials,
                              timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
                    break
                if time.monotonic() >= deadline:
                    raise self._fail(k, f"not ready within {timeout:g}s (healthz ok: {self.healthy(k)}, "
                                     f"meta leader: {self.meta_leader(k)}, MQTT answers: "
                                     f"{mqtt_answers(node.host, node.mqtt_port, 1.0, self.config.probe_credentials)})")
                time.sleep(0.1)

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (a crash: nothing is flushed) and wait for it to exit."""
        proc = self.procs[i]
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        _LIVE_PROCS.discard(proc)

    def stop_node(self, i: int, timeout: float = 10.0) -> int | None:
        """SIGTERM node ``i`` and wait up to ``timeout`` seconds (then SIGKILL). Returns its exit
        code (negative: killed by that signal), or None if it was never started."""
        proc = self.procs[i]
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _LIVE_PROCS.discard(proc)
        return proc.returncode

    def restart(self, i: int, timeout: float = 30.0) -> None:
        """Start node ``i`` again with the same config and ports (stopping it first if it runs);
        return once it is ready (see :meth:`wait_ready`): for a cluster, when it caught up with
        the metadata leader.

        Raises:
            RuntimeError: it exited or was not ready within ``timeout`` seconds (then it is killed).
        """
        self.stop_node(i)
        deadline = time.monotonic() + timeout
        self._spawn(i)
        try:
            self._wait_node(i, deadline)
            self.wait_ready(max(0.0, deadline - time.monotonic()), nodes=[i])
        except BaseException:
            self.kill(i)
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every node (all at once), wait up to ``timeout`` seconds, SIGKILL the rest."""
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for i in range(len(self.nodes)):
            self.stop_node(i, max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        states = ["up" if self.running(i) else "down" for i in range(len(self.nodes))]
        return f"<RunningNats {' '.join(f'{u}({s})' for u, s in zip(self.urls, states, strict=True))}>"


def start_nats(cfg: NatsConfig, nats_server: str | None = None, *, nodes: list[NatsNode] | None = None,
               timeout: float = 60.0) -> RunningNats:
    """Write every node's config and start the nodes; return once each one is ready: it logged
    "Server is ready", a cluster has a metadata leader, and an MQTT
    connection is accepted (which creates the MQTT streams).

    Args:
        cfg: the settings; ``cfg.state_dir`` is created if missing.
        nats_server: the executable; default :func:`find_nats_server`.
        nodes: the node layout; default :func:`plan_nodes` (free ports).
        timeout: seconds for the whole start.

    Returns:
        A :class:`RunningNats`; stop it with ``stop()`` or a ``with`` block.

    Raises:
        NatsServerNotFound: no nats-server executable.
        RuntimeError: a node exited during startup (bad config, a port taken...) or was not ready
            in time; the message has its log tails. Every node started is killed first.
    """
    exe = nats_server or find_nats_server()
    if exe is None:
        raise NatsServerNotFound()
    written = write_nats_confs(cfg, nodes)
    return RunningNats(cfg, written, exe, timeout=timeout)
