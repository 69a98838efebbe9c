"""Fixtures and helpers for the engine tests (loaded by conftest.py): swarmbus against NATS (one
node, and a 3-node cluster) and RabbitMQ (the MQTT plugin), each a private server on free
loopback ports, stopped afterwards.

Nothing here touches the machine's own services (mosquitto on 1883, nats-server on 4222,
RabbitMQ on 5672 with epmd on 4369): every server gets free ports and its own files under the
test's temporary directory (see swarmbus.dev_nats and swarmbus.dev_rabbit). A test skips, with
the reason, only when the server's binary is not installed (scripts/bootstrap.sh installs both
where apt-get and root are available).
"""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from swarmbus import testing
from swarmbus.dev_nats import NatsConfig, RunningNats, find_nats_server, start_nats
from swarmbus.dev_rabbit import RabbitConfig, RunningRabbit, find_epmd, find_rabbitmq, start_rabbit

__all__ = [
    "Bus",
    "Engine",
    "RawClient",
    "bus",
    "engine",
    "nats_cluster",
    "nats_single",
    "rabbit",
    "require_nats",
    "require_rabbit",
    "wait_for",
]

NATS_MISSING = "nats-server is not installed (apt-get install nats-server; scripts/bootstrap.sh does it as root)"
RABBIT_MISSING = ("RabbitMQ (rabbitmq-server with epmd) is not installed (apt-get install rabbitmq-server; "
                  "scripts/bootstrap.sh does it as root)")


def require_nats() -> str:
    exe = find_nats_server()
    if exe is None:
        pytest.skip(NATS_MISSING)
    return exe


def require_rabbit() -> str:
    exe = find_rabbitmq()
    if exe is None or find_epmd() is None:
        pytest.skip(RABBIT_MISSING)
    return exe


def _start_nats(root: Path, nodes: int) -> RunningNats:
    exe = require_nats()
    for attempt in range(3):  # a free port can be taken before the node binds it (tests run in parallel)
        try:
            return start_nats(NatsConfig(state_dir=root / f"nats-{attempt}", nodes=nodes), exe)
        except RuntimeError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@pytest.fixture
def nats_single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNats]:
    """A private nats-server (JetStream, MQTT listener) on free loopback ports."""
    with _start_nats(Path(tmp_path_factory.mktemp("nats1")), 1) as nats:
        yield nats


@pytest.fixture
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNats]:
    """A private 3-node NATS cluster on loopback, MQTT streams replicated on all three."""
    with _start_nats(Path(tmp_path_factory.mktemp("nats3")), 3) as nats:
        yield nats


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRabbit]:
    """A private RabbitMQ node with the MQTT plugin (booting takes seconds: one per module; the
    tests use agent ids of their own)."""
    exe = require_rabbit()
    for attempt in range(3):
        try:
            node = start_rabbit(RabbitConfig(state_dir=Path(tmp_path_factory.mktemp("rabbit"))), exe)
            break
        except RuntimeError:
            if attempt == 2:
                raise
    with node:
        yield node


@dataclass
class Engine:
    """A running broker as the tests see it: its ``name``, each node's MQTT ``urls`` and the
    environment that points swarmbus at it (all nodes, for a cluster)."""

    name: str
    urls: list[str]
    env: dict[str, str]
    server: Any


@pytest.fixture(params=[
    "nats",
    "nats-cluster",
    pytest.param("rabbitmq", marks=pytest.mark.xdist_group("rabbitmq")),
])
def engine(request: pytest.FixtureRequest) -> Engine:
    """Each engine in turn: NATS single node, a 3-node NATS cluster, RabbitMQ."""
    if request.param == "nats":
        nats: RunningNats = request.getfixturevalue("nats_single")
        return Engine("nats", nats.urls, {}, nats)
    if request.param == "nats-cluster":
        nats = request.getfixturevalue("nats_cluster")
        return Engine("nats-cluster", nats.urls, {"SWARMBUS_BROKER_HOSTS": nats.hosts_value}, nats)
    node: RunningRabbit = request.getfixturevalue("rabbit")
    return Engine("rabbitmq", [node.url], {}, node)


