"""``swarmbus init`` / ``swarmbus uninit`` in a temporary HOME, with a fake ``systemctl`` first on
PATH that records every call and runs the unit's ``ExecStart=`` for real (detached), so init
installs a daemon that actually runs against a private broker. Plus unit tests of the service
file renderers (quoting) and of the undo records."""

from __future__ import annotations

import json
import os
import plistlib
import shlex
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import wait_for
from swarmbus import testing
from swarmbus.dev_broker import free_port
from swarmbus.testing import InitHome as InitEnv
from swarmbus.testing import describe_run as clean
from swarmbus.testing import pid_alive

AGENT = "coder"

FAKE_SYSTEMCTL = testing.FAKE_SYSTEMCTL


@pytest.fixture
def init_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InitEnv]:
    root = Path(tmp_path_factory.mktemp("init"))
    home = root / "home"
    home.mkdir()
    ienv = InitEnv(home, root / "fake", AGENT, inherit=("LANG", "LC_ALL", "TMPDIR", "XDG_RUNTIME_DIR"))
    yield ienv
    ienv.kill_daemons()  # whatever the test did, no daemon the fake systemctl started outlives it


def mutating(calls: list[list[str]]) -> list[list[str]]:
    return [c for c in calls if not testing.READ_ONLY_SYSTEMCTL & set(c)]


# -- init, second init, uninit -------------------------------------------------------------------
@pytest.mark.broker
def test_dry_run_lists_everything_and_writes_nothing(init_env: InitEnv, broker: Any) -> None:
    before = init_env.tree(include_state=True)
    proc = init_env.swarmbus("init", "--agent-id", AGENT, "--broker", broker.url, "--dry-run")
    out = clean(proc)
    assert proc.returncode == 0, out
    unit = f"swarmbus-{AGENT}.service"
    assert f"would write ~/.config/systemd/user/{unit}" in proc.stdout, out
    assert "would set agent_id, broker.url in ~/.config/swarmbus/config.toml" in proc.stdout, out
    for command in ("daemon-reload", f"enable {unit}", f"restart {unit}"):
        assert f"would run systemctl --user {command}" in proc.stdout, out
    assert "would check swarmbus doctor" in proc.stdout, out
    assert "no file was written and no command was run" in proc.stdout, out
    assert "is set up" not in proc.stdout + proc.stderr
    assert init_env.tree(include_state=True) == before
    assert not init_env.state_dir.exists() and not init_env.manifest.exists()
    assert mutating(init_env.systemctl_calls()) == []
    assert init_env.daemon_pid() is None


@pytest.mark.broker
def test_init_second_init_and_uninit(init_env: InitEnv, broker: Any) -> None:
    unit = f"swarmbus-{AGENT}.service"
    # -- first init: everything is written, the daemon runs, doctor passes
    proc = init_env.swarmbus("init", "--agent-id", AGENT, "--broker", broker.url)
    out = clean(proc)
    assert proc.returncode == 0, out
    assert f"{AGENT} is set up" in proc.stdout, out
    assert "none failed" in proc.stdout, out

    text = init_env.unit_path.read_text()
    lines = text.splitlines()
    exec_start = next(line for line in lines if line.startswith("ExecStart="))
    assert shlex.split(exec_start.removeprefix("ExecStart=")) == [sys.executable, "-m", "swarmbus", "start",
                                                                  "--agent-id", AGENT]
    env_lines = {shlex.split(line.removeprefix("Environment="))[0].partition("=")[0]:
                 shlex.split(line.removeprefix("Environment="))[0].partition("=")[2]
                 for line in lines if line.startswith("Environment=")}
    assert env_lines["SWARMBUS_CONFIG"] == str(init_env.config_path)
    assert env_lines["SWARMBUS_STATE_DIR"] == str(init_env.state_dir)
    assert "Restart=on-failure" in lines and "WantedBy=default.target" in lines

    import tomllib

    config = tomllib.loads(init_env.config_path.read_text())
    assert config == {"agent_id": AGENT, "broker": {"url": broker.url}}
    assert init_env.config_path.stat().st_mode & 0o777 == 0o600

    manifest = json.loads(init_env.manifest.read_text())
    assert manifest["agent_id"] == AGENT and manifest["host_type"] is None
    kinds = {r["kind"] for r in manifest["undo"]}
    assert kinds == {"toml", "file", "command"}
    assert {"kind": "command", "argv": ["systemctl", "--user", "disable", "--now", unit]} in manifest["undo"]

    calls = mutating(init_env.systemctl_calls())
    assert ["--user", "daemon-reload"] in calls
    assert ["--user", "enable", unit] in calls and ["--user", "restart", unit] in calls
    pid = init_env.daemon_pid()
    assert pid and pid_alive(pid)
    status = wait_for(lambda: (init_env.status() or {}).get("connected") and init_env.status(), 20,
                      what="the service's daemon to connect")
    assert status["pid"] == pid and status["agent_id"] == AGENT and status["broker"] == broker.url

    # -- second init: nothing to change, no enable/restart, the same daemon
    tree = init_env.tree()
    ncalls = len(init_env.systemctl_calls())
    proc = init_env.swarmbus("init", "--agent-id", AGENT, "--broker", broker.url)
    out = clean(proc)
    assert proc.returncode == 0, out
    assert "nothing to change" in proc.stdout, out
    assert "is set up" not in proc.stdout
    assert mutating(init_env.systemctl_calls()[ncalls:]) == [], out
    assert init_env.daemon_pid() == pid and pid_alive(pid)
    assert {k: v for k, v in init_env.tree().items() if not k.startswith("state/")} == \
        {k: v for k, v in tree.items() if not k.startswith("state/")}

    # -- uninit: the daemon is stopped, the unit, the keys and the manifest are gone
    ncalls = len(init_env.systemctl_calls())
    proc = init_env.swarmbus("uninit", "--agent-id", AGENT)
    out = clean(proc)
    assert proc.returncode == 0, out
    assert ["--user", "disable", "--now", unit] in init_env.systemctl_calls()[ncalls:]
    assert not pid_alive(pid)
    assert init_env.status() is None
    assert not init_env.unit_path.exists()
    assert not init_env.config_path.exists()  # init created it, and only init's keys were in it
    assert not init_env.manifest.exists()
    assert "what init wrote has been removed" in proc.stdout, out
    # -- a second uninit has nothing to do
    proc = init_env.swarmbus("uninit", "--agent-id", AGENT)
    out = clean(proc)
    assert proc.returncode == 0 and "nothing to undo" in proc.stdout, out


