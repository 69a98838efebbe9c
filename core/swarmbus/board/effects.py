"""What a transaction on the board leaves to do once it has committed.

The state machines (:mod:`.arbiter`, :mod:`.claimer`) change rows inside one transaction and
record here what follows from the change: protocol messages go into the ``outbound`` table in
that same transaction (so they are sent if and only if the change committed); state records to
publish, offers to publish, task runs to start or cancel and answers to hand to waiting callers
are collected in :class:`Effects` and carried out by the runtime after the commit.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from swarmbus.envelope import uuid4

from .wire import Offer, TaskMessage, TaskSpec, clean_text, subject_of

Key = tuple[str, str]
"""A claimed task: (owner, task id)."""


@dataclass
class Effects:
    states: set[str] = field(default_factory=set)
    """Tasks (posted here) whose state record changed: publish it."""
    offers: list[Offer] = field(default_factory=list)
    """Offers to publish."""
    runs: list[Key] = field(default_factory=list)
    """Claimed tasks a plugin handler should start running."""
    granted: list[Key] = field(default_factory=list)
    """Claimed tasks newly granted here (their lease is renewed from now on)."""
    cancels: list[Key] = field(default_factory=list)
    """Claimed tasks whose run must stop (the lease is lost)."""
    answered: dict[Key, tuple[str, str]] = field(default_factory=dict)
    """Claimed tasks whose completion or failure got the arbiter's answer: (the state here then,
    the answer), as it was at that moment (a later step in the same burst cannot change it)."""
    freed: bool = False
    """Claim capacity was freed (a claim refused, a task finished): take queued offers."""
    outbound: bool = False
    """Protocol messages were written to the ``outbound`` table."""


def send(db: sqlite3.Connection, fx: Effects, to: str, message: TaskMessage, now: float,
         spec: TaskSpec | None = None) -> str:
    """Queue ``message`` for ``to`` in the ``outbound`` table (sent once the transaction
    commits); a grant goes with the task's priority (it may wake a host), the rest ``low``."""
    message_id = uuid4()
    priority = spec.priority if message.op == "grant" and spec is not None else "low"
    db.execute("INSERT INTO outbound (id, to_agent, subject, body, priority, created_at) VALUES (?,?,?,?,?,?)",
               (message_id, to, subject_of(message, spec), message.encode(), priority, now))
    fx.outbound = True
    return message_id


def event(db: sqlite3.Connection, task_id: str, name: str, now: float, *, by: str | None = None,
          fence: int | None = None, attempt: int | None = None, detail: str = "") -> None:
    """Append one transition to ``task_events``."""
    db.execute("INSERT INTO task_events (task_id, at, event, by, fence, attempt, detail) VALUES (?,?,?,?,?,?,?)",
               (task_id, now, name, by, fence, attempt, clean_text(detail, 2000)))
