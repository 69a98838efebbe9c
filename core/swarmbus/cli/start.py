"""``swarmbus start``: run the listener daemon in the foreground (``--detach``: in the background,
see :mod:`swarmbus.cli.detach`)."""

from __future__ import annotations

import argparse

from swarmbus.cli.common import load_settings_for

TYPE_CHECKING = False
if TYPE_CHECKING:
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
    require_runnable_wake_command(settings)
    return Daemon(settings, pm).run()


def require_runnable_wake_command(settings: Settings) -> None:
    """:raises UsageError: (exit 2) the wake command (``--invoke``) cannot be run, so every wake
    would fail."""
    from swarmbus.default_plugins.wake import command_problem
    from swarmbus.errors import UsageError

    problem = command_problem(settings)
    if problem:
        raise UsageError(f"the wake command (--invoke / wake.command) cannot run: {problem}; every wake would fail",
                         hint="install it, give its full path (--invoke '/path/to/program ARGS'), or leave --invoke out")
