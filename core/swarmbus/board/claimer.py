"""The claimer: this agent's side of the tasks it claims, one transaction per step.

::

    offer ──► claiming ──grant──► running ──(plugin handler returns / `task complete`)──► completing ──ack──► done
                 │                   │    ──(handler raises / `task fail`)──────────────► failing ────ack──► done
                 │                   │                                                       │
                 └─refuse─► refused  └─renewal refused (lease lost)─► lost ◄──refuse (stale fence)─┘
                 └─no answer in CLAIM_TIMEOUT─► abandoned (a late grant is still taken)

A ``running`` task is either run by a plugin's :class:`swarmbus.TaskHandler` for its type, or
held for the host agent (the grant is stored as an ordinary message, so the wake policy decides
whether to wake it; the host completes it with ``swarmbus task complete``). While the task is
held the runtime renews its lease; a refused renewal means the lease ended (the arbiter offered
the task again) and the run is cancelled. The arbiter's answer to a completion or failure
(``ack`` or ``refuse``) is kept in ``answer``, where ``swarmbus task complete`` finds it.
"""

from __future__ import annotations

import json
import sqlite3

from .effects import Effects, Key, send
from .ledger import WorkRow, work_row
from .wire import Offer, TaskMessage, dumps

ACTIVE = ("claiming", "running", "completing", "failing")
"""States in which a task occupies capacity here (and is renewed, from ``running`` on)."""
HELD = ("running", "completing", "failing")
CLAIM_TIMEOUT = 30.0
"""Seconds a claim waits for the arbiter's answer before its capacity is freed (a grant that
comes later is still taken)."""


def _row(db: sqlite3.Connection, key: Key) -> WorkRow | None:
    found = db.execute("SELECT * FROM work WHERE owner = ? AND task_id = ?", key).fetchone()
    return work_row(found) if found is not None else None


def claim(db: sqlite3.Connection, fx: Effects, offer: Offer, host: bool, role: str | None,
          capabilities: tuple[str, ...], swarm: str | None, now: float) -> bool:
    """Claim an offered task (``claiming``, and the claim message); False when this agent
    already claims or holds it."""
    row = _row(db, (offer.owner, offer.task_id))
    if row is not None and row.state in ACTIVE:
        return False
    db.execute("INSERT INTO work (owner, task_id, type, state, host, attempt, lease, claimed_at, updated_at)"
               " VALUES (?, ?, ?, 'claiming', ?, ?, ?, ?, ?) ON CONFLICT(owner, task_id) DO UPDATE SET"
               " state = 'claiming', host = excluded.host, attempt = excluded.attempt, answer = NULL,"
               " claimed_at = excluded.claimed_at, updated_at = excluded.updated_at",
               (offer.owner, offer.task_id, offer.type, int(host), offer.attempt, offer.lease, now, now))
    send(db, fx, offer.owner, TaskMessage("claim", offer.task_id, attempt=offer.attempt, role=role,
                                          capabilities=capabilities, swarm=swarm), now)
    return True


def grant(db: sqlite3.Connection, fx: Effects, owner: str, message: TaskMessage, host: bool, now: float) -> bool:
    """The arbiter granted a claim: the task is ``running`` here with the grant's fence (a plugin
    run starts, or the host holds it). Returns True for a new grant; False for one already taken
    (the same fence again) or one nobody here asked for (ignored: the lease then runs out)."""
    spec = message.task
    assert spec is not None and message.fence is not None
    key = (owner, message.task_id)
    row = _row(db, key)
    if row is None or (row.state in HELD and row.fence == message.fence):
        return False
    if row.fence is not None and message.fence < row.fence:
        return False  # an old grant, redelivered late
    db.execute("UPDATE work SET state = 'running', type = ?, host = ?, spec = ?, fence = ?, attempt = ?, lease = ?,"
               " lease_until = ?, result = NULL, error = NULL, final = 0, answer = NULL, updated_at = ?"
               " WHERE owner = ? AND task_id = ?",
               (spec.type, int(host), dumps(spec.to_json()), message.fence, message.attempt, spec.lease,
                now + spec.lease, now, owner, message.task_id))
    fx.granted.append(key)
    if not host:
        fx.runs.append(key)
    return True


