"""The task board's wire format: topics, offers, protocol messages and state records (stdlib only).

Topics (QoS 1; the publisher's id is always the last segment, so an ACL can bind it):

| topic | retained | publisher | what |
|---|---|---|---|
| ``swarmbus/tasks/<task_id>/state/<owner>`` | yes | the task's arbiter (its poster's daemon) | the task's state record, on every change |
| ``swarmbus/tasks/_offer/<swarm>/<role>/<capability>/<owner>`` | no | the arbiter | an offer: "this task is open, claim it" |

In an offer topic ``<swarm>``, ``<role>`` and ``<capability>`` are names, or ``~`` for none
(``~many`` as the capability for a task that needs two or more): every agent that could take a
task offered there is subscribed to exactly that topic, so an MQTT 5 shared subscription
(``$share/swarmbus-tasks/<topic filter>``) hands each offer to one of them. ``_offer``, ``~`` and
``~many`` cannot be task ids or names (those never start with ``_`` ... ``~`` is outside their
charset; ``_offer`` is refused as a task id).

Everything else travels as ordinary swarmbus messages between the two daemons (inbox topics,
the daemon's durable outbox and its redelivery, verified senders), with the content type
:data:`TASK_CONTENT_TYPE` and a JSON body (:class:`TaskMessage`):

- claimer -> arbiter: ``claim``, ``renew``, ``complete``, ``fail``;
- arbiter -> claimer: ``grant`` (carries the task), ``refuse`` (says why), ``ack`` (a
  completion or failure was accepted).

Every parser here has a total contract: for any input it returns a value or raises
:class:`TaskWireError` with a short reason, never anything else.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from swarmbus.envelope import AGENT_ID_RE, parse_timestamp
from swarmbus.strict_json import StrictJSONError, strict_loads

WIRE_VERSION = 1
TASK_CONTENT_TYPE = "application/vnd.swarmbus.task+json"
PREFIX = "swarmbus/tasks"
OFFER = "_offer"
NONE = "~"
MANY = "~many"
SHARE_GROUP = "swarmbus-tasks"
STATE_FILTER = f"{PREFIX}/+/state/+"
"""Every task's retained state record."""

MAX_BODY_BYTES = 65_536
"""A protocol message is a message body: at most 64 KiB of UTF-8."""
MAX_VALUE_BYTES = 49_152
"""A task's payload, or its result, as JSON: at most 48 KiB (the rest of a grant must fit too)."""
MAX_TEXT_CHARS = 2000
"""An error or a refusal reason, at most (longer ones are cut when made, refused when parsed)."""
MAX_NAMES = 32
MAX_ATTEMPTS = 100
MAX_LEASE = 86_400.0
MIN_LEASE = 0.5
MAX_INT = 2**53
MAX_DEPTH = 64

STATES = ("open", "claimed", "completed", "failed")
TERMINAL = ("completed", "failed")
TO_ARBITER = ("claim", "renew", "complete", "fail")
TO_CLAIMER = ("grant", "refuse", "ack")
OPS = TO_ARBITER + TO_CLAIMER
PRIORITIES = ("low", "normal", "high")

TYPE_RE = re.compile(r"\A[a-z0-9][a-z0-9._-]{0,63}\Z")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class TaskWireError(ValueError):
    """Input the task board refuses; the message says why."""


def iso(t: float | None) -> str | None:
    """Unix seconds as RFC 3339 UTC (None stays None)."""
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat()


# -- names and ids -------------------------------------------------------------------------------
def new_task_id() -> str:
    """A fresh task id: ``t-`` and 16 hex digits (unique enough: 64 random bits)."""
    return "t-" + os.urandom(8).hex()


def check_task_id(value: object) -> str:
    """:raises TaskWireError: not 1-64 of a-z 0-9 _ - (or the reserved ``_offer``)."""
    if isinstance(value, str) and AGENT_ID_RE.match(value) and value != OFFER:
        return value
    raise TaskWireError(f"task id {_show(value)} is not 1-64 of a-z, 0-9, '_' and '-'")


def check_type(value: object) -> str:
    """A task type: 1-64 of a-z 0-9 . _ -, starting with a letter or digit (``example.echo``).
    :raises TaskWireError:"""
    if isinstance(value, str) and TYPE_RE.match(value):
        return value
    raise TaskWireError(f"task type {_show(value)} is not 1-64 of a-z, 0-9, '.', '_' and '-' (e.g. example.echo)")


