"""``swarmbus init --host-type cc`` / ``swarmbus uninit`` end to end, as a user runs them.

A temporary HOME, a private mosquitto on a free port, and first on PATH the fake ``claude``
(tests/fake_claude.py, through the ``fake_claude`` fixture) and the core's fake ``systemctl``
(installed by :class:`swarmbus.testing.InitHome`), which records its calls and really runs the
unit's ``ExecStart=`` detached: init installs a daemon that actually runs, doctor checks it, a
second init changes nothing, switching to ``wake_mode = "rewake"`` installs the Stop hook (and
restarts the daemon, which reads its config only at start), and uninit removes everything.

Self-contained: the core's ``tests/conftest.py`` is not loaded in the ``plugin-cc`` tox env.
Every process started (the daemons the fake systemctl ran, the broker) is killed at teardown.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swarmbus import testing
from swarmbus.testing import BrokerConfig, find_mosquitto, free_port, pid_alive, start_broker, wait_for
from swarmbus.testing import describe_run as out
from swarmbus_claude_code.install import hook_entry, mcp_entry, skill_text

AGENT = "ccagent"
UNIT = f"swarmbus-{AGENT}.service"


class InitEnv(testing.InitHome):
    """The core's init harness, with the fake ``claude`` (its bin dir holds the fake systemctl too)
    and the Claude Code files init writes."""

    def __init__(self, home: Path, root: Path, broker_url: str, fake: Any, *, bus: bool = True) -> None:
        super().__init__(home, root, AGENT, bin_dir=fake.bin_dir, plugins="cc", bus=bus)
        self.broker_url = broker_url
        self.fake = fake  # the FakeClaude of the plugin's conftest

    @property
    def skill(self) -> Path:
        return self.home / ".claude" / "skills" / "swarmbus" / "SKILL.md"

    @property
    def claude_json(self) -> Path:
        return self.home / ".claude.json"

    @property
    def settings_json(self) -> Path:
        return self.home / ".claude" / "settings.json"

    @property
    def locators(self) -> dict[str, str]:
        return {k: self.env[k] for k in ("SWARMBUS_CONFIG", "SWARMBUS_STATE_DIR")}

    def init(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.swarmbus("init", "--agent-id", AGENT, "--host-type", "cc", "--broker", self.broker_url, *extra)

    def mark(self) -> tuple[int, int]:
        """Where the systemctl and claude logs end now, for :meth:`mutating_since`."""
        return len(self.systemctl_calls()), len(self.fake.records())

    def mutating_since(self, mark: tuple[int, int] = (0, 0)) -> list[list[str]]:
        """systemctl calls that change something, then claude runs other than ``--version``."""
        systemctl = [["systemctl", *c] for c in self.mutating_calls(mark[0])]
        claude = [["claude", *r["argv"]] for r in self.fake.records()[mark[1]:] if r["kind"] != "version"]
        return systemctl + claude


def _init_env(tmp_path_factory: pytest.TempPathFactory, home: Path, fake_claude: Any, *, bus: bool) -> Iterator[InitEnv]:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed (apt-get install mosquitto): the init tests need it")
    root = Path(tmp_path_factory.mktemp("ccinit"))
    # the fake systemctl goes next to the fake claude, which the fake_claude fixture put first on PATH
    assert os.environ["PATH"].split(os.pathsep)[0] == str(fake_claude.bin_dir)
    broker = start_broker(BrokerConfig(state_dir=root / "broker", port=free_port()))
    ienv = InitEnv(home, root, broker.url, fake_claude, bus=bus)
    try:
        yield ienv
    finally:
        ienv.kill_daemons()  # whatever the test did, no daemon it started (systemctl, --detach) outlives it
        broker.stop()


@pytest.fixture
def cc_env(tmp_path_factory: pytest.TempPathFactory, home: Path, fake_claude: Any) -> Iterator[InitEnv]:
    yield from _init_env(tmp_path_factory, home, fake_claude, bus=True)


@pytest.fixture
def cc_nobus_env(tmp_path_factory: pytest.TempPathFactory, home: Path, fake_claude: Any) -> Iterator[InitEnv]:
    """No user bus: the fake systemctl fails like the real one in a container, root shell or CI."""
    yield from _init_env(tmp_path_factory, home, fake_claude, bus=False)


def test_dry_run_on_a_fresh_home_writes_nothing(cc_env: InitEnv) -> None:
    proc = cc_env.init("--dry-run")
    text = out(proc)
    assert proc.returncode == 0, text
    assert f"swarmbus init --dry-run for {AGENT} (host type cc)" in proc.stdout, text
    assert f"would write ~/.config/systemd/user/{UNIT}" in proc.stdout, text
    for command in ("daemon-reload", f"enable {UNIT}", f"restart {UNIT}"):
        assert f"would run systemctl --user {command}" in proc.stdout, text
    assert "[~] cc: skill: would-change" in proc.stdout, text
    assert "would write ~/.claude/skills/swarmbus/SKILL.md" in proc.stdout, text
    assert "[~] cc: mcp: would-change" in proc.stdout, text
    assert f"would run {cc_env.fake.path} mcp add -s user swarmbus" in proc.stdout, text
    assert "would check claude" in proc.stdout and "would check swarmbus doctor" in proc.stdout, text
    assert "no file was written and no command was run" in proc.stdout, text
    assert "is set up" not in proc.stdout
    assert list(cc_env.home.rglob("*")) == []  # not even a directory
    assert cc_env.mutating_since() == []
    assert cc_env.fake.records() == []  # not even claude --version
    assert cc_env.daemon_pid() is None


def test_init_second_init_rewake_and_uninit(cc_env: InitEnv) -> None:
    # -- first init: every file is written, the daemon runs, doctor passes --------------------
    proc = cc_env.init()
    text = out(proc)
    assert proc.returncode == 0, text
    assert f"{AGENT} is set up: its daemon runs as a user service and doctor passes" in proc.stdout, text
    assert "none failed" in proc.stdout, text

    lines = cc_env.unit_path.read_text().splitlines()
    exec_start = next(line for line in lines if line.startswith("ExecStart="))
    assert shlex.split(exec_start.removeprefix("ExecStart=")) == [sys.executable, "-m", "swarmbus", "start",
                                                                  "--agent-id", AGENT]
    environment = dict(shlex.split(line.removeprefix("Environment="))[0].split("=", 1)
                       for line in lines if line.startswith("Environment="))
    assert environment["SWARMBUS_HOST_TYPE"] == "cc"
    assert environment["SWARMBUS_CONFIG"] == str(cc_env.config_path)
    assert environment["SWARMBUS_STATE_DIR"] == str(cc_env.state_dir)
    assert environment["PATH"].split(os.pathsep)[0] == str(cc_env.fake.bin_dir)  # the daemon finds this claude

    # everything the daemon needs is in the config file too: `swarmbus start` by hand behaves the same
    assert tomllib.loads(cc_env.config_path.read_text()) == {"agent_id": AGENT, "host_type": "cc",
                                                             "broker": {"url": cc_env.broker_url}}
    assert cc_env.skill.read_text() == skill_text(AGENT)

    # the MCP server, registered through the fake `claude mcp add -s user`
    mcp_runs = [r["argv"] for r in cc_env.fake.records("mcp")]
    assert mcp_runs == [["mcp", "add", "-s", "user", "swarmbus",
                         "-e", f"SWARMBUS_CONFIG={cc_env.config_path}", "-e", f"SWARMBUS_STATE_DIR={cc_env.state_dir}",
                         "--", sys.executable, "-m", "swarmbus", "mcp-server", "--agent-id", AGENT]]
    entry = json.loads(cc_env.claude_json.read_text())["mcpServers"]["swarmbus"]
    assert entry == mcp_entry(AGENT, cc_env.locators)
    # resume mode (the default) needs no wake hook; the SessionStart hook starts the daemon in every mode
    assert json.loads(cc_env.settings_json.read_text()) == {
        "hooks": {"SessionStart": [{"hooks": [hook_entry(AGENT, "SessionStart", cc_env.locators)]}]}}

    manifest = json.loads(cc_env.manifest.read_text())
    assert manifest["agent_id"] == AGENT and manifest["host_type"] == "cc"
    undo = manifest["undo"]
    assert {"kind": "command", "argv": ["systemctl", "--user", "disable", "--now", UNIT]} in undo
    assert {"kind": "command", "argv": [str(cc_env.fake.path), "mcp", "remove", "-s", "user", "swarmbus"]} in undo
    assert {(r["kind"], r.get("path")) for r in undo if r["kind"] != "command"} == {
        ("toml", str(cc_env.config_path)), ("file", str(cc_env.unit_path)), ("file", str(cc_env.skill))}

    # exactly the files above, nothing else outside the daemon's state
    assert set(cc_env.tree()) == {".config/systemd/user/" + UNIT, ".config/swarmbus/config.toml",
                                  ".claude/skills/swarmbus/SKILL.md", ".claude.json", ".claude/settings.json"}

    assert cc_env.mutating_since() == [["systemctl", "--user", "daemon-reload"],
                                       ["systemctl", "--user", "enable", UNIT],
                                       ["systemctl", "--user", "restart", UNIT],
                                       ["claude", *mcp_runs[0]]], text
    pid = cc_env.daemon_pid()
    assert pid and pid_alive(pid), cc_env.daemon_log()
    status = cc_env.status() or {}
    assert status.get("connected") and status["pid"] == pid, (status, cc_env.daemon_log())
    assert status["agent_id"] == AGENT and status["broker"] == cc_env.broker_url

    # -- second init: nothing to change, no mutating call, the same daemon --------------------
    tree = cc_env.tree()
    before = cc_env.mark()
    proc = cc_env.init()
    text = out(proc)
    assert proc.returncode == 0, text
    assert f"nothing to change: {AGENT} was already set up, and doctor passes" in proc.stdout, text
    assert "is set up:" not in proc.stdout, text
    assert cc_env.mutating_since(before) == [], text
    assert cc_env.tree() == tree
    assert cc_env.daemon_pid() == pid and pid_alive(pid)

    # -- rewake: the Stop hook is installed, and the daemon restarted to read the new mode -------
    cc_env.config_path.write_text(cc_env.config_path.read_text() + '\n[plugins.cc]\nwake_mode = "rewake"\n')
    proc = cc_env.init()
    text = out(proc)
    assert proc.returncode == 0, text
    assert "[✓] cc: hook: changed" in proc.stdout and f"{AGENT} is set up" in proc.stdout, text
    settings = json.loads(cc_env.settings_json.read_text())
    assert settings == {"hooks": {"Stop": [{"hooks": [hook_entry(AGENT, "Stop", cc_env.locators)]}],
                                  "SessionStart": [{"hooks": [hook_entry(AGENT, "SessionStart", cc_env.locators)]}]}}
    new_pid = cc_env.daemon_pid()
    assert new_pid and new_pid != pid and pid_alive(new_pid) and not pid_alive(pid), text
    wait_for(lambda: (cc_env.status() or {}).get("pid") == new_pid, 20, "the restarted daemon's control socket")
    # the hook is added by a python command (not recorded here); the unit is unchanged but re-enabled and restarted
    assert cc_env.mutating_since(before) == [["systemctl", "--user", "enable", UNIT],
                                             ["systemctl", "--user", "restart", UNIT]], text
    manifest = json.loads(cc_env.manifest.read_text())
    hook_undo = {"kind": "command", "argv": [sys.executable, "-m", "swarmbus_claude_code.hooks_json", "remove",
                                             "--settings", str(cc_env.settings_json), "--agent-id", AGENT]}
    assert hook_undo in manifest["undo"]

    # the running daemon is in rewake mode: a wake is left to the hook, claude -p never runs
    send = cc_env.swarmbus("send", "--agent-id", "peer", "--to", AGENT, "--priority", "high", "--subject", "hi",
                           "--body", "MARKER-REWAKE")
    assert send.returncode == 0, out(send)

    delivery = wait_for(lambda: testing.finished_delivery(cc_env.env, AGENT), 30, "the wake outcome in the inbox")
    assert delivery["status"] == "ok" and "Stop hook" in str(delivery.get("detail")), (delivery, cc_env.daemon_log())
    assert cc_env.fake.records("started") == []

    # a further init in rewake mode: nothing to change
    before = cc_env.mark()
    proc = cc_env.init()
    text = out(proc)
    assert proc.returncode == 0 and "nothing to change" in proc.stdout, text
    assert cc_env.mutating_since(before) == [], text
    assert cc_env.daemon_pid() == new_pid

    # -- uninit: the skill, MCP entry, hook, unit and manifest are gone, the daemon stopped ------
    before = cc_env.mark()
    proc = cc_env.swarmbus("uninit", "--agent-id", AGENT)
    text = out(proc)
    assert proc.returncode == 0, text
    assert f"{AGENT}: what init wrote has been removed" in proc.stdout, text
    assert cc_env.mutating_since(before) == [["systemctl", "--user", "disable", "--now", UNIT],
                                             ["claude", "mcp", "remove", "-s", "user", "swarmbus"]], text
    assert not pid_alive(new_pid) and cc_env.status() is None
    assert not cc_env.skill.exists() and not cc_env.settings_json.exists()  # it held only our hook
    assert json.loads(cc_env.claude_json.read_text())["mcpServers"] == {}  # claude's own file stays
    assert not cc_env.unit_path.exists() and not cc_env.manifest.exists()
    # init's keys are gone, the section the user added stays
    assert tomllib.loads(cc_env.config_path.read_text()) == {"plugins": {"cc": {"wake_mode": "rewake"}}}
    assert set(cc_env.tree()) == {".config/swarmbus/config.toml", ".claude.json"}
    proc = cc_env.swarmbus("uninit", "--agent-id", AGENT)
    assert proc.returncode == 0 and "nothing to undo" in proc.stdout, out(proc)


USER_CONFIG = """\
# swarmbus for my Claude Code agent -- keep this comment
log_level = "warning"  # quiet

