"""The broker's records as the dashboard reads them: presence, jobs and tasks.

Everything here is hostile input (any peer may publish anything on these topics when the broker
has no ACL): a payload is parsed strictly (at most :data:`MAX_PAYLOAD` bytes of UTF-8 JSON, no
duplicate keys, no ``NaN``), validated by a pydantic model that allows extra fields, and checked
against its topic (the ids in the topic must be the ids in the payload: the topic's last segment
is what a least-privilege ACL vouches for). What fails becomes a ``malformed`` :class:`Item` with
its reason; :func:`classify` never raises. Pure functions, no I/O.

Topics (docs/swarm.md, the issue 13 contract; QoS 1):

- ``agents/<id>/presence`` and ``agents/<id>/presence/heartbeat`` (retained): presence
  (:mod:`swarmbus.presence_records`) plus the swarm keys ``role``, ``capabilities``, ``swarm``;
- ``swarmbus/jobs/<job_id>/record/<owner>`` (retained): :class:`JobRecord`;
- ``swarmbus/jobs/<job_id>/events/<by>``: :class:`JobEvent`;
- ``swarmbus/jobs/<job_id>/outcome/<by>`` (retained): the terminal :class:`JobEvent`;
- ``swarmbus/tasks/<task_id>/state/<owner>`` (retained): :class:`TaskState`.

An empty retained payload clears the record: its :class:`Item` has ``value`` None.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, StringConstraints, ValidationError

from swarmbus.envelope import AGENT_ID_RE
from swarmbus.presence_records import parse_heartbeat, parse_presence
from swarmbus.strict_json import StrictJSONError, strict_loads
from swarmbus.topics import PRESENCE_FILTER

PREFIX = "swarmbus"
"""The first segment of the jobs and tasks topics."""
JOBS_FILTER = f"{PREFIX}/jobs/#"
TASKS_FILTER = f"{PREFIX}/tasks/+/state/+"
FILTERS = (PRESENCE_FILTER, JOBS_FILTER, TASKS_FILTER)
"""What the dashboard subscribes to."""

MAX_PAYLOAD = 256 * 1024
"""Bytes: a larger record is malformed (the dashboard keeps none of it)."""
TEXT_CHARS = 300
"""Characters of any text or JSON value the page is sent (the rest is cut, with an ellipsis)."""

Id = Annotated[str, StringConstraints(strict=True, pattern=r"^[a-z0-9_-]{1,64}$")]
Stamp = Annotated[str, StringConstraints(strict=True, max_length=64)]
Word = Annotated[str, StringConstraints(strict=True, pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
Short = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=200)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class JobRecord(_Model):
    """``{"job_id", "owner", "delegate", "prompt", "payload", "created_at", "v"}``."""

    job_id: Id
    owner: Id
    delegate: Id | None = None
    prompt: StrictStr | None = None
    payload: Any = None
    created_at: Stamp | None = None
    v: StrictInt = 1


class JobEvent(_Model):
    """``{"job_id", "event", "detail", "by", "at", "v"}``; ``event`` one of started, progress,
    completed, error (an outcome: completed or error)."""

    job_id: Id
    event: Literal["started", "progress", "completed", "error"]
    detail: StrictStr | None = None
    by: Id
    at: Stamp | None = None
    v: StrictInt = 1


class TaskState(_Model):
    """The task board's retained state of one task (see the contract); ``state`` is open,
    claimed, completed or failed (another lower-case word is shown as it is)."""

    task_id: Id
    type: Short
    owner: Id
    role: Short | None = None
    capabilities: list[Short] = Field(default_factory=list, max_length=64)
    payload: Any = None
    state: Word
    claimer: Id | None = None
    fence: StrictInt = 0
    attempt: StrictInt = 0
    max_attempts: StrictInt = 0
    lease_until: Stamp | None = None
    result: Any = None
    error: Any = None
    created_at: Stamp | None = None
    updated_at: Stamp | None = None
    v: StrictInt = 1


Kind = Literal["presence", "heartbeat", "job_record", "job_event", "job_outcome", "task", "malformed"]


@dataclass(frozen=True)
class Item:
    """One classified publish. ``key``: the agent id (presence), the job id (jobs) or
    ``<task_id>/<owner>`` (tasks); ``segment``: the topic's last segment (the owner or ``by``);
    ``value``: the parsed record, or None when a retained record was cleared; ``extras``: the
    presence record's swarm keys; ``reason``: why a ``malformed`` item was refused."""

    kind: Kind
    topic: str
    key: str = ""
    segment: str = ""
    value: Any = None
    extras: dict[str, Any] | None = None
    reason: str = ""