def check_name(value: object, what: str) -> str:
    """An agent id, role, capability or swarm name. :raises TaskWireError:"""
    if isinstance(value, str) and AGENT_ID_RE.match(value):
        return value
    raise TaskWireError(f"{what} {_show(value)} is not 1-64 of a-z, 0-9, '_' and '-'")


def _opt_name(value: object, what: str) -> str | None:
    return None if value is None else check_name(value, what)


def check_names(value: object, what: str = "capability") -> tuple[str, ...]:
    """A list of at most 32 distinct names, returned sorted. :raises TaskWireError:"""
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise TaskWireError(f"{what} names must be a list, not {_kind(value)}")
    if len(value) > MAX_NAMES:
        raise TaskWireError(f"at most {MAX_NAMES} {what} names, not {len(value)}")
    return tuple(sorted({check_name(v, what) for v in value}))


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


# -- strict JSON ------------------------------------------------------------------------------------
def loads(data: str | bytes, limit: int = MAX_BODY_BYTES) -> Any:
    """Strict JSON (:func:`swarmbus.strict_json.strict_loads`: UTF-8, at most ``limit`` bytes, no
    duplicate keys, no NaN/Infinity, no huge integers), nesting at most 64 deep, ASCII-safe text.
    :raises TaskWireError:"""
    if not isinstance(data, str | bytes | bytearray):
        raise TaskWireError(f"expected text, not {_kind(data)}")
    try:
        value = strict_loads(data, max_bytes=limit)
    except StrictJSONError as exc:
        raise TaskWireError(f"the JSON {exc}") from None
    _check_depth(value, 0)
    return value


