"""The per-agent durable store: SQLite in WAL mode.

Every inbound publish goes through :meth:`Store.accept` *before* its PUBACK is sent: it is
either committed as a message, recognised as a duplicate, or kept in quarantine with its raw
bytes, topic and reason. Nothing is dropped without a row or a counter to show for it.

Tables: ``messages`` (one row per message id), ``quarantine``, ``deliveries`` (one row per
message and handler), ``cursors`` (per reader), ``acks`` (messages a reader acknowledged past its
cursor), ``outbox`` (sends waiting for a PUBACK), ``counters``, ``meta``. One connection per Store object, guarded by a lock, so the MQTT
network thread and the daemon's event loop can share one Store.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from swarmbus.api import StoredMessage
from swarmbus.envelope import Envelope, EnvelopeError
from swarmbus.errors import StoreError
from swarmbus.topics import BROADCAST_TOPIC, agent_of

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    digest TEXT NOT NULL,
    topic TEXT NOT NULL,
    from_agent TEXT NOT NULL,
    to_agent TEXT NOT NULL,
    subject TEXT NOT NULL,
    priority TEXT NOT NULL,
    ts TEXT NOT NULL,
    received_at REAL NOT NULL,
    envelope TEXT NOT NULL,
    dispatch INTEGER NOT NULL DEFAULT 1,
    dispatched_at REAL
);
CREATE INDEX IF NOT EXISTS messages_pending ON messages(dispatch, dispatched_at);
CREATE TABLE IF NOT EXISTS quarantine (
    qid INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at REAL NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    reason TEXT NOT NULL,
    message_id TEXT
);
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER NOT NULL REFERENCES messages(seq),
    handler TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    detail TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL,
    PRIMARY KEY (seq, handler)
);
CREATE TABLE IF NOT EXISTS cursors (
    consumer TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    oseq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL,
    published_at REAL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS acks (consumer TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (consumer, seq));
"""

Outcome = Literal["stored", "duplicate", "quarantined", "self"]


@dataclass(frozen=True)
class AcceptResult:
    """What :meth:`Store.accept` did with one inbound publish."""

    outcome: Outcome
    seq: int | None = None
    reason: str = ""
    message: StoredMessage | None = None


@dataclass(frozen=True)
class QuarantineRow:
    qid: int
    received_at: float
    topic: str
    payload: bytes
    reason: str
    message_id: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "qid": self.qid,
            "received_at": self.received_at,
            "topic": self.topic,
            "reason": self.reason,
            "message_id": self.message_id,
            "payload": self.payload.decode("utf-8", "backslashreplace"),
        }


@dataclass(frozen=True)
class Delivery:
    seq: int
    handler: str
    status: str
    attempts: int
    detail: str
    updated_at: float


def _row_message(row: sqlite3.Row) -> StoredMessage:
    envelope = Envelope.from_dict(json.loads(row["envelope"]))
    return StoredMessage(row["seq"], envelope, row["topic"], row["received_at"])


