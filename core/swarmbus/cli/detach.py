"""``swarmbus start --detach``, ``swarmbus stop`` and ``swarmbus status``: the daemon without a
service manager (the mechanism is :mod:`swarmbus.supervise`).

``start --detach`` on an agent whose daemon already runs is one socket round trip and never
imports pydantic or paho, so a Claude Code SessionStart hook can run it on every session.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from swarmbus.cli.common import FLAG_KEYS, raw_config
from swarmbus.envelope import validate_own_id
from swarmbus.errors import SwarmbusError, UsageError
from swarmbus.kept import describe_last_exit, last_run
from swarmbus.paths import AgentPaths
from swarmbus.supervise import (
    Keeper,
    RunningDaemon,
    StartFailed,
    find_daemon,
    find_keeper,
    keeper_files,
    lock_holder,
    log_path,
    read_pid_file,
    spawn,
    stop,
    unit_name,
)

TYPE_CHECKING = False  # typing costs the fast path ~4 ms
if TYPE_CHECKING:
    from typing import Any


def _agent_paths(args: argparse.Namespace) -> AgentPaths:
    raw = raw_config(args)
    agent_id = raw.get("agent_id")
    if not agent_id:
        raise UsageError(f"swarmbus {args.command} needs --agent-id ID (or SWARMBUS_AGENT_ID, or agent_id in the config file)")
    return AgentPaths.for_agent(validate_own_id(str(agent_id)), raw.get("state_dir"))


def _since(started_at: Any) -> str:
    if not isinstance(started_at, int | float):
        return "?"
    seconds = max(0, int(time.time() - started_at))
    up = f"{seconds // 86400}d {seconds % 86400 // 3600}h" if seconds >= 86400 else (
        f"{seconds // 3600}h {seconds % 3600 // 60}m" if seconds >= 3600 else f"{seconds // 60}m {seconds % 60}s")
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started_at))} (up {up})"


def _log_for(supervisor: str, paths: AgentPaths) -> str:
    """Where the daemon's output goes, as the user would look at it."""
    unit = unit_name(paths.agent_id)
    if supervisor == "systemd":
        return f"journalctl --user -u {unit}.service"
    if supervisor == "launchd":
        return str(Path.home() / "Library" / "Logs" / "swarmbus" / f"{unit}.log")
    if supervisor == "detached":
        return str(log_path(paths))
    if supervisor == "foreground":
        return "the terminal (or supervisor) that runs it"
    if supervisor == "tmux":
        return "its tmux pane (`swarmbus swarm status` names the session)"
    return f"{log_path(paths)} if it was started detached"


def _describe(daemon: RunningDaemon) -> str:
    status = daemon.status or {}
    return f"pid {daemon.pid}, {daemon.supervisor}, since {_since(status.get('started_at'))}"


# -- start --detach -----------------------------------------------------------------------------
def _forwarded_flags(args: argparse.Namespace, agent_id: str) -> list[str]:
    """The flags of this ``start`` for the daemon it spawns (everything but ``--detach``)."""
    argv = ["--agent-id", agent_id]
    if getattr(args, "config", None):
        argv += ["--config", str(args.config)]
    for key, dest, flag in FLAG_KEYS:
        value = getattr(args, dest, None)
        if value is None or key == "agent_id":
            continue
        if dest == "tls":
            argv.append("--tls" if value else "--no-tls")
        elif dest == "archive":
            if value is False:
                argv.append("--no-archive")
        else:
            argv += [flag, str(value)]
    return argv


def _restarted_by_keeper(paths: AgentPaths, keeper: Keeper) -> RunningDaemon | None:
    """The daemon a keeper waiting between restarts starts next (up to its backoff and the
    daemon's start), or None when it gives up or stops first."""
    from swarmbus.supervise import READY_TIMEOUT

    deadline = time.monotonic() + 30.0 + READY_TIMEOUT  # the longest backoff, then a start
    while time.monotonic() < deadline and find_keeper(paths) is not None:
        daemon = find_daemon(paths)
        if daemon is not None:
            return daemon
        time.sleep(0.1)
    return None


