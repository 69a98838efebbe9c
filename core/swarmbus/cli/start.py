"""``swarmbus start``: run the listener daemon in the foreground."""

from __future__ import annotations

import argparse

from swarmbus.cli.common import load_settings_for


def run(args: argparse.Namespace) -> int:
    from swarmbus.daemon.listener import Daemon
    from swarmbus.plugins import get_plugin_manager

    pm = get_plugin_manager()
    settings = load_settings_for(args, pm=pm)
    settings.require_agent_id()
    return Daemon(settings, pm).run()
