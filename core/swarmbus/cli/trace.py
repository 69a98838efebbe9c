"""``swarmbus trace MSG_ID``: a message's delivery ladder; and ``send --wait STEP``'s wait.

The ladder comes from the agent's store (opened here, no daemon needed): for a message it sent,
the outbox (spooled, published), its redelivery and every receipt; for a message it received,
when it was stored, its handlers' outcomes and the later steps recorded here. See
:mod:`swarmbus.receipts` for the steps.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from swarmbus.cli.common import print_json, raw_config
from swarmbus.control import DaemonUnavailable, request
from swarmbus.envelope import validate_own_id
from swarmbus.errors import SwarmbusError, UsageError
from swarmbus.paths import AgentPaths
from swarmbus.receipts import RECEIPT_STEPS
from swarmbus.store import Store

EXIT_UNKNOWN = 1


@dataclass(frozen=True)
class StepWait:
    """What ``send --wait STEP`` saw: ``ok`` (the step, or a later one, was reached),
    ``reached`` (the furthest step, or the send's status when no receipt came) and the
    ``ladder`` rows ``{"step", "by", "at", "detail"}``."""

    ok: bool
    reached: str
    ladder: list[dict[str, Any]]


def furthest(ladder: list[dict[str, Any]], fallback: str) -> str:
    """The furthest receipt step in ``ladder`` (ladder order), else ``fallback``."""
    steps = [row["step"] for row in ladder if row.get("step") in RECEIPT_STEPS]
    return max(steps, key=RECEIPT_STEPS.index) if steps else fallback


def wait_for_step(socket_path: Path, message_id: str, step: str, timeout: float, status: str) -> StepWait:
    """Block up to ``timeout`` seconds until the daemon records ``step`` (or a later step) of
    ``message_id``. :raises SwarmbusError: the daemon went away or refused the request."""
    steps = list(RECEIPT_STEPS[RECEIPT_STEPS.index(step):])
    try:
        answer = request(socket_path, {"op": "step", "id": message_id, "steps": steps, "timeout": timeout},
                         timeout=timeout + 10)
    except (DaemonUnavailable, TimeoutError) as exc:
        raise SwarmbusError(f"the message was sent, but the daemon stopped answering while waiting for {step}: "
                            f"{exc}") from None
    if not answer.get("ok"):
        raise SwarmbusError(f"the message was sent, but the daemon cannot wait for {step}: {answer.get('error')} "
                            "(is it an older swarmbus? restart it)")
    ladder = list(answer.get("ladder", []))
    return StepWait(bool(answer.get("reached")), furthest(ladder, status), ladder)


def _when(at: float | None) -> str:
    return "-" if at is None else datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def trace(store: Store, agent_id: str, message_id: str) -> dict[str, Any] | None:
    """The ladder of ``message_id`` in ``agent_id``'s store, or None when it has no trace of it.

    ``{"id", "sent": {"to", "spooled_at", "published_at"} | None, "received": {"from", "seq",
    "stored_at", "handlers": [...]} | None, "redelivery": {...} | None, "steps": [{"step", "by",
    "at", "detail"}, ...]}`` (times Unix seconds; ``steps`` in ladder order, then by time,
    including the sent message's ``published`` and the received message's ``stored``)."""
    steps: list[dict[str, Any]] = []
    sent = received = redelivery = None
    entry = store.outbox_entry(message_id)
    if entry is not None:
        topic = entry.topic
        to = topic.split("/")[1] if topic.endswith("/inbox") else "broadcast"
        sent = {"to": to, "spooled_at": entry.created_at, "published_at": entry.published_at}
        if entry.published_at is not None:
            steps.append({"step": "published", "by": agent_id, "at": entry.published_at, "detail": ""})
        r = store.redelivery(message_id)
        if r is not None:
            redelivery = {"attempts": r.attempts, "next_at": None if r.ended_at else r.next_at,
                          "give_up_at": r.give_up_at, "last_at": r.last_at, "ended_at": r.ended_at, "ended": r.ended}
    message = store.message_by_id(message_id)
    if message is not None:
        received = {"from": message.from_agent, "seq": message.seq, "stored_at": message.received_at,
                    "handlers": [{"handler": d.handler, "status": d.status, "detail": d.detail, "at": d.updated_at}
                                 for d in store.deliveries(message.seq)]}
        steps.append({"step": "stored", "by": agent_id, "at": message.received_at, "detail": ""})
    steps += [{"step": s.step, "by": s.by, "at": s.at, "detail": s.detail} for s in store.ladder(message_id)]
    if sent is None and received is None and not steps:
        return None
    order = ("published", *RECEIPT_STEPS)  # ladder order (clocks of two machines need not agree), then time
    steps.sort(key=lambda row: (order.index(row["step"]) if row["step"] in order else len(order), row["at"]))
    return {"id": message_id, "sent": sent, "received": received, "redelivery": redelivery, "steps": steps}


def run(args: argparse.Namespace) -> int:
    raw = raw_config(args)
    agent_id = raw.get("agent_id")
    if not agent_id:
        raise UsageError("no agent id: pass --agent-id ID or set SWARMBUS_AGENT_ID")
    validate_own_id(agent_id)
    paths = AgentPaths.for_agent(agent_id, raw.get("state_dir"))
    if not paths.store.exists():
        raise UsageError(f"no store for {agent_id} at {paths.store}: has a daemon ever run for it?")
    with Store(paths.store) as store:
        found = trace(store, agent_id, args.message_id)
    if found is None:
        sys.stderr.write(f"swarmbus: error: {agent_id} neither sent nor received a message {args.message_id!r}\n")
        return EXIT_UNKNOWN
    if args.json:
        print_json(found)
        return 0
    print(f"message {found['id']}")
    if found["sent"]:
        s = found["sent"]
        print(f"  sent by {agent_id} to {s['to']}: spooled {_when(s['spooled_at'])}")
    if found["received"]:
        r = found["received"]
        print(f"  received by {agent_id} from {r['from']} (seq {r['seq']})")
    for row in found["steps"]:
        detail = f"  {row['detail']}" if row["detail"] else ""
        print(f"  {_when(row['at'])}  {row['step']:<12} by {row['by']}{detail}")
    rd = found["redelivery"]
    if rd:
        state = (f"ended: {rd['ended']} at {_when(rd['ended_at'])}" if rd["ended"]
                 else f"next at {_when(rd['next_at'])}, gives up at {_when(rd['give_up_at'])}")
        print(f"  redelivery: {rd['attempts']} republish(es); {state}")
    return 0
