"""Helpers shared by the real-claude tests: constants, ``wait_for`` and :class:`RealBus`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from swarmbus import AgentPaths
from swarmbus.control import daemon_status  # internal: fine in tests

AGENT = "coder"
QUIET = {"DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1"}
PASSTHROUGH = ["ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY", *QUIET]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class RealBus:
    """A broker, a temporary HOME, the swarmbus env for the daemon and for direct claude runs."""

    root: Path
    home: Path
    env: dict[str, str]
    claude: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def state(self) -> Path:
        return Path(self.env["SWARMBUS_STATE_DIR"]) / "agents" / AGENT

    def config(self, text: str) -> None:
        Path(self.env["SWARMBUS_CONFIG"]).write_text(text)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "swarmbus", *args], capture_output=True, text=True,
                              timeout=timeout, env=self.env)

    def send(self, body: str, subject: str = "task") -> None:
        proc = self.cli("send", "--agent-id", "planner", "--to", AGENT, "--subject", subject, "--body", body)
        assert proc.returncode == 0, proc.stderr

    def start_daemon(self) -> None:
        log = (self.root / "daemon.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "swarmbus", "start", "--agent-id", AGENT], stdout=log,
                                stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.procs.append(proc)
        socket = AgentPaths.for_agent(AGENT, self.env["SWARMBUS_STATE_DIR"]).socket

        def connected() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"daemon exited {proc.returncode}:\n{self.log()}")
            return bool((daemon_status(socket) or {}).get("connected"))

        wait_for(connected, 30, "the daemon to connect")

    def log(self) -> str:
        path = self.root / "daemon.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