def refused(db: sqlite3.Connection, fx: Effects, owner: str, message: TaskMessage, now: float) -> None:
    """The arbiter refused a claim (lost the race: ``refused``), a renewal (the lease is gone:
    ``lost``, the run is cancelled) or a completion or failure (``lost``, with the reason as the
    answer). A refusal that matches nothing here changes nothing."""
    key = (owner, message.task_id)
    row = _row(db, key)
    if row is None:
        return
    reason = message.reason or "no reason given"
    if message.of == "claim":
        if row.state in ("claiming", "abandoned"):
            _set(db, key, "refused", now, answer=f"claim refused: {reason}")
            fx.freed = True
        return
    if row.fence != message.fence or row.state not in HELD:
        return
    answer = f"{message.of} refused: {reason}"
    _set(db, key, "lost", now, answer=answer, outcome=answer)
    fx.freed = True
    if message.of == "renew":
        fx.cancels.append(key)
    else:
        fx.answered[key] = ("lost", answer)


def acked(db: sqlite3.Connection, fx: Effects, owner: str, message: TaskMessage, now: float) -> None:
    """The arbiter accepted this agent's completion or failure: ``done``."""
    key = (owner, message.task_id)
    row = _row(db, key)
    if row is None or row.fence != message.fence or row.state not in ("completing", "failing"):
        return
    answer = f"{message.of} accepted: the task is {message.state}"
    _set(db, key, "done", now, answer=answer, outcome=answer)
    fx.answered[key] = ("done", answer)
    fx.freed = True


def finish(db: sqlite3.Connection, fx: Effects, key: Key, now: float, *, result: object = None,
           error: str | None = None, final: bool = False) -> str | None:
    """Send this agent's completion (``error`` None: with ``result``) or failure of a task it
    holds; None when sent, else why not (it is not held here, or the lease is already lost)."""
    row = _row(db, key)
    if row is None:
        return f"this agent never claimed {key[1]}"
    if row.state == "lost":
        return row.answer or "the lease was lost"
    if row.state != "running" or row.fence is None:
        said = row.outcome or row.answer
        return f"{key[1]} is {row.state} here, not running" + (f" (the arbiter said: {said})" if said else "")
    if error is None:
        db.execute("UPDATE work SET state = 'completing', result = ?, updated_at = ? WHERE owner = ? AND task_id = ?",
                   (json.dumps(result), now, *key))
        send(db, fx, key[0], TaskMessage("complete", key[1], fence=row.fence, result=result), now)
    else:
        db.execute("UPDATE work SET state = 'failing', error = ?, final = ?, updated_at = ? WHERE owner = ? AND"
                   " task_id = ?", (error, int(final), now, *key))
        send(db, fx, key[0], TaskMessage("fail", key[1], fence=row.fence, error=error, final=final), now)
    return None


def abandon_stale_claims(db: sqlite3.Connection, fx: Effects, now: float) -> int:
    """Claims unanswered for :data:`CLAIM_TIMEOUT` seconds free their capacity (``abandoned``)."""
    count = db.execute("UPDATE work SET state = 'abandoned', answer = 'no answer to the claim', updated_at = ?"
                       " WHERE state = 'claiming' AND claimed_at < ?", (now, now - CLAIM_TIMEOUT)).rowcount
    if count:
        fx.freed = True
    return int(count)


def _set(db: sqlite3.Connection, key: Key, state: str, now: float, *, answer: str | None = None,
         outcome: str | None = None) -> None:
    db.execute("UPDATE work SET state = ?, answer = COALESCE(?, answer), outcome = COALESCE(?, outcome), updated_at = ?"
               " WHERE owner = ? AND task_id = ?", (state, answer, outcome, now, *key))
