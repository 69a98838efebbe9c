"""MQTT topic names and the presence payload (wire-compatible with swarmbus-py 0.2.0).

| topic                    | retained | meaning                                     |
|--------------------------|----------|---------------------------------------------|
| ``agents/<id>/inbox``    | no       | directed messages for ``<id>``              |
| ``agents/broadcast``     | no       | messages for everyone (never to the sender) |
| ``agents/<id>/presence`` | yes      | online/offline record, also the Last Will   |

All are published and subscribed at QoS 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from swarmbus.envelope import AGENT_ID_RE, BROADCAST

QOS = 1
BROADCAST_TOPIC = "agents/broadcast"
PRESENCE_FILTER = "agents/+/presence"


def inbox_topic(agent_id: str) -> str:
    return f"agents/{agent_id}/inbox"


def presence_topic(agent_id: str) -> str:
    return f"agents/{agent_id}/presence"


def topic_for_recipient(to: str) -> str:
    """The topic a message for ``to`` is published on."""
    return BROADCAST_TOPIC if to == BROADCAST else inbox_topic(to)


def agent_of(topic: str, kind: str) -> str | None:
    """``agents/<id>/<kind>`` -> ``<id>`` (validated), else None."""
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == "agents" and parts[2] == kind and AGENT_ID_RE.match(parts[1]):
        return parts[1]
    return None


@dataclass(frozen=True)
class Presence:
    """A presence record. ``ts`` is when it was published (ISO 8601) or None for the
    predecessor's records, which carry only ``agent`` and ``status``."""

    agent: str
    status: str
    ts: str | None = None
    heartbeat_s: float | None = None
    version: str | None = None

    @property
    def online(self) -> bool:
        return self.status == "online"


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
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("agent") != agent:
        return None
    status = data.get("status")
    if status not in ("online", "offline"):
        return None
    hb = data.get("heartbeat_s")
    return Presence(
        agent=agent,
        status=status,
        ts=data.get("ts") if isinstance(data.get("ts"), str) else None,
        heartbeat_s=float(hb) if isinstance(hb, int | float) else None,
        version=data.get("version") if isinstance(data.get("version"), str) else None,
    )
