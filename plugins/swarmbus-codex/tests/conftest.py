"""Fixtures for the swarmbus-codex tests: a temporary HOME (so ``~/.codex`` is never yours), a fake
``codex`` on PATH, a fake app-server on the discovered socket, and a plugin manager with only this
plugin. No network and no real Codex; the daemon tests start their own mosquitto. Helpers are in
codex_helpers.py, the fakes in fake_app_server.py and fake_codex.py."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parent))

from fake_app_server import FakeAppServer

import swarmbus_codex
from swarmbus import HookRelay, testing

HERE = Path(__file__).resolve().parent


class FakeCodex(testing.FakeProgram):
    """The fake ``codex`` (tests/fake_codex.py) installed as ``<bin>/codex``."""

    def __init__(self, bin_dir: Path) -> None:
        super().__init__(bin_dir, "codex", (HERE / "fake_codex.py").read_text())
        self.threads_file = bin_dir / "fake-codex-threads.json"

    def know_threads(self, *ids: str) -> None:
        self.threads_file.write_text(json.dumps(list(ids)))


@pytest.fixture
def home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary HOME (the variable and ``Path.home``; a short path, so that sockets under
    ``~/.codex`` fit in sun_path), without SWARMBUS_*, MQTT_*, CODEX_* or OPENAI_* variables."""
    return testing.use_home(tmp_path_factory.mktemp("h"), monkeypatch, ("CODEX_", "OPENAI_"))


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
    return testing.plugin_relay(swarmbus_codex, "codex")  # type: ignore[no-any-return]
