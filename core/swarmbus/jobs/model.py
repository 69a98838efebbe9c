"""Job records and job events: ids, limits, the strict JSON codec (pydantic v2).

Wire shapes (JSON objects, UTF-8; keys in this order when swarmbus writes them)::

    record  {"job_id", "owner", "delegate", "prompt", "payload", "created_at", "v": 1}
    event   {"job_id", "event", "detail", "by", "at", "v": 1}

``job_id``, ``owner``, ``delegate`` and ``by`` follow the agent-id rule (1-64 of ``a-z 0-9 _ -``);
``delegate``, ``prompt``, ``payload`` and ``detail`` may be null; ``payload`` is any JSON value
(finite numbers, 64-bit integers, nested at most :data:`MAX_PAYLOAD_DEPTH` deep) and a record
holds a prompt or a non-null payload; ``event`` is ``started``, ``progress``, ``completed`` or
``error``; ``created_at`` and ``at`` are RFC 3339 timestamps with an offset (swarmbus writes UTC,
``2025-01-31T12:00:00.123Z``).

Anybody who may write under ``swarmbus/jobs/#`` can publish anything there, so everything read
from the broker goes through :func:`decode_record` / :func:`decode_event`, which raise
:class:`JobDataError` (and nothing else) for any input: oversized, not UTF-8, not JSON, duplicate
keys, NaN, huge integers, too deep, unknown or missing keys, wrong types, or a topic whose ids
disagree with the payload's. Callers report it and go on; they never crash on it.
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from swarmbus.envelope import AGENT_ID_RE
from swarmbus.errors import UsageError
from swarmbus.strict_json import StrictJSONError, strict_loads

__all__ = [
    "EVENTS",
    "MAX_DETAIL_CHARS",
    "MAX_EVENT_BYTES",
    "MAX_INBOUND_BYTES",
    "MAX_PAYLOAD_DEPTH",
    "MAX_PROMPT_CHARS",
    "MAX_RECORD_BYTES",
    "TERMINAL",
    "JobDataError",
    "JobEvent",
    "JobRecord",
    "decode_event",
    "decode_json",
    "decode_record",
    "encode",
    "new_job_id",
    "now_rfc3339",
    "parse_rfc3339",
    "validate_job_id",
]

EVENTS = ("started", "progress", "completed", "error")
TERMINAL = frozenset({"completed", "error"})
MAX_INBOUND_BYTES = 65_536
"""Anything larger read from the broker is refused before it is decoded."""
MAX_RECORD_BYTES = 60_000
"""A record, as JSON: it must also fit, with a short footer, in one swarmbus message (64 KiB)."""
MAX_EVENT_BYTES = 16_384
MAX_PROMPT_CHARS = 50_000
MAX_DETAIL_CHARS = 8_192
MAX_PAYLOAD_DEPTH = 32
MAX_INT_DIGITS = 20
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
_TIMESTAMP_RE = re.compile(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})\Z")
_ID_HELP = "1-64 of a-z 0-9 _ -"


class JobDataError(ValueError):
    """A job record or event that is not acceptable; the message says why, in one line."""


# -- ids and times -----------------------------------------------------------------------------------


def new_job_id() -> str:
    """A fresh job id: ``j-`` and 12 random hex digits (48 bits), e.g. ``j-3f9c01ab77d2``."""
    return "j-" + secrets.token_hex(6)


def validate_job_id(value: str, *, what: str = "job id") -> str:
    """``value`` if it is a valid job id (the agent-id rule), else :class:`UsageError` (exit 2)."""
    if not isinstance(value, str) or not AGENT_ID_RE.match(value):
        raise UsageError(f"invalid {what} {value!r}: use {_ID_HELP}")
    return value


def now_rfc3339() -> str:
    """Now, UTC, RFC 3339 with milliseconds: ``2025-01-31T12:00:00.123Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_rfc3339(value: str) -> datetime:
    """An RFC 3339 timestamp with an offset (``Z`` or ``+hh:mm``) as an aware datetime.

    :raises ValueError: anything else (no offset, another format, an impossible date).
    """
    if not _TIMESTAMP_RE.match(value):
        raise ValueError("not an RFC 3339 timestamp with an offset (e.g. 2025-01-31T12:00:00Z)")
    text = value.replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:  # fromisoformat takes at most 6 fraction digits
        digits = rest[:-6]
        text = f"{head}.{(digits + '000000')[:6]}{rest[-6:]}"
    return datetime.fromisoformat(text)


