"""Delivery receipts: the wire format of the delivery ladder (stdlib only).

A message moves through recorded **steps** (the ladder). The sender records ``published`` (the
broker's PUBACK) itself; the receiver records the others and tells the sender about them with a
**receipt** on the sender's receipts topic ``agents/<sender>/receipts`` (QoS 0, not retained; the
predecessor swarmbus-py 0.2.0 never subscribes to it), for the steps the envelope asks for:

| step | when (on the receiving daemon) | receipt sent |
|---|---|---|
| ``stored`` | the message was committed to its store (also again for a duplicate) | when asked |
| ``wake`` | the ``wake`` handler finished (its outcome: woken, held, not woken and why) | when asked |
| ``surfaced`` | a host showed it to the model (``read_inbox``, ``swarmbus read``/``wait``, a gateway) | when asked |
| ``acknowledged`` | a consumer acknowledged it (``read_inbox`` ``ack_ids``) | when asked |
| ``replied`` | the receiver sent a message with ``in_reply_to`` naming it | when asked |

"When asked": the envelope lists the steps it wants receipts for in the extra field
``"receipts": ["stored", "surfaced", "replied"]`` (an unknown field to the predecessor, which
drops it). Asking for any step implies ``stored``. A daemon's sends to one agent ask for
``stored`` (it ends their redelivery); a plain publisher's ask for nothing and get nothing.

A receipt is a JSON object of at most :data:`MAX_RECEIPT_BYTES` bytes::

    {"receipt": 1, "id": "<message id>", "step": "stored", "by": "<receiver id>",
     "at": "2026-11-22T01:19:34.112652+00:00", "detail": ""}

:func:`parse_receipt` has a total contract: for any bytes it returns a :class:`Receipt` or raises
:class:`ReceiptError` (a short reason), never anything else.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

from swarmbus.envelope import AGENT_ID_RE, Envelope, parse_timestamp

RECEIPT_VERSION = 1
MAX_RECEIPT_BYTES = 4096
MAX_DETAIL_CHARS = 500
PUBLISHED = "published"
STORED = "stored"
WAKE = "wake"
SURFACED = "surfaced"
ACKNOWLEDGED = "acknowledged"
REPLIED = "replied"
RECEIPT_STEPS = (STORED, WAKE, SURFACED, ACKNOWLEDGED, REPLIED)
"""The steps a receiver reports, in ladder order."""
STEPS = (PUBLISHED, *RECEIPT_STEPS)
"""Every step of the ladder, in order."""
REQUEST_FIELD = "receipts"
"""The envelope's extra field listing the later steps the sender wants receipts for."""
PRESENCE_CAPABILITY = "receipts"
"""The presence key (value :data:`RECEIPT_VERSION`) of a daemon that sends receipts."""

_ID_RE = re.compile(r"\A[^\x00-\x1f\x7f-\x9f]{1,200}\Z")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class ReceiptError(ValueError):
    """An inbound receipt was rejected; the message says why (at most ~80 characters of input)."""


class Receipt:
    """One step of one message, as reported by ``by``. ``at`` is Unix seconds."""

    __slots__ = ("at", "by", "detail", "message_id", "step")

    def __init__(self, message_id: str, step: str, by: str, at: float, detail: str = "") -> None:
        self.message_id = message_id
        self.step = step
        self.by = by
        self.at = at
        self.detail = detail

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Receipt) and all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __repr__(self) -> str:
        return f"Receipt({self.message_id!r}, {self.step!r}, by={self.by!r}, at={self.at!r})"

    def to_wire(self) -> bytes:
        """The payload (always within :data:`MAX_RECEIPT_BYTES`: ``detail`` is cut to fit)."""
        at = datetime.fromtimestamp(self.at, UTC).isoformat()
        body = {"receipt": RECEIPT_VERSION, "id": self.message_id, "step": self.step, "by": self.by, "at": at,
                "detail": clean_detail(self.detail)}
        return json.dumps(body).encode("utf-8")


