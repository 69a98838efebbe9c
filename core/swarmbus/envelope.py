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
  control characters; ``reply_to`` must be an agent id;
- ``ts`` and ``expires_at`` are printable ASCII, at most 64 characters, and parse with
  ``datetime.fromisoformat``;
- no text field holds a lone surrogate (it could not be written to SQLite or to a file).

Hostile payloads (see ``docs/protocol.md``, "Validation limits"): the payload is at most 1 MiB of
strict UTF-8 holding exactly one JSON object, with no duplicate keys, no ``NaN``/``Infinity``
and no integer longer than 20 digits. Unknown fields hold plain JSON values nested at most 32
levels deep, finite floats, integers in ``[-2**63, 2**64 - 1]``, and take at most 512 KiB when
re-serialised. With those limits the contract is total:

- :func:`decode_wire`, :meth:`Envelope.from_wire`, :meth:`Envelope.from_dict` (on any decoded
  JSON value) and the constructor raise :class:`EnvelopeError` and nothing else;
- for every envelope that exists, ``to_dict``, ``to_wire`` and ``digest`` cannot raise,
  ``to_wire()`` is valid JSON of at most 1 MiB, and ``Envelope.from_wire(e.to_wire()) == e``.

This module is stdlib-only on purpose: ``swarmbus send`` validates before it touches the
network, and must not pay for pydantic's import to do so. ``from_wire`` runs for every inbound
message, so its checks are ordered cheap-first and avoid generic per-field loops.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType  # already loaded by ``re`` (via enum): free

TYPE_CHECKING = False  # not from typing: importing typing costs the send fast path ~4 ms

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

AGENT_ID_RE = re.compile(r"\A[a-z0-9_-]{1,64}\Z")
BROADCAST = "broadcast"
SYSTEM = "system"
RESERVED_IDS = frozenset({BROADCAST, SYSTEM})

MAX_BODY_BYTES = 65_536
MAX_SUBJECT_CHARS = 256
MAX_MESSAGE_ID_CHARS = 200
MAX_TIMESTAMP_CHARS = 64
MAX_PAYLOAD_BYTES = 1_048_576
PRIORITIES = ("low", "normal", "high")

# Limits for unknown ("extra") fields; see docs/protocol.md, "Validation limits".
MAX_EXTRA_DEPTH = 32  # arrays/objects nested inside one unknown field's value
MAX_EXTRA_BYTES = 524_288  # json.dumps of all unknown fields together
EXTRA_INT_MIN = -(2**63)  # integers: any signed or unsigned 64-bit value
EXTRA_INT_MAX = 2**64 - 1
MAX_INT_DIGITS = 20  # any JSON integer in a payload (2**64 - 1 has 20 digits)

# C0 controls, DEL and C1 controls. (Lone surrogates are found by encoding non-ASCII text: a
# surrogate range in a character class would triple this module's import time.)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_PRIORITY_RE = re.compile(r"\A[A-Za-z0-9_-]{1,32}\Z")
_CONTENT_TYPE_RE = re.compile(
    r"\A[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}"
    r"(?:[ \t]*;[^\x00-\x1f\x7f-\x9f]{0,128})?\Z"
)

_COMMON_CONTENT_TYPES = ("text/plain", "text/markdown", "application/json")  # skip the regex

WIRE_KEYS = ("id", "from", "to", "ts", "subject", "body", "content_type", "priority", "reply_to")
OPTIONAL_KEYS = ("in_reply_to", "expires_at")
KNOWN_KEYS = frozenset(WIRE_KEYS + OPTIONAL_KEYS)
_REQUIRED_KEYS = ("id", "from", "to", "ts", "subject", "body")
_JSON_WS = " \t\n\r"

_NO_EXTRA: Mapping[str, Any] = MappingProxyType({})
_set = object.__setattr__


