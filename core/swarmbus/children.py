"""Running host-agent child processes (wakes, CLI fallbacks) safely: one place for every waker.

- :func:`scrubbed_env` builds a child environment from an allow-list, so broker credentials
  (``SWARMBUS_BROKER_*``, ``MQTT_*``) and anything else of the daemon's never reach a process
  that handles untrusted peer content;
- :func:`run_child` runs an argv (never through a shell) in its own process group (session),
  kills the whole group when the awaiting task is cancelled (handler timeout, shutdown), and
  registers it with the daemon's :class:`ChildReaper` so that it dies with the daemon, even when
  the daemon is killed with SIGKILL.

Children are spawned with ``posix_spawn`` (or ``subprocess.Popen`` when a ``cwd`` is given), never
with ``preexec_fn``: glibc spawns with ``CLONE_VFORK`` (a few hundred microseconds instead of
copying a large daemon's page tables, and no Python code in the child).
The die-with-the-daemon guarantee that ``PR_SET_PDEATHSIG`` gave before is kept by the reaper: a
tiny ``/bin/sh`` process (started with the first child), in a session of its own so a signal to the daemon's process group
spares it, that reads ``+PGID``/``-PGID`` lines from a pipe only the daemon holds; when the pipe
closes (the daemon exited or died) it SIGKILLs every process group still registered, and (on
Linux) every process carrying this daemon run's random mark in ``SWARMBUS_CHILD_OF`` (a child
started in the instant the daemon died, before it was registered), then exits. It runs fixed
code and is only ever sent process-group numbers; it costs about 2 MB.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO

BASE_ENV_ALLOW = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "XDG_RUNTIME_DIR")
"""Variables a child always gets from the daemon's environment (when set)."""
NEVER_PASSED = ("SWARMBUS_BROKER_", "MQTT_")
"""Prefixes that are never passed to a child, even when asked for."""
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def check_env_passthrough(names: Iterable[str], host: str) -> list[str]:
    """Validate a host plugin's ``env_passthrough`` list: the variable names a user asks to pass
    to ``host``'s wake children (e.g. ``ANTHROPIC_API_KEY``). Returns them as a list.

    :raises ValueError: a name is not an environment variable name, or it starts with a
        :data:`NEVER_PASSED` prefix (broker settings and credentials are never passed). The
        message names the variable and ``host``, for a pydantic ``field_validator`` to report.
    """
    out = list(names)
    for name in out:
        if not _ENV_NAME.match(name):
            raise ValueError(f"{name!r} is not an environment variable name")
        if name.upper().startswith(NEVER_PASSED):
            raise ValueError(f"{name} carries broker settings or credentials and is never passed to {host}")
    return out


def scrubbed_env(extra_allow: Iterable[str] = (), base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allow-listed subset of ``base`` (default ``os.environ``): :data:`BASE_ENV_ALLOW` plus
    ``extra_allow``, minus anything starting with a :data:`NEVER_PASSED` prefix."""
    base = os.environ if base is None else base
    names = [*BASE_ENV_ALLOW, *extra_allow]
    return {k: base[k] for k in names if k in base and not k.upper().startswith(NEVER_PASSED)}


_REAPER_SCRIPT = r"""
trap '' HUP INT TERM PIPE
live=" "
while read -r op pg; do
  case $pg in ''|*[!0-9]*) continue ;; esac
  case $op in
    +) live="$live$pg " ;;
    -) case $live in *" $pg "*) live="${live%% $pg *} ${live#* $pg }" ;; esac ;;
  esac
