"""The envelope: predecessor wire compatibility (both directions), validation, digest, expiry, and
the specific hostile payloads (tests/test_envelope_properties.py generates the rest)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from swarmbus.envelope import (
    EXTRA_INT_MAX,
    EXTRA_INT_MIN,
    MAX_BODY_BYTES,
    MAX_EXTRA_BYTES,
    MAX_EXTRA_DEPTH,
    MAX_MESSAGE_ID_CHARS,
    MAX_PAYLOAD_BYTES,
    WIRE_KEYS,
    Envelope,
    EnvelopeError,
    decode_wire,
    new_envelope,
    validate_agent_id,
    validate_own_id,
    validate_target,
)

# The exact sample from the predecessor reference, §2.3 (as swarmbus-py 0.2.0 emits it).
PREDECESSOR_SAMPLE = (
    '{"id": "25a7e691-8322-4685-a71f-c66c774b7e73", "from": "planner", "to": "coder", '
    '"ts": "2026-11-22T01:19:34.112652+00:00", "subject": "hello there", "body": "\u2026", '
    '"content_type": "text/markdown", "priority": "high", "reply_to": "planner"}'
)


def base(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "m-1",
        "from": "planner",
        "to": "coder",
        "ts": "2026-01-02T03:04:05+00:00",
        "subject": "hi",
        "body": "hello",
        "content_type": "text/plain",
        "priority": "normal",
        "reply_to": None,
    }
    data.update(over)
    return data


def parse(**over: Any) -> Envelope:
    return Envelope.from_dict(base(**over))


def field_error(**over: Any) -> str | None:
    with pytest.raises(EnvelopeError) as info:
        parse(**over)
    return info.value.field


# -- predecessor wire compatibility -----------------------------------------------------------


def test_parses_predecessor_sample() -> None:
    env = Envelope.from_wire(PREDECESSOR_SAMPLE.encode("utf-8"))
    assert env.id == "25a7e691-8322-4685-a71f-c66c774b7e73"
    assert env.from_agent == "planner"
    assert env.to == "coder"
    assert env.ts == "2026-11-22T01:19:34.112652+00:00"
    assert env.subject == "hello there"
    assert env.body == "\u2026"
    assert env.content_type == "text/markdown"
    assert env.priority == "high"
    assert env.reply_to == "planner"
    assert env.in_reply_to is None and env.expires_at is None
    assert dict(env.extra) == {}


def test_reemits_predecessor_sample_as_predecessor_would() -> None:
    env = Envelope.from_wire(PREDECESSOR_SAMPLE.encode("utf-8"))
    # the predecessor serialises with json.dumps defaults: ", " / ": " separators, ASCII escapes
    assert env.to_wire() == json.dumps(json.loads(PREDECESSOR_SAMPLE)).encode("utf-8")
    assert env.to_wire().decode("ascii") == PREDECESSOR_SAMPLE.replace("\u2026", "\\u2026")


def test_to_wire_key_order_and_separators() -> None:
    env = new_envelope("planner", "coder", "subj", "body")
    wire = env.to_wire()
    data = json.loads(wire)
    assert tuple(data) == WIRE_KEYS
    assert b'"id": "' in wire and b'", "from": "planner", "to": "coder", ' in wire
    assert wire == json.dumps(data).encode("utf-8")


def test_reply_to_null_always_emitted() -> None:
    env = new_envelope("planner", "coder", "s", "b")
    assert env.to_dict()["reply_to"] is None
    assert b'"reply_to": null' in env.to_wire()
    assert env.to_wire().endswith(b'"reply_to": null}')


def test_optional_fields_only_when_set() -> None:
    plain = new_envelope("planner", "coder", "s", "b")
    assert "in_reply_to" not in plain.to_dict() and "expires_at" not in plain.to_dict()
    threaded = new_envelope(
        "planner", "coder", "s", "b", reply_to="planner", in_reply_to="m-0", expires_at="2030-01-01T00:00:00+00:00"
    )
    assert list(threaded.to_dict()) == [*WIRE_KEYS, "in_reply_to", "expires_at"]
    again = Envelope.from_wire(threaded.to_wire())
    assert again == threaded
    # explicit nulls from a peer are not re-emitted
    assert "in_reply_to" not in parse(in_reply_to=None, expires_at=None).to_dict()


def test_predecessor_can_parse_our_output() -> None:
    """What a 0.2.0 receiver needs: every one of its keys, with plain JSON types."""
    env = new_envelope("planner", "coder", "s", "b", priority="high", reply_to="planner")
    data = json.loads(env.to_wire())
    for key in WIRE_KEYS:
        assert key in data
    assert all(isinstance(data[k], str) for k in WIRE_KEYS if k != "reply_to")
    datetime.fromisoformat(data["ts"])


def test_missing_optional_predecessor_fields_default() -> None:
    data = base()
    del data["content_type"], data["priority"], data["reply_to"]
    env = Envelope.from_dict(data)
    assert (env.content_type, env.priority, env.reply_to) == ("text/plain", "normal", None)


def test_missing_required_field_named() -> None:
    data = base()
    del data["subject"]
    with pytest.raises(EnvelopeError) as info:
        Envelope.from_dict(data)
    assert info.value.field == "subject"


def test_unknown_fields_preserved_in_order_and_reemitted() -> None:
    data = base(zeta=1, alpha={"nested": [1, 2]}, mid="x")
    env = Envelope.from_dict(data)
    assert list(env.extra) == ["zeta", "alpha", "mid"]
    out = env.to_dict()
    assert list(out) == [*WIRE_KEYS, "zeta", "alpha", "mid"]
    assert out["alpha"] == {"nested": [1, 2]}
    assert Envelope.from_wire(env.to_wire()).extra == env.extra


def test_unknown_fields_come_after_optional_ones() -> None:
    env = parse(trace="t1", in_reply_to="m-0")
    assert list(env.to_dict())[-2:] == ["in_reply_to", "trace"]


def test_from_wire_rejects_non_json_and_non_objects() -> None:
    for payload in (b"not json", b"\xff\xfe", b"[1, 2]", b'"str"', b"null"):
        with pytest.raises(EnvelopeError):
            Envelope.from_wire(payload)


def test_from_wire_rejects_oversize_payload() -> None:
    with pytest.raises(EnvelopeError):
        Envelope.from_wire(b" " * (1_048_576 + 1))


# -- agent ids ----------------------------------------------------------------------------------


@pytest.mark.parametrize("good", ["a", "coder", "coder-beta", "_under", "0", "a" * 64, "x_1-2"])
def test_valid_ids(good: str) -> None:
    assert validate_agent_id(good) == good
    assert parse(to=good).to == good


@pytest.mark.parametrize("bad", ["coder\n", "\ncoder", "Coder", "CODER", "", "a" * 65, "a b", "a/b", "a+", "#", "é"])
def test_invalid_ids(bad: str) -> None:
    with pytest.raises(EnvelopeError):
        validate_agent_id(bad)
    assert field_error(to=bad) == "to"
    assert field_error(**{"from": bad}) == "from"


def test_non_string_ids_rejected() -> None:
    assert field_error(to=5) == "to"
    assert field_error(**{"from": None}) == "from"


def test_reserved_sender_rejected() -> None:
    for reserved in ("broadcast", "system"):
        assert field_error(**{"from": reserved}) == "from"
        with pytest.raises(EnvelopeError):
            validate_own_id(reserved)
        with pytest.raises(EnvelopeError):
            new_envelope(reserved, "coder", "s", "b")


def test_targets() -> None:
    assert field_error(to="system") == "to"
    with pytest.raises(EnvelopeError):
        validate_target("system")
    env = parse(to="broadcast")
    assert env.is_broadcast
    assert validate_target("broadcast") == "broadcast"
    assert not parse().is_broadcast


def test_reply_to_validated() -> None:
    assert parse(reply_to="planner").reply_to == "planner"
    for bad in ("Not An Id!", "system", "x\n", 3):
        assert field_error(reply_to=bad) == "reply_to"


# -- body and subject -----------------------------------------------------------------------------


def test_body_limit_in_bytes() -> None:
    assert len(parse(body="x" * MAX_BODY_BYTES).body) == 65_536
    assert field_error(body="x" * (MAX_BODY_BYTES + 1)) == "body"
    # multi-byte UTF-8: the limit counts encoded bytes, not characters
    euro = "\u20ac"  # 3 bytes
    assert parse(body=euro * (MAX_BODY_BYTES // 3) + "x").body
    assert field_error(body=euro * (MAX_BODY_BYTES // 3 + 1)) == "body"
    assert field_error(body="x" * (MAX_BODY_BYTES - 1) + "\u00e9") == "body"  # 65,537 bytes


def test_body_may_be_empty_and_multiline() -> None:
    assert parse(body="").body == ""
    assert parse(body="line1\nline2\ttab\r\n").body.endswith("\r\n")


def test_lone_surrogate_rejected() -> None:
    assert field_error(body="ok \ud800 not ok") == "body"
    with pytest.raises(EnvelopeError):
        Envelope.from_wire(json.dumps(base(body="\ud800")).encode())


@pytest.mark.parametrize("key", ["subject", "id", "in_reply_to"])
def test_lone_surrogate_rejected_in_text_fields(key: str) -> None:
    # must be refused here: such a string cannot be written to SQLite or to the markdown file
    assert field_error(**{key: "a\udc80b"}) == key


def test_subject_limits() -> None:
    assert len(parse(subject="s" * 256).subject) == 256
    assert parse(subject="").subject == ""
    assert field_error(subject="s" * 257) == "subject"
    for bad in ("a\nb", "a\tb", "\x1b[31mred", "a\rb", "a\x00b", "a\x85b"):
        assert field_error(subject=bad) == "subject"
    assert field_error(subject=None) == "subject"


def test_id_validation() -> None:
    assert field_error(id="") == "id"
    assert field_error(id="a\nb") == "id"
    assert field_error(id=7) == "id"
    assert parse(id="any string, spaces ok").id == "any string, spaces ok"


# -- priority, content_type, timestamps ----------------------------------------------------------


@pytest.mark.parametrize("priority", ["low", "normal", "high", "urgent", "P1", "very_high"])
def test_priority_free_string_accepted(priority: str) -> None:
    assert parse(priority=priority).priority == priority


@pytest.mark.parametrize("priority", ["", "high!", "very high", "x" * 33, None, 1, "hi\n"])
def test_priority_junk_rejected(priority: Any) -> None:
    assert field_error(priority=priority) == "priority"


@pytest.mark.parametrize(
    "ctype", ["text/plain", "text/markdown", "application/json", "application/x-sh", "text/plain; charset=utf-8"]
)
def test_content_type_accepted(ctype: str) -> None:
    assert parse(content_type=ctype).content_type == ctype


@pytest.mark.parametrize("ctype", ["", "plain", "text/", "/plain", "text/plain\n", None, "a b/c", "text/plain;\x00"])
def test_content_type_rejected(ctype: Any) -> None:
    assert field_error(content_type=ctype) == "content_type"


@pytest.mark.parametrize(
    "ts", ["2026-01-02T03:04:05", "2026-01-02T03:04:05Z", "2026-01-02T03:04:05.123456+02:00", "2026-01-02"]
)
def test_timestamps_accepted(ts: str) -> None:
    assert parse(ts=ts).ts == ts


@pytest.mark.parametrize("ts", ["yesterday", "", "2026-13-01T00:00:00", 1700000000, None])
def test_timestamps_rejected(ts: Any) -> None:
    assert field_error(ts=ts) == "ts"


def test_expires_at_validated() -> None:
    assert field_error(expires_at="soon") == "expires_at"


def test_expired() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert not parse().expired(now)
    assert parse(expires_at="2026-01-01T11:59:59+00:00").expired(now)
    assert not parse(expires_at="2026-01-01T12:00:01+00:00").expired(now)
    # naive is UTC; Z works
    assert parse(expires_at="2026-01-01T11:00:00").expired(now)
    assert not parse(expires_at="2026-01-01T13:00:00Z").expired(now)
    # an offset is honoured: 13:00+02:00 is 11:00 UTC
    assert parse(expires_at="2026-01-01T13:00:00+02:00").expired(now)
    # default now
    past = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert parse(expires_at=past).expired()
    assert not parse(expires_at=future).expired()


# -- new_envelope, digest ---------------------------------------------------------------------------


def test_new_envelope_defaults() -> None:
    env = new_envelope("planner", "coder", "s", "b")
    assert len(env.id) == 36 and env.id.count("-") == 4
    assert env.ts.endswith("+00:00")
    assert (env.content_type, env.priority, env.reply_to) == ("text/plain", "normal", None)
    assert new_envelope("planner", "coder", "s", "b").id != env.id
    fixed = new_envelope("planner", "coder", "s", "b", id="fixed", ts="2026-01-01T00:00:00+00:00")
    assert (fixed.id, fixed.ts) == ("fixed", "2026-01-01T00:00:00+00:00")


def test_digest() -> None:
    a = parse()
    assert a.digest() == parse().digest()
    assert a.digest() == Envelope.from_wire(a.to_wire()).digest()
    assert len(a.digest()) == 64
    for change in ({"body": "other"}, {"subject": "x"}, {"priority": "high"}, {"ts": "2026-01-02T03:04:06+00:00"},
                   {"reply_to": "planner"}, {"in_reply_to": "m-0"}, {"extra_field": 1}):
        assert parse(**change).digest() != a.digest(), change


def test_digest_independent_of_unknown_field_order() -> None:
    a = Envelope.from_dict(base(x=1, y=2))
    b = Envelope.from_dict(base(y=2, x=1))
    assert a.digest() == b.digest()


def test_error_is_value_error_with_field() -> None:
    with pytest.raises(ValueError):
        parse(to="Bad")
    err = EnvelopeError("boom", field="body")
    assert err.field == "body" and str(err) == "boom"
    assert EnvelopeError("no field").field is None


# -- hostile payloads: only EnvelopeError, with a short reason -----------------------------------


def wire_text(**over: Any) -> str:
    return json.dumps(base(**over))


def with_raw(field: str, raw: str) -> bytes:
    """A valid payload with ``field`` (known or new) set to the raw JSON text ``raw``."""
    data = base()
    data[field] = "@@RAW@@"
    return json.dumps(data).replace('"@@RAW@@"', raw).encode()


def rejected(payload: bytes) -> EnvelopeError:
    with pytest.raises(EnvelopeError) as info:
        Envelope.from_wire(payload)
    with pytest.raises(EnvelopeError):
        decode_wire(payload)
    assert len(str(info.value)) < 300, str(info.value)
    return info.value


@pytest.mark.parametrize("depth", [33, 500, 1_000, 100_000, 500_000])
def test_deep_nesting_rejected_everywhere(depth: int) -> None:
    nested = "[" * depth + "]" * depth
    rejected(with_raw("trace", nested))  # an unknown field
    rejected(with_raw("to", nested))  # a known one
    rejected(nested.encode())  # the whole payload
    rejected(("{" + '"a": {' * depth + "}" * depth + "}").encode())


def test_nesting_limit_for_unknown_fields() -> None:
    depth = MAX_EXTRA_DEPTH
    env = Envelope.from_wire(with_raw("trace", "[" * depth + "]" * depth))
    assert Envelope.from_wire(env.to_wire()) == env
    err = rejected(with_raw("trace", "[" * (depth + 1) + "]" * (depth + 1)))
    assert err.field == "trace" and "deep" in str(err)
    err = rejected(with_raw("trace", '{"a": ' * (depth + 1) + "1" + "}" * (depth + 1)))
    assert err.field == "trace"


def test_huge_integers_rejected() -> None:
    for raw in ("1" * 5000, "-" + "9" * 5000, "1" * 21):
        err = rejected(with_raw("trace", raw))
        assert "integer" in str(err)
        rejected(with_raw("to", raw))
    assert Envelope.from_wire(with_raw("n", str(EXTRA_INT_MAX))).extra["n"] == 2**64 - 1
    assert Envelope.from_wire(with_raw("n", str(EXTRA_INT_MIN))).extra["n"] == -(2**63)
    assert rejected(with_raw("n", str(EXTRA_INT_MAX + 1))).field == "n"
    assert rejected(with_raw("n", str(EXTRA_INT_MIN - 1))).field == "n"
    # from Python, where no digit limit applies before the check
    with pytest.raises(EnvelopeError):
        Envelope.from_dict(base(n=10**5000))


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "[1.0, NaN]", '{"x": Infinity}'])
def test_non_finite_numbers_rejected(raw: str) -> None:
    rejected(with_raw("trace", raw))


def test_non_finite_numbers_rejected_from_python() -> None:
    for value in (float("nan"), float("inf"), [float("-inf")], {"x": float("nan")}):
        with pytest.raises(EnvelopeError):
            Envelope.from_dict(base(trace=value))


def test_finite_floats_round_trip() -> None:
    env = Envelope.from_wire(with_raw("f", "[0.1, -0.0, 1.5e308, 5e-324, 1E5]"))
    assert env.extra["f"] == [0.1, -0.0, 1.5e308, 5e-324, 100000.0]
    assert Envelope.from_wire(env.to_wire()) == env


def test_duplicate_keys_rejected() -> None:
    payload = wire_text()[:-1] + ', "to": "mallory"}'
    assert "duplicate" in str(rejected(payload.encode()))
    rejected(with_raw("trace", '{"a": 1, "a": 2}'))


def test_lone_surrogate_escapes_rejected_everywhere() -> None:
    for field in ("id", "subject", "body", "in_reply_to", "trace"):
        assert rejected(with_raw(field, '"x\\ud800y"')).field == field, field
    rejected(with_raw("trace", '{"\\udfff": 1}'))
    rejected(with_raw("trace", '["ok", ["\\udc80"]]'))
    payload = wire_text()[:-1] + ', "\\ud800key": 1}'
    rejected(payload.encode())
    # a proper pair is one astral character, and fine
    assert Envelope.from_wire(with_raw("body", '"\\ud83d\\ude00"')).body == "\U0001f600"


@pytest.mark.parametrize(
    "ts", ["2026-01-02\x0003:04:05", "2026-01-02\ud80003:04:05", "2026-01-02\u202803:04:05", "2026-01-02\u00e903:04:05",
           "2026-01-02T03:04:05.0000000000000000000000000000000000000000000000000000001"]
)
def test_timestamps_must_be_short_printable_ascii(ts: str) -> None:
    # datetime.fromisoformat takes any character as the separator and any number of digits
    assert field_error(ts=ts) == "ts"
    assert field_error(expires_at=ts) == "expires_at"


@pytest.mark.parametrize("ctype", ["text/plain\n; charset=utf-8", "text/plain; a=\u2028", "text/plain; a=\x85",
                                   "text/plain; a=\ud800", "text/plain\x0b; a=b"])
def test_content_type_parameters_have_no_line_breaks(ctype: str) -> None:
    assert field_error(content_type=ctype) == "content_type"


def test_payload_framing() -> None:
    assert Envelope.from_wire(b" \n\t" + wire_text().encode() + b"\r\n ") == parse()
    rejected(wire_text().encode() + b" x")
    rejected(wire_text().encode() + wire_text().encode())
    rejected(b"\xef\xbb\xbf" + wire_text().encode())  # a BOM is not JSON
    rejected(b"")
    rejected(b"   ")
    rejected(wire_text().encode()[:-1])
    rejected(wire_text().encode("utf-16"))
    rejected(b'{"id": "\xed\xa0\x80"}')  # an encoded surrogate: not UTF-8
    for junk in (b"[1, 2]", b'"str"', b"null", b"1", b"true"):
        assert "JSON object" in str(rejected(junk))


def test_payload_types() -> None:
    payload = wire_text().encode()
    assert Envelope.from_wire(bytearray(payload)) == parse()
    assert Envelope.from_wire(memoryview(payload)) == parse()  # type: ignore[arg-type]
    with pytest.raises(EnvelopeError):
        Envelope.from_wire(wire_text())  # type: ignore[arg-type]
    with pytest.raises(EnvelopeError):
        decode_wire(None)  # type: ignore[arg-type]


def test_from_dict_only_raises_envelope_error() -> None:
    for data in (None, 5, "x", [base()], ("id",), {1: 2}, {"id": "m-1"}):
        with pytest.raises(EnvelopeError):
            Envelope.from_dict(data)  # type: ignore[arg-type]
    for value in ((1, 2), {1, 2}, b"bytes", object(), {1: "non-string key"}, Envelope, "\ud800", {"k": "\udc00"}):
        with pytest.raises(EnvelopeError):
            Envelope.from_dict(base(trace=value))
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(EnvelopeError):
        Envelope.from_dict(base(trace=cyclic))


def test_constructor_checks_extra() -> None:
    fields = dict(id="m", from_agent="planner", to="coder", ts="2026-01-01T00:00:00", subject="s", body="b")
    assert Envelope(**fields, extra={"x": [1, {"y": None}]}).extra == {"x": [1, {"y": None}]}  # type: ignore[arg-type]
    for extra in ({"in_reply_to": "m-0"}, {"to": "x"}, {"x": float("nan")}, {"x": (1,)}, {3: 1}):
        with pytest.raises(EnvelopeError):
            Envelope(**fields, extra=extra)  # type: ignore[arg-type]


def test_extra_is_read_only() -> None:
    env = parse(trace="t")
    with pytest.raises(TypeError):
        env.extra["trace"] = "changed"  # type: ignore[index]
    assert parse().extra == {}


def test_unknown_fields_size_limit() -> None:
    big = "x" * (MAX_EXTRA_BYTES - 100)
    assert len(Envelope.from_dict(base(trace=big)).to_wire()) < MAX_PAYLOAD_BYTES
    err = rejected(with_raw("trace", json.dumps("\u2026" * (MAX_EXTRA_BYTES // 6 + 10), ensure_ascii=False)))
    assert err.field == "trace" and "512 KiB" in str(err)


def test_worst_case_envelope_still_fits_on_the_wire() -> None:
    """Every accepted envelope re-serialises to at most 1 MiB, so it can always be sent on."""
    env = Envelope.from_dict(base(
        id="\U0001f600" * MAX_MESSAGE_ID_CHARS, in_reply_to="\U0001f600" * MAX_MESSAGE_ID_CHARS,
        subject="\U0001f600" * 256, body="\x01" * MAX_BODY_BYTES,  # 6 bytes on the wire each
        content_type="text/plain;" + "\U0001f600" * 128, trace="y" * (MAX_EXTRA_BYTES - 20),
    ))
    wire = env.to_wire()
    assert len(wire) <= MAX_PAYLOAD_BYTES
    assert Envelope.from_wire(wire) == env


def test_error_messages_stay_short_for_huge_values() -> None:
    huge = "x" * 900_000
    for field in ("id", "from", "to", "ts", "subject", "content_type", "priority", "reply_to"):
        err = rejected(with_raw(field, json.dumps(huge)))
        assert err.field == field
    err = rejected(with_raw("to", "[" * 900 + "]" * 900))  # repr() of this would recurse
    assert err.field == "to"


def test_decode_wire_returns_the_text_as_received() -> None:
    for payload in (
        PREDECESSOR_SAMPLE.encode(),
        json.dumps(base(body="caf\u00e9 \u2026 \U0001f600"), ensure_ascii=False).encode(),
        json.dumps(base(body="caf\u00e9"), separators=(",", ":")).encode(),
        b"  " + wire_text(trace={"nested": [1, 2.5, None]}).encode() + b"\n",
    ):
        env, text = decode_wire(payload)
        assert text.encode("utf-8") == payload
        assert env == Envelope.from_wire(payload)


def test_big_bodies() -> None:
    ascii_body = "x" * MAX_BODY_BYTES
    assert Envelope.from_wire(with_raw("body", json.dumps(ascii_body))).body == ascii_body
    raw = json.dumps(base(body="\u00e9" * (MAX_BODY_BYTES // 2)), ensure_ascii=False).encode()
    assert len(Envelope.from_wire(raw).body) == MAX_BODY_BYTES // 2
    over = json.dumps(base(body="\u00e9" * (MAX_BODY_BYTES // 2) + "x"), ensure_ascii=False).encode()
    assert rejected(over).field == "body"
    way_over = json.dumps(base(body="\u20ac" * (MAX_BODY_BYTES + 1)), ensure_ascii=False).encode()
    assert "at least" in str(rejected(way_over))
