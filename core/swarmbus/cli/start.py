"""``swarmbus start``: run the listener daemon in the foreground (``--detach``: in the background,
see :mod:`swarmbus.cli.detach`)."""

from __future__ import annotations

import argparse

from swarmbus.cli.common import load_settings_for

TYPE_CHECKING = False
if TYPE_CHECKING:
    from swarmbus.plugins import PluginManager
    from swarmbus.settings import Settings


def run(args: argparse.Namespace) -> int:
    if getattr(args, "detach", False):  # cheap when it already runs: no pydantic, no paho
        from swarmbus.cli.detach import start_detached

        return start_detached(args)
    from swarmbus.daemon.listener import Daemon
    from swarmbus.plugins import get_plugin_manager

    pm = get_plugin_manager()
    settings = load_settings_for(args, pm=pm)
    settings.require_agent_id()
    require_runnable_wake_command(settings, pm)
    return Daemon(settings, pm).run()


def require_runnable_wake_command(settings: Settings, pm: PluginManager) -> None:
    """:raises UsageError: (exit 2) a wake command (``--invoke``) is set but cannot be run, so
    every wake would fail: the plugin that runs it (``swarmbus-priority``) is not loaded in
    ``pm``, or its program is not found or not executable."""
    from swarmbus.children import program_problem
    from swarmbus.errors import UsageError
    from swarmbus.plugins import command_waker_problem

    argv = settings.wake.command
    if not argv:
        return
    missing = command_waker_problem(pm.infos)
    if missing:
        raise UsageError(missing[0], hint=missing[1])
    problem = program_problem(argv[0])
    if problem:
        raise UsageError(f"the wake command (--invoke / wake.command) cannot run: {problem}; every wake would fail",
                         hint="install it, give its full path (--invoke '/path/to/program ARGS'), or leave --invoke out")