def _check_depth(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise TaskWireError(f"JSON nests more than {MAX_DEPTH} deep")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, "a JSON key")
            _check_depth(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_depth(item, depth + 1)
    elif isinstance(value, str):
        _check_text(value, "a JSON string")


def _check_text(value: str, what: str) -> None:
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise TaskWireError(f"{what} holds a lone surrogate") from None


def dumps(value: Any) -> str:
    """Compact JSON (UTF-8 characters kept). :raises TaskWireError: not a JSON value."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise TaskWireError(f"not a JSON value: {str(exc)[:120]}") from None


def check_value(value: Any, what: str = "payload") -> Any:
    """A task payload or result: any JSON value of at most 48 KiB. :raises TaskWireError:"""
    text = dumps(value)
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_VALUE_BYTES:
        raise TaskWireError(f"the {what} is {size} bytes as JSON; the limit is {MAX_VALUE_BYTES} (48 KiB)")
    _check_depth(value, 0)
    return value


def _text(value: object, what: str, *, limit: int = MAX_TEXT_CHARS) -> str:
    if not isinstance(value, str):
        raise TaskWireError(f"{what} must be a string, not {_kind(value)}")
    if len(value) > limit:
        raise TaskWireError(f"{what} is {len(value)} characters; at most {limit}")
    return value


def clean_text(value: str, limit: int = MAX_TEXT_CHARS) -> str:
    """``value`` without control characters (newlines and tabs kept), cut to ``limit``."""
    return _CONTROL_RE.sub("\ufffd", value)[:limit]


def _int_field(data: dict[str, Any], key: str, *, low: int = 0, high: int = MAX_INT) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise TaskWireError(f"{key} must be an integer from {low} to {high}, not {_show(value)}")
    return value


def _number(data: dict[str, Any], key: str, low: float, high: float) -> float:
    value = data.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        raise TaskWireError(f"{key} must be a number from {low:g} to {high:g}, not {_show(value)}")
    return float(value)


def _stamp(data: dict[str, Any], key: str, *, optional: bool = False) -> str | None:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise TaskWireError(f"{key} must be an RFC 3339 time, not {_show(value)}")
    try:
        parse_timestamp(value)
    except ValueError:
        raise TaskWireError(f"{key} must be an RFC 3339 time, not {_show(value)}") from None
    return value


def _object(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise TaskWireError(f"{what} must be a JSON object, not {_kind(data)}")
    if data.get("v") != WIRE_VERSION:
        raise TaskWireError(f"{what} has version {_show(data.get('v'))}; this swarmbus speaks {WIRE_VERSION}")
    return data


# -- eligibility --------------------------------------------------------------------------------------
def ineligible(task_role: str | None, task_capabilities: Iterable[str], task_swarm: str | None,
               role: str | None, capabilities: Iterable[str], swarm: str | None) -> str | None:
    """Why an agent declaring ``role``, ``capabilities`` and ``swarm`` may not take a task that
    needs ``task_role`` (None: any), ``task_capabilities`` (all of them) in ``task_swarm``
    (None: agents of no swarm); None when it may."""
    if task_swarm != swarm:
        return f"the task is for swarm {task_swarm or '(none)'}, the agent is in {swarm or '(none)'}"
    if task_role is not None and task_role != role:
        return f"the task needs role {task_role}, the agent's role is {role or '(none)'}"
    missing = sorted(set(task_capabilities) - set(capabilities))
    if missing:
        return f"the agent lacks capability {', '.join(missing)}"
    return None


# -- topics -----------------------------------------------------------------------------------------------
def state_topic(task_id: str, owner: str) -> str:
    """``swarmbus/tasks/<task_id>/state/<owner>``: the retained state record."""
    return f"{PREFIX}/{task_id}/state/{owner}"


def state_filter(task_id: str) -> str:
    """One task's state record, whoever owns it."""
    return f"{PREFIX}/{task_id}/state/+"


def _pool(swarm: str | None, role: str | None, capabilities: Sequence[str]) -> str:
    cap = NONE if not capabilities else capabilities[0] if len(capabilities) == 1 else MANY
    return f"{swarm or NONE}/{role or NONE}/{cap}"


def offer_topic(swarm: str | None, role: str | None, capabilities: Sequence[str], owner: str) -> str:
    """Where the offers of a task for ``swarm``/``role``/``capabilities`` go (see the module docstring)."""
    return f"{PREFIX}/{OFFER}/{_pool(swarm, role, sorted(capabilities))}/{owner}"


def offer_filters(swarm: str | None, role: str | None, capabilities: Iterable[str]) -> list[str]:
    """The offer topics (filters, any owner) an agent declaring these may take tasks from: for its
    role and for no role, each with no capability, each one of its capabilities, and ``~many``."""
    caps = [NONE, *sorted(set(capabilities)), MANY]
    roles = [role, NONE] if role else [NONE]
    return [f"{PREFIX}/{OFFER}/{swarm or NONE}/{r}/{c}/+" for r in roles for c in caps]


def is_offer_topic(topic: str) -> bool:
    return topic.startswith(f"{PREFIX}/{OFFER}/")


def shared(topic_filter: str) -> str:
    """The MQTT 5 shared-subscription form of an offer filter."""
    return f"$share/{SHARE_GROUP}/{topic_filter}"


# -- the task and its offers ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskSpec:
    """What a task is, as posted (it does not change while the task lives)."""

    task_id: str
    type: str
    owner: str
    payload: Any = None
    role: str | None = None
    capabilities: tuple[str, ...] = ()
    swarm: str | None = None
    lease: float = 60.0
    max_attempts: int = 3
    priority: str = "high"
    created_at: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "type": self.type, "owner": self.owner, "role": self.role,
                "capabilities": list(self.capabilities), "swarm": self.swarm, "payload": self.payload,
                "lease": self.lease, "max_attempts": self.max_attempts, "priority": self.priority,
                "created_at": self.created_at}


def parse_spec(data: Any) -> TaskSpec:
    """A :class:`TaskSpec` from its JSON object (a grant's ``task``). :raises TaskWireError:"""
    if not isinstance(data, dict):
        raise TaskWireError(f"task must be a JSON object, not {_kind(data)}")
    priority = data.get("priority", "high")
    if priority not in PRIORITIES:
        raise TaskWireError(f"priority must be one of {', '.join(PRIORITIES)}, not {_show(priority)}")
    return TaskSpec(
        task_id=check_task_id(data.get("task_id")), type=check_type(data.get("type")),
        owner=check_name(data.get("owner"), "owner"), payload=check_value(data.get("payload")),
        role=_opt_name(data.get("role"), "role"), capabilities=check_names(data.get("capabilities")),
        swarm=_opt_name(data.get("swarm"), "swarm"), lease=_number(data, "lease", MIN_LEASE, MAX_LEASE),
        max_attempts=_int_field(data, "max_attempts", low=1, high=MAX_ATTEMPTS), priority=priority,
        created_at=_stamp(data, "created_at") or "")