class Store:
    """Open (creating if needed) the store at ``path``.

    ``sync`` is SQLite's ``synchronous`` level: ``normal`` survives a process crash (WAL),
    ``full`` also survives power loss at the cost of an fsync per commit. Raises StoreError
    if the file cannot be opened or was written by a newer schema.
    """

    def __init__(self, path: Path, *, sync: str = "normal") -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fresh = not path.exists()
            self._db = sqlite3.connect(
                str(path), timeout=30, isolation_level=None, check_same_thread=False
            )
            if fresh:
                os.chmod(path, 0o600)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=30000")
            # check the version before creating anything, so a newer store is left untouched
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is not None and int(row[0]) > SCHEMA_VERSION:
                self._db.close()
                raise StoreError(
                    f"{path} was written by a newer swarmbus (schema {row[0]} > {SCHEMA_VERSION})",
                    hint="upgrade swarmbus",
                )
            self._db.executescript(_SCHEMA)
            if row is None:
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from None
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _bump(self, db: sqlite3.Connection, name: str, by: int = 1) -> None:
        db.execute(
            "INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
            (name, by, by),
        )

    # -- intake ---------------------------------------------------------------------------
    def accept(self, topic: str, payload: bytes, own_id: str, *, dispatch: bool = True) -> AcceptResult:
        """Validate and commit one inbound publish. Never raises for bad input.

        Outcomes: ``stored`` (new message), ``duplicate`` (same id, same content: not stored
        again), ``quarantined`` (invalid, misrouted, or a reused id with different content),
        ``self`` (our own broadcast echoed back on MQTT 3.1.1: counted, not stored).
        Raises StoreError only when the database itself fails; then nothing was committed
        and the caller must not acknowledge the publish.
        """
        now = time.time()
        try:
            envelope = Envelope.from_wire(payload)
            reason = self._misroute(topic, envelope, own_id)
        except EnvelopeError as exc:
            return self._quarantine(topic, payload, f"invalid envelope: {exc}", None, now)
        if reason:
            return self._quarantine(topic, payload, reason, envelope.id, now)
        if envelope.is_broadcast and envelope.from_agent == own_id:
            try:
                with self._tx() as db:
                    self._bump(db, "self_echo")
            except sqlite3.Error as exc:
                raise StoreError(f"store write failed: {exc}") from None
            return AcceptResult("self", reason="own broadcast")
        digest = envelope.digest()
        try:
            with self._tx() as db:
                row = db.execute("SELECT seq, digest FROM messages WHERE id = ?", (envelope.id,)).fetchone()
                if row is not None and row["digest"] == digest:
                    self._bump(db, "duplicates")
                    return AcceptResult("duplicate", row["seq"], "already stored")
                if row is not None:
                    conflict = "conflicting duplicate: this id was already stored with different content"
                    self._insert_quarantine(db, topic, payload, conflict, envelope.id, now)
                    return AcceptResult("quarantined", None, conflict)
                cur = db.execute(
                    "INSERT INTO messages (id, digest, topic, from_agent, to_agent, subject, priority,"
                    " ts, received_at, envelope, dispatch) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        envelope.id, digest, topic, envelope.from_agent, envelope.to,
                        envelope.subject, envelope.priority, envelope.ts, now,
                        json.dumps(envelope.to_dict()), 1 if dispatch else 0,
                    ),
                )
                self._bump(db, "stored")
                seq = int(cur.lastrowid or 0)
        except sqlite3.Error as exc:
            raise StoreError(f"store write failed: {exc}") from None
        return AcceptResult("stored", seq, "", StoredMessage(seq, envelope, topic, now))

    @staticmethod
    def _misroute(topic: str, envelope: Envelope, own_id: str) -> str:
        if topic == BROADCAST_TOPIC:
            return "" if envelope.is_broadcast else f"addressed to {envelope.to!r} but sent on {topic}"
        inbox_of = agent_of(topic, "inbox")
        if inbox_of is None:
            return f"unexpected topic {topic}"
        if inbox_of != own_id:
            return f"arrived on {topic}, which is not this agent's inbox"
        if envelope.to != own_id:
            return f"addressed to {envelope.to!r} but sent on {topic}"
        return ""

    def _insert_quarantine(
        self, db: sqlite3.Connection, topic: str, payload: bytes, reason: str, message_id: str | None, now: float
    ) -> int:
        cur = db.execute(
            "INSERT INTO quarantine (received_at, topic, payload, reason, message_id) VALUES (?,?,?,?,?)",
            (now, topic, payload, reason, message_id),
        )
        self._bump(db, "quarantined")
        return int(cur.lastrowid or 0)

    def _quarantine(
        self, topic: str, payload: bytes, reason: str, message_id: str | None, now: float
    ) -> AcceptResult:
        try:
            with self._tx() as db:
                self._insert_quarantine(db, topic, payload, reason, message_id, now)
        except sqlite3.Error as exc:
            raise StoreError(f"store write failed: {exc}") from None
        return AcceptResult("quarantined", None, reason)

    # -- reading --------------------------------------------------------------------------
    def last_seq(self) -> int:
        rows = self._query("SELECT COALESCE(MAX(seq), 0) FROM messages")
        return int(rows[0][0])

    def messages_after(self, seq: int, limit: int | None = None) -> list[StoredMessage]:
        sql = "SELECT * FROM messages WHERE seq > ? ORDER BY seq"
        args: tuple[Any, ...] = (seq,)
        if limit is not None:
            sql += " LIMIT ?"
            args = (seq, limit)
        return [_row_message(r) for r in self._query(sql, args)]

    def recent(self, limit: int) -> list[StoredMessage]:
        rows = self._query("SELECT * FROM (SELECT * FROM messages ORDER BY seq DESC LIMIT ?) ORDER BY seq", (limit,))
        return [_row_message(r) for r in rows]

    def message(self, seq: int) -> StoredMessage | None:
        rows = self._query("SELECT * FROM messages WHERE seq = ?", (seq,))
        return _row_message(rows[0]) if rows else None

    def count_messages(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM messages")[0][0])

    def message_ids(self) -> list[str]:
        return [r[0] for r in self._query("SELECT id FROM messages ORDER BY seq")]

    def quarantined(self, limit: int = 100) -> list[QuarantineRow]:
        rows = self._query("SELECT * FROM quarantine ORDER BY qid DESC LIMIT ?", (limit,))
        return [
            QuarantineRow(r["qid"], r["received_at"], r["topic"], bytes(r["payload"]), r["reason"], r["message_id"])
            for r in reversed(rows)
        ]

    def counters(self) -> dict[str, int]:
        return {r["name"]: int(r["value"]) for r in self._query("SELECT name, value FROM counters")}

    # -- cursors --------------------------------------------------------------------------
    def cursor(self, consumer: str) -> int:
        rows = self._query("SELECT seq FROM cursors WHERE consumer = ?", (consumer,))
        return int(rows[0][0]) if rows else 0

    def set_cursor(self, consumer: str, seq: int) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO cursors VALUES (?, ?, ?) ON CONFLICT(consumer) DO UPDATE"
                " SET seq = excluded.seq, updated_at = excluded.updated_at",
                (consumer, seq, time.time()),
            )

    # -- acknowledgements (non-destructive reads) ------------------------------------------
    def unacked(self, consumer: str, limit: int) -> list[StoredMessage]:
        """Up to ``limit`` messages after ``consumer``'s cursor that it has not acknowledged,
        oldest first. Reading changes nothing: they come back until :meth:`ack` is called."""
        rows = self._query(
            "SELECT * FROM messages m WHERE m.seq > COALESCE((SELECT seq FROM cursors WHERE consumer = ?), 0)"
            " AND NOT EXISTS (SELECT 1 FROM acks a WHERE a.consumer = ? AND a.seq = m.seq)"
            " ORDER BY m.seq LIMIT ?",
            (consumer, consumer, limit),
        )
        return [_row_message(r) for r in rows]

    def ack(self, consumer: str, ids: list[str]) -> int:
        """Acknowledge the messages with these ids for ``consumer``; return how many were newly
        acknowledged (unknown ids and ids already acknowledged count for nothing). The cursor
        then moves over the acknowledged messages that directly follow it, and their ack rows,
        now implied by the cursor, are dropped."""
        if not ids:
            return 0
        with self._tx() as db:
            row = db.execute("SELECT seq FROM cursors WHERE consumer = ?", (consumer,)).fetchone()
            cursor = int(row[0]) if row else 0
            newly = 0
            for message_id in dict.fromkeys(ids):
                found = db.execute("SELECT seq FROM messages WHERE id = ?", (message_id,)).fetchone()
                if found is not None and int(found[0]) > cursor:
                    cur = db.execute("INSERT OR IGNORE INTO acks (consumer, seq) VALUES (?, ?)", (consumer, found[0]))
                    newly += cur.rowcount
            advanced = cursor
            for seq, acked in db.execute(
                "SELECT m.seq, a.seq IS NOT NULL FROM messages m LEFT JOIN acks a ON a.consumer = ? AND a.seq = m.seq"
                " WHERE m.seq > ? ORDER BY m.seq",
                (consumer, cursor),
            ):
                if not acked:
                    break
                advanced = int(seq)
            if advanced > cursor:
                db.execute(
                    "INSERT INTO cursors VALUES (?, ?, ?) ON CONFLICT(consumer) DO UPDATE"
                    " SET seq = excluded.seq, updated_at = excluded.updated_at",
                    (consumer, advanced, time.time()),
                )
                db.execute("DELETE FROM acks WHERE consumer = ? AND seq <= ?", (consumer, advanced))
        return newly

    # -- dispatch bookkeeping -------------------------------------------------------------
    def undispatched(self) -> list[StoredMessage]:
        """Messages the daemon has not finished dispatching (e.g. after a crash)."""
        rows = self._query("SELECT * FROM messages WHERE dispatch = 1 AND dispatched_at IS NULL ORDER BY seq")
        return [_row_message(r) for r in rows]

    def mark_dispatched(self, seq: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE messages SET dispatched_at = ? WHERE seq = ?", (time.time(), seq))

    def record_delivery(self, seq: int, handler: str, status: str, detail: str = "") -> None:
        """Upsert one handler's state for one message; ``running`` increments ``attempts``."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO deliveries (seq, handler, status, attempts, detail, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(seq, handler) DO UPDATE SET"
                " status = excluded.status, detail = excluded.detail, updated_at = excluded.updated_at,"
                " attempts = deliveries.attempts + excluded.attempts",
                (seq, handler, status, 1 if status == "running" else 0, detail[:2000], time.time()),
            )
            if status in ("failed", "timeout"):
                self._bump(db, f"handler_{status}")

    def deliveries(self, seq: int | None = None) -> list[Delivery]:
        if seq is None:
            rows = self._query("SELECT * FROM deliveries ORDER BY seq, handler")
        else:
            rows = self._query("SELECT * FROM deliveries WHERE seq = ? ORDER BY handler", (seq,))
        return [Delivery(r["seq"], r["handler"], r["status"], r["attempts"], r["detail"], r["updated_at"]) for r in rows]

    def finished_handlers(self, seq: int) -> set[str]:
        rows = self._query(
            "SELECT handler FROM deliveries WHERE seq = ? AND status NOT IN ('running', 'pending')", (seq,)
        )
        return {r[0] for r in rows}

    # -- outbox ---------------------------------------------------------------------------
    def outbox_add(self, message_id: str, topic: str, payload: bytes) -> bool:
        """Spool an outgoing message; False if this id is already spooled."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO outbox (id, topic, payload, created_at) VALUES (?,?,?,?)",
                (message_id, topic, payload, time.time()),
            )
            return cur.rowcount == 1

    def outbox_published(self, message_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE outbox SET published_at = ? WHERE id = ? AND published_at IS NULL", (time.time(), message_id))

    def outbox_pending(self) -> list[tuple[str, str, bytes]]:
        rows = self._query("SELECT id, topic, payload FROM outbox WHERE published_at IS NULL ORDER BY oseq")
        return [(r[0], r[1], bytes(r[2])) for r in rows]
