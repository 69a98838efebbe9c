"""The agents' stores on this machine, read read-only for the dashboard.

Each ``<state_dir>/agents/<id>/store.sqlite3`` (:mod:`swarmbus.store`) is opened with
``mode=ro`` and ``query_only``: the dashboard never writes, never takes the daemon's lock, and
reads in short autocommit snapshots (SQLite WAL: readers never block the daemon's writer, and a
short read never holds a checkpoint back for long). :meth:`StoreReader.poll` first asks
``PRAGMA data_version``, which changes only when another connection committed, so a poll while
nothing happened costs one pragma.

When something changed it reads what is new after its cursors (messages by ``seq``, sends by
the outbox's ``oseq``, ladder steps and quarantine rows by row id) and reads again the small
mutable parts of the newest :data:`WINDOW` messages and sends (handler outcomes, whether a send
was published, its redelivery), every hold, the operator's hold and the counters.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from swarmbus.envelope import AGENT_ID_RE, BROADCAST
from swarmbus.topics import route_of

WINDOW = 200
"""Received messages, and sent ones, followed per store (the newest)."""
QUARANTINE_WINDOW = 100
"""Quarantine rows read at the start (the newest), and at most per poll."""
LADDER_BATCH = 5000
"""Ladder rows read per poll at most (the rest at the next)."""
PREVIEW_CHARS = 200
"""Characters of a message body the page is sent."""
PREVIEW_MAX_BYTES = 256 * 1024
"""A payload larger than this is not parsed for its body preview."""


class StoreUnavailable(Exception):
    """The store cannot be opened or read now (absent, locked, an older schema): try later."""


@dataclass
class StoreDelta:
    """What one poll found. ``received``/``sent``/``steps``/``quarantine``: rows new since the
    last poll; ``handlers``, ``published``, ``redeliveries``: the current values for every
    followed message or send (replacing what was known); ``holds``, ``manual_hold``,
    ``counters``: current values. Rows are plain dicts (times in Unix seconds):

    - received ``{"seq", "id", "from", "to", "subject", "priority", "ts", "stored_at", "topic",
      "preview"}``;
    - sent ``{"id", "from", "to", "subject", "priority", "ts", "spooled_at", "published_at",
      "preview"}``;
    - steps ``{"id", "step", "by", "at", "detail"}``;
    - handlers ``{id: [{"handler", "status", "detail", "at"}, ...]}``;
    - redeliveries ``{id: {"attempts", "next_at", "give_up_at", "last_at", "ended_at", "ended"}}``;
    - holds ``[{"seq", "id", "from", "subject", "until", "reason", "rule", "held_at"}]``;
    - manual_hold ``{"since", "until", "reason"}`` or None;
    - quarantine ``{"qid", "received_at", "topic", "reason", "message_id", "size", "preview"}``.
    """

    agent: str
    first: bool = False
    received: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    handlers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    published: dict[str, float | None] = field(default_factory=dict)
    redeliveries: dict[str, dict[str, Any]] = field(default_factory=dict)
    holds: list[dict[str, Any]] = field(default_factory=list)
    manual_hold: dict[str, Any] | None = None
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)


def local_agents(state_dir: Path, only: list[str] | None = None) -> dict[str, Path]:
    """``{agent id: store path}`` for the agent dirs under ``state_dir/agents`` that have a store
    (only the ids in ``only`` when given), sorted by id."""
    root = state_dir / "agents"
    try:
        names = sorted(p.name for p in root.iterdir() if p.is_dir() and AGENT_ID_RE.match(p.name))
    except OSError:
        return {}
    wanted = set(only) if only else None
    return {name: root / name / "store.sqlite3" for name in names
            if (wanted is None or name in wanted) and (root / name / "store.sqlite3").is_file()}


def _body_preview(payload: bytes | str | None) -> str | None:
    if payload is None:
        return None
    if len(payload) > PREVIEW_MAX_BYTES:
        return f"({len(payload)} bytes)"
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    body = data.get("body") if isinstance(data, dict) else None
    if not isinstance(body, str):
        return None
    return body if len(body) <= PREVIEW_CHARS else body[:PREVIEW_CHARS - 1] + "…"


def _envelope_fields(payload: bytes) -> dict[str, Any]:
    """``from``, ``to``, ``subject``, ``priority``, ``ts`` and ``preview`` of a sent envelope
    (the daemon wrote it, but read it defensively all the same)."""
    out: dict[str, Any] = {"from": None, "to": None, "subject": None, "priority": None, "ts": None, "preview": None}
    if len(payload) > PREVIEW_MAX_BYTES:
        out["preview"] = f"({len(payload)} bytes)"
        return out
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return out
    if not isinstance(data, dict):
        return out
    for key in ("from", "to", "subject", "priority", "ts"):
        value = data.get(key)
        out[key] = value[:300] if isinstance(value, str) else None
    out["preview"] = _body_preview(payload)
    return out


class StoreReader:
    """Follows one agent's store. Not thread-safe: one poll at a time (the dashboard polls
    each store from one task, in a worker thread)."""

    def __init__(self, agent: str, path: Path) -> None:
        self.agent = agent
        self.path = path
        self.spill_path = path.with_name(path.name + ".payloads")
        self._db: sqlite3.Connection | None = None
        self._version: int | None = None
        self._seq = 0  # the newest received message read
        self._min_seq = 1  # the oldest followed
        self._oseq = 0
        self._min_oseq = 1
        self._ladder = 0  # ladder rowid cursor
        self._qid = 0
        self._loaded = False

    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
            self._version = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            if not self.path.is_file():
                raise StoreUnavailable(f"no store at {self.path}")
            try:
                db = sqlite3.connect(f"file:{quote(str(self.path))}?mode=ro", uri=True, timeout=1.0,
                                     isolation_level=None, check_same_thread=False)
                db.row_factory = sqlite3.Row
                db.execute("PRAGMA query_only=1")
                db.execute("PRAGMA busy_timeout=1000")
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"cannot open {self.path}: {exc}") from None
            self._db = db
        return self._db

    def poll(self) -> StoreDelta | None:
        """What changed since the last poll (everything followed, at the first), or None when
        nothing was committed since. :raises StoreUnavailable: (the connection is closed;
        the next poll opens it again and reads everything afresh)."""
        try:
            db = self._connect()
            version = int(db.execute("PRAGMA data_version").fetchone()[0])
            if self._loaded and version == self._version:
                return None
            with self._snapshot(db):
                delta = self._read(db)
            self._version = version
            self._loaded = True
            return delta
        except sqlite3.Error as exc:
            self.close()
            self._loaded = False
            raise StoreUnavailable(f"cannot read {self.path}: {exc}") from None

    @contextlib.contextmanager
    def _snapshot(self, db: sqlite3.Connection) -> Iterator[None]:
        db.execute("BEGIN")  # deferred: a read transaction, one consistent snapshot
        try:
            yield
        finally:
            with contextlib.suppress(sqlite3.Error):
                db.execute("COMMIT")

    def _read(self, db: sqlite3.Connection) -> StoreDelta:
        first = not self._loaded
        if first:
            self._seq = self._oseq = self._ladder = self._qid = 0
        delta = StoreDelta(self.agent, first=first)
        last = int(db.execute("SELECT COALESCE(MAX(seq), 0) FROM messages").fetchone()[0])
        start = max(self._seq, last - WINDOW)
        for r in db.execute("SELECT seq, id, from_agent, to_agent, subject, priority, ts, received_at, topic,"
                            " envelope, payload_offset, payload_length FROM messages WHERE seq > ? ORDER BY seq",
                            (start,)):
            delta.received.append({
                "seq": r["seq"], "id": r["id"], "from": r["from_agent"], "to": r["to_agent"],
                "subject": r["subject"], "priority": r["priority"], "ts": r["ts"], "stored_at": r["received_at"],
                "topic": r["topic"], "preview": self._received_preview(r),
            })
        self._seq = max(self._seq, last)
        self._min_seq = max(1, self._seq - WINDOW + 1)

        last_o = int(db.execute("SELECT COALESCE(MAX(oseq), 0) FROM outbox").fetchone()[0])
        start_o = max(self._oseq, last_o - WINDOW)
        for r in db.execute("SELECT oseq, id, topic, payload, created_at, published_at FROM outbox WHERE oseq > ?"
                            " ORDER BY oseq", (start_o,)):
            fields = _envelope_fields(bytes(r["payload"]))
            route = route_of(r["topic"])
            fields["to"] = fields["to"] or (route.recipient if route is not None else None) or BROADCAST
            fields["from"] = fields["from"] or self.agent
            delta.sent.append({"id": r["id"], **fields, "spooled_at": r["created_at"],
                               "published_at": r["published_at"]})
        self._oseq = max(self._oseq, last_o)
        self._min_oseq = max(1, self._oseq - WINDOW + 1)

        if first:
            self._ladder = int(db.execute("SELECT COALESCE(MAX(rowid), 0) FROM ladder").fetchone()[0])
            rows = db.execute(
                "SELECT id, step, by, at, detail FROM ladder WHERE id IN (SELECT id FROM messages WHERE seq >= ?)"
                " OR id IN (SELECT id FROM outbox WHERE oseq >= ?)", (self._min_seq, self._min_oseq)).fetchall()
        else:
            rows = db.execute("SELECT rowid, id, step, by, at, detail FROM ladder WHERE rowid > ? ORDER BY rowid"
                              " LIMIT ?", (self._ladder, LADDER_BATCH)).fetchall()
            if rows:
                self._ladder = int(rows[-1]["rowid"])
        delta.steps = [{"id": r["id"], "step": r["step"], "by": r["by"], "at": r["at"], "detail": r["detail"]}
                       for r in rows]

        for r in db.execute("SELECT m.id, d.handler, d.status, d.detail, d.updated_at FROM deliveries d"
                            " JOIN messages m ON m.seq = d.seq WHERE d.seq >= ? ORDER BY d.seq, d.handler",
                            (self._min_seq,)):
            delta.handlers.setdefault(r["id"], []).append(
                {"handler": r["handler"], "status": r["status"], "detail": r["detail"], "at": r["updated_at"]})
        for r in db.execute("SELECT id, published_at FROM outbox WHERE oseq >= ?", (self._min_oseq,)):
            delta.published[r["id"]] = r["published_at"]
        for r in db.execute("SELECT r.* FROM redeliveries r JOIN outbox o ON o.id = r.id WHERE o.oseq >= ?",
                            (self._min_oseq,)):
            delta.redeliveries[r["id"]] = {"attempts": r["attempts"], "next_at": None if r["ended_at"] else r["next_at"],
                                           "give_up_at": r["give_up_at"], "last_at": r["last_at"],
                                           "ended_at": r["ended_at"], "ended": r["ended"]}
        for r in db.execute("SELECT h.seq, h.until, h.reason, h.rule, h.held_at, m.id, m.from_agent, m.subject"
                            " FROM holds h LEFT JOIN messages m ON m.seq = h.seq ORDER BY h.until, h.seq LIMIT 500"):
            delta.holds.append({"seq": r["seq"], "id": r["id"], "from": r["from_agent"], "subject": r["subject"],
                                "until": r["until"], "reason": r["reason"], "rule": r["rule"], "held_at": r["held_at"]})
        row = db.execute("SELECT value FROM meta WHERE key = 'manual_hold'").fetchone()
        delta.manual_hold = _manual_hold(row[0] if row else None)

        last_q = int(db.execute("SELECT COALESCE(MAX(qid), 0) FROM quarantine").fetchone()[0])
        start_q = max(self._qid, last_q - QUARANTINE_WINDOW)
        for r in db.execute("SELECT qid, received_at, topic, reason, message_id, length(payload) AS size,"
                            " substr(payload, 1, 120) AS head FROM quarantine WHERE qid > ? ORDER BY qid LIMIT ?",
                            (start_q, QUARANTINE_WINDOW)):
            head = r["head"]
            raw = head if isinstance(head, bytes) else str(head).encode("utf-8", "surrogateescape")
            delta.quarantine.append({"qid": r["qid"], "received_at": r["received_at"], "topic": r["topic"][:300],
                                     "reason": r["reason"][:500], "message_id": r["message_id"], "size": r["size"],
                                     "preview": raw.decode("utf-8", "backslashreplace")})
            self._qid = int(r["qid"])
        self._qid = max(self._qid, start_q)
        delta.counters = {r[0]: int(r[1]) for r in db.execute(
            "SELECT name, value FROM counters WHERE name != 'stored'"
            " UNION ALL SELECT 'stored', COALESCE(MAX(seq), 0) FROM messages") if r[1]}
        return delta

    def _received_preview(self, row: sqlite3.Row) -> str | None:
        length = row["payload_length"]
        if length is None:
            return _body_preview(row["envelope"])
        if length > PREVIEW_MAX_BYTES:
            return f"({length} bytes)"
        try:
            fd = os.open(self.spill_path, os.O_RDONLY)
        except OSError:
            return None
        try:
            return _body_preview(os.pread(fd, length, row["payload_offset"]))
        except OSError:
            return None
        finally:
            os.close(fd)


def _manual_hold(value: str | None) -> dict[str, Any] | None:
    if not value:
        return None
    try:
        data = json.loads(value)
        until = data.get("until")
        return {"since": float(data["since"]), "until": None if until is None else float(until),
                "reason": str(data.get("reason", ""))[:500]}
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
