"""``swarmbus init --host-type codex`` / ``swarmbus uninit`` end to end, as a user runs them.

A temporary HOME whose ``~/.codex/config.toml`` is the user's own (comments, a profile, another
MCP server with a token), the fake ``codex`` on PATH, the fake app-server on the discovered
socket, a private mosquitto, and the core's fake ``systemctl`` (:class:`swarmbus.testing.InitHome`),
which really runs the unit's daemon: init registers the MCP server and installs the skill, a
second init changes nothing, a message reaches the app-server as a turn, and uninit leaves
``~/.codex`` exactly as it was.
"""

from __future__ import annotations

import json
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_app_server import FakeAppServer
from test_codex_init import USER_CONFIG

from swarmbus import testing
from swarmbus.testing import BrokerConfig, find_mosquitto, free_port, pid_alive, start_broker
from swarmbus.testing import describe_run as out
from swarmbus_codex.install import skill_text

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")

AGENT = "cxagent"


class InitEnv(testing.InitHome):
    def __init__(self, home: Path, root: Path, broker_url: str) -> None:
        super().__init__(home, root, AGENT, plugins="codex")
        self.broker_url = broker_url

    @property
    def codex_config(self) -> Path:
        return self.home / ".codex" / "config.toml"

    @property
    def skill(self) -> Path:
        return self.home / ".codex" / "skills" / "swarmbus" / "SKILL.md"

    def init(self, *extra: str) -> Any:
        return self.swarmbus("init", "--agent-id", AGENT, "--host-type", "codex", "--broker", self.broker_url, *extra)


@pytest.fixture
def init_env(tmp_path_factory: pytest.TempPathFactory, home: Path, fake_codex: Any) -> Iterator[InitEnv]:
    root = Path(tmp_path_factory.mktemp("cxinit"))
    (home / ".codex").mkdir()
    (home / ".codex" / "config.toml").write_text(USER_CONFIG)
    broker = start_broker(BrokerConfig(state_dir=root / "broker", port=free_port()))
    env = InitEnv(home, root, broker.url)
    try:
        yield env
    finally:
        env.kill_daemons()
        broker.stop()


def test_init_second_init_wake_and_uninit(init_env: InitEnv) -> None:
    env = init_env
    before = env.tree()
    with FakeAppServer(env.home / ".codex" / "swarmbus-app-server.sock") as app_server:
        proc = env.init()
        text = out(proc)
        assert proc.returncode == 0, text
        assert f"{AGENT} is set up: its daemon runs as a user service and doctor passes" in proc.stdout, text
        assert "[✓] codex: skill: changed" in proc.stdout and "[✓] codex: mcp: changed" in proc.stdout, text
        assert "codex-cli 9.9.9-fake at " in proc.stdout, text

        config = env.codex_config.read_text()
        assert config.startswith(USER_CONFIG)  # the user's text, byte for byte
        entry = tomllib.loads(config)["mcp_servers"]["swarmbus"]
        assert entry == {"command": str(Path(sys.executable).parent / "swarmbus"),
                         "args": ["mcp-server", "--agent-id", AGENT],
                         "env": {"SWARMBUS_CONFIG": str(env.config_path), "SWARMBUS_STATE_DIR": str(env.state_dir)}}
        assert env.skill.read_text() == skill_text(AGENT)
        manifest = json.loads(env.manifest.read_text())
        assert manifest["host_type"] == "codex"
        assert "ghp_user_secret" not in env.manifest.read_text()  # the user's config is not copied into it

        # a second init: nothing to change
        tree = env.tree()
        ncalls = len(env.systemctl_calls())
        proc = env.init()
        assert proc.returncode == 0 and "nothing to change" in proc.stdout, out(proc)
        assert env.tree() == tree and env.mutating_calls(ncalls) == []

        # a message wakes Codex through the app-server (no thread yet: the waker starts one)
        body = f"MARKER-CX-INIT {time.time_ns()}"
        send = env.swarmbus("send", "--agent-id", "peer", "--to", AGENT, "--priority", "high", "--subject", "s",
                            "--body", body)
        assert send.returncode == 0, out(send)
        try:
            app_server.wait_for(lambda s: any(body in t for th in s.threads.values() for t in th.inputs), 30)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\ndaemon log:\n{env.daemon_log()}") from None
        assert [f.params["cwd"] for f in app_server.calls("thread/start")] == [
            str(env.state_dir / "agents" / AGENT / "codex-work")]
        pid = env.daemon_pid()

    # uninit: ~/.codex is as it was, byte for byte
    proc = env.swarmbus("uninit", "--agent-id", AGENT)
    assert proc.returncode == 0 and f"{AGENT}: what init wrote has been removed" in proc.stdout, out(proc)
    assert pid and not pid_alive(pid)
    assert env.codex_config.read_text() == USER_CONFIG and not env.skill.exists()
    assert {k: v for k, v in env.tree().items() if k.startswith(".codex/")} == {
        k: v for k, v in before.items() if k.startswith(".codex/")}