def clean_detail(text: str) -> str:
    """``text`` without control characters or lone surrogates, at most :data:`MAX_DETAIL_CHARS`."""
    text = _CONTROL_RE.sub(" ", text[:MAX_DETAIL_CHARS])
    return text.encode("utf-8", "replace").decode("utf-8")


def _unique(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ReceiptError(f"duplicate key {key[:40]!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> object:
    raise ReceiptError(f"{name} is not JSON")


def parse_receipt(payload: bytes) -> Receipt:
    """Parse an inbound receipt.

    :raises ReceiptError: anything but a well-formed receipt: over 4 KiB, not strict UTF-8 JSON,
        not an object, duplicate keys, an unknown ``receipt`` version, a bad message id, step,
        agent id, time or detail.
    """
    try:
        return _parse(payload)
    except ReceiptError:
        raise
    except Exception as exc:  # RecursionError, a parser surprise: still a clean rejection
        raise ReceiptError(f"unparseable receipt ({type(exc).__name__})") from None


def _parse(payload: bytes) -> Receipt:
    if not isinstance(payload, bytes | bytearray) or len(payload) > MAX_RECEIPT_BYTES:
        raise ReceiptError(f"not a receipt: more than {MAX_RECEIPT_BYTES} bytes")
    try:
        text = bytes(payload).decode("utf-8")
        data = json.loads(text, object_pairs_hook=_unique, parse_constant=_reject_constant)
    except ReceiptError:
        raise
    except ValueError as exc:
        raise ReceiptError(f"not JSON: {str(exc)[:60]}") from None
    if not isinstance(data, dict):
        raise ReceiptError("not a JSON object")
    if data.get("receipt") != RECEIPT_VERSION or isinstance(data.get("receipt"), bool):
        raise ReceiptError(f"unknown receipt version {str(data.get('receipt'))[:20]!r}")
    message_id, step, by, at, detail = (data.get(k) for k in ("id", "step", "by", "at", "detail"))
    if not isinstance(message_id, str) or not _ID_RE.match(message_id):
        raise ReceiptError("bad message id")
    try:
        message_id.encode("utf-8")
    except UnicodeEncodeError:
        raise ReceiptError("bad message id (lone surrogate)") from None
    if step not in RECEIPT_STEPS:
        raise ReceiptError(f"unknown step {str(step)[:40]!r}")
    if not isinstance(by, str) or not AGENT_ID_RE.match(by):
        raise ReceiptError("bad receiver id")
    if not isinstance(at, str) or len(at) > 64 or not at.isascii() or not at.isprintable():
        raise ReceiptError("bad time")
    try:
        when = parse_timestamp(at).timestamp()
    except (ValueError, OverflowError):
        raise ReceiptError("bad time") from None
    if detail is None:
        detail = ""
    if not isinstance(detail, str):
        raise ReceiptError("detail must be a string")
    assert isinstance(step, str)
    return Receipt(message_id, step, by, when, clean_detail(detail))


def requested_steps(envelope: Envelope) -> frozenset[str]:
    """The steps ``envelope`` asks receipts for (its ``receipts`` extra field); anything unknown
    in it is ignored. Empty: it asks for none (not even ``stored``)."""
    asked = envelope.extra.get(REQUEST_FIELD)
    if not isinstance(asked, list):
        return frozenset()
    return frozenset(s for s in asked if isinstance(s, str) and s in RECEIPT_STEPS)


def with_request(envelope: Envelope, steps: list[str]) -> Envelope:
    """``envelope`` asking for receipts for ``steps`` too (merged with what it asks already;
    ``stored`` is always among them)."""
    asked = requested_steps(envelope)
    wanted = sorted(asked | {STORED} | {s for s in steps if s in RECEIPT_STEPS}, key=RECEIPT_STEPS.index)
    if set(wanted) == asked:
        return envelope
    data = envelope.to_dict()
    data[REQUEST_FIELD] = wanted
    return Envelope.from_dict(data)