@pytest.mark.broker
def test_changing_the_broker_restarts_the_daemon(init_env: InitEnv, broker_factory: Any) -> None:
    first, second = broker_factory(), broker_factory()
    assert init_env.swarmbus("init", "--agent-id", AGENT, "--broker", first.url).returncode == 0
    pid = init_env.daemon_pid()
    ncalls = len(init_env.systemctl_calls())
    proc = init_env.swarmbus("init", "--agent-id", AGENT, "--broker", second.url)
    out = clean(proc)
    assert proc.returncode == 0 and "is set up" in proc.stdout, out
    # the unit did not change, but the config file it reads did: the daemon was restarted
    assert ["--user", "restart", f"swarmbus-{AGENT}.service"] in init_env.systemctl_calls()[ncalls:]
    assert init_env.daemon_pid() != pid
    status = init_env.status() or {}
    assert status.get("connected") and status["broker"] == second.url and status["pid"] == init_env.daemon_pid()
    # uninit replays both runs: nothing is left
    assert init_env.swarmbus("uninit", "--agent-id", AGENT).returncode == 0
    assert not init_env.config_path.exists() and not init_env.unit_path.exists()


@pytest.mark.broker
def test_uninit_keeps_what_was_there_before_init(init_env: InitEnv, broker: Any) -> None:
    init_env.config_path.parent.mkdir(parents=True)
    init_env.config_path.write_text(f'agent_id = "{AGENT}"\nlog_level = "warning"\n\n[broker]\nurl = "mqtt://old:1883"\n')
    proc = init_env.swarmbus("init", "--agent-id", AGENT, "--broker", broker.url)
    assert proc.returncode == 0, clean(proc)
    import tomllib

    config = tomllib.loads(init_env.config_path.read_text())
    assert config == {"agent_id": AGENT, "log_level": "warning", "broker": {"url": broker.url}}
    proc = init_env.swarmbus("init", "--remove", "--agent-id", AGENT)
    assert proc.returncode == 0, clean(proc)
    # the previous broker URL is back; the user's own keys (agent_id was already set) stay
    config = tomllib.loads(init_env.config_path.read_text())
    assert config == {"agent_id": AGENT, "log_level": "warning", "broker": {"url": "mqtt://old:1883"}}


@pytest.mark.broker
def test_uninit_dry_run_changes_nothing(init_env: InitEnv, broker: Any) -> None:
    assert init_env.swarmbus("init", "--agent-id", AGENT, "--broker", broker.url).returncode == 0
    tree = init_env.tree()
    ncalls = len(init_env.systemctl_calls())
    proc = init_env.swarmbus("uninit", "--agent-id", AGENT, "--dry-run")
    out = clean(proc)
    assert proc.returncode == 0, out
    assert "would undo" in proc.stdout and str(init_env.unit_path) in proc.stdout, out
    assert init_env.systemctl_calls()[ncalls:] == []
    after = init_env.tree()
    assert {k: v for k, v in after.items() if not k.startswith("state/")} == \
        {k: v for k, v in tree.items() if not k.startswith("state/")}
    assert init_env.manifest.exists()


