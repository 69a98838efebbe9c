"""Micro-benchmark: what the wake policy chain adds to one message's handling.

Runs the chain (``swarmbus_wake_decision``, then every ``swarmbus_wake_filter`` rule) exactly as
the daemon's ``wake`` handler does, with **every** built-in rule configured and a day of wake
history and traffic in memory, and prints the median and 99th percentile per message. The issue's
target is under 1 ms.

    .venv/bin/python bench/policy_chain.py [--messages 20000] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from swarmbus import StoredMessage, new_envelope
from swarmbus.default_plugins.chain import evaluate
from swarmbus.default_plugins.history import WakeHistory
from swarmbus.plugins import HookRelay, get_plugin_manager
from swarmbus.settings import Settings

TARGET_MS = 1.0
ALL_RULES = {
    "policy": "all",
    "senders": {"allow": [f"peer-{i}" for i in range(20)], "deny": ["mallory"]},
    "match": {"subject": r"^(review|deploy|question)", "content_types": ["text/plain", "text/markdown"]},
    "quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "Europe/Berlin", "breakthrough": "high",
                    "breakthrough_senders": ["peer-1"]},
    "rate_limit": {"per_sender": "5/10m", "overall": "20/h"},
    "budget": {"per_hour": 10, "per_day": 50},
    "loop_guard": {"max_messages": 10, "window": "10m", "humans": ["alice", "bob"]},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    relay = HookRelay(get_plugin_manager(entry_points=False, env={}))
    settings = Settings.model_validate({"wake": ALL_RULES})
    now = time.time()
    history = WakeHistory()
    for i in range(50):  # a day's budget of wakes, and steady traffic with 20 peers
        history.note_wake(now - 86000 + i * 1700, {f"peer-{i % 20}"})
    for i in range(2000):
        history.note_received(f"peer-{i % 20}", now - 3600 + i * 1.8)
        history.note_sent(f"peer-{i % 20}", now - 3600 + i * 1.8 + 0.5)
    subjects = ["review the diff", "deploy?", "question about X", "chit-chat"]
    messages = [StoredMessage(i, new_envelope(f"peer-{i % 20}", "coder", subjects[i % 4], "body",
                                              priority="high" if i % 7 == 0 else "normal"), "agents/coder/inbox", now)
                for i in range(200)]
    for m in messages[:50]:  # warm up (imports, caches)
        evaluate(relay, m, settings, history, now)
    samples = []
    clock = time.perf_counter_ns
    for i in range(args.messages):
        m = messages[i % len(messages)]
        t0 = clock()
        evaluate(relay, m, settings, history, now + i * 0.01)
        samples.append((clock() - t0) / 1e6)
    samples.sort()
    result = {
        "scenario": "policy_chain", "messages": args.messages, "rules": len(relay.wake_filter_chain()) + 1,
        "median_ms": round(statistics.median(samples), 4),
        "p99_ms": round(samples[int(len(samples) * 0.99)], 4),
        "max_ms": round(samples[-1], 4), "target_ms": TARGET_MS,
    }
    result["met"] = result["p99_ms"] < TARGET_MS
    if args.json:
        print(json.dumps(result))
    else:
        print(f"policy chain, {result['rules']} rules, all configured, {args.messages} messages: "
              f"median {result['median_ms'] * 1000:.1f} us, p99 {result['p99_ms'] * 1000:.1f} us, "
              f"max {result['max_ms'] * 1000:.1f} us (target < {TARGET_MS:g} ms: "
              f"{'met' if result['met'] else 'NOT met'})")
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
