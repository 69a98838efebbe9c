"""The daemon's lifecycle outside a service manager: find it, start it detached, stop it.

Where no user service manager works (containers, root shells, WSL, CI runners), ``swarmbus
start --detach`` runs the daemon under a keeper (:mod:`swarmbus.keeper`, via
:mod:`swarmbus.kept`): the keeper leads a session of its own and restarts the daemon when it
crashes (like systemd's ``Restart=on-failure``, with backoff and a give-up rule). Their output
is appended to ``<state>/agents/<id>/daemon.log``; ``daemon.pid`` holds the daemon's pid,
``keeper.lock`` is held by the keeper (``keeper pid N``) and ``keeper.json`` says how many
restarts it made (all 0600). It is the user's own daemon: it gets the user's whole environment,
plus ``SWARMBUS_SUPERVISOR=detached`` so that its status says how it runs.

Which process *is* the agent's daemon is decided by what cannot go stale: the control socket's
answer (its ``pid``), else the ownership lock (``daemon.lock`` is held by a live process, which
wrote ``daemon pid N`` into it); its keeper likewise by ``keeper.lock``. The pid file is only a
hint: a pid from it is never signalled unless the socket or a lock confirm it (pids are reused),
and on Linux the process's command line must be a ``swarmbus start`` as well.

Stdlib only (plus the stdlib-only control client and locks), so ``start --detach`` on an agent
whose daemon already runs costs one socket round trip.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarmbus import kept
from swarmbus.control import daemon_status
from swarmbus.errors import SwarmbusError
from swarmbus.keeper import Policy
from swarmbus.kept import Keeper, KeptFiles, StartFailed, log_tail
from swarmbus.ownership import owner_of, pid_alive
from swarmbus.paths import AgentPaths

__all__ = ["Keeper", "RunningDaemon", "StartFailed", "Stopped", "find_daemon", "find_keeper", "log_tail", "spawn",
           "stop"]

SUPERVISOR_ENV = "SWARMBUS_SUPERVISOR"
"""Set by whatever starts the daemon: ``systemd``, ``launchd`` (in the unit init writes) or
``detached`` (``start --detach``); absent means ``foreground`` (someone's terminal)."""
PID_FILE = "daemon.pid"
LOG_FILE = "daemon.log"
READY_TIMEOUT = 10.0
"""Seconds ``start --detach`` waits for the new daemon's control socket to answer."""
STOP_TIMEOUT = 20.0
"""Seconds ``stop`` waits for the daemon to exit after SIGTERM before it sends SIGKILL."""
_LOCK_RECORD = re.compile(r"\Adaemon pid (\d+)\Z")


def pid_path(paths: AgentPaths) -> Path:
    """``<agent dir>/daemon.pid``: the pid of the daemon ``start --detach`` started."""
    return paths.root / PID_FILE


def log_path(paths: AgentPaths) -> Path:
    """``<agent dir>/daemon.log``: the detached daemon's stdout and stderr."""
    return paths.root / LOG_FILE


def current_supervisor() -> str:
    """How this process (a daemon) is run: ``systemd``, ``launchd``, ``detached``, ``tmux`` (a
    pane of ``swarmbus swarm up``) or ``foreground``."""
    return _supervisor_of(os.environ)


def _supervisor_of(env: Mapping[str, str]) -> str:
    named = env.get(SUPERVISOR_ENV, "")
    if named in ("systemd", "launchd", "detached", "tmux"):
        return named
    if env.get("INVOCATION_ID"):  # systemd sets it for every unit it runs
        return "systemd"
    return "foreground"


def unit_name(agent_id: str) -> str:
    """The systemd user unit / launchd label stem ``swarmbus init`` installs for ``agent_id``."""
    return f"swarmbus-{agent_id}"


@dataclass(frozen=True)
class RunningDaemon:
    """A live daemon for the agent: its ``pid``, and ``status`` (the control socket's answer,
    see :mod:`swarmbus.control`), or None when only the ownership lock says it runs (its socket
    does not answer: starting, stopping or stuck)."""

    pid: int
    status: dict[str, Any] | None

    @property
    def supervisor(self) -> str:
        """``systemd``, ``launchd``, ``detached``, ``foreground``, or ``unknown``."""
        if self.status is not None:
            return str(self.status.get("supervisor") or "unknown")
        return _supervisor_from_environ(self.pid)


def find_daemon(paths: AgentPaths, *, socket_timeout: float = 2.0) -> RunningDaemon | None:
    """The agent's live daemon, or None. Asks the control socket first (one round trip), then
    the ownership lock (only a process named ``daemon pid N`` counts: a one-shot reader holding
    the session is not a daemon)."""
    status = daemon_status(paths.socket, timeout=socket_timeout)
    if status and status.get("agent_id") == paths.agent_id and isinstance(status.get("pid"), int):
        return RunningDaemon(int(status["pid"]), status)
    match = _LOCK_RECORD.match(owner_of(paths.lock) or "")
    if match and pid_alive(int(match.group(1))):
        return RunningDaemon(int(match.group(1)), None)
    return None


def lock_holder(paths: AgentPaths) -> str | None:
    """Who holds the agent's receive session (``"read pid 12"``), or None."""
    return owner_of(paths.lock)


def _cmdline(pid: int) -> list[str] | None:
    """``/proc/<pid>/cmdline`` split into words, or None when it cannot be read (no /proc)."""
    try:
        data = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [w.decode("utf-8", "replace") for w in data.split(b"\0") if w]


def _supervisor_from_environ(pid: int) -> str:
    try:
        data = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return "unknown"
    env = dict(w.decode("utf-8", "replace").partition("=")[::2] for w in data.split(b"\0") if b"=" in w)
    return _supervisor_of(env)


def looks_like_daemon(pid: int, agent_id: str) -> bool | None:
    """Whether process ``pid`` runs ``swarmbus ... start`` (and, when its command line names
    one, ``--agent-id agent_id``): True, False, or None when this system does not tell (no /proc)."""
    words = _cmdline(pid)
    if words is None:
        return None if not pid_alive(pid) or not Path("/proc/self").exists() else False
    if "start" not in words or not any("swarmbus" in w for w in words):
        return False
    if "--agent-id" in words:
        at = words.index("--agent-id")
        return at + 1 < len(words) and words[at + 1] == agent_id
    return not any(w.startswith("--agent-id=") and w != f"--agent-id={agent_id}" for w in words)


def read_pid_file(paths: AgentPaths) -> int | None:
    """The pid in ``daemon.pid``, or None (absent or unreadable)."""
    try:
        return int(pid_path(paths).read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return None


def keeper_files(paths: AgentPaths) -> KeptFiles:
    """The agent's kept-daemon files: ``daemon.pid``, ``daemon.log``, ``keeper.lock``, ``keeper.json``."""
    return KeptFiles(paths.root, "daemon")


def find_keeper(paths: AgentPaths) -> Keeper | None:
    """The live keeper of the agent's detached daemon (the lock says so), or None."""
    return kept.find_keeper(keeper_files(paths))


def remove_pid_file(paths: AgentPaths, pid: int | None = None) -> None:
    """Remove ``daemon.pid`` (only when it names ``pid``, if given)."""
    if pid is None or read_pid_file(paths) == pid:
        with contextlib.suppress(FileNotFoundError):
            pid_path(paths).unlink()


# -- start --------------------------------------------------------------------------------------
def spawn(argv: Sequence[str], paths: AgentPaths, env: Mapping[str, str], *,
          timeout: float = READY_TIMEOUT, policy: Policy | None = None) -> RunningDaemon:
    """Start ``argv`` (a foreground ``swarmbus start``) detached under a keeper
    (:mod:`swarmbus.keeper`, restarting it when it crashes): the keeper leads a new session,
    stdin /dev/null, stdout and stderr appended to :func:`log_path`, ``env`` plus
    ``SWARMBUS_SUPERVISOR=detached``; wait up to ``timeout`` seconds until the daemon's control
    socket answers with the pid the keeper started. The keeper writes :func:`pid_path`.

    When the new daemon exits first because another daemon took the agent meanwhile (two
    starts at once), that daemon is returned (and the new keeper is stopped).

    :raises StartFailed: it exited, or did not answer in time (then it is stopped).
    :raises UsageError: the agent's state dir is not private to this user.
    """
    paths.ensure()
    files = keeper_files(paths)

    def answering(child: int | None) -> dict[str, Any] | None:
        status = daemon_status(paths.socket, timeout=1.0) if child else None
        return status if status and status.get("pid") == child else None

    try:
        _keeper, status = kept.start(argv, files, {**env, SUPERVISOR_ENV: "detached"},
                                     name="the daemon", ready=answering, timeout=timeout,
                                     policy=policy)
    except StartFailed as exc:
        deadline = time.monotonic() + (timeout if exc.other_keeper else 0)
        while True:  # another start won the race: that daemon serves the agent
            other = find_daemon(paths)
            if other is not None:
                return other
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
    return RunningDaemon(int(status["pid"]), status)


# -- stop ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stopped:
    """What :func:`stop` did: ``pid`` (the daemon; None: none ran), ``killed`` (SIGKILL was
    needed), ``keeper`` (the pid of its keeper, stopped too; None: it had none), ``note`` (one
    line for the user, e.g. a stale pid file left alone)."""

    pid: int | None
    killed: bool = False
    keeper: int | None = None
    note: str | None = None


def _in_session_of(pid: int, leader: int) -> bool:
    try:
        return os.getsid(pid) == leader
    except OSError:
        return False


def stop(paths: AgentPaths, *, timeout: float = STOP_TIMEOUT) -> Stopped:
    """Stop the agent's daemon and its keeper, if it has one: SIGTERM to the keeper (which
    forwards it to the daemon, waits for it, and does not restart it) or to a daemon without
    one (it publishes its offline presence and exits), then SIGKILL (the keeper's whole session)
    after ``timeout`` seconds. Only processes the socket or a lock confirm are signalled; a stale
    pid file is removed and its pid left alone. A keeper waiting to restart a crashed daemon is
    stopped too.

    :raises SwarmbusError: a process cannot be signalled (another user's), or it would not die.
    """
    keeper = find_keeper(paths)
    daemon = find_daemon(paths)
    if keeper is not None and (daemon is None or _in_session_of(daemon.pid, keeper.pid)):
        killed = kept.stop_keeper(keeper.pid, timeout=timeout, child=daemon.pid if daemon else keeper.child)
        remove_pid_file(paths)
        note = None if daemon else f"it was not running: its keeper (pid {keeper.pid}) was waiting to restart it"
        return Stopped(daemon.pid if daemon else None, killed=killed, keeper=keeper.pid, note=note)
    if keeper is not None:  # a keeper restarting into a daemon it does not own: it goes first
        kept.stop_keeper(keeper.pid, timeout=timeout, child=keeper.child)
    if daemon is None:
        stale = read_pid_file(paths)
        remove_pid_file(paths)
        holder = lock_holder(paths)
        note = None
        if stale is not None:
            note = (f"the pid file named pid {stale}, which is not this agent's daemon (it holds neither the "
                    "socket nor the lock): not signalled, pid file removed")
        if holder:
            note = (note + "; " if note else "") + f"the agent's session is held by {holder}, not by a daemon"
        return Stopped(None, note=note)
    pid = daemon.pid
    if looks_like_daemon(pid, paths.agent_id) is False:
        raise SwarmbusError(f"pid {pid} holds {paths.agent_id}'s daemon socket or lock but is not a `swarmbus start`; "
                            "not signalled", hint=f"look at it yourself: ps -o pid,args -p {pid}")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        remove_pid_file(paths, pid)
        return Stopped(pid)
    except PermissionError:
        raise SwarmbusError(f"not allowed to signal pid {pid} (another user's process)") from None
    killed = False
    if not kept.wait_gone([pid], timeout):
        killed = True
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(pid) == pid:  # a daemon leading its own session: its wake children go too
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        if not kept.wait_gone([pid], 5.0):
            raise SwarmbusError(f"pid {pid} is still alive after SIGKILL")
    remove_pid_file(paths, pid)
    return Stopped(pid, killed=killed, keeper=keeper.pid if keeper else None)
