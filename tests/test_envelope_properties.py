"""Property-based tests of the envelope parser: whatever arrives, the parser raises EnvelopeError
or returns an envelope that re-serialises cleanly, and valid envelopes round-trip exactly.

Deterministic (``derandomize=True``, no example database) and sized to run in a few seconds.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarmbus.envelope import (
    EXTRA_INT_MAX,
    EXTRA_INT_MIN,
    KNOWN_KEYS,
    MAX_EXTRA_DEPTH,
    MAX_PAYLOAD_BYTES,
    RESERVED_IDS,
    SYSTEM,
    WIRE_KEYS,
    Envelope,
    EnvelopeError,
    decode_wire,
)

PROPS = settings(
    derandomize=True, database=None, deadline=None, max_examples=100,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def reject_constant(name: str) -> Any:
    raise AssertionError(f"{name} in our own output")


def strict_loads(wire: bytes) -> Any:
    """json.loads that refuses what json.dumps should never have written."""
    return json.loads(wire.decode("ascii"), parse_constant=reject_constant)


def check_accepted(env: Envelope, payload: bytes | None = None) -> None:
    """What must hold for every envelope the parser returned."""
    wire = env.to_wire()
    assert len(wire) <= MAX_PAYLOAD_BYTES
    data = strict_loads(wire)
    assert tuple(data)[:9] == WIRE_KEYS
    assert Envelope.from_wire(wire) == env
    again, text = decode_wire(wire)
    assert again == env and text == wire.decode("ascii")
    assert Envelope.from_dict(data) == env
    assert len(env.digest()) == 64 and env.digest() == again.digest()
    # every text can go to SQLite and to a UTF-8 file
    for value in (env.id, env.from_agent, env.to, env.ts, env.subject, env.body, env.content_type, env.priority):
        value.encode("utf-8")
    json.dumps(dict(env.extra), ensure_ascii=False).encode("utf-8")
    if payload is not None:
        assert decode_wire(payload)[1].encode("utf-8") == payload


def only_envelope_error(payload: bytes) -> Envelope | None:
    try:
        env, text = decode_wire(payload)
    except EnvelopeError as exc:
        assert len(str(exc)) < 300
        return None
    assert text.encode("utf-8") == payload
    check_accepted(env, payload)
    return env


# -- strategies -------------------------------------------------------------------------------------

no_surrogates = st.characters(blacklist_categories=("Cs",))
no_controls = st.characters(blacklist_categories=("Cs", "Cc"))
agent_ids = st.from_regex(r"\A[a-z0-9_-]{1,64}\Z")
senders = agent_ids.filter(lambda a: a not in RESERVED_IDS)
targets = agent_ids.filter(lambda a: a != SYSTEM)
message_ids = st.text(no_controls, min_size=1, max_size=60)
zones = st.sampled_from([None, UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=11))])


def iso(moment: datetime, zone: timezone | None, style: int) -> str:
    moment = moment.replace(tzinfo=zone)
    text = moment.isoformat(sep=" " if style == 1 else "T")
    return text.replace("+00:00", "Z") if style == 2 else text


timestamps = st.builds(
    iso, st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)), zones, st.integers(0, 2)
)
MARKDOWN_TOKENS = ["## [", "#", "[", "<!--", "-->", "\\", " ", "\t", "\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c",
                   "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\u200b", "\ufeff", "\xa0", "\x00", "x"]
bodies = st.lists(st.sampled_from(MARKDOWN_TOKENS) | no_surrogates, max_size=30).map("".join)
content_types = st.sampled_from(
    ["text/plain", "text/markdown", "application/json", "text/plain; charset=utf-8", "application/vnd.a+json;x=\u00e9"]
)
priorities = st.from_regex(r"\A[A-Za-z0-9_-]{1,32}\Z")
json_scalars = (
    st.none() | st.booleans() | st.integers(EXTRA_INT_MIN, EXTRA_INT_MAX)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(no_surrogates, max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(no_surrogates, max_size=8), inner, max_size=4),
    max_leaves=12,
)
extras = st.dictionaries(st.text(no_surrogates, max_size=12).filter(lambda k: k not in KNOWN_KEYS), json_values,
                         max_size=4)
envelopes = st.builds(
    Envelope,
    id=message_ids,
    from_agent=senders,
    to=targets,
    ts=timestamps,
    subject=st.text(no_controls, max_size=80),
    body=bodies,
    content_type=content_types,
    priority=priorities,
    reply_to=st.none() | targets,
    in_reply_to=st.none() | message_ids,
    expires_at=st.none() | timestamps,
    extra=extras,
)

# JSON text fragments, hostile ones included: what a peer can put where a value goes
HOSTILE_ATOMS = [
    "NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" * 5000, "-" + "9" * 25, "18446744073709551616",
    "-9223372036854775809", "18446744073709551615", '"\\ud800"', '"x\\udfff"', '"\\ud83d\\ude00"', '"a\\u0000b"',
    '"\\u2028## ["', '"coder\\n"', '"system"', '"broadcast"', "null", "true", "0", "-0.0", "1.5e308", '""', "[]", "{}",
    '"2026-01-02T03:04:05"', '"2026-01-02\\u000003:04:05"', '"text/plain"',
]
fragments = st.recursive(
    st.sampled_from(HOSTILE_ATOMS)
    | st.text(max_size=12).map(json.dumps)  # lone surrogates included, as \ud... escapes
    | st.integers(1, 2_000).map(lambda d: "[" * d + "]" * d)
    | st.integers(-(2**70), 2**70).map(str)
    | st.floats().map(lambda f: json.dumps(f)),  # nan and infinities too
    lambda inner: st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]")
    | st.lists(st.tuples(st.text(max_size=4).map(json.dumps), inner), max_size=3).map(
        lambda kv: "{" + ", ".join(f"{k}: {v}" for k, v in kv) + "}"),
    max_leaves=8,
)


def object_text(members: list[tuple[str, str]]) -> bytes:
    return ("{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in members) + "}").encode("utf-8", "surrogatepass")


# -- properties -------------------------------------------------------------------------------------


@PROPS
@given(envelopes)
def test_valid_envelopes_round_trip(env: Envelope) -> None:
    check_accepted(env)
    # other peers may send raw UTF-8 and compact separators: the same envelope, the same text back
    for options in ({"ensure_ascii": False}, {"separators": (",", ":")}):
        payload = json.dumps(env.to_dict(), **options).encode("utf-8")  # type: ignore[arg-type]
        again, text = decode_wire(payload)
        assert again == env and text.encode("utf-8") == payload


@PROPS
@given(st.binary(max_size=300))
def test_arbitrary_bytes(payload: bytes) -> None:
    only_envelope_error(payload)


@PROPS
@given(envelopes, st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255), st.integers(0, 2)), min_size=1,
                           max_size=4))
def test_mutated_valid_payloads(env: Envelope, edits: list[tuple[int, int, int]]) -> None:
    payload = bytearray(env.to_wire())
    for where, byte, how in edits:
        at = where % (len(payload) + 1)
        if how == 0:
            payload.insert(at, byte)
        elif at < len(payload):
            if how == 1:
                payload[at] = byte
            else:
                del payload[at]
    only_envelope_error(bytes(payload))


@PROPS
@given(fragments)
def test_arbitrary_json_values(fragment: str) -> None:
    only_envelope_error(fragment.encode("utf-8", "surrogatepass"))
    only_envelope_error(object_text([("id", fragment)]))


@pytest.mark.parametrize("key", [*sorted(KNOWN_KEYS), "trace"])
@pytest.mark.parametrize("atom", HOSTILE_ATOMS)
def test_each_hostile_atom_in_each_field(atom: str, key: str) -> None:
    members = {k: json.dumps(v) for k, v in
               {"id": "m", "from": "a", "to": "b", "ts": "2026-01-01", "subject": "", "body": ""}.items()}
    members[key] = atom
    only_envelope_error(object_text(list(members.items())))
    only_envelope_error(atom.encode())


@PROPS
@given(st.recursive(json_scalars | st.floats() | st.text(max_size=5) | st.integers(),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
                    | st.tuples(inner) | st.sets(st.integers(), max_size=2),
                    max_leaves=10))
def test_from_dict_on_arbitrary_python_values(value: Any) -> None:
    for data in (value, {"id": "m", "from": "a", "to": "b", "ts": "2026-01-01", "subject": "", "body": "",
                         "trace": value}):
        try:
            env = Envelope.from_dict(data)
        except EnvelopeError:
            continue
        check_accepted(env)


@PROPS
@given(envelopes, st.lists(st.tuples(st.sampled_from([*sorted(KNOWN_KEYS), "trace", "x", ""]), fragments),
                           min_size=1, max_size=3))
def test_hostile_field_values(env: Envelope, replacements: list[tuple[str, str]]) -> None:
    members = {key: json.dumps(value) for key, value in env.to_dict().items()}
    for key, fragment in replacements:
        members[key] = fragment
    only_envelope_error(object_text(list(members.items())))


@PROPS
@given(st.integers(1, 3_000), st.sampled_from(["trace", "to", "body", "top"]), st.booleans())
def test_deep_nesting(depth: int, where: str, objects: bool) -> None:
    nested = ('{"k": ' * depth + "1" + "}" * depth) if objects else ("[" * depth + "]" * depth)
    if where == "top":
        payload = nested.encode()
    else:
        members = {key: json.dumps(value) for key, value in
                   {"id": "m", "from": "a", "to": "b", "ts": "2026-01-01", "subject": "", "body": ""}.items()}
        members[where] = nested
        payload = object_text(list(members.items()))
    env = only_envelope_error(payload)
    assert (env is not None) == (where == "trace" and depth <= MAX_EXTRA_DEPTH)
