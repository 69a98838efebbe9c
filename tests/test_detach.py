"""``swarmbus start --detach``, ``swarmbus stop`` and ``swarmbus status``, as a user runs them:
a private broker, an isolated state dir, and every daemon started here killed at teardown."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import SwarmEnv, wait_for
from swarmbus import testing
from swarmbus.ownership import Ownership
from swarmbus.paths import AgentPaths
from swarmbus.testing import describe_run as out
from swarmbus.testing import pid_alive

AGENT = "coder"

pytestmark = pytest.mark.broker


class Detached:
    """The swarm environment, plus what ``start --detach`` leaves in the agent's state dir; every
    daemon pid seen is killed at teardown."""

    def __init__(self, swarm: SwarmEnv) -> None:
        self.swarm = swarm
        self.paths = AgentPaths.for_agent(AGENT, swarm.state_dir)
        self.pids: set[int] = set()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = self.swarm.cli(*args)
        for pid in (self.pid_file(), (self.status() or {}).get("pid")):
            if isinstance(pid, int):
                self.pids.add(pid)
        return proc

    def status(self) -> dict[str, Any] | None:
        return self.swarm.status(AGENT)

    def pid_file(self) -> int | None:
        path = self.paths.root / "daemon.pid"
        return int(path.read_text().split()[0]) if path.exists() else None

    @property
    def log(self) -> Path:
        return self.paths.root / "daemon.log"

    def cleanup(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(OSError):
                if pid_alive(pid) and b"swarmbus" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    testing.kill_process_group(pid)


@pytest.fixture
def detached(swarm: SwarmEnv) -> Iterator[Detached]:
    d = Detached(swarm)
    try:
        yield d
    finally:
        d.cleanup()


def test_start_detach_status_and_stop(detached: Detached) -> None:
    proc = detached.cli("start", "--agent-id", AGENT, "--detach")
    text = out(proc)
    assert proc.returncode == 0, text
    pid = detached.pid_file()
    assert pid and pid_alive(pid), text
    assert f"started {AGENT}'s daemon: pid {pid}" in proc.stdout and str(detached.log) in proc.stdout, text
    # the daemon is the user's own, in a session of its own, answering on its socket
    status = detached.status() or {}
    assert status.get("pid") == pid and status["supervisor"] == "detached", (status, detached.log.read_text())
    assert os.getsid(pid) == pid
    for path in (detached.log, detached.paths.root / "daemon.pid"):
        assert path.stat().st_mode & 0o777 == 0o600, path
    wait_for(lambda: (detached.status() or {}).get("connected"), 15, what="the detached daemon to connect")

    # already running: says so, exit 0, the same daemon, and cheap (no pydantic, no paho)
    proc = detached.cli("start", "--agent-id", AGENT, "--detach")
    assert proc.returncode == 0 and f"{AGENT}'s daemon already runs (pid {pid}, detached" in proc.stdout, out(proc)
    assert detached.pid_file() == pid
    probe = ("import sys; from swarmbus.cli.main import main; code = main(['start', '--agent-id', 'coder', "
             "'--detach']); print('heavy:', sorted(m for m in ('pydantic', 'paho', 'pluggy') if m in sys.modules)); "
             "sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=detached.swarm.env,
                          timeout=60)
    assert proc.returncode == 0 and "heavy: []" in proc.stdout, out(proc)

    proc = detached.cli("status", "--agent-id", AGENT)
    text = out(proc)
    assert proc.returncode == 0, text
    assert f"{AGENT}: running (pid {pid})" in proc.stdout and "supervisor: detached" in proc.stdout, text
    assert str(detached.log) in proc.stdout and f"{detached.swarm.broker_url}, connected" in proc.stdout, text
    info = json.loads(detached.cli("status", "--agent-id", AGENT, "--json").stdout)
    assert (info["running"], info["pid"], info["supervisor"], info["connected"]) == (True, pid, "detached", True)

    proc = detached.cli("stop", "--agent-id", AGENT)
    text = out(proc)
    assert proc.returncode == 0 and f"stopped {AGENT}'s daemon (pid {pid}, SIGTERM)" in proc.stdout, text
    assert not pid_alive(pid) and detached.status() is None
    assert detached.pid_file() is None and detached.log.exists()  # the log stays for the user to read
    # it said goodbye: the log has its clean shutdown
    assert "offline presence" in detached.log.read_text()

    proc = detached.cli("status", "--agent-id", AGENT)
    assert proc.returncode == 1 and f"{AGENT}: not running" in proc.stdout, out(proc)
    assert json.loads(detached.cli("status", "--agent-id", AGENT, "--json").stdout)["running"] is False
    proc = detached.cli("stop", "--agent-id", AGENT)
    assert proc.returncode == 0 and "is not running" in proc.stdout, out(proc)


def test_a_foreground_daemon_counts_as_running(detached: Detached) -> None:
    daemon = detached.swarm.start_daemon(AGENT)
    proc = detached.cli("start", "--agent-id", AGENT, "--detach")
    assert proc.returncode == 0 and f"already runs (pid {daemon.proc.pid}, foreground" in proc.stdout, out(proc)
    assert detached.pid_file() is None
    proc = detached.cli("status", "--agent-id", AGENT)
    assert proc.returncode == 0 and "supervisor: foreground" in proc.stdout, out(proc)
    # stop signals only that process (not its process group: it is not a session leader of its own)
    proc = detached.cli("stop", "--agent-id", AGENT)
    assert proc.returncode == 0 and f"(pid {daemon.proc.pid}, SIGTERM)" in proc.stdout, out(proc)
    assert daemon.proc.wait(15) == 0


def test_a_daemon_that_dies_at_start_exits_1_with_the_log_tail(detached: Detached) -> None:
    # a one-shot reader holds the agent's session: the new daemon cannot own it and exits
    detached.paths.ensure()
    holder = Ownership(detached.paths.lock, "read").acquire()
    try:
        started = time.monotonic()
        proc = detached.cli("start", "--agent-id", AGENT, "--detach")
        elapsed = time.monotonic() - started
    finally:
        holder.release()
    text = out(proc)
    assert proc.returncode == 1, text
    assert f"could not start {AGENT}'s daemon: the daemon exited with status 1 before it was ready" in proc.stderr, text
    assert f"last lines of {detached.log}" in proc.stderr and f"owned by read pid {os.getpid()}" in proc.stderr, text
    assert elapsed < 30, elapsed  # it noticed the exit; it did not wait out a deadline
    assert detached.pid_file() is None and detached.status() is None


def test_a_bad_config_fails_before_anything_is_spawned(detached: Detached) -> None:
    proc = detached.swarm.cli("start", "--agent-id", AGENT, "--detach", env={"SWARMBUS_HANDLER_CONCURRENCY": "0"})
    assert proc.returncode == 2 and "handler_concurrency" in proc.stderr, out(proc)
    assert not detached.log.exists()


def test_stop_never_signals_a_pid_that_is_not_the_daemon(detached: Detached) -> None:
    # a stale pid file whose pid now belongs to an unrelated process (pid reuse)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        detached.paths.ensure()
        (detached.paths.root / "daemon.pid").write_text(f"{other.pid}\n")
        proc = detached.cli("stop", "--agent-id", AGENT)
        text = out(proc)
        assert proc.returncode == 0 and f"{AGENT}'s daemon is not running" in proc.stdout, text
        assert f"pid {other.pid}, which is not this agent's daemon" in proc.stdout and "not signalled" in proc.stdout
        assert other.poll() is None  # still alive
        assert detached.pid_file() is None  # the stale pid file is gone
        proc = detached.cli("status", "--agent-id", AGENT)
        assert proc.returncode == 1 and "not running" in proc.stdout, out(proc)
    finally:
        with contextlib.suppress(ProcessLookupError):
            other.kill()
        other.wait(10)


def test_usage_errors_exit_2(detached: Detached) -> None:
    for args in (["stop"], ["status"], ["start", "--detach"], ["stop", "--agent-id", "Bad Id"],
                 ["stop", "--agent-id", AGENT, "--timeout", "0"]):
        proc = detached.swarm.cli(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (args, out(proc))
