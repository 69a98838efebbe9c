"""The task board's durable record: ``<state_dir>/agents/<id>/board.sqlite3`` (SQLite, WAL).

It sits beside the message store (``store.sqlite3``, :mod:`swarmbus.store`) and is opened the
same way (private file, WAL, ``BEGIN IMMEDIATE`` transactions), by the daemon on its event loop;
the CLI reads it (``task list|show``) without a daemon. Tables:

- ``tasks``: the tasks this agent posted, one row each; this agent's daemon is their arbiter.
  ``fence`` grows by one with every grant; ``attempt`` with every re-offer after a lease expired
  or a claimer failed; ``next_offer_at`` is when an open task is offered again.
- ``task_events``: every transition of those tasks (posted, offered, granted, refused, renewed,
  expired, completed, failed, reopened), with who, which fence and why: the audit trail.
- ``work``: the tasks this agent claimed or holds, one row per (owner, task id): its fence, its
  state here (``claiming``, ``running``, ``completing``, ``failing``, ``done``, ``refused``,
  ``lost``, ``abandoned``), the arbiter's last answer, and its answer to this agent's outcome.
- ``inbound``: the ids of protocol messages already applied (a redelivered one is not applied twice).
- ``outbound``: protocol messages to send, written in the same transaction as the change that
  causes them (a transactional outbox); a pump hands them to the daemon's durable outbox.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from swarmbus.errors import StoreError
from swarmbus.sqlite_tx import NestedTransactions

from .wire import WIRE_VERSION, TaskSpec, iso, parse_spec

T = TypeVar("T")
SCHEMA_VERSION = 1
FILE_NAME = "board.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    type TEXT NOT NULL,
    state TEXT NOT NULL,
    claimer TEXT,
    fence INTEGER NOT NULL DEFAULT 0,
    attempt INTEGER NOT NULL DEFAULT 1,
    lease_until REAL,
    result TEXT,
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    next_offer_at REAL,
    offers INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tasks_open ON tasks(next_offer_at) WHERE state = 'open';
CREATE INDEX IF NOT EXISTS tasks_claimed ON tasks(lease_until) WHERE state = 'claimed';
CREATE TABLE IF NOT EXISTS task_events (
    id INTEGER PRIMARY KEY,
    task_id TEXT NOT NULL,
    at REAL NOT NULL,
    event TEXT NOT NULL,
    by TEXT,
    fence INTEGER,
    attempt INTEGER,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS task_events_task ON task_events(task_id, id);
CREATE TABLE IF NOT EXISTS work (
    owner TEXT NOT NULL,
    task_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state TEXT NOT NULL,
    host INTEGER NOT NULL DEFAULT 0,
    spec TEXT,
    fence INTEGER,
    attempt INTEGER,
    lease REAL,
    lease_until REAL,
    result TEXT,
    error TEXT,
    final INTEGER NOT NULL DEFAULT 0,
    answer TEXT,
    outcome TEXT,
    claimed_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (owner, task_id)
);
CREATE INDEX IF NOT EXISTS work_task ON work(task_id);
CREATE INDEX IF NOT EXISTS work_state ON work(state);
CREATE TABLE IF NOT EXISTS inbound (message_id TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS outbound (
    id TEXT PRIMARY KEY,
    to_agent TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    priority TEXT NOT NULL,
    created_at REAL NOT NULL,
    spooled_at REAL
);
CREATE INDEX IF NOT EXISTS outbound_pending ON outbound(created_at) WHERE spooled_at IS NULL;
"""


@dataclass(frozen=True)
class TaskRow:
    """A task this agent posted (table ``tasks``); times are Unix seconds."""

    spec: TaskSpec
    state: str
    claimer: str | None
    fence: int
    attempt: int
    lease_until: float | None
    result: Any
    error: str | None
    created_at: float
    updated_at: float
    next_offer_at: float | None
    offers: int

    @property
    def task_id(self) -> str:
        return self.spec.task_id

    def record(self) -> dict[str, Any]:
        """The task's state record, as published on its state topic (docs/swarm.md)."""
        spec = self.spec
        return {"task_id": spec.task_id, "type": spec.type, "owner": spec.owner, "role": spec.role,
                "capabilities": list(spec.capabilities), "swarm": spec.swarm, "payload": spec.payload,
                "state": self.state, "claimer": self.claimer, "fence": self.fence, "attempt": self.attempt,
                "max_attempts": spec.max_attempts, "lease": spec.lease, "lease_until": iso(self.lease_until),
                "result": self.result, "error": self.error, "created_at": iso(self.created_at),
                "updated_at": iso(self.updated_at), "priority": spec.priority, "v": WIRE_VERSION}


@dataclass(frozen=True)
class WorkRow:
    """A task this agent claimed (table ``work``); times are Unix seconds."""

    owner: str
    task_id: str
    type: str
    state: str
    host: bool
    spec: TaskSpec | None
    fence: int | None
    attempt: int | None
    lease: float | None
    lease_until: float | None
    result: Any
    error: str | None
    final: bool
    answer: str | None
    """The arbiter's last answer to this agent about the task (a claim, a renewal, an outcome)."""
    outcome: str | None
    """The arbiter's answer to this agent's last completion or failure, or why its lease ended
    (kept when the agent claims the task again)."""
    claimed_at: float
    updated_at: float

    @property
    def key(self) -> tuple[str, str]:
        return self.owner, self.task_id


@dataclass(frozen=True)
class Event:
    """One transition of a task (table ``task_events``)."""

    task_id: str
    at: float
    event: str
    by: str | None
    fence: int | None
    attempt: int | None
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "at": self.at, "event": self.event, "by": self.by, "fence": self.fence,
                "attempt": self.attempt, "detail": self.detail}


