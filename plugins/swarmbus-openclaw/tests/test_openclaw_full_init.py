"""``swarmbus init --host-type openclaw`` / ``swarmbus uninit`` end to end, as a user runs them.

A temporary HOME whose ``~/.openclaw/openclaw.json`` gives the fake gateway's port and token
(``gateway.port``, ``gateway.auth.token``), a private mosquitto on a free port, and the core's
fake ``systemctl`` (:func:`swarmbus.testing.install_fake_systemctl`) first on PATH, which records
its calls and really runs the unit's ``ExecStart=`` detached: init installs a daemon that
actually runs, the gateway step completes the handshake, a second init changes nothing, a
priority=high message reaches the gateway as an ``agent`` request, and uninit removes
everything init wrote.

Self-contained: the core's ``tests/conftest.py`` is not loaded in the ``plugin-openclaw`` tox
env. Every process started (the daemons the fake systemctl ran, the broker; the fake gateway is
the ``gateway`` fixture's) is stopped at teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from openclaw_fake_gateway import FakeGateway
from openclaw_helpers import TOKEN

from swarmbus import AgentPaths, testing
from swarmbus.broker import BrokerConfig, find_mosquitto, free_port, start_broker  # internal: fine in tests
from swarmbus.control import daemon_status  # internal: fine in tests
from swarmbus_openclaw.setup import render_skill, swarmbus_command

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")

AGENT = "ocagent"
UNIT = f"swarmbus-{AGENT}.service"


def alive(pid: int) -> bool:
    """True unless the process is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@dataclass
class InitEnv:
    home: Path
    root: Path
    env: dict[str, str]
    broker_url: str
    pids: set[int] = field(default_factory=set)

    @property
    def unit_path(self) -> Path:
        return self.home / ".config" / "systemd" / "user" / UNIT

    @property
    def config_path(self) -> Path:
        return Path(self.env["SWARMBUS_CONFIG"])

    @property
    def state_dir(self) -> Path:
        return Path(self.env["SWARMBUS_STATE_DIR"])

    @property
    def manifest(self) -> Path:
        return self.state_dir / "agents" / AGENT / "init.json"

    @property
    def skill(self) -> Path:
        return self.home / ".openclaw" / "skills" / "swarmbus" / "SKILL.md"

    def swarmbus(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "swarmbus", *args], capture_output=True, text=True,
                              timeout=timeout, env=self.env)
        self.daemon_pid()  # remember every daemon the fake systemctl started, for the teardown
        return proc

    def init(self) -> subprocess.CompletedProcess[str]:
        return self.swarmbus("init", "--agent-id", AGENT, "--host-type", "openclaw", "--broker", self.broker_url)

    def systemctl_calls(self) -> list[list[str]]:
        log = self.root / "systemctl-calls.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def mutating_calls(self) -> list[list[str]]:
        return [c for c in self.systemctl_calls() if not {"is-enabled", "is-active"} & set(c)]

    def daemon_pid(self) -> int | None:
        path = self.root / "systemctl-state.json"
        pid = (json.loads(path.read_text()) if path.exists() else {}).get(UNIT, {}).get("pid")
        if pid:
            self.pids.add(int(pid))
        return int(pid) if pid else None

    def status(self) -> dict[str, Any] | None:
        return daemon_status(AgentPaths.for_agent(AGENT, self.state_dir).socket)

    def daemon_log(self) -> str:
        path = self.root / f"{UNIT}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def tree(self) -> dict[str, bytes]:
        """Every file under HOME except the daemon's state (its store changes as it runs)."""
        return {str(p.relative_to(self.home)): p.read_bytes() for p in sorted(self.home.rglob("*"))
                if p.is_file() and not p.is_relative_to(self.state_dir)}

    def kill_daemons(self) -> None:
        self.daemon_pid()
        for pid in self.pids:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)


def out(proc: subprocess.CompletedProcess[str]) -> str:
    text = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stdout + proc.stderr, text
    return text


@pytest.fixture
def oc_env(tmp_path_factory: pytest.TempPathFactory, isolated_home: Path, gateway: FakeGateway) -> Iterator[InitEnv]:
    root = Path(tmp_path_factory.mktemp("ocinit"))
    home = isolated_home
    openclaw_json = home / ".openclaw" / "openclaw.json"
    openclaw_json.parent.mkdir(parents=True)
    openclaw_json.write_text(json.dumps({"gateway": {"mode": "local", "port": gateway.port, "bind": "loopback",
                                                     "auth": {"mode": "token", "token": TOKEN}}}, indent=2))
    testing.install_fake_systemctl(root / "bin", sys.executable, root / "systemctl-calls.jsonl",
                                   root / "systemctl-state.json")
    env = {k: v for k, v in os.environ.items() if k in ("LANG", "LC_ALL", "TMPDIR")}
    env.update(
        PATH=os.pathsep.join([str(root / "bin"), os.environ.get("PATH", "/usr/bin:/bin")]),
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        SWARMBUS_STATE_DIR=str(home / "state"),
        SWARMBUS_CONFIG=str(home / ".config" / "swarmbus" / "config.toml"),
        SWARMBUS_LOAD_PLUGINS="openclaw",
        PYTHONUNBUFFERED="1",
    )
    broker = start_broker(BrokerConfig(state_dir=root / "broker", port=free_port()))
    ienv = InitEnv(home, root, env, broker.url)
    try:
        yield ienv
    finally:
        ienv.kill_daemons()  # whatever the test did, no daemon the fake systemctl started outlives it
        broker.stop()  # the fake gateway is stopped by its fixture, after this one


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
    assert pid and alive(pid), oc_env.daemon_log()
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
    assert [c for c in oc_env.systemctl_calls()[ncalls:] if not {"is-enabled", "is-active"} & set(c)] == [], text
    assert oc_env.tree() == tree
    assert oc_env.daemon_pid() == pid and alive(pid)
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
    assert not alive(pid) and oc_env.status() is None
    assert not oc_env.skill.exists() and not oc_env.unit_path.exists() and not oc_env.manifest.exists()
    assert not oc_env.config_path.exists()  # init created it, with only its own keys
    assert set(oc_env.tree()) == {".openclaw/openclaw.json"}  # OpenClaw's own config is left alone
    proc = oc_env.swarmbus("uninit", "--agent-id", AGENT)
    assert proc.returncode == 0 and "nothing to undo" in proc.stdout, out(proc)
