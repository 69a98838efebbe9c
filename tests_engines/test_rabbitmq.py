"""RabbitMQ 3.10's MQTT plugin with swarmbus's default settings: the plugin closes the socket on an
MQTT 5 CONNECT without a CONNACK, so clients fall back to MQTT 3.1.1 by themselves (remembered per
broker), messages flow both ways, and `swarmbus list` shows the agents although the plugin sends
no retained message to a wildcard subscription (list also asks for the agents it knows by name)."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from engines import Bus, Engine, RawClient, require_rabbit, wait_for
from swarmbus import testing
from swarmbus.dev_rabbit import RunningRabbit
from swarmbus.store import Store

pytestmark = pytest.mark.xdist_group("rabbitmq")

FALLBACK_LOG = "closed the connection without answering an MQTT 5 CONNECT; using MQTT 3.1.1"


@pytest.fixture
def rabbit_bus(tmp_path_factory: pytest.TempPathFactory, rabbit: RunningRabbit) -> Iterator[Bus]:
    root = Path(tmp_path_factory.mktemp("rb"))
    env = testing.isolated_env(root, rabbit.url, heartbeat=1, reconnect=(0.1, 0.5))  # protocol: the default, auto
    (root / "config.toml").write_text("# rabbitmq test\n")
    bus = Bus(root, Engine("rabbitmq", [rabbit.url], {}, rabbit), env)
    try:
        yield bus
    finally:
        for _, proc, _ in bus.procs:
            if proc.poll() is None:
                testing.kill_process_group(proc.pid)
                proc.wait(10)


def _ids(bus: Bus, agent: str) -> list[str]:
    if not bus.store_path(agent).exists():
        return []
    with Store(bus.store_path(agent)) as store:
        return store.message_ids()


def test_default_settings_fall_back_to_311_messages_flow_and_list_shows_the_agents(rabbit_bus: Bus,
                                                                                   rabbit: RunningRabbit) -> None:
    bus = rabbit_bus
    bus.start("dana")
    assert bus.status("dana")["protocol"] == "3.1.1"
    assert FALLBACK_LOG in bus.log("dana")
    memory = json.loads((bus.state_dir / "broker-protocols.json").read_text())
    assert "3.1.1" in json.dumps(memory) and rabbit.url in json.dumps(memory), memory

    # a one-shot send goes straight to 3.1.1 (remembered), and reaches dana's daemon
    sent = json.loads(bus.cli("send", "--agent-id", "erin", "--to", "dana", "--subject", "direct",
                              "--body", "one-shot", "--direct", "--json", check=True).stdout)
    wait_for(lambda: sent["id"] in _ids(bus, "dana"), 20, "dana to store the direct send")

    # two daemons: through erin's, and the reply through dana's
    bus.start("erin")
    assert bus.status("erin")["protocol"] == "3.1.1"
    assert FALLBACK_LOG not in bus.log("erin")  # it went straight to 3.1.1
    sent = json.loads(bus.cli("send", "--agent-id", "erin", "--to", "dana", "--subject", "via daemon",
                              "--body", "hello", "--json", check=True).stdout)
    wait_for(lambda: sent["id"] in _ids(bus, "dana"), 20, "dana to store erin's message")
    reply = json.loads(bus.cli("send", "--agent-id", "dana", "--to", "erin", "--subject", "re: via daemon",
                               "--body", "hi", "--in-reply-to", sent["id"], "--json", check=True).stdout)
    wait_for(lambda: reply["id"] in _ids(bus, "erin"), 20, "erin to store dana's reply")

    # the plugin keeps retained presence per exact topic only: a wildcard subscription gets none
    exact = RawClient(rabbit.url, "agents/dana/presence")
    wildcard = RawClient(rabbit.url, "agents/+/presence")
    try:
        wait_for(lambda: exact.received("agents/dana/presence"), 10, "dana's retained presence, by exact topic")
        assert json.loads(exact.received("agents/dana/presence")[0].payload)["status"] == "online"
        assert not [m for m in wildcard.received() if m.retain], "RabbitMQ 3.10 sent retained messages to a wildcard"
    finally:
        exact.close()
        wildcard.close()

    # list finds both anyway: it asks by name for the agents known on this machine
    listed = bus.list_agents()
    assert listed.get("dana", {}).get("status") == "online" and listed.get("erin", {}).get("status") == "online", listed
    assert bus.cli("doctor", "--agent-id", "dana").returncode == 0


def _listening_addresses(pids: set[int]) -> set[tuple[str, int]]:
    """The (address, port) TCP listeners held by ``pids``, from /proc (Linux)."""
    inodes = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir() if fd_dir.exists() else []:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # LISTEN
                addr, port = local.split(":")
                raw = bytes.fromhex(addr)
                if width == 8:
                    found.add((socket.inet_ntop(socket.AF_INET, raw[::-1]), int(port, 16)))
                else:
                    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    found.add((socket.inet_ntop(socket.AF_INET6, words), int(port, 16)))
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads listening sockets from /proc (Linux)")
def test_the_private_node_listens_on_loopback_only_and_leaves_nothing_behind(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    from swarmbus.dev_rabbit import RabbitConfig, start_rabbit

    node = start_rabbit(RabbitConfig(state_dir=Path(tmp_path_factory.mktemp("iso"))), require_rabbit())
    try:
        assert node.node_name.startswith("swarmbus-") and node.node_name.endswith("@localhost")
        assert {node.mqtt_port, node.amqp_port, node.dist_port, node.epmd_port}.isdisjoint({1883, 5672, 4369, 25672})
        assert node.proc is not None and node.epmd is not None
        group = set(node.processes())
        assert group, "no process of the node found"
        listeners = _listening_addresses(group | {node.epmd.pid})
        ports = {port for _, port in listeners}
        assert {node.mqtt_port, node.amqp_port, node.dist_port, node.epmd_port} <= ports, listeners
        assert all(addr in ("127.0.0.1", "::1") for addr, _ in listeners), f"not loopback only: {listeners}"
        ctl = node.rabbitmqctl("status")
        assert ctl.returncode == 0 and node.node_name in ctl.stdout, ctl.stdout + ctl.stderr
        epmd_pid = node.epmd.pid
    finally:
        node.stop()
    assert node.processes() == [], "a process of the node outlived stop()"
    assert node.epmd.poll() is not None and not testing.pid_alive(epmd_pid)
