"""Presence and heartbeat payloads (wire-compatible with swarmbus-py 0.2.0, whose records are
``{"agent": id, "status": "online" | "offline"}``; ours add fields after those two keys).

See :mod:`swarmbus.topics` for where they are published.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from swarmbus.envelope import AGENT_ID_RE
from swarmbus.topics import agent_of


@dataclass(frozen=True)
class Presence:
    """A presence record. ``ts`` is when it was published (ISO 8601) or None for the
    predecessor's records, which carry only ``agent`` and ``status`` (and for a Last Will,
    whose time is unknown). ``instance`` identifies one daemon run; ``host`` and ``pid`` say
    where it runs. ``last_beat`` is the time of the last heartbeat of that instance, when known."""

    agent: str
    status: str
    ts: str | None = None
    heartbeat_s: float | None = None
    version: str | None = None
    instance: str | None = None
    host: str | None = None
    pid: int | None = None
    reason: str | None = None
    last_beat: str | None = None
    receipts: int | None = None
    """The receipt version its daemon sends (:mod:`swarmbus.receipts`); None: it sends none
    (the predecessor, or a swarmbus older than receipts)."""
    role: str | None = None
    """The agent's declared role (``swarmbus start --role``), or None."""
    capabilities: tuple[str, ...] = ()
    """The agent's declared capabilities (``--capability``), at most 32; malformed ones are dropped."""
    swarm: str | None = None
    """The swarm the agent declared it belongs to (``--swarm``), or None."""

    @property
    def online(self) -> bool:
        return self.status == "online"

    @property
    def last_seen(self) -> str | None:
        """The later of the record's own time and the instance's last heartbeat (ISO 8601)."""
        stamps = [t for t in (self.ts, self.last_beat) if t]
        if not stamps:
            return None
        from swarmbus.envelope import parse_timestamp

        try:
            return max(stamps, key=lambda t: parse_timestamp(t).timestamp())
        except ValueError:
            return stamps[0]


@dataclass(frozen=True)
class Heartbeat:
    """A heartbeat record: ``{"agent", "ts", "instance"}`` on ``agents/<id>/presence/heartbeat``."""

    agent: str
    ts: str
    instance: str | None = None


def presence_payload(agent_id: str, status: str, **fields: Any) -> bytes:
    """``{"agent": id, "status": status, ...}``: the predecessor's two keys come first."""
    body: dict[str, Any] = {"agent": agent_id, "status": status}
    body.update({k: v for k, v in fields.items() if v is not None})
    return json.dumps(body).encode("utf-8")


def parse_presence(topic: str, payload: bytes) -> Presence | None:
    """Parse a retained presence record; None when it is empty (cleared) or malformed,
    or when the payload's ``agent`` disagrees with the topic."""
    agent = agent_of(topic, "presence")
    if agent is None or not payload:
        return None
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("agent") != agent:
        return None
    status = data.get("status")
    if status not in ("online", "offline"):
        return None
    hb = data.get("heartbeat_s")
    pid = data.get("pid")
    receipts = data.get("receipts")
    return Presence(
        agent=agent,
        status=status,
        ts=_str(data, "ts"),
        heartbeat_s=float(hb) if isinstance(hb, int | float) and not isinstance(hb, bool) else None,
        version=_str(data, "version"),
        instance=_str(data, "instance"),
        host=_str(data, "host"),
        pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
        reason=_str(data, "reason"),
        receipts=receipts if isinstance(receipts, int) and not isinstance(receipts, bool) and receipts > 0 else None,
        role=_name(data, "role"),
        capabilities=_names(data.get("capabilities")),
        swarm=_name(data, "swarm"),
    )


MAX_CAPABILITIES = 32


def _name(data: dict[str, Any], key: str) -> str | None:
    """A role or swarm name (the agent-id charset), or None when absent or malformed."""
    value = data.get(key)
    return value if isinstance(value, str) and AGENT_ID_RE.match(value) else None


def _names(value: Any) -> tuple[str, ...]:
    """Capability names: the well-formed ones of a list, first 32, without duplicates."""
    if not isinstance(value, list):
        return ()
    names = (v for v in value if isinstance(v, str) and AGENT_ID_RE.match(v))
    return tuple(dict.fromkeys(names))[:MAX_CAPABILITIES]


def _str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value[:200] if isinstance(value, str) else None


def parse_heartbeat(topic: str, payload: bytes) -> Heartbeat | None:
    """Parse a retained heartbeat; None when it is empty, malformed or for another agent."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[3] != "heartbeat" or not payload:
        return None
    agent = agent_of("/".join(parts[:3]), "presence")
    if agent is None:
        return None
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("agent") != agent or not isinstance(data.get("ts"), str):
        return None
    return Heartbeat(agent, data["ts"][:64], _str(data, "instance"))


def merge_heartbeats(records: dict[str, Presence], beats: dict[str, Heartbeat]) -> list[Presence]:
    """The presence records, sorted by agent, each with ``last_beat`` from its own instance's
    heartbeat (a heartbeat from another instance says nothing about this record)."""
    out = []
    for agent in sorted(records):
        record, beat = records[agent], beats.get(agent)
        if beat is not None and (record.instance is None or beat.instance == record.instance):
            record = replace(record, last_beat=beat.ts)
        out.append(record)
    return out
