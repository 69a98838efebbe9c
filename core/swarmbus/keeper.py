"""The keeper: run one program as a child and restart it when it dies abnormally, like systemd's
``Restart=on-failure``, where no service manager does (``swarmbus start --detach``,
``swarmbus broker --detach``)::

    python -m swarmbus.keeper --lock PATH --state PATH --pid-file PATH --name TEXT \\
        [--backoff S] [--max-backoff S] [--max-restarts N] [--window S] -- PROGRAM [ARG ...]

Policy (:func:`verdict`):

- exit 0, or killed by SIGTERM/SIGINT (someone stopped it): not restarted, the keeper exits 0;
- exit 2 (a usage or configuration error: a restart would fail the same way): not restarted,
  the keeper exits 2;
- any other exit status, or killed by any other signal (SIGKILL, SIGSEGV, ...): restarted after
  ``--backoff`` seconds (default 1), doubling with each restart in the last ``--window`` seconds
  up to ``--max-backoff`` (default 30); when ``--max-restarts`` (default 5) restarts were needed
  within ``--window`` seconds (default 300) already, the keeper gives up (logs why, exits 1).

On SIGTERM or SIGINT the keeper forwards SIGTERM to the child, waits for it and exits 0 without
restarting it (so a stop that escalates to SIGKILL never causes a restart either). Every restart
and its reason goes to stderr (the log file its starter gave it), one line each.

Files (all 0600): ``--lock`` is held (``flock``) for the keeper's whole life and reads
``keeper pid N`` (the proof, for ``stop`` and ``status``, that pid N is the keeper: a lock cannot
go stale); a second keeper on the same lock exits 1 at once. ``--pid-file`` holds the current
child's pid (removed when the keeper exits). ``--state`` is a JSON object rewritten at every
change: ``keeper_pid``, ``name``, ``state`` (``running``, ``waiting``, ``stopped``, ``gave up``,
``failed``), ``child_pid`` (or null), ``started_at`` (Unix seconds), ``restarts`` (how many so
far), ``last_exit`` (null or ``{"text", "code", "signal", "at"}``) and ``reason`` (why it stopped).

The child gets the keeper's environment unchanged and the keeper's stdin, stdout and stderr; it
is run with ``posix_spawnp`` (never a shell). It is a long-lived process, so it imports only the
standard library modules below (no pydantic, paho, pluggy, pathlib or dataclasses).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
CLEAN_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
"""A child killed by one of these was stopped on purpose: it is not restarted."""
USAGE_STATUS = 2
"""A child exiting with this status has a usage or configuration error: it is not restarted."""
LOCK_RECORD = "keeper pid {pid}"


class Policy:
    """When and how soon to restart: ``backoff`` seconds after the first crash, doubling up to
    ``max_backoff``; give up when ``max_restarts`` restarts were made within ``window`` seconds."""

    __slots__ = ("backoff", "max_backoff", "max_restarts", "window")

    def __init__(self, backoff: float = 1.0, max_backoff: float = 30.0, max_restarts: int = 5,
                 window: float = 300.0) -> None:
        if backoff < 0 or max_backoff < backoff or max_restarts < 0 or window <= 0:
            raise ValueError("need 0 <= backoff <= max_backoff, max_restarts >= 0 and window > 0")
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_restarts = max_restarts
        self.window = window

    def delay(self, recent: int) -> float:
        """Seconds to wait before the ``recent``-th restart within the window (1-based)."""
        return float(min(self.max_backoff, self.backoff * 2 ** max(0, recent - 1)))


def verdict(status: int) -> tuple[str, bool, int]:
    """What a ``waitpid`` status means: (text for the log, restart it?, the keeper's exit code
    when it is not restarted)."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"was killed by {name}", sig not in CLEAN_SIGNALS, EXIT_OK
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
    if code == 0:
        return "exited with status 0", False, EXIT_OK
    if code == USAGE_STATUS:
        return "exited with status 2 (a usage or configuration error: a restart would fail the same way)", False, \
            EXIT_USAGE
    return f"exited with status {code}", True, EXIT_FAILED


def _log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    os.write(2, f"{stamp} swarmbus keeper[{os.getpid()}]: {message}\n".encode("utf-8", "replace"))


def _write_private(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_state(path: str) -> dict[str, Any] | None:
    """The keeper state file as a dict, or None (absent, unreadable or not a JSON object)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _take_lock(path: str) -> int | None:
    """Hold ``path`` (flock) with ``keeper pid N`` in it: the fd, or None when another holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        _log(f"{path} is held by {holder}: another keeper runs; exiting")
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, (LOCK_RECORD.format(pid=os.getpid()) + "\n").encode(), 0)
    return fd


