"""Small pure units: reconnect backoff, agent paths, ownership lock, topics and presence."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import pytest

from swarmbus.errors import OwnershipError
from swarmbus.ownership import Ownership, owner_of
from swarmbus.paths import AgentPaths
from swarmbus.presence_records import (
    parse_presence,
    presence_payload,
)
from swarmbus.topics import (
    BROADCAST_TOPIC,
    PRESENCE_FILTER,
    agent_of,
    heartbeat_topic,
    inbox_topic,
    presence_topic,
    topic_for_recipient,
)
from swarmbus.transport.link import backoff_delay, one_shot_client_id

# -- backoff -------------------------------------------------------------------------------------------


def test_backoff_bounds() -> None:
    for attempt in range(1, 30):
        for _ in range(50):
            delay = backoff_delay(attempt, 0.5, 60.0)
            assert 0.25 <= delay <= min(60.0, 0.5 * 2 ** (attempt - 1))
    # attempt 0 or negative behaves like the first attempt
    assert all(0.25 <= backoff_delay(0, 0.5, 60.0) <= 0.5 for _ in range(50))


def test_backoff_first_attempt_window() -> None:
    delays = [backoff_delay(1, 1.0, 60.0) for _ in range(200)]
    assert all(0.5 <= d <= 1.0 for d in delays)


def test_backoff_jitter() -> None:
    delays = {backoff_delay(5, 0.5, 60.0) for _ in range(20)}
    assert len(delays) > 10


def test_backoff_grows_then_caps() -> None:
    means = [statistics.mean(backoff_delay(a, 0.5, 60.0) for _ in range(300)) for a in (1, 3, 5, 7)]
    assert means == sorted(means) and means[-1] > 4 * means[0]
    capped = [backoff_delay(40, 0.5, 60.0) for _ in range(300)]
    assert max(capped) <= 60.0 and statistics.mean(capped) > 20


def test_one_shot_client_ids_are_unique_and_not_the_daemons() -> None:
    ids = {one_shot_client_id("swarmbus", "coder", "send") for _ in range(50)}
    assert len(ids) == 50
    assert all(i.startswith("swarmbus-coder-send-") and i != "swarmbus-coder" for i in ids)
    assert one_shot_client_id("p", None, "list").startswith("p-anon-list-")


# -- paths ---------------------------------------------------------------------------------------------


def test_agent_paths(tmp_path: Path) -> None:
    p = AgentPaths.for_agent("coder", tmp_path)
    assert p.root == tmp_path / "agents" / "coder"
    assert p.store == p.root / "store.sqlite3"
    assert p.lock == p.root / "daemon.lock"
    assert p.inbox_file == p.root / "inbox.md"


def test_socket_natural_when_short() -> None:
    p = AgentPaths.for_agent("coder", "/tmp/sb")
    assert p.socket == Path("/tmp/sb/agents/coder/daemon.sock")


# -- ownership -----------------------------------------------------------------------------------------


def test_ownership_exclusive(tmp_path: Path) -> None:
    lock = tmp_path / "agents" / "coder" / "daemon.lock"
    assert owner_of(lock) is None
    first = Ownership(lock, "daemon").acquire()
    holder = f"daemon pid {os.getpid()}"
    assert owner_of(lock) == holder
    with pytest.raises(OwnershipError) as info:
        Ownership(lock, "read").acquire()
    assert holder in str(info.value)
    assert info.value.exit_code == 1 and info.value.hint
    first.release()
    first.release()  # idempotent
    assert owner_of(lock) is None
    with Ownership(lock, "watch"):
        assert owner_of(lock) == f"watch pid {os.getpid()}"
        with pytest.raises(OwnershipError, match="watch pid"):
            Ownership(lock, "daemon").acquire()
    assert owner_of(lock) is None
    assert (lock.stat().st_mode & 0o777) == 0o600


# -- topics and presence ----------------------------------------------------------------------------------


def test_topic_names() -> None:
    assert inbox_topic("coder") == "agents/coder/inbox"
    assert presence_topic("coder") == "agents/coder/presence"
    assert topic_for_recipient("coder") == "agents/coder/inbox"
    assert topic_for_recipient("broadcast") == BROADCAST_TOPIC == "agents/broadcast"
    assert PRESENCE_FILTER == "agents/+/presence/#"  # records and heartbeats
    assert heartbeat_topic("coder") == "agents/coder/presence/heartbeat"
    assert agent_of("agents/coder/inbox", "inbox") == "coder"
    assert agent_of("agents/coder/inbox", "presence") is None
    assert agent_of("agents/Coder/inbox", "inbox") is None
    assert agent_of("agents/coder\n/inbox", "inbox") is None
    assert agent_of("x/agents/coder/inbox", "inbox") is None
    assert agent_of("agents/broadcast", "inbox") is None


def test_parse_predecessor_presence() -> None:
    for status in ("online", "offline"):
        raw = json.dumps({"agent": "coder", "status": status}).encode()
        p = parse_presence("agents/coder/presence", raw)
        assert p is not None and p.agent == "coder" and p.status == status
        assert p.online is (status == "online")
        assert (p.ts, p.heartbeat_s, p.version) == (None, None, None)


def test_parse_new_presence_fields() -> None:
    raw = presence_payload("coder", "online", ts="2026-01-01T00:00:00+00:00", heartbeat_s=60, version="1.2.3")
    p = parse_presence("agents/coder/presence", raw)
    assert p is not None and p.ts == "2026-01-01T00:00:00+00:00" and p.heartbeat_s == 60.0 and p.version == "1.2.3"
    weird = json.dumps({"agent": "coder", "status": "online", "ts": 5, "heartbeat_s": "x", "version": 1}).encode()
    p = parse_presence("agents/coder/presence", weird)
    assert p is not None and (p.ts, p.heartbeat_s, p.version) == (None, None, None)


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        ("agents/coder/presence", b'{"agent": "planner", "status": "online"}'),  # agent/topic mismatch
        ("agents/coder/presence", b'{"status": "online"}'),
        ("agents/coder/presence", b'{"agent": "coder", "status": "away"}'),
        ("agents/coder/presence", b'{"agent": "coder"}'),
        ("agents/coder/presence", b""),  # cleared retained record
        ("agents/coder/presence", b"garbage"),
        ("agents/coder/presence", b"\xff\xfe"),
        ("agents/coder/presence", b'["coder", "online"]'),
        ("agents/coder/presence", b"null"),
        ("agents/coder/inbox", b'{"agent": "coder", "status": "online"}'),
        ("agents/Bad/presence", b'{"agent": "Bad", "status": "online"}'),
    ],
)
def test_parse_presence_rejects(topic: str, payload: bytes) -> None:
    assert parse_presence(topic, payload) is None


def test_presence_payload_key_order() -> None:
    raw = presence_payload("coder", "offline", ts="t", heartbeat_s=30.0, version="1", reason="stopped", skip=None)
    data = json.loads(raw)
    assert list(data)[:2] == ["agent", "status"]
    assert data == {"agent": "coder", "status": "offline", "ts": "t", "heartbeat_s": 30.0, "version": "1",
                    "reason": "stopped"}
    # the predecessor's exact bytes when there is nothing extra
    assert presence_payload("coder", "online") == b'{"agent": "coder", "status": "online"}'


def test_json_state_files_are_private_atomic_and_forgiving(tmp_path: Path) -> None:
    from swarmbus import read_json_file, write_json_file

    path = tmp_path / "agents" / "coder" / "codex-thread.json"
    assert read_json_file(path) is None
    write_json_file(path, {"thread_id": "t-1", "n": 1})
    assert read_json_file(path) == {"thread_id": "t-1", "n": 1}
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    for junk in (b"", b"not json", b"[1, 2]", b"\xff\xfe"):
        path.write_bytes(junk)
        assert read_json_file(path) is None, junk


def test_env_passthrough_refuses_broker_variables_and_bad_names() -> None:
    from swarmbus import check_env_passthrough

    assert check_env_passthrough(["ANTHROPIC_API_KEY", "_X1"], "Claude Code") == ["ANTHROPIC_API_KEY", "_X1"]
    for bad, says in (("MQTT_PASSWORD", "never passed to Codex"), ("swarmbus_broker_url", "never passed to Codex"),
                      ("1ABC", "not an environment variable name"), ("A-B", "not an environment variable name"),
                      ("A\n", "not an environment variable name")):
        with pytest.raises(ValueError, match=says):
            check_env_passthrough([bad], "Codex")


def test_strict_json_refuses_what_a_hostile_peer_would_send() -> None:
    from swarmbus.strict_json import StrictJSONError, strict_loads

    assert strict_loads(b'{"a": [1, 2.5, "x", null]}', max_bytes=100) == {"a": [1, 2.5, "x", None]}
    for data, says in ((b'{"a": 1, "a": 2}', "twice (a duplicate key)"), (b'{"a": NaN}', "contains NaN"),
                       (b"[" + b"9" * 21 + b"]", "at most 20 digits"), (b"\xff", "is not UTF-8"),
                       (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"), (b"{bad", "is not JSON"),
                       (b"[1]" + b" " * 200, "too large: the limit is 100"), ("é" * 60, "too large")):
        with pytest.raises(StrictJSONError, match=says.replace("(", r"\(").replace(")", r"\)")):
            strict_loads(data, max_bytes=100 if len(data) <= 300 else 10**6)
