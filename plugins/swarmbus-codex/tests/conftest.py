"""Fixtures for the swarmbus-codex tests: a temporary HOME (so ``~/.codex`` is never yours), a fake
``codex`` on PATH, a fake app-server on the discovered socket, and a plugin manager with only this
plugin. No network and no real Codex; the daemon tests start their own mosquitto. Helpers are in
codex_helpers.py, the fakes in fake_app_server.py and fake_codex.py."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.append(str(Path(__file__).resolve().parent))

from fake_app_server import FakeAppServer

import swarmbus_codex
from swarmbus import HookRelay, get_plugin_manager, testing
from swarmbus.testing import pid_alive

HERE = Path(__file__).resolve().parent


class FakeCodex:
    """The fake ``codex`` (tests/fake_codex.py) installed as ``<bin>/codex``."""

    def __init__(self, bin_dir: Path) -> None:
        bin_dir.mkdir(parents=True, exist_ok=True)
        self.bin_dir = bin_dir
        self.path = bin_dir / "codex"
        self.path.write_text(f"#!{sys.executable}\n" + (HERE / "fake_codex.py").read_text())
        self.path.chmod(0o755)
        self.log = bin_dir / "fake-codex-log.jsonl"
        self.control_file = bin_dir / "fake-codex-control.json"
        self.threads_file = bin_dir / "fake-codex-threads.json"

    def control(self, **values: Any) -> None:
        self.control_file.write_text(json.dumps(values))

    def know_threads(self, *ids: str) -> None:
        self.threads_file.write_text(json.dumps(list(ids)))

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        lines = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        return [r for r in lines if kind is None or r["kind"] == kind]

    def runs(self) -> list[dict[str, Any]]:
        """The ``exec`` runs, in start order."""
        return self.records("started")

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 30.0, what: str = "the fake codex") -> Any:
        try:
            return testing.wait_for(predicate, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; records: {[(r['kind'], r['argv']) for r in self.records()]}") from None

    def cleanup(self) -> None:
        for record in self.records():
            pid = record.get("pid")
            if pid and pid_alive(pid) and record["kind"] == "started":
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary HOME (the variable and ``Path.home``; a short path, so that sockets under
    ``~/.codex`` fit in sun_path), without SWARMBUS_*, MQTT_*, CODEX_* or OPENAI_* variables."""
    home = tmp_path_factory.mktemp("h")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: home))
    for name in list(os.environ):
        if name.startswith(("SWARMBUS_", "MQTT_", "CODEX_", "OPENAI_")):
            monkeypatch.delenv(name)
    return home


@pytest.fixture
def codex_home(home: Path) -> Path:
    path = home / ".codex"
    path.mkdir()
    return path


@pytest.fixture
def fake_codex(tmp_path_factory: pytest.TempPathFactory, home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCodex]:
    fake = FakeCodex(tmp_path_factory.mktemp("bin"))
    monkeypatch.setenv("PATH", f"{fake.bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}")
    yield fake
    fake.cleanup()


@pytest.fixture
def no_codex(tmp_path_factory: pytest.TempPathFactory, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PATH without any ``codex`` (and none in ~/.local/bin)."""
    empty = tmp_path_factory.mktemp("empty-bin")
    monkeypatch.setenv("PATH", f"{empty}{os.pathsep}/usr/bin{os.pathsep}/bin")


@pytest.fixture
def app_server(codex_home: Path) -> Iterator[FakeAppServer]:
    """A fake app-server on the socket the plugin discovers: ``~/.codex/swarmbus-app-server.sock``."""
    with FakeAppServer(codex_home / "swarmbus-app-server.sock", codex_home=str(codex_home)) as server:
        yield server


@pytest.fixture
def relay() -> HookRelay:
    """A fresh plugin manager with only the built-ins and this plugin, behind the core's relay."""
    pm = get_plugin_manager(entry_points=False)
    pm.register(swarmbus_codex, name="codex")
    return HookRelay(pm)
