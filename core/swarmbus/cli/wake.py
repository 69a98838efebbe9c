"""``swarmbus wake test``: which of the host's wake paths would wake the agent now.

The daemon does the work (control op ``wake_test``): it holds the live sessions and the
waiting readers the probes look at. See :mod:`swarmbus.wake_router`.
"""

from __future__ import annotations

import argparse
from typing import Any

from swarmbus.cli.common import print_json, raw_config
from swarmbus.control import DaemonUnavailable, request
from swarmbus.envelope import validate_own_id
from swarmbus.errors import SwarmbusError, UsageError
from swarmbus.paths import AgentPaths


def run(args: argparse.Namespace) -> int:
    raw = raw_config(args)
    agent_id = args.agent_id or raw.get("agent_id")
    if not agent_id:
        raise UsageError("no agent id: pass --agent-id ID or set SWARMBUS_AGENT_ID")
    validate_own_id(agent_id)
    socket = AgentPaths.for_agent(agent_id, raw.get("state_dir")).socket
    try:
        answer: dict[str, Any] = request(socket, {"op": "wake_test"}, timeout=60.0)
    except DaemonUnavailable:
        raise SwarmbusError(f"no daemon runs for {agent_id} here: the wake paths are probed by it",
                            hint=f"start it: swarmbus start --agent-id {agent_id}") from None
    if not answer.get("ok"):
        raise SwarmbusError(f"the daemon could not test the wake paths: {answer.get('error')}")
    fire = answer.get("would_fire")
    if args.json:
        print_json(answer)
        return 0 if fire else 1
    paths = answer.get("paths") or []
    if not paths:
        print(f"{agent_id} (host type {answer.get('host_type') or 'none'}) has no wake paths: no host plugin offers any")
        return 1
    width = max(len(p["name"]) for p in paths)
    for p in paths:
        mark = "ready " if p["ready"] else "no    "
        print(f"  {p['name']:<{width}}  {mark} {p['detail']}")
    print(f"would fire now: {fire}" if fire else "no path would fire now")
    return 0 if fire else 1
