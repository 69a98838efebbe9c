"""``swarmbus read | watch | tail | inbox | wait``: reading an agent's store.

When a daemon runs for the agent id, these read its store directly (SQLite WAL allows
concurrent readers) and ask the daemon over its socket to be woken for new messages. When
none runs, ``read``/``watch``/``tail`` first fetch what the broker queued for the agent with a
one-shot receive (see :mod:`swarmbus.oneshot`), which takes the same ownership lock as the
daemon, so the two never race. ``inbox`` only ever reads the local store. ``wait`` (for host
hooks such as Claude Code's rewake) needs a running daemon and fails without one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
from datetime import UTC, datetime

from swarmbus.api import StoredMessage
from swarmbus.cli.common import load_settings_for, print_json, print_message
from swarmbus.control import DaemonUnavailable, daemon_status, request
from swarmbus.errors import SwarmbusError, TimeoutExpired, UsageError
from swarmbus.paths import AgentPaths
from swarmbus.settings import Settings
from swarmbus.store import Delivery, Store

_CONSUMER_RE = re.compile(r"\A[A-Za-z0-9_-]{1,64}\Z")


def _setup(args: argparse.Namespace) -> tuple[Settings, str, AgentPaths]:
    settings = load_settings_for(args)
    agent_id = settings.require_agent_id()
    consumer = getattr(args, "consumer", "default")
    if not _CONSUMER_RE.match(consumer):
        raise UsageError(f"--consumer {consumer!r}: use 1-64 of A-Z a-z 0-9 _ -")
    return settings, agent_id, AgentPaths.for_agent(agent_id, settings.state_dir)


def _daemon_running(paths: AgentPaths) -> bool:
    status = daemon_status(paths.socket)
    return bool(status and status.get("ok"))


def run(args: argparse.Namespace) -> int:
    return {"read": _read, "watch": _watch, "tail": _tail, "inbox": _inbox, "wait": _wait}[args.command](args)


def _emit(args: argparse.Namespace, messages: list) -> None:  # type: ignore[type-arg]
    if args.json:
        for m in messages:
            print_json(m.to_json())
    else:
        for m in messages:
            print_message(m)


def _read(args: argparse.Namespace) -> int:
    settings, agent_id, paths = _setup(args)
    if args.max < 1:
        raise UsageError("--max must be at least 1")
    if not _daemon_running(paths):
        from swarmbus.oneshot import receive_once

        receive_once(settings, agent_id)
    with Store(paths.store) as store:
        cursor = store.cursor(args.consumer)
        messages = store.messages_after(cursor, args.max)
        if messages and not args.peek:
            store.set_cursor(args.consumer, messages[-1].seq)
    if args.json:
        print_json([m.to_json() for m in messages])
    elif not messages:
        print("no new messages")
    else:
        _emit(args, messages)
    _surfaced(paths, messages, f"swarmbus read --consumer {args.consumer}")
    return 0


def _surfaced(paths: AgentPaths, messages: list[StoredMessage], detail: str) -> None:
    """Tell the daemon (if one runs) these messages were shown: the ``surfaced`` step of their
    delivery ladder (its receipt, when the sender asked). Best effort: the output is already out."""
    if messages:
        with contextlib.suppress(DaemonUnavailable, TimeoutError, OSError, ValueError, SwarmbusError):
            request(paths.socket, {"op": "mark", "ids": [m.id for m in messages], "step": "surfaced",
                                   "detail": detail}, timeout=5)


def _watch(args: argparse.Namespace) -> int:
    settings, agent_id, paths = _setup(args)
    deadline = time.monotonic() + args.timeout
    daemon = _daemon_running(paths)
    while True:
        with Store(paths.store) as store:
            cursor = store.cursor(args.consumer)
            messages = store.messages_after(cursor, 1)
            if messages:
                store.set_cursor(args.consumer, messages[0].seq)
                _emit(args, messages)
                return 0
            last = store.last_seq()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutExpired(f"timeout after {args.timeout:g}s: no new message for {agent_id}")
        if daemon:
            request(paths.socket, {"op": "wait", "after": last, "timeout": remaining}, timeout=remaining + 5)
        else:
            from swarmbus.oneshot import receive_once

            receive_once(settings, agent_id, wait_for_new=remaining)
            if time.monotonic() >= deadline:
                with Store(paths.store) as store:
                    if not store.messages_after(store.cursor(args.consumer), 1):
                        raise TimeoutExpired(f"timeout after {args.timeout:g}s: no new message for {agent_id}")


def _wait(args: argparse.Namespace) -> int:
    """Block until ``--consumer`` has new messages, print them as one wake prompt (or JSON
    lines), advance the cursor past them, and exit ``--exit-code``. Only with a daemon: this
    never takes the agent's MQTT session."""
    _settings, agent_id, paths = _setup(args)
    if args.max < 1:
        raise UsageError("--max must be at least 1")
    if args.timeout < 0:
        raise UsageError("--timeout must be 0 or more seconds")
    if not 0 <= args.exit_code <= 255:
        raise UsageError("--exit-code must be between 0 and 255")
    if not _daemon_running(paths):
        raise SwarmbusError(f"no daemon running for {agent_id}: swarmbus wait reads through the daemon",
                            hint=f"start it: swarmbus start --agent-id {agent_id} (or swarmbus init)")
    out = sys.stderr if args.stderr else sys.stdout
    deadline = time.monotonic() + args.timeout
    while True:
        with Store(paths.store) as store:
            messages = store.messages_after(store.cursor(args.consumer), args.max)
            if messages:
                if args.json:
                    text = "".join(json.dumps(m.to_json(), ensure_ascii=False) + "\n" for m in messages)
                else:
                    from swarmbus.prompts import render_wake_prompt

                    text = render_wake_prompt(messages, agent_id) + "\n"
                out.write(text)
                out.flush()
                store.set_cursor(args.consumer, messages[-1].seq)  # only once printed
                _surfaced(paths, messages, f"swarmbus wait --consumer {args.consumer}")
                return int(args.exit_code)
            last = store.last_seq()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutExpired(f"timeout after {args.timeout:g}s: no new message for {agent_id}")
        try:
            request(paths.socket, {"op": "wait", "after": last, "timeout": remaining}, timeout=remaining + 5)
        except DaemonUnavailable:
            # the daemon stopped mid-wait: give a restarting service a moment to come back
            grace = time.monotonic() + min(15.0, max(0.0, deadline - time.monotonic()))
            while not _daemon_running(paths):
                if time.monotonic() >= grace:
                    raise SwarmbusError(f"the daemon for {agent_id} stopped while waiting") from None
                time.sleep(0.2)


