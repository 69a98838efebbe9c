"""The per-agent SQLite store, in tmp_path (no broker)."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from swarmbus.errors import StoreError
from swarmbus.store import SCHEMA_VERSION, Store

ME = "coder"
INBOX = f"agents/{ME}/inbox"


def payload(**over: Any) -> bytes:
    data: dict[str, Any] = {
        "id": "m-1", "from": "planner", "to": ME, "ts": "2026-01-01T00:00:00+00:00",
        "subject": "hi", "body": "hello", "content_type": "text/plain", "priority": "normal", "reply_to": None,
    }
    data.update(over)
    return json.dumps(data).encode("utf-8")


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with Store(tmp_path / "agents" / ME / "store.sqlite3") as s:
        yield s


def test_stored(store: Store) -> None:
    result = store.accept(INBOX, payload(), ME)
    assert result.outcome == "stored" and result.seq == 1 and result.reason == ""
    assert result.message is not None and result.message.id == "m-1" and result.message.topic == INBOX
    assert store.last_seq() == 1 and store.count_messages() == 1 and store.message_ids() == ["m-1"]
    stored = store.message(1)
    assert stored is not None and stored.envelope.body == "hello" and stored.received_at > 0
    assert store.message(99) is None
    assert store.counters() == {"stored": 1}


def test_stored_keeps_unknown_fields(store: Store) -> None:
    store.accept(INBOX, payload(trace={"hop": 1}, in_reply_to="m-0"), ME)
    msg = store.message(1)
    assert msg is not None
    assert dict(msg.envelope.extra) == {"trace": {"hop": 1}}
    assert msg.envelope.in_reply_to == "m-0"
    assert msg.to_json()["seq"] == 1 and msg.to_json()["trace"] == {"hop": 1}


def test_duplicate(store: Store) -> None:
    assert store.accept(INBOX, payload(), ME).outcome == "stored"
    again = store.accept(INBOX, payload(), ME)
    assert again.outcome == "duplicate" and again.seq == 1
    assert store.count_messages() == 1
    assert store.counters() == {"stored": 1, "duplicates": 1}


def test_duplicate_with_different_key_order_is_still_a_duplicate(store: Store) -> None:
    store.accept(INBOX, payload(a=1, b=2), ME)
    reordered = json.loads(payload(a=1, b=2))
    reordered = dict(reversed(list(reordered.items())))
    assert store.accept(INBOX, json.dumps(reordered).encode(), ME).outcome == "duplicate"


def test_conflicting_duplicate_quarantined(store: Store) -> None:
    store.accept(INBOX, payload(), ME)
    raw = payload(body="something else")
    result = store.accept(INBOX, raw, ME)
    assert result.outcome == "quarantined" and "conflicting" in result.reason
    [row] = store.quarantined()
    assert row.payload == raw and row.message_id == "m-1" and row.topic == INBOX
    first = store.message(1)
    assert first is not None and first.envelope.body == "hello"
    assert store.count_messages() == 1
    assert store.counters() == {"stored": 1, "quarantined": 1}
    assert row.to_json()["payload"] == raw.decode()


def test_invalid_quarantined_with_raw_bytes(store: Store) -> None:
    for raw in (b"not json", b"\xff\xfe\x00", payload(to="Bad"), payload(body="x" * 70_000), b"",
                json.dumps({"id": "x", "from": "a", "to": ME, "ts": "t", "subject": "\udc80", "body": ""}).encode()):
        result = store.accept(INBOX, raw, ME)
        assert result.outcome == "quarantined" and result.reason.startswith("invalid envelope")
        assert store.quarantined(1)[0].payload == raw
    assert store.count_messages() == 0
    assert store.counters()["quarantined"] == 6
    assert store.quarantined(1)[0].to_json()["payload"]  # non-UTF-8 bytes are printable too


def test_misrouted_quarantined(store: Store) -> None:
    cases = [
        (INBOX, payload(to="alice")),  # addressed elsewhere but on my inbox
        ("agents/alice/inbox", payload(to="alice")),  # someone else's inbox topic
        ("agents/broadcast", payload(to=ME)),  # directed message on the broadcast topic
        (INBOX, payload(to="broadcast")),  # broadcast envelope on an inbox topic
        ("agents/coder/presence", payload()),
        ("elsewhere", payload()),
    ]
    for i, (topic, raw) in enumerate(cases):
        result = store.accept(topic, raw, ME)
        assert result.outcome == "quarantined", topic
        row = store.quarantined(1)[0]
        assert (row.topic, row.payload) == (topic, raw)
        assert len(store.quarantined()) == i + 1
    assert store.count_messages() == 0


def test_broadcast_and_self_echo(store: Store) -> None:
    other = store.accept("agents/broadcast", payload(id="b-1", to="broadcast"), ME)
    assert other.outcome == "stored" and other.message is not None and other.message.is_broadcast
    echo = store.accept("agents/broadcast", payload(id="b-2", to="broadcast", **{"from": ME}), ME)
    assert echo.outcome == "self" and echo.seq is None
    assert store.count_messages() == 1
    assert store.counters() == {"stored": 1, "self_echo": 1}
    # a directed message to myself from myself is an ordinary message
    assert store.accept(INBOX, payload(id="d-1", **{"from": ME}), ME).outcome == "stored"


def test_reading(store: Store) -> None:
    for i in range(5):
        store.accept(INBOX, payload(id=f"m-{i}"), ME)
    assert [m.seq for m in store.messages_after(0)] == [1, 2, 3, 4, 5]
    assert [m.seq for m in store.messages_after(2, limit=2)] == [3, 4]
    assert [m.seq for m in store.recent(2)] == [4, 5]
    assert store.messages_after(5) == []


def test_cursors(store: Store) -> None:
    assert store.cursor("default") == 0
    store.set_cursor("default", 3)
    store.set_cursor("other", 1)
    assert store.cursor("default") == 3 and store.cursor("other") == 1
    store.set_cursor("default", 5)
    assert store.cursor("default") == 5


def test_undispatched_and_mark_dispatched(store: Store) -> None:
    store.accept(INBOX, payload(id="a"), ME)
    store.accept(INBOX, payload(id="b"), ME)
    store.accept(INBOX, payload(id="c"), ME, dispatch=False)
    assert [m.id for m in store.undispatched()] == ["a", "b"]
    store.mark_dispatched(1)
    assert [m.id for m in store.undispatched()] == ["b"]
    store.mark_dispatched(2)
    assert store.undispatched() == []
    assert store.count_messages() == 3


def test_record_delivery_and_finished_handlers(store: Store) -> None:
    store.accept(INBOX, payload(), ME)
    store.record_delivery(1, "wake", "running")
    store.record_delivery(1, "archive", "running")
    assert store.finished_handlers(1) == set()
    store.record_delivery(1, "wake", "failed", "exit 3")
    store.record_delivery(1, "wake", "running")
    store.record_delivery(1, "wake", "ok")
    store.record_delivery(1, "archive", "ok")
    store.record_delivery(1, "policy", "skipped", "x" * 5000)
    by_handler = {d.handler: d for d in store.deliveries(1)}
    assert by_handler["wake"].attempts == 2 and by_handler["wake"].status == "ok"
    assert by_handler["archive"].attempts == 1
    assert by_handler["policy"].attempts == 0 and len(by_handler["policy"].detail) == 2000
    assert store.finished_handlers(1) == {"wake", "archive", "policy"}
    assert [d.handler for d in store.deliveries()] == ["archive", "policy", "wake"]
    assert store.counters()["handler_failed"] == 1
    store.record_delivery(1, "wake", "timeout")
    assert store.counters()["handler_timeout"] == 1


def test_outbox(store: Store) -> None:
    assert store.outbox_add("o-1", "agents/alice/inbox", b"one")
    assert store.outbox_add("o-2", "agents/broadcast", b"two")
    assert not store.outbox_add("o-1", "agents/alice/inbox", b"other")
    assert store.outbox_pending() == [("o-1", "agents/alice/inbox", b"one"), ("o-2", "agents/broadcast", b"two")]
    store.outbox_published("o-1")
    store.outbox_published("o-1")
    assert store.outbox_pending() == [("o-2", "agents/broadcast", b"two")]
    assert not store.outbox_add("o-1", "agents/alice/inbox", b"one")  # published ids stay refused
    store.outbox_published("unknown")


def test_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer swarmbus"):
        Store(path)


def test_newer_schema_not_modified(tmp_path: Path) -> None:
    """Refusing a newer store must not first create our tables in it."""
    path = tmp_path / "s.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION + 1),))
    db.execute("CREATE TABLE messages_v2 (seq INTEGER PRIMARY KEY, something_new TEXT)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer swarmbus"):
        Store(path)
    db = sqlite3.connect(path)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    db.close()
    assert tables == {"meta", "messages_v2", "sqlite_autoindex_meta_1"}


def test_unopenable_store(tmp_path: Path) -> None:
    path = tmp_path / "garbage.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError):
        Store(path)


def test_file_mode_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "agents" / ME / "store.sqlite3"
    with Store(path) as s:
        s.accept(INBOX, payload(), ME)
        s.set_cursor("default", 1)
        s.outbox_add("o-1", "agents/alice/inbox", b"x")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) & 0o077 == 0
    with Store(path, sync="full") as s:
        assert s.message_ids() == ["m-1"]
        assert s.cursor("default") == 1
        assert s.outbox_pending() == [("o-1", "agents/alice/inbox", b"x")]
        assert s.accept(INBOX, payload(), ME).outcome == "duplicate"
        assert s.accept(INBOX, payload(id="m-2"), ME).seq == 2
    for suffix in ("-wal", "-shm"):
        side = Path(str(path) + suffix)
        if side.exists():
            assert stat.S_IMODE(os.stat(side).st_mode) & 0o077 == 0


def test_concurrent_writes_from_two_threads(store: Store) -> None:
    errors: list[BaseException] = []
    n = 150

    def writer(prefix: str) -> None:
        try:
            for i in range(n):
                assert store.accept(INBOX, payload(id=f"{prefix}-{i}"), ME).outcome == "stored"
                store.record_delivery(store.last_seq(), prefix, "running")
                store.set_cursor(prefix, i)
                store.outbox_add(f"{prefix}-o{i}", "agents/x/inbox", b"p")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(p,)) for p in ("t1", "t2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.count_messages() == 2 * n
    assert sorted(m.seq for m in store.messages_after(0)) == list(range(1, 2 * n + 1))
    assert store.counters()["stored"] == 2 * n
    assert len(store.outbox_pending()) == 2 * n


def test_two_store_objects_on_one_file(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    with Store(path) as a, Store(path) as b:
        a.accept(INBOX, payload(), ME)
        assert b.accept(INBOX, payload(), ME).outcome == "duplicate"
        assert b.message_ids() == ["m-1"]


def test_schema_1_store_is_migrated(tmp_path: Path) -> None:
    """A store written by schema 1 (dispatch state in messages.dispatched_at, envelope as text)
    opens as schema 2 with its dispatch state carried over."""
    path = tmp_path / "old.sqlite3"
    with Store(path) as store:
        for i in range(3):
            store.accept(INBOX, payload(id=f"m{i}"), ME)
    db = sqlite3.connect(path)
    db.execute("DROP TABLE dispatches")
    db.execute("UPDATE messages SET dispatched_at = 123.0, envelope = CAST(envelope AS TEXT) WHERE id = 'm0'")
    db.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")
    db.commit()
    db.close()
    with Store(path) as store:
        assert [m.id for m in store.undispatched()] == ["m1", "m2"]
        assert store.message(1) is not None and store.message(1).envelope.id == "m0"  # type: ignore[union-attr]
        assert store._query("SELECT value FROM meta WHERE key = 'schema'")[0][0] == str(SCHEMA_VERSION)


def test_large_payloads_spill_to_a_file(tmp_path: Path) -> None:
    """A payload over SPILL_OVER bytes is kept in the spill file, read back transparently, and
    recognised as a duplicate; a spill file that cannot be written is a store failure."""
    from swarmbus.store import SPILL_OVER

    path = tmp_path / "s.sqlite3"
    big = payload(id="big", body="y" * (SPILL_OVER * 2))
    with Store(path) as store:
        assert store.accept(INBOX, payload(id="small"), ME).outcome == "stored"
        assert store.accept(INBOX, big, ME).outcome == "stored"
        assert store.accept(INBOX, big, ME).outcome == "duplicate"
        assert store.message(2).envelope.body == "y" * (SPILL_OVER * 2)  # type: ignore[union-attr]
        assert store.spill_path.stat().st_size == len(big) and stat.S_IMODE(store.spill_path.stat().st_mode) == 0o600
        assert store._query("SELECT length(envelope) FROM messages WHERE id = 'big'")[0][0] == 0
    with Store(path) as store:  # another connection (a reader) sees it too
        assert [m.envelope.body[:1] for m in store.messages_after(0)] == ["h", "y"]

        def full(data: bytes) -> int:
            raise OSError(28, "No space left on device")

        store._spill = full  # type: ignore[method-assign]
        with pytest.raises(StoreError, match="No space left"):  # a store failure, not a quarantine
            store.accept(INBOX, payload(id="big2", body="z" * (SPILL_OVER * 2)), ME)
        assert store.count_messages() == 2 and store.quarantined() == []
