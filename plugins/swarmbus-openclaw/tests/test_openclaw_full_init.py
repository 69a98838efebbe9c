"""``swarmbus init --host-type openclaw`` / ``swarmbus uninit`` end to end, as a user runs them.

A temporary HOME whose ``~/.openclaw/openclaw.json`` gives the fake gateway's port and token
(``gateway.port``, ``gateway.auth.token``), a private mosquitto on a free port, and the core's
fake ``systemctl`` (installed by :class:`swarmbus.testing.InitHome`) first on PATH, which records
its calls and really runs the unit's ``ExecStart=`` detached: init installs a daemon that
actually runs, the gateway step completes the handshake, a second init changes nothing, a
priority=high message reaches the gateway as an ``agent`` request, and uninit removes
everything init wrote.

Self-contained: the core's ``tests/conftest.py`` is not loaded in the ``plugin-openclaw`` tox
env. Every process started (the daemons the fake systemctl ran, the broker; the fake gateway is
the ``gateway`` fixture's) is stopped at teardown.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from openclaw_fake_gateway import FakeGateway
from openclaw_helpers import TOKEN

from swarmbus import testing
from swarmbus.testing import BrokerConfig, find_mosquitto, free_port, pid_alive, start_broker
from swarmbus.testing import describe_run as out
from swarmbus_openclaw.setup import render_skill, swarmbus_command

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")

AGENT = "ocagent"
UNIT = f"swarmbus-{AGENT}.service"


class InitEnv(testing.InitHome):
    """The core's init harness, with the OpenClaw skill init writes."""

    def __init__(self, home: Path, root: Path, broker_url: str, *, bus: bool = True) -> None:
        super().__init__(home, root, AGENT, plugins="openclaw", bus=bus)
        self.broker_url = broker_url

    @property
    def skill(self) -> Path:
        return self.home / ".openclaw" / "skills" / "swarmbus" / "SKILL.md"

    def init(self) -> subprocess.CompletedProcess[str]:
        return self.swarmbus("init", "--agent-id", AGENT, "--host-type", "openclaw", "--broker", self.broker_url)


def _oc_env(tmp_path_factory: pytest.TempPathFactory, isolated_home: Path, gateway: FakeGateway, *,
            bus: bool) -> Iterator[InitEnv]:
    root = Path(tmp_path_factory.mktemp("ocinit"))
    home = isolated_home
    openclaw_json = home / ".openclaw" / "openclaw.json"
    openclaw_json.parent.mkdir(parents=True)
    openclaw_json.write_text(json.dumps({"gateway": {"mode": "local", "port": gateway.port, "bind": "loopback",
                                                     "auth": {"mode": "token", "token": TOKEN}}}, indent=2))
    broker = start_broker(BrokerConfig(state_dir=root / "broker", port=free_port()))
    ienv = InitEnv(home, root, broker.url, bus=bus)
    try:
        yield ienv
    finally:
        ienv.kill_daemons()  # whatever the test did, no daemon the fake systemctl started outlives it
        broker.stop()  # the fake gateway is stopped by its fixture, after this one


@pytest.fixture
def oc_env(tmp_path_factory: pytest.TempPathFactory, isolated_home: Path, gateway: FakeGateway) -> Iterator[InitEnv]:
    yield from _oc_env(tmp_path_factory, isolated_home, gateway, bus=True)


@pytest.fixture
def oc_nobus_env(tmp_path_factory: pytest.TempPathFactory, isolated_home: Path,
                 gateway: FakeGateway) -> Iterator[InitEnv]:
    """No user bus: the fake systemctl fails like the real one in a container, root shell or CI."""
    yield from _oc_env(tmp_path_factory, isolated_home, gateway, bus=False)