def test_uninit_keeps_what_it_could_not_undo_for_a_retry(init_env: InitEnv) -> None:
    ours = init_env.home / "ours.txt"
    ours.write_text("x")
    import hashlib

    missing = str(init_env.home / "no-such-dir" / "systemctl")
    records = [{"kind": "file", "path": str(ours), "sha256": hashlib.sha256(b"x").hexdigest()},
               {"kind": "command", "argv": [missing, "--user", "disable", "--now", "x.service"]}]
    init_env.manifest.parent.mkdir(parents=True)
    init_env.manifest.write_text(json.dumps({"agent_id": AGENT, "host_type": None, "undo": records}))
    proc = init_env.swarmbus("uninit", "--agent-id", AGENT)
    out = clean(proc)
    assert proc.returncode == 1, out
    assert "1 undo steps failed" in proc.stderr and "run uninit again" in proc.stderr, out
    assert not ours.exists()
    assert json.loads(init_env.manifest.read_text())["undo"] == records[1:]


def test_unreachable_broker_fails_loudly(init_env: InitEnv) -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    proc = init_env.swarmbus("init", "--agent-id", AGENT, "--broker", url, env={"SWARMBUS_BROKER_CONNECT_TIMEOUT": "2"})
    out = clean(proc)
    assert proc.returncode == 1, out
    assert "[✗] broker: failed" in proc.stdout, out
    assert f"broker unreachable ({url})" in proc.stdout and "refused" in proc.stdout.lower(), out
    assert "init failed at step 'broker'" in proc.stderr, out
    assert "is set up" not in proc.stdout + proc.stderr
    assert not init_env.unit_path.exists() and not init_env.config_path.exists()
    assert not init_env.manifest.exists()
    assert mutating(init_env.systemctl_calls()) == []


FAKE_HOST_PLUGIN = '''\
from swarmbus import HostType, hookimpl


@hookimpl
def swarmbus_host_types(register):
    register(HostType("fakehost", "a host type for tests"))
'''


def test_unknown_host_type_exits_2_listing_installed_ones(init_env: InitEnv, tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "fakehost_plugin.py").parent.mkdir(parents=True)
    (site / "fakehost_plugin.py").write_text(FAKE_HOST_PLUGIN)
    dist = site / "swarmbus_fakehost-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: swarmbus-fakehost\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[swarmbus]\nfakehost = fakehost_plugin\n")
    env = {"PYTHONPATH": str(site), "SWARMBUS_LOAD_PLUGINS": "fakehost"}
    proc = init_env.swarmbus("init", "--agent-id", AGENT, "--host-type", "nosuch", env=env)
    out = clean(proc)
    assert proc.returncode == 2, out
    assert "unknown host type 'nosuch' (installed: fakehost)" in proc.stderr, out
    assert init_env.systemctl_calls() == [] and not init_env.home.joinpath(".config").exists()
    # without any host plugin
    proc = init_env.swarmbus("init", "--agent-id", AGENT, "--host-type", "nosuch")
    assert proc.returncode == 2 and "installed: none installed" in proc.stderr, clean(proc)


# -- service files ---------------------------------------------------------------------------------
def systemd_split(value: str) -> list[str]:
    """How systemd reads an ExecStart= line, for the characters the quoting handles."""
    return [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(value)]


@pytest.mark.parametrize("arg", [
    "/usr/bin/python3", "plain-word_1.2:x=y", "with space", "100%", "%h/x", "$HOME", "a$$b", 'quote"d',
    "back\\slash", "it's", "semi;colon", "",
])
def test_systemd_quote_round_trips(arg: str) -> None:
    from swarmbus.service import systemd_quote

    quoted = systemd_quote(arg)
    assert systemd_split(quoted) == [arg]
    assert " " not in quoted or quoted.startswith('"')
    assert "%" not in quoted.replace("%%", "")  # no bare specifier left
    assert "$" not in quoted.replace("$$", "")  # no bare variable left


def test_control_characters_cannot_break_the_unit() -> None:
    from swarmbus.service import render_systemd_unit, systemd_quote

    assert systemd_quote("a\nb\tc") == '"a\\x0ab\\x09c"'
    unit = render_systemd_unit("d", ["/bin/x", "line\n[Service]\nExecStartPre=/bin/evil"], {"K": "v\nUser=root"})
    assert "\nExecStartPre=" not in unit and "\nUser=" not in unit
    assert sum(line.startswith("ExecStart") for line in unit.splitlines()) == 1


