"""Fixtures for the swarmbus-openclaw tests: a fake gateway, a plugin manager with only this
plugin, and an isolated HOME. No broker is needed except by the daemon integration test, which
starts its own. Helpers live in openclaw_helpers.py."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).parent))

from openclaw_fake_gateway import FakeGateway
from openclaw_helpers import TOKEN

import swarmbus_openclaw
from swarmbus import HookRelay, get_plugin_manager


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own HOME (so ~/.openclaw is never the user's) and no OPENCLAW_*
    variables from the environment."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for key in list(os.environ):
        if key.startswith("OPENCLAW_"):
            monkeypatch.delenv(key)
    return home


@pytest.fixture
def gateway() -> Iterator[FakeGateway]:
    with FakeGateway(token=TOKEN) as fake:
        yield fake


@pytest.fixture
def relay() -> HookRelay:
    pm = get_plugin_manager(entry_points=False)
    pm.register(swarmbus_openclaw, name="openclaw")
    return HookRelay(pm)