class _Malformed(ValueError):
    pass


def load_json(payload: bytes) -> Any:
    """Strict JSON: at most :data:`MAX_PAYLOAD` bytes of UTF-8, no duplicate keys, no NaN or
    Infinity, no nesting deep enough to exhaust the stack. :raises ValueError: with the reason."""
    try:
        return strict_loads(payload, max_bytes=MAX_PAYLOAD)
    except StrictJSONError as exc:
        raise _Malformed(str(exc)) from None


def _errors(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:3]:
        where = ".".join(str(p) for p in error.get("loc", ())) or "record"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _valid_id(value: str) -> bool:
    return bool(AGENT_ID_RE.match(value))


def classify(topic: str, payload: bytes) -> Item | None:
    """The :class:`Item` a publish on ``topic`` is, or None for a topic the dashboard does not
    show (a part of the jobs tree it does not know). Never raises."""
    try:
        return _classify(topic, payload)
    except Exception as exc:  # a bug here must not stop the broker client: show it as malformed
        return Item("malformed", topic, reason=f"unreadable ({type(exc).__name__})")


def _classify(topic: str, payload: bytes) -> Item | None:
    parts = topic.split("/")
    if parts[0] == "agents":
        return _presence(topic, parts, payload)
    if len(parts) < 2 or parts[0] != PREFIX:
        return None
    if parts[1] == "jobs":
        if len(parts) != 5 or parts[3] not in ("record", "events", "outcome"):
            return None
        return _job(topic, parts[2], parts[3], parts[4], payload)
    if parts[1] == "tasks" and len(parts) == 5 and parts[3] == "state":
        return _task(topic, parts[2], parts[4], payload)
    return None


def _presence(topic: str, parts: list[str], payload: bytes) -> Item | None:
    if len(parts) == 3 and parts[2] == "presence" and _valid_id(parts[1]):
        if not payload:
            return Item("presence", topic, key=parts[1])
        record = parse_presence(topic, payload)
        if record is None:
            return Item("malformed", topic, key=parts[1], reason="not a presence record for this agent")
        return Item("presence", topic, key=record.agent, value=record, extras=presence_extras(payload))
    if len(parts) == 4 and parts[2] == "presence" and parts[3] == "heartbeat" and _valid_id(parts[1]):
        if not payload:
            return Item("heartbeat", topic, key=parts[1])
        beat = parse_heartbeat(topic, payload)
        if beat is None:
            return Item("malformed", topic, key=parts[1], reason="not a heartbeat for this agent")
        return Item("heartbeat", topic, key=beat.agent, value=beat)
    return None


def presence_extras(payload: bytes) -> dict[str, Any]:
    """The swarm keys of a presence record that parsed: ``role`` and ``swarm`` (text, at most
    64 characters) and ``capabilities`` (at most 64 texts); a key of another type is left out."""
    try:
        data = load_json(payload)
    except ValueError:
        return {}
    out: dict[str, Any] = {}
    if not isinstance(data, dict):
        return out
    for key in ("role", "swarm"):
        value = data.get(key)
        if isinstance(value, str) and value:
            out[key] = value[:64]
    caps = data.get("capabilities")
    if isinstance(caps, list):
        out["capabilities"] = [c[:64] for c in caps[:64] if isinstance(c, str) and c]
    return out