def _check_timestamp(value: str) -> str:
    parse_rfc3339(value)
    return value


def _check_id(value: str) -> str:
    if not AGENT_ID_RE.match(value):
        raise ValueError(f"must be {_ID_HELP}")
    return value


Id = Annotated[str, Field(max_length=64), AfterValidator(_check_id)]
Timestamp = Annotated[str, Field(max_length=40), AfterValidator(_check_timestamp)]


# -- JSON values -------------------------------------------------------------------------------------


def _check_value(value: object, level: int = 0) -> None:
    """Exact JSON types only, finite, 64-bit integers, at most MAX_PAYLOAD_DEPTH containers deep."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        if kind is str:
            _no_surrogate(value)  # type: ignore[arg-type]
        return
    if kind is int:
        if not _INT_MIN <= value <= _INT_MAX:  # type: ignore[operator]
            raise ValueError("holds an integer outside 64 bits")
        return
    if kind is float:
        if value - value != 0.0:  # type: ignore[operator]
            raise ValueError("holds a non-finite number")
        return
    if kind is list or kind is dict:
        if level >= MAX_PAYLOAD_DEPTH:
            raise ValueError(f"nests arrays/objects more than {MAX_PAYLOAD_DEPTH} levels deep")
        if kind is dict:
            for key, item in value.items():  # type: ignore[attr-defined]
                if type(key) is not str:
                    raise ValueError("has a non-string object key")
                _no_surrogate(key)
                _check_value(item, level + 1)
        else:
            for item in value:  # type: ignore[attr-defined]
                _check_value(item, level + 1)
        return
    raise ValueError(f"holds {kind.__name__}, which is not a JSON value")


def _no_surrogate(text: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("holds a lone surrogate (not UTF-8 text)") from None


def _checked_json(value: Any) -> Any:
    _check_value(value)
    return value


def _no_surrogate_text(value: str) -> str:
    _no_surrogate(value)
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    @field_validator("v", mode="before", check_fields=False)
    @classmethod
    def _version(cls, value: object) -> object:
        if type(value) is not int or value != 1:  # Literal[1] alone would take True and 1.0
            raise ValueError("must be 1 (this swarmbus reads version 1)")
        return value

    def to_dict(self) -> dict[str, Any]:
        """The wire object, keys in the documented order."""
        return self.model_dump(mode="python")


class JobRecord(_Strict):
    """A job record (``swarmbus/jobs/<job_id>/record/<owner>``, retained)."""

    job_id: Id
    owner: Id
    delegate: Id | None
    prompt: Annotated[str, Field(max_length=MAX_PROMPT_CHARS), AfterValidator(_no_surrogate_text)] | None
    payload: Annotated[Any, AfterValidator(_checked_json)]
    created_at: Timestamp
    v: Literal[1]

    @model_validator(mode="after")
    def _something_to_do(self) -> JobRecord:
        if self.prompt is None and self.payload is None:
            raise ValueError("a record holds a prompt or a non-null payload")
        return self


class JobEvent(_Strict):
    """A job event (``swarmbus/jobs/<job_id>/events/<by>``; a terminal one also retained on
    ``swarmbus/jobs/<job_id>/outcome/<by>``)."""

    job_id: Id
    event: Literal["started", "progress", "completed", "error"]
    detail: Annotated[str, Field(max_length=MAX_DETAIL_CHARS), AfterValidator(_no_surrogate_text)] | None
    by: Id
    at: Timestamp
    v: Literal[1]

    @property
    def terminal(self) -> bool:
        """True for ``completed`` and ``error``."""
        return self.event in TERMINAL

    @property
    def key(self) -> tuple[str, str, str, str]:
        """What makes one event: the same event seen on the events and the outcome topic, or
        again after a reconnect, has the same key."""
        return (self.job_id, self.event, self.by, self.at)


# -- the codec ---------------------------------------------------------------------------------------


def decode_json(data: bytes | str, *, max_bytes: int = MAX_INBOUND_BYTES, what: str = "JSON") -> Any:
    """Strict JSON: at most ``max_bytes`` of UTF-8, no duplicate keys, no NaN/Infinity, integers
    of at most 20 digits, nesting bounded. Returns the value.

    :raises JobDataError: anything else (the message names ``what``).
    """
    try:
        value = strict_loads(data, max_bytes=max_bytes, max_int_digits=MAX_INT_DIGITS)
    except StrictJSONError as exc:
        raise JobDataError(f"{what} {exc}") from None
    try:
        _check_value(value)
    except ValueError as exc:
        raise JobDataError(f"{what} {exc}") from None
    return value


def _reason(exc: ValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"])
    msg = str(first["msg"]).removeprefix("Value error, ")
    more = exc.error_count() - 1
    return (f"{where}: {msg}" if where else msg) + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


def _build(model: type[_Strict], data: Any, what: str) -> Any:
    if type(data) is not dict:
        raise JobDataError(f"{what} must be a JSON object, not {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise JobDataError(f"{what}: {_reason(exc)}") from None
    except RecursionError:  # pragma: no cover - bounded by decode_json's depth check
        raise JobDataError(f"{what} nests too deeply") from None


def decode_record(payload: bytes, *, job_id: str | None = None, owner: str | None = None) -> JobRecord:
    """A record from the broker. With ``job_id`` / ``owner`` (what the topic says), the payload
    must say the same.

    :raises JobDataError: for any unacceptable input (see the module docstring).
    """
    record: JobRecord = _build(JobRecord, decode_json(payload, max_bytes=MAX_INBOUND_BYTES, what="record"), "record")
    if job_id is not None and record.job_id != job_id:
        raise JobDataError(f"record: its job_id {record.job_id!r} is not the topic's {job_id!r}")
    if owner is not None and record.owner != owner:
        raise JobDataError(f"record: its owner {record.owner!r} is not the topic's {owner!r}")
    return record


def decode_event(payload: bytes, *, job_id: str | None = None, by: str | None = None) -> JobEvent:
    """An event from the broker. With ``job_id`` / ``by`` (what the topic says), the payload
    must say the same.

    :raises JobDataError: for any unacceptable input (see the module docstring).
    """
    event: JobEvent = _build(JobEvent, decode_json(payload, max_bytes=MAX_EVENT_BYTES, what="event"), "event")
    if job_id is not None and event.job_id != job_id:
        raise JobDataError(f"event: its job_id {event.job_id!r} is not the topic's {job_id!r}")
    if by is not None and event.by != by:
        raise JobDataError(f"event: its by {event.by!r} is not the topic's {by!r}")
    return event


def encode(item: JobRecord | JobEvent) -> bytes:
    """The wire bytes: compact JSON, UTF-8, keys in the documented order.

    :raises UsageError: it is larger than :data:`MAX_RECORD_BYTES` / :data:`MAX_EVENT_BYTES`.
    """
    data = json.dumps(item.to_dict(), ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    limit = MAX_RECORD_BYTES if isinstance(item, JobRecord) else MAX_EVENT_BYTES
    if len(data) > limit:
        kind = "record" if isinstance(item, JobRecord) else "event"
        raise UsageError(f"the job {kind} is {len(data)} bytes as JSON; the limit is {limit}")
    return data


def make(model: type[Any], what: str, **fields: Any) -> Any:
    """Build a :class:`JobRecord` or :class:`JobEvent` from values a user gave.

    :raises UsageError: a value is not acceptable (the message names the field).
    """
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise UsageError(f"invalid job {what}: {_reason(exc)}") from None