done
for pg in $live; do kill -s KILL -- "-$pg" 2>/dev/null; done
# a child started in the instant the daemon died, before it was registered, carries the mark
for f in $(grep -lzx "SWARMBUS_CHILD_OF=$1" /proc/[0-9]*/environ 2>/dev/null); do
  pid=${f#/proc/}; pid=${pid%/environ}
  kill -s KILL -- "-$pid" 2>/dev/null; kill -s KILL "$pid" 2>/dev/null
done
"""


class ChildReaper:
    """Kills registered child process groups when this process goes away (see the module
    docstring). One per daemon: :meth:`install` makes it the one :func:`run_child` uses; its
    process starts with the first child (an idle daemon has none)."""

    current: ChildReaper | None = None

    def __init__(self) -> None:
        self.mark = os.urandom(12).hex()
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def install(cls) -> ChildReaper:
        reaper = cls()
        cls.current = reaper
        return reaper

    def ensure_running(self) -> None:
        """Start the reaper process if it is not running (before a child is started). Without
        ``/bin/sh`` it stays a no-op: children are still killed on timeout and shutdown, just
        not after a SIGKILL of the daemon."""
        if self._proc is not None and self._proc.poll() is None:
            return
        try:
            self._proc = subprocess.Popen(
                ["/bin/sh", "-c", _REAPER_SCRIPT, "swarmbus-reaper", self.mark], stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                env={"PATH": "/usr/bin:/bin"},
            )
        except OSError:
            self._proc = None

    def _send(self, line: str) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        try:
            proc.stdin.write(line.encode())
            proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            self._proc = None  # it died: the next child starts a new one

    def track(self, pgid: int) -> None:
        self._send(f"+ {pgid}\n")

    def untrack(self, pgid: int) -> None:
        self._send(f"- {pgid}\n")

    def close(self) -> None:
        """Let the reaper kill what is still registered and exit; wait for it briefly."""
        proc, self._proc = self._proc, None
        if ChildReaper.current is self:
            ChildReaper.current = None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


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

    The child is registered with the reaper right after it starts (no await in between), and
    carries the reaper's mark in ``SWARMBUS_CHILD_OF`` for the instant before that.

    :raises OSError: the executable cannot be started (e.g. not found).
    :raises asyncio.CancelledError: after the child's process group has been killed.
    """
    loop = asyncio.get_running_loop()
    reaper = ChildReaper.current
    if reaper is not None:
        reaper.ensure_running()
        env = {**env, "SWARMBUS_CHILD_OF": reaper.mark}
    child = _Child(argv, env, cwd, stdin is not None, merge_stderr)
    if reaper is not None:
        reaper.track(child.pid)
    try:
        io = [_feed(loop, child.stdin, stdin or b""), _drain(loop, child.stdout), _drain(loop, child.stderr)]
        _, out, err = await asyncio.gather(*io)
        code = await child.exited(loop)
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.shield(child.exited(loop))
        raise
    finally:
        if reaper is not None:
            reaper.untrack(child.pid)
        child.close()
    return code, out, err


def find_program(name: str, configured: str | None = None) -> str | None:
    """The executable a host plugin runs: ``configured`` when given (``~`` expanded; a bare name
    is looked up on ``PATH``, a path must be an executable file), else ``name`` on ``PATH``, else
    ``~/.local/bin/<name>`` or ``/usr/local/bin/<name>`` (where npm and installers put it but a
    service's ``PATH`` may not reach). None when there is none."""
    import shutil

    if configured:
        path = os.path.expanduser(configured)
        if os.sep not in path:
            return shutil.which(path)
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    found = shutil.which(name)
    if found:
        return found
    for candidate in (Path.home() / ".local" / "bin" / name, Path("/usr/local/bin") / name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def program_problem(program: str, env: Mapping[str, str] | None = None) -> str | None:
    """Why ``program`` (a wake command's ``argv[0]``) cannot be run, or None when it can: looked up
    on ``env``'s ``PATH`` (default: the scrubbed environment a child gets, so the daemon's
    ``PATH``) unless it contains a ``/``, in which case that path (relative to the current
    directory) must be an executable file. The text says what is wrong and with which PATH."""
    env = scrubbed_env() if env is None else env
    if os.sep not in program:
        try:
            _resolve(program, env)
        except FileNotFoundError:
            return f"{program!r} is not found on PATH ({env.get('PATH', os.defpath)})"
        return None
    path = Path(program)
    if not path.exists():
        return f"{program} does not exist"
    if path.is_dir():
        return f"{program} is a directory"
    if not os.access(path, os.X_OK):
        return f"{program} is not executable (chmod +x {program})"
    return None


def _resolve(program: str, env: Mapping[str, str]) -> str:
    """``program`` looked up on the child's ``PATH`` (as ``subprocess`` does; ``posix_spawnp``
    would search the daemon's). :raises FileNotFoundError: not found there."""
    if os.sep in program:
        return program
    import shutil

    found = shutil.which(program, path=env.get("PATH", os.defpath))
    if found is None:
        raise FileNotFoundError(2, f"{program} not found on the child's PATH", program)
    return found


class _Child:
    """A started child: its pid, and our ends of its stdin/stdout/stderr pipes (None when
    unused). Started with ``posix_spawn`` (no Python runs between the fork and the exec, and
    glibc spawns with ``CLONE_VFORK``); with a ``cwd``, which ``posix_spawn`` cannot set before
    Python 3.13, with ``subprocess.Popen`` (also vfork: no ``preexec_fn``)."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], cwd: str | Path | None, feed: bool,
                 merge_stderr: bool) -> None:
        self.stdin: IO[bytes] | None = None
        self.stdout: IO[bytes] | None = None
        self.stderr: IO[bytes] | None = None
        self._popen: subprocess.Popen[bytes] | None = None
        self._code: int | None = None
        if cwd is not None:
            popen = subprocess.Popen(
                list(argv), stdin=subprocess.PIPE if feed else subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE, env=dict(env), cwd=str(cwd),
                start_new_session=True,
            )
            self._popen, self.pid = popen, popen.pid
            self.stdin, self.stdout, self.stderr = popen.stdin, popen.stdout, popen.stderr
            return
        ours: list[int] = []  # the parent's ends, kept
        theirs: list[int] = []  # the child's ends, closed once it runs
        actions: list[tuple[int, int, int] | tuple[int, int, str, int, int]] = []
        try:
            if feed:
                r, w = os.pipe()
                ours.append(w)
                theirs.append(r)
                actions.append((os.POSIX_SPAWN_DUP2, r, 0))
            else:
                actions.append((os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0))
            r, w = os.pipe()
            ours.append(r)
            theirs.append(w)
            actions.append((os.POSIX_SPAWN_DUP2, w, 1))
            if merge_stderr:
                actions.append((os.POSIX_SPAWN_DUP2, w, 2))
            else:
                r2, w2 = os.pipe()
                ours.append(r2)
                theirs.append(w2)
                actions.append((os.POSIX_SPAWN_DUP2, w2, 2))
            # our other descriptors are all close-on-exec (Python opens them so; SQLite too)
            self.pid = os.posix_spawn(_resolve(argv[0], env), list(argv), dict(env), file_actions=actions,
                                      setsid=True)
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        fds = iter(ours)
        self.stdin = os.fdopen(next(fds), "wb", buffering=0) if feed else None
        self.stdout = os.fdopen(next(fds), "rb", buffering=0)
        self.stderr = None if merge_stderr else os.fdopen(next(fds), "rb", buffering=0)

    async def exited(self, loop: asyncio.AbstractEventLoop) -> int:
        """The child's exit code (negative: the signal that ended it), awaited without a thread
        where the OS allows (Linux pidfd)."""
        if self._code is None:
            popen = self._popen
            if popen is not None:
                if popen.poll() is None and not await _until_exited(loop, self.pid):
                    await asyncio.to_thread(popen.wait)
                self._code = popen.wait()
            elif await _until_exited(loop, self.pid):
                self._code = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
            else:
                self._code = os.waitstatus_to_exitcode((await asyncio.to_thread(os.waitpid, self.pid, 0))[1])
        return self._code

    def close(self) -> None:
        for pipe in (self.stdin, self.stdout, self.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, *, write: bool = False) -> None:
    """Return once ``fd`` is readable (or writable), without a thread."""
    ready: asyncio.Future[None] = loop.create_future()
    add, remove = (loop.add_writer, loop.remove_writer) if write else (loop.add_reader, loop.remove_reader)

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    add(fd, wake)
    try:
        await ready
    finally:
        remove(fd)


async def _until_exited(loop: asyncio.AbstractEventLoop, pid: int) -> bool:
    """Return once the child ``pid`` has exited (it is not reaped); False at once when the OS
    cannot tell without a thread (no pidfd: not Linux >= 5.3)."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return False
    try:
        await _ready(loop, pidfd)
    finally:
        os.close(pidfd)
    return True


async def _feed(loop: asyncio.AbstractEventLoop, pipe: IO[bytes] | None, data: bytes) -> bytes:
    """Write ``data`` to the child's stdin without blocking the loop, then close it."""
    if pipe is None:
        return b""
    fd = pipe.fileno()
    os.set_blocking(fd, False)
    view = memoryview(data)
    try:
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                await _ready(loop, fd, write=True)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the child exited (or closed stdin) without reading everything: that is its business
    finally:
        pipe.close()
    return b""


async def _drain(loop: asyncio.AbstractEventLoop, pipe: IO[bytes] | None) -> bytes:
    """Everything the child writes to ``pipe``, until it closes it."""
    if pipe is None:
        return b""
    fd = pipe.fileno()
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            await _ready(loop, fd)
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
