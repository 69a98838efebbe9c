"""``swarmbus list``: who is online, from the retained presence records."""

from __future__ import annotations

import argparse
import sys
import time

from swarmbus.cli.common import load_settings_for, print_json
from swarmbus.control import daemon_status
from swarmbus.envelope import AGENT_ID_RE, parse_timestamp, validate_agent_id
from swarmbus.errors import BrokerNotReady, TimeoutExpired
from swarmbus.oneshot import known_agents, retire_agent, scan_presence, stale
from swarmbus.paths import AgentPaths
from swarmbus.presence_records import Presence
from swarmbus.settings import Settings

PATIENCE = 30.0
"""Seconds ``list`` keeps asking a broker that does not answer the scan (an election)."""


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


def _scan(settings: Settings, known: list[str], patience: float) -> tuple[list[Presence], float]:
    """Scan, retrying a scan that gets no answer (a cluster electing a leader holds each CONNECT
    and closes it without a CONNACK, or answers no scan, for seconds) until ``patience`` seconds
    passed; a broker that refuses, or holds the connection without answering, fails as any
    command does (within ``broker.connect_timeout``). Returns the records and
    when the scan that found them started (Unix s)."""
    deadline = time.monotonic() + patience
    told = False
    while True:
        started = time.time()
        try:
            return scan_presence(settings, known=known,
                                 timeout=min(5.0, max(1.0, deadline - time.monotonic()))), started
        except (TimeoutExpired, BrokerNotReady) as exc:  # an election; a silent or refusing broker fails now
            if time.monotonic() >= deadline:
                raise TimeoutExpired(f"{exc}; the broker kept not answering for {patience:.0f}s") from None
            if not told:
                print(f"swarmbus: {exc}; asking again (up to {patience:.0f}s)", file=sys.stderr)
                told = True


def run_retire(args: argparse.Namespace) -> int:
    """``swarmbus retire AGENT_ID``: 0 done, 1 refused (alive)."""
    agent_id = validate_agent_id(args.retired)
    settings = load_settings_for(args)
    if daemon_status(AgentPaths.for_agent(agent_id, settings.state_dir).socket, timeout=1.0) is not None:
        print(f"{agent_id}'s daemon runs on this machine: stop it first (swarmbus stop --agent-id {agent_id})",
              file=sys.stderr)
        return 1
    record = next((r for r in scan_presence(settings, agent_id=agent_id) if r.agent == agent_id), None)
    if record is not None and record.online and not stale(record) and not args.force:
        print(f"{agent_id} is online ({_age(record.last_seen, time.time())}, host {record.host}, pid {record.pid}): "
              "retiring it would disconnect its daemon; stop it first, or give --force", file=sys.stderr)
        return 1
    done = retire_agent(settings, agent_id)
    if args.json:
        print_json({"agent": agent_id, "done": done})
    else:
        for line in done:
            print(line)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.command == "retire":
        return run_retire(args)
    settings = load_settings_for(args)
    known = known_agents(settings)
    # a record's age counts from when the scan that found it started: a slow scan (a cluster
    # making its subscriptions) must not make a live agent look stale
    records, now = _scan(settings, known, float(getattr(args, "timeout", None) or PATIENCE))
    rows = []
    wanted = _filters(args)
    for r in records:
        state = "stale" if stale(r, now) else r.status
        if state == "offline" and not args.all:
            continue
        if not matches(r, *wanted):
            continue
        rows.append((r, state))
    if args.json:
        print_json([
            {"agent": r.agent, "status": state, "ts": r.ts, "last_seen": r.last_seen, "heartbeat_s": r.heartbeat_s,
             "version": r.version, "host": r.host, "pid": r.pid, "reason": r.reason, "role": r.role,
             "capabilities": list(r.capabilities), "swarm": r.swarm}
            for r, state in rows
        ])
        return 0
    if not rows:
        what = "online" if not args.all else "known to the broker"
        print(f"no agents {what}" + (f" with {_describe(*wanted)}" if any(wanted) else ""))
        if not records and known:
            print(f"  (none of the {len(known)} agent(s) known on this machine has a presence record either; "
                  "a broker that keeps no retained messages, or delivers none to wildcard subscriptions "
                  "(RabbitMQ before 3.13), cannot list the others)")
        return 0
    width = max(len(r.agent) for r, _ in rows)
    for r, state in rows:
        print(f"{r.agent:<{width}}  {state:<7}  {_age(r.last_seen, now)}{_profile(r)}")
    return 0


def _filters(args: argparse.Namespace) -> tuple[str | None, list[str], str | None]:
    """``list --role R --capability C ... --swarm S`` (each validated like an agent id).

    :raises UsageError: a value that is not a name."""
    from swarmbus.errors import UsageError

    role, swarm = getattr(args, "filter_role", None), getattr(args, "filter_swarm", None)
    capabilities = list(getattr(args, "filter_capabilities", None) or [])
    for flag, value in [("--role", role), ("--swarm", swarm), *(("--capability", c) for c in capabilities)]:
        if value is not None and AGENT_ID_RE.match(value) is None:
            raise UsageError(f"{flag} {value!r}: use 1-64 of a-z, 0-9, '_' and '-'")
    return role, capabilities, swarm


def matches(record: Presence, role: str | None, capabilities: list[str], swarm: str | None) -> bool:
    """True when ``record`` declares ``role`` and ``swarm`` (when given) and every one of
    ``capabilities``."""
    return ((role is None or record.role == role) and (swarm is None or record.swarm == swarm)
            and all(c in record.capabilities for c in capabilities))


def _describe(role: str | None, capabilities: list[str], swarm: str | None) -> str:
    parts = ([f"role {role}"] if role else []) + [f"capability {c}" for c in capabilities]
    return " and ".join(parts + ([f"in swarm {swarm}"] if swarm else []))


def _profile(record: Presence) -> str:
    """``  role reviewer  swarm ci  [python, gpu]`` (what the record declares), or ``""``."""
    parts = ([f"role {record.role}"] if record.role else []) + ([f"swarm {record.swarm}"] if record.swarm else [])
    if record.capabilities:
        parts.append("[" + ", ".join(record.capabilities) + "]")
    return "".join(f"  {p}" for p in parts)