def test_render_systemd_unit_with_awkward_paths() -> None:
    from swarmbus.service import render_systemd_unit

    config = "/home/a b/50% $USER/config.toml"
    argv = ["/opt/my python/bin/python3", "-m", "swarmbus", "start", "--agent-id", "coder"]
    unit = render_systemd_unit("swarmbus listener daemon for agent coder", argv,
                               {"SWARMBUS_CONFIG": config, "PATH": "/usr/bin:/bin"})
    lines = unit.splitlines()
    exec_start = next(line for line in lines if line.startswith("ExecStart="))
    assert systemd_split(exec_start.removeprefix("ExecStart=")) == argv
    env_lines = [line.removeprefix("Environment=") for line in lines if line.startswith("Environment=")]
    assert env_lines == ['"PATH=/usr/bin:/bin"', '"SWARMBUS_CONFIG=/home/a b/50%% $USER/config.toml"']
    # Environment= expands specifiers (%%) but not variables: $ stays as it is
    assert [shlex.split(v)[0].replace("%%", "%") for v in env_lines][1] == f"SWARMBUS_CONFIG={config}"
    assert "[Service]" in lines and "Type=simple" in lines and "[Install]" in lines


def test_render_launchd_plist_round_trips() -> None:
    from swarmbus.service import render_launchd_plist

    argv = ["/Users/a b/py & <x>/python3", "-m", "swarmbus", "start", "--agent-id", "coder", "100% $HOME"]
    env = {"SWARMBUS_CONFIG": "/Users/a b/<cfg>&.toml", "PATH": "/usr/bin"}
    text = render_launchd_plist("dev.swarmbus.swarmbus-coder", argv, env, Path("/Users/a b/log.txt"))
    data = plistlib.loads(text.encode())
    assert data["ProgramArguments"] == argv
    assert data["EnvironmentVariables"] == env
    assert data["Label"] == "dev.swarmbus.swarmbus-coder" and data["RunAtLoad"] is True
    assert data["StandardErrorPath"] == "/Users/a b/log.txt"


# -- undo records ----------------------------------------------------------------------------------
def test_a_command_undo_reports_what_the_command_said(tmp_path: Path) -> None:
    from swarmbus import RunCommand
    from swarmbus.provision import undo

    talk = [sys.executable, "-c", "print('noise'); print('removed [mcp_servers.swarmbus] from config.toml')"]
    record = RunCommand(("true",), undo=tuple(talk)).undo_record()
    assert record is not None and undo(record) == "noise; removed [mcp_servers.swarmbus] from config.toml"
    silent = [sys.executable, "-c", "pass"]
    assert undo({"kind": "command", "argv": silent}) == f"ran {shlex.join(silent)}"
    failing = [sys.executable, "-c", "import sys; sys.exit('no such entry: swarmbus')"]
    said = undo({"kind": "command", "argv": failing})
    assert said == f"exit 1 from {shlex.join(failing)}: no such entry: swarmbus"


def test_toml_entries_is_public_and_keeps_a_host_file_without_our_header(tmp_path: Path) -> None:
    """A host plugin edits its host's TOML (e.g. Codex's config.toml) through the public change."""
    from swarmbus import TomlEntries
    from swarmbus.provision import undo

    path = tmp_path / "config.toml"
    path.write_text('# my codex\nmodel = "o4"  # mine\n')
    change = TomlEntries(path, {"mcp_servers": {"swarmbus": {"command": "swarmbus", "args": ["mcp-server"]}}})
    assert change.pending()
    record = change.undo_record()
    change.apply()
    text = path.read_text()
    assert text.startswith('# my codex\nmodel = "o4"  # mine\n') and "[mcp_servers.swarmbus]" in text
    assert not change.pending()
    undo(record)
    assert path.read_text() == '# my codex\nmodel = "o4"  # mine\n'


def test_undo_records_only_cover_what_init_changed(tmp_path: Path) -> None:
    from swarmbus.provision import JsonEntry, TomlEntries, WriteFile, run_step, undo

    toml = tmp_path / "c.toml"
    toml.write_text('keep = 1\nsame = "x"\nold = "before"\n')
    js = tmp_path / "settings.json"
    js.write_text(json.dumps({"mcpServers": {"other": {"command": "x"}}, "theme": "dark"}))
    existing = tmp_path / "existing.txt"
    existing.write_text("mine")
    changes = [
        TomlEntries(toml, {"same": "x", "old": "after", "new": {"k": 2}}),
        JsonEntry(js, ("mcpServers", "swarmbus"), {"command": "swarmbus"}),
        JsonEntry(js, ("theme",), "light"),
        WriteFile(existing, "mine"),  # already as wanted: not touched, so not undone either
        WriteFile(tmp_path / "new.txt", "ours"),
    ]
    result = run_step("s", changes, dry_run=False)
    assert result.status == "changed", result.lines
    # a second run changes nothing and records nothing new
    again = run_step("s", changes, dry_run=False)
    assert again.status == "unchanged" and again.undo == []
    for record in reversed(result.undo):
        undo(record)
    import tomllib

    assert tomllib.loads(toml.read_text()) == {"keep": 1, "same": "x", "old": "before"}
    assert json.loads(js.read_text()) == {"mcpServers": {"other": {"command": "x"}}, "theme": "dark"}
    assert existing.read_text() == "mine"
    assert not (tmp_path / "new.txt").exists()