@dataclass(frozen=True)
class Offer:
    """An open task, as offered: enough to decide whether to claim it (not its payload)."""

    task_id: str
    owner: str
    type: str
    role: str | None
    capabilities: tuple[str, ...]
    swarm: str | None
    attempt: int
    lease: float
    offered_at: str

    def to_json(self) -> dict[str, Any]:
        return {"v": WIRE_VERSION, "op": "offer", "task_id": self.task_id, "owner": self.owner, "type": self.type,
                "role": self.role, "capabilities": list(self.capabilities), "swarm": self.swarm,
                "attempt": self.attempt, "lease": self.lease, "offered_at": self.offered_at}

    @property
    def topic(self) -> str:
        return offer_topic(self.swarm, self.role, self.capabilities, self.owner)


def parse_offer(topic: str, payload: bytes) -> Offer:
    """An offer from its topic and bytes; the topic must be the one the offer belongs on, and its
    last segment the offer's owner. :raises TaskWireError:"""
    data = _object(loads(payload, 8192), "offer")
    if data.get("op") != "offer":
        raise TaskWireError(f"op must be offer, not {_show(data.get('op'))}")
    offer = Offer(task_id=check_task_id(data.get("task_id")), owner=check_name(data.get("owner"), "owner"),
                  type=check_type(data.get("type")), role=_opt_name(data.get("role"), "role"),
                  capabilities=check_names(data.get("capabilities")), swarm=_opt_name(data.get("swarm"), "swarm"),
                  attempt=_int_field(data, "attempt", low=1, high=MAX_ATTEMPTS),
                  lease=_number(data, "lease", MIN_LEASE, MAX_LEASE), offered_at=_stamp(data, "offered_at") or "")
    if offer.topic != topic:
        raise TaskWireError(f"an offer by {offer.owner} for {_pool(offer.swarm, offer.role, offer.capabilities)} "
                            f"does not belong on {_show(topic)}")
    return offer


# -- protocol messages ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskMessage:
    """One protocol message (the body of a :data:`TASK_CONTENT_TYPE` message). Which fields are
    set depends on ``op``:

    - ``claim``: ``attempt`` (the offer's), ``role``, ``capabilities``, ``swarm`` (the claimer's own);
    - ``renew``: ``fence``;
    - ``complete``: ``fence``, ``result``;
    - ``fail``: ``fence``, ``error``, ``final`` (True: do not offer it again);
    - ``grant``: ``fence``, ``attempt``, ``lease_until``, ``task`` (the :class:`TaskSpec`);
    - ``refuse``: ``of`` (the op refused), ``fence`` (the one it carried, or None), ``reason``,
      ``state`` and ``attempt`` (the task's, or None when unknown);
    - ``ack``: ``of`` (``complete`` or ``fail``), ``fence``, ``state`` (the task's state now).
    """

    op: str
    task_id: str
    fence: int | None = None
    attempt: int | None = None
    role: str | None = None
    capabilities: tuple[str, ...] = ()
    swarm: str | None = None
    result: Any = None
    error: str | None = None
    final: bool = False
    of: str | None = None
    reason: str | None = None
    state: str | None = None
    lease_until: str | None = None
    task: TaskSpec | None = field(default=None, compare=True)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": WIRE_VERSION, "op": self.op, "task_id": self.task_id}
        op = self.op
        if op == "claim":
            out.update(attempt=self.attempt, role=self.role, capabilities=list(self.capabilities), swarm=self.swarm)
        elif op == "renew":
            out.update(fence=self.fence)
        elif op == "complete":
            out.update(fence=self.fence, result=self.result)
        elif op == "fail":
            out.update(fence=self.fence, error=self.error or "", final=self.final)
        elif op == "grant":
            assert self.task is not None
            out.update(fence=self.fence, attempt=self.attempt, lease_until=self.lease_until, task=self.task.to_json())
        elif op == "refuse":
            out.update(of=self.of, fence=self.fence, reason=self.reason or "", state=self.state, attempt=self.attempt)
        elif op == "ack":
            out.update(of=self.of, fence=self.fence, state=self.state)
        return out

    def encode(self) -> str:
        """The message body. :raises TaskWireError: a result or payload that is not JSON."""
        return dumps(self.to_json())