def _json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def task_row(r: sqlite3.Row) -> TaskRow:
    return TaskRow(parse_spec(json.loads(r["spec"])), r["state"], r["claimer"], r["fence"], r["attempt"],
                   r["lease_until"], _json(r["result"]), r["error"], r["created_at"], r["updated_at"],
                   r["next_offer_at"], r["offers"])


def work_row(r: sqlite3.Row) -> WorkRow:
    return WorkRow(r["owner"], r["task_id"], r["type"], r["state"], bool(r["host"]),
                   parse_spec(json.loads(r["spec"])) if r["spec"] else None, r["fence"], r["attempt"], r["lease"],
                   r["lease_until"], _json(r["result"]), r["error"], bool(r["final"]), r["answer"], r["outcome"],
                   r["claimed_at"], r["updated_at"])


class Ledger(NestedTransactions):
    """Open (creating if needed, unless ``readonly``) the board database at ``path``.

    One connection, guarded by a lock; writes go through :meth:`transaction` (``BEGIN
    IMMEDIATE``; nested uses are savepoints). ``sync`` is SQLite's ``synchronous`` level, as
    for the message store.

    :raises StoreError: the file cannot be opened, or was written by a newer swarmbus.
    """

    _savepoint = "b"

    def __init__(self, path: Path, *, sync: str = "normal", readonly: bool = False) -> None:
        self.path = path
        try:
            if readonly:
                self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, isolation_level=None,
                                           check_same_thread=False)
            else:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fresh = not path.exists()
                self._db = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
                if fresh:
                    os.chmod(path, 0o600)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA busy_timeout=30000")
            if not readonly:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
                self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is not None and int(row[0]) > SCHEMA_VERSION:
                self._db.close()
                raise StoreError(f"{path} was written by a newer swarmbus (board schema {row[0]} > {SCHEMA_VERSION})",
                                 hint="upgrade swarmbus")
            if not readonly:
                self._db.executescript(_SCHEMA)
                if row is None:
                    self._db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the task board {path}: {exc}") from None
        self._lock = threading.RLock()
        self._depth = 0

    @classmethod
    def open_readonly(cls, path: Path) -> Ledger | None:
        """The ledger for reading, or None when the agent never used the task board."""
        if not path.exists():
            return None
        return cls(path, readonly=True)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a transaction. :raises StoreError: the database failed (nothing written)."""
        try:
            with self.transaction() as db:
                return fn(db)
        except sqlite3.Error as exc:
            raise StoreError(f"task board write failed: {exc}") from None

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- reading ----------------------------------------------------------------------------------
    def task(self, task_id: str) -> TaskRow | None:
        rows = self.query("SELECT * FROM tasks WHERE task_id = ?", (task_id,))
        return task_row(rows[0]) if rows else None

    def tasks(self, states: tuple[str, ...] = (), limit: int = 1000) -> list[TaskRow]:
        """Posted tasks, newest first (only those in ``states`` when given)."""
        if states:
            marks = ",".join("?" * len(states))
            rows = self.query(f"SELECT * FROM tasks WHERE state IN ({marks}) ORDER BY created_at DESC LIMIT ?",  # noqa: S608
                              (*states, limit))
        else:
            rows = self.query("SELECT * FROM tasks ORDER BY created_at DESC LIMIT ?", (limit,))
        return [task_row(r) for r in rows]

    def events(self, task_id: str) -> list[Event]:
        rows = self.query("SELECT * FROM task_events WHERE task_id = ? ORDER BY id", (task_id,))
        return [Event(r["task_id"], r["at"], r["event"], r["by"], r["fence"], r["attempt"], r["detail"]) for r in rows]

    def work(self, owner: str, task_id: str) -> WorkRow | None:
        rows = self.query("SELECT * FROM work WHERE owner = ? AND task_id = ?", (owner, task_id))
        return work_row(rows[0]) if rows else None

    def work_by_task(self, task_id: str) -> list[WorkRow]:
        return [work_row(r) for r in self.query("SELECT * FROM work WHERE task_id = ? ORDER BY updated_at DESC",
                                                (task_id,))]

    def works(self, states: tuple[str, ...] = (), limit: int = 1000) -> list[WorkRow]:
        """Claimed tasks, most recently changed first (only those in ``states`` when given)."""
        if states:
            marks = ",".join("?" * len(states))
            rows = self.query(f"SELECT * FROM work WHERE state IN ({marks}) ORDER BY updated_at DESC LIMIT ?",  # noqa: S608
                              (*states, limit))
        else:
            rows = self.query("SELECT * FROM work ORDER BY updated_at DESC LIMIT ?", (limit,))
        return [work_row(r) for r in rows]

    def pending_outbound(self, limit: int = 500) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM outbound WHERE spooled_at IS NULL ORDER BY created_at LIMIT ?", (limit,))

    def next_deadline(self) -> float | None:
        """The earliest of: an open task's next offer, a claimed task's lease end."""
        row = self.query("SELECT MIN(t) FROM (SELECT MIN(next_offer_at) AS t FROM tasks WHERE state = 'open'"
                         " UNION ALL SELECT MIN(lease_until) FROM tasks WHERE state = 'claimed')")
        return float(row[0][0]) if row and row[0][0] is not None else None

    def purge(self, before: float) -> None:
        """Forget applied-message ids and spooled outbound messages older than ``before``."""
        def write(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM inbound WHERE at < ?", (before,))
            db.execute("DELETE FROM outbound WHERE spooled_at IS NOT NULL AND spooled_at < ?", (before,))

        self.write(write)


def now() -> float:
    return time.time()
