"""`swarmbus broker --engine nats`: a local NATS (one node, or a 3-node loopback cluster) in the
foreground or detached (--detach, --status, --stop), usable by daemons as printed; mosquitto stays
the default engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from engines import require_nats, wait_for
from swarmbus import testing
from swarmbus.dev_broker import free_port, port_in_use
from swarmbus.dev_nats import mqtt_answers


def _swarmbus(state: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k in testing.INHERITED}
    env.update(SWARMBUS_STATE_DIR=str(state), SWARMBUS_CONFIG=str(state.parent / "config.toml"))
    return subprocess.run([sys.executable, "-m", "swarmbus", "broker", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _free_ports(count: int) -> int:
    """A port P such that P .. P+count-1 are free right now."""
    for _ in range(50):
        port = free_port()
        if port + count <= 65535 and not any(port_in_use("127.0.0.1", port + i) for i in range(count)):
            return port
    raise AssertionError(f"no {count} consecutive free ports")


def test_help_teaches_the_nats_engine_and_mosquitto_stays_the_default(tmp_path: Path) -> None:
    out = _swarmbus(tmp_path / "state", "--help").stdout
    assert "--engine {mosquitto,nats}" in out and "mosquitto (default)" in out
    assert "swarmbus broker --engine nats --nodes 3 --port 4301 --detach" in out
    assert "SWARMBUS_BROKER_HOSTS" in out
    default = _swarmbus(tmp_path / "state", "--port", "18998", "--print-config").stdout
    assert "listener 18998 127.0.0.1" in default  # mosquitto's config, as before
    refused = _swarmbus(tmp_path / "state", "--nodes", "3", "--print-config")
    assert refused.returncode == 2 and "--nodes needs --engine nats" in refused.stderr


def test_print_config_for_a_cluster(tmp_path: Path) -> None:
    proc = _swarmbus(tmp_path / "state", "--engine", "nats", "--nodes", "3", "--port", "14301", "--print-config")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for i, port in enumerate((14301, 14302, 14303), start=1):
        assert f"server_name: n{i}" in out and f'listen: "127.0.0.1:{port}"' in out
    assert out.count("stream_replicas: 3") == 3 and out.count("routes: [") == 3
    assert str(tmp_path / "state" / "broker" / "nats-14301" / "n1" / "jetstream") in out


@pytest.fixture
def nats_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    require_nats()
    state = Path(tmp_path_factory.mktemp("bn")) / "state"
    try:
        yield state
    finally:
        for pid in testing.keeper_pids(state):  # whatever the test did: no node outlives it
            testing.kill_group_of(pid)


def test_detached_cluster_serves_a_daemon_then_stops(nats_state: Path) -> None:
    port = _free_ports(3)
    started = _swarmbus(nats_state, "--engine", "nats", "--nodes", "3", "--port", str(port), "--detach")
    assert started.returncode == 0, started.stdout + started.stderr
    hosts = f"127.0.0.1:{port},127.0.0.1:{port + 1},127.0.0.1:{port + 2}"
    assert f"SWARMBUS_BROKER_HOSTS={hosts}" in started.stdout
    assert len(testing.keeper_pids(nats_state)) == 3

    status = _swarmbus(nats_state, "--engine", "nats", "--port", str(port), "--status", "--json")
    info = json.loads(status.stdout)
    assert status.returncode == 0 and info["running"] and info["hosts"] == hosts.split(","), info
    assert all(node["answers_mqtt"] and node["meta_leader"] for node in info["nodes"]), info

    again = _swarmbus(nats_state, "--engine", "nats", "--nodes", "3", "--port", str(port), "--detach")
    assert again.returncode == 0 and "already runs" in again.stdout, again.stdout + again.stderr
    other = _swarmbus(nats_state, "--engine", "nats", "--nodes", "1", "--port", str(port), "--detach")
    assert other.returncode == 2 and "made for 3 node(s)" in other.stderr, other.stderr

    # a daemon given the printed hosts connects (MQTT 3.1.1, by itself)
    root = nats_state.parent
    env = testing.isolated_env(root, f"mqtt://127.0.0.1:{port}", SWARMBUS_BROKER_HOSTS=hosts)
    (root / "config.toml").write_text("")
    daemon = testing.start_daemon(env, "dora", log_path=root / "dora.log")
    try:
        status = testing.wait_daemon_connected(env, "dora", daemon, 60, log_path=root / "dora.log")
        assert status["protocol"] == "3.1.1" and len(status["brokers"]) == 3
    finally:
        testing.stop_daemon(daemon)

    stopped = _swarmbus(nats_state, "--engine", "nats", "--port", str(port), "--stop")
    assert stopped.returncode == 0 and "stopped NATS" in stopped.stdout, stopped.stdout + stopped.stderr
    assert testing.keeper_pids(nats_state) == set()
    assert not any(mqtt_answers("127.0.0.1", port + i, timeout=1) for i in range(3))
    assert _swarmbus(nats_state, "--engine", "nats", "--port", str(port), "--status").returncode == 1


def test_foreground_single_node_stops_on_sigterm(nats_state: Path) -> None:
    port = _free_ports(1)
    env = {k: v for k, v in os.environ.items() if k in testing.INHERITED}
    env["SWARMBUS_STATE_DIR"] = str(nats_state)
    proc = subprocess.Popen([sys.executable, "-m", "swarmbus", "broker", "--engine", "nats", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for(lambda: proc.poll() is not None or mqtt_answers("127.0.0.1", port, timeout=1), 60,
                 "the foreground NATS to answer MQTT")
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        said = proc.stderr.read().decode() if proc.stderr else ""
        assert f"--broker mqtt://127.0.0.1:{port}" in said, said
        assert not mqtt_answers("127.0.0.1", port, timeout=1)  # its node stopped with it
    finally:
        if proc.poll() is None:
            testing.kill_process_group(proc.pid)
            proc.wait(10)
