"""Shared fixtures: private brokers (see brokers.py), an isolated swarmbus environment, a CLI
runner and a daemon factory. Nothing here touches the machine's own services or the user's
real state: every test gets its own state dir, config path and broker port."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
pytest.register_assert_rewrite("brokers")

from brokers import *  # noqa: E402,F403 - the broker fixtures

REPO = Path(__file__).resolve().parent.parent
_SIGTERM = signal.SIGTERM
_SIGKILL = signal.SIGKILL


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` seconds pass (then fail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class SwarmEnv:
    """An isolated swarmbus environment: its own state dir, config file path and broker."""

    root: Path
    broker_url: str
    env: dict[str, str] = field(default_factory=dict)
    daemons: list[Daemon] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def cli(self, *args: str, input: str | None = None, timeout: float = 60, env: dict[str, str] | None = None,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run ``python -m swarmbus ARGS`` with this environment; returns the completed process."""
        proc = subprocess.run(
            [sys.executable, "-m", "swarmbus", *args],
            input=input, capture_output=True, text=True, timeout=timeout, env={**self.env, **(env or {})},
        )
        if check and proc.returncode != 0:
            pytest.fail(f"swarmbus {' '.join(args)} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc

    def store_path(self, agent_id: str) -> Path:
        return self.state_dir / "agents" / agent_id / "store.sqlite3"

    def status(self, agent_id: str) -> dict[str, Any] | None:
        from swarmbus.control import daemon_status
        from swarmbus.paths import AgentPaths

        return daemon_status(AgentPaths.for_agent(agent_id, self.state_dir).socket)

    def start_daemon(self, agent_id: str, *extra: str, env: dict[str, str] | None = None, wait: bool = True) -> Daemon:
        """Start ``swarmbus start --agent-id ID`` in its own process group; wait until its
        control socket answers and it is connected (unless ``wait`` is False)."""
        log_path = self.root / f"{agent_id}-{len(self.daemons)}.log"
        log = log_path.open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "swarmbus", "start", "--agent-id", agent_id, *extra],
            stdout=log, stderr=subprocess.STDOUT, env={**self.env, **(env or {})}, start_new_session=True,
        )
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
        def ready() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                pytest.fail(f"daemon {self.agent_id} exited {self.proc.returncode}:\n{self.log()}")
            status = self.env.status(self.agent_id)
            return status if status and status.get("connected") else None

        return wait_for(ready, timeout, what=f"daemon {self.agent_id} to connect")  # type: ignore[no-any-return]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        """SIGKILL the daemon's whole process group (the daemon and any wake children)."""
        os.killpg(self.proc.pid, _SIGKILL)
        self.proc.wait(10)

    def stop(self, sig: int = _SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        return int(self.proc.returncode)


def _base_env(root: Path, broker_url: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")}
    keep.update(
        SWARMBUS_STATE_DIR=str(root / "state"),
        SWARMBUS_CONFIG=str(root / "config.toml"),
        SWARMBUS_BROKER_URL=broker_url,
        SWARMBUS_HEARTBEAT_INTERVAL="1",
        SWARMBUS_RECONNECT_MIN="0.1",
        SWARMBUS_RECONNECT_MAX="0.5",
        SWARMBUS_LOAD_PLUGINS="",
        PYTHONUNBUFFERED="1",
    )
    (root / "config.toml").write_text("# test config\n")
    return keep


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
            with contextlib.suppress(ProcessLookupError):
                os.killpg(daemon.proc.pid, signal.SIGKILL)
            daemon.proc.wait(10)


def read_json_lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
