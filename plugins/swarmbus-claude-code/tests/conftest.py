"""Fixtures for the swarmbus-claude-code tests: a temporary HOME and a fake ``claude`` on PATH.

Nothing here needs the core's ``tests/conftest.py``; the broker-backed tests start their own
mosquitto.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import swarmbus_claude_code
from swarmbus import HookRelay, testing
from swarmbus.testing import pid_alive

HERE = Path(__file__).resolve().parent


class FakeClaude(testing.FakeProgram):
    """The fake ``claude`` (tests/fake_claude.py) installed as ``<bin>/claude``."""

    def __init__(self, bin_dir: Path) -> None:
        super().__init__(bin_dir, "claude", (HERE / "fake_claude.py").read_text())


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary HOME (the HOME variable and ``Path.home``), without SWARMBUS_*, MQTT_*,
    ANTHROPIC_* or CLAUDE_* variables."""
    return testing.use_home(tmp_path / "home", monkeypatch, ("ANTHROPIC_", "CLAUDE_"))


@pytest.fixture
def fake_claude(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClaude]:
    fake = FakeClaude(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{fake.bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}")
    yield fake
    fake.cleanup()


@pytest.fixture
def no_claude(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PATH without any ``claude``."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


@pytest.fixture(name="pid_alive")
def pid_alive_fixture() -> Callable[[int], bool]:
    return pid_alive


@pytest.fixture
def relay() -> HookRelay:
    """A fresh plugin manager with only the built-ins and this plugin, behind the core's relay."""
    return testing.plugin_relay(swarmbus_claude_code, "cc")  # type: ignore[no-any-return]
