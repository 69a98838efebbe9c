"""The dashboard's in-memory model: what the sources said, as the page shows it.

:class:`DashboardState` is fed by the broker client (:meth:`~DashboardState.apply_item`, one
classified record at a time) and the store readers (:meth:`~DashboardState.apply_delta`), and
keeps one *view* (a JSON-ready dict) per agent, message, hold, quarantine row, job and task.
:meth:`~DashboardState.snapshot` is all of them (``/api/state``, and the first event of every
stream); every change of a view is an event ``(kind, view)`` put on each subscriber's queue
(``/api/events``). A view is sent only when it changed.

Everything runs on one asyncio event loop; other threads hand work over through an
:class:`Inlet`. Everything is bounded (the broker's records come from any peer): at most
:data:`MAX_AGENTS` agents, :data:`MAX_MESSAGES` messages, :data:`MAX_JOBS` jobs,
:data:`MAX_TASKS` tasks, :data:`MAX_QUARANTINE` quarantine rows (the oldest go first), and a
subscriber that falls :data:`SUBSCRIBER_BACKLOG` events behind is closed (its page reconnects
and gets a fresh snapshot).

Event kinds and their views (times in Unix seconds unless said otherwise):

- ``agent`` ``{"agent", "status": "online"|"offline"|"stale"|"unknown", "role", "capabilities",
  "swarm", "last_seen" (ISO 8601), "host", "pid", "version", "reason", "heartbeat_s", "local"}``;
  ``agent_removed`` ``{"agent"}``;
- ``message`` ``{"id", "from", "to", "subject", "priority", "ts", "preview", "first_seen",
  "sent_by", "received_by", "ladder": [{"step", "label", "reached", "at", "by", "detail"}],
  "steps", "handlers", "redelivery", "held"}``; ``message_removed`` ``{"id"}``;
- ``hold`` ``{"key", "agent", "seq", "id", "from", "subject", "until", "reason", "rule",
  "held_at"}`` (the operator's hold on every wake: ``seq`` None, ``rule`` ``manual``);
  ``hold_removed`` ``{"key"}``;
- ``quarantine`` ``{"key", "agent", "qid", "received_at", "topic", "reason", "message_id",
  "size", "preview"}``;
- ``job`` ``{"job_id", "owner", "delegate", "prompt", "payload", "created_at", "state",
  "events", "outcome", "updated_at", "conflict"}``; ``job_removed`` ``{"job_id"}``;
- ``task`` ``{"key", "task_id", "type", "owner", "role", "capabilities", "payload", "state",
  "claimer", "fence", "attempt", "max_attempts", "lease_until", "result", "error",
  "created_at", "updated_at", "history": [{"state", "claimer", "at"}]}``; ``task_removed``
  ``{"key"}``;
- ``malformed`` ``{"total", "counts": {"presence"|"jobs"|"tasks": n}, "recent": [{"topic",
  "reason", "at"}]}`` (at most once per :meth:`~DashboardState.tick`);
- ``status`` ``{"version", "started_at", "broker": {"url", "connected", "error", "refused"},
  "stores": {agent: {"ok", "error", "counters"}}, "dropped": {...}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from swarmbus._version import __version__
from swarmbus.dashboard.records import Item, JobEvent, JobRecord, TaskState, preview, seconds, text
from swarmbus.dashboard.stores import StoreDelta
from swarmbus.presence_records import Heartbeat, Presence

MAX_AGENTS = 1000
MAX_MESSAGES = 300
MAX_JOBS = 500
MAX_TASKS = 1000
MAX_QUARANTINE = 200
MAX_MALFORMED = 20
JOB_EVENTS = 20
TASK_HISTORY = 12
SUBSCRIBER_BACKLOG = 5000

LADDER = (("published", "published"), ("stored", "stored"), ("wake", "woken"), ("surfaced", "surfaced"),
          ("acknowledged", "acknowledged"), ("replied", "replied"))
"""The delivery ladder's steps, in order, with the page's label for each."""
_ORDER = {step: i for i, (step, _label) in enumerate(LADDER)}


class Subscriber:
    """One open event stream: a bounded queue of ``(seq, kind, view)``; None ends the stream
    (the server stops, or the subscriber fell behind)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[int, str, dict[str, Any]] | None] = asyncio.Queue(SUBSCRIBER_BACKLOG + 1)
        self.closed = False

    def put(self, event: tuple[int, str, dict[str, Any]] | None) -> None:
        if self.closed:
            return
        if event is None or self.queue.qsize() >= SUBSCRIBER_BACKLOG:
            self.closed = True
            event = None
        self.queue.put_nowait(event)


