"""``swarmbus start --detach``, ``swarmbus stop`` and ``swarmbus status``, as a user runs them:
a private broker, an isolated state dir, and every daemon and keeper started here killed at
teardown. The keeper's policy itself is tested without a broker in ``tests/test_keeper.py``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
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

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = self.swarm.cli(*args, env=env) if env else self.swarm.cli(*args)
        self.remember()
        return proc

    def remember(self) -> None:
        for pid in (self.pid_file(), (self.status() or {}).get("pid"), self.keeper()):
            if isinstance(pid, int):
                self.pids.add(pid)

    def keeper(self) -> int | None:
        """The live keeper's pid (its lock says so), or None."""
        keepers = testing.keeper_pids(self.swarm.state_dir)
        return next(iter(keepers), None)

    def keeper_state(self) -> dict[str, Any]:
        path = self.paths.root / "keeper.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def status(self) -> dict[str, Any] | None:
        return self.swarm.status(AGENT)

    def pid_file(self) -> int | None:
        path = self.paths.root / "daemon.pid"
        return int(path.read_text().split()[0]) if path.exists() else None

    @property
    def log(self) -> Path:
        return self.paths.root / "daemon.log"

    def cleanup(self) -> None:
        self.remember()
        for pid in self.pids:
            with contextlib.suppress(OSError):
                if pid_alive(pid) and b"swarmbus" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    testing.kill_group_of(pid)


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
    # the daemon is the user's own, kept by a keeper that leads a session of its own, answering on its socket
    status = detached.status() or {}
    assert status.get("pid") == pid and status["supervisor"] == "detached", (status, detached.log.read_text())
    keeper = detached.keeper()
    assert keeper and os.getsid(pid) == keeper and os.getsid(keeper) == keeper and keeper != pid
    assert f"kept by pid {keeper}" in proc.stdout, text
    for path in (detached.log, detached.paths.root / "daemon.pid", detached.paths.root / "keeper.json",
                 detached.paths.root / "keeper.lock"):
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
    assert f"kept by pid {keeper} (0 restarts" in proc.stdout, text
    assert str(detached.log) in proc.stdout and f"{detached.swarm.broker_url}, connected" in proc.stdout, text
    info = json.loads(detached.cli("status", "--agent-id", AGENT, "--json").stdout)
    assert (info["running"], info["pid"], info["supervisor"], info["connected"]) == (True, pid, "detached", True)
    assert (info["keeper"]["pid"], info["keeper"]["restarts"]) == (keeper, 0)

    proc = detached.cli("stop", "--agent-id", AGENT)
    text = out(proc)
    assert proc.returncode == 0 and f"stopped {AGENT}'s daemon (pid {pid}, SIGTERM) and its keeper (pid {keeper})" \
        in proc.stdout, text
    assert not pid_alive(pid) and not pid_alive(keeper) and detached.status() is None
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


# -- the keeper ------------------------------------------------------------------------------------
def _started(detached: Detached) -> tuple[int, int]:
    """``start --detach`` and wait until connected: (daemon pid, keeper pid)."""
    proc = detached.cli("start", "--agent-id", AGENT, "--detach")
    assert proc.returncode == 0, out(proc)
    pid, keeper = detached.pid_file(), detached.keeper()
    assert pid and keeper, out(proc)
    wait_for(lambda: (detached.status() or {}).get("connected"), 15, what="the detached daemon to connect")
    return pid, keeper


