"""MQTT topic names and the presence payload (wire-compatible with swarmbus-py 0.2.0).

| topic                    | retained | meaning                                     |
|--------------------------|----------|---------------------------------------------|
| ``agents/<id>/inbox``    | no       | directed messages for ``<id>``              |
| ``agents/broadcast``     | no       | messages for everyone (never to the sender) |
| ``agents/<id>/presence`` | yes      | online/offline record, also the Last Will   |
| ``agents/<id>/presence/heartbeat`` | yes | the daemon's last heartbeat (new; the predecessor ignores it) |
| ``agents/<id>/receipts`` | no       | delivery receipts for messages ``<id>`` sent (new; :mod:`swarmbus.receipts`) |

**Verified senders** (new; ``security.verify_senders``): the sender appends its own id, so a
broker ACL can bind that segment to the authenticated user (docs/security.md):
``agents/<id>/inbox/<from>``, ``agents/broadcast/<from>``, ``agents/<id>/receipts/<by>``. Every
receiver subscribes to both forms; a sender segment that differs from the envelope's ``from``
(or the receipt's ``by``) is always refused, and with verification on the plain forms are too.

All are published and subscribed at QoS 1. The presence record changes only when the status
does (connect, clean stop, Last Will); the heartbeat is separate so that after a crash, when the
Last Will has replaced the record, "last seen" is still the last heartbeat. The records' payloads
are in :mod:`swarmbus.presence_records`. Stdlib-only and cheap to import: ``swarmbus send`` uses it.
"""

from __future__ import annotations

from typing import NamedTuple

from swarmbus.envelope import AGENT_ID_RE, BROADCAST

QOS = 1
BROADCAST_TOPIC = "agents/broadcast"
PRESENCE_FILTER = "agents/+/presence/#"
"""Every presence record and heartbeat (``#`` also matches the parent level)."""


def inbox_topic(agent_id: str, sender: str | None = None) -> str:
    """``agents/<id>/inbox``, or ``agents/<id>/inbox/<sender>`` (a verified sender)."""
    return f"agents/{agent_id}/inbox" if sender is None else f"agents/{agent_id}/inbox/{sender}"


def broadcast_topic(sender: str | None = None) -> str:
    """``agents/broadcast``, or ``agents/broadcast/<sender>`` (a verified sender)."""
    return BROADCAST_TOPIC if sender is None else f"{BROADCAST_TOPIC}/{sender}"


def presence_topic(agent_id: str) -> str:
    return f"agents/{agent_id}/presence"


def heartbeat_topic(agent_id: str) -> str:
    return f"agents/{agent_id}/presence/heartbeat"


def receipts_topic(agent_id: str, by: str | None = None) -> str:
    """Where receipts for the messages ``agent_id`` sent are published: ``agents/<id>/receipts``,
    or ``agents/<id>/receipts/<by>`` from a verified receiver ``by``."""
    return f"agents/{agent_id}/receipts" if by is None else f"agents/{agent_id}/receipts/{by}"


def topic_for_recipient(to: str, sender: str | None = None) -> str:
    """The topic a message for ``to`` is published on; with ``sender`` (verified senders) the
    sender's id is its last segment."""
    return broadcast_topic(sender) if to == BROADCAST else inbox_topic(to, sender)


def receive_filters(agent_id: str) -> list[tuple[str, bool]]:
    """What an agent's receive session subscribes to, as ``(topic, no_local)``: its inbox, and
    broadcast with MQTT 5 no-local (so its own broadcasts do not come back), each in both the
    plain and the verified-sender form (the two never match the same topic)."""
    return [(inbox_topic(agent_id), False), (inbox_topic(agent_id, "+"), False),
            (BROADCAST_TOPIC, True), (broadcast_topic("+"), True)]


def receipt_filters(agent_id: str) -> list[str]:
    """The receipts for ``agent_id``'s sends, plain and from verified receivers."""
    return [receipts_topic(agent_id), receipts_topic(agent_id, "+")]


def sync_topic(prefix: str, username: str | None, agent_id: str | None, token: str) -> str:
    """A connection-private sync topic, ``<prefix>/sync/<owner>/<token>``. ``owner`` is the
    broker user name when it is a valid id, else the agent id, else ``anon``, so an ACL can give
    each user its own sync topics (``swarmbus broker acl``: ``swarmbus/sync/<user>/#``)."""
    owner = username if username is not None and AGENT_ID_RE.match(username) else (agent_id or "anon")
    return f"{prefix}/sync/{owner}/{token}"