def start_detached(args: argparse.Namespace) -> int:
    """``swarmbus start --detach``: 0 when the daemon runs (already, or now), 1 when it could not
    be started (the reason and the log's last lines on stderr), 2 usage error (a bad flag or
    config, a wake command that cannot run)."""
    paths = _agent_paths(args)
    agent_id = paths.agent_id
    running = find_daemon(paths)
    if running is not None:
        print(f"{agent_id}'s daemon already runs ({_describe(running)})")
        return 0
    keeper = find_keeper(paths)
    if keeper is not None:  # it crashed; its keeper restarts it after a backoff
        running = _restarted_by_keeper(paths, keeper)
        if running is not None:
            print(f"{agent_id}'s daemon already runs ({_describe(running)}): its keeper restarted it")
            return 0
    from swarmbus.cli.common import load_settings_for
    from swarmbus.cli.start import require_runnable_wake_command
    from swarmbus.plugins import get_plugin_manager

    pm = get_plugin_manager()
    settings = load_settings_for(args, pm=pm)  # a bad flag or config file fails here with its reason, not in the log
    require_runnable_wake_command(settings, pm)  # a missing --invoke program (or its plugin) too
    argv = [sys.executable, "-m", "swarmbus", "start", *_forwarded_flags(args, agent_id)]
    try:
        daemon = spawn(argv, paths, os.environ)
    except StartFailed as exc:
        sys.stderr.write(f"swarmbus: error: could not start {agent_id}'s daemon: {exc}\n")
        if exc.tail:
            sys.stderr.write(f"  last lines of {exc.log}:\n")
            sys.stderr.write("".join(f"    {line}\n" for line in exc.tail))
        else:
            sys.stderr.write(f"  (nothing in {exc.log})\n")
        return 1
    status = daemon.status or {}
    keeper = find_keeper(paths)
    if daemon.supervisor != "detached" or keeper is None or keeper.child != daemon.pid:
        print(f"{agent_id}'s daemon already runs ({_describe(daemon)}): another start got there first")
        return 0
    broker = "connected to" if status.get("connected") else "connecting to"
    print(f"started {agent_id}'s daemon: pid {daemon.pid}, {broker} {status.get('broker', 'the broker')}")
    print(f"  kept by pid {keeper.pid}: restarted if it crashes")
    print(f"  log: {log_path(paths)}")
    print(f"  stop it: swarmbus stop --agent-id {agent_id}   (it does not survive a reboot)")
    return 0