def test_init_second_init_wake_and_uninit(oc_env: InitEnv, gateway: FakeGateway) -> None:
    # -- first init: the skill, the unit, the gateway handshake, a running daemon ---------------
    proc = oc_env.init()
    text = out(proc)
    assert proc.returncode == 0, text
    assert f"{AGENT} is set up: its daemon runs as a user service and doctor passes" in proc.stdout, text
    assert "none failed" in proc.stdout, text
    assert TOKEN not in proc.stdout + proc.stderr

    command, on_path = swarmbus_command()
    assert oc_env.skill.read_text() == render_skill(AGENT, command=command, gate_on_bin=on_path)
    assert oc_env.skill.stat().st_mode & 0o777 == 0o644

    # the gateway step reported the handshake, with the port and token from openclaw.json
    lines = proc.stdout.splitlines()
    step = lines.index("[=] openclaw: gateway: unchanged")
    report = lines[step + 1]
    openclaw_json = oc_env.home / ".openclaw" / "openclaw.json"
    assert f"gateway {gateway.url} (from gateway.port in {openclaw_json})" in report, text
    assert "protocol 4, operator.write granted" in report, text
    assert f"token from gateway.auth.token in {openclaw_json}" in report, text
    # the fake gateway saw it: protocol 4..4, the token, operator.write asked for (and granted)
    connect = gateway.connects[0]
    assert (connect["minProtocol"], connect["maxProtocol"]) == (4, 4)
    assert connect["auth"] == {"token": TOKEN} and "operator.write" in connect["scopes"]
    assert "device" not in connect  # loopback: no device identity

    unit = oc_env.unit_path.read_text().splitlines()
    exec_start = next(line for line in unit if line.startswith("ExecStart="))
    assert shlex.split(exec_start.removeprefix("ExecStart=")) == [sys.executable, "-m", "swarmbus", "start",
                                                                  "--agent-id", AGENT]
    environment = dict(shlex.split(line.removeprefix("Environment="))[0].split("=", 1)
                       for line in unit if line.startswith("Environment="))
    assert environment["SWARMBUS_HOST_TYPE"] == "openclaw"
    assert environment["SWARMBUS_CONFIG"] == str(oc_env.config_path)
    assert environment["SWARMBUS_STATE_DIR"] == str(oc_env.state_dir)
    assert TOKEN not in oc_env.unit_path.read_text() and TOKEN not in oc_env.config_path.read_text()

    manifest = json.loads(oc_env.manifest.read_text())
    assert manifest["agent_id"] == AGENT and manifest["host_type"] == "openclaw"
    assert {"kind": "command", "argv": ["systemctl", "--user", "disable", "--now", UNIT]} in manifest["undo"]
    assert {(r["kind"], r.get("path")) for r in manifest["undo"] if r["kind"] != "command"} == {
        ("toml", str(oc_env.config_path)), ("file", str(oc_env.unit_path)), ("file", str(oc_env.skill))}
    assert set(oc_env.tree()) == {".openclaw/openclaw.json", ".openclaw/skills/swarmbus/SKILL.md",
                                  ".config/swarmbus/config.toml", ".config/systemd/user/" + UNIT}

    assert oc_env.mutating_calls() == [["--user", "daemon-reload"], ["--user", "enable", UNIT],
                                       ["--user", "restart", UNIT]]
    pid = oc_env.daemon_pid()
    assert pid and pid_alive(pid), oc_env.daemon_log()
    status = oc_env.status() or {}  # doctor (inside init) waited for it to connect
    assert status.get("connected") and status["pid"] == pid, (status, oc_env.daemon_log())

    # -- second init: nothing to change, no mutating call, the same daemon --------------------
    tree = oc_env.tree()
    ncalls = len(oc_env.systemctl_calls())
    nconnects = len(gateway.connects)
    proc = oc_env.init()
    text = out(proc)
    assert proc.returncode == 0, text
    assert f"nothing to change: {AGENT} was already set up, and doctor passes" in proc.stdout, text
    assert "is set up:" not in proc.stdout, text
    assert oc_env.mutating_calls(ncalls) == [], text
    assert oc_env.tree() == tree
    assert oc_env.daemon_pid() == pid and pid_alive(pid)
    assert len(gateway.connects) > nconnects  # the gateway was checked again

    # -- a priority=high message wakes the agent through the gateway ----------------------------
    body = f"MARKER-OC {time.time_ns()}"
    send = oc_env.swarmbus("send", "--agent-id", "peer", "--to", AGENT, "--priority", "high",
                           "--subject", "build", "--body", body, "--json")
    assert send.returncode == 0, out(send)
    try:
        params = gateway.wait_for(lambda g: next((p for p in g.agent_params() if body in p.get("message", "")), None),
                                  timeout=30)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\ndaemon log:\n{oc_env.daemon_log()}") from None
    assert params["idempotencyKey"] in send.stdout  # the swarmbus message id
    assert params["sessionKey"] == "agent:main:swarmbus-inbox" and params["label"] == "swarmbus: build"
    assert "UNTRUSTED DATA" in params["message"] and "from: peer" in params["message"]

    # -- uninit: the skill, the unit, the config keys and the manifest are gone ----------------
    ncalls = len(oc_env.systemctl_calls())
    proc = oc_env.swarmbus("uninit", "--agent-id", AGENT)
    text = out(proc)
    assert proc.returncode == 0, text
    assert f"{AGENT}: what init wrote has been removed" in proc.stdout, text
    assert oc_env.systemctl_calls()[ncalls:] == [["--user", "disable", "--now", UNIT]]
    assert not pid_alive(pid) and oc_env.status() is None
    assert not oc_env.skill.exists() and not oc_env.unit_path.exists() and not oc_env.manifest.exists()
    assert not oc_env.config_path.exists()  # init created it, with only its own keys
    assert set(oc_env.tree()) == {".openclaw/openclaw.json"}  # OpenClaw's own config is left alone
    proc = oc_env.swarmbus("uninit", "--agent-id", AGENT)
    assert proc.returncode == 0 and "nothing to undo" in proc.stdout, out(proc)


