"""Exclusive ownership of an agent id's receive session, with ``flock`` on ``daemon.lock``.

Exactly one process at a time (the daemon, or a one-shot ``read``/``watch`` when no daemon
runs) may connect with the persistent client id ``swarmbus-<id>``; a second one would take
the session over and the two would kick each other off the broker (the predecessor's §3.2).
The lock is released by the kernel when the process dies, so a crash never leaves it stale.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from swarmbus.errors import OwnershipError


class Ownership:
    """Hold the lock for ``path``. :meth:`acquire` raises OwnershipError if it is taken."""

    def __init__(self, path: Path, role: str) -> None:
        self.path = path
        self.role = role
        self._fd: int | None = None

    def acquire(self) -> Ownership:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise OwnershipError(
                f"this agent id's receive session is owned by {holder}",
                hint="stop that process first, or read through it (swarmbus read/tail use the daemon's store)",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.role} pid {os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Ownership:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def owner_of(path: Path) -> str | None:
    """Who holds the lock (``"daemon pid 123"``), or None when nobody does (also when its
    directory is missing or is not a directory: no daemon could hold a lock there)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown process"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists on this host and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # no /proc (macOS): it exists, that is all we know
        return True
    return state not in ("Z", "X")
