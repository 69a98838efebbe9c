"""Helpers shared by the real-claude tests: constants and :class:`RealBus`."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from swarmbus import testing

report = testing.report_latency

AGENT = "coder"
QUIET = {"DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1"}
PASSTHROUGH = ["ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY", *QUIET]


@dataclass
class RealBus:
    """A broker, a temporary HOME, the swarmbus env for the daemon and for direct claude runs."""

    root: Path
    home: Path
    env: dict[str, str]
    claude: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    daemons: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def state(self) -> Path:
        return Path(self.env["SWARMBUS_STATE_DIR"]) / "agents" / AGENT

    def config(self, text: str) -> None:
        Path(self.env["SWARMBUS_CONFIG"]).write_text(text)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return testing.run_cli(self.env, *args, timeout=timeout)

    def send(self, body: str, subject: str = "task") -> None:
        proc = self.cli("send", "--agent-id", "planner", "--to", AGENT, "--subject", subject, "--body", body)
        assert proc.returncode == 0, proc.stderr

    def start_daemon(self, agent_id: str = AGENT) -> None:
        """Start ``agent_id``'s daemon (default: the agent's; another is a peer's) and wait until
        it is connected."""
        log_path = self.root / ("daemon.log" if agent_id == AGENT else f"daemon-{agent_id}.log")
        proc = testing.start_daemon(self.env, agent_id, log_path=log_path)
        self.procs.append(proc)
        self.daemons[agent_id] = proc
        testing.wait_daemon_connected(self.env, agent_id, proc, 30, log_path=log_path)

    def stop_daemon(self, agent_id: str) -> None:
        """Stop ``agent_id``'s daemon (SIGTERM, then SIGKILL) and wait until it is gone."""
        testing.stop_daemon(self.daemons.pop(agent_id))

    def log(self) -> str:
        path = self.root / "daemon.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for proc in self.procs:
            testing.stop_daemon(proc)
