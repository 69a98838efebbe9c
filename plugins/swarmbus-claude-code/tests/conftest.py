"""Fixtures for the swarmbus-claude-code tests: a temporary HOME and a fake ``claude`` on PATH.

Nothing here needs the core's ``tests/conftest.py``; the broker-backed tests start their own
mosquitto.
"""

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

import swarmbus_claude_code
from swarmbus import HookRelay, get_plugin_manager, testing
from swarmbus.testing import pid_alive

HERE = Path(__file__).resolve().parent


class FakeClaude:
    """The fake ``claude`` (tests/fake_claude.py) installed as ``<bin>/claude``."""

    def __init__(self, bin_dir: Path) -> None:
        bin_dir.mkdir(parents=True, exist_ok=True)
        self.bin_dir = bin_dir
        self.path = bin_dir / "claude"
        self.path.write_text(f"#!{sys.executable}\n" + (HERE / "fake_claude.py").read_text())
        self.path.chmod(0o755)
        self.log = bin_dir / "fake-claude-log.jsonl"
        self.control_file = bin_dir / "fake-claude-control.json"
        self.children: list[int] = []

    def control(self, **values: Any) -> None:
        self.control_file.write_text(json.dumps(values))

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        lines = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        return [r for r in lines if kind is None or r["kind"] == kind]

    def runs(self) -> list[dict[str, Any]]:
        """The ``-p`` runs, in start order."""
        return [r for r in self.records("started")]

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 20.0, what: str = "the fake claude") -> Any:
        """:func:`swarmbus.testing.wait_for`, with the fake's records in the failure message."""
        try:
            return testing.wait_for(predicate, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; records: {self.records()}") from None

    def cleanup(self) -> None:
        for record in self.records():
            for pid in (record.get("pid"), record.get("child_pid")):
                if pid and pid_alive(pid):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary HOME (the HOME variable and ``Path.home``), without SWARMBUS_* locators."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: home))
    for name in list(os.environ):
        if name.startswith(("SWARMBUS_", "MQTT_", "ANTHROPIC_", "CLAUDE_")):
            monkeypatch.delenv(name)
    return home


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
    pm = get_plugin_manager(entry_points=False)
    pm.register(swarmbus_claude_code, name="cc")
    return HookRelay(pm)