class EnvelopeError(ValueError):
    """An envelope (or one of its fields) is invalid. ``field`` names the offending key."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def _kind(value: object) -> str:
    """The JSON kind of ``value`` for messages ("a number", "null", ...), never its content."""
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _show(value: object) -> str:
    """A short, safe rendering of a hostile value for an error message (never huge, never
    recursive: a 1 MiB string or a 900-deep list must not make the message itself fail)."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:40]) + "..."
    if value is None or type(value) is bool or type(value) is float:
        return repr(value)
    if type(value) is int and -(10**20) < value < 10**20:
        return repr(value)
    return _kind(value)


def validate_agent_id(value: object, *, role: str = "agent id") -> str:
    """Return ``value`` if it is a syntactically valid agent id, else raise EnvelopeError.

    Valid ids match ``\\A[a-z0-9_-]{1,64}\\Z``. Reserved names are *not* checked here; see
    :func:`validate_own_id` and :func:`validate_target`.
    """
    if isinstance(value, str) and AGENT_ID_RE.match(value):
        return value
    raise EnvelopeError(f"invalid {role} {_show(value)}: use 1-64 of a-z, 0-9, '_' and '-'", field=role)


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


# -- field checks (cheap first; each raises EnvelopeError naming its field) -----------------------


def _text(value: object, key: str, max_chars: int, allow_empty: bool = False) -> None:
    if not isinstance(value, str):
        raise EnvelopeError(f"{key} must be a string, not {_kind(value)}", field=key)
    if len(value) > max_chars:
        raise EnvelopeError(f"{key} is {len(value)} characters; the limit is {max_chars}", field=key)
    if not value and not allow_empty:
        raise EnvelopeError(f"{key} must not be empty", field=key)
    if _CONTROL_RE.search(value):
        raise EnvelopeError(f"{key} contains control characters", field=key)
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise EnvelopeError(f"{key} is not valid UTF-8 (lone surrogate)", field=key) from None


def _timestamp(value: object, key: str) -> None:
    if not isinstance(value, str):
        raise EnvelopeError(f"{key} must be an ISO 8601 string, not {_kind(value)}", field=key)
    # printable ASCII first: fromisoformat would take any character (even NUL or a lone
    # surrogate) as the date/time separator
    if len(value) <= MAX_TIMESTAMP_CHARS and value.isascii() and value.isprintable():
        try:
            datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return
    raise EnvelopeError(f"{key} {_show(value)} is not an ISO 8601 timestamp", field=key)


def _check_body(value: object) -> None:
    if not isinstance(value, str):
        raise EnvelopeError(f"body must be a string, not {_kind(value)}", field="body")
    size = len(value)
    # isascii() is O(1) (CPython records it): then no surrogate and one byte a character. Else
    # a character is at least one byte, so an over-long body is refused without encoding it.
    if size <= MAX_BODY_BYTES and not value.isascii():
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise EnvelopeError("body is not valid UTF-8 (lone surrogate)", field="body") from None
    if size > MAX_BODY_BYTES:
        at_least = "" if value.isascii() or size > len(value) else "at least "
        raise EnvelopeError(
            f"body is {at_least}{size} bytes of UTF-8; the limit is {MAX_BODY_BYTES} (64 KiB): "
            "put large artifacts in shared storage and send a reference",
            field="body",
        )