[plugins.cc]
# headless wakes in this project
cwd = "/tmp"
"""


def test_init_without_a_user_bus_runs_the_daemon_detached(cc_nobus_env: InitEnv) -> None:
    env = cc_nobus_env
    proc, pid = env.init_detached(USER_CONFIG)
    text = out(proc)
    assert "does not survive a reboot" in proc.stdout, text
    assert "SessionStart hook" in proc.stdout and "none failed" in proc.stdout, text
    status = env.status() or {}
    assert status.get("pid") == pid and status["supervisor"] == "detached" and status.get("connected"), status
    assert not env.unit_path.exists()
    # the skill, the MCP server, the SessionStart hook; the config keeps the user's comments
    assert env.skill.read_text() == skill_text(AGENT)
    assert json.loads(env.claude_json.read_text())["mcpServers"]["swarmbus"] == mcp_entry(AGENT, env.locators)
    start_hook = hook_entry(AGENT, "SessionStart", env.locators)
    assert json.loads(env.settings_json.read_text()) == {"hooks": {"SessionStart": [{"hooks": [start_hook]}]}}
    config = env.config_path.read_text()
    assert config.startswith("# swarmbus for my Claude Code agent -- keep this comment\nlog_level")
    assert "# headless wakes in this project" in config
    assert tomllib.loads(config) == {"log_level": "warning", "plugins": {"cc": {"cwd": "/tmp"}}, "agent_id": AGENT,
                                     "host_type": "cc", "broker": {"url": env.broker_url}}

    # a second init changes nothing
    tree, before = env.tree(), env.mark()
    proc = env.init()
    assert proc.returncode == 0 and "nothing to change" in proc.stdout, out(proc)
    assert env.mutating_since(before) == [] and env.tree() == tree and env.detached_pid() == pid

    # the SessionStart hook, run the way Claude Code runs it: starts a stopped daemon, prints nothing
    assert env.swarmbus("stop", "--agent-id", AGENT).returncode == 0 and env.status() is None
    for _ in range(2):  # the second time the daemon runs already: still nothing on stdout
        hook = subprocess.run(["sh", "-c", start_hook["command"]], env=env.env, capture_output=True, text=True,
                              timeout=start_hook["timeout"], stdin=subprocess.DEVNULL)
        assert hook.returncode == 0 and hook.stdout == "", out(hook)
        new_pid = env.detached_pid()
        assert new_pid and new_pid != pid and (env.status() or {}).get("pid") == new_pid, env.detached_log()

    # uninit: the hooks, skill, MCP entry go, the daemon stops, the config is as the user wrote it
    proc = env.swarmbus("uninit", "--agent-id", AGENT)
    text = out(proc)
    assert proc.returncode == 0 and f"{AGENT}: what init wrote has been removed" in proc.stdout, text
    assert not pid_alive(new_pid) and env.status() is None
    assert env.config_path.read_text() == USER_CONFIG
    assert not env.skill.exists() and not env.settings_json.exists() and not env.manifest.exists()
    assert set(env.tree()) == {".config/swarmbus/config.toml", ".claude.json"}
    assert not (env.agent_dir / "daemon.pid").exists() and not (env.agent_dir / "daemon.log").exists()


def test_init_without_a_user_bus_or_a_broker_starts_both_detached(cc_nobus_env: InitEnv) -> None:
    env = cc_nobus_env
    port = free_port()  # no broker there (never the machine's 1883): init starts one, detached and kept
    proc = env.swarmbus("init", "--agent-id", AGENT, "--host-type", "cc", "--port", str(port))
    text = out(proc)
    assert proc.returncode == 0 and "none failed" in proc.stdout, text + env.detached_log()
    keepers = testing.keeper_pids(env.state_dir)
    assert len(keepers) == 2, keepers  # the daemon's and the broker's
    assert f"the local broker (mosquitto on 127.0.0.1:{port}" in proc.stdout and "SessionStart hook" in proc.stdout
    status = env.status() or {}
    assert status.get("connected") and status["supervisor"] == "detached", status
    # doctor by hand: the SessionStart hook check passes for a detached daemon
    doctor = env.swarmbus("doctor", "--agent-id", AGENT)
    assert doctor.returncode == 0 and "SessionStart hook installed" in doctor.stdout, out(doctor)
    proc = env.swarmbus("init", "--agent-id", AGENT, "--host-type", "cc", "--port", str(port))
    assert proc.returncode == 0 and "nothing to change" in proc.stdout, out(proc)
    proc = env.swarmbus("uninit", "--agent-id", AGENT)
    assert proc.returncode == 0 and "what init wrote has been removed" in proc.stdout, out(proc)
    assert not any(pid_alive(k) for k in keepers) and testing.keeper_pids(env.state_dir) == set()
    assert env.status() is None and not env.config_path.exists()