@dataclass
class Bus:
    """Isolated swarmbus environments (state dir, config file) on one engine; every daemon
    started here is stopped at teardown."""

    root: Path
    engine: Engine
    env: dict[str, str] = field(default_factory=dict)
    procs: list[tuple[str, subprocess.Popen[bytes], Path]] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return Path(self.env["SWARMBUS_STATE_DIR"])

    def cli(self, *args: str, check: bool = False, timeout: float = 90,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = testing.run_cli({**self.env, **(env or {})}, *args, timeout=timeout)
        if check:
            assert proc.returncode == 0, testing.describe_run(proc)
        return proc

    def start(self, agent_id: str, *flags: str, env: dict[str, str] | None = None,
              timeout: float = 60) -> subprocess.Popen[bytes]:
        """Start the agent's daemon and wait until it is connected."""
        full = {**self.env, **(env or {})}
        log = self.root / f"{agent_id}-{len(self.procs)}.log"
        proc = testing.start_daemon(full, agent_id, *flags, log_path=log)
        self.procs.append((agent_id, proc, log))
        testing.wait_daemon_connected(full, agent_id, proc, timeout, log_path=log)
        return proc

    def status(self, agent_id: str) -> dict[str, Any]:
        return testing.agent_status(agent_id, self.state_dir) or {}

    def log(self, agent_id: str) -> str:
        return "".join(log.read_text(errors="replace") for a, _, log in self.procs if a == agent_id and log.exists())

    def store_path(self, agent_id: str) -> Path:
        return self.state_dir / "agents" / agent_id / "store.sqlite3"

    def list_agents(self, *extra: str) -> dict[str, dict[str, Any]]:
        """``swarmbus list --json`` (exit 0 required), by agent id."""
        proc = self.cli("list", "--json", *extra, check=True)
        return {row["agent"]: row for row in json.loads(proc.stdout)}

    def stop_all(self) -> None:
        for _, proc, _ in self.procs:
            testing.stop_daemon(proc)


@pytest.fixture
def bus(tmp_path_factory: pytest.TempPathFactory, engine: Engine) -> Iterator[Bus]:
    root = Path(tmp_path_factory.mktemp("sb"))
    env = testing.isolated_env(root, engine.urls[0], heartbeat=1, reconnect=(0.1, 0.5), **engine.env)
    (root / "config.toml").write_text("# engine test config\n")
    b = Bus(root, engine, env)
    try:
        yield b
    finally:
        for _, proc, _ in b.procs:
            if proc.poll() is None:
                testing.kill_process_group(proc.pid)
                proc.wait(10)


class RawClient:
    """A plain paho-mqtt MQTT 3.1.1 client (NATS and RabbitMQ 3.10 speak no MQTT 5) that records
    what it receives."""

    def __init__(self, url: str, *topics: str, client_id: str | None = None, clean_session: bool = True,
                 username: str | None = None, password: str | None = None) -> None:
        host, port = url.removeprefix("mqtt://").rsplit(":", 1)
        self.messages: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        connected, subscribed = threading.Event(), threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"test-{uuid.uuid4().hex[:8]}",
                                  clean_session=clean_session, protocol=mqtt.MQTTv311)
        self.client.on_connect = lambda c, u, f, rc, p: (c.subscribe([(t, 1) for t in topics]) if topics else None,
                                                          connected.set())
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.connect(host, int(port))
        self.client.loop_start()
        if not connected.wait(15) or (topics and not subscribed.wait(15)):
            self.close()
            raise AssertionError(f"raw client could not connect/subscribe to {url}")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(msg)

    def received(self, topic: str | None = None) -> list[mqtt.MQTTMessage]:
        with self._lock:
            return [m for m in self.messages if topic is None or m.topic == topic]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=1, retain=retain)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    return testing.wait_for(predicate, timeout, what, interval)
