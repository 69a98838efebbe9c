"""``swarmbus swarm up|down|status`` as a user runs them: the nine-agent swarm of
docs/examples/swarm.toml on a private mosquitto, in tmux panes (a private TMUX_TMPDIR, so no real
tmux server is touched) and as detached daemons (PATH without tmux, as in containers and CI);
bad swarm files; unknown swarms. Every daemon, keeper and tmux server a test started is gone at
its end (asserted), and killed at teardown if the test failed."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, SwarmEnv, wait_for
from swarmbus import testing
from swarmbus.testing import describe_run as out
from swarmbus.testing import pid_alive

EXAMPLE = REPO / "docs" / "examples" / "swarm.toml"
NINE = ["task-manager", "code-review", "deployment", "testing", "security", "docs", "monitoring", "database",
        "api-gateway"]
SWARM = "opencto-dev"
TMUX = shutil.which("tmux")
needs_tmux = pytest.mark.skipif(TMUX is None, reason="tmux is not installed: only the detached path is tested")


class Run:
    """The swarm environment with a private TMUX_TMPDIR, in two flavours: with tmux on PATH, and
    with a PATH that has no tmux. Remembers every pid it saw; :meth:`cleanup` kills what is left."""

    def __init__(self, swarm: SwarmEnv) -> None:
        self.swarm = swarm
        tmux_dir = swarm.root / "tmux"
        tmux_dir.mkdir(mode=0o700)
        self.no_tmux_bin = swarm.root / "bin"  # an empty directory: the whole PATH of the no-tmux runs
        self.no_tmux_bin.mkdir()
        self.env = {**swarm.env, "TMUX_TMPDIR": str(tmux_dir)}
        self.pids: set[int] = set()
        self.sockets: set[str] = set()

    def cli(self, *args: str, tmux: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        extra = {**self.env, **(env or {})}
        if not tmux:
            extra["PATH"] = str(self.no_tmux_bin)
        proc = self.swarm.cli(*args, env=extra, timeout=120)
        self.remember(proc)
        return proc

    def up(self, file: Path, *flags: str, tmux: bool = True, env: dict[str, str] | None = None) -> dict[str, Any]:
        proc = self.cli("swarm", "up", str(file), "--json", *flags, tmux=tmux, env=env)
        assert proc.returncode == 0, out(proc)
        return json.loads(proc.stdout)

    def remember(self, proc: subprocess.CompletedProcess[str]) -> None:
        with contextlib.suppress(ValueError):
            data = json.loads(proc.stdout)
            for agent in data.get("agents", []) if isinstance(data, dict) else []:
                if isinstance(agent.get("pid"), int):
                    self.pids.add(agent["pid"])
            socket = ((data.get("tmux") or {}) if isinstance(data, dict) else {}).get("socket")
            if socket:
                self.sockets.add(socket)
                pid = self.tmux(socket, "display-message", "-p", "#{pid}").stdout.strip()
                if pid.isdigit():
                    self.pids.add(int(pid))
        self.pids |= testing.keeper_pids(self.swarm.state_dir)

    def tmux(self, socket: str, *args: str) -> subprocess.CompletedProcess[str]:
        assert TMUX is not None
        return subprocess.run([TMUX, "-S", socket, *args], capture_output=True, text=True, env=self.env, timeout=15)

    def presence(self) -> dict[str, dict[str, Any]]:
        proc = self.swarm.cli("list", "--all", "--json", "--swarm", SWARM)
        assert proc.returncode == 0, out(proc)
        return {r["agent"]: r for r in json.loads(proc.stdout)}

    def alive(self) -> set[int]:
        return {pid for pid in self.pids if pid_alive(pid)}

    def cleanup(self) -> None:
        for socket in self.sockets:
            if Path(socket).exists():
                self.tmux(socket, "kill-server")
        self.pids |= testing.keeper_pids(self.swarm.state_dir)
        for pid in self.alive():
            with contextlib.suppress(OSError):
                if b"swarmbus" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    testing.kill_group_of(pid)


@pytest.fixture
def run(swarm: SwarmEnv) -> Iterator[Run]:
    r = Run(swarm)
    yield r
    r.cleanup()


def _all_online(run: Run) -> dict[str, dict[str, Any]] | None:
    records = run.presence()
    ok = sorted(records) == sorted(NINE) and all(
        r["status"] == "online" and r["role"] == agent and r["swarm"] == SWARM for agent, r in records.items())
    return records if ok else None


def _down_and_check(run: Run, target: str, *, tmux: bool) -> None:
    """``swarm down TARGET``: exit 0, every agent stopped, no daemon, keeper or tmux server left,
    every presence record offline."""
    assert run.pids, "no pid was recorded"
    down = run.cli("swarm", "down", target, "--json", tmux=tmux)
    assert down.returncode == 0, out(down)
    data = json.loads(down.stdout)
    assert data["ok"] is True
    assert {a["agent_id"]: a["state"] for a in data["agents"]} == dict.fromkeys(NINE, "stopped")
    assert data["tmux_session_killed"] is tmux
    wait_for(lambda: not run.alive(), 10, f"every process of the swarm to be gone ({sorted(run.alive())} left)")
    assert testing.keeper_pids(run.swarm.state_dir) == set()
    for agent in NINE:
        assert run.swarm.status(agent) is None
    records = run.presence()
    assert sorted(records) == sorted(NINE)
    assert {a: r["status"] for a, r in records.items()} == dict.fromkeys(NINE, "offline")
    status = run.cli("swarm", "status", SWARM, "--json", tmux=tmux)
    assert status.returncode == 1, out(status)
    assert json.loads(status.stdout)["running"] == 0
    again = run.cli("swarm", "down", SWARM, tmux=tmux)  # nothing left to stop: fine
    assert again.returncode == 0, out(again)
    assert "0 stopped, 9 were not running" in again.stdout


@pytest.mark.broker
@needs_tmux
def test_nine_agents_in_tmux_come_up_idempotently_and_go_down(run: Run) -> None:
    data = run.up(EXAMPLE)
    agents = {a["agent_id"]: a for a in data["agents"]}
    assert list(agents) == NINE
    assert all(a["state"] == "started" and a["mode"] == "tmux" and a["pane"] for a in agents.values()), data
    socket = data["tmux"]["socket"]
    assert data["tmux"]["session"] == f"swarmbus-{SWARM}"
    assert socket == os.path.join(run.env["TMUX_TMPDIR"], f"tmux-{os.geteuid()}", f"swarmbus-{SWARM}")
    for agent_id, agent in agents.items():  # every daemon answers, and is the process its pane runs
        assert (run.swarm.status(agent_id) or {}).get("pid") == agent["pid"]
    panes = run.tmux(socket, "list-panes", "-s", "-t", f"=swarmbus-{SWARM}", "-F",
                     "#{pane_id} #{pane_title} #{pane_pid} #{pane_dead}").stdout.split("\n")
    panes = [line.split() for line in panes if line]
    assert sorted(title for _, title, _, _ in panes) == sorted(NINE)
    assert {title: (pane, int(pid)) for pane, title, pid, _ in panes} == {
        a: (agents[a]["pane"], agents[a]["pid"]) for a in NINE}
    windows = run.tmux(socket, "list-windows", "-t", f"=swarmbus-{SWARM}", "-F", "#{window_panes}").stdout.split()
    assert windows == ["9"]  # one 3 x 3 window, as the seed's grid
    wait_for(lambda: _all_online(run), 15, "all nine agents online with their role and swarm")
    record = Path(run.swarm.state_dir / "swarms" / f"{SWARM}.json")
    assert record.stat().st_mode & 0o777 == 0o600

    status = run.cli("swarm", "status", SWARM, "--json")
    assert status.returncode == 0, out(status)
    shown = json.loads(status.stdout)
    assert shown["running"] == 9 and shown["tmux"]["running"] is True
    assert {a["agent_id"]: (a["pid"], a["mode"]) for a in shown["agents"]} == {
        a: (agents[a]["pid"], "tmux") for a in NINE}
    assert all((run.swarm.status(a) or {}).get("supervisor") == "tmux" for a in NINE)  # as `swarmbus status` says
    said = run.cli("status", "--agent-id", "docs")
    assert "supervisor: tmux (a pane of `swarmbus swarm up`" in said.stdout, out(said)

    again = run.up(EXAMPLE)  # idempotent: nothing started, nothing touched
    assert {a["agent_id"]: (a["state"], a["pid"]) for a in again["agents"]} == {
        a: ("running", agents[a]["pid"]) for a in NINE}

    stop = run.cli("stop", "--agent-id", "docs")  # one exits: its pane stays, and up starts it there again
    assert stop.returncode == 0, out(stop)
    third = run.up(EXAMPLE)
    states = {a["agent_id"]: a for a in third["agents"]}
    assert states["docs"]["state"] == "started" and states["docs"]["pane"] == agents["docs"]["pane"]
    assert states["docs"]["pid"] != agents["docs"]["pid"]
    assert all(states[a]["state"] == "running" and states[a]["pid"] == agents[a]["pid"] for a in NINE if a != "docs")
    titles = run.tmux(socket, "list-panes", "-s", "-t", f"=swarmbus-{SWARM}", "-F", "#{pane_title}").stdout.split()
    assert sorted(titles) == sorted(NINE)

    _down_and_check(run, SWARM, tmux=True)
    assert run.tmux(socket, "has-session", "-t", f"=swarmbus-{SWARM}").returncode != 0


@pytest.mark.broker
def test_nine_agents_detached_without_tmux_come_up_idempotently_and_go_down(run: Run) -> None:
    data = run.up(EXAMPLE, tmux=False)
    agents = {a["agent_id"]: a for a in data["agents"]}
    assert list(agents) == NINE
    assert all(a["state"] == "started" and a["mode"] == "detached" for a in agents.values()), data
    assert data["tmux"] is None
    for agent_id, agent in agents.items():
        status = run.swarm.status(agent_id) or {}
        assert status.get("pid") == agent["pid"] and status.get("supervisor") == "detached"
        assert Path(agent["log"]).exists()
    assert len(testing.keeper_pids(run.swarm.state_dir)) == 9  # each under its keeper
    wait_for(lambda: _all_online(run), 15, "all nine agents online with their role and swarm")

    again = run.up(EXAMPLE, tmux=False)
    assert {a["agent_id"]: (a["state"], a["pid"]) for a in again["agents"]} == {
        a: ("running", agents[a]["pid"]) for a in NINE}

    stop = run.cli("stop", "--agent-id", "security", tmux=False)
    assert stop.returncode == 0, out(stop)
    text = run.cli("swarm", "up", str(EXAMPLE), tmux=False)  # the text report this time
    assert text.returncode == 0, out(text)
    assert "1 started, 8 already running, 0 failed (detached daemons)" in text.stdout
    assert "swarmbus swarm down opencto-dev" in text.stdout
    run.pids |= testing.keeper_pids(run.swarm.state_dir) | {(run.swarm.status("security") or {}).get("pid", 0)}

    status = run.cli("swarm", "status", str(EXAMPLE), tmux=False)
    assert status.returncode == 0, out(status)
    assert "9 of 9 running" in status.stdout

    _down_and_check(run, str(EXAMPLE), tmux=False)


@pytest.mark.broker
@pytest.mark.parametrize("tmux", [pytest.param(True, marks=needs_tmux), False], ids=["tmux", "detached"])
def test_a_daemon_that_does_not_come_up_is_named_with_its_last_lines(run: Run, tmux: bool) -> None:
    broken = run.swarm.state_dir / "agents" / "broken"
    broken.mkdir(parents=True, mode=0o700)
    (broken / "store.sqlite3").write_bytes(b"this is not a database\n" * 200)
    file = run.swarm.root / "pair.toml"
    file.write_text('name = "pair"\n\n[[agents]]\nid = "fine"\nrole = "worker"\n\n[[agents]]\nid = "broken"\n')
    proc = run.cli("swarm", "up", str(file), "--json", "--timeout", "30", tmux=tmux)
    assert proc.returncode == 1, out(proc)
    data = json.loads(proc.stdout)
    agents = {a["agent_id"]: a for a in data["agents"]}
    assert data["ok"] is False
    assert agents["fine"]["state"] == "started"
    assert agents["broken"]["state"] == "failed"
    # tmux does not always learn a pane's exit status (it may see the terminal close first): then "?"
    reason = agents["broken"]["reason"]
    assert "exited with status 1" in reason or (tmux and reason == "its daemon exited with status ?"), reason
    assert any("not a database" in line for line in agents["broken"]["tail"]), agents["broken"]
    down = run.cli("swarm", "down", "pair", tmux=tmux)
    assert down.returncode == 0, out(down)
    wait_for(lambda: not run.alive(), 10, "every process of the swarm to be gone")


FAKE_HOST_PLUGIN = '''\
from swarmbus import HostType, hookimpl


@hookimpl
def swarmbus_host_types(register):
    register(HostType("fakehost", "a host type for tests"))
'''


def fake_host_site(root: Path) -> dict[str, str]:
    """The environment that installs a ``fakehost`` host-type plugin (PYTHONPATH and a dist-info
    with its entry point): the core env has no host plugin of its own."""
    site = root / "fakehost-site"
    site.mkdir(exist_ok=True)
    (site / "fakehost_plugin.py").write_text(FAKE_HOST_PLUGIN)
    dist = site / "swarmbus_fakehost-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: swarmbus-fakehost\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[swarmbus]\nfakehost = fakehost_plugin\n")
    return {"PYTHONPATH": str(site), "SWARMBUS_LOAD_PLUGINS": "priority,fakehost"}


@pytest.mark.broker
@pytest.mark.parametrize("tmux", [pytest.param(True, marks=needs_tmux), False], ids=["tmux", "detached"])
def test_host_type_and_env_reach_the_daemon_and_the_users_own_role_does_not(run: Run, tmux: bool) -> None:
    (run.swarm.root / "config.toml").write_text('role = "my-own-role"\ncapabilities = ["mine"]\n')
    file = run.swarm.root / "one.toml"
    file.write_text('name = "solo"\n[[agents]]\nid = "cx"\nhost_type = "fakehost"\n'
                    'env = { SWARMBUS_HANDLER_TIMEOUT = "123", SB_MARK = "two words; $(not run)" }\n')
    plugin = fake_host_site(run.swarm.root)
    data = run.up(file, tmux=tmux, env=plugin)
    (agent,) = data["agents"]
    assert agent["state"] == "started", data
    environ = dict(item.split("=", 1) for item in Path(f"/proc/{agent['pid']}/environ").read_text().split("\0") if "=" in item)
    assert environ["SWARMBUS_HOST_TYPE"] == "fakehost"
    assert environ["SB_MARK"] == "two words; $(not run)"
    assert environ["SWARMBUS_HANDLER_TIMEOUT"] == "123"
    wake = run.cli("wake", "test", "--agent-id", "cx", "--json", tmux=tmux, env=plugin)
    assert json.loads(wake.stdout)["host_type"] == "fakehost", out(wake)
    (record,) = wait_for(lambda: json.loads(run.swarm.cli("list", "--json", "--swarm", "solo").stdout), 10, "cx online")
    assert record["role"] is None and record["capabilities"] == [], record
    down = run.cli("swarm", "down", "solo", tmux=tmux)
    assert down.returncode == 0, out(down)
    wait_for(lambda: not run.alive(), 10, "every process of the swarm to be gone")


def _offline_env(root: Path) -> dict[str, str]:
    """An isolated environment whose broker is never reached (nothing is started)."""
    if not (root / "config.toml").exists():
        (root / "config.toml").write_text("# test config\n")
    return testing.isolated_env(root, "mqtt://127.0.0.1:9", plugins="priority")


BAD_FILES = {
    "not-toml": ('name = "x"\n[[agents]\nid = "a"\n', "not valid TOML"),
    "unknown-key": ('name = "x"\n[[agents]]\nid = "a"\ncolour = "red"\n', "agents[0] (id a).colour: unknown key"),
    "bad-capability": ('name = "x"\n[[agents]]\nid = "a"\ncapabilities = ["Py!"]\n',
                       "agents[0] (id a).capabilities: 'Py!' is not a capability"),
    "no-agents": ('name = "x"\n', "agents: missing"),
    "twice": ('name = "x"\n[[agents]]\nid = "a"\n[[agents]]\nid = "a"\n', "agents[1].id: 'a' is listed twice"),
    "bad-name": ('name = "X Y"\n[[agents]]\nid = "a"\n', "name: 'X Y' is not a swarm name"),
    "password": ('name = "x"\nbroker = "mqtt://u:pw@h:1883"\n[[agents]]\nid = "a"\n', "broker: the URL holds a password"),
    "reserved-env": ('name = "x"\n[[agents]]\nid = "a"\nenv = { SWARMBUS_ROLE = "r" }\n',
                     "SWARMBUS_ROLE may not be set here: use role"),
    "bad-env-value": ('name = "x"\n[[agents]]\nid = "a"\nenv = { SWARMBUS_HANDLER_CONCURRENCY = "many" }\n',
                      "agents[0] (id a): SWARMBUS_HANDLER_CONCURRENCY='many' is not a number"),
    "wake-policy": ('name = "x"\n[[agents]]\nid = "a"\nwake_policy = "sometimes"\n', "agents[0] (id a).wake_policy"),
    "unknown-host-type": ('name = "x"\n[[agents]]\nid = "a"\nhost_type = "nosuchhost"\n',
                          "'nosuchhost' is not a host type an installed plugin provides"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_swarm_file_is_one_line_and_exit_2(tmp_path: Path, case: str) -> None:
    text, expected = BAD_FILES[case]
    file = tmp_path / "swarm.toml"
    file.write_text(text)
    env = _offline_env(tmp_path)
    proc = testing.run_cli(env, "swarm", "up", str(file))
    assert proc.returncode == 2, out(proc)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, out(proc)
    assert lines[0].startswith(f"swarmbus: error: {file}: ") and expected in lines[0], out(proc)
    assert not (tmp_path / "state" / "swarms").exists() and not (tmp_path / "state" / "agents").exists()


def test_an_agent_would_not_inherit_the_users_own_host_type(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('host_type = "cc"\n')
    file = tmp_path / "swarm.toml"
    file.write_text('name = "x"\n[[agents]]\nid = "a"\n')
    env = _offline_env(tmp_path)
    proc = testing.run_cli(env, "swarm", "up", str(file))
    assert proc.returncode == 2, out(proc)
    assert "agents[0] (id a): it would inherit host_type 'cc'" in proc.stderr, out(proc)


@pytest.mark.broker
def test_host_type_none_clears_the_users_own(run: Run) -> None:
    (run.swarm.root / "config.toml").write_text('host_type = "cc"\n')
    file = run.swarm.root / "plain.toml"
    file.write_text('name = "plain"\n[[agents]]\nid = "bare"\nhost_type = "none"\n')
    (agent,) = run.up(file, tmux=False)["agents"]
    assert agent["state"] == "started"
    environ = dict(item.split("=", 1) for item in Path(f"/proc/{agent['pid']}/environ").read_text().split("\0") if "=" in item)
    assert environ["SWARMBUS_HOST_TYPE"] == "none"
    wake = run.cli("wake", "test", "--agent-id", "bare", "--json", tmux=False)
    assert json.loads(wake.stdout)["host_type"] is None, out(wake)  # "none": no host, not the user's cc
    assert run.cli("swarm", "down", "plain", tmux=False).returncode == 0
    wait_for(lambda: not run.alive(), 10, "every process of the swarm to be gone")


def test_down_and_status_of_an_unknown_swarm_say_so(tmp_path: Path) -> None:
    env = _offline_env(tmp_path)
    for action in ("down", "status"):
        proc = testing.run_cli(env, "swarm", action, "ghost")
        assert proc.returncode == 2, out(proc)
        assert proc.stderr.startswith("swarmbus: error: no swarm named 'ghost' was started here"), out(proc)
        assert f"swarmbus swarm {action} FILE" in proc.stderr
        assert len(proc.stderr.splitlines()) == 1
    proc = testing.run_cli(env, "swarm", "down", str(tmp_path / "missing.toml"))
    assert proc.returncode == 2 and "missing.toml: no such file" in proc.stderr, out(proc)


def test_attach_needs_tmux_and_a_terminal(tmp_path: Path) -> None:
    file = tmp_path / "swarm.toml"
    file.write_text('name = "x"\n[[agents]]\nid = "a"\n')
    env = _offline_env(tmp_path)
    proc = testing.run_cli(env, "swarm", "up", str(file), "--attach", "--no-tmux")
    assert proc.returncode == 2 and "--attach needs tmux panes" in proc.stderr, out(proc)
    if TMUX is not None:
        proc = testing.run_cli(env, "swarm", "up", str(file), "--attach")  # stdin is not a terminal here
        assert proc.returncode == 2 and "--attach needs a terminal" in proc.stderr, out(proc)
    assert not (tmp_path / "state" / "agents").exists()
