"""The plugin host: the ``get_plugin_manager`` factory, built-ins as ordinary plugins,
``SWARMBUS_LOAD_PLUGINS``, broken plugins (reported, never fatal), ``swarmbus plugins``,
``swarmbus --version``, the doctor ``plugins`` check and ``SWARMBUS_TRACE_PLUGINS``.

Installed entry points are simulated by replacing ``importlib.metadata.entry_points`` (which
``swarmbus.plugins._load_entry_points`` looks up at call time) for the group ``swarmbus``.
The subprocess tests use the real ``swarmbus-example`` plugin when it is installed
(``pip install -e . -e plugins/swarmbus-example``) and are skipped otherwise.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from swarmbus import (
    DoctorContext,
    HookRelay,
    Settings,
    StoredMessage,
    __version__,
    get_plugin_manager,
    hookimpl,
    new_envelope,
)
from swarmbus.cli.main import main
from swarmbus.default_plugins.doctor import check_plugins
from swarmbus.plugins import DEFAULT_PLUGINS, GROUP, LOAD_ENV, TRACE_ENV

AGENT = "coder"


def message(subject: str = "hello") -> StoredMessage:
    return StoredMessage(1, new_envelope("planner", AGENT, subject, "body"), f"agents/{AGENT}/inbox", time.time())


# -- fake installed plugins -------------------------------------------------------------------
class GoodPlugin:
    @hookimpl
    def swarmbus_route(self, message: StoredMessage) -> list[str]:
        return ["good-handler"]


class TypoPlugin:
    @hookimpl
    def swarmbus_rout(self, message: StoredMessage) -> list[str]:  # not a hook: a typo
        return ["typo"]


class WrongArgPlugin:
    @hookimpl
    def swarmbus_route(self, mesage: StoredMessage) -> list[str]:  # misspelled argument
        return ["wrong"]


@dataclass
class FakeEntryPoint:
    """Duck-types ``importlib.metadata.EntryPoint`` as ``_load_entry_points`` uses it."""

    name: str
    distribution: str
    version: str
    target: object

    @property
    def value(self) -> str:
        return self.distribution.replace("-", "_")

    @property
    def dist(self) -> Any:
        return SimpleNamespace(name=self.distribution, version=self.version)

    def load(self) -> object:
        if isinstance(self.target, BaseException):
            raise self.target  # as if importing the plugin's module raised
        return self.target


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> list[FakeEntryPoint]:
    """The list of 'installed' swarmbus plugins; other entry-point groups stay real."""
    fakes: list[FakeEntryPoint] = []
    real = importlib.metadata.entry_points

    def entry_points(**params: Any) -> Any:
        if params.get("group") == GROUP:
            return list(fakes)
        return real(**params)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.delenv(LOAD_ENV, raising=False)
    monkeypatch.delenv(TRACE_ENV, raising=False)
    return fakes


def good() -> FakeEntryPoint:
    return FakeEntryPoint("good", "swarmbus-good", "1.2.3", GoodPlugin())


def broken() -> FakeEntryPoint:
    return FakeEntryPoint("broken", "swarmbus-broken", "2.0", RuntimeError("boom at import"))


# -- the factory and the built-ins ------------------------------------------------------------
def test_factory_returns_a_new_manager_each_call() -> None:
    first = get_plugin_manager(entry_points=False)
    second = get_plugin_manager(entry_points=False)
    assert first is not second
    assert first.hook is not second.hook
    assert first.infos is not second.infos
    first.register(GoodPlugin(), name="good")
    settings = Settings()
    assert "good-handler" in HookRelay(first).route(message(), frozenset(), settings)
    assert "good-handler" not in HookRelay(second).route(message(), frozenset(), settings)
    assert not second.has_plugin("good")


def test_builtins_are_registered_as_ordinary_plugins() -> None:
    pm = get_plugin_manager(entry_points=False)
    for name in DEFAULT_PLUGINS:
        module = import_module(name)
        assert pm.get_plugin(name) is module
        info = pm.infos[name]
        assert (info.builtin, info.status, info.distribution, info.version) == (True, "loaded", "swarmbus", __version__)
        assert info.hooks == sorted(c.name for c in pm.get_hookcallers(module) or [])
        assert info.hooks
    # like any plugin, a built-in can be taken out
    relay = HookRelay(pm)
    assert relay.route(message(), frozenset({"archive", "wake"}), Settings()) == ["wake", "archive"]
    pm.unregister(name="swarmbus.default_plugins.routing")
    assert relay.route(message(), frozenset({"archive", "wake"}), Settings()) == []


# -- SWARMBUS_LOAD_PLUGINS --------------------------------------------------------------------
def _statuses(env: dict[str, str]) -> dict[str, str]:
    pm = get_plugin_manager(env=env)
    return {name: info.status for name, info in pm.infos.items() if not info.builtin}


def test_all_installed_plugins_load_by_default(installed: list[FakeEntryPoint]) -> None:
    installed.append(good())
    pm = get_plugin_manager(env={})
    info = pm.infos["good"]
    assert (info.status, info.distribution, info.version, info.builtin) == ("loaded", "swarmbus-good", "1.2.3", False)
    assert info.hooks == ["swarmbus_route"]
    assert "good-handler" in HookRelay(pm).route(message(), frozenset(), Settings())


def test_empty_load_plugins_blocks_every_installed_plugin(installed: list[FakeEntryPoint]) -> None:
    installed.extend([good(), broken()])
    pm = get_plugin_manager(env={LOAD_ENV: ""})
    assert {n: i.status for n, i in pm.infos.items() if not i.builtin} == {"good": "blocked", "broken": "blocked"}
    assert pm.is_blocked("good")
    assert not pm.has_plugin("good")
    assert "good-handler" not in HookRelay(pm).route(message(), frozenset(), Settings())
    assert all(pm.infos[name].status == "loaded" for name in DEFAULT_PLUGINS)  # built-ins are never blocked


@pytest.mark.parametrize("selection", ["good", "swarmbus-good", " good , other", "swarmbus-good,"])
def test_load_plugins_selects_by_entry_point_or_distribution_name(
    installed: list[FakeEntryPoint], selection: str
) -> None:
    installed.extend([good(), FakeEntryPoint("other", "swarmbus-other", "0.1", GoodPlugin())])
    expected_other = "loaded" if "other" in selection else "blocked"
    assert _statuses({LOAD_ENV: selection}) == {"good": "loaded", "other": expected_other}


# -- broken plugins ---------------------------------------------------------------------------
def test_plugin_raising_at_import_is_reported_as_failed(installed: list[FakeEntryPoint]) -> None:
    installed.extend([broken(), good()])
    pm = get_plugin_manager(env={})
    info = pm.infos["broken"]
    assert (info.status, info.error, info.hooks) == ("failed", "RuntimeError: boom at import", [])
    assert not pm.has_plugin("broken")
    assert pm.infos["good"].status == "loaded"  # the others still load


def test_plugin_not_matching_the_hookspecs_is_reported_as_failed(installed: list[FakeEntryPoint]) -> None:
    installed.extend([
        FakeEntryPoint("typo", "swarmbus-typo", "1.0", TypoPlugin()),
        FakeEntryPoint("wrongarg", "swarmbus-wrongarg", "1.0", WrongArgPlugin()),
        good(),
    ])
    pm = get_plugin_manager(env={})  # must not raise for everybody because of one plugin
    assert pm.infos["typo"].status == "failed"
    assert "unknown hook(s) swarmbus_rout" in (pm.infos["typo"].error or "")
    assert pm.infos["wrongarg"].status == "failed"
    assert "mesage" in (pm.infos["wrongarg"].error or "")
    assert pm.infos["good"].status == "loaded"
    assert HookRelay(pm).route(message(), frozenset({"archive"}), Settings()) == ["good-handler", "archive"]


def test_broken_plugin_does_not_break_the_cli(
    installed: list[FakeEntryPoint], capsys: pytest.CaptureFixture[str]
) -> None:
    installed.extend([broken(), good()])
    assert main(["plugins", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["broken"]["status"] == "failed"
    assert rows["broken"]["error"] == "RuntimeError: boom at import"
    assert rows["good"]["status"] == "loaded"
    assert not any(row["builtin"] for row in rows.values())

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "broken (swarmbus-broken 2.0) [failed: RuntimeError: boom at import]" in out
    assert "good (swarmbus-good 1.2.3)" in out

    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"swarmbus {__version__}"
    assert "  swarmbus-broken 2.0 [broken] (failed)" in out.splitlines()
    assert "  swarmbus-good 1.2.3 [good]" in out.splitlines()


def test_doctor_plugins_check_fails_for_a_broken_plugin(installed: list[FakeEntryPoint]) -> None:
    installed.extend([broken(), good()])
    pm = get_plugin_manager(env={})
    settings = Settings()
    checks = {c.name: c for c in HookRelay(pm).doctor_checks(settings)}
    assert checks["plugins"].run is check_plugins  # `swarmbus doctor` runs it

    result = check_plugins(DoctorContext(settings=settings, agent_id=None, cache={"plugin_infos": pm.infos}))
    assert result.status == "fail"
    assert "broken (RuntimeError: boom at import)" in result.summary
    assert result.fix

    installed.remove(next(ep for ep in installed if ep.name == "broken"))
    pm = get_plugin_manager(env={})
    result = check_plugins(DoctorContext(settings=settings, agent_id=None, cache={"plugin_infos": pm.infos}))
    assert (result.status, result.summary) == ("ok", "1 plugins loaded: good")


# -- SWARMBUS_TRACE_PLUGINS -------------------------------------------------------------------
class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def plugin_log() -> Iterator[_Records]:
    logger = logging.getLogger("swarmbus.plugins")
    handler = _Records()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def test_trace_plugins_logs_hook_calls_and_results(plugin_log: _Records) -> None:
    pm = get_plugin_manager(entry_points=False, env={TRACE_ENV: "1"})
    HookRelay(pm).route(message(), frozenset({"archive", "wake"}), Settings())
    assert "hook swarmbus_route(handlers, message, settings)" in plugin_log.lines
    assert "hook swarmbus_route -> [['wake', 'archive']]" in plugin_log.lines


def test_no_trace_by_default(plugin_log: _Records) -> None:
    pm = get_plugin_manager(entry_points=False, env={})
    HookRelay(pm).route(message(), frozenset({"archive", "wake"}), Settings())
    assert not [line for line in plugin_log.lines if line.startswith("hook ")]


# -- the CLI in a subprocess, with the real installed example plugin --------------------------
def _cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.toml"
    config.touch()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SWARMBUS_", "MQTT_"))}
    clean.update(SWARMBUS_CONFIG=str(config), SWARMBUS_STATE_DIR=str(tmp_path / "state"), **env)
    proc = subprocess.run([sys.executable, "-m", "swarmbus", *args], capture_output=True, text=True,
                          timeout=60, env=clean)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_plugins_all_json_lists_the_builtins(tmp_path: Path) -> None:
    proc = _cli(tmp_path, "plugins", "--all", "--json", SWARMBUS_LOAD_PLUGINS="")
    assert proc.returncode == 0, proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    for name in DEFAULT_PLUGINS:
        assert rows[name]["builtin"] is True
        assert rows[name]["status"] == "loaded"
        assert rows[name]["version"] == __version__
        assert rows[name]["hooks"]
    proc = _cli(tmp_path, "plugins", "--json", SWARMBUS_LOAD_PLUGINS="")
    assert proc.returncode == 0, proc.stderr
    assert not [row for row in json.loads(proc.stdout) if row["builtin"]]  # --all only


def test_trace_plugins_in_the_cli(tmp_path: Path) -> None:
    proc = _cli(tmp_path, "--help", SWARMBUS_LOAD_PLUGINS="", SWARMBUS_TRACE_PLUGINS="1")
    assert proc.returncode == 0
    assert "hook swarmbus_commands(register)" in proc.stderr
    assert "hook swarmbus_commands -> []" in proc.stderr
    quiet = _cli(tmp_path, "--help", SWARMBUS_LOAD_PLUGINS="")
    assert "hook swarmbus_commands" not in quiet.stderr