def test_undo_leaves_values_the_user_changed_since(tmp_path: Path) -> None:
    from swarmbus.provision import JsonEntry, TomlEntries, run_step, undo

    toml, js = tmp_path / "c.toml", tmp_path / "s.json"
    result = run_step("s", [TomlEntries(toml, {"a": 1}), JsonEntry(js, ("x",), 1)], dry_run=False)
    toml.write_text("a = 5\n")
    js.write_text('{"x": 5}')
    lines = [undo(r) for r in reversed(result.undo)]
    assert toml.read_text() == "a = 5\n" and json.loads(js.read_text()) == {"x": 5}
    assert all(line and "changed after init" in line for line in lines), lines


def test_fake_systemctl_script_is_valid_python() -> None:
    compile(FAKE_SYSTEMCTL.format(python=sys.executable, log="/x", state="/y"), "systemctl", "exec")
    assert textwrap.dedent(FAKE_SYSTEMCTL).startswith("#!")


# -- no user bus: the daemon runs detached ---------------------------------------------------------
@pytest.fixture
def nobus_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InitEnv]:
    """A temporary HOME whose `systemctl` fails like it does without a user bus (containers, root
    shells, WSL, CI runners)."""
    root = Path(tmp_path_factory.mktemp("nobus"))
    home = root / "home"
    home.mkdir()
    ienv = InitEnv(home, root / "fake", AGENT, bus=False)
    yield ienv
    ienv.kill_daemons()


USER_CONFIG = """\
# my swarmbus settings -- keep this comment
log_level = "warning"   # quiet, please

[daemon]
# a slower heartbeat for this laptop
heartbeat_interval = 30.0
"""


@pytest.mark.broker
def test_init_without_a_user_bus_runs_a_detached_daemon(nobus_env: InitEnv, broker: Any) -> None:
    nobus_env.config_path.parent.mkdir(parents=True)
    nobus_env.config_path.write_text(USER_CONFIG)
    proc = nobus_env.swarmbus("init", "--agent-id", AGENT, "--broker", broker.url)
    out = clean(proc)
    assert proc.returncode == 0, out
    pid = nobus_env.detached_pid()
    assert pid and pid_alive(pid), out
    assert f"{AGENT} is set up: its daemon runs detached (pid {pid}, log {nobus_env.agent_dir / 'daemon.log'})" \
        in proc.stdout, out
    assert "no user service manager works here (`systemctl --user show-environment` exited 1: Failed to connect " \
           "to bus: No medium found)" in proc.stdout, out
    assert "It does not survive a reboot" in proc.stdout and "@reboot" in proc.stdout, out
    assert "none failed" in proc.stdout, out
    assert not nobus_env.unit_path.exists()
    assert nobus_env.systemctl_calls() == [["--user", "show-environment"]]  # asked once, nothing more
    status = nobus_env.status() or {}
    assert status.get("pid") == pid and status["supervisor"] == "detached" and status.get("connected"), status
    # the config keeps the user's comments and layout, with init's keys added
    text = nobus_env.config_path.read_text()
    assert text.startswith(USER_CONFIG.split("\n[daemon]")[0]) and "# a slower heartbeat for this laptop" in text
    import tomllib

    assert tomllib.loads(text) == {"log_level": "warning", "daemon": {"heartbeat_interval": 30.0},
                                   "agent_id": AGENT, "broker": {"url": broker.url}}
    # the daemon is the one a user gets by hand: status says so
    proc = nobus_env.swarmbus("status", "--agent-id", AGENT)
    assert proc.returncode == 0 and "supervisor: detached" in proc.stdout, clean(proc)

    # a second init changes nothing and keeps the daemon
    tree = nobus_env.tree()
    proc = nobus_env.swarmbus("init", "--agent-id", AGENT, "--broker", broker.url)
    out = clean(proc)
    assert proc.returncode == 0 and "nothing to change" in proc.stdout, out
    assert nobus_env.tree() == tree and nobus_env.detached_pid() == pid and pid_alive(pid)

    # uninit stops it, removes its pid file and log, and gives the config back byte for byte
    proc = nobus_env.swarmbus("uninit", "--agent-id", AGENT)
    out = clean(proc)
    assert proc.returncode == 0 and "what init wrote has been removed" in proc.stdout, out
    assert not pid_alive(pid) and nobus_env.status() is None
    assert nobus_env.config_path.read_text() == USER_CONFIG
    assert not (nobus_env.agent_dir / "daemon.pid").exists() and not (nobus_env.agent_dir / "daemon.log").exists()
    assert not nobus_env.manifest.exists()