def parse_message(body: str | bytes) -> TaskMessage:
    """Parse a protocol message body (see :class:`TaskMessage`). :raises TaskWireError:"""
    data = _object(loads(body), "task message")
    op = data.get("op")
    if op not in OPS:
        raise TaskWireError(f"op must be one of {', '.join(OPS)}, not {_show(op)}")
    task_id = check_task_id(data.get("task_id"))
    if op == "claim":
        return TaskMessage(op, task_id, attempt=_int_field(data, "attempt", low=1, high=MAX_ATTEMPTS),
                           role=_opt_name(data.get("role"), "role"), capabilities=check_names(data.get("capabilities")),
                           swarm=_opt_name(data.get("swarm"), "swarm"))
    fence = _int_field(data, "fence", low=1) if op != "refuse" or data.get("fence") is not None else None
    if op == "renew":
        return TaskMessage(op, task_id, fence=fence)
    if op == "complete":
        if "result" not in data:
            raise TaskWireError("a completion needs a result (null is one)")
        return TaskMessage(op, task_id, fence=fence, result=check_value(data["result"], "result"))
    if op == "fail":
        final = data.get("final", False)
        if not isinstance(final, bool):
            raise TaskWireError(f"final must be true or false, not {_show(final)}")
        return TaskMessage(op, task_id, fence=fence, error=_text(data.get("error"), "error"), final=final)
    if op == "grant":
        spec = parse_spec(data.get("task"))
        if spec.task_id != task_id:
            raise TaskWireError(f"the grant is for {task_id} but carries task {spec.task_id}")
        return TaskMessage(op, task_id, fence=fence, attempt=_int_field(data, "attempt", low=1, high=MAX_ATTEMPTS),
                           lease_until=_stamp(data, "lease_until"), task=spec)
    of = data.get("of")
    state = data.get("state")
    if op == "refuse":
        if of not in TO_ARBITER:
            raise TaskWireError(f"of must be one of {', '.join(TO_ARBITER)}, not {_show(of)}")
        if state is not None and state not in STATES:
            raise TaskWireError(f"state must be one of {', '.join(STATES)} or null, not {_show(state)}")
        attempt = None if data.get("attempt") is None else _int_field(data, "attempt", low=1, high=MAX_ATTEMPTS)
        return TaskMessage(op, task_id, fence=fence, of=of, reason=_text(data.get("reason"), "reason"),
                           state=state, attempt=attempt)
    if of not in ("complete", "fail"):
        raise TaskWireError(f"of must be complete or fail, not {_show(of)}")
    if state not in STATES:
        raise TaskWireError(f"state must be one of {', '.join(STATES)}, not {_show(state)}")
    return TaskMessage(op, task_id, fence=fence, of=of, state=state)


def subject_of(message: TaskMessage, spec: TaskSpec | None = None) -> str:
    """The subject line of a protocol message (what ``swarmbus trace``/``inbox`` shows)."""
    if message.op == "grant" and spec is not None:
        return f"task {spec.type} {message.task_id} (attempt {message.attempt})"
    return f"task {message.op} {message.task_id}"


# -- the state record ----------------------------------------------------------------------------------
STATE_KEYS = ("task_id", "type", "owner", "role", "capabilities", "swarm", "payload", "state", "claimer", "fence",
              "attempt", "max_attempts", "lease", "lease_until", "result", "error", "created_at", "updated_at",
              "priority", "v")


def parse_state(topic: str, payload: bytes) -> dict[str, Any]:
    """A retained state record (what :func:`state_topic` carries), checked: its ``task_id`` and
    ``owner`` must be the topic's. :raises TaskWireError: (an empty payload is a cleared record)."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != PREFIX or parts[3] != "state":
        raise TaskWireError(f"{_show(topic)} is not a task state topic")
    if not payload:
        raise TaskWireError("an empty (cleared) record")
    data = _object(loads(payload), "state record")
    if check_task_id(data.get("task_id")) != parts[2] or check_name(data.get("owner"), "owner") != parts[4]:
        raise TaskWireError(f"the record's task or owner does not match {_show(topic)}")
    if data.get("state") not in STATES:
        raise TaskWireError(f"state must be one of {', '.join(STATES)}, not {_show(data.get('state'))}")
    check_type(data.get("type"))
    _opt_name(data.get("claimer"), "claimer")
    _int_field(data, "fence")
    _int_field(data, "attempt", low=1, high=MAX_ATTEMPTS)
    _int_field(data, "max_attempts", low=1, high=MAX_ATTEMPTS)
    for key in ("error",):
        if data.get(key) is not None:
            _text(data.get(key), key)
    return {key: data.get(key) for key in STATE_KEYS}
