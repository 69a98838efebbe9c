"""``swarmbus policy explain``: the effective wake chain and, for a stored message, each rule's
verdict now; ``swarmbus policy hold`` / ``release``: the operator's hold on every wake of an
agent, kept by its daemon (see docs/policies.md).

Exit codes: 0 explained, held or released; 1 the message is not in the store, or no daemon runs
for the agent on this machine (hold, release); 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from typing import Any

from swarmbus.cli.common import load_settings_for, print_json, safe_text
from swarmbus.errors import SwarmbusError, UsageError
from swarmbus.paths import AgentPaths
from swarmbus.settings import Settings

_RULE_KEYS = {
    "swarmbus.default_plugins.rules.senders": "senders",
    "swarmbus.default_plugins.rules.match": "match",
    "swarmbus.default_plugins.rules.quiet_hours": "quiet_hours",
    "swarmbus.default_plugins.rules.rate_limit": "rate_limit",
    "swarmbus.default_plugins.rules.budget": "budget",
    "swarmbus.default_plugins.rules.loop_guard": "loop_guard",
}


def _chain(settings: Settings, names: list[str]) -> list[dict[str, Any]]:
    wake = settings.wake.model_dump(mode="json")
    chain: list[dict[str, Any]] = [{"rule": "decision", "hook": "swarmbus_wake_decision",
                                    "config": {"policy": settings.wake.policy}}]
    for name in names:
        key = _RULE_KEYS.get(name)
        short = name.rsplit(".", 1)[-1] if name.startswith("swarmbus.default_plugins.") else name
        chain.append({"rule": short, "hook": "swarmbus_wake_filter", "plugin": name,
                      "config": wake.get(key) if key else None})
    return chain


def _when(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def run(args: argparse.Namespace) -> int:
    if args.action in ("hold", "release"):
        return _hold_or_release(args)
    from swarmbus.plugins import HookRelay, get_plugin_manager

    pm = get_plugin_manager()
    settings = load_settings_for(args, pm=pm)
    agent_id = settings.require_agent_id()
    relay = HookRelay(pm)
    out: dict[str, Any] = {"agent_id": agent_id, "chain": _chain(settings, relay.wake_filter_chain())}
    if args.message is not None:
        out["message"] = _explain_message(args.message, settings, agent_id, relay)
    if args.json:
        print_json(out)
        return 0
    print(f"wake chain for {agent_id} (any veto wins: a skip beats a hold, the latest hold counts):")
    for i, link in enumerate(out["chain"], 1):
        config = link["config"]
        shown = "" if config is None else " " + ", ".join(f"{k}={v}" for k, v in config.items() if v not in (None, [], {}))
        print(f"  {i}. {link['rule']} ({link['hook']}){shown.rstrip()}")
    message = out.get("message")
    if message:
        print(f"message {message['id']} (#{message['seq']}) from {message['from']} "
              f"[{message['priority']}] {safe_text(repr(message['subject']))}, asked at {_when(message['now'])}:")
        for v in message["verdicts"]:
            until = f" until {_when(v['until'])}" if v["until"] else ""
            print(f"  {v['rule']}: {v['action']}{until}" + (f" ({safe_text(v['reason'])})" if v["reason"] else ""))
        final = message["final"]
        until = f" until {_when(final['until'])}" if final["until"] else ""
        print(f"  => {final['action']}{until} ({safe_text(final['reason'])})")
        if message["hold"]:
            print(f"  stored hold: until {_when(message['hold']['until'])} ({safe_text(message['hold']['reason'])})")
        for d in message["deliveries"]:
            print(f"  recorded {d['handler']}: {d['status']} ({safe_text(d['detail'])})")
    return 0


def _hold_or_release(args: argparse.Namespace) -> int:
    """Ask the agent's daemon (its control socket) to hold or release its wakes."""
    from swarmbus.control import DaemonUnavailable, request
    from swarmbus.settings import parse_duration

    settings = load_settings_for(args)
    agent_id = settings.require_agent_id()
    if args.action == "release" and (args.duration is not None or args.reason is not None):
        raise UsageError("--for and --reason go with `policy hold`, not `policy release`")
    duration = None
    if args.duration is not None:
        try:
            duration = parse_duration(args.duration)
        except ValueError as exc:
            raise UsageError(f"--for: {exc}") from None
    req: dict[str, Any] = {"op": args.action}
    if args.action == "hold":
        req.update(duration=duration, reason=args.reason or "")
    paths = AgentPaths.for_agent(agent_id, settings.state_dir)
    try:
        answer = request(paths.socket, req, timeout=10)
    except (DaemonUnavailable, TimeoutError) as exc:
        raise SwarmbusError(f"no daemon of {agent_id} answers on this machine ({exc}): the hold is kept by the "
                            "agent's daemon", hint=f"start it: swarmbus start --agent-id {agent_id} --detach") from None
    if not answer.get("ok"):
        error = SwarmbusError(f"{agent_id}'s daemon refused: {answer.get('error')}")
        if answer.get("kind") == "usage":
            error = UsageError(f"{agent_id}'s daemon refused: {answer.get('error')}")
        raise error
    if args.json:
        print_json(answer)
        return 0
    hold = answer.get("manual_hold")
    if args.action == "hold" and hold:
        until = "until released (swarmbus policy release)" if hold["until"] is None else f"until {_when(hold['until'])}"
        print(f"{agent_id}: every wake is held {until}" + (f" ({safe_text(hold['reason'])})" if hold["reason"] else ""))
    else:
        released = answer.get("released", 0)
        print(f"{agent_id}: wakes are no longer held; {released} held message{'s' if released != 1 else ''} "
              "asked about again now (woken unless another rule holds them)")
    return 0


def _explain_message(ref: str, settings: Settings, agent_id: str, relay: Any) -> dict[str, Any]:
    from swarmbus.default_plugins.attention import horizon
    from swarmbus.default_plugins.chain import evaluate
    from swarmbus.default_plugins.history import WakeHistory
    from swarmbus.store import Store

    paths = AgentPaths.for_agent(agent_id, settings.state_dir)
    if not paths.store.exists():
        raise UsageError(f"no store for {agent_id} at {paths.store}: has a daemon ever run for it?")
    now = time.time()
    with Store(paths.store) as store:
        message = store.message(int(ref[1:])) if ref.startswith("#") and ref[1:].isdigit() else store.message_by_id(ref)
        if message is None:
            raise SwarmbusError(f"no message {ref!r} in {agent_id}'s store",
                                hint=f"see the ids with `swarmbus read --agent-id {agent_id} --peek --json`, or give #SEQ")
        history = WakeHistory(horizon(settings))
        since = now - history.horizon
        received, sent = store.traffic_since(since) if settings.wake.loop_guard.max_messages else ([], [])
        history.load(store.wakes_since(since), received, sent)
        history.manual = store.manual_hold()
        hold = store.hold_of(message.seq)
        deliveries = [vars(d) for d in store.deliveries(message.seq)]
    result = evaluate(relay, message, settings, history, now)
    return {
        "id": message.id, "seq": message.seq, "from": message.from_agent, "subject": message.subject,
        "priority": message.priority, "now": now,
        "verdicts": [vars(v) for v in result.verdicts],
        "final": {**vars(result.final), "reason": result.reason},
        "hold": vars(hold) if hold is not None else None,
        "deliveries": deliveries,
    }