@pytest.mark.broker
def test_uninit_keeps_config_edits_made_after_init(nobus_env: InitEnv, broker: Any) -> None:
    nobus_env.config_path.parent.mkdir(parents=True)
    nobus_env.config_path.write_text(USER_CONFIG)
    assert nobus_env.swarmbus("init", "--agent-id", AGENT, "--broker", broker.url).returncode == 0
    edited = nobus_env.config_path.read_text() + "\n# added later\n[wake]\npolicy = \"all\"\n"
    nobus_env.config_path.write_text(edited)
    proc = nobus_env.swarmbus("uninit", "--agent-id", AGENT)
    assert proc.returncode == 0, clean(proc)
    # only init's keys went; the user's comments and later edits stay (tomlkit files the comment
    # written after init's [broker] table under that table, so its empty header stays with it)
    text = nobus_env.config_path.read_text()
    assert text.startswith(USER_CONFIG) and "# added later" in text and "url =" not in text, text
    import tomllib

    assert tomllib.loads(text) == {"log_level": "warning", "daemon": {"heartbeat_interval": 30.0},
                                   "broker": {}, "wake": {"policy": "all"}}


@pytest.mark.broker
def test_forcing_systemd_without_a_user_bus_fails_before_changing_anything(nobus_env: InitEnv, broker: Any) -> None:
    proc = nobus_env.swarmbus("init", "--agent-id", AGENT, "--broker", broker.url, "--service", "systemd")
    out = clean(proc)
    assert proc.returncode == 1, out
    assert "--service systemd: `systemctl --user show-environment` exited 1: Failed to connect to bus" in proc.stderr
    assert "nothing was changed" in proc.stderr, out
    assert not nobus_env.config_path.exists() and not nobus_env.state_dir.exists()


@pytest.mark.broker
def test_service_none_starts_nothing(nobus_env: InitEnv, broker: Any) -> None:
    proc = nobus_env.swarmbus("init", "--agent-id", AGENT, "--broker", broker.url, "--service", "none")
    out = clean(proc)
    assert proc.returncode == 0, out
    assert "set up without a daemon" in proc.stdout and f"swarmbus start --agent-id {AGENT} --detach" in proc.stdout
    assert nobus_env.status() is None and nobus_env.systemctl_calls() == []
    assert nobus_env.swarmbus("uninit", "--agent-id", AGENT).returncode == 0
    assert not nobus_env.config_path.exists()


@pytest.mark.broker
def test_service_systemd_with_a_working_user_manager(init_env: InitEnv, broker: Any) -> None:
    proc = init_env.swarmbus("init", "--agent-id", AGENT, "--broker", broker.url, "--service", "systemd")
    out = clean(proc)
    assert proc.returncode == 0 and "runs as a user service" in proc.stdout, out
    pid = init_env.daemon_pid()
    status = wait_for(lambda: (init_env.status() or {}).get("connected") and init_env.status(), 20, what="connected")
    assert status["pid"] == pid and status["supervisor"] == "systemd"
    proc = init_env.swarmbus("status", "--agent-id", AGENT)
    assert proc.returncode == 0 and f"supervisor: systemd (unit swarmbus-{AGENT}.service)" in proc.stdout, clean(proc)
    # `swarmbus stop` hands a systemd-run daemon to systemctl (a SIGTERM would leave systemd's state wrong)
    ncalls = len(init_env.systemctl_calls())
    proc = init_env.swarmbus("stop", "--agent-id", AGENT)
    assert proc.returncode == 0 and "systemctl --user stop" in proc.stdout, clean(proc)
    assert ["--user", "stop", f"swarmbus-{AGENT}.service"] in init_env.systemctl_calls()[ncalls:]
    assert not pid_alive(pid)
    assert init_env.swarmbus("uninit", "--agent-id", AGENT).returncode == 0
    assert not init_env.unit_path.exists()


# -- an init interrupted half-way can be undone ----------------------------------------------------
STEPPY_PLUGIN = '''\
import os
import sys
from pathlib import Path

from swarmbus import HostType, InitStep, RunCommand, Verify, WriteFile, hookimpl

OUT = Path(os.environ["STEPPY_DIR"])


def boom():
    raise RuntimeError("steppy exploded")


def steps(settings):
    late = {
        "hang": [RunCommand((sys.executable, "-c", "import os, time; from pathlib import Path; "
                             f"Path({str(OUT / 'hanging')!r}).write_text(str(os.getpid())); time.sleep(120)"))],
        "raise": [Verify("steppy", boom)],
    }[os.environ["STEPPY_MODE"]]
    return [InitStep("files", [WriteFile(OUT / "steppy.txt", "written by init\\n")]), InitStep("late", late)]


@hookimpl
def swarmbus_host_types(register):
    register(HostType("steppy", "a host type whose last step hangs or raises", init_steps=steps))
'''


def _steppy(site: Path) -> dict[str, str]:
    (site / "steppy_plugin.py").parent.mkdir(parents=True, exist_ok=True)
    (site / "steppy_plugin.py").write_text(STEPPY_PLUGIN)
    dist = site / "swarmbus_steppy-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: swarmbus-steppy\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[swarmbus]\nsteppy = steppy_plugin\n")
    return {"PYTHONPATH": str(site), "SWARMBUS_LOAD_PLUGINS": "steppy", "STEPPY_DIR": str(site)}