# -- stop -----------------------------------------------------------------------------------------
def _systemctl_stop(daemon: RunningDaemon, paths: AgentPaths, timeout: float) -> int:
    unit = f"{unit_name(paths.agent_id)}.service"
    argv = ["systemctl", "--user", "stop", unit]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 10)
        problem = None if proc.returncode == 0 else f"exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        problem = str(exc)
    if problem:
        sys.stderr.write(f"swarmbus: error: {paths.agent_id}'s daemon (pid {daemon.pid}) runs under systemd, and "
                         f"`{' '.join(argv)}` failed: {problem}\n  hint: stop it through the unit that runs it "
                         "(systemctl --user list-units 'swarmbus-*')\n")
        return 1
    from swarmbus.ownership import pid_alive

    deadline = time.monotonic() + timeout
    while pid_alive(daemon.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    print(f"stopped {paths.agent_id}'s daemon (pid {daemon.pid}) with `{' '.join(argv)}`; systemd starts it again "
          f"at the next login. To stop it for good: swarmbus uninit --agent-id {paths.agent_id}")
    return 0


def run_stop(args: argparse.Namespace) -> int:
    """``swarmbus stop``: 0 stopped (or nothing ran), 1 it could not be stopped."""
    if args.timeout <= 0:
        raise UsageError("--timeout must be more than 0 seconds")
    paths = _agent_paths(args)
    daemon = find_daemon(paths)
    if daemon is not None and daemon.supervisor == "systemd":
        return _systemctl_stop(daemon, paths, args.timeout)
    result = stop(paths, timeout=args.timeout)
    if args.remove_log:
        files = keeper_files(paths)
        for path in (files.log, files.log.with_name(files.log.name + ".1"), files.state, files.lock):
            if path.exists() and not (path == files.lock and find_keeper(paths)):
                path.unlink()
                if path.name.endswith((".log", ".1")):
                    print(f"removed {path}")
    how = f"SIGKILL: it did not exit within {args.timeout:g}s of SIGTERM" if result.killed else "SIGTERM"
    if result.pid is None:
        print(f"{paths.agent_id}'s daemon is not running")
        if result.keeper is not None:
            print(f"  stopped its keeper (pid {result.keeper}, {how}), which was waiting to restart it")
        elif result.note:
            print(f"  note: {result.note}")
        return 0
    kept_by = f" and its keeper (pid {result.keeper})" if result.keeper is not None else ""
    print(f"stopped {paths.agent_id}'s daemon (pid {result.pid}, {how}){kept_by}")
    if daemon is not None and daemon.supervisor == "launchd":
        print(f"  launchd starts it again at the next login; to stop it for good: swarmbus uninit --agent-id {paths.agent_id}")
    return 0


# -- status ---------------------------------------------------------------------------------------
def run_status(args: argparse.Namespace) -> int:
    """``swarmbus status``: 0 running, 1 not running."""
    paths = _agent_paths(args)
    daemon = find_daemon(paths)
    keeper = find_keeper(paths)
    if daemon is None:
        stale = read_pid_file(paths)
        last = last_run(keeper_files(paths))
        info: dict[str, Any] = {"agent_id": paths.agent_id, "running": False, "pid": None,
                                "session_held_by": lock_holder(paths),
                                "log": str(log_path(paths)) if log_path(paths).exists() else None,
                                "keeper": _keeper_info(keeper.pid if keeper else None, keeper.state if keeper else last)}
        if args.json:
            print(json.dumps(info))
            return 1
        print(f"{paths.agent_id}: not running")
        if keeper is not None:
            print(f"  its keeper (pid {keeper.pid}) restarts it after a crash: {describe_last_exit(keeper.state)}, "
                  f"{keeper.restarts} restarts so far")
        elif last and last.get("state") in ("gave up", "failed"):
            print(f"  its keeper {last['state']}: {last.get('reason')}")
        elif last and last.get("reason"):
            print(f"  its last detached run ended: {last['reason']}")
        if stale is not None and keeper is None:
            print(f"  stale pid file: pid {stale} (not this agent's daemon any more)")
        if info["session_held_by"]:
            print(f"  the agent's session is held by {info['session_held_by']} (not a daemon)")
        if info["log"]:
            print(f"  last detached run's log: {info['log']}")
        print(f"  start it: swarmbus start --agent-id {paths.agent_id} --detach")
        return 1
    status = daemon.status or {}
    if keeper is not None and keeper.child != daemon.pid:
        keeper = None  # not this daemon's keeper
    info = {"agent_id": paths.agent_id, "running": True, "pid": daemon.pid, "supervisor": daemon.supervisor,
            "started_at": status.get("started_at"), "log": _log_for(daemon.supervisor, paths),
            "broker": status.get("broker"), "connected": status.get("connected"),
            "responding": daemon.status is not None, "status": daemon.status,
            "keeper": _keeper_info(keeper.pid, keeper.state) if keeper else None}
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{paths.agent_id}: running (pid {daemon.pid})")
    if daemon.status is None:
        print("  its control socket does not answer (starting, stopping, or stuck)")
    else:
        print(f"  since:      {_since(status.get('started_at'))}")
    supervisor = daemon.supervisor
    if supervisor == "systemd":
        supervisor += f" (unit {unit_name(paths.agent_id)}.service)"
    elif supervisor == "detached" and keeper is not None:
        count = f"{keeper.restarts} restart{'s' if keeper.restarts != 1 else ''}"
        why = f", last: the daemon {describe_last_exit(keeper.state)}" if keeper.restarts else ""
        supervisor += (f", kept by pid {keeper.pid} ({count}{why}; swarmbus start --detach; "
                       "does not survive a reboot)")
    elif supervisor == "detached":
        supervisor += " (swarmbus start --detach; does not survive a reboot)"
    elif supervisor == "tmux":
        supervisor += " (a pane of `swarmbus swarm up`; does not survive a reboot)"
    print(f"  supervisor: {supervisor}")
    print(f"  log:        {info['log']}")
    if daemon.status is not None:
        link = "connected" if status.get("connected") else f"not connected ({status.get('last_error') or 'connecting'})"
        print(f"  broker:     {status.get('broker')}, {link}")
        print(f"  version:    {status.get('version')}")
        holds = status.get("holds") or {}
        if holds.get("count"):
            count = holds["count"]
            print(f"  held:       {count} message{'s' if count != 1 else ''} held from waking; the next wakes at "
                  f"{_clock(holds.get('next_until'))} ({holds.get('next_reason')}); swarmbus inbox shows each")
        if status.get("redeliveries_pending"):
            print(f"  sending:    {status['redeliveries_pending']} sent message(s) not yet confirmed stored by "
                  "their recipient (redelivered until then; swarmbus trace ID)")
    return 0


def _clock(ts: object) -> str:
    """``ts`` (Unix s) as local ``HH:MM``, with the date when it is not today."""
    if not isinstance(ts, int | float):
        return "?"
    when = time.localtime(ts)
    same_day = time.strftime("%Y-%m-%d", when) == time.strftime("%Y-%m-%d")
    return time.strftime("%H:%M" if same_day else "%Y-%m-%d %H:%M", when)


def _keeper_info(pid: int | None, state: dict[str, Any] | None) -> dict[str, Any] | None:
    """``status --json``'s ``keeper``: ``{"pid" (None: not running), "state", "restarts", "last_exit",
    "reason"}``, or None when there never was one."""
    if pid is None and not state:
        return None
    state = state or {}
    return {"pid": pid, "state": state.get("state"), "restarts": state.get("restarts", 0),
            "last_exit": state.get("last_exit"), "reason": state.get("reason")}


def run(args: argparse.Namespace) -> int:
    if args.command == "stop":
        return run_stop(args)
    if args.command == "status":
        return run_status(args)
    raise SwarmbusError(f"swarmbus.cli.detach does not run {args.command!r}")  # pragma: no cover
