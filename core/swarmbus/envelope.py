"""The message envelope: what travels on the wire, validated the same way everywhere.

Wire format (compatible with swarmbus-py 0.2.0, see ``docs/protocol.md``): a UTF-8 JSON object
whose keys, in this order, are ``id, from, to, ts, subject, body, content_type, priority,
reply_to``. Two optional fields are new here and only written when set: ``in_reply_to`` (the
id of the message this one answers, for threads) and ``expires_at`` (ISO 8601; after it the
receiver keeps the message but does not act on it). Unknown fields are preserved verbatim and
re-emitted after the known ones, so a newer peer's additions survive a hop through us.

Validation is stricter than the predecessor's where it was loose (see
``../shared/reference/predecessor-swarmbus-py.md`` §2.3, bug B8):

- agent ids match ``\\A[a-z0-9_-]{1,64}\\Z`` (no trailing newline sneaks through ``$``);
- ``broadcast`` and ``system`` are reserved: neither can be a sender, ``system`` is no target;
- ``body`` is at most 65,536 bytes of UTF-8; ``subject`` at most 256 characters without
  control characters; ``reply_to`` must be an agent id.

This module is stdlib-only on purpose: ``swarmbus send`` validates before it touches the
network, and must not pay for pydantic's import to do so.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime

TYPE_CHECKING = False  # not from typing: importing typing costs the send fast path ~4 ms

if TYPE_CHECKING:
    from typing import Any

AGENT_ID_RE = re.compile(r"\A[a-z0-9_-]{1,64}\Z")
BROADCAST = "broadcast"
SYSTEM = "system"
RESERVED_IDS = frozenset({BROADCAST, SYSTEM})

MAX_BODY_BYTES = 65_536
MAX_SUBJECT_CHARS = 256
MAX_MESSAGE_ID_CHARS = 200
MAX_PAYLOAD_BYTES = 1_048_576
PRIORITIES = ("low", "normal", "high")

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_PRIORITY_RE = re.compile(r"\A[A-Za-z0-9_-]{1,32}\Z")
_CONTENT_TYPE_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}(\s*;[^\x00-\x1f\x7f]{0,128})?\Z")

WIRE_KEYS = ("id", "from", "to", "ts", "subject", "body", "content_type", "priority", "reply_to")
OPTIONAL_KEYS = ("in_reply_to", "expires_at")
KNOWN_KEYS = frozenset(WIRE_KEYS + OPTIONAL_KEYS)


class EnvelopeError(ValueError):
    """An envelope (or one of its fields) is invalid. ``field`` names the offending key."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def validate_agent_id(value: object, *, role: str = "agent id") -> str:
    """Return ``value`` if it is a syntactically valid agent id, else raise EnvelopeError.

    Valid ids match ``\\A[a-z0-9_-]{1,64}\\Z``. Reserved names are *not* checked here; see
    :func:`validate_own_id` and :func:`validate_target`.
    """
    if not isinstance(value, str) or not AGENT_ID_RE.match(value):
        raise EnvelopeError(
            f"invalid {role} {value!r}: use 1-64 of a-z, 0-9, '_' and '-'", field=role
        )
    return value


def validate_own_id(value: object) -> str:
    """Validate an id an agent runs as (``--agent-id``): valid and not reserved."""
    agent_id = validate_agent_id(value)
    if agent_id in RESERVED_IDS:
        raise EnvelopeError(f"{agent_id!r} is reserved and cannot be an agent's own id", field="from")
    return agent_id


def validate_target(value: object) -> str:
    """Validate a recipient: an agent id or ``broadcast``; ``system`` is refused."""
    target = validate_agent_id(value, role="recipient")
    if target == SYSTEM:
        raise EnvelopeError("'system' is reserved and is not a valid recipient", field="to")
    return target


