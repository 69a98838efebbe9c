"""Property-based tests of the job parsers: whatever a peer publishes under ``swarmbus/jobs/#``,
the topic parser answers a valid :class:`JobTopic` or None and the payload decoders raise
:class:`JobDataError` or return a valid record or event; valid ones round-trip exactly.

Deterministic (``derandomize=True``, no example database) and sized to run in a few seconds.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarmbus.envelope import AGENT_ID_RE
from swarmbus.jobs.bus import read
from swarmbus.jobs.model import (
    EVENTS,
    MAX_EVENT_BYTES,
    MAX_PAYLOAD_DEPTH,
    JobDataError,
    decode_event,
    decode_json,
    decode_record,
    encode,
    new_job_id,
    now_rfc3339,
    parse_rfc3339,
)
from swarmbus.topics import JOB_KINDS, job_filter, job_topic, job_topic_of

PROPS = settings(derandomize=True, database=None, deadline=None, max_examples=150,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

ids = st.from_regex(AGENT_ID_RE, fullmatch=True)
# RFC 3339 with an offset, as swarmbus writes it and as others may
stamps = st.builds(
    lambda dt, fmt: fmt(dt),
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9998, 12, 30), timezones=st.just(UTC)),
    st.sampled_from([lambda d: d.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                     lambda d: d.isoformat(timespec="seconds"),
                     lambda d: d.astimezone(timezone(timedelta(hours=-5))).isoformat()]),
)
json_leaves = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False,
                                                                                        allow_infinity=False) | st.text()
json_values = st.recursive(json_leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                                                    inner, max_size=4),
                           max_leaves=20)


def clean(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


records = st.builds(
    lambda job_id, owner, delegate, prompt, payload, created_at: {
        "job_id": job_id, "owner": owner, "delegate": delegate, "prompt": prompt,
        "payload": payload if prompt is not None or payload is not None else 0, "created_at": created_at, "v": 1},
    ids, ids, st.none() | ids, st.none() | st.text(max_size=200).map(clean), json_values, stamps)
events = st.builds(
    lambda job_id, event, detail, by, at: {"job_id": job_id, "event": event, "detail": detail, "by": by, "at": at,
                                           "v": 1},
    ids, st.sampled_from(EVENTS), st.none() | st.text(max_size=200).map(clean), ids, stamps)


# -- topics ----------------------------------------------------------------------------------------


@PROPS
@given(ids, st.sampled_from(JOB_KINDS), ids)
def test_job_topics_round_trip(job_id: str, kind: str, agent: str) -> None:
    topic = job_topic(job_id, kind, agent)
    assert tuple(job_topic_of(topic) or ()) == (job_id, kind, agent)
    assert job_filter(job_id) == f"swarmbus/jobs/{job_id}/#"
    assert job_filter(job_id, kind) == f"swarmbus/jobs/{job_id}/{kind}/+"


@PROPS
@given(st.text(max_size=120) | st.lists(st.sampled_from(["swarmbus", "jobs", "record", "events", "outcome", "a", "",
                                                         "+", "#", "A", "j-1", "x" * 65]), max_size=7).map("/".join))
def test_any_topic_parses_to_a_valid_job_topic_or_none(topic: str) -> None:
    parsed = job_topic_of(topic)
    if parsed is not None:
        assert job_topic(*parsed) == topic
        assert AGENT_ID_RE.match(parsed.job_id) and AGENT_ID_RE.match(parsed.agent) and parsed.kind in JOB_KINDS


# -- payloads --------------------------------------------------------------------------------------


@PROPS
@given(records)
def test_valid_records_round_trip(data: dict[str, Any]) -> None:
    record = decode_record(json.dumps(data).encode(), job_id=data["job_id"], owner=data["owner"])
    wire = encode(record)
    assert list(json.loads(wire)) == ["job_id", "owner", "delegate", "prompt", "payload", "created_at", "v"]
    assert decode_record(wire) == record
    assert json.loads(wire) == json.loads(json.dumps(data))


@PROPS
@given(events)
def test_valid_events_round_trip(data: dict[str, Any]) -> None:
    event = decode_event(json.dumps(data).encode(), job_id=data["job_id"], by=data["by"])
    assert decode_event(encode(event)) == event
    assert event.terminal == (data["event"] in ("completed", "error"))
    seen = read(f"swarmbus/jobs/{data['job_id']}/events/{data['by']}", encode(event))
    assert seen is not None and seen.event == event and seen.error is None


@PROPS
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_job_data_error(payload: bytes) -> None:
    for decoder in (decode_record, decode_event):
        with contextlib.suppress(JobDataError):  # anything else fails the test
            decoder(payload)


@PROPS
@given(st.dictionaries(st.sampled_from(["job_id", "owner", "delegate", "prompt", "payload", "created_at", "v",
                                        "event", "detail", "by", "at", "extra"]), json_values, max_size=9))
def test_any_json_object_decodes_or_raises_job_data_error(data: dict[str, Any]) -> None:
    payload = json.dumps(data).encode()
    for decoder in (decode_record, decode_event):
        try:
            item = decoder(payload)
        except JobDataError as exc:
            assert str(exc) and "\n" not in str(exc)
        else:
            assert decoder(encode(item)) == item


@PROPS
@given(events, st.sampled_from(["job_id", "event", "detail", "by", "at", "v"]),
       st.sampled_from([True, 1.0, 2, -1, "", "X", "a" * 65, [], {}, "1 2", None, 10**30]))
def test_a_wrong_field_is_refused(data: dict[str, Any], key: str, value: Any) -> None:
    bad = {**data, key: value}
    if key == "detail" and (value is None or (isinstance(value, str) and len(value) <= 8192)):
        return  # still a valid detail
    with pytest.raises(JobDataError):
        decode_event(json.dumps(bad).encode())


@PROPS
@given(events, ids)
def test_a_topic_that_disagrees_with_the_payload_is_refused(data: dict[str, Any], other: str) -> None:
    payload = json.dumps(data).encode()
    if other != data["by"]:
        seen = read(f"swarmbus/jobs/{data['job_id']}/events/{other}", payload)
        assert seen is not None and seen.event is None and "is not the topic's" in (seen.error or "")
    if other != data["job_id"]:
        with pytest.raises(JobDataError, match="is not the topic's"):
            decode_event(payload, job_id=other)


@PROPS
@given(st.integers(1, 200), st.sampled_from(["[", "{\"a\":"]))
def test_deep_nesting_is_refused_without_recursion_errors(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    text = opener * depth + "0" + closer * depth
    if depth <= MAX_PAYLOAD_DEPTH:
        decode_json(text)
    else:
        with pytest.raises(JobDataError, match="deep"):
            decode_json(text)
    with pytest.raises(JobDataError):
        decode_json("[" * 100_000)


def test_limits_and_json_oddities() -> None:
    for text in ('{"a": NaN}', '{"a": Infinity}', '{"a": 1, "a": 2}', '{"n": ' + "9" * 21 + "}", "[1,]", "\"\\ud800\""):
        with pytest.raises(JobDataError):
            decode_json(text)
    with pytest.raises(JobDataError, match="limit"):
        decode_event(b" " * (MAX_EVENT_BYTES + 1))
    with pytest.raises(JobDataError, match="not UTF-8"):
        decode_event(b'{"job_id": "\xff"}')
    assert read("swarmbus/jobs/j-1/record/a", b"") is None  # a cleared retained topic
    outcome = read("swarmbus/jobs/j-1/outcome/a", json.dumps({"job_id": "j-1", "event": "started", "detail": None,
                                                               "by": "a", "at": now_rfc3339(), "v": 1}).encode())
    assert outcome is not None and "completed or error" in (outcome.error or "")


@PROPS
@given(st.text(max_size=40))
def test_timestamps_parse_or_raise_value_error(text: str) -> None:
    try:
        parsed = parse_rfc3339(text)
    except ValueError:
        return
    assert parsed.tzinfo is not None


def test_new_ids_and_times() -> None:
    made = {new_job_id() for _ in range(1000)}
    assert len(made) == 1000 and all(AGENT_ID_RE.match(j) and len(j) == 14 and j.startswith("j-") for j in made)
    stamp = now_rfc3339()
    assert stamp.endswith("Z") and abs(parse_rfc3339(stamp) - datetime.now(UTC)) < timedelta(seconds=5)