def _job(topic: str, job_id: str, part: str, segment: str, payload: bytes) -> Item:
    kind: Kind = {"record": "job_record", "events": "job_event", "outcome": "job_outcome"}[part]  # type: ignore[assignment]
    if not (_valid_id(job_id) and _valid_id(segment)):
        return Item("malformed", topic, reason="the job id or agent id in the topic is not a valid id")
    if not payload:
        if kind == "job_event":
            return Item("malformed", topic, key=job_id, segment=segment, reason="an empty event")
        return Item(kind, topic, key=job_id, segment=segment)
    try:
        data = load_json(payload)
        if kind == "job_record":
            value: JobRecord | JobEvent = JobRecord.model_validate(data)
        else:
            value = JobEvent.model_validate(data)
    except ValidationError as exc:
        return Item("malformed", topic, key=job_id, segment=segment, reason=_errors(exc))
    except ValueError as exc:
        return Item("malformed", topic, key=job_id, segment=segment, reason=str(exc))
    if value.job_id != job_id:
        return Item("malformed", topic, key=job_id, segment=segment,
                    reason=f"job_id {value.job_id!r} is not the topic's {job_id!r}")
    signer = value.owner if isinstance(value, JobRecord) else value.by
    if signer != segment:
        field = "owner" if isinstance(value, JobRecord) else "by"
        return Item("malformed", topic, key=job_id, segment=segment,
                    reason=f"{field} {signer!r} is not the topic's {segment!r}")
    if kind == "job_outcome" and isinstance(value, JobEvent) and value.event not in ("completed", "error"):
        return Item("malformed", topic, key=job_id, segment=segment,
                    reason=f"an outcome must be completed or error, not {value.event}")
    return Item(kind, topic, key=job_id, segment=segment, value=value)


def _task(topic: str, task_id: str, owner: str, payload: bytes) -> Item:
    if not (_valid_id(task_id) and _valid_id(owner)):
        return Item("malformed", topic, reason="the task id or owner in the topic is not a valid id")
    key = f"{task_id}/{owner}"
    if not payload:
        return Item("task", topic, key=key, segment=owner)
    try:
        value = TaskState.model_validate(load_json(payload))
    except ValidationError as exc:
        return Item("malformed", topic, key=key, segment=owner, reason=_errors(exc))
    except ValueError as exc:
        return Item("malformed", topic, key=key, segment=owner, reason=str(exc))
    if value.task_id != task_id:
        return Item("malformed", topic, key=key, segment=owner,
                    reason=f"task_id {value.task_id!r} is not the topic's {task_id!r}")
    if value.owner != owner:
        return Item("malformed", topic, key=key, segment=owner,
                    reason=f"owner {value.owner!r} is not the topic's {owner!r}")
    return Item("task", topic, key=key, segment=owner, value=value)


# -- what the page is sent ----------------------------------------------------------------------------


def text(value: str | None, limit: int = TEXT_CHARS) -> str | None:
    """``value`` cut to ``limit`` characters (with an ellipsis), or None."""
    if value is None:
        return None
    return value if len(value) <= limit else value[:limit - 1] + "…"


def preview(value: Any, limit: int = TEXT_CHARS) -> str | None:
    """A JSON value as short text: a string as itself, anything else as compact JSON; None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        return text(value, limit)
    try:
        shown = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (ValueError, TypeError, RecursionError):
        shown = "(unprintable)"
    return text(shown, limit)


def seconds(stamp: str | None) -> float | None:
    """An RFC 3339 / ISO 8601 time as Unix seconds (naive: UTC), or None when it is not one."""
    if not stamp:
        return None
    try:
        parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00") if stamp.endswith("Z") else stamp)
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
