"""Fixtures for the opt-in tests against the real ``claude`` binary (``tox -e real-claude``).

``claude`` comes from ``SWARMBUS_REAL_CLAUDE`` (the tox env installs
``@anthropic-ai/claude-code`` with npm and sets it), else from PATH; without one the tests are
skipped. Claude Code talks only to a loopback Messages API mock (:mod:`messages_mock`), with
``HOME`` a temporary directory, so nothing touches your own ``~/.claude`` or the network.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parent))  # messages_mock, cc_real_support (unique names)

from cc_real_support import QUIET, RealBus
from messages_mock import MockServer, start_mock

from swarmbus import testing
from swarmbus.testing import BrokerConfig, find_mosquitto, free_port, start_broker


@pytest.fixture(scope="session")
def real_claude() -> str:
    path = os.environ.get("SWARMBUS_REAL_CLAUDE") or shutil.which("claude")
    if not path:
        pytest.skip("no real claude: run `tox -e real-claude` (it installs @anthropic-ai/claude-code with npm)")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"SWARMBUS_REAL_CLAUDE={path} is not an executable")
    return path


@pytest.fixture
def mock() -> Iterator[MockServer]:
    server = start_mock()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bus(tmp_path_factory: pytest.TempPathFactory, real_claude: str, mock: MockServer,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[RealBus]:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
    root = Path(tmp_path_factory.mktemp("realcc"))
    home = root / "home"
    home.mkdir()
    broker = start_broker(BrokerConfig(state_dir=root / "broker", port=free_port()))
    env = testing.isolated_env(
        root, broker.url, plugins="cc",
        HOME=str(home),
        SWARMBUS_HOST_TYPE="cc",
        SWARMBUS_WAKE_POLICY="all",
        ANTHROPIC_BASE_URL=mock.url,
        ANTHROPIC_API_KEY="sk-ant-dummy-swarmbus-test-0000000000",
        **QUIET,
    )
    # init steps run in this process: give it the same HOME and locators
    for key in ("HOME", "SWARMBUS_STATE_DIR", "SWARMBUS_CONFIG", "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY", *QUIET):
        monkeypatch.setenv(key, env[key])
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: home))
    b = RealBus(root, home, env, real_claude)
    b.config("")
    try:
        yield b
    finally:
        b.stop()
        broker.stop()
