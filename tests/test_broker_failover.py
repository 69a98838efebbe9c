"""Several brokers per agent, and MQTT version negotiation that works everywhere: real daemons
and one-shot commands against private mosquittos, a dead port, and a proxy that closes an MQTT 5
CONNECT without any CONNACK (RabbitMQ 3.10's MQTT plugin does)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import SwarmEnv, wait_for
from mqtt_proxy import Mqtt311Proxy
from swarmbus.broker_options import BrokerOptions, broker_endpoints
from swarmbus.dev_broker import BrokerConfig, RunningBroker, free_port, start_broker
from swarmbus.store import Store
from swarmbus.transport.negotiated import FILE_NAME, ProtocolMemory


def send_json(swarm: SwarmEnv, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = swarm.cli("send", *args, "--json", env=env, check=True)
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def stored_ids(swarm: SwarmEnv, agent: str) -> list[str]:
    if not swarm.store_path(agent).exists():
        return []
    with Store(swarm.store_path(agent)) as store:
        return store.message_ids()


@pytest.mark.parametrize(("hosts", "expected"), [
    ("a", [("a", 1883)]),
    ("a:1, b:2 a:1", [("a", 1), ("b", 2)]),
    (["[::1]:9", "::1", "c"], [("::1", 9), ("::1", 1883), ("c", 1883)]),
])
def test_endpoints_in_order(hosts: Any, expected: list[tuple[str, int]]) -> None:
    assert BrokerOptions(hosts=hosts).endpoints == expected
    assert broker_endpoints("h", 7, (), "tcp", False) == [("h", 7)]


@pytest.mark.parametrize("bad", ["a:0", "a:x", ":1", "[::1", 5])
def test_bad_hosts_are_refused_with_the_setting_named(bad: Any) -> None:
    with pytest.raises(ValueError, match="hosts"):
        BrokerOptions(hosts=bad if isinstance(bad, int) else [bad])


def test_protocol_memory_round_trip_and_bad_files(tmp_path: Path) -> None:
    memory = ProtocolMemory.in_state_dir(tmp_path)
    assert memory.get("mqtt://x:1") is None
    memory.remember("mqtt://x:1", "3.1.1")
    memory.remember("mqtt://y:1", "bogus")
    assert memory.get("mqtt://x:1") == "3.1.1" and memory.get("mqtt://y:1") is None
    assert (tmp_path / FILE_NAME).stat().st_mode & 0o777 == 0o600
    (tmp_path / FILE_NAME).write_text("[not an object")
    assert memory.get("mqtt://x:1") is None  # unreadable: nothing known, no error


@pytest.fixture
def second_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    with start_broker(BrokerConfig(state_dir=Path(tmp_path_factory.mktemp("second")), port=free_port())) as broker:
        yield broker


def test_daemon_moves_to_the_next_node_when_its_broker_dies(swarm: SwarmEnv, second_broker: RunningBroker) -> None:
    first: RunningBroker = swarm.broker  # type: ignore[attr-defined]
    dead = free_port()  # nothing listens there
    hosts = {"SWARMBUS_BROKER_HOSTS": f"127.0.0.1:{dead},127.0.0.1:{first.port},127.0.0.1:{second_broker.port}"}
    bob = swarm.start_daemon("bob", env=hosts)
    status = bob.wait_connected()
    assert status["broker"] == f"mqtt://127.0.0.1:{first.port}", status  # the dead node skipped at once
    assert len(status["brokers"]) == 3

    first.kill()  # a crash: bob moves on to the next node by itself
    wait_for(lambda: (swarm.status("bob") or {}).get("broker") == f"mqtt://127.0.0.1:{second_broker.port}"
             and (swarm.status("bob") or {}).get("connected"), 20, what="bob on the second broker")
    # one-shot sends try the nodes in order too: the first two refuse, the third takes it
    sent = send_json(swarm, "--agent-id", "carol", "--to", "bob", "--subject", "s", "--body", "via the third node",
                     "--direct", env=hosts)
    wait_for(lambda: sent["id"] in stored_ids(swarm, "bob"), 15, what="bob to store the message sent to node 3")


def test_a_one_shot_with_every_node_refusing_fails_at_once_naming_them(swarm: SwarmEnv) -> None:
    ports = [free_port(), free_port()]
    started = time.monotonic()
    proc = swarm.cli("send", "--agent-id", "carol", "--to", "bob", "--subject", "s", "--body", "b", "--direct",
                     "--broker", f"127.0.0.1:{ports[0]}", "--broker", f"127.0.0.1:{ports[1]}")
    assert proc.returncode == 2, proc.stderr
    assert time.monotonic() - started < 5
    assert f"127.0.0.1:{ports[0]}" in proc.stderr and f"127.0.0.1:{ports[1]}" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture
def silent_proxy(swarm: SwarmEnv) -> Iterator[Mqtt311Proxy]:
    broker: RunningBroker = swarm.broker  # type: ignore[attr-defined]
    proxy = Mqtt311Proxy(broker.host, broker.port, silent=True).start()
    try:
        yield proxy
    finally:
        for daemon in swarm.daemons:
            daemon.stop()
        proxy.stop()


def test_mqtt5_closed_without_connack_falls_back_and_is_remembered(swarm: SwarmEnv,
                                                                 silent_proxy: Mqtt311Proxy) -> None:
    via = ["--broker", silent_proxy.url]
    alice = swarm.start_daemon("alice", *via)
    assert alice.wait_connected()["protocol"] == "3.1.1"
    assert "closed the connection without answering an MQTT 5 CONNECT; using MQTT 3.1.1" in alice.log()
    memory = ProtocolMemory.in_state_dir(swarm.state_dir)
    assert memory.get(silent_proxy.url) == "3.1.1"
    tried_v5 = silent_proxy.levels.count(5)
    assert tried_v5 == 2  # once more at once (a broker shutting down closes silently too), then 3.1.1

    # later processes go straight to 3.1.1: another daemon and a direct send
    bob = swarm.start_daemon("bob", *via)
    assert bob.wait_connected()["protocol"] == "3.1.1"
    sent = send_json(swarm, "--agent-id", "carol", "--to", "bob", "--subject", "s", "--body", "b", "--direct", *via)
    wait_for(lambda: sent["id"] in stored_ids(swarm, "bob"), 15, what="bob to store the direct send")
    assert silent_proxy.levels.count(5) == tried_v5
    assert not silent_proxy.errors


def test_list_asks_by_name_for_the_agents_known_here(swarm: SwarmEnv) -> None:
    """The agents known on this machine (agent dirs, and the peers their stores know) are asked
    for by exact topic, so a broker that lists no retained records to wildcards still answers."""
    from swarmbus.oneshot import known_agents
    from swarmbus.settings import Settings

    swarm.start_daemon("alice")
    swarm.cli("send", "--agent-id", "zed", "--to", "alice", "--subject", "s", "--body", "b", "--direct", check=True)
    wait_for(lambda: len(stored_ids(swarm, "alice")) == 1, 15, what="alice to store zed's message")
    settings = Settings.model_validate({"state_dir": str(swarm.state_dir)})
    assert {"alice", "zed"} <= set(known_agents(settings))
    listed = json.loads(swarm.cli("list", "--json", check=True).stdout)
    assert [a["agent"] for a in listed] == ["alice"] and listed[0]["status"] == "online"


def test_retire_removes_a_gone_agents_session_and_presence(swarm: SwarmEnv) -> None:
    from peers import raw_client

    bob = swarm.start_daemon("bob")
    refused = swarm.cli("retire", "bob")
    assert refused.returncode == 1 and "stop it first" in refused.stderr  # alive here: refused
    bob.kill9()  # crashed: its session (subscriptions, queue) and retained record stay behind
    sent = send_json(swarm, "--agent-id", "carol", "--to", "bob", "--subject", "s", "--body", "queued", "--direct")
    done = swarm.cli("retire", "bob", "--force", check=True)  # its retained record still says online
    assert "ended bob's broker session" in done.stdout and "cleared bob's retained presence" in done.stdout
    listed = json.loads(swarm.cli("list", "--all", "--json", check=True).stdout)
    assert "bob" not in [a["agent"] for a in listed]
    with raw_client(swarm.broker.port, "agents/bob/presence") as sniffer:  # type: ignore[attr-defined]
        swarm.cli("send", "--agent-id", "carol", "--to", "zed", "--subject", "barrier", "--body", "b", "--direct",
                  check=True)
        assert sniffer.received("agents/bob/presence") == []  # no retained record left
    # the session is gone: a daemon started as bob again finds nothing queued from before
    swarm.start_daemon("bob")
    swarm.cli("send", "--agent-id", "carol", "--to", "bob", "--subject", "s", "--body", "after", "--direct", check=True)
    wait_for(lambda: len(stored_ids(swarm, "bob")) >= 1, 15, what="bob to store the new message")
    assert sent["id"] not in stored_ids(swarm, "bob")


def test_doctor_reports_each_broker_node(swarm: SwarmEnv) -> None:
    first: RunningBroker = swarm.broker  # type: ignore[attr-defined]
    dead = free_port()
    env = {"SWARMBUS_BROKER_HOSTS": f"127.0.0.1:{first.port},127.0.0.1:{dead}"}
    proc = swarm.cli("doctor", "--json", env=env)
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    nodes = checks["broker-nodes"]
    assert nodes["status"] == "warn" and "1 of 2 broker nodes do not answer" in nodes["summary"], nodes
    assert f"mqtt://127.0.0.1:{first.port} ok" in nodes["summary"]
    assert f"mqtt://127.0.0.1:{dead} DOWN" in nodes["summary"] and "connection refused" in nodes["summary"]
    assert checks["broker"]["status"] == "ok"
    single = {c["name"]: c for c in json.loads(swarm.cli("doctor", "--json").stdout)["checks"]}
    assert single["broker-nodes"]["status"] == "skip"
