"""How ``swarmbus init`` runs the daemon (``--service auto|systemd|launchd|none``), and the
changes of its ``service`` step when no service manager does it (a detached daemon).

- ``systemd`` / ``launchd``: a user unit / launch agent (:mod:`swarmbus.service`); forcing one
  that does not work here fails before init changes anything.
- ``auto`` (default): the platform's user service manager when it actually works (a user bus
  answers), else a detached daemon (``swarmbus start --detach``), which does not survive a
  reboot: init says so and how to make it (:func:`reboot_note`).
- ``none``: no service and nothing started; init says how to start it.

Without a service manager a local broker that init needs is run detached as well (``swarmbus
broker --detach``, kept by swarmbus; :func:`detached_broker_changes`), and switching to a service
manager later stops a detached daemon first (:func:`stop_detached_daemon`).
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from swarmbus.errors import SwarmbusError
from swarmbus.paths import AgentPaths
from swarmbus.provision import Change, RunCommand

SERVICE_CHOICES = ("auto", "systemd", "launchd", "none")


@dataclass(frozen=True)
class ServiceMode:
    """``kind``: ``systemd``, ``launchd``, ``detached`` or ``none``; ``fallback_reason``: why
    ``auto`` found no working service manager (None when it was not a fallback)."""

    kind: str
    fallback_reason: str | None = None

    @property
    def manager(self) -> str | None:
        """The service manager to use (for the daemon and a local broker), or None."""
        return self.kind if self.kind in ("systemd", "launchd") else None


def choose(requested: str) -> ServiceMode:
    """The mode for ``--service requested``.

    :raises SwarmbusError: ``systemd`` or ``launchd`` was asked for and does not work here.
    """
    from swarmbus.service import service_problem, usable_service_manager

    if requested == "none":
        return ServiceMode("none")
    if requested in ("systemd", "launchd"):
        problem = service_problem(requested)
        if problem is not None:
            raise SwarmbusError(f"--service {requested}: {problem}",
                                hint="use --service auto (a detached daemon where no service manager works) "
                                     "or --service none; nothing was changed")
        return ServiceMode(requested)
    manager, why = usable_service_manager()
    return ServiceMode(manager) if manager else ServiceMode("detached", why)


def _locators(paths: AgentPaths, config: str | None) -> list[str]:
    return ["--state-dir", str(paths.root.parent.parent), *(["--config", config] if config else [])]


def start_argv(paths: AgentPaths, config: str | None) -> list[str]:
    """``python -m swarmbus start --agent-id ID --detach`` with the state dir (and ``--config``)."""
    return [sys.executable, "-m", "swarmbus", "start", "--agent-id", paths.agent_id, "--detach",
            *_locators(paths, config)]


def detached_changes(paths: AgentPaths, config: str | None, *, restart: bool) -> list[Change]:
    """Make sure the agent's daemon runs, detached: stop it first when ``restart`` (it reads the
    config file only at start) and it runs; start it unless it runs. Undo (only recorded when
    init started it) stops it and removes its pid file and log."""
    from swarmbus.supervise import find_daemon

    stop = _stop_argv(paths)

    def running() -> bool:
        return find_daemon(paths) is not None

    return [
        RunCommand(tuple(stop), done=lambda: not (restart and running())),
        RunCommand(tuple(start_argv(paths, config)), done=running, undo=(*stop, "--remove-log"), timeout=60),
    ]


def stop_detached_daemon(paths: AgentPaths) -> RunCommand:
    """Stop the agent's detached daemon (and its keeper) when one runs: before a service manager's
    unit starts the daemon, which would otherwise fail on the ownership lock. Nothing to undo."""
    from swarmbus.supervise import find_daemon, find_keeper

    def none_detached() -> bool:
        daemon = find_daemon(paths)
        return find_keeper(paths) is None and (daemon is None or daemon.supervisor != "detached")

    return RunCommand(tuple(_stop_argv(paths)), done=none_detached)


def _stop_argv(paths: AgentPaths) -> list[str]:
    return [sys.executable, "-m", "swarmbus", "stop", "--agent-id", paths.agent_id, "--state-dir",
            str(paths.root.parent.parent)]


def detached_broker_changes(state_dir: Path, port: int) -> list[Change]:
    """Start a local broker on ``port`` detached and kept (``swarmbus broker --detach``) unless one
    answers there; the undo (recorded only when init started it) stops it."""
    from swarmbus.cli.broker_detach import start_argv, stop_argv
    from swarmbus.dev_broker import answers_mqtt

    return [RunCommand(tuple(start_argv(state_dir, port)), done=lambda: answers_mqtt("127.0.0.1", port),
                       undo=tuple(stop_argv(state_dir, port)), timeout=60)]


def broker_note(state_dir: Path, port: int, host_type: str | None = None) -> list[str]:
    """What the user should know about a detached broker on ``port`` (none when none runs)."""
    from swarmbus.cli.broker_detach import start_argv
    from swarmbus.local_broker import find_broker_keeper

    keeper = find_broker_keeper(state_dir, port)
    if keeper is None:
        return []
    return [f"the local broker (mosquitto on 127.0.0.1:{port}, kept by pid {keeper.pid}) runs detached too: it does "
            f"not survive a reboot. Stop it with `swarmbus broker --stop --port {port}` (uninit does, if init started "
            "it); to have it started again after a reboot, re-run init with a working user systemd, or add to your "
            f"crontab:  @reboot {shlex.join(start_argv(state_dir, port))}"
            + (" (the Claude Code SessionStart hook starts only the daemon, not the broker)" if host_type == "cc" else "")]


def reboot_note(mode: ServiceMode, paths: AgentPaths, config: str | None, host_type: str | None,
                env: dict[str, str]) -> list[str]:
    """What the user should know about a detached daemon (or none): lines to print.
    ``env`` holds the locator variables (``SWARMBUS_CONFIG``, ``SWARMBUS_STATE_DIR``) to put in
    a crontab line."""
    agent_id = paths.agent_id
    cron = " ".join([*(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items())),
                     shlex.join(start_argv(paths, config))])
    if mode.kind == "none":
        return [f"no daemon was installed or started (--service none); start it with: swarmbus start --agent-id "
                f"{agent_id} --detach (or run `swarmbus start --agent-id {agent_id}` under your own supervisor)"]
    if mode.kind != "detached":
        return []
    lines = [f"the daemon runs detached: no user service manager works here ({mode.fallback_reason})."
             if mode.fallback_reason else "the daemon runs detached.",
             "It does not survive a reboot. To have it started again:",
             "  - with a working user systemd (a user bus; `loginctl enable-linger $USER` for a headless "
             "machine), re-run init: it installs a user service instead;",
             f"  - or add this line to your crontab (crontab -e):  @reboot {cron}"]
    if host_type == "cc":
        lines.append("  - the Claude Code SessionStart hook init installed starts it with every Claude Code session.")
    return lines