class Inlet:
    """Hands calls from other threads (the broker client's) to the event loop, in order; calls
    made before :meth:`attach` wait for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[tuple[Callable[..., None], tuple[Any, ...]]] = []

    def call(self, fn: Callable[..., None], *args: Any) -> None:
        with self._lock:
            if self._loop is None:
                self._pending.append((fn, args))
                return
            with contextlib.suppress(RuntimeError):  # the loop closed: the server is stopping
                self._loop.call_soon_threadsafe(fn, *args)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            self._loop = loop
            pending, self._pending = self._pending, []
            for fn, args in pending:
                loop.call_soon_threadsafe(fn, *args)


@dataclass
class _Message:
    id: str
    head: dict[str, Any]
    first_seen: float
    sent_by: str | None = None
    spooled_at: float | None = None
    published_at: float | None = None
    redelivery: dict[str, Any] | None = None
    received: dict[str, dict[str, Any]] = field(default_factory=dict)
    handlers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    steps: dict[tuple[str, str], tuple[float, str]] = field(default_factory=dict)


@dataclass
class _Job:
    job_id: str
    first_seen: float
    record: JobRecord | None = None
    conflict: list[str] = field(default_factory=list)
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=JOB_EVENTS))
    outcome: JobEvent | None = None
    updated: float = 0.0


def _event_view(e: JobEvent) -> dict[str, Any]:
    return {"event": e.event, "detail": text(e.detail), "by": e.by, "at": text(e.at, 64)}


class DashboardState:
    """The model. ``clock`` gives Unix seconds (tests pass their own)."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.started_at = clock()
        self._seq = 0
        self._subscribers: set[Subscriber] = set()
        # agents
        self._presence: dict[str, Presence] = {}
        self._extras: dict[str, dict[str, Any]] = {}
        self._beats: dict[str, Heartbeat] = {}
        self._local: set[str] = set()
        self.agents: dict[str, dict[str, Any]] = {}
        # messages, holds, quarantine
        self._messages: dict[str, _Message] = {}
        self.messages: dict[str, dict[str, Any]] = {}
        self.holds: dict[str, dict[str, Any]] = {}
        self.quarantine: deque[dict[str, Any]] = deque(maxlen=MAX_QUARANTINE)
        # jobs, tasks, malformed records
        self._jobs: dict[str, _Job] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, dict[str, Any]] = {}
        self.malformed_counts: dict[str, int] = {}
        self.malformed_recent: deque[dict[str, Any]] = deque(maxlen=MAX_MALFORMED)
        self._malformed_dirty = False
        # where it all comes from
        self.broker: dict[str, Any] = {"url": None, "connected": False, "error": None, "refused": []}
        self.stores: dict[str, dict[str, Any]] = {}
        self.dropped: dict[str, int] = {}

    # -- subscribers ----------------------------------------------------------------------------------
    def subscribe(self) -> tuple[Subscriber, dict[str, Any]]:
        """A new subscriber and the snapshot its events follow (taken at the same moment)."""
        sub = Subscriber()
        self._subscribers.add(sub)
        return sub, self.snapshot()

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    def close_all(self) -> None:
        """End every open stream (the server is stopping)."""
        for sub in list(self._subscribers):
            sub.put(None)
        self._subscribers.clear()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def _emit(self, kind: str, view: dict[str, Any]) -> None:
        self._seq += 1
        event = (self._seq, kind, view)
        for sub in list(self._subscribers):
            sub.put(event)
            if sub.closed:
                self._subscribers.discard(sub)

    def snapshot(self) -> dict[str, Any]:
        """Everything, JSON-ready: ``{"seq", "now", "status", "agents", "messages", "holds",
        "quarantine", "jobs", "tasks", "malformed"}`` (lists of the views above; messages
        newest first)."""
        return {
            "seq": self._seq,
            "now": self.clock(),
            "status": self._status_view(),
            "agents": [self.agents[a] for a in sorted(self.agents)],
            "messages": sorted(self.messages.values(), key=lambda m: m["first_seen"], reverse=True),
            "holds": sorted(self.holds.values(), key=lambda h: (h["agent"], h["until"] or 0)),
            "quarantine": list(self.quarantine),
            "jobs": sorted(self.jobs.values(), key=lambda j: j["updated_at"], reverse=True),
            "tasks": sorted(self.tasks.values(), key=lambda t: t["key"]),
            "malformed": self._malformed_view(),
        }

    # -- status ---------------------------------------------------------------------------------------
    def _status_view(self) -> dict[str, Any]:
        return {"version": __version__, "started_at": self.started_at, "broker": dict(self.broker),
                "stores": {a: dict(s) for a, s in sorted(self.stores.items())}, "dropped": dict(self.dropped)}

    def set_broker(self, *, url: str | None = None, connected: bool | None = None, error: str | None = None,
                   refused: list[str] | None = None) -> None:
        """Record the broker connection's state (None: unchanged; ``error`` is set as given)."""
        new = dict(self.broker)
        if url is not None:
            new["url"] = url
        if connected is not None:
            new["connected"] = connected
            new["error"] = text(error, 200)
        if refused is not None:
            new["refused"] = refused
        if new != self.broker:
            self.broker = new
            self._emit("status", self._status_view())

    def set_store(self, agent: str, error: str | None, counters: dict[str, int] | None = None) -> None:
        """Record whether ``agent``'s store could be read (``error`` None: it could)."""
        old = self.stores.get(agent, {})
        new = {"ok": error is None, "error": text(error, 300),
               "counters": counters if counters is not None else old.get("counters", {})}
        if new != old:
            self.stores[agent] = new
            self._emit("status", self._status_view())

    def _drop(self, what: str) -> None:
        self.dropped[what] = self.dropped.get(what, 0) + 1

    # -- agents ---------------------------------------------------------------------------------------
    def set_local_agents(self, agents: list[str]) -> None:
        """The agents whose stores are on this machine (shown even without a presence record)."""
        new = set(agents)
        changed = new ^ self._local
        self._local = new
        for agent in sorted(changed):
            self._refresh_agent(agent)

    def _agent_view(self, agent: str, now: float) -> dict[str, Any] | None:
        record = self._presence.get(agent)
        local = agent in self._local
        if record is None:
            if not local:
                return None
            return {"agent": agent, "status": "unknown", "role": None, "capabilities": [], "swarm": None,
                    "last_seen": None, "host": None, "pid": None, "version": None, "reason": None,
                    "heartbeat_s": None, "local": True}
        beat = self._beats.get(agent)
        if beat is not None and (record.instance is None or beat.instance == record.instance):
            record = replace(record, last_beat=beat.ts)
        status = record.status
        seen = seconds(record.last_seen)
        if record.online and seen is not None and record.heartbeat_s is not None and \
                now - seen > 3 * record.heartbeat_s:
            status = "stale"
        extras = self._extras.get(agent, {})
        return {"agent": agent, "status": status, "role": extras.get("role"),
                "capabilities": extras.get("capabilities", []), "swarm": extras.get("swarm"),
                "last_seen": record.last_seen, "host": record.host, "pid": record.pid, "version": record.version,
                "reason": record.reason, "heartbeat_s": record.heartbeat_s, "local": local}

    def _refresh_agent(self, agent: str) -> None:
        view = self._agent_view(agent, self.clock())
        if view is None:
            if self.agents.pop(agent, None) is not None:
                self._emit("agent_removed", {"agent": agent})
        elif view != self.agents.get(agent):
            self.agents[agent] = view
            self._emit("agent", view)

    # -- the broker's records -------------------------------------------------------------------------
    def apply_item(self, item: Item) -> None:
        """Take one classified record from the broker."""
        if item.kind == "malformed":
            family = item.topic.split("/")[1] if item.topic.startswith("swarmbus/") else "presence"
            self.malformed_counts[family] = self.malformed_counts.get(family, 0) + 1
            self.malformed_recent.append({"topic": text(item.topic, 200), "reason": text(item.reason, 300),
                                          "at": self.clock()})
            self._malformed_dirty = True
        elif item.kind in ("presence", "heartbeat"):
            self._presence_item(item)
        elif item.kind == "task":
            self._task_item(item)
        else:
            self._job_item(item)

    def _presence_item(self, item: Item) -> None:
        agent = item.key
        known = self._presence if item.kind == "presence" else self._beats
        if item.value is not None and agent not in known and len(known) >= MAX_AGENTS:
            self._drop("agents")
            return
        if item.kind == "presence":
            if item.value is None:
                self._presence.pop(agent, None)
                self._extras.pop(agent, None)
            else:
                self._presence[agent] = item.value
                self._extras[agent] = item.extras or {}
        elif item.value is None:
            self._beats.pop(agent, None)
        else:
            self._beats[agent] = item.value
        self._refresh_agent(agent)

    def _task_item(self, item: Item) -> None:
        key = item.key
        value = item.value
        if value is None:
            if self.tasks.pop(key, None) is not None:
                self._emit("task_removed", {"key": key})
            return
        assert isinstance(value, TaskState)
        old = self.tasks.get(key)
        if old is None and len(self.tasks) >= MAX_TASKS:
            self._drop("tasks")
            return
        history = list(old["history"]) if old else []
        if not history or history[-1]["state"] != value.state or history[-1]["claimer"] != value.claimer:
            history = [*history, {"state": value.state, "claimer": value.claimer, "at": self.clock()}][-TASK_HISTORY:]
        view = {"key": key, "task_id": value.task_id, "type": text(value.type, 200), "owner": value.owner,
                "role": text(value.role, 200), "capabilities": [text(c, 64) for c in value.capabilities],
                "payload": preview(value.payload), "state": value.state, "claimer": value.claimer,
                "fence": value.fence, "attempt": value.attempt, "max_attempts": value.max_attempts,
                "lease_until": text(value.lease_until, 64), "result": preview(value.result),
                "error": preview(value.error), "created_at": text(value.created_at, 64),
                "updated_at": text(value.updated_at, 64), "history": history}
        if view != old:
            self.tasks[key] = view
            self._emit("task", view)

    def _job_item(self, item: Item) -> None:
        job_id = item.key
        job = self._jobs.get(job_id)
        if job is None:
            if item.value is None:
                return
            if len(self._jobs) >= MAX_JOBS:
                oldest = min(self._jobs.values(), key=lambda j: j.updated)
                self._remove_job(oldest.job_id)
                self._drop("jobs")
            job = self._jobs[job_id] = _Job(job_id, self.clock())
        if item.kind == "job_record":
            record = item.value
            if record is None:
                if job.record is not None and job.record.owner == item.segment:
                    job.record = None
            elif job.record is None or job.record.owner == record.owner:
                job.record = record
            elif record.owner not in job.conflict and len(job.conflict) < 10:
                job.conflict.append(record.owner)
        elif item.kind == "job_outcome":
            if item.value is None:
                if job.outcome is not None and job.outcome.by == item.segment:
                    job.outcome = None
            else:
                job.outcome = item.value
        else:
            job.events.append(_event_view(item.value))
        job.updated = self.clock()
        if job.record is None and job.outcome is None and not job.events:
            self._remove_job(job_id)
            return
        view = self._job_view(job)
        if view != self.jobs.get(job_id):
            self.jobs[job_id] = view
            self._emit("job", view)

    def _remove_job(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)
        if self.jobs.pop(job_id, None) is not None:
            self._emit("job_removed", {"job_id": job_id})

    def _job_view(self, job: _Job) -> dict[str, Any]:
        r = job.record
        state: str
        if job.outcome is not None:
            state = job.outcome.event
        elif job.events:
            state = job.events[-1]["event"]
        else:
            state = "submitted"
        return {"job_id": job.job_id, "owner": r.owner if r else None, "delegate": r.delegate if r else None,
                "prompt": text(r.prompt) if r else None, "payload": preview(r.payload) if r else None,
                "created_at": text(r.created_at, 64) if r else None, "state": state, "events": list(job.events),
                "outcome": _event_view(job.outcome) if job.outcome else None, "updated_at": job.updated,
                "conflict": list(job.conflict)}

    def _malformed_view(self) -> dict[str, Any]:
        return {"total": sum(self.malformed_counts.values()), "counts": dict(self.malformed_counts),
                "recent": list(self.malformed_recent)}

    # -- the stores -----------------------------------------------------------------------------------
    def apply_delta(self, delta: StoreDelta) -> None:
        """Take what one poll of ``delta.agent``'s store found."""
        agent = delta.agent
        touched: set[str] = set()
        for row in delta.received:
            msg = self._message(row["id"], row, row["stored_at"])
            msg.received[agent] = {"seq": row["seq"], "stored_at": row["stored_at"]}
            touched.add(msg.id)
        for row in delta.sent:
            msg = self._message(row["id"], row, row["spooled_at"])
            msg.sent_by, msg.spooled_at, msg.published_at = agent, row["spooled_at"], row["published_at"]
            touched.add(msg.id)
        for step in delta.steps:
            known_msg = self._messages.get(step["id"])
            if known_msg is None:
                continue
            key = (str(step["step"]), str(step["by"]))
            known = known_msg.steps.get(key)
            if known is None or step["at"] < known[0]:
                known_msg.steps[key] = (float(step["at"]), str(step["detail"] or ""))
                touched.add(known_msg.id)
        for message_id, handlers in delta.handlers.items():
            known_msg = self._messages.get(message_id)
            if known_msg is not None and agent in known_msg.received and known_msg.handlers.get(agent) != handlers:
                known_msg.handlers[agent] = handlers
                touched.add(message_id)
        for message_id, at in delta.published.items():
            known_msg = self._messages.get(message_id)
            if known_msg is not None and known_msg.sent_by == agent and known_msg.published_at != at:
                known_msg.published_at = at
                touched.add(message_id)
        for message_id, redelivery in delta.redeliveries.items():
            known_msg = self._messages.get(message_id)
            if known_msg is not None and known_msg.sent_by == agent and known_msg.redelivery != redelivery:
                known_msg.redelivery = redelivery
                touched.add(message_id)
        touched |= self._apply_holds(agent, delta)
        for row in delta.quarantine:
            view = {"key": f"{agent}/{row['qid']}", "agent": agent, **row}
            self.quarantine.append(view)
            self._emit("quarantine", view)
        for message_id in sorted(touched, key=lambda i: self._messages[i].first_seen if i in self._messages else 0):
            self._refresh_message(message_id)
        self._evict_messages()
        self.set_store(agent, None, delta.counters)

    def _message(self, message_id: str, row: dict[str, Any], at: float) -> _Message:
        msg = self._messages.get(message_id)
        if msg is None:
            msg = self._messages[message_id] = _Message(message_id, {}, at)
        msg.first_seen = min(msg.first_seen, at)
        for key in ("from", "to", "subject", "priority", "ts", "preview"):
            if msg.head.get(key) is None and row.get(key) is not None:
                msg.head[key] = row[key]
        return msg

    def _apply_holds(self, agent: str, delta: StoreDelta) -> set[str]:
        new: dict[str, dict[str, Any]] = {}
        for h in delta.holds:
            key = f"{agent}/{h['seq']}"
            new[key] = {"key": key, "agent": agent, "seq": h["seq"], "id": h["id"], "from": h["from"],
                        "subject": text(h["subject"]), "until": h["until"], "reason": text(h["reason"], 500),
                        "rule": h["rule"], "held_at": h["held_at"]}
        manual = delta.manual_hold
        if manual is not None and (manual["until"] is None or manual["until"] > self.clock()):
            key = f"{agent}/manual"
            new[key] = {"key": key, "agent": agent, "seq": None, "id": None, "from": None,
                        "subject": "every wake of this agent", "until": manual["until"], "reason": manual["reason"],
                        "rule": "manual", "held_at": manual["since"]}
        touched: set[str] = set()
        prefix = f"{agent}/"
        for key in [k for k in self.holds if k.startswith(prefix) and k not in new]:
            old = self.holds.pop(key)
            if old["id"]:
                touched.add(old["id"])
            self._emit("hold_removed", {"key": key})
        for key, view in new.items():
            if self.holds.get(key) != view:
                self.holds[key] = view
                if view["id"]:
                    touched.add(view["id"])
                self._emit("hold", view)
        return {t for t in touched if t in self._messages}

    def _refresh_message(self, message_id: str) -> None:
        msg = self._messages.get(message_id)
        if msg is None:
            return
        view = self._message_view(msg)
        if view != self.messages.get(message_id):
            self.messages[message_id] = view
            self._emit("message", view)

    def _message_view(self, msg: _Message) -> dict[str, Any]:
        steps: dict[tuple[str, str], tuple[float, str]] = dict(msg.steps)
        if msg.sent_by is not None and msg.published_at is not None:
            steps.setdefault(("published", msg.sent_by), (msg.published_at, ""))
        for agent, got in msg.received.items():
            known = steps.get(("stored", agent))
            if known is None or got["stored_at"] < known[0]:
                steps[("stored", agent)] = (got["stored_at"], "")
        ordered = sorted(steps.items(), key=lambda kv: (_ORDER.get(kv[0][0], len(_ORDER)), kv[1][0], kv[0][1]))
        rows = [{"step": s, "by": by, "at": at, "detail": text(detail)} for (s, by), (at, detail) in ordered]
        ladder = []
        for step, label in LADDER:
            mine = [(at, by, detail) for (s, by), (at, detail) in ordered if s == step]
            ladder.append({"step": step, "label": label, "reached": bool(mine),
                           "at": min(at for at, _by, _d in mine) if mine else None,
                           "by": sorted({by for _at, by, _d in mine}),
                           "detail": next((text(d) for _at, _by, d in mine if d), None)})
        handlers = [{"agent": agent, **{k: (text(v) if k == "detail" else v) for k, v in h.items()}}
                    for agent, hs in sorted(msg.handlers.items()) for h in hs]
        held = [{"agent": h["agent"], "until": h["until"], "reason": h["reason"], "rule": h["rule"]}
                for h in self.holds.values() if h["id"] == msg.id]
        head = msg.head
        return {"id": msg.id, "from": head.get("from"), "to": head.get("to"), "subject": text(head.get("subject")),
                "priority": head.get("priority"), "ts": head.get("ts"), "preview": head.get("preview"),
                "first_seen": msg.first_seen, "sent_by": msg.sent_by, "received_by": sorted(msg.received),
                "ladder": ladder, "steps": rows, "handlers": handlers, "redelivery": msg.redelivery, "held": held}

    def _evict_messages(self) -> None:
        if len(self._messages) <= MAX_MESSAGES:
            return
        for msg in sorted(self._messages.values(), key=lambda m: m.first_seen)[:len(self._messages) - MAX_MESSAGES]:
            del self._messages[msg.id]
            if self.messages.pop(msg.id, None) is not None:
                self._emit("message_removed", {"id": msg.id})

    # -- time -----------------------------------------------------------------------------------------
    def tick(self) -> None:
        """Once a second: agents that turned stale, operator holds that ended, and the malformed
        summary when new malformed records came."""
        for agent in list(self.agents):
            self._refresh_agent(agent)
        now = self.clock()
        for key in [k for k, h in self.holds.items() if h["rule"] == "manual" and h["until"] is not None
                    and h["until"] <= now]:
            del self.holds[key]
            self._emit("hold_removed", {"key": key})
        if self._malformed_dirty:
            self._malformed_dirty = False
            self._emit("malformed", self._malformed_view())