def _quiet(detached: Detached, seconds: float) -> None:
    """Nothing comes back for ``seconds`` (a bounded check that no restart happens): no keeper,
    no daemon answering, no process holding the agent's session."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert detached.keeper() is None and detached.status() is None and not _lock_held(detached)
        time.sleep(0.1)


def _lock_held(detached: Detached) -> bool:
    from swarmbus.ownership import owner_of

    return owner_of(detached.paths.lock) is not None


def test_a_killed_daemon_is_restarted_by_its_keeper(detached: Detached) -> None:
    pid, keeper = _started(detached)
    os.kill(pid, signal.SIGKILL)
    status = wait_for(lambda: (s := detached.status()) and s.get("pid") not in (None, pid) and s, 30,
                      what="the keeper to restart the daemon")
    new = int(status["pid"])
    detached.pids.add(new)
    assert os.getsid(new) == keeper and detached.keeper() == keeper and detached.pid_file() == new
    log = detached.log.read_text()
    assert f"the daemon (pid {pid}) was killed by SIGKILL" in log and "restarting it in 1s (restart 1" in log, log
    proc = detached.cli("status", "--agent-id", AGENT)
    assert proc.returncode == 0 and f"kept by pid {keeper} (1 restart, last: the daemon was killed by SIGKILL" \
        in proc.stdout, out(proc)
    info = json.loads(detached.cli("status", "--agent-id", AGENT, "--json").stdout)
    assert info["keeper"]["restarts"] == 1 and info["keeper"]["last_exit"]["signal"] == signal.SIGKILL
    # start --detach: it runs, nothing new is started
    proc = detached.cli("start", "--agent-id", AGENT, "--detach")
    assert proc.returncode == 0 and f"already runs (pid {new}, detached" in proc.stdout, out(proc)

    # stop: both go, and the keeper does not start it again
    proc = detached.cli("stop", "--agent-id", AGENT)
    assert proc.returncode == 0 and f"and its keeper (pid {keeper})" in proc.stdout, out(proc)
    wait_for(lambda: not pid_alive(new) and not pid_alive(keeper), 15, what="the daemon and its keeper to be gone")
    _quiet(detached, 2.5)  # longer than the keeper's first backoff (1 s): a restart would show
    assert detached.pid_file() is None and not detached.paths.socket.exists()
    assert "stopped on request, not restarted" in detached.log.read_text()


def test_stop_escalating_to_sigkill_does_not_restart(detached: Detached) -> None:
    pid, keeper = _started(detached)
    os.kill(pid, signal.SIGSTOP)  # a stuck daemon: SIGTERM does nothing until SIGKILL
    try:
        proc = detached.cli("stop", "--agent-id", AGENT, "--timeout", "1")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    assert proc.returncode == 0 and "SIGKILL" in proc.stdout and f"its keeper (pid {keeper})" in proc.stdout, out(proc)
    assert not pid_alive(pid) and not pid_alive(keeper)
    _quiet(detached, 2.5)


def test_a_daemon_exiting_2_is_not_restarted(detached: Detached) -> None:
    pid, keeper = _started(detached)
    config = detached.swarm.root / "config.toml"
    config.write_text("this is = = not toml\n")  # the restarted daemon cannot read its config: exit 2
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(keeper), 30, what="the keeper to stop after the daemon's exit 2")
    state = detached.keeper_state()
    assert state["state"] == "stopped" and state["restarts"] == 1 and state["last_exit"]["code"] == 2, state
    log = detached.log.read_text()
    assert "exited with status 2 (a usage or configuration error" in log and "not restarted" in log, log
    assert "invalid TOML" in log
    config.write_text("# test config\n")
    proc = detached.cli("status", "--agent-id", AGENT)
    assert proc.returncode == 1 and f"{AGENT}: not running" in proc.stdout, out(proc)
    assert "its last detached run ended: the daemon" in proc.stdout and "exited with status 2" in proc.stdout, out(proc)


def test_start_detach_checks_the_wake_command_first(detached: Detached) -> None:
    proc = detached.cli("start", "--agent-id", AGENT, "--detach", "--invoke", "no-such-program-swarmbus --x")
    assert proc.returncode == 2 and "the wake command (--invoke / wake.command) cannot run" in proc.stderr, out(proc)
    assert "no-such-program-swarmbus" in proc.stderr
    assert not detached.log.exists() and detached.keeper() is None and detached.status() is None
