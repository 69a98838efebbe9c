"""The keeper's policy (:mod:`swarmbus.keeper`) and the start/stop of a kept program
(:mod:`swarmbus.kept`), with a tiny fake program instead of the daemon: no broker, short backoff.
Every keeper started here is killed with its process group at teardown."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarmbus import kept
from swarmbus.keeper import Policy, verdict
from swarmbus.kept import KeptFiles
from swarmbus.testing import kill_process_group, pid_alive, wait_for

FAKE = """\
import os, signal, sys
from pathlib import Path

runs = Path(sys.argv[1])
with runs.open("a") as fh:
    fh.write(f"{os.getpid()}\\n")
count = len(runs.read_text().split())
mode = sys.argv[2]
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode.startswith("exit"):
    sys.exit(int(mode[4:]))
if mode == "crash-once" and count == 1:
    sys.exit(3)
signal.pause()
"""

FAST = ["--backoff", "0.01", "--max-backoff", "0.04", "--max-restarts", "3", "--window", "60"]


class Fake:
    """A keeper running the fake program in ``root``; its runs are listed in ``root/runs``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = KeptFiles(root, "fake")
        self.script = root / "fake.py"
        self.script.write_text(FAKE)
        self.keepers: list[subprocess.Popen[bytes]] = []

    def argv(self, mode: str) -> list[str]:
        return [sys.executable, str(self.script), str(self.root / "runs"), mode]

    def keeper(self, mode: str, *policy: str) -> subprocess.Popen[bytes]:
        f = self.files
        argv = [sys.executable, "-m", "swarmbus.keeper", "--lock", str(f.lock), "--state", str(f.state),
                "--pid-file", str(f.pid), "--name", "the fake", *(policy or FAST), "--", *self.argv(mode)]
        with f.log.open("ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        self.keepers.append(proc)
        return proc

    def runs(self) -> list[int]:
        path = self.root / "runs"
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    def state(self) -> dict[str, object]:
        return json.loads(self.files.state.read_text())

    def log(self) -> str:
        return self.files.log.read_text()

    def cleanup(self) -> None:
        for proc in self.keepers:
            if proc.poll() is None:
                kill_process_group(proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        for pid in self.runs():
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[Fake]:
    f = Fake(tmp_path)
    try:
        yield f
    finally:
        f.cleanup()


def test_policy_backoff_doubles_to_its_maximum() -> None:
    policy = Policy(1.0, 30.0, 5, 300.0)
    assert [policy.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    with pytest.raises(ValueError):
        Policy(backoff=5, max_backoff=1)


@pytest.mark.parametrize(("status", "restart", "code"), [
    (0, False, 0),                      # exit 0
    (2 << 8, False, 2),                 # exit 2: usage or configuration error
    (1 << 8, True, 1),                  # exit 1: a crash
    (signal.SIGKILL, True, 0),
    (signal.SIGSEGV, True, 0),
    (signal.SIGTERM, False, 0),         # stopped on purpose
    (signal.SIGINT, False, 0),
])
def test_verdict(status: int, restart: bool, code: int) -> None:
    text, again, exit_code = verdict(status)
    assert again is restart and text
    if not restart:
        assert exit_code == code


def test_it_gives_up_after_repeated_crashes(fake: Fake) -> None:
    keeper = fake.keeper("exit3")
    assert keeper.wait(30) == 1
    assert len(fake.runs()) == 4  # the first run and 3 restarts
    state = fake.state()
    assert state["state"] == "gave up" and state["restarts"] == 3 and state["child_pid"] is None
    assert state["last_exit"]["code"] == 3  # type: ignore[index]
    log = fake.log()
    assert log.count("exited with status 3") == 4
    for delay in ("0.01s", "0.02s", "0.04s"):  # backoff, doubling
        assert f"restarting it in {delay}" in log, log
    assert "giving up: it was restarted 3 times within the last 60s" in log, log
    assert not fake.files.pid.exists()
    assert fake.files.state.stat().st_mode & 0o777 == 0o600 and fake.files.lock.stat().st_mode & 0o777 == 0o600


def test_exit_2_is_not_restarted(fake: Fake) -> None:
    assert fake.keeper("exit2").wait(30) == 2
    assert len(fake.runs()) == 1
    assert "usage or configuration error" in fake.log() and "not restarted" in fake.log()
    assert fake.state()["restarts"] == 0


def test_exit_0_ends_the_keeper(fake: Fake) -> None:
    assert fake.keeper("exit0").wait(30) == 0
    assert len(fake.runs()) == 1 and fake.state()["state"] == "stopped"


def test_a_killed_child_is_restarted_and_sigterm_stops_both(fake: Fake) -> None:
    keeper = fake.keeper("run")
    first = wait_for(lambda: fake.runs()[:1], 15, "the first run")[0]
    wait_for(lambda: fake.files.pid.exists() and fake.files.pid.read_text().split() == [str(first)], 5, "the pid file")
    assert os.getsid(first) == keeper.pid  # the keeper leads the session
    os.kill(first, signal.SIGKILL)
    second = wait_for(lambda: fake.runs()[1:2], 15, "the restart")[0]
    wait_for(lambda: fake.state().get("child_pid") == second, 5, "the state to name the new child")
    assert fake.state()["restarts"] == 1 and "was killed by SIGKILL" in fake.log()
    assert fake.files.pid.read_text().split() == [str(second)]
    keeper.send_signal(signal.SIGTERM)
    assert keeper.wait(15) == 0
    assert not pid_alive(second) and len(fake.runs()) == 2
    assert "stopped on request, not restarted" in fake.log() and not fake.files.pid.exists()


def test_a_child_stopped_by_someone_else_is_not_restarted(fake: Fake) -> None:
    keeper = fake.keeper("run")
    child = wait_for(lambda: fake.runs()[:1], 15, "the first run")[0]
    wait_for(lambda: fake.state().get("child_pid") == child, 5, "the state")
    os.kill(child, signal.SIGTERM)
    assert keeper.wait(15) == 0 and len(fake.runs()) == 1
    assert "was killed by SIGTERM" in fake.log()


def test_a_second_keeper_on_the_same_lock_exits_at_once(fake: Fake) -> None:
    first = fake.keeper("run")
    wait_for(lambda: fake.runs()[:1], 15, "the first run")
    second = fake.keeper("run")
    assert second.wait(15) == 1 and len(fake.runs()) == 1
    assert f"held by keeper pid {first.pid}" in fake.log()
    assert first.poll() is None


def test_usage_errors_exit_2() -> None:
    for argv in ([], ["--lock", "x", "--", "true"], ["--lock", "l", "--state", "s", "--pid-file", "p", "--"],
                 ["--lock", "l", "--state", "s", "--pid-file", "p", "--backoff", "x", "--", "true"]):
        proc = subprocess.run([sys.executable, "-m", "swarmbus.keeper", *argv], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2 and "usage:" in proc.stderr and "Traceback" not in proc.stderr, (argv, proc.stderr)


# -- swarmbus.kept: start until ready, stop without a restart -------------------------------------
def test_start_waits_until_ready_and_stop_escalating_to_sigkill_never_restarts(fake: Fake) -> None:
    keeper, child = kept.start(fake.argv("ignore-term"), fake.files, os.environ, name="the fake",
                               ready=lambda pid: pid if pid and fake.runs() == [pid] else None, timeout=15,
                               policy=Policy(0.01, 0.04, 3, 60))
    found = kept.find_keeper(fake.files)
    assert found is not None and (found.pid, found.child) == (keeper, child)
    assert fake.files.log.stat().st_mode & 0o777 == 0o600
    # the child ignores SIGTERM: stop escalates to SIGKILL of the keeper's session, and nothing restarts it
    stopped, killed = kept.stop(fake.files, timeout=0.5)
    assert stopped is not None and stopped.pid == keeper and killed
    assert not pid_alive(keeper) and not pid_alive(child)
    assert kept.find_keeper(fake.files) is None and fake.runs() == [child]


def test_start_fails_when_the_program_exits_before_it_is_ready(fake: Fake) -> None:
    with pytest.raises(kept.StartFailed) as info:
        kept.start(fake.argv("crash-once"), fake.files, os.environ, name="the fake", ready=lambda pid: None,
                   timeout=15, policy=Policy(5, 5, 3, 60))
    assert "the fake exited with status 3" in str(info.value) and "before it was ready" in str(info.value)
    assert any("exited with status 3" in line for line in info.value.tail), info.value.tail
    # its keeper was stopped: no restart
    wait_for(lambda: kept.find_keeper(fake.files) is None, 10, "the keeper to be gone")
    assert len(fake.runs()) == 1
