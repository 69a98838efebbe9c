"""First run anywhere (issue 7): what a new user trips over, each fixed and checked here.

- ``swarmbus broker`` on a taken port says what is there and what to do (exit 2), instead of
  exiting 1 with the reason only in mosquitto's log;
- a refused broker connection fails at once (exit 2, naming host:port) instead of being retried
  in silence until ``broker.connect_timeout``; a slow one is announced once on stderr;
- a daemon uses a broker that comes back within a few seconds (backoff capped at 5 s);
- ``send`` with broker flags naming another broker than its daemon's sends there directly;
- ``start --invoke`` with a program that cannot run is refused (exit 2), and doctor says so;
- doctor's drop check says why it has no drop counter.

Every broker here is a private mosquitto on a free port; the machine's own services are never
used.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from brokers import BrokerFactory, make_acl_file
from conftest import SwarmEnv, wait_for
from swarmbus import testing
from swarmbus.api import DoctorContext
from swarmbus.default_plugins.doctor import DROPPED_TOPIC, check_dropped
from swarmbus.dev_broker import RunningBroker, free_port
from swarmbus.settings import Settings


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP socket listening on a free loopback port that never says a word (not MQTT)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield sock
    finally:
        sock.close()


def _env(tmp_path: Path, broker_url: str, **extra: str) -> dict[str, str]:
    (tmp_path / "config.toml").write_text("# test config\n")
    # the priority plugin (part of the default install) runs --invoke and checks its program in doctor
    return testing.isolated_env(tmp_path, broker_url, plugins="priority", **extra)


def _timed(env: dict[str, str], *args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = testing.run_cli(env, *args, timeout=timeout)
    return proc, time.monotonic() - started


# -- 1. swarmbus broker on a taken port ----------------------------------------------------------------------
def test_broker_on_a_port_another_program_holds_says_so(tmp_path: Path, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    proc = testing.run_cli(_env(tmp_path, "mqtt://127.0.0.1:1"), "broker", "--port", str(port),
                           "--state-dir", str(tmp_path / "b"), timeout=30)
    assert proc.returncode == 2, proc
    assert f"port {port} is taken: another program listens on 127.0.0.1:{port}" in proc.stderr
    assert "swarmbus broker --port " in proc.stderr  # what to do instead
    assert "Traceback" not in proc.stderr


def test_broker_on_a_port_a_broker_holds_says_to_use_it(tmp_path: Path, broker: RunningBroker) -> None:
    proc = testing.run_cli(_env(tmp_path, "mqtt://127.0.0.1:1"), "broker", "--port", str(broker.port),
                           "--state-dir", str(tmp_path / "b"), timeout=30)
    assert proc.returncode == 2, proc
    assert f"an MQTT broker already listens on 127.0.0.1:{broker.port}" in proc.stderr
    assert f"--broker mqtt://127.0.0.1:{broker.port}" in proc.stderr
    assert broker.running


# -- 2. an unreachable broker ------------------------------------------------------------------------------------
REFUSED_BOUND = 3.0
"""Seconds a command may take to report a refused connection (it used to retry for 5 s)."""


@pytest.mark.parametrize("args", [
    ("list",),
    ("send", "--agent-id", "alice", "--to", "bob", "--subject", "s", "--body", "b", "--direct"),
    ("send", "--agent-id", "alice", "--to", "bob", "--subject", "s", "--body", "b"),
    ("read", "--agent-id", "alice"),
], ids=["list", "send-direct", "send-no-daemon", "read-no-daemon"])
def test_a_refused_connection_fails_at_once_naming_host_and_port(tmp_path: Path, args: tuple[str, ...]) -> None:
    closed = free_port()
    proc, took = _timed(_env(tmp_path, f"mqtt://127.0.0.1:{closed}"), *args)
    assert proc.returncode == 2, proc
    assert took < REFUSED_BOUND, f"{' '.join(args)} took {took:.2f}s to report a refused connection"
    assert f"nothing is listening on 127.0.0.1:{closed} (connection refused)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_doctor_reports_a_refused_connection_at_once(tmp_path: Path) -> None:
    closed = free_port()
    proc, took = _timed(_env(tmp_path, f"mqtt://127.0.0.1:{closed}"), "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert proc.returncode == 1
    assert took < REFUSED_BOUND + 1, f"doctor took {took:.2f}s"
    assert f"127.0.0.1:{closed} (connection refused)" in checks["broker"]["summary"]


@pytest.mark.parametrize("args", [
    ("send", "--agent-id", "alice", "--to", "bob", "--subject", "s", "--body", "b", "--direct"),
    ("list",),
], ids=["send-direct", "list"])
def test_waiting_for_a_silent_broker_is_announced_once(tmp_path: Path, listener: socket.socket,
                                                       args: tuple[str, ...]) -> None:
    """A broker that accepts the TCP connection but never answers: waiting is right (it may be
    slow), and stderr says what for, once."""
    port = listener.getsockname()[1]
    env = _env(tmp_path, f"mqtt://127.0.0.1:{port}", SWARMBUS_BROKER_CONNECT_TIMEOUT="2.5")
    proc, took = _timed(env, *args)
    assert proc.returncode == 2, proc
    notice = f"swarmbus: waiting for the broker at 127.0.0.1:{port} (giving up after 2.5s)..."
    assert proc.stderr.count(notice) == 1, proc.stderr
    assert proc.stderr.index(notice) < proc.stderr.index("error:")
    assert took >= 2.5


# -- 3. reconnecting after a broker restart ---------------------------------------------------------------------
RETRY_RE = re.compile(r"cannot connect to \S+ \(.*\); retrying in (\d+(?:\.\d+)?)s")
BACKOFF_CAP = 5.0


def test_daemon_is_back_within_seconds_after_a_long_broker_outage(tmp_path: Path, broker: RunningBroker) -> None:
    """With the default backoff: stop the broker until the daemon has failed to reconnect six
    times (its backoff has grown to its cap), start it again on the same port, and the daemon is
    connected again within a few seconds. (connect_timeout 0.5 s only keeps the presence check
    before each attempt short, whatever the code does with a refused connection.)"""
    env = _env(tmp_path, broker.url, SWARMBUS_BROKER_CONNECT_TIMEOUT="0.5")
    log_path = tmp_path / "daemon.log"
    proc = testing.start_daemon(env, "phoenix", log_path=log_path)
    try:
        testing.wait_daemon_connected(env, "phoenix", proc, 20, log_path=log_path)
        broker.stop()
        wait_for(lambda: not (testing.agent_status("phoenix", env["SWARMBUS_STATE_DIR"]) or {}).get("connected"),
                 15, what="the daemon to notice the broker is gone")

        def retries() -> list[float]:
            return [float(m) for m in RETRY_RE.findall(log_path.read_text(errors="replace"))]

        wait_for(lambda: len(retries()) >= 6, 60, what="six failed reconnect attempts", interval=0.1)
        delays = retries()
        assert max(delays) <= BACKOFF_CAP, f"backoff grew past {BACKOFF_CAP}s: {delays}"

        broker.restart()
        back_at = time.monotonic()
        testing.wait_daemon_connected(env, "phoenix", proc, 30, log_path=log_path)
        took = time.monotonic() - back_at
        print(f"reconnected {took:.2f}s after the broker came back; logged retry delays {delays}")
        assert took <= BACKOFF_CAP + 2, f"reconnected {took:.1f}s after the broker came back (delays {delays})"
    finally:
        testing.stop_daemon(proc)


# -- 4. send --broker while the sender's daemon runs ------------------------------------------------------------
class _Subscriber:
    """A paho client subscribed to ``topic``; collects JSON payloads."""

    def __init__(self, broker: RunningBroker, topic: str) -> None:
        self.payloads: list[dict[str, Any]] = []
        ready = threading.Event()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"friction-{secrets.token_hex(4)}", protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(topic, 1)
        self.client.on_subscribe = lambda c, u, m, r, p: ready.set()
        self.client.on_message = lambda c, u, msg: self.payloads.append(json.loads(msg.payload))
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        wait_for(ready.is_set, 10, what="the subscriber's SUBACK")

    def subjects(self) -> list[str]:
        return [str(p.get("subject")) for p in self.payloads]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_send_with_another_broker_than_the_daemons_goes_there(swarm: SwarmEnv, broker_factory: BrokerFactory) -> None:
    other = broker_factory()
    swarm.start_daemon("alice")
    on_other = _Subscriber(other, "agents/bob/inbox")
    on_daemons = _Subscriber(swarm.broker, "agents/bob/inbox")  # type: ignore[attr-defined]
    try:
        proc = swarm.cli("send", "--agent-id", "alice", "--to", "bob", "--subject", "to other", "--body", "b",
                         "--broker", other.url, check=True)
        assert f"sending directly to {other.url}" in proc.stderr
        assert "waiting for the broker" not in proc.stderr  # a quick connect is not announced
        wait_for(lambda: "to other" in on_other.subjects(), 10, what="the message on the named broker")

        # the daemon's own broker, named explicitly: through the daemon, without a note
        same = swarm.cli("send", "--agent-id", "alice", "--to", "bob", "--subject", "to same", "--body", "b",
                         "--port", str(swarm.broker.port), "--json", check=True)  # type: ignore[attr-defined]
        assert "sending directly" not in same.stderr  # (bob never ran: the "never been seen" note is expected)
        wait_for(lambda: "to same" in on_daemons.subjects(), 10, what="the message on the daemon's broker")
        # (the daemon republishes "to same" until bob stores it: bob never runs here)
        assert set(on_daemons.subjects()) == {"to same"} and on_other.subjects() == ["to other"]
    finally:
        on_other.close()
        on_daemons.close()


def test_send_help_says_what_broker_flags_do_with_a_daemon(tmp_path: Path) -> None:
    out = testing.run_cli(_env(tmp_path, "mqtt://127.0.0.1:1"), "send", "--help").stdout
    assert "another broker than the daemon's send" in " ".join(out.split())


# -- 5. start --invoke with a program that cannot run ----------------------------------------------------------------
def _start_exit(env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    """``swarmbus start FLAGS``, which must exit by itself (a daemon still running is killed, and fails)."""
    proc = subprocess.Popen([sys.executable, "-m", "swarmbus", "start", *flags], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        testing.kill_process_group(proc.pid)
        out, err = proc.communicate()
        pytest.fail(f"swarmbus start {' '.join(flags)} kept running:\n{out}\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_start_refuses_a_wake_program_that_is_not_on_path(tmp_path: Path) -> None:
    missing = f"no-such-wake-{secrets.token_hex(4)}"
    proc = _start_exit(_env(tmp_path, f"mqtt://127.0.0.1:{free_port()}"), "--agent-id", "waker",
                       "--invoke", f"{missing} --flag")
    assert proc.returncode == 2, proc
    assert f"'{missing}' is not found on PATH" in proc.stderr and "hint:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_start_refuses_a_wake_program_that_is_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "wake.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    proc = _start_exit(_env(tmp_path, f"mqtt://127.0.0.1:{free_port()}"), "--agent-id", "waker",
                       "--invoke", str(script))
    assert proc.returncode == 2, proc
    assert f"{script} is not executable" in proc.stderr


def test_doctor_fails_when_the_wake_program_is_missing(tmp_path: Path, broker: RunningBroker) -> None:
    missing = f"no-such-wake-{secrets.token_hex(4)}"
    env = _env(tmp_path, broker.url, SWARMBUS_INVOKE=missing)
    checks = {c["name"]: c for c in json.loads(testing.run_cli(env, "doctor", "--json").stdout)["checks"]}
    assert checks["wake-command"]["status"] == "fail", checks.get("wake-command")
    assert missing in checks["wake-command"]["summary"] and checks["wake-command"]["fix"]

    env = _env(tmp_path, broker.url, SWARMBUS_INVOKE=f"{sys.executable} -c pass")
    checks = {c["name"]: c for c in json.loads(testing.run_cli(env, "doctor", "--json").stdout)["checks"]}
    assert checks["wake-command"]["status"] == "ok", checks["wake-command"]


# -- 6. doctor's drop check ------------------------------------------------------------------------------------------
def _drops(tmp_path: Path, broker: RunningBroker) -> dict[str, Any]:
    proc = testing.run_cli(_env(tmp_path, broker.url), "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["broker"]["status"] == "ok", checks["broker"]
    return checks["broker-drops"]  # type: ignore[no-any-return]


def test_drop_check_on_a_broker_without_sys_says_none_arrived(tmp_path: Path, broker_factory: BrokerFactory) -> None:
    assert _drops(tmp_path, broker_factory())["status"] == "ok"  # the dev broker publishes the counter
    drops = _drops(tmp_path, broker_factory(extra_lines=("sys_interval 0",)))
    assert drops["status"] == "skip"
    assert drops["summary"].startswith("no $SYS topics received within 1.5s"), drops


def test_drop_check_when_only_the_counter_is_missing_says_so(tmp_path: Path, broker_factory: BrokerFactory) -> None:
    acl = make_acl_file(tmp_path / "acl", "topic read $SYS/broker/version\n")
    drops = _drops(tmp_path, broker_factory(acl_file=acl))
    assert drops["status"] == "skip"
    assert drops["summary"].startswith(f"the broker does not publish {DROPPED_TOPIC} to this client"), drops


def test_drop_check_on_a_refused_subscription_says_no_permission() -> None:
    probe = {"ok": True, "protocol": "5", "ms": 1.0, "dropped": None, "sys_refused": True, "other_sys": False}
    result = check_dropped(DoctorContext(settings=Settings(), agent_id=None, cache={"probe": probe}))
    assert result.status == "skip"
    assert result.summary.startswith(f"no permission to read {DROPPED_TOPIC}")
