"""The arbiter: the state machine of the tasks this agent posted, one transaction per step.

::

                  post                    claim (first, eligible)
      (none) ──────────────► open ─────────────────────────────► claimed ──┐ renew (same claimer
                              ▲  ▲  attempt+1, offered again       │    ◄──┘  and fence): lease
                              │  └──── lease expired / fail ───────┤           extended
                              │        (attempts left)             │
                              │                                    ├── complete (same claimer and
                              │                                    │   fence) ──► completed
                              └─ (every claim while claimed,       │
                                  completed or failed is refused)  └── lease expired / fail, no
                                                                        attempts left (or final)
                                                                        ──► failed

Exactly once: every step reads the task's row and writes its new state inside one ``BEGIN
IMMEDIATE`` transaction of the board database (:class:`~swarmbus.board.ledger.Ledger`), so
steps on one task are serialised, whatever order claims arrive in and however many agents race:
the first claim that finds the task ``open`` moves it to ``claimed`` and every later one finds
it claimed and is refused. The grant (or refusal) is written to the ``outbound`` table in the
same transaction, so it is sent if and only if the step committed.

Fencing: each grant increments the task's ``fence`` (a token per claim, monotonic per task, never
reused). ``renew``, ``complete`` and ``fail`` carry the fence of the grant they act on, and are
applied only while the task is ``claimed`` by that same claimer with that same fence. Once a lease
expired (the arbiter's clock decides) the task is offered again with ``attempt`` + 1 and the next
grant gets a larger fence, so a claimer that was paused, partitioned or slow cannot complete it
any more: its completion is refused, and the refusal says why.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from .effects import Effects, event, send
from .ledger import TaskRow, task_row
from .wire import Offer, TaskMessage, TaskSpec, clean_text, dumps, ineligible, iso


def post(db: sqlite3.Connection, fx: Effects, spec: TaskSpec, now: float) -> None:
    """Record a new task (``open``, attempt 1, fence 0) and offer it now."""
    db.execute("INSERT INTO tasks (task_id, spec, type, state, created_at, updated_at, next_offer_at)"
               " VALUES (?, ?, ?, 'open', ?, ?, ?)", (spec.task_id, dumps(spec.to_json()), spec.type, now, now, now))
    event(db, spec.task_id, "posted", now, by=spec.owner, attempt=1,
          detail=f"type {spec.type}; role {spec.role or 'any'}; capabilities {', '.join(spec.capabilities) or 'none'}")
    fx.states.add(spec.task_id)


def _row(db: sqlite3.Connection, task_id: str) -> TaskRow | None:
    found = db.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
    return task_row(found) if found is not None else None


def _refuse(db: sqlite3.Connection, fx: Effects, to: str, message: TaskMessage, row: TaskRow | None, reason: str,
            now: float) -> None:
    send(db, fx, to, TaskMessage("refuse", message.task_id, fence=message.fence, of=message.op,
                                 reason=clean_text(reason), state=row.state if row else None,
                                 attempt=row.attempt if row else None), now)
    if row is not None:
        event(db, row.task_id, f"refused {message.op}", now, by=to, fence=message.fence, attempt=row.attempt,
              detail=reason)


def _why_not(row: TaskRow, sender: str, fence: int | None) -> str:
    """Why a ``renew``/``complete``/``fail`` by ``sender`` with ``fence`` does not apply to ``row``."""
    if row.state == "completed":
        return f"the task was already completed by {row.claimer} (fence {row.fence})"
    if row.state == "failed":
        return f"the task already failed: {row.error or 'no reason given'}"
    if (fence is not None and fence < row.fence) or (row.state == "open" and fence is not None and fence <= row.fence):
        now_what = (f"it is claimed by {row.claimer} with fence {row.fence}" if row.state == "claimed"
                    else "it is open again")
        return (f"stale fence {fence}: that claim's lease ended and the task was offered again (attempt "
                f"{row.attempt}); {now_what}")
    if row.claimer != sender:
        return f"the task is claimed by {row.claimer}, not by {sender}"
    return f"unknown fence {fence} (the task's fence is {row.fence})"


def claim(db: sqlite3.Connection, fx: Effects, sender: str, message: TaskMessage, now: float) -> None:
    """A claim: grant it (fence + 1, lease from now) when the task is ``open`` and the claimer
    eligible; grant again (same fence) to the claimer that holds it; else refuse, saying why."""
    row = _row(db, message.task_id)
    if row is None:
        return _refuse(db, fx, sender, message, None, f"{message.task_id} is not a task posted here", now)
    spec = row.spec
    if row.state == "claimed" and row.claimer == sender:
        _grant(db, fx, sender, row, row.fence, row.lease_until or now + spec.lease, now)
        return None
    if row.state != "open":
        held = f" by {row.claimer} (fence {row.fence})" if row.state in ("claimed", "completed") else ""
        return _refuse(db, fx, sender, message, row, f"the task is already {row.state}{held}", now)
    why = ineligible(spec.role, spec.capabilities, spec.swarm, message.role, message.capabilities, message.swarm)
    if why is not None:
        return _refuse(db, fx, sender, message, row, f"not eligible: {why}", now)
    fence, lease_until = row.fence + 1, now + spec.lease
    db.execute("UPDATE tasks SET state = 'claimed', claimer = ?, fence = ?, lease_until = ?, updated_at = ?,"
               " next_offer_at = NULL WHERE task_id = ? AND state = 'open'", (sender, fence, lease_until, now,
                                                                            row.task_id))
    event(db, row.task_id, "granted", now, by=sender, fence=fence, attempt=row.attempt,
          detail=f"lease until {iso(lease_until)}")
    _grant(db, fx, sender, row, fence, lease_until, now)
    fx.states.add(row.task_id)
    return None


def _grant(db: sqlite3.Connection, fx: Effects, to: str, row: TaskRow, fence: int, lease_until: float,
           now: float) -> None:
    send(db, fx, to, TaskMessage("grant", row.task_id, fence=fence, attempt=row.attempt, lease_until=iso(lease_until),
                                 task=row.spec), now, row.spec)


def renew(db: sqlite3.Connection, fx: Effects, sender: str, message: TaskMessage, now: float) -> None:
    """Extend the lease (to now + the task's lease) of the claim ``sender`` holds with that fence;
    else refuse (the claimer learns that it lost the task)."""
    row = _row(db, message.task_id)
    if row is None:
        return _refuse(db, fx, sender, message, None, f"{message.task_id} is not a task posted here", now)
    if row.state == "claimed" and row.claimer == sender and row.fence == message.fence:
        db.execute("UPDATE tasks SET lease_until = ?, updated_at = ? WHERE task_id = ?",
                   (now + row.spec.lease, now, row.task_id))
        fx.states.add(row.task_id)
        return None
    if row.state == "completed" and row.claimer == sender and row.fence == message.fence:
        return None  # a renewal that crossed its own completion: nothing to say
    return _refuse(db, fx, sender, message, row, _why_not(row, sender, message.fence), now)


def complete(db: sqlite3.Connection, fx: Effects, sender: str, message: TaskMessage, now: float) -> None:
    """Complete the task with ``message.result`` when ``sender`` holds it with that fence (and
    answer ``ack``); else refuse, saying why (a stale fence: the lease expired)."""
    row = _row(db, message.task_id)
    if row is None:
        return _refuse(db, fx, sender, message, None, f"{message.task_id} is not a task posted here", now)
    if row.state == "claimed" and row.claimer == sender and row.fence == message.fence:
        db.execute("UPDATE tasks SET state = 'completed', result = ?, lease_until = NULL, updated_at = ?"
                   " WHERE task_id = ?", (json.dumps(message.result), now, row.task_id))
        event(db, row.task_id, "completed", now, by=sender, fence=row.fence, attempt=row.attempt)
        send(db, fx, sender, TaskMessage("ack", row.task_id, fence=row.fence, of="complete", state="completed"), now)
        fx.states.add(row.task_id)
        return None
    if row.state == "completed" and row.claimer == sender and row.fence == message.fence:
        send(db, fx, sender, TaskMessage("ack", row.task_id, fence=row.fence, of="complete", state="completed"), now)
        return None
    return _refuse(db, fx, sender, message, row, _why_not(row, sender, message.fence), now)


def fail(db: sqlite3.Connection, fx: Effects, sender: str, message: TaskMessage, now: float) -> None:
    """The claimer gave up: offer the task again (attempt + 1) unless it was the last attempt or
    ``final``, then it is ``failed``; answer ``ack`` with the new state. Else refuse."""
    row = _row(db, message.task_id)
    if row is None:
        return _refuse(db, fx, sender, message, None, f"{message.task_id} is not a task posted here", now)
    if not (row.state == "claimed" and row.claimer == sender and row.fence == message.fence):
        return _refuse(db, fx, sender, message, row, _why_not(row, sender, message.fence), now)
    error = clean_text(message.error or "no reason given")
    event(db, row.task_id, "fail", now, by=sender, fence=row.fence, attempt=row.attempt,
          detail=("final: " if message.final else "") + error)
    state = _end_attempt(db, fx, row, f"{sender}: {error}", now, final=message.final)
    send(db, fx, sender, TaskMessage("ack", row.task_id, fence=row.fence, of="fail", state=state), now)
    return None


def _end_attempt(db: sqlite3.Connection, fx: Effects, row: TaskRow, error: str, now: float, *,
                 final: bool = False) -> str:
    """The current attempt ended without a result: ``failed`` when it was the last (or ``final``),
    else ``open`` again with attempt + 1, offered now. Returns the new state."""
    fx.states.add(row.task_id)
    if final or row.attempt >= row.spec.max_attempts:
        db.execute("UPDATE tasks SET state = 'failed', error = ?, lease_until = NULL, updated_at = ?,"
                   " next_offer_at = NULL WHERE task_id = ?", (error, now, row.task_id))
        why = "final failure" if final else f"{row.attempt} of {row.spec.max_attempts} attempts used"
        event(db, row.task_id, "failed", now, by=row.claimer, fence=row.fence, attempt=row.attempt,
              detail=f"{why}: {error}")
        return "failed"
    db.execute("UPDATE tasks SET state = 'open', claimer = NULL, attempt = attempt + 1, lease_until = NULL, error = ?,"
               " updated_at = ?, next_offer_at = ?, offers = 0 WHERE task_id = ?", (error, now, now, row.task_id))
    event(db, row.task_id, "reopened", now, by=row.claimer, fence=row.fence, attempt=row.attempt + 1, detail=error)
    return "open"


def expire(db: sqlite3.Connection, fx: Effects, now: float) -> int:
    """End every claim whose lease ran out by ``now``: the task is offered again (attempt + 1)
    or, after its last attempt, fails. Returns how many."""
    rows = [task_row(r) for r in db.execute("SELECT * FROM tasks WHERE state = 'claimed' AND lease_until <= ?",
                                            (now,))]
    for row in rows:
        event(db, row.task_id, "expired", now, by=row.claimer, fence=row.fence, attempt=row.attempt,
              detail=f"no renewal from {row.claimer} since the lease ended at {iso(row.lease_until)}")
        _end_attempt(db, fx, row, f"the lease of {row.claimer} (fence {row.fence}) expired", now)
    return len(rows)


def offer_due(db: sqlite3.Connection, fx: Effects, now: float, interval: float, maximum: float,
              limit: int = 500) -> int:
    """Offer every open task whose next offer is due (the first at once, then after ``interval``
    seconds, doubling up to ``maximum``). Returns how many."""
    rows = [task_row(r) for r in db.execute("SELECT * FROM tasks WHERE state = 'open' AND next_offer_at <= ?"
                                            " ORDER BY next_offer_at LIMIT ?", (now, limit))]
    for row in rows:
        delay = min(maximum, interval * 2.0 ** min(row.offers, 30))
        db.execute("UPDATE tasks SET offers = offers + 1, next_offer_at = ? WHERE task_id = ?",
                   (now + delay, row.task_id))
        spec = row.spec
        fx.offers.append(Offer(row.task_id, spec.owner, spec.type, spec.role, spec.capabilities, spec.swarm,
                               row.attempt, spec.lease, iso(now) or ""))
        if row.offers == 0:
            event(db, row.task_id, "offered", now, attempt=row.attempt)
    return len(rows)


def grace(db: sqlite3.Connection, fx: Effects, now: float) -> Sequence[str]:
    """The arbiter was away (stopped, or cut off from the broker): claimers could not renew, so
    every claim keeps its lease until at least ``now`` + the task's lease. Returns the tasks."""
    extended = []
    for row in [task_row(r) for r in db.execute("SELECT * FROM tasks WHERE state = 'claimed'")]:
        until = now + row.spec.lease
        if (row.lease_until or 0) < until:
            db.execute("UPDATE tasks SET lease_until = ? WHERE task_id = ?", (until, row.task_id))
            fx.states.add(row.task_id)
            extended.append(row.task_id)
    return extended