def _clean_parameters(content_type: str) -> bool:
    """Non-ASCII media type parameters: no line separators, no lone surrogates."""
    if "\u2028" in content_type or "\u2029" in content_type:
        return False
    try:
        content_type.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_fields(
    id: object, from_agent: object, to: object, ts: object, subject: object, body: object,
    content_type: object, priority: object, reply_to: object, in_reply_to: object,
    expires_at: object,
) -> None:
    _text(id, "id", MAX_MESSAGE_ID_CHARS)
    if not (isinstance(from_agent, str) and AGENT_ID_RE.match(from_agent)):
        raise EnvelopeError(f"invalid from {_show(from_agent)}: use 1-64 of a-z, 0-9, '_' and '-'", field="from")
    if from_agent in RESERVED_IDS:
        raise EnvelopeError(f"sender {from_agent!r} is a reserved id", field="from")
    if not (isinstance(to, str) and AGENT_ID_RE.match(to)):
        raise EnvelopeError(f"invalid recipient {_show(to)}: use 1-64 of a-z, 0-9, '_' and '-'", field="to")
    if to == SYSTEM:
        raise EnvelopeError("'system' is reserved and is not a valid recipient", field="to")
    _timestamp(ts, "ts")
    _text(subject, "subject", MAX_SUBJECT_CHARS, allow_empty=True)
    _check_body(body)
    if content_type not in _COMMON_CONTENT_TYPES and not (
        isinstance(content_type, str) and _CONTENT_TYPE_RE.match(content_type)
        and (content_type.isascii() or _clean_parameters(content_type))
    ):
        raise EnvelopeError(
            f"content_type {_show(content_type)} is not a media type like text/plain", field="content_type"
        )
    if priority not in PRIORITIES and not (isinstance(priority, str) and _PRIORITY_RE.match(priority)):
        raise EnvelopeError(f"priority {_show(priority)} must be 1-32 of A-Z a-z 0-9 _ -", field="priority")
    if reply_to is not None:
        if not (isinstance(reply_to, str) and AGENT_ID_RE.match(reply_to)):
            raise EnvelopeError(
                f"reply_to: invalid recipient {_show(reply_to)}: use 1-64 of a-z, 0-9, '_' and '-'",
                field="reply_to",
            )
        if reply_to == SYSTEM:
            raise EnvelopeError("reply_to: 'system' is reserved and is not a valid recipient", field="reply_to")
    if in_reply_to is not None:
        _text(in_reply_to, "in_reply_to", MAX_MESSAGE_ID_CHARS)
    if expires_at is not None:
        _timestamp(expires_at, "expires_at")