def _tail(args: argparse.Namespace) -> int:
    settings, agent_id, paths = _setup(args)
    daemon = _daemon_running(paths)
    if not daemon:
        from swarmbus.oneshot import receive_once

        receive_once(settings, agent_id)
    while True:
        with Store(paths.store) as store:
            if args.reset:
                store.set_cursor(args.consumer, 0)
                args.reset = False
            messages = store.messages_after(store.cursor(args.consumer))
            if messages:
                store.set_cursor(args.consumer, messages[-1].seq)
            last = store.last_seq()
        _emit(args, messages)
        if not args.follow:
            return 0
        if daemon or _daemon_running(paths):
            daemon = True
            request(paths.socket, {"op": "wait", "after": last, "timeout": 30}, timeout=35)
        else:
            from swarmbus.oneshot import receive_once

            receive_once(settings, agent_id, wait_for_new=30)


DETAIL_CHARS = 160
"""How much of a delivery's detail ``inbox`` prints (``--json`` has all of it)."""


def _delivery_state(delivery: Delivery) -> str:
    """``wake: failed (notify-me exited 3 in 41 ms; output: ...)``: the handler, its status and,
    for a wake or a run that did not succeed, its detail (a wake command's exit status, duration
    and output tail), shortened and made safe for a terminal."""
    state = f"{delivery.handler}: {delivery.status}"
    if delivery.detail and (delivery.handler == "wake" or delivery.status in ("failed", "timeout")):
        from swarmbus.cli.common import safe_text

        detail = delivery.detail if len(delivery.detail) <= DETAIL_CHARS else delivery.detail[:DETAIL_CHARS - 3] + "..."
        state += f" ({safe_text(detail)})"
    return state


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _inbox(args: argparse.Namespace) -> int:
    _settings, agent_id, paths = _setup(args)
    if not paths.store.exists():
        raise UsageError(f"no store for {agent_id} at {paths.store}: has a daemon ever run for it?")
    with Store(paths.store) as store:
        counters = store.counters()
        if args.quarantined:
            rows = store.quarantined(args.limit)
            if args.json:
                print_json({"counters": counters, "quarantined": [r.to_json() for r in rows]})
                return 0
            print(f"{counters.get('quarantined', 0)} quarantined in all; newest {len(rows)}:")
            for r in rows:
                print(f"  #{r.qid} {_when(r.received_at)} on {r.topic}: {r.reason}")
                preview = r.payload[:120].decode("utf-8", "backslashreplace")
                print(f"      payload ({len(r.payload)} bytes): {preview!r}")
            return 0
        messages = store.recent(args.limit)
        deliveries = {m.seq: store.deliveries(m.seq) for m in messages}
        holds = {h.seq: h for h in store.holds()}
    if args.json:
        print_json({
            "counters": counters,
            "messages": [
                {**m.to_json(), "deliveries": [vars(d) for d in deliveries[m.seq]],
                 "hold": vars(holds[m.seq]) if m.seq in holds else None} for m in messages
            ],
        })
        return 0
    print(
        f"{counters.get('stored', 0)} stored, {counters.get('duplicates', 0)} duplicates ignored, "
        f"{counters.get('quarantined', 0)} quarantined (see --quarantined), "
        f"{counters.get('self_echo', 0)} own broadcasts skipped"
    )
    from swarmbus.cli.output import can_encode

    dash = "—" if can_encode("—") else "-"
    for m in messages:
        states = ", ".join(_delivery_state(d) for d in deliveries[m.seq]) or "not dispatched"
        print(f"  #{m.seq} {_when(m.received_at)} from {m.from_agent} [{m.priority}] {m.subject!r} {dash} {states}")
        if m.seq in holds:
            from swarmbus.cli.common import safe_text

            hold = holds[m.seq]
            local = datetime.fromtimestamp(hold.until).strftime("%Y-%m-%d %H:%M")
            print(f"      wake held until {local} ({safe_text(hold.reason)}) [{hold.rule}]")
    return 0
