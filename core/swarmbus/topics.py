"""MQTT topic names and the presence payload (wire-compatible with swarmbus-py 0.2.0).

| topic                    | retained | meaning                                     |
|--------------------------|----------|---------------------------------------------|
| ``agents/<id>/inbox``    | no       | directed messages for ``<id>``              |
| ``agents/broadcast``     | no       | messages for everyone (never to the sender) |
| ``agents/<id>/presence`` | yes      | online/offline record, also the Last Will   |
| ``agents/<id>/presence/heartbeat`` | yes | the daemon's last heartbeat (new; the predecessor ignores it) |
| ``agents/<id>/receipts`` | no       | delivery receipts for messages ``<id>`` sent (new; :mod:`swarmbus.receipts`) |

All are published and subscribed at QoS 1. The presence record changes only when the status
does (connect, clean stop, Last Will); the heartbeat is separate so that after a crash, when the
Last Will has replaced the record, "last seen" is still the last heartbeat. The records' payloads
are in :mod:`swarmbus.presence_records`. Stdlib-only and cheap to import: ``swarmbus send`` uses it.
"""

from __future__ import annotations

from swarmbus.envelope import AGENT_ID_RE, BROADCAST

QOS = 1
BROADCAST_TOPIC = "agents/broadcast"
PRESENCE_FILTER = "agents/+/presence/#"
"""Every presence record and heartbeat (``#`` also matches the parent level)."""


def inbox_topic(agent_id: str) -> str:
    return f"agents/{agent_id}/inbox"


def presence_topic(agent_id: str) -> str:
    return f"agents/{agent_id}/presence"


def heartbeat_topic(agent_id: str) -> str:
    return f"agents/{agent_id}/presence/heartbeat"


def receipts_topic(agent_id: str) -> str:
    """Where receipts for the messages ``agent_id`` sent are published."""
    return f"agents/{agent_id}/receipts"


def topic_for_recipient(to: str) -> str:
    """The topic a message for ``to`` is published on."""
    return BROADCAST_TOPIC if to == BROADCAST else inbox_topic(to)


def receive_filters(agent_id: str) -> list[tuple[str, bool]]:
    """What an agent's receive session subscribes to, as ``(topic, no_local)``: its inbox, and
    broadcast with MQTT 5 no-local (so its own broadcasts do not come back)."""
    return [(inbox_topic(agent_id), False), (BROADCAST_TOPIC, True)]


def agent_of(topic: str, kind: str) -> str | None:
    """``agents/<id>/<kind>`` -> ``<id>`` (validated), else None."""
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == "agents" and parts[2] == kind and AGENT_ID_RE.match(parts[1]):
        return parts[1]
    return None