class Keeper:
    """One keeper run: :meth:`run` returns its exit code (see the module docstring)."""

    def __init__(self, argv: list[str], *, lock: str, state: str, pid_file: str, name: str,
                 policy: Policy) -> None:
        self.argv = argv
        self.lock = lock
        self.state_path = state
        self.pid_file = pid_file
        self.name = name
        self.policy = policy
        self.child: int | None = None
        self.last_child: int | None = None
        self.stopping = False
        self.state: dict[str, Any] = {"keeper_pid": os.getpid(), "name": name, "state": "running", "child_pid": None,
                                      "started_at": time.time(), "restarts": 0, "last_exit": None, "reason": None}

    def _save(self, **changes: Any) -> None:
        self.state.update(changes)
        try:
            _write_private(self.state_path, json.dumps(self.state))
        except OSError as exc:  # the child matters more than the record of it
            _log(f"cannot write {self.state_path}: {exc.strerror}")

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True
        if self.child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child, signal.SIGTERM)

    def _stop_requested(self) -> bool:
        """Whether SIGTERM or SIGINT came (a method: the flag changes under a signal handler)."""
        return self.stopping

    def _spawn(self) -> int:
        pid = os.posix_spawnp(self.argv[0], self.argv, os.environ,
                              setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM))
        self.child = self.last_child = pid
        try:
            _write_private(self.pid_file, f"{pid}\n")
        except OSError as exc:
            _log(f"cannot write {self.pid_file}: {exc.strerror}")
        self._save(state="running", child_pid=pid)
        return pid

    def _wait(self, pid: int) -> int:
        while True:
            try:
                return os.waitpid(pid, 0)[1]
            except ChildProcessError:  # reaped elsewhere: treat as a crash we cannot describe
                return 0x100 * 255

    def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, returning early when asked to stop."""
        deadline = time.monotonic() + seconds
        while not self._stop_requested():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.1))

    def _finish(self, state: str, code: int, reason: str) -> int:
        try:
            with open(self.pid_file, encoding="ascii") as fh:
                named = fh.read().split()
            if named and named[0] == str(self.last_child):
                os.unlink(self.pid_file)
        except (OSError, ValueError):
            pass
        self._save(state=state, child_pid=None, reason=reason)
        _log(reason)
        return code

    def run(self) -> int:
        lock_fd = _take_lock(self.lock)
        if lock_fd is None:
            return EXIT_FAILED
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        restarts_at: list[float] = []
        try:
            while True:
                if self._stop_requested():
                    return self._finish("stopped", EXIT_OK, f"stopped before {self.name} was started again")
                started = time.monotonic()
                try:
                    pid = self._spawn()
                except OSError as exc:
                    return self._finish("failed", EXIT_FAILED, f"cannot run {self.argv[0]}: {exc.strerror or exc}")
                if self._stop_requested():  # the signal came while it was being spawned
                    self._on_signal(signal.SIGTERM, None)
                status = self._wait(pid)
                self.child = None
                text, again, code = verdict(status)
                ran = time.monotonic() - started
                self._save(last_exit={"text": text, "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                                      "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                                      "at": time.time()})
                what = f"{self.name} (pid {pid}) {text} after {ran:.1f}s"
                if self._stop_requested():
                    return self._finish("stopped", EXIT_OK, f"{what}: stopped on request, not restarted")
                if not again:
                    return self._finish("stopped", code, f"{what}: not restarted")
                now = time.monotonic()
                restarts_at = [t for t in restarts_at if now - t < self.policy.window]
                if len(restarts_at) >= self.policy.max_restarts:
                    return self._finish("gave up", EXIT_FAILED,
                                        f"{what}; giving up: it was restarted {len(restarts_at)} times within the "
                                        f"last {self.policy.window:g}s (start it again once the cause is fixed)")
                restarts_at.append(now)
                delay = self.policy.delay(len(restarts_at))
                self._save(state="waiting", child_pid=None, restarts=self.state["restarts"] + 1)
                _log(f"{what}; restarting it in {delay:g}s (restart {self.state['restarts']}, "
                     f"{len(restarts_at)} within the last {self.policy.window:g}s)")
                self._pause(delay)
        finally:
            os.close(lock_fd)


def _parse(argv: list[str]) -> tuple[Keeper | None, str | None]:
    """(the keeper, None) or (None, a usage error)."""
    if "--" not in argv:
        return None, "missing -- PROGRAM [ARG ...]"
    at = argv.index("--")
    options, program = argv[:at], argv[at + 1:]
    if not program:
        return None, "no program after --"
    if len(options) % 2:
        return None, f"option {options[-1]} needs a value"
    given = dict(zip(options[::2], options[1::2], strict=True))
    known = {"--lock", "--state", "--pid-file", "--name", "--backoff", "--max-backoff", "--max-restarts", "--window"}
    unknown = sorted(set(given) - known)
    if unknown:
        return None, f"unknown option {unknown[0]}"
    missing = [o for o in ("--lock", "--state", "--pid-file") if o not in given]
    if missing:
        return None, f"missing {missing[0]} PATH"
    try:
        policy = Policy(float(given.get("--backoff", 1.0)), float(given.get("--max-backoff", 30.0)),
                        int(given.get("--max-restarts", 5)), float(given.get("--window", 300.0)))
    except ValueError as exc:
        return None, str(exc)
    return Keeper(program, lock=given["--lock"], state=given["--state"], pid_file=given["--pid-file"],
                  name=given.get("--name", os.path.basename(program[0])), policy=policy), None


def main(argv: list[str] | None = None) -> int:
    """Entry point: the keeper's exit code (0 stopped or the child exited 0, 1 gave up or could
    not run it, 2 usage error or the child exited 2)."""
    keeper, problem = _parse(list(sys.argv[1:] if argv is None else argv))
    if keeper is None:
        sys.stderr.write(f"usage: python -m swarmbus.keeper --lock PATH --state PATH --pid-file PATH [--name TEXT] "
                         f"[--backoff S] [--max-backoff S] [--max-restarts N] [--window S] -- PROGRAM [ARG ...]\n"
                         f"error: {problem}\n")
        return EXIT_USAGE
    return keeper.run()


if __name__ == "__main__":
    raise SystemExit(main())
