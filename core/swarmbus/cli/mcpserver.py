"""``swarmbus mcp-server``: see :mod:`swarmbus.mcp_server`."""

from __future__ import annotations

import argparse

from swarmbus.cli.common import load_settings_for


def run(args: argparse.Namespace) -> int:
    from swarmbus.mcp_server import load_sdk, serve

    load_sdk()  # without the SDK: exit 2 with the install hint, before anything else
    settings = load_settings_for(args)
    serve(settings, settings.require_agent_id())
    return 0