def _text(value: object, key: str, *, max_chars: int, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise EnvelopeError(f"{key} must be a string, not {type(value).__name__}", field=key)
    if not value and not allow_empty:
        raise EnvelopeError(f"{key} must not be empty", field=key)
    if len(value) > max_chars:
        raise EnvelopeError(f"{key} is {len(value)} characters; the limit is {max_chars}", field=key)
    if _CONTROL_RE.search(value):
        raise EnvelopeError(f"{key} contains control characters", field=key)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise EnvelopeError(f"{key} is not valid UTF-8 (lone surrogate)", field=key) from None
    return value


def _timestamp(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise EnvelopeError(f"{key} must be an ISO 8601 string", field=key)
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise EnvelopeError(f"{key} {value[:40]!r} is not an ISO 8601 timestamp", field=key) from None
    return value


def _body(value: object) -> str:
    if not isinstance(value, str):
        raise EnvelopeError(f"body must be a string, not {type(value).__name__}", field="body")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise EnvelopeError("body is not valid UTF-8 (lone surrogate)", field="body") from None
    if size > MAX_BODY_BYTES:
        raise EnvelopeError(
            f"body is {size} bytes of UTF-8; the limit is {MAX_BODY_BYTES} (64 KiB): "
            "put large artifacts in shared storage and send a reference",
            field="body",
        )
    return value


def parse_timestamp(value: str) -> datetime:
    """Parse an envelope timestamp; naive values are taken as UTC."""
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def uuid4() -> str:
    """A random (version 4) UUID string, as ``str(uuid.uuid4())`` gives, without importing
    ``uuid`` (which costs the send fast path a few milliseconds)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def utc_now_iso() -> str:
    """Now in UTC, formatted as the predecessor formats ``ts`` (``+00:00``, microseconds)."""
    return datetime.now(UTC).isoformat()


class Envelope:
    """One validated, immutable message. Construct with :func:`new_envelope` or
    :meth:`from_wire`; the constructor validates and raises EnvelopeError.

    ``extra`` holds unknown wire fields, in arrival order; they are re-emitted unchanged.
    (A hand-written class rather than a dataclass: ``dataclasses`` imports ``inspect``, which
    would cost the ``send`` fast path ~10 ms.)
    """

    __slots__ = (
        "body",
        "content_type",
        "expires_at",
        "extra",
        "from_agent",
        "id",
        "in_reply_to",
        "priority",
        "reply_to",
        "subject",
        "to",
        "ts",
    )

    id: str
    from_agent: str
    to: str
    ts: str
    subject: str
    body: str
    content_type: str
    priority: str
    reply_to: str | None
    in_reply_to: str | None
    expires_at: str | None
    extra: Mapping[str, Any]

    def __init__(
        self,
        id: str,
        from_agent: str,
        to: str,
        ts: str,
        subject: str,
        body: str,
        content_type: str = "text/plain",
        priority: str = "normal",
        reply_to: str | None = None,
        in_reply_to: str | None = None,
        expires_at: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        values = {
            "id": id, "from_agent": from_agent, "to": to, "ts": ts, "subject": subject, "body": body,
            "content_type": content_type, "priority": priority, "reply_to": reply_to,
            "in_reply_to": in_reply_to, "expires_at": expires_at, "extra": dict(extra or {}),
        }
        for key, value in values.items():
            object.__setattr__(self, key, value)
        self._validate()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Envelope is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Envelope):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Envelope(id={self.id!r}, from={self.from_agent!r}, to={self.to!r}, subject={self.subject!r})"

    def _validate(self) -> None:
        _text(self.id, "id", max_chars=MAX_MESSAGE_ID_CHARS)
        try:
            validate_agent_id(self.from_agent, role="from")
        except EnvelopeError as exc:
            raise EnvelopeError(str(exc), field="from") from None
        if self.from_agent in RESERVED_IDS:
            raise EnvelopeError(f"sender {self.from_agent!r} is a reserved id", field="from")
        try:
            validate_target(self.to)
        except EnvelopeError as exc:
            raise EnvelopeError(str(exc), field="to") from None
        _timestamp(self.ts, "ts")
        _text(self.subject, "subject", max_chars=MAX_SUBJECT_CHARS, allow_empty=True)
        _body(self.body)
        if not isinstance(self.content_type, str) or not _CONTENT_TYPE_RE.match(self.content_type):
            raise EnvelopeError(
                f"content_type {str(self.content_type)[:80]!r} is not a media type like text/plain",
                field="content_type",
            )
        if not isinstance(self.priority, str) or not _PRIORITY_RE.match(self.priority):
            raise EnvelopeError(
                f"priority {str(self.priority)[:40]!r} must be 1-32 of A-Z a-z 0-9 _ -",
                field="priority",
            )
        if self.reply_to is not None:
            try:
                validate_target(self.reply_to)
            except EnvelopeError as exc:
                raise EnvelopeError(f"reply_to: {exc}", field="reply_to") from None
        if self.in_reply_to is not None:
            _text(self.in_reply_to, "in_reply_to", max_chars=MAX_MESSAGE_ID_CHARS)
        if self.expires_at is not None:
            _timestamp(self.expires_at, "expires_at")

    # -- wire -----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Envelope:
        """Validate a decoded JSON object. Raises EnvelopeError naming the first bad field."""
        if not isinstance(data, Mapping):
            raise EnvelopeError(f"envelope must be a JSON object, not {type(data).__name__}")
        missing = [k for k in ("id", "from", "to", "ts", "subject", "body") if k not in data]
        if missing:
            raise EnvelopeError(f"missing field(s): {', '.join(missing)}", field=missing[0])
        return cls(
            id=data["id"],
            from_agent=data["from"],
            to=data["to"],
            ts=data["ts"],
            subject=data["subject"],
            body=data["body"],
            content_type=data.get("content_type", "text/plain"),
            priority=data.get("priority", "normal"),
            reply_to=data.get("reply_to"),
            in_reply_to=data.get("in_reply_to"),
            expires_at=data.get("expires_at"),
            extra={k: v for k, v in data.items() if k not in KNOWN_KEYS},
        )

    @classmethod
    def from_wire(cls, payload: bytes) -> Envelope:
        """Decode and validate raw MQTT payload bytes. Raises EnvelopeError."""
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise EnvelopeError(f"payload is {len(payload)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
        try:
            data = json.loads(payload.decode("utf-8"))
        except UnicodeDecodeError:
            raise EnvelopeError("payload is not UTF-8") from None
        except json.JSONDecodeError as exc:
            raise EnvelopeError(f"payload is not JSON: {exc.msg} at offset {exc.pos}") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """The wire object, keys in the predecessor's order, then new and unknown fields."""
        out: dict[str, Any] = {
            "id": self.id,
            "from": self.from_agent,
            "to": self.to,
            "ts": self.ts,
            "subject": self.subject,
            "body": self.body,
            "content_type": self.content_type,
            "priority": self.priority,
            "reply_to": self.reply_to,
        }
        if self.in_reply_to is not None:
            out["in_reply_to"] = self.in_reply_to
        if self.expires_at is not None:
            out["expires_at"] = self.expires_at
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    def to_wire(self) -> bytes:
        """Serialise as the predecessor does (``json.dumps`` defaults: ``", "`` separators)."""
        return json.dumps(self.to_dict()).encode("utf-8")

    def digest(self) -> str:
        """SHA-256 of the canonical JSON form: equal digests mean the same message content."""
        import hashlib

        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    # -- helpers ----------------------------------------------------------------------------
    @property
    def is_broadcast(self) -> bool:
        return self.to == BROADCAST

    def expired(self, now: datetime | None = None) -> bool:
        """True when ``expires_at`` is set and lies before ``now`` (default: the current time)."""
        if self.expires_at is None:
            return False
        return parse_timestamp(self.expires_at) <= (now or datetime.now(UTC))


def new_envelope(
    from_agent: str,
    to: str,
    subject: str,
    body: str,
    *,
    content_type: str = "text/plain",
    priority: str = "normal",
    reply_to: str | None = None,
    in_reply_to: str | None = None,
    expires_at: str | None = None,
    id: str | None = None,
    ts: str | None = None,
) -> Envelope:
    """Build a new outgoing envelope with a fresh uuid4 id and the current UTC time.

    Raises EnvelopeError for an invalid field; ``from_agent`` must not be reserved.
    """
    validate_own_id(from_agent)
    return Envelope(
        id=id or uuid4(),
        from_agent=from_agent,
        to=to,
        ts=ts or utc_now_iso(),
        subject=subject,
        body=body,
        content_type=content_type,
        priority=priority,
        reply_to=reply_to,
        in_reply_to=in_reply_to,
        expires_at=expires_at,
    )
