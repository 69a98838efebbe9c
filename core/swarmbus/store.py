"""The per-agent durable store: SQLite in WAL mode.

Every inbound publish goes through :meth:`Store.accept_batch` *before* its PUBACK is sent: it
is either committed as a message, recognised as a duplicate, or kept in quarantine with its raw
bytes, topic and reason. Nothing is dropped without a row or a counter to show for it. A batch
of publishes is one transaction (group commit); parsing happens before the transaction.

Tables: ``messages`` (one row per message id; ``envelope`` is the payload exactly as received, or,
for a payload over :data:`SPILL_OVER` bytes, empty with the payload's ``payload_offset`` and
``payload_length`` in the spill file ``<store>.payloads`` beside the database: one append
instead of SQLite writing a few dozen overflow pages to its WAL and again to the database),
``dispatches`` (one small row per message to dispatch: ``done_at`` is set when all its handlers
finished, so marking a message done never rewrites its possibly large ``messages`` row),
``quarantine``, ``deliveries`` (one row per message and handler), ``cursors`` (per reader),
``acks`` (messages a reader acknowledged past its cursor), ``outbox`` (sends waiting for a
PUBACK), ``counters``, ``meta``, and the wake policy's ``wake_log`` (one row per woken message
and wake: the budgets and rate limits count them) and ``holds`` (messages held for later, with
until when and why), the delivery ladder's ``ladder`` (one row per message id, step and agent
that reported it: :mod:`swarmbus.receipts`) and ``redeliveries`` (sent messages republished until
the receiver's ``stored`` receipt: attempts, when next, when to give up, how it ended); these are
created in place, without a schema change.

``messages.seq`` grows by one per stored message (rows are never deleted, so the largest is never
reused; schema 1 declared it AUTOINCREMENT, which costs a page write per commit).

Schema 2 (this version) adds ``dispatches`` (filled from ``messages.dispatched_at`` when a
schema-1 store is opened; that column is no longer written) and the spill file's columns, and
lets ``messages.digest`` be empty (the content digest is computed only when an id arrives twice).
A schema-1 swarmbus refuses it.

Spilled payloads are written (and, with ``sync="full"``, fsynced) before the transaction that
references them commits; bytes left behind by a transaction that failed are never referenced.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from swarmbus.api import StoredMessage
from swarmbus.envelope import BROADCAST, Envelope, EnvelopeError
from swarmbus.errors import StoreError
from swarmbus.sqlite_tx import NestedTransactions
from swarmbus.topics import route_of

T = TypeVar("T")

SCHEMA_VERSION = 2
SPILL_OVER = 8192
"""Payloads larger than this many bytes go to the spill file instead of the database."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
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
    dispatched_at REAL,
    payload_offset INTEGER,
    payload_length INTEGER
);
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
CREATE TABLE IF NOT EXISTS dispatches (seq INTEGER PRIMARY KEY, done_at REAL);
CREATE INDEX IF NOT EXISTS dispatches_pending ON dispatches(seq) WHERE done_at IS NULL;
CREATE TABLE IF NOT EXISTS wake_log (
    at REAL NOT NULL,
    sender TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS wake_log_at ON wake_log(at);
CREATE TABLE IF NOT EXISTS holds (
    seq INTEGER PRIMARY KEY,
    until REAL NOT NULL,
    reason TEXT NOT NULL,
    rule TEXT NOT NULL DEFAULT '',
    held_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS holds_until ON holds(until);
CREATE TABLE IF NOT EXISTS ladder (
    id TEXT NOT NULL,
    step TEXT NOT NULL,
    by TEXT NOT NULL,
    at REAL NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (id, step, by)
);
CREATE TABLE IF NOT EXISTS redeliveries (
    id TEXT PRIMARY KEY,
    recipient TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    give_up_at REAL NOT NULL,
    last_at REAL,
    ended_at REAL,
    ended TEXT
);
CREATE INDEX IF NOT EXISTS redeliveries_due ON redeliveries(next_at) WHERE ended_at IS NULL;
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
class Hold:
    """A message the wake policy holds: wake it at ``until`` (Unix seconds) if the rules allow."""

    seq: int
    until: float
    reason: str
    rule: str
    held_at: float


@dataclass(frozen=True)
class ManualHold:
    """An operator's hold on every wake of the agent (``swarmbus policy hold``): since ``since``,
    until ``until`` (Unix seconds; None: until ``swarmbus policy release``), because ``reason``.
    Kept in ``meta`` (key ``manual_hold``)."""

    since: float
    until: float | None
    reason: str


@dataclass(frozen=True)
class WakeAttempt:
    """One wake (coalesced messages count once): when, whether it worked, what the waker said."""

    at: float
    ok: bool
    detail: str
    seqs: tuple[int, ...]


@dataclass(frozen=True)
class LadderStep:
    """One recorded step of a message (:mod:`swarmbus.receipts`): ``by`` is the agent that
    reported it, ``at`` Unix seconds."""

    message_id: str
    step: str
    by: str
    at: float
    detail: str


@dataclass(frozen=True)
class Redelivery:
    """A sent message republished until its ``stored`` receipt: ``attempts`` republishes so far,
    the next at ``next_at``, none after ``give_up_at`` (Unix seconds); ``ended`` says how it
    ended (``stored``, ``gave up``, ``expired``, ``no receipts``) once ``ended_at`` is set."""

    message_id: str
    recipient: str
    attempts: int
    next_at: float
    give_up_at: float
    last_at: float | None
    ended_at: float | None
    ended: str | None


@dataclass(frozen=True)
class OutboxEntry:
    """A send spooled by the daemon: ``created_at`` (spooled), ``published_at`` (PUBACKed) in Unix s."""

    message_id: str
    topic: str
    payload: bytes
    created_at: float
    published_at: float | None


ReceiptOutcome = Literal["new", "known", "not ours", "wrong receiver"]


@dataclass(frozen=True)
class Delivery:
    seq: int
    handler: str
    status: str
    attempts: int
    detail: str
    updated_at: float


def _row_envelope(stored: bytes | str) -> Envelope:
    """The envelope of a ``messages`` row: the payload bytes (schema 2) or JSON text (schema 1)."""
    return Envelope.from_dict(json.loads(stored))


class Prepared:
    """One inbound publish, parsed and classified outside any transaction (pure CPU, never raises).

    ``kind`` is ``message`` (``envelope`` set), ``quarantine`` (``reason`` and maybe
    ``message_id``) or ``self`` (our own broadcast echoed back on MQTT 3.1.1). With
    ``verify_senders`` only topics that carry the sender's id (``agents/<id>/inbox/<from>``,
    ``agents/broadcast/<from>``) are accepted; a sender segment that differs from ``from`` is
    refused either way.
    """

    __slots__ = ("envelope", "kind", "message_id", "payload", "reason", "topic")

    def __init__(self, topic: str, payload: bytes, own_id: str, verify_senders: bool = False) -> None:
        self.topic = topic
        self.payload = payload
        self.envelope: Envelope | None = None
        self.reason = ""
        self.message_id: str | None = None
        try:
            envelope = Envelope.from_wire(payload)
            reason = _misroute(topic, envelope, own_id, verify_senders)
        except EnvelopeError as exc:
            self.kind, self.reason = "quarantine", f"invalid envelope: {exc}"
            return
        except Exception as exc:  # a parser bug must not stall the receive path: keep the bytes, say why
            self.kind, self.reason = "quarantine", f"unparseable payload ({type(exc).__name__}: {str(exc)[:200]})"
            return
        if reason:
            self.kind, self.reason, self.message_id = "quarantine", reason, envelope.id
        elif envelope.to == BROADCAST and envelope.from_agent == own_id:
            self.kind, self.reason = "self", "own broadcast"
        else:
            self.kind, self.envelope = "message", envelope


SPOOFED = "spoofed sender"
UNVERIFIED = "unverified sender"
"""The first words of the quarantine reasons for a sender the topic does not vouch for."""


def _misroute(topic: str, envelope: Envelope, own_id: str, verify_senders: bool) -> str:
    route = route_of(topic)
    if route is None:
        return f"unexpected topic {topic}"
    if route.recipient == BROADCAST:
        if envelope.to != BROADCAST:
            return f"addressed to {envelope.to!r} but sent on {topic}"
    elif route.recipient != own_id:
        return f"arrived on {topic}, which is not this agent's inbox"
    elif envelope.to != own_id:
        return f"addressed to {envelope.to!r} but sent on {topic}"
    if route.sender is not None:
        if route.sender != envelope.from_agent:
            return (f"{SPOOFED}: claims to be from {envelope.from_agent!r} but was published on {topic}, "
                    f"a topic for messages from {route.sender!r}")
    elif verify_senders:
        return (f"{UNVERIFIED}: {envelope.from_agent!r} published on {topic}; with security.verify_senders "
                f"only {topic}/<sender id> is accepted")
    return ""


def is_store_failure(exc: BaseException) -> bool:
    """True when ``exc`` means the store itself cannot be written (disk full, I/O error,
    read-only, locked, corrupt; the spill file too), as opposed to one row the database refused."""
    return (isinstance(exc, sqlite3.OperationalError | sqlite3.InternalError | OSError | StoreError)
            or type(exc) is sqlite3.DatabaseError)


class Store(NestedTransactions):
    """Open (creating if needed) the store at ``path``.

    ``sync`` is SQLite's ``synchronous`` level: ``normal`` survives a process crash (WAL),
    ``full`` also survives power loss at the cost of an fsync per commit. Raises StoreError
    if the file cannot be opened or was written by a newer schema.

    One connection per object, guarded by a lock; the daemon writes through one object (on its
    MQTT thread) and reads through another (on its event loop), so reads never wait for writes.
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
            if row is not None and int(row[0]) < 2:  # schema 1 kept the dispatch state in messages
                columns = {c[1] for c in self._db.execute("PRAGMA table_info(messages)")}
                for column in ("payload_offset", "payload_length"):
                    if column not in columns:
                        self._db.execute(f"ALTER TABLE messages ADD COLUMN {column} INTEGER")
                self._db.execute("DROP INDEX IF EXISTS messages_pending")
                self._db.execute("INSERT OR IGNORE INTO dispatches SELECT seq, dispatched_at FROM messages"
                                 " WHERE dispatch = 1")
            if row is None or int(row[0]) < SCHEMA_VERSION:
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from None
        self._lock = threading.RLock()
        self._depth = 0
        self._sync_full = sync == "full"
        self.spill_path = path.with_name(path.name + ".payloads")
        self._spill_w: int | None = None  # append fd, opened at the first large payload
        self._spill_r: int | None = None

    def close(self) -> None:
        with self._lock:
            self._db.close()
            for fd in (self._spill_w, self._spill_r):
                if fd is not None:
                    os.close(fd)
            self._spill_w = self._spill_r = None

    # -- the spill file -----------------------------------------------------------------------------
    def _spill(self, payload: bytes) -> int:
        """Append ``payload`` to the spill file; return its offset. Raises OSError."""
        if self._spill_w is None:
            self._spill_w = os.open(self.spill_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        fd = self._spill_w
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view):]
        return os.lseek(fd, 0, os.SEEK_CUR) - len(payload)

    def _unspill(self, offset: int, length: int) -> bytes:
        if self._spill_r is None:
            self._spill_r = os.open(self.spill_path, os.O_RDONLY)
        data = os.pread(self._spill_r, length, offset)
        if len(data) != length:
            raise StoreError(f"{self.spill_path} is shorter than the store says (offset {offset}, length {length})")
        return data

    def _payload(self, row: sqlite3.Row) -> bytes | str:
        """The stored payload of a ``messages`` row (from the spill file when it is there)."""
        if row["payload_length"] is not None:
            with self._lock:
                return self._unspill(row["payload_offset"], row["payload_length"])
        return row["envelope"]  # type: ignore[no-any-return]

    def _message(self, row: sqlite3.Row, redelivered: bool = False) -> StoredMessage:
        return StoredMessage(row["seq"], _row_envelope(self._payload(row)), row["topic"], row["received_at"],
                             redelivered)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    _tx = NestedTransactions.transaction

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _bump(self, db: sqlite3.Connection, name: str, by: int = 1) -> None:
        db.execute(
            "INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
            (name, by, by),
        )

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a transaction; a database failure becomes StoreError."""
        try:
            with self._tx() as db:
                return fn(db)
        except sqlite3.Error as exc:
            raise StoreError(f"store write failed: {exc}") from None

    # -- intake ---------------------------------------------------------------------------
    def accept(self, topic: str, payload: bytes, own_id: str, *, dispatch: bool = True,
               verify_senders: bool = False) -> AcceptResult:
        """Validate and commit one inbound publish; see :meth:`accept_batch`."""
        return self.accept_batch([(topic, payload)], own_id, dispatch=dispatch, verify_senders=verify_senders)[0]

    def accept_batch(
        self, items: Sequence[tuple[str, bytes]], own_id: str, *, dispatch: bool = True, verify_senders: bool = False
    ) -> list[AcceptResult]:
        """Validate and commit inbound publishes ``(topic, payload)`` in one transaction (group
        commit); one result per item, in order. Never raises for bad input.

        Outcomes: ``stored`` (new message), ``duplicate`` (same id, same content: not stored
        again), ``quarantined`` (invalid, unparseable, misrouted, a reused id with different
        content, or a row the database refused: raw bytes, topic and reason kept), ``self`` (our
        own broadcast echoed back on MQTT 3.1.1: counted, not stored).

        :raises StoreError: the database itself failed (disk full, I/O error, read-only); then
            nothing was committed and the caller must not acknowledge these publishes.
        """
        prepared = [Prepared(topic, payload, own_id, verify_senders) for topic, payload in items]
        return self.commit_prepared(prepared, dispatch=dispatch)

    def commit_prepared(self, prepared: Sequence[Prepared], *, dispatch: bool = True) -> list[AcceptResult]:
        """The transaction half of :meth:`accept_batch`, for callers that parsed already."""
        now = time.time()
        try:
            with self._tx() as db:
                results = self._commit(db, prepared, now, dispatch)
                if self._sync_full and self._spill_w is not None:
                    os.fsync(self._spill_w)
                return results
        except Exception as exc:
            if is_store_failure(exc):
                raise StoreError(f"store write failed: {exc}") from None
            if len(prepared) == 1:
                return [self._quarantine_refused(prepared[0], exc, now)]
        # one row the database refused: commit the others, quarantine that one
        return [r for p in prepared for r in self.commit_prepared([p], dispatch=dispatch)]

    def _quarantine_refused(self, p: Prepared, exc: Exception, now: float) -> AcceptResult:
        reason = f"could not be stored ({type(exc).__name__}: {str(exc)[:200]})"
        try:
            with self._tx() as db:
                self._insert_quarantine(db, p.topic, p.payload, reason, None, now)
                self._bump(db, "quarantined")
        except Exception as again:
            raise StoreError(f"store write failed: {again}") from None
        return AcceptResult("quarantined", None, reason)

    def _commit(self, db: sqlite3.Connection, prepared: Sequence[Prepared], now: float, dispatch: bool) -> list[AcceptResult]:
        results: list[AcceptResult] = []
        duplicates = quarantined = echoes = 0
        flag = 1 if dispatch else 0
        for p in prepared:
            if p.kind == "quarantine":
                self._insert_quarantine(db, p.topic, p.payload, p.reason, p.message_id, now)
                quarantined += 1
                results.append(AcceptResult("quarantined", None, p.reason))
                continue
            if p.kind == "self":
                echoes += 1
                results.append(AcceptResult("self", reason=p.reason))
                continue
            e = p.envelope
            assert e is not None
            row = db.execute("SELECT * FROM messages WHERE id = ?", (e.id,)).fetchone()
            if row is None:  # (look before inserting: a schema-1 store's AUTOINCREMENT would skip a seq)
                inline, offset, length = p.payload, None, None
                if len(inline) > SPILL_OVER:
                    inline, offset, length = b"", self._spill(p.payload), len(p.payload)
                cur = db.execute(
                    "INSERT INTO messages (id, digest, topic, from_agent, to_agent, subject, priority, ts,"
                    " received_at, envelope, dispatch, payload_offset, payload_length)"
                    " VALUES (?,'',?,?,?,?,?,?,?,?,?,?,?)",
                    (e.id, p.topic, e.from_agent, e.to, e.subject, e.priority, e.ts, now, inline, flag, offset, length),
                )
                seq = int(cur.lastrowid or 0)
                if flag:
                    db.execute("INSERT INTO dispatches (seq) VALUES (?)", (seq,))
                results.append(AcceptResult("stored", seq, "", StoredMessage(seq, e, p.topic, now)))
                continue
            if (row["digest"] or _row_envelope(self._payload(row)).digest()) == e.digest():
                duplicates += 1
                results.append(AcceptResult("duplicate", row["seq"], "already stored"))
            else:
                conflict = "conflicting duplicate: this id was already stored with different content"
                self._insert_quarantine(db, p.topic, p.payload, conflict, e.id, now)
                quarantined += 1
                results.append(AcceptResult("quarantined", None, conflict))
        for name, count in (("duplicates", duplicates), ("quarantined", quarantined), ("self_echo", echoes)):
            if count:  # (rare; "stored" is the last seq: seqs have no gaps, so no write for it)
                self._bump(db, name, count)
        return results

    def _insert_quarantine(
        self, db: sqlite3.Connection, topic: str, payload: bytes, reason: str, message_id: str | None, now: float
    ) -> int:
        cur = db.execute(
            "INSERT INTO quarantine (received_at, topic, payload, reason, message_id) VALUES (?,?,?,?,?)",
            (now, topic, payload, reason, message_id),
        )
        return int(cur.lastrowid or 0)

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
        return [self._message(r) for r in self._query(sql, args)]

    def recent(self, limit: int) -> list[StoredMessage]:
        rows = self._query("SELECT * FROM (SELECT * FROM messages ORDER BY seq DESC LIMIT ?) ORDER BY seq", (limit,))
        return [self._message(r) for r in rows]

    def message(self, seq: int) -> StoredMessage | None:
        rows = self._query("SELECT * FROM messages WHERE seq = ?", (seq,))
        return self._message(rows[0]) if rows else None

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
        """Event counts since the store was created: ``stored`` (messages ever stored: the last
        seq), ``duplicates``, ``quarantined``, ``self_echo``, ``handler_failed``,
        ``handler_timeout`` (absent while zero)."""
        rows = self._query("SELECT name, value FROM counters WHERE name != 'stored'"
                           " UNION ALL SELECT 'stored', COALESCE(MAX(seq), 0) FROM messages")
        return {r[0]: int(r[1]) for r in rows if r[1]}

    # -- cursors --------------------------------------------------------------------------
    def cursor(self, consumer: str) -> int:
        rows = self._query("SELECT seq FROM cursors WHERE consumer = ?", (consumer,))
        return int(rows[0][0]) if rows else 0

    def set_cursor(self, consumer: str, seq: int) -> None:
        """:raises StoreError: the database failed."""
        self._write(lambda db: db.execute(
            "INSERT INTO cursors VALUES (?, ?, ?) ON CONFLICT(consumer) DO UPDATE"
            " SET seq = excluded.seq, updated_at = excluded.updated_at",
            (consumer, seq, time.time()),
        ))

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
        return [self._message(r) for r in rows]

    def ack(self, consumer: str, ids: list[str]) -> int:
        """Acknowledge the messages with these ids for ``consumer``; return how many were newly
        acknowledged (unknown ids and ids already acknowledged count for nothing). The cursor
        then moves over the acknowledged messages that directly follow it, and their ack rows,
        now implied by the cursor, are dropped."""
        if not ids:
            return 0

        def write(db: sqlite3.Connection) -> int:
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

        return self._write(write)

    # -- dispatch bookkeeping -------------------------------------------------------------
    def undispatched(self) -> list[StoredMessage]:
        """Messages the daemon has not finished dispatching (e.g. after a crash)."""
        return [m for m, _ in self.pending_dispatch(0, None)]

    def pending_dispatch(
        self, after_seq: int, limit: int | None, *, redelivered_upto: int = 0
    ) -> list[tuple[StoredMessage, set[str]]]:
        """Up to ``limit`` messages after ``after_seq`` whose dispatch has not finished, oldest
        first, each with the names of the handlers that already finished it; those with a seq up
        to ``redelivered_upto`` are marked ``redelivered``."""
        sql = ("SELECT m.* FROM dispatches d JOIN messages m ON m.seq = d.seq"
               " WHERE d.done_at IS NULL AND d.seq > ? ORDER BY d.seq")
        args: tuple[Any, ...] = (after_seq,)
        if limit is not None:
            sql += " LIMIT ?"
            args = (after_seq, limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
            if not rows:
                return []
            finished: dict[int, set[str]] = {}
            for seq, handler in self._db.execute(
                "SELECT seq, handler FROM deliveries WHERE seq BETWEEN ? AND ? AND status NOT IN ('running', 'pending')",
                (rows[0]["seq"], rows[-1]["seq"]),
            ):
                finished.setdefault(seq, set()).add(handler)
        return [(self._message(r, r["seq"] <= redelivered_upto), finished.get(r["seq"], set())) for r in rows]

    def mark_dispatched(self, seq: int) -> None:
        self.record_outcomes((), (seq,))

    def record_outcomes(self, outcomes: Iterable[tuple[int, str, str, str]], dispatched: Iterable[int] = (),
                        published: Iterable[str] = ()) -> None:
        """Record, in one transaction: finished handler runs ``(seq, handler, status, detail)``
        (status ``ok``/``failed``/``timeout``/``skipped``; each adds one attempt), messages whose
        dispatch finished, and outbox ids the broker acknowledged.

        :raises StoreError: the database failed; nothing was recorded (retry later).
        """
        now = time.time()
        rows = [(seq, handler, status, detail[:2000], now) for seq, handler, status, detail in outcomes]
        done = [(now, seq) for seq in dispatched]
        sent = [(now, message_id) for message_id in published]

        def write(db: sqlite3.Connection) -> None:
            self._upsert_deliveries(db, rows)
            if done:
                db.executemany("UPDATE dispatches SET done_at = ? WHERE seq = ?", done)
            if sent:
                db.executemany("UPDATE outbox SET published_at = ? WHERE id = ? AND published_at IS NULL", sent)

        self._write(write)

    def record_delivery(self, seq: int, handler: str, status: str, detail: str = "") -> None:
        """Upsert one handler's state for one message; ``running`` increments ``attempts``."""
        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO deliveries (seq, handler, status, attempts, detail, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(seq, handler) DO UPDATE SET"
                " status = excluded.status, detail = excluded.detail, updated_at = excluded.updated_at,"
                " attempts = deliveries.attempts + excluded.attempts",
                (seq, handler, status, 1 if status == "running" else 0, detail[:2000], time.time()),
            )
            if status in ("failed", "timeout"):
                self._bump(db, f"handler_{status}")

        self._write(write)

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

    # -- the wake policy: wake history and holds ------------------------------------------
    def record_wake(self, at: float, woken: Sequence[tuple[int, str]], ok: bool, detail: str,
                    outcomes: Iterable[tuple[int, str, str]] = ()) -> None:
        """Record one wake attempt for the messages ``woken`` ``(seq, sender)``, drop their holds,
        and upsert the ``wake`` deliveries ``outcomes`` ``(seq, status, detail)``, in one transaction.

        :raises StoreError: the database failed; nothing was recorded.
        """
        rows = [(at, sender, seq, 1 if ok else 0, detail[:2000]) for seq, sender in woken]
        deliveries = [(seq, "wake", status, text[:2000], at) for seq, status, text in outcomes]

        def write(db: sqlite3.Connection) -> None:
            db.executemany("INSERT INTO wake_log (at, sender, seq, ok, detail) VALUES (?, ?, ?, ?, ?)", rows)
            db.executemany("DELETE FROM holds WHERE seq = ?", [(seq,) for seq, _ in woken])
            self._upsert_deliveries(db, deliveries)

        self._write(write)

    def _upsert_deliveries(self, db: sqlite3.Connection, rows: Sequence[tuple[int, str, str, str, float]]) -> None:
        if rows:
            db.executemany(
                "INSERT INTO deliveries (seq, handler, status, attempts, detail, updated_at)"
                " VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT(seq, handler) DO UPDATE SET"
                " status = excluded.status, detail = excluded.detail, updated_at = excluded.updated_at,"
                " attempts = deliveries.attempts + 1",
                rows,
            )
            for status in ("failed", "timeout"):
                count = sum(1 for r in rows if r[2] == status)
                if count:
                    self._bump(db, f"handler_{status}", count)

    def wakes_since(self, since: float) -> list[tuple[float, list[str]]]:
        """Wake attempts at or after ``since``, oldest first: (at, the senders it woke for)."""
        out: dict[float, list[str]] = {}
        for at, sender in self._query("SELECT at, sender FROM wake_log WHERE at >= ? ORDER BY at", (since,)):
            out.setdefault(float(at), []).append(sender)
        return list(out.items())

    def wake_attempts(self, limit: int) -> list[WakeAttempt]:
        """The newest ``limit`` wake attempts, newest first."""
        rows = self._query(
            "SELECT at, MIN(ok), MAX(detail), GROUP_CONCAT(seq) FROM wake_log WHERE at IN"
            " (SELECT DISTINCT at FROM wake_log ORDER BY at DESC LIMIT ?) GROUP BY at ORDER BY at DESC", (limit,))
        return [WakeAttempt(float(r[0]), bool(r[1]), r[2], tuple(sorted(int(x) for x in str(r[3]).split(",")))) for r in rows]

    def traffic_since(self, since: float) -> tuple[list[tuple[float, str]], list[tuple[float, str]]]:
        """Messages received (at, sender) and sent through the daemon (at, peer) at or after
        ``since``, oldest first; read from the newest backwards, so the cost is what is recent."""
        received: list[tuple[float, str]] = []
        sent: list[tuple[float, str]] = []
        with self._lock:
            for at, sender in self._db.execute("SELECT received_at, from_agent FROM messages ORDER BY seq DESC"):
                if at < since:
                    break
                received.append((float(at), sender))
            for at, topic in self._db.execute("SELECT created_at, topic FROM outbox ORDER BY oseq DESC"):
                if at < since:
                    break
                route = route_of(topic)
                peer = route.recipient if route is not None and route.recipient != BROADCAST else None
                if peer is not None:
                    sent.append((float(at), peer))
        return received[::-1], sent[::-1]

    def hold(self, seq: int, until: float, reason: str, rule: str, now: float) -> None:
        """Hold message ``seq`` until ``until`` (replacing an earlier hold; ``held_at`` is kept).

        :raises StoreError: the database failed.
        """
        self._write(lambda db: db.execute(
            "INSERT INTO holds (seq, until, reason, rule, held_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT(seq) DO UPDATE SET until = excluded.until, reason = excluded.reason, rule = excluded.rule",
            (seq, until, reason[:500], rule, now)))

    def drop_holds(self, seqs: Iterable[int], outcomes: Iterable[tuple[int, str, str]] = ()) -> None:
        """Forget the holds of ``seqs`` (the rules now skip them) and upsert their ``wake``
        deliveries ``(seq, status, detail)``. :raises StoreError: the database failed."""
        now = time.time()
        rows = [(seq, "wake", status, text[:2000], now) for seq, status, text in outcomes]

        def write(db: sqlite3.Connection) -> None:
            db.executemany("DELETE FROM holds WHERE seq = ?", [(seq,) for seq in seqs])
            self._upsert_deliveries(db, rows)

        self._write(write)

    def holds(self, until: float | None = None) -> list[Hold]:
        """Held messages (those due by ``until`` when given), earliest first."""
        if until is None:
            rows = self._query("SELECT * FROM holds ORDER BY until, seq")
        else:
            rows = self._query("SELECT * FROM holds WHERE until <= ? ORDER BY until, seq", (until,))
        return [Hold(r["seq"], r["until"], r["reason"], r["rule"], r["held_at"]) for r in rows]

    def hold_of(self, seq: int) -> Hold | None:
        rows = self._query("SELECT * FROM holds WHERE seq = ?", (seq,))
        return Hold(rows[0]["seq"], rows[0]["until"], rows[0]["reason"], rows[0]["rule"], rows[0]["held_at"]) if rows else None

    def manual_hold(self) -> ManualHold | None:
        """The operator's hold on every wake (:class:`ManualHold`), or None."""
        rows = self._query("SELECT value FROM meta WHERE key = 'manual_hold'")
        if not rows:
            return None
        try:
            data = json.loads(rows[0][0])
            until = data.get("until")
            return ManualHold(float(data["since"]), None if until is None else float(until), str(data.get("reason", "")))
        except (ValueError, TypeError, KeyError):
            return None

    def set_manual_hold(self, hold: ManualHold | None) -> None:
        """Record the operator's hold (None: remove it). :raises StoreError: the database failed."""
        if hold is None:
            self._write(lambda db: db.execute("DELETE FROM meta WHERE key = 'manual_hold'"))
            return
        value = json.dumps({"since": hold.since, "until": hold.until, "reason": hold.reason[:500]})
        self._write(lambda db: db.execute("INSERT OR REPLACE INTO meta VALUES ('manual_hold', ?)", (value,)))

    def end_holds_of(self, rule: str, now: float) -> int:
        """Make every hold by ``rule`` due at ``now`` (its rules are asked again at the next
        release); returns how many. :raises StoreError: the database failed."""
        return self._write(lambda db: db.execute(
            "UPDATE holds SET until = ? WHERE rule = ? AND until > ?", (now, rule, now)).rowcount)

    def message_by_id(self, message_id: str) -> StoredMessage | None:
        rows = self._query("SELECT * FROM messages WHERE id = ?", (message_id,))
        return self._message(rows[0]) if rows else None

    # -- outbox ---------------------------------------------------------------------------
    def outbox_add(self, message_id: str, topic: str, payload: bytes,
                   redeliver: tuple[str, float, float] | None = None) -> bool:
        """Spool an outgoing message; False if this id is already spooled. ``redeliver``
        ``(recipient, first_at, give_up_at)`` (Unix s) schedules its redelivery in the same
        transaction (see :meth:`redeliveries_due`)."""
        def write(db: sqlite3.Connection) -> bool:
            added = db.execute("INSERT OR IGNORE INTO outbox (id, topic, payload, created_at) VALUES (?,?,?,?)",
                               (message_id, topic, payload, time.time())).rowcount == 1
            if added and redeliver is not None:
                db.execute("INSERT OR IGNORE INTO redeliveries (id, recipient, next_at, give_up_at) VALUES (?,?,?,?)",
                           (message_id, *redeliver))
            return added

        return self._write(write)

    def outbox_entry(self, message_id: str) -> OutboxEntry | None:
        rows = self._query("SELECT * FROM outbox WHERE id = ?", (message_id,))
        if not rows:
            return None
        r = rows[0]
        return OutboxEntry(r["id"], r["topic"], bytes(r["payload"]), r["created_at"], r["published_at"])

    # -- the delivery ladder ------------------------------------------------------------------------
    def record_steps(self, rows: Iterable[tuple[str, str, str, float, str]]) -> list[LadderStep]:
        """Record steps ``(message_id, step, by, at, detail)``; return those that are new (a step
        already recorded for that id and agent keeps its first time). :raises StoreError:"""
        items = [(i, st, by, at, detail[:2000]) for i, st, by, at, detail in rows]

        def write(db: sqlite3.Connection) -> list[LadderStep]:
            new = []
            for item in items:
                if db.execute("INSERT OR IGNORE INTO ladder (id, step, by, at, detail) VALUES (?,?,?,?,?)",
                              item).rowcount == 1:
                    new.append(LadderStep(*item))
            return new

        return self._write(write) if items else []

    def record_receipt(self, message_id: str, step: str, by: str, at: float, detail: str) -> ReceiptOutcome:
        """Record a receipt for a message this agent sent (its ``outbox`` has the id, addressed
        to ``by`` or to broadcast); a ``stored`` receipt ends its redelivery. Returns ``new``,
        ``known`` (already recorded), ``not ours`` (this agent never sent that id) or ``wrong
        receiver`` (sent to someone else). :raises StoreError:"""
        def write(db: sqlite3.Connection) -> ReceiptOutcome:
            row = db.execute("SELECT topic FROM outbox WHERE id = ?", (message_id,)).fetchone()
            if row is None:
                return "not ours"
            route = route_of(row[0])
            if route is None or (route.recipient != BROADCAST and route.recipient != by):
                return "wrong receiver"
            added = db.execute("INSERT OR IGNORE INTO ladder (id, step, by, at, detail) VALUES (?,?,?,?,?)",
                               (message_id, step, by, at, detail[:2000])).rowcount == 1
            if step == "stored":
                db.execute("UPDATE redeliveries SET ended_at = ?, ended = 'stored' WHERE id = ? AND ended_at IS NULL",
                           (time.time(), message_id))
            return "new" if added else "known"

        return self._write(write)

    def ladder(self, message_id: str) -> list[LadderStep]:
        """Every recorded step of ``message_id``, oldest first."""
        rows = self._query("SELECT * FROM ladder WHERE id = ? ORDER BY at, step, by", (message_id,))
        return [LadderStep(r["id"], r["step"], r["by"], r["at"], r["detail"]) for r in rows]

    def has_step(self, message_id: str, steps: Iterable[str]) -> bool:
        """True when any of ``steps`` is recorded for ``message_id``."""
        wanted = list(steps)
        marks = ",".join("?" * len(wanted))
        return bool(wanted) and bool(self._query(
            f"SELECT 1 FROM ladder WHERE id = ? AND step IN ({marks}) LIMIT 1",  # noqa: S608 - only "?" marks
            (message_id, *wanted)))

    # -- redelivery --------------------------------------------------------------------------------
    def redelivery(self, message_id: str) -> Redelivery | None:
        rows = self._query("SELECT * FROM redeliveries WHERE id = ?", (message_id,))
        return _redelivery(rows[0]) if rows else None

    def redeliveries_due(self, now: float, limit: int = 100) -> list[Redelivery]:
        """Unended redeliveries whose ``next_at`` has come, earliest first."""
        rows = self._query("SELECT * FROM redeliveries WHERE ended_at IS NULL AND next_at <= ? ORDER BY next_at"
                           " LIMIT ?", (now, limit))
        return [_redelivery(r) for r in rows]

    def next_redelivery_at(self) -> float | None:
        rows = self._query("SELECT MIN(next_at) FROM redeliveries WHERE ended_at IS NULL")
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    def known_peers(self, limit: int = 1000) -> list[str]:
        """Agent ids this store has heard from or sent to (senders of stored messages, recipients
        of redeliveries), at most ``limit``: who ``swarmbus list`` asks for by exact topic."""
        rows = self._query("SELECT from_agent FROM messages UNION SELECT recipient FROM redeliveries LIMIT ?", (limit,))
        return [str(r[0]) for r in rows]

    def redelivery_recipients(self) -> list[str]:
        """The recipients of unended redeliveries (their presence is watched after a restart)."""
        return [str(r[0]) for r in self._query("SELECT DISTINCT recipient FROM redeliveries WHERE ended_at IS NULL")]

    def redeliveries_pending(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM redeliveries WHERE ended_at IS NULL")[0][0])

    def redeliver_now(self, recipient: str, now: float) -> int:
        """Make every unended redelivery to ``recipient`` due now (it just came online)."""
        return self._write(lambda db: db.execute(
            "UPDATE redeliveries SET next_at = ? WHERE recipient = ? AND ended_at IS NULL AND next_at > ?",
            (now, recipient, now)).rowcount)

    def redelivered(self, message_id: str, at: float | None, next_at: float, *, counted: bool = True) -> None:
        """One more republish at ``at`` (not counted when ``counted`` is False: it was still in
        flight); the next is due at ``next_at``. :raises StoreError:"""
        self._write(lambda db: db.execute(
            "UPDATE redeliveries SET attempts = attempts + ?, last_at = ?, next_at = ? WHERE id = ?",
            (1 if counted else 0, at, next_at, message_id)))

    def end_redeliveries(self, ended: Iterable[tuple[str, str]], at: float) -> None:
        """End redeliveries ``(message_id, why)`` (``gave up``, ``expired``, ``no receipts``)."""
        rows = [(at, why, message_id) for message_id, why in ended]
        self._write(lambda db: db.executemany(
            "UPDATE redeliveries SET ended_at = ?, ended = ? WHERE id = ? AND ended_at IS NULL", rows))

    def outbox_published(self, message_id: str) -> None:
        self.record_outcomes((), (), (message_id,))

    def outbox_pending(self) -> list[tuple[str, str, bytes]]:
        rows = self._query("SELECT id, topic, payload FROM outbox WHERE published_at IS NULL ORDER BY oseq")
        return [(r[0], r[1], bytes(r[2])) for r in rows]


def _redelivery(r: sqlite3.Row) -> Redelivery:
    return Redelivery(r["id"], r["recipient"], r["attempts"], r["next_at"], r["give_up_at"], r["last_at"],
                      r["ended_at"], r["ended"])
