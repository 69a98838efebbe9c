"""Fixtures for the opt-in tests against the real ``codex`` (``tox -e real-codex``).

``codex`` comes from ``SWARMBUS_REAL_CODEX`` (the tox env installs ``@openai/codex`` with npm and
sets it), else from PATH; without one the tests are skipped. Codex talks only to a loopback
Responses API mock (:mod:`responses_mock`), with ``HOME`` (and so ``~/.codex``) a temporary
directory per test, so nothing touches your own ``~/.codex`` or the network.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parent))  # responses_mock, codex_real_support (unique names)

from codex_real_support import AGENT, CODEX_CONFIG, MOCK_KEY, RealBus
from responses_mock import ResponsesMock

from swarmbus import testing
from swarmbus.testing import BrokerConfig, find_mosquitto, free_port, start_broker


@pytest.fixture(scope="session")
def real_codex() -> str:
    path = os.environ.get("SWARMBUS_REAL_CODEX") or shutil.which("codex")
    if not path:
        pytest.skip("no real codex: run `tox -e real-codex` (it installs @openai/codex with npm)")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"SWARMBUS_REAL_CODEX={path} is not an executable")
    return path


@pytest.fixture
def mock() -> Iterator[ResponsesMock]:
    with ResponsesMock() as server:
        yield server


@pytest.fixture
def bus(tmp_path_factory: pytest.TempPathFactory, real_codex: str, mock: ResponsesMock,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[RealBus]:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
    root = Path(tmp_path_factory.mktemp("cxr"))  # short: the app-server socket lives under it
    home = root / "h"
    (home / ".codex").mkdir(parents=True)
    (home / ".codex" / "config.toml").write_text(CODEX_CONFIG.format(base_url=mock.base_url))
    broker = start_broker(BrokerConfig(state_dir=root / "broker", port=free_port()))
    env = testing.isolated_env(root, broker.url, plugins="codex", HOME=str(home), SWARMBUS_HOST_TYPE="codex",
                               SWARMBUS_WAKE_POLICY="all", NO_COLOR="1", **{MOCK_KEY: "mock-key"})
    env.pop("CODEX_HOME", None)
    # init steps run in this process: give it the same HOME and locators
    for key in ("HOME", "SWARMBUS_STATE_DIR", "SWARMBUS_CONFIG", MOCK_KEY):
        monkeypatch.setenv(key, env[key])
    monkeypatch.delenv("CODEX_HOME", raising=False)
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: home))
    b = RealBus(root, home, env, real_codex)
    b.config()
    try:
        yield b
    finally:
        b.stop()
        broker.stop()


__all__ = ["AGENT"]
