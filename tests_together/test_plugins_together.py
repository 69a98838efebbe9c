"""Every plugin in plugins/ installed together with the core (tox env ``together``).

Each plugin's own suite runs with only the core and that plugin installed; this suite checks
what only shows when they share one installation: they all load, their commands, host types and
doctor checks do not clash, and a daemon with all of them loaded still stores and archives.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import swarmbus
from swarmbus import testing

PLUGINS = {"example", "priority", "cc", "openclaw", "telegram", "codex"}


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    broker = testing.start_broker(testing.BrokerConfig(state_dir=tmp_path / "broker", port=testing.free_port()))
    values = testing.isolated_env(tmp_path, broker.url, heartbeat=1, reconnect=(0.1, 0.5))
    del values["SWARMBUS_LOAD_PLUGINS"]  # every installed plugin loads
    values["HOME"] = str(tmp_path / "home")
    (tmp_path / "config.toml").write_text("")
    try:
        yield values
    finally:
        broker.stop()


def test_all_plugins_load(env: dict[str, str]) -> None:
    proc = testing.run_cli(env, "plugins", "--all", "--json")
    assert proc.returncode == 0, proc.stderr
    infos = {p["name"]: p for p in json.loads(proc.stdout) if not p["builtin"]}
    assert set(infos) >= PLUGINS, infos
    assert all(infos[name]["status"] == "loaded" for name in PLUGINS), infos


def test_commands_and_host_types_do_not_clash(env: dict[str, str]) -> None:
    proc = testing.run_cli(env, "--help")
    assert proc.returncode == 0 and "clashes" not in proc.stderr, proc.stderr
    init = testing.run_cli(env, "init", "--agent-id", "x", "--host-type", "no-such-host", "--dry-run")
    assert init.returncode == 2
    assert "cc" in init.stderr and "openclaw" in init.stderr and "codex" in init.stderr, init.stderr


def test_daemon_with_every_plugin_loaded(env: dict[str, str], tmp_path: Path) -> None:
    log_path = tmp_path / "daemon.log"
    daemon = testing.start_daemon(env, "together", log_path=log_path)
    try:
        status = testing.wait_daemon_connected(env, "together", daemon, 20, log_path=log_path)
        assert status["callback_errors"] == 0
        sent = testing.run_cli(env, "send", "--agent-id", "peer", "--to", "together", "--subject", "hi",
                               "--body", "from a peer", "--direct")
        assert sent.returncode == 0, sent.stderr
        delivery = testing.wait_for(lambda: testing.finished_delivery(env, "together", "archive"), 20,
                                    "the message archived")
        assert delivery["status"] == "ok", delivery
        doctor = testing.run_cli(env, "doctor", "--agent-id", "together", "--json")
        checks = json.loads(doctor.stdout)["checks"]
        assert not [c for c in checks if "check crashed" in c["summary"]], checks
        core = {c["name"]: c["status"] for c in checks if c["name"] in ("config", "broker", "daemon", "store", "plugins")}
        assert core == dict.fromkeys(("config", "broker", "daemon", "store", "plugins"), "ok"), checks
    finally:
        testing.stop_daemon(daemon)
    assert "Traceback" not in log_path.read_text()


@pytest.mark.parametrize(
    ("selection", "status"),
    [(None, "loaded"), ("", "blocked"), ("example", "loaded"), ("swarmbus-example", "loaded"), ("other", "blocked")],
)
def test_load_plugins_with_the_installed_example(
    env: dict[str, str], selection: str | None, status: str
) -> None:
    chosen = {} if selection is None else {"SWARMBUS_LOAD_PLUGINS": selection}
    proc = testing.run_cli({**env, **chosen}, "plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    assert rows["example"]["status"] == status
    assert rows["example"]["version"] == importlib.metadata.version("swarmbus-example")
    if status == "blocked":
        assert rows["example"]["hooks"] == []
    else:
        assert "swarmbus_route" in rows["example"]["hooks"]


def test_version_lists_installed_plugins(env: dict[str, str]) -> None:
    example_installed = importlib.metadata.version("swarmbus-example")
    proc = testing.run_cli(env, "--version")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"swarmbus {swarmbus.__version__}"
    assert f"  swarmbus-example {example_installed} [example]" in lines
    blocked = testing.run_cli({**env, "SWARMBUS_LOAD_PLUGINS": ""}, "--version").stdout.splitlines()
    assert f"  swarmbus-example {example_installed} [example] (blocked)" in blocked