class Route(NamedTuple):
    """What an inbound message topic says: ``recipient`` is the inbox owner or ``broadcast``;
    ``sender`` the verified-sender segment, None on the plain topic."""

    recipient: str
    sender: str | None


def route_of(topic: str) -> Route | None:
    """``agents/<id>/inbox[/<from>]`` or ``agents/broadcast[/<from>]`` -> its :class:`Route`
    (ids validated); anything else -> None."""
    parts = topic.split("/")
    n = len(parts)
    if parts[0] != "agents" or n < 2:
        return None
    if parts[1] == BROADCAST and n <= 3:
        recipient = BROADCAST
        sender = parts[2] if n == 3 else None
    elif 3 <= n <= 4 and parts[2] == "inbox" and AGENT_ID_RE.match(parts[1]):
        recipient = parts[1]
        sender = parts[3] if n == 4 else None
    else:
        return None
    if sender is not None and not AGENT_ID_RE.match(sender):
        return None
    return Route(recipient, sender)


def receipt_signer(topic: str, agent_id: str) -> tuple[bool, str | None]:
    """For a topic under ``agents/<agent_id>/receipts``: (True, the verified receiver segment or
    None on the plain topic); (False, None) for any other topic."""
    base = receipts_topic(agent_id)
    if topic == base:
        return True, None
    if topic.startswith(base + "/"):
        by = topic[len(base) + 1:]
        if AGENT_ID_RE.match(by):
            return True, by
    return False, None


def agent_of(topic: str, kind: str) -> str | None:
    """``agents/<id>/<kind>`` -> ``<id>`` (validated), else None."""
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == "agents" and parts[2] == kind and AGENT_ID_RE.match(parts[1]):
        return parts[1]
    return None


# -- jobs (issue 13; docs/jobs.md): swarmbus/jobs/<job_id>/<kind>/<agent>, the agent id last -------------

JOB_KINDS = ("record", "events", "outcome")
"""The kinds of job topic: the retained job record (``<agent>`` is its owner), the events (not
retained) and the retained terminal event (``<agent>`` is the one that reported it)."""


def job_topic(job_id: str, kind: str, agent: str) -> str:
    """``swarmbus/jobs/<job_id>/<kind>/<agent>``; ``kind`` is one of :data:`JOB_KINDS` (not checked:
    callers pass validated ids and a known kind)."""
    return f"swarmbus/jobs/{job_id}/{kind}/{agent}"


def job_record_topic(job_id: str, owner: str) -> str:
    """Where ``owner`` publishes the job's record (retained)."""
    return job_topic(job_id, "record", owner)


def job_events_topic(job_id: str, by: str) -> str:
    """Where ``by`` publishes the job's events (not retained)."""
    return job_topic(job_id, "events", by)


def job_outcome_topic(job_id: str, by: str) -> str:
    """Where ``by`` publishes the job's terminal event (retained)."""
    return job_topic(job_id, "outcome", by)


def job_filter(job_id: str | None = None, kind: str | None = None) -> str:
    """A subscription filter: everything of one job (``swarmbus/jobs/<id>/#``), of every job
    (``swarmbus/jobs/#``), or with ``kind`` one kind of topic (``swarmbus/jobs/<id or +>/<kind>/+``)."""
    if kind is not None:
        return f"swarmbus/jobs/{job_id or '+'}/{kind}/+"
    return f"swarmbus/jobs/{job_id}/#" if job_id is not None else "swarmbus/jobs/#"


class JobTopic(NamedTuple):
    """What a job topic says: the job id, its kind (one of :data:`JOB_KINDS`) and the agent id in
    its last segment (the record's owner, or the event's reporter)."""

    job_id: str
    kind: str
    agent: str


def job_topic_of(topic: str) -> JobTopic | None:
    """``swarmbus/jobs/<job_id>/<kind>/<agent>`` -> its :class:`JobTopic` (ids validated with the
    agent-id rule, the kind one of :data:`JOB_KINDS`); anything else -> None. Never raises."""
    parts = topic.split("/")
    if (len(parts) != 5 or parts[0] != "swarmbus" or parts[1] != "jobs" or parts[3] not in JOB_KINDS
            or not AGENT_ID_RE.match(parts[2]) or not AGENT_ID_RE.match(parts[4])):
        return None
    return JobTopic(parts[2], parts[3], parts[4])
