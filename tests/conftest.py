"""Shared fixtures: private brokers (see brokers.py), an isolated swarmbus environment, a CLI
runner and a daemon factory. Nothing here touches the machine's own services or the user's
real state: every test gets its own state dir, config path and broker port."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from swarmbus import testing

sys.path.insert(0, str(Path(__file__).parent))
pytest.register_assert_rewrite("brokers")

from brokers import *  # noqa: E402,F403 - the broker fixtures

REPO = Path(__file__).resolve().parent.parent
_SIGTERM = signal.SIGTERM


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` seconds pass (then fail):
    :func:`swarmbus.testing.wait_for`, with this suite's argument order."""
    return testing.wait_for(predicate, timeout, what, interval)


@dataclass
class SwarmEnv:
    """An isolated swarmbus environment: its own state dir, config file path and broker."""

    root: Path
    broker_url: str
    env: dict[str, str] = field(default_factory=dict)
    daemons: list[Daemon] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return Path(self.env["SWARMBUS_STATE_DIR"])

    def cli(self, *args: str, input: str | None = None, timeout: float = 60, env: dict[str, str] | None = None,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run ``python -m swarmbus ARGS`` with this environment; returns the completed process."""
        proc = testing.run_cli({**self.env, **(env or {})}, *args, input=input, timeout=timeout)
        if check and proc.returncode != 0:
            pytest.fail(f"swarmbus {' '.join(args)} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc

    def store_path(self, agent_id: str) -> Path:
        return self.state_dir / "agents" / agent_id / "store.sqlite3"

    def status(self, agent_id: str) -> dict[str, Any] | None:
        return testing.agent_status(agent_id, self.state_dir)

    def start_daemon(self, agent_id: str, *extra: str, env: dict[str, str] | None = None, wait: bool = True) -> Daemon:
        """Start ``swarmbus start --agent-id ID`` in its own process group; wait until its
        control socket answers and it is connected (unless ``wait`` is False)."""
        log_path = self.root / f"{agent_id}-{len(self.daemons)}.log"
        proc = testing.start_daemon({**self.env, **(env or {})}, agent_id, *extra, log_path=log_path)
        daemon = Daemon(agent_id, proc, log_path, self)
        self.daemons.append(daemon)
        if wait:
            daemon.wait_connected()
        return daemon


@dataclass
class Daemon:
    agent_id: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    env: SwarmEnv

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_connected(self, timeout: float = 15.0) -> dict[str, Any]:
        return testing.wait_daemon_connected(self.env.env, self.agent_id, self.proc, timeout, log_path=self.log_path)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        """SIGKILL the daemon's whole process group (the daemon and any wake children)."""
        testing.kill_process_group(self.proc.pid)
        self.proc.wait(10)

    def stop(self, sig: int = _SIGTERM, timeout: float = 15.0) -> int:
        return testing.stop_daemon(self.proc, sig, timeout)


def _base_env(root: Path, broker_url: str) -> dict[str, str]:
    # the priority plugin (part of the default install) runs `start --invoke`; no other plugin loads
    env = testing.isolated_env(root, broker_url, heartbeat=1, reconnect=(0.1, 0.5), plugins="priority")
    (root / "config.toml").write_text("# test config\n")
    return env


@pytest.fixture
def swarm(tmp_path_factory: pytest.TempPathFactory, broker: Any) -> Iterator[SwarmEnv]:
    """A SwarmEnv on a private broker; every daemon it started is stopped at teardown.

    The state dir lives under a short /tmp path so the control socket path stays short."""
    root = Path(tmp_path_factory.mktemp("sb"))
    env = SwarmEnv(root, broker.url)
    env.env = _base_env(root, broker.url)
    env.broker = broker  # type: ignore[attr-defined]
    yield env
    for daemon in env.daemons:
        if daemon.proc.poll() is None:
            testing.kill_process_group(daemon.proc.pid)
            daemon.proc.wait(10)


def read_json_lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
