"""A program run by a keeper (:mod:`swarmbus.keeper`) in a session of its own: start it and wait
until it is ready, find its keeper, read what the keeper recorded, stop the pair.

Used for the detached daemon (:mod:`swarmbus.supervise`) and the detached local broker
(:mod:`swarmbus.local_broker`). The files live in one private directory (:class:`KeptFiles`):
``<stem>.pid`` (the program's pid, written by the keeper), ``<stem>.log`` (the keeper's and the
program's output), ``keeper.lock`` and ``keeper.json`` (see :mod:`swarmbus.keeper`).

Which process is the keeper is decided by the lock only (held by a live process that wrote
``keeper pid N`` into it): a pid from a file is never signalled on its own word.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from swarmbus.errors import SwarmbusError
from swarmbus.keeper import Policy, read_state
from swarmbus.ownership import owner_of, pid_alive

T = TypeVar("T")

LOG_ROTATE_BYTES = 10 << 20
"""A log larger than this (10 MiB) is moved to ``<log>.1`` at the next start."""
_LOCK_RECORD = re.compile(r"\Akeeper pid (\d+)\Z")


@dataclass(frozen=True)
class KeptFiles:
    """The files of one kept program in ``root`` (a private directory), named after ``stem``
    (``daemon``, ``broker``)."""

    root: Path
    stem: str

    @property
    def pid(self) -> Path:
        """``<stem>.pid``: the program's current pid (the keeper rewrites it at each restart)."""
        return self.root / f"{self.stem}.pid"

    @property
    def log(self) -> Path:
        """``<stem>.log``: the keeper's lines and the program's stdout and stderr."""
        return self.root / f"{self.stem}.log"

    @property
    def lock(self) -> Path:
        """``keeper.lock``: held by the live keeper, reads ``keeper pid N``."""
        return self.root / "keeper.lock"

    @property
    def state(self) -> Path:
        """``keeper.json``: what the keeper recorded (see :mod:`swarmbus.keeper`)."""
        return self.root / "keeper.json"


@dataclass(frozen=True)
class Keeper:
    """A live keeper: its ``pid`` and the ``state`` it recorded (``{}`` when unreadable or
    not its own)."""

    pid: int
    state: dict[str, Any]

    @property
    def child(self) -> int | None:
        """The program's pid while it runs, else None (between restarts)."""
        child = self.state.get("child_pid")
        return child if isinstance(child, int) else None

    @property
    def restarts(self) -> int:
        return int(self.state.get("restarts") or 0)


def find_keeper(files: KeptFiles) -> Keeper | None:
    """The live keeper holding ``files.lock``, or None."""
    match = _LOCK_RECORD.match(owner_of(files.lock) or "")
    if not match or not pid_alive(int(match.group(1))):
        return None
    pid = int(match.group(1))
    state = read_state(str(files.state)) or {}
    return Keeper(pid, state if state.get("keeper_pid") == pid else {})


def last_run(files: KeptFiles) -> dict[str, Any] | None:
    """What the last keeper recorded (its state file), whether or not it still runs."""
    return read_state(str(files.state))


def describe_last_exit(state: dict[str, Any] | None) -> str | None:
    """``"exited with status 1 at 2025-01-02 03:04:05"`` from a keeper state, or None."""
    last = (state or {}).get("last_exit")
    if not isinstance(last, dict):
        return None
    at = last.get("at")
    when = time.strftime(" at %Y-%m-%d %H:%M:%S", time.localtime(at)) if isinstance(at, int | float) else ""
    return f"{last.get('text', 'exited')}{when}"


class StartFailed(SwarmbusError):
    """The kept program exited, or was not ready in time (then the keeper was stopped). ``log``
    is the log file, ``tail`` its last lines written by this start, ``other_keeper`` the pid of
    another keeper that held the lock (two starts at once), else None."""

    def __init__(self, message: str, *, log: Path, tail: list[str], other_keeper: int | None = None) -> None:
        super().__init__(message, hint=f"the whole log is {log}")
        self.log = log
        self.tail = tail
        self.other_keeper = other_keeper


