"""The plugin's durable state: ``telegram.sqlite3`` in the agent's private state dir (WAL,
created 0600), so a Telegram outage or a daemon restart delays notifications and loses none.

Tables:

- ``outbox``: every text to send (notifications, digests, answers to the chat), each with a
  unique ``key`` (the same notification is never queued twice), how many of its parts were sent
  (a restart goes on with the next part), attempts, when to try next, the last error; ``sent_at``
  once every part went, ``dead_at`` for a text Telegram refused for good (it stays, with its
  error, for ``swarmbus doctor``);
- ``sent_map``: which Telegram message (chat, message id) carried which notification, and whom
  a reply to it goes to (agent, swarmbus message id, subject);
- ``arrivals`` and ``held``: every message received and every hold, in the order they were
  recorded (their own sequence), for the digest and the held notices; each reads them after its
  cursor and moves the cursor in the same transaction that queues its text, so nothing is counted
  twice or missed across restarts;
- ``meta``: cursors, the ``getUpdates`` offset, mute, the last delivery outcome.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from swarmbus import AgentPaths, Settings

T = TypeVar("T")
FILE_NAME = "telegram.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    chat TEXT,
    text TEXT NOT NULL,
    answer_to INTEGER,
    reply_agent TEXT,
    reply_message_id TEXT,
    reply_subject TEXT,
    created_at REAL NOT NULL,
    next_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    parts_sent INTEGER NOT NULL DEFAULT 0,
    plain INTEGER NOT NULL DEFAULT 0,
    sent_at REAL,
    dead_at REAL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(id) WHERE sent_at IS NULL AND dead_at IS NULL;
CREATE TABLE IF NOT EXISTS sent_map (
    chat TEXT NOT NULL,
    tg_message_id INTEGER NOT NULL,
    agent TEXT NOT NULL,
    message_id TEXT,
    subject TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (chat, tg_message_id)
);
CREATE TABLE IF NOT EXISTS arrivals (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    sender TEXT NOT NULL,
    subject TEXT NOT NULL,
    priority TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS held (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT,
    sender TEXT NOT NULL,
    rule TEXT NOT NULL,
    until REAL,
    reason TEXT NOT NULL,
    at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Entry:
    """One text in the outbox (see the module docstring)."""

    id: int
    key: str
    kind: str
    chat: str | None
    text: str
    answer_to: int | None
    reply_agent: str | None
    reply_message_id: str | None
    reply_subject: str | None
    created_at: float
    next_at: float
    attempts: int
    parts_sent: int
    plain: bool
    last_error: str | None


@dataclass(frozen=True)
class ReplyTarget:
    """Whom a reply to a notification goes to."""

    agent: str
    message_id: str | None
    subject: str


def state_path(settings: Settings, agent_id: str) -> Path:
    """``<state_dir>/agents/<agent_id>/telegram.sqlite3``."""
    return AgentPaths.for_agent(agent_id, settings.state_dir).root / FILE_NAME


class State:
    """The plugin's SQLite file (see the module docstring). Short transactions; safe to use from
    the daemon's event loop and, at the same time, from ``swarmbus doctor`` in another process.

    :raises sqlite3.Error: the file cannot be opened or written (callers log it).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        old = os.umask(0o177)  # the -wal and -shm files too
        try:
            self._db = sqlite3.connect(str(path), timeout=5.0, isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        finally:
            os.umask(old)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._tx() as db:
            return fn(db)

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- meta ------------------------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else default

    def put(self, key: str, value: Any) -> None:
        self._write(lambda db: _put(db, key, value))

    # -- the outbox ------------------------------------------------------------------------------
    def enqueue(self, key: str, kind: str, text: str, *, chat: str | None = None, answer_to: int | None = None,
                reply_agent: str | None = None, reply_message_id: str | None = None,
                reply_subject: str | None = None, now: float | None = None) -> bool:
        """Queue ``text`` under ``key``; False when that key was queued before (sent or not)."""
        return self._write(lambda db: _enqueue(db, key, kind, text, chat, answer_to, reply_agent, reply_message_id,
                                               reply_subject, time.time() if now is None else now))

    def next_due(self, now: float) -> Entry | None:
        """The oldest unsent text whose time has come, or None."""
        rows = self._query("SELECT * FROM outbox WHERE sent_at IS NULL AND dead_at IS NULL AND next_at <= ?"
                           " ORDER BY id LIMIT 1", (now,))
        return _entry(rows[0]) if rows else None

    def next_wake(self) -> float | None:
        """When the earliest unsent text is due (Unix seconds), or None when none waits."""
        rows = self._query("SELECT MIN(next_at) FROM outbox WHERE sent_at IS NULL AND dead_at IS NULL")
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    def part_sent(self, entry: Entry, parts_sent: int, chat: str, tg_message_id: int | None) -> None:
        """Part ``parts_sent`` of ``entry`` went out as Telegram message ``tg_message_id``."""
        def write(db: sqlite3.Connection) -> None:
            db.execute("UPDATE outbox SET parts_sent = ? WHERE id = ?", (parts_sent, entry.id))
            if tg_message_id is not None and entry.reply_agent:
                db.execute("INSERT OR REPLACE INTO sent_map VALUES (?, ?, ?, ?, ?)",
                           (chat, tg_message_id, entry.reply_agent, entry.reply_message_id, entry.reply_subject or ""))
        self._write(write)

    def sent(self, entry: Entry, now: float) -> None:
        self._write(lambda db: (db.execute("UPDATE outbox SET sent_at = ?, last_error = NULL WHERE id = ?",
                                           (now, entry.id)),
                                _put(db, "last_delivery", {"ok": True, "at": now, "kind": entry.kind})))

    def failed(self, entry: Entry, error: str, now: float, retry_at: float) -> None:
        """An attempt failed: try again at ``retry_at``."""
        self._write(lambda db: (db.execute("UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_at = ?"
                                           " WHERE id = ?", (error[:500], retry_at, entry.id)),
                                _put(db, "last_delivery", {"ok": False, "at": now, "kind": entry.kind,
                                                           "error": error[:500]})))

    def use_plain(self, entry: Entry, error: str) -> None:
        """Telegram refused the markup: send this text without a parse mode from now on."""
        self._write(lambda db: db.execute("UPDATE outbox SET plain = 1, last_error = ? WHERE id = ?",
                                          (error[:500], entry.id)))

    def dead(self, entry: Entry, error: str, now: float) -> None:
        """Telegram refused this text for good: keep it, with the error, and go on."""
        self._write(lambda db: (db.execute("UPDATE outbox SET dead_at = ?, last_error = ? WHERE id = ?",
                                           (now, error[:500], entry.id)),
                                _put(db, "last_delivery", {"ok": False, "at": now, "kind": entry.kind,
                                                           "error": error[:500], "dropped": True})))

    def pending(self) -> tuple[int, float | None]:
        """``(texts waiting, when the oldest was queued)``."""
        rows = self._query("SELECT COUNT(*), MIN(created_at) FROM outbox WHERE sent_at IS NULL AND dead_at IS NULL")
        return int(rows[0][0]), (float(rows[0][1]) if rows[0][1] is not None else None)

    def sent_texts(self, kind: str | None = None) -> list[str]:
        """The texts sent so far, oldest first (tests, ``doctor``)."""
        if kind is None:
            rows = self._query("SELECT text FROM outbox WHERE sent_at IS NOT NULL ORDER BY id")
        else:
            rows = self._query("SELECT text FROM outbox WHERE sent_at IS NOT NULL AND kind = ? ORDER BY id", (kind,))
        return [r[0] for r in rows]

    def reply_target(self, chat: str, tg_message_id: int) -> ReplyTarget | None:
        rows = self._query("SELECT agent, message_id, subject FROM sent_map WHERE chat = ? AND tg_message_id = ?",
                           (chat, tg_message_id))
        return ReplyTarget(rows[0][0], rows[0][1], rows[0][2]) if rows else None

    # -- what arrived and what was held --------------------------------------------------------------
    def record_arrival(self, message_id: str, sender: str, subject: str, priority: str, at: float) -> bool:
        """Count a received message once (a message handled again after a restart is not new)."""
        return self._write(lambda db: db.execute(
            "INSERT OR IGNORE INTO arrivals (message_id, sender, subject, priority, at) VALUES (?, ?, ?, ?, ?)",
            (message_id, sender, subject[:300], priority, at)).rowcount == 1)

    def record_held(self, message_id: str | None, sender: str, rule: str, until: float | None, reason: str,
                    at: float) -> None:
        self._write(lambda db: db.execute(
            "INSERT INTO held (message_id, sender, rule, until, reason, at) VALUES (?, ?, ?, ?, ?, ?)",
            (message_id, sender, rule, until, reason[:300], at)))

    def take(self, cursor_key: str, table: str, build: Callable[[list[sqlite3.Row]], tuple[str, str, str] | None],
             *, stamp: tuple[str, float] | None = None, limit: int = 100_000) -> bool:
        """In one transaction: the rows of ``table`` after the cursor ``cursor_key``; ``build(rows)``
        gives ``(key, kind, text)`` to queue, or None (nothing to say); the cursor moves past them.
        ``stamp`` ``(meta key, value)`` is written too when a text was queued (when the last notice
        went). Returns whether a text was queued."""
        if table not in ("arrivals", "held"):
            raise ValueError(table)

        def write(db: sqlite3.Connection) -> bool:
            cursor = _get(db, cursor_key, 0)
            rows = db.execute(f"SELECT * FROM {table} WHERE n > ? ORDER BY n LIMIT ?",  # noqa: S608 - fixed names
                              (cursor, limit)).fetchall()
            made = build(rows)
            if rows:
                _put(db, cursor_key, int(rows[-1]["n"]))
            if made is None:
                return False
            if stamp is not None:
                _put(db, stamp[0], stamp[1])
            key, kind, text = made
            _enqueue(db, key, kind, text, None, None, None, None, None, time.time())
            return True

        return self._write(write)

    def digest(self, build: Callable[[list[sqlite3.Row], list[sqlite3.Row]], str | None], now: float) -> bool:
        """In one transaction: the arrivals and holds after the digest's cursors; ``build(arrivals,
        holds)`` gives the digest's text (None: nothing to say); the text is queued, both cursors
        move past what it covered, and ``digest_last_at`` becomes ``now``. Returns whether a
        digest was queued."""
        def write(db: sqlite3.Connection) -> bool:
            a_cursor, h_cursor = _get(db, "digest_arrivals", 0), _get(db, "digest_held", 0)
            arrivals = db.execute("SELECT * FROM arrivals WHERE n > ? ORDER BY n", (a_cursor,)).fetchall()
            holds = db.execute("SELECT * FROM held WHERE n > ? ORDER BY n", (h_cursor,)).fetchall()
            text = build(arrivals, holds)
            a_to = int(arrivals[-1]["n"]) if arrivals else a_cursor
            h_to = int(holds[-1]["n"]) if holds else h_cursor
            _put(db, "digest_arrivals", a_to)
            _put(db, "digest_held", h_to)
            _put(db, "digest_last_at", now)
            if text is None:
                return False
            _enqueue(db, f"digest:{a_to}:{h_to}:{now}", "digest", text, None, None, None, None, None, now)
            return True

        return self._write(write)


def _get(db: sqlite3.Connection, key: str, default: Any) -> Any:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return json.loads(row[0]) if row else default


def _put(db: sqlite3.Connection, key: str, value: Any) -> None:
    if value is None:
        db.execute("DELETE FROM meta WHERE key = ?", (key,))
    else:
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))


def _enqueue(db: sqlite3.Connection, key: str, kind: str, text: str, chat: str | None, answer_to: int | None,
             reply_agent: str | None, reply_message_id: str | None, reply_subject: str | None, now: float) -> bool:
    cur = db.execute(
        "INSERT OR IGNORE INTO outbox (key, kind, chat, text, answer_to, reply_agent, reply_message_id, reply_subject,"
        " created_at, next_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (key, kind, chat, text, answer_to, reply_agent, reply_message_id, reply_subject, now, now))
    return cur.rowcount == 1


def _entry(r: sqlite3.Row) -> Entry:
    return Entry(int(r["id"]), r["key"], r["kind"], r["chat"], r["text"], r["answer_to"], r["reply_agent"],
                 r["reply_message_id"], r["reply_subject"], float(r["created_at"]), float(r["next_at"]),
                 int(r["attempts"]), int(r["parts_sent"]), bool(r["plain"]), r["last_error"])
