"""``swarmbus list``: who is online, from the retained presence records."""

from __future__ import annotations

import argparse
import time

from swarmbus.cli.common import load_settings_for, print_json
from swarmbus.envelope import parse_timestamp
from swarmbus.oneshot import scan_presence, stale


def _age(ts: str | None, now: float) -> str:
    if ts is None:
        return "last seen: unknown"
    try:
        seconds = max(0.0, now - parse_timestamp(ts).timestamp())
    except ValueError:
        return "last seen: unknown"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"last seen {seconds / size:.0f}{unit} ago"
    return f"last seen {seconds:.0f}s ago"


def run(args: argparse.Namespace) -> int:
    settings = load_settings_for(args)
    now = time.time()
    records = scan_presence(settings)
    rows = []
    for r in records:
        state = "stale" if stale(r, now) else r.status
        if state == "offline" and not args.all:
            continue
        rows.append((r, state))
    if args.json:
        print_json([
            {"agent": r.agent, "status": state, "ts": r.ts, "last_seen": r.last_seen, "heartbeat_s": r.heartbeat_s,
             "version": r.version, "host": r.host, "pid": r.pid, "reason": r.reason}
            for r, state in rows
        ])
        return 0
    if not rows:
        print("no agents online" if not args.all else "no agents known to the broker")
        return 0
    width = max(len(r.agent) for r, _ in rows)
    for r, state in rows:
        print(f"{r.agent:<{width}}  {state:<7}  {_age(r.last_seen, now)}")
    return 0