def log_tail(path: Path, offset: int = 0, lines: int = 20) -> list[str]:
    """The last ``lines`` lines of ``path`` written after byte ``offset`` (at most 64 KiB read)."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(offset, size - 65536))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def _open_log(files: KeptFiles, banner: str) -> tuple[int, int]:
    """Open the log for appending (0600; rotated when too large): (fd, offset)."""
    log = files.log
    with contextlib.suppress(OSError):
        if log.stat().st_size > LOG_ROTATE_BYTES:
            os.replace(log, log.with_name(log.name + ".1"))
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    offset = os.fstat(fd).st_size
    os.write(fd, f"--- {banner} at {time.strftime('%Y-%m-%dT%H:%M:%S%z')} ---\n".encode())
    return fd, offset


def keeper_argv(argv: Sequence[str], files: KeptFiles, name: str, policy: Policy | None = None) -> list[str]:
    """``python -m swarmbus.keeper ... -- ARGV`` for ``files``."""
    policy = policy or Policy()
    return [sys.executable, "-m", "swarmbus.keeper", "--lock", str(files.lock), "--state", str(files.state),
            "--pid-file", str(files.pid), "--name", name, "--backoff", f"{policy.backoff:g}",
            "--max-backoff", f"{policy.max_backoff:g}", "--max-restarts", str(policy.max_restarts),
            "--window", f"{policy.window:g}", "--", *argv]


def wait_gone(pids: Sequence[int], timeout: float) -> bool:
    """Whether every pid in ``pids`` is gone (dead or a reaped zombie) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _kill_session(keeper: int) -> None:
    """SIGKILL the keeper's process group (it leads one: itself, the program and what the
    program did not move to a group of its own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(keeper) == keeper:
            os.killpg(keeper, signal.SIGKILL)
        else:
            os.kill(keeper, signal.SIGKILL)


def start(argv: Sequence[str], files: KeptFiles, env: Mapping[str, str], *, name: str,
          ready: Callable[[int | None], T | None], timeout: float, policy: Policy | None = None) -> tuple[int, T]:
    """Start ``argv`` under a keeper, detached: a new session, stdin /dev/null, stdout and
    stderr appended to ``files.log``, environment ``env`` (passed on unchanged). Wait up to
    ``timeout`` seconds until ``ready(child_pid)`` (called every 50 ms with the program's current
    pid, or None) returns something; return (keeper pid, that value).

    :raises StartFailed: the program exited before it was ready (the keeper is stopped, so it is
        not restarted), the keeper exited (``other_keeper`` set when another keeper holds the
        lock), or it was not ready in time (both are stopped).
    """
    fd, offset = _open_log(files, f"{name}: started by swarmbus")
    log = files.log
    try:
        proc = subprocess.Popen(keeper_argv(argv, files, name, policy), stdin=subprocess.DEVNULL, stdout=fd,
                                stderr=fd, env=dict(env), start_new_session=True)
    except OSError as exc:
        raise StartFailed(f"cannot run {sys.executable}: {exc.strerror}", log=log, tail=[]) from None
    finally:
        os.close(fd)
    deadline = time.monotonic() + timeout

    def fail(message: str, other: int | None = None) -> StartFailed:
        if proc.poll() is None:
            stop_keeper(proc.pid, timeout=5.0)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        return StartFailed(message, log=log, tail=log_tail(log, offset), other_keeper=other)

    while True:
        state = read_state(str(files.state)) or {}
        ours = state if state.get("keeper_pid") == proc.pid else {}
        child = ours.get("child_pid") if isinstance(ours.get("child_pid"), int) else None
        value = ready(child)
        if value:
            proc.returncode = 0  # it runs on without us: no "still running" warning when proc is collected
            return proc.pid, value
        last = ours.get("last_exit")
        if isinstance(last, dict):
            raise fail(f"{name} {last.get('text', 'exited')} before it was ready (so it was not restarted)")
        code = proc.poll()
        if code is not None:
            if ours:
                raise fail(f"{name} could not be started: {ours.get('reason') or f'its keeper exited with status {code}'}")
            other = find_keeper(files)
            raise fail(f"{name}'s keeper exited with status {code} before it started it"
                       + (f": keeper pid {other.pid} already keeps it" if other else ""),
                       other.pid if other else None)
        if time.monotonic() > deadline:
            raise fail(f"{name} was not ready within {timeout:g}s; it was stopped")
        time.sleep(0.05)


def stop_keeper(keeper: int, *, timeout: float, child: int | None = None) -> bool:
    """SIGTERM keeper ``keeper`` (it forwards SIGTERM to its program, waits for it and exits
    without restarting it); after ``timeout`` seconds SIGKILL its whole process group. Returns
    whether SIGKILL was needed.

    :raises SwarmbusError: it cannot be signalled (another user's), or would not die.
    """
    try:
        os.kill(keeper, signal.SIGTERM)
    except ProcessLookupError:
        return False
    except PermissionError:
        raise SwarmbusError(f"not allowed to signal pid {keeper} (another user's process)") from None
    pids = [keeper, *([child] if child else [])]
    if wait_gone(pids, timeout):
        return False
    _kill_session(keeper)
    if child and pid_alive(child):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child, signal.SIGKILL)
    if not wait_gone(pids, 5.0):
        raise SwarmbusError(f"keeper pid {keeper} (or its program) is still alive after SIGKILL")
    return True


def stop(files: KeptFiles, *, timeout: float) -> tuple[Keeper | None, bool]:
    """Stop the keeper of ``files`` and its program (see :func:`stop_keeper`): (the keeper that
    was stopped or None when none runs, whether SIGKILL was needed)."""
    keeper = find_keeper(files)
    if keeper is None:
        return None, False
    return keeper, stop_keeper(keeper.pid, timeout=timeout, child=keeper.child)