USER_CONFIG = """\
# the OpenClaw agent on this box -- keep this comment
log_level = "warning"
"""


def test_init_without_a_user_bus_runs_the_daemon_detached(oc_nobus_env: InitEnv, gateway: FakeGateway) -> None:
    env = oc_nobus_env
    proc, pid = env.init_detached(USER_CONFIG)
    text = out(proc)
    assert "@reboot" in proc.stdout, text
    assert "none failed" in proc.stdout and TOKEN not in proc.stdout + proc.stderr, text
    status = env.status() or {}
    assert status.get("pid") == pid and status["supervisor"] == "detached" and status.get("connected"), status
    assert env.skill.exists() and not env.unit_path.exists()
    config = env.config_path.read_text()
    assert config.startswith(USER_CONFIG) and 'host_type = "openclaw"' in config and TOKEN not in config

    tree = env.tree()
    proc = env.init()
    assert proc.returncode == 0 and "nothing to change" in proc.stdout, out(proc)
    assert env.tree() == tree and env.detached_pid() == pid and env.mutating_calls() == []

    # a message wakes OpenClaw through the detached daemon, which read host_type from the config file
    body = f"MARKER-OC-DETACHED {time.time_ns()}"
    send = env.swarmbus("send", "--agent-id", "peer", "--to", AGENT, "--priority", "high", "--subject", "s",
                        "--body", body)
    assert send.returncode == 0, out(send)
    gateway.wait_for(lambda g: next((p for p in g.agent_params() if body in p.get("message", "")), None), timeout=30)

    proc = env.swarmbus("uninit", "--agent-id", AGENT)
    text = out(proc)
    assert proc.returncode == 0 and f"{AGENT}: what init wrote has been removed" in proc.stdout, text
    assert not pid_alive(pid) and env.status() is None
    assert env.config_path.read_text() == USER_CONFIG
    assert set(env.tree()) == {".openclaw/openclaw.json", ".config/swarmbus/config.toml"}