def _assert_uninit_undoes_everything(ienv: InitEnv, site: Path, pid: int) -> None:
    manifest = json.loads(ienv.manifest.read_text())
    assert {r["kind"] for r in manifest["undo"]} >= {"toml", "command", "file"}, manifest
    proc = ienv.swarmbus("uninit", "--agent-id", AGENT)
    out = clean(proc)
    assert proc.returncode == 0 and "what init wrote has been removed" in proc.stdout, out
    assert not pid_alive(pid) and ienv.status() is None
    assert not (site / "steppy.txt").exists() and not ienv.config_path.exists() and not ienv.manifest.exists()


@pytest.mark.broker
def test_an_init_that_raises_half_way_can_be_undone(nobus_env: InitEnv, broker: Any, tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**_steppy(site), "STEPPY_MODE": "raise"}
    proc = nobus_env.swarmbus("init", "--agent-id", AGENT, "--host-type", "steppy", "--broker", broker.url, env=env)
    assert proc.returncode == 1 and "steppy exploded" in proc.stderr, proc.stderr
    pid = nobus_env.detached_pid()
    assert pid and pid_alive(pid) and (site / "steppy.txt").exists()
    _assert_uninit_undoes_everything(nobus_env, site, pid)


@pytest.mark.broker
def test_an_init_killed_half_way_can_be_undone(nobus_env: InitEnv, broker: Any, tmp_path: Path) -> None:
    import signal
    import subprocess

    site = tmp_path / "site"
    env = {**nobus_env.env, **_steppy(site), "STEPPY_MODE": "hang"}
    init = subprocess.Popen([sys.executable, "-m", "swarmbus", "init", "--agent-id", AGENT, "--host-type", "steppy",
                             "--broker", broker.url], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    hanging = site / "hanging"
    try:
        wait_for(hanging.exists, 60, what="init to reach its last step")
        init.send_signal(signal.SIGKILL)  # no cleanup of any kind
        assert init.wait(10) == -signal.SIGKILL
    finally:
        if init.poll() is None:
            init.kill()
        wait_for(lambda: hanging.exists() and hanging.read_text(), 10, what="the hanging step's pid")
        os.kill(int(hanging.read_text()), signal.SIGKILL)
    pid = nobus_env.detached_pid()
    assert pid and pid_alive(pid)
    nobus_env.pids.add(pid)
    _assert_uninit_undoes_everything(nobus_env, site, pid)


# -- no user bus and no broker: a detached, kept broker too -------------------------------------------
@pytest.mark.broker
def test_init_without_a_user_bus_or_a_broker_starts_both_detached(nobus_env: InitEnv) -> None:
    from swarmbus.dev_broker import answers_mqtt

    port = free_port()  # nothing listens there: init starts the broker (never the machine's 1883)
    broker_dir = nobus_env.state_dir / "broker" / str(port)
    proc = nobus_env.swarmbus("init", "--agent-id", AGENT, "--port", str(port))
    out = clean(proc)
    assert proc.returncode == 0, out
    keepers = testing.keeper_pids(nobus_env.state_dir)
    broker_keeper = int((broker_dir / "keeper.lock").read_text().split()[2])
    mosquitto = int((broker_dir / "broker.pid").read_text())
    assert broker_keeper in keepers and pid_alive(mosquitto) and answers_mqtt("127.0.0.1", port), out
    assert os.getsid(mosquitto) == broker_keeper
    assert f"ran {sys.executable} -m swarmbus broker --detach --port {port}" in proc.stdout, out
    assert f"the local broker (mosquitto on 127.0.0.1:{port}, kept by pid {broker_keeper}) runs detached too" \
        in proc.stdout and f"swarmbus broker --stop --port {port}" in proc.stdout, out
    assert "@reboot" in proc.stdout and "none failed" in proc.stdout, out
    status = nobus_env.status() or {}
    pid = nobus_env.detached_pid()
    assert status.get("connected") and status["pid"] == pid and status["supervisor"] == "detached", status
    assert status["broker"] == f"mqtt://localhost:{port}"
    import tomllib

    assert tomllib.loads(nobus_env.config_path.read_text()) == {"agent_id": AGENT, "broker": {"port": port}}
    stop = [sys.executable, "-m", "swarmbus", "broker", "--stop", "--port", str(port), "--state-dir",
            str(nobus_env.state_dir)]
    assert {"kind": "command", "argv": stop} in json.loads(nobus_env.manifest.read_text())["undo"]
    for path in (broker_dir, broker_dir / "broker.log", broker_dir / "keeper.json", broker_dir / "mosquitto.conf"):
        assert path.stat().st_mode & 0o077 == 0, path

    # by hand: it runs already, say so
    proc = nobus_env.swarmbus("broker", "--detach", "--port", str(port))
    assert proc.returncode == 0 and f"already runs (pid {mosquitto}, kept by pid {broker_keeper})" in proc.stdout, \
        clean(proc)
    proc = nobus_env.swarmbus("broker", "--status", "--port", str(port))
    assert proc.returncode == 0 and f"mosquitto pid {mosquitto}, kept by pid {broker_keeper}" in proc.stdout, clean(proc)

    # a second init changes nothing
    tree = nobus_env.tree()
    proc = nobus_env.swarmbus("init", "--agent-id", AGENT, "--port", str(port))
    assert proc.returncode == 0 and "nothing to change" in proc.stdout, clean(proc)
    assert nobus_env.tree() == tree and nobus_env.detached_pid() == pid
    assert testing.keeper_pids(nobus_env.state_dir) == keepers

    # uninit stops the daemon, its keeper, the broker and its keeper, and removes the config init wrote
    proc = nobus_env.swarmbus("uninit", "--agent-id", AGENT)
    out = clean(proc)
    assert proc.returncode == 0 and "what init wrote has been removed" in proc.stdout, out
    # the undo of a command reports what the command said, not just its argv
    assert f"stopped the broker on port {port} (" in proc.stdout and f"ran {' '.join(stop)}" not in proc.stdout, out
    assert not pid_alive(pid) and not pid_alive(mosquitto) and not any(pid_alive(k) for k in keepers)
    assert testing.keeper_pids(nobus_env.state_dir) == set() and not answers_mqtt("127.0.0.1", port)
    assert nobus_env.status() is None and not nobus_env.config_path.exists() and not nobus_env.manifest.exists()
    proc = nobus_env.swarmbus("broker", "--status", "--port", str(port))
    assert proc.returncode == 1 and "no detached broker runs" in proc.stdout, clean(proc)


@pytest.mark.broker
def test_uninit_leaves_a_broker_init_did_not_start(nobus_env: InitEnv) -> None:
    from swarmbus.dev_broker import answers_mqtt

    port = free_port()
    proc = nobus_env.swarmbus("broker", "--detach", "--port", str(port))
    assert proc.returncode == 0 and f"started the broker on mqtt://127.0.0.1:{port}" in proc.stdout, clean(proc)
    assert "swarmbus broker --stop" in proc.stdout and "does not survive a reboot" in proc.stdout
    proc = nobus_env.swarmbus("init", "--agent-id", AGENT, "--port", str(port))
    assert proc.returncode == 0 and "broker --detach" not in proc.stdout.split("the local broker")[0], clean(proc)
    assert nobus_env.swarmbus("uninit", "--agent-id", AGENT).returncode == 0
    assert answers_mqtt("127.0.0.1", port) and testing.keeper_pids(nobus_env.state_dir)
    proc = nobus_env.swarmbus("broker", "--stop", "--port", str(port))
    assert proc.returncode == 0 and f"stopped the broker on port {port}" in proc.stdout, clean(proc)
    assert not answers_mqtt("127.0.0.1", port) and not testing.keeper_pids(nobus_env.state_dir)


@pytest.mark.broker
def test_init_moves_a_detached_daemon_to_the_user_service(init_env: InitEnv, broker: Any) -> None:
    # set up without a service, then start the daemon detached by hand (as the SessionStart hook would)
    proc = init_env.swarmbus("init", "--agent-id", AGENT, "--broker", broker.url, "--service", "none")
    assert proc.returncode == 0, clean(proc)
    proc = init_env.swarmbus("start", "--agent-id", AGENT, "--detach")
    assert proc.returncode == 0, clean(proc)
    detached = init_env.detached_pid()
    keepers = testing.keeper_pids(init_env.state_dir)
    assert detached and keepers and (init_env.status() or {}).get("supervisor") == "detached"
    # a user bus now works (or --service systemd): the detached daemon and its keeper make way for the unit's
    proc = init_env.swarmbus("init", "--agent-id", AGENT, "--broker", broker.url, "--service", "systemd")
    out = clean(proc)
    assert proc.returncode == 0 and "runs as a user service" in proc.stdout and "none failed" in proc.stdout, out
    assert f"-m swarmbus stop --agent-id {AGENT}" in proc.stdout, out
    assert not pid_alive(detached) and not any(pid_alive(k) for k in keepers)
    unit_pid = init_env.daemon_pid()
    status = wait_for(lambda: (s := init_env.status()) and s.get("connected") and s, 20, what="the unit's daemon")
    assert status["pid"] == unit_pid and status["supervisor"] == "systemd", (status, init_env.daemon_log())
    # nothing detached is left, so a second init changes nothing
    proc = init_env.swarmbus("init", "--agent-id", AGENT, "--broker", broker.url, "--service", "systemd")
    assert proc.returncode == 0 and "nothing to change" in proc.stdout, clean(proc)
    assert init_env.swarmbus("uninit", "--agent-id", AGENT).returncode == 0
    assert not pid_alive(unit_pid) and init_env.status() is None