def _no_surrogate(text: str, field: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise EnvelopeError(f"unknown field {_show(field)} holds a lone surrogate", field=field) from None


def _check_json(value: object, field: str, level: int) -> None:
    """Check one value inside an unknown field: exact JSON types only (so re-serialising gives
    back an equal value), finite, 64-bit integers, ``level`` containers already around it."""
    if type(value) is str:
        if not value.isascii():
            _no_surrogate(value, field)
    elif type(value) is int:
        if not EXTRA_INT_MIN <= value <= EXTRA_INT_MAX:
            raise EnvelopeError(f"unknown field {_show(field)} holds an integer outside 64 bits", field=field)
    elif type(value) is float:
        if value - value != 0.0:  # inf - inf and nan - nan are nan
            raise EnvelopeError(f"unknown field {_show(field)} holds a non-finite number", field=field)
    elif value is None or type(value) is bool:
        pass
    elif type(value) is list or type(value) is dict:
        if level >= MAX_EXTRA_DEPTH:
            raise EnvelopeError(
                f"unknown field {_show(field)} nests arrays/objects more than {MAX_EXTRA_DEPTH} levels deep",
                field=field,
            )
        if type(value) is dict:
            for key, item in value.items():
                if type(key) is not str:
                    raise EnvelopeError(f"unknown field {_show(field)} has a non-string object key", field=field)
                if not key.isascii():
                    _no_surrogate(key, field)
                _check_json(item, field, level + 1)
        else:
            for item in value:
                _check_json(item, field, level + 1)
    else:
        raise EnvelopeError(
            f"unknown field {_show(field)} holds {type(value).__name__}, which is not a JSON value", field=field
        )


def _check_extra(items: list[tuple[object, object]]) -> Mapping[str, Any]:
    """Validate unknown fields (name, value pairs); return them as a read-only mapping."""
    out: dict[str, Any] = {}
    for key, value in items:
        if not isinstance(key, str):
            raise EnvelopeError(f"unknown field names must be strings, not {_kind(key)}")
        if key in KNOWN_KEYS:
            raise EnvelopeError(f"extra field {key!r} would override a known field", field=key)
        if not key.isascii():
            _no_surrogate(key, key)
        _check_json(value, key, 0)
        out[key] = value
    if not out:
        return _NO_EXTRA
    size = len(json.dumps(out))  # cannot fail now: every value is a checked JSON value
    if size > MAX_EXTRA_BYTES:
        raise EnvelopeError(
            f"unknown fields take {size} bytes as JSON; the limit is {MAX_EXTRA_BYTES} (512 KiB)", field=next(iter(out))
        )
    return MappingProxyType(out)


# -- the payload decoder ----------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise EnvelopeError(f"payload contains {name}, which is not JSON (only finite numbers are)")


def _parse_int(digits: str) -> int:
    if len(digits) > MAX_INT_DIGITS and len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise EnvelopeError(f"payload has an integer of {len(digits)} characters; at most {MAX_INT_DIGITS} digits")
    return int(digits)


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise EnvelopeError(f"payload has duplicate key {_show(key)}")
            seen.add(key)
    return obj


# json's C scanner, called directly (json.loads would add two Python frames and a regex).
_scan_once: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder(  # type: ignore[attr-defined]
    object_pairs_hook=_unique_object, parse_int=_parse_int, parse_constant=_reject_constant
).scan_once


def _decode_object(payload: object) -> tuple[dict[str, Any], str]:
    """Bytes -> (top-level object, text); raises EnvelopeError only."""
    if not isinstance(payload, bytes):
        if not isinstance(payload, bytearray | memoryview):
            raise EnvelopeError(f"payload must be bytes, not {type(payload).__name__}")
        payload = bytes(payload)
    size = len(payload)
    if size > MAX_PAYLOAD_BYTES:
        raise EnvelopeError(f"payload is {size} bytes; the limit is {MAX_PAYLOAD_BYTES}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EnvelopeError(f"payload is not UTF-8 (invalid byte at offset {exc.start})") from None
    start = 0 if text[:1] == "{" else len(text) - len(text.lstrip(_JSON_WS))
    try:
        data, end = _scan_once(text, start)
    except EnvelopeError:
        raise
    except json.JSONDecodeError as exc:
        raise EnvelopeError(f"payload is not JSON: {exc.msg} at offset {exc.pos}") from None
    except StopIteration as exc:
        raise EnvelopeError(f"payload is not JSON: Expecting value at offset {exc.value}") from None
    except RecursionError:
        raise EnvelopeError("payload nests arrays/objects too deeply to decode") from None
    except ValueError as exc:  # anything else json refuses (kept as a safety net)
        raise EnvelopeError(f"payload is not acceptable JSON: {str(exc)[:120]}") from None
    if end != len(text) and text[end:].strip(_JSON_WS):
        raise EnvelopeError(f"payload is not JSON: Extra data at offset {end}")
    if type(data) is not dict:
        raise EnvelopeError(f"envelope must be a JSON object, not {_kind(data)}")
    return data, text


def decode_wire(payload: bytes) -> tuple[Envelope, str]:
    """Decode and validate raw MQTT payload bytes.

    Returns ``(envelope, text)``: ``text`` is the payload decoded as UTF-8, exactly as received
    (``text.encode() == payload``), for callers that keep the sender's bytes rather than a
    re-serialisation. Raises EnvelopeError, and nothing else, for any input.
    """
    data, text = _decode_object(payload)
    return _from_mapping(Envelope, data), text


def _from_mapping(cls: type[Envelope], data: Mapping[str, Any]) -> Envelope:
    try:
        id_ = data["id"]
        from_agent = data["from"]
        to = data["to"]
        ts = data["ts"]
        subject = data["subject"]
        body = data["body"]
    except KeyError:
        missing = [k for k in _REQUIRED_KEYS if k not in data]
        raise EnvelopeError(f"missing field(s): {', '.join(missing)}", field=missing[0] if missing else None) from None
    get = data.get
    content_type = get("content_type", "text/plain")
    priority = get("priority", "normal")
    reply_to = get("reply_to")
    in_reply_to = get("in_reply_to")
    expires_at = get("expires_at")
    _check_fields(id_, from_agent, to, ts, subject, body, content_type, priority, reply_to, in_reply_to, expires_at)
    if KNOWN_KEYS.issuperset(data):
        extra = _NO_EXTRA
    else:
        extra = _check_extra([(k, v) for k, v in data.items() if k not in KNOWN_KEYS])
    self = object.__new__(cls)
    _fill(self, id_, from_agent, to, ts, subject, body, content_type, priority, reply_to, in_reply_to, expires_at, extra)
    return self


def _fill(
    self: Envelope, id: str, from_agent: str, to: str, ts: str, subject: str, body: str, content_type: str,
    priority: str, reply_to: str | None, in_reply_to: str | None, expires_at: str | None, extra: Mapping[str, Any],
) -> None:
    _set(self, "id", id)
    _set(self, "from_agent", from_agent)
    _set(self, "to", to)
    _set(self, "ts", ts)
    _set(self, "subject", subject)
    _set(self, "body", body)
    _set(self, "content_type", content_type)
    _set(self, "priority", priority)
    _set(self, "reply_to", reply_to)
    _set(self, "in_reply_to", in_reply_to)
    _set(self, "expires_at", expires_at)
    _set(self, "extra", extra)


def parse_timestamp(value: str) -> datetime:
    """Parse an envelope timestamp; naive values are taken as UTC. Raises ValueError."""
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
    """One validated, immutable message. Construct with :func:`new_envelope`,
    :meth:`from_wire` or :func:`decode_wire`; the constructor validates and raises
    EnvelopeError (and nothing else) for invalid fields.

    ``extra`` holds unknown wire fields, in arrival order, as a read-only mapping; they are
    re-emitted unchanged. Their values are plain JSON values (dict, list, str, int, float,
    bool, None) within the limits in the module docstring; do not mutate nested ones.
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
        _check_fields(id, from_agent, to, ts, subject, body, content_type, priority, reply_to, in_reply_to, expires_at)
        if not extra:
            checked = _NO_EXTRA
        elif isinstance(extra, Mapping):
            checked = _check_extra(list(extra.items()))
        else:
            raise EnvelopeError(f"extra must be a mapping, not {type(extra).__name__}")
        _fill(self, id, from_agent, to, ts, subject, body, content_type, priority, reply_to, in_reply_to, expires_at,
              checked)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Envelope is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Envelope):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Envelope(id={self.id!r}, from={self.from_agent!r}, to={self.to!r}, subject={self.subject!r})"

    # -- wire -----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Envelope:
        """Validate a decoded JSON object (or any mapping with the wire keys).

        Raises EnvelopeError, naming the first bad field, for any input, including non-mappings.
        Unknown keys become ``extra`` and must hold plain JSON values within the limits.
        """
        if not isinstance(data, Mapping):
            raise EnvelopeError(f"envelope must be a JSON object, not {_kind(data)}")
        return _from_mapping(cls, data)

    @classmethod
    def from_wire(cls, payload: bytes) -> Envelope:
        """Decode and validate raw MQTT payload bytes (at most 1 MiB of UTF-8 JSON).

        Raises EnvelopeError, and nothing else, for any input. See also :func:`decode_wire`.
        """
        return _from_mapping(cls, _decode_object(payload)[0])

    def to_dict(self) -> dict[str, Any]:
        """The wire object, keys in the predecessor's order, then new and unknown fields.

        Nested values of unknown fields are shared with the envelope, not copied. Never raises.
        """
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
        if self.extra:
            out.update(self.extra)
        return out

    def to_wire(self) -> bytes:
        """Serialise as the predecessor does (``json.dumps`` defaults: ``", "`` separators, ASCII
        escapes). Never raises; the result is at most MAX_PAYLOAD_BYTES and parses back equal."""
        return json.dumps(self.to_dict()).encode("utf-8")

    def digest(self) -> str:
        """SHA-256 (64 hex digits) of the canonical JSON form (sorted keys, no spaces): equal
        digests mean the same message content. Never raises."""
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
