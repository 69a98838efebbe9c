"""Running host-agent child processes (wakes, CLI fallbacks) safely: one place for every waker.

- :func:`scrubbed_env` builds a child environment from an allow-list, so broker credentials
  (``SWARMBUS_BROKER_*``, ``MQTT_*``) and anything else of the daemon's never reach a process
  that handles untrusted peer content;
- :func:`run_child` runs an argv (never through a shell) in its own process group, makes the
  child die with the daemon (Linux ``PR_SET_PDEATHSIG``; libc is loaded in the parent, because
  loading a library in a child forked from a multithreaded process can deadlock), and kills the
  whole group when the awaiting task is cancelled (handler timeout, shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

BASE_ENV_ALLOW = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "XDG_RUNTIME_DIR")
"""Variables a child always gets from the daemon's environment (when set)."""
NEVER_PASSED = ("SWARMBUS_BROKER_", "MQTT_")
"""Prefixes that are never passed to a child, even when asked for."""


def scrubbed_env(extra_allow: Iterable[str] = (), base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allow-listed subset of ``base`` (default ``os.environ``): :data:`BASE_ENV_ALLOW` plus
    ``extra_allow``, minus anything starting with a :data:`NEVER_PASSED` prefix."""
    base = os.environ if base is None else base
    names = [*BASE_ENV_ALLOW, *extra_allow]
    return {k: base[k] for k in names if k in base and not k.upper().startswith(NEVER_PASSED)}


_PRCTL: list[Any] = []


def _prctl() -> Any:
    if not _PRCTL and sys.platform.startswith("linux"):
        import ctypes

        try:
            _PRCTL.append(ctypes.CDLL(None, use_errno=True).prctl)
        except (OSError, AttributeError):
            _PRCTL.append(None)
    return _PRCTL[0] if _PRCTL else None


def _die_with_parent(parent: int, prctl: Any) -> None:  # pragma: no cover - runs in the child
    if prctl is not None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die when the daemon dies
    if os.getppid() != parent:  # the daemon died before prctl took effect: no signal will come
        os._exit(1)


async def run_child(
    argv: Sequence[str],
    *,
    stdin: bytes | None = None,
    env: Mapping[str, str],
    cwd: str | Path | None = None,
    merge_stderr: bool = False,
) -> tuple[int, bytes, bytes]:
    """Run ``argv`` and return ``(exit code, stdout, stderr)`` (stderr is empty with
    ``merge_stderr``, its bytes being in stdout). ``stdin`` None means no input (/dev/null).

    :raises OSError: the executable cannot be started (e.g. not found).
    :raises asyncio.CancelledError: after the child's process group has been killed.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
        env=dict(env),
        cwd=str(cwd) if cwd is not None else None,
        start_new_session=True,
        preexec_fn=functools.partial(_die_with_parent, os.getpid(), _prctl()),
    )
    try:
        out, err = await proc.communicate(stdin)
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.shield(proc.wait())
        raise
    return (proc.returncode if proc.returncode is not None else -1), out, err or b""
