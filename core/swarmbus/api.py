"""Value types shared by the core and by plugins (the names re-exported from ``swarmbus``).

They are plain frozen dataclasses: no IO, no transport types, nothing that ties a plugin to
paho-mqtt or to the daemon's internals.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from swarmbus.envelope import Envelope

if TYPE_CHECKING:
    from swarmbus.provision import Change
    from swarmbus.settings import Settings


@dataclass(frozen=True)
class StoredMessage:
    """A message committed to the local store.

    ``seq`` is the store's monotonically increasing sequence number (per agent), ``topic``
    the MQTT topic it arrived on, ``received_at`` Unix seconds at commit. ``redelivered`` is
    True when this message is being dispatched again after the daemon restarted before it
    recorded the outcome: a handler with an outside effect may have run already and should
    check before repeating it (the built-in archive does; wakes are at-least-once).
    """

    seq: int
    envelope: Envelope
    topic: str
    received_at: float
    redelivered: bool = False

    @property
    def id(self) -> str:
        return self.envelope.id

    @property
    def from_agent(self) -> str:
        return self.envelope.from_agent

    @property
    def subject(self) -> str:
        return self.envelope.subject

    @property
    def body(self) -> str:
        return self.envelope.body

    @property
    def priority(self) -> str:
        return self.envelope.priority

    @property
    def is_broadcast(self) -> bool:
        return self.envelope.is_broadcast

    def to_json(self) -> dict[str, Any]:
        """The envelope's wire fields plus ``seq``, ``topic`` and ``received_at``."""
        out = self.envelope.to_dict()
        out.update(seq=self.seq, topic=self.topic, received_at=self.received_at)
        return out


@dataclass(frozen=True)
class WakeDecision:
    """The answer of ``swarmbus_wake_decision``: wake the host agent, or not, and why.

    When the built-in ``wake`` handler hands a decision to ``swarmbus_wake`` it may carry
    ``batch``: the other stored messages woken in the same wake, in seq order, not including
    the ``message`` argument (the oldest). Only a waker that takes coalesced wakes
    (``swarmbus_wake_coalesce`` answers True) gets a non-empty batch: messages that arrived
    while its previous wake ran, within ``wake.debounce``, or held messages released together.
    Every message of the batch is recorded as woken by this wake (``swarmbus inbox``).
    """

    wake: bool
    reason: str
    batch: tuple[StoredMessage, ...] = ()


@dataclass(frozen=True)
class DeliveryEvent:
    """One recorded step of a message's delivery ladder (``swarmbus_delivery_event``).

    ``step`` is ``published``, ``stored``, ``wake``, ``surfaced``, ``acknowledged`` or
    ``replied`` (in ladder order; docs/protocol.md, "Delivery receipts"), or, on the sending
    side, ``gave up`` when redelivery stopped without a ``stored`` receipt. ``side`` is ``sent``
    (this agent sent the message: the step was reported by a receipt, or is its own
    ``published``/``gave up``) or ``received`` (this agent received it). ``by`` is the agent that
    reached the step, ``peer`` the other end (the recipient or ``broadcast`` for ``sent``, the
    sender for ``received``), ``at`` Unix seconds, ``detail`` free text (e.g. the wake outcome).
    """

    message_id: str
    step: str
    side: Literal["sent", "received"]
    by: str
    peer: str
    at: float
    detail: str = ""


VerdictAction = Literal["allow", "skip", "hold"]


@dataclass(frozen=True)
class Verdict:
    """One wake rule's answer (``swarmbus_wake_filter``): ``allow`` (no objection), ``skip``
    (a permanent veto: this message never wakes the host) or ``hold`` (a veto for now: wake it
    at ``until``, Unix seconds, when the rules are asked again). ``rule`` names the rule for
    ``swarmbus inbox`` and ``swarmbus policy explain``.

    Build them with :meth:`allow`, :meth:`skip` and :meth:`hold`; combine several with
    :func:`combine_verdicts`.
    """

    action: VerdictAction
    reason: str = ""
    until: float | None = None
    rule: str = ""

    @classmethod
    def allow(cls, reason: str = "", *, rule: str = "") -> Verdict:
        return cls("allow", reason, None, rule)

    @classmethod
    def skip(cls, reason: str, *, rule: str = "") -> Verdict:
        return cls("skip", reason, None, rule)

    @classmethod
    def hold(cls, reason: str, until: float, *, rule: str = "") -> Verdict:
        """:raises ValueError: ``until`` is not a finite number."""
        if until != until or until in (float("inf"), float("-inf")):
            raise ValueError(f"hold until must be a finite Unix time, not {until!r}")
        return cls("hold", reason, float(until), rule)


def combine_verdicts(verdicts: Sequence[Verdict]) -> Verdict:
    """Any veto wins: the first ``skip`` if there is one; else the ``hold`` with the latest
    ``until`` (its reason; the message can wake only when every hold is over); else ``allow``."""
    held: Verdict | None = None
    for verdict in verdicts:
        if verdict.action == "skip":
            return verdict
        if verdict.action == "hold" and (held is None or (verdict.until or 0) > (held.until or 0)):
            held = verdict
    return held if held is not None else Verdict.allow("no rule objects", rule="chain")


class PolicyState(Protocol):
    """What wake rules may read about the past (``swarmbus_wake_filter``'s ``state``): a small
    read-only view over the daemon's persisted wake history and recent traffic. Times are Unix
    seconds; every sequence is oldest first."""

    def wake_times(self, since: float, sender: str | None = None) -> Sequence[float]:
        """When the host agent was woken at or after ``since`` (for ``sender``'s messages only,
        when given). A coalesced wake counts once per sender it woke for."""
        ...

    def exchange_times(self, peer: str, since: float) -> Sequence[float]:
        """When a message went between this agent and ``peer`` (either way) at or after ``since``."""
        ...

    def last_message_from(self, senders: Collection[str]) -> float | None:
        """When the newest message from any of ``senders`` arrived, or None."""
        ...


def wake(reason: str) -> WakeDecision:
    """A decision to wake the host agent."""
    return WakeDecision(True, reason)


def skip(reason: str) -> WakeDecision:
    """A decision not to wake the host agent (the message stays stored and readable)."""
    return WakeDecision(False, reason)


@dataclass(frozen=True)
class WakeOutcome:
    """What a wake did. ``ok`` False is recorded as a failed delivery with ``detail``."""

    ok: bool
    detail: str = ""
    exit_code: int | None = None


SendFunc = Callable[..., Awaitable[str]]


@dataclass(frozen=True)
class HostSession:
    """A live session of a host agent that can take wakes directly (``swarmbus_host_session``):
    e.g. an interactive Claude Code session's inbox socket.

    ``host`` is the host type (``cc``); ``session_id`` the host's own id for it; ``pid`` the
    host process (the registration ends when it exits); ``endpoint`` what a waker needs to reach
    it (for ``cc``: ``socket`` and ``token``; private: never logged or shown). ``registered_at``
    and ``refreshed_at`` are Unix seconds, set by the daemon.
    """

    host: str
    session_id: str
    pid: int
    endpoint: Mapping[str, str] = field(default_factory=dict, repr=False)
    registered_at: float = 0.0
    refreshed_at: float = 0.0


WakeFunc = Callable[[list[StoredMessage], "HandlerContext"], Awaitable[WakeOutcome]]
ProbeFunc = Callable[["HandlerContext"], Awaitable[str | None]]


@dataclass(frozen=True)
class WakePath:
    """One way a host plugin can wake its agent (``swarmbus_wake_paths``), for the wake router
    (:func:`swarmbus.wake_router.wake_by_paths`).

    ``probe(context)`` answers quickly whether the path could fire now: None when ready, else
    why not (``"no live session"``); it must not wake anything. ``wake(messages, context)``
    wakes the host for the messages (the first and any coalesced with it) and returns a
    :class:`WakeOutcome` whose ``ok`` says whether the host confirmed it. ``test`` (optional)
    proves the path end to end without a model call where the host allows it (``swarmbus wake
    test``): None when it worked, else why not; leave it None when the host allows no such test.
    ``timeout`` (seconds) overrides the router's per-attempt timeout for this path's wake (a
    headless run takes longer than a post to a socket).
    """

    name: str
    probe: ProbeFunc
    wake: WakeFunc
    description: str = ""
    test: ProbeFunc | None = None
    timeout: float | None = None


MarkStepFunc = Callable[..., int]
"""``(message_ids: Iterable[str], step: str, detail: str = "") -> int`` (see ``HandlerContext.mark_step``)."""


@dataclass(frozen=True)
class HandlerContext:
    """What a handler gets besides the message.

    ``send(to, subject, body, *, content_type=..., priority=..., reply_to=..., in_reply_to=...)``
    publishes through the daemon's own connection and durable outbox and returns the new
    message id. ``hooks`` is the daemon's :class:`swarmbus.plugins.HookRelay`.
    """

    agent_id: str
    settings: Settings
    logger: logging.Logger
    send: SendFunc
    hooks: Any
    attention: Any = None
    """The daemon's wake bookkeeping (holds, wake history; internal), None outside a daemon."""
    mark_step: MarkStepFunc | None = None
    """``mark_step(message_ids, step, detail="") -> int``: record a later step of the delivery
    ladder for stored messages by id: ``surfaced`` (a host showed them to the model, e.g. a
    gateway accepted the run) or ``acknowledged``. Each step is recorded once per message (and
    its receipt sent when the sender asked); returns how many were new. Raises ValueError for
    another step. None outside a daemon."""
    watch_presence: Callable[[Collection[str]], None] | None = None
    """``watch_presence(agent_ids)``: ask the daemon to follow these agents' retained presence
    records from now on (idempotent; the daemon's own id and non-agent ids are ignored). Read
    them with :attr:`presence`; changes are ``peer_online``/``peer_offline`` operator events
    (``swarmbus_operator_event``). None outside a daemon."""
    host_sessions: Callable[[str], list[HostSession]] | None = None
    """``host_sessions(host) -> [HostSession]``: the live sessions registered for host type
    ``host`` (by the swarmbus MCP server running inside them), most recently registered first;
    a session whose process has exited is gone. None outside a daemon."""
    waiting_readers: Callable[[], int] | None = None
    """``waiting_readers() -> int``: how many ``swarmbus wait`` callers (a Claude Code Stop hook's
    ``asyncRewake``, say) are blocked on this daemon for the next message right now. None
    outside a daemon."""
    presence: Callable[[str], dict[str, Any] | None] | None = None
    """``presence(agent_id) -> dict | None``: the last presence record the daemon holds for a
    watched agent: ``{"agent", "online" (bool), "status", "ts" (ISO 8601 or None), "last_seen"
    (ISO 8601 or None), "instance", "host", "reason"}``; None when none came (not watched, not
    seen yet, or the broker has none). None outside a daemon."""
    board: Any = None
    """The daemon's task board (:mod:`swarmbus.board`; internal: the built-in ``tasks`` plugin
    runs it), None outside a daemon."""


HandleFunc = Callable[[StoredMessage, HandlerContext], Awaitable[str | None]]


@dataclass(frozen=True)
class Service:
    """A long-running task a plugin runs inside the daemon (``swarmbus_services``).

    ``run(context)`` is an ``async`` function taking the daemon's :class:`HandlerContext`; the
    daemon starts it once its MQTT link is started and cancels it at shutdown (it should clean
    up on ``asyncio.CancelledError``). If it raises, the error is logged and it is started again
    after a backoff (1 s, doubling to 60 s; back to 1 s after a run that lasted longer than
    that); one that returns is finished and not started again. It never takes the daemon down.
    """

    name: str
    run: Callable[[HandlerContext], Awaitable[None]]
    description: str = ""


OPERATOR_EVENT_KINDS = ("wake_failed", "loop_guard", "held", "peer_online", "peer_offline")
"""The kinds of :class:`OperatorEvent` the core fires."""


@dataclass(frozen=True)
class OperatorEvent:
    """Something a person running the swarm may want to hear about (``swarmbus_operator_event``).

    ``kind`` (one of :data:`OPERATOR_EVENT_KINDS`):

    - ``wake_failed``: a wake of ``agent`` (this daemon's agent) failed; ``count`` is how many
      wake attempts failed in a row so far (1, 2, 3, ...; a wake that works starts again from
      0), ``peer`` the sender of the (oldest) message the wake was for, ``detail`` the waker's
      detail;
    - ``loop_guard``: the loop guard holds ``peer``'s messages to ``agent`` until ``until``
      (Unix seconds), once per episode; ``detail`` is the rule's reason;
    - ``held``: a message from ``peer`` to ``agent`` was put on hold (not again when a hold
      is renewed): ``rule`` held it until ``until``, ``detail`` says why, ``message_id`` is it;
    - ``peer_online`` / ``peer_offline``: the retained presence record of a watched agent
      (``agent``; see ``HandlerContext.watch_presence``) turned online or offline; ``detail`` is
      the record's reason, when it gives one.

    ``at`` is when it happened (Unix seconds).
    """

    kind: str
    agent: str
    at: float
    detail: str = ""
    peer: str | None = None
    count: int = 0
    until: float | None = None
    rule: str = ""
    message_id: str | None = None


@dataclass(frozen=True)
class Handler:
    """A named async handler for stored messages.

    ``handle(message, context)`` returns an optional detail string; raising records the
    delivery as failed (a ``TimeoutError`` as ``timeout``, with its text when it has one).
    ``timeout`` (seconds) overrides ``daemon.handler_timeout``; on timeout the handler's task
    is cancelled and the delivery is recorded as ``timeout``. ``math.inf``: the dispatcher sets
    no timeout, the handler bounds its own work (the built-in ``wake`` handler bounds each wake,
    not the wait for its turn). ``concurrency`` overrides ``daemon.handler_concurrency``: the
    most runs of this handler at once.
    """

    name: str
    handle: HandleFunc
    timeout: float | None = None
    description: str = ""
    concurrency: int | None = None


@dataclass(frozen=True)
class Task:
    """A task from the task board, as a :class:`TaskHandler` (or a host) gets it once this agent's
    claim was granted (docs/swarm.md).

    ``task_id`` is unique per poster (``owner``, whose daemon is the task's arbiter); ``type``
    says what to do (``example.echo``), ``payload`` with what (any JSON value). ``attempt`` is
    1 for the first offer and grows each time the task is offered again (a lease expired, a
    claimer failed), up to ``max_attempts``. ``fence`` is this claim's fencing token: a
    completion counts only while the claim it was granted with still holds. ``role``,
    ``capabilities`` and ``swarm`` are what the task needs; ``lease`` is how long (seconds) a
    claim lasts without a renewal (the daemon renews it while the task runs); ``created_at``
    is when it was posted (RFC 3339).
    """

    task_id: str
    type: str
    owner: str
    payload: Any
    attempt: int
    fence: int
    max_attempts: int
    role: str | None = None
    capabilities: tuple[str, ...] = ()
    swarm: str | None = None
    lease: float = 60.0
    created_at: str = ""


TaskRun = Callable[[Task, "HandlerContext"], Awaitable[Any]]


@dataclass(frozen=True)
class TaskHandler:
    """Runs tasks of one ``type`` from the task board (``swarmbus_task_handlers``).

    ``run(task, context)`` is an ``async`` function: it returns the task's result (any JSON
    value, at most 48 KiB as JSON), which completes the task; raising fails this attempt (the
    task is offered again while attempts remain; the exception's text is the error). It is
    cancelled (``asyncio.CancelledError``) when the claim's lease is lost or the daemon stops.
    ``type`` is 1-64 of a-z 0-9 . _ - (``example.echo``).
    """

    type: str
    run: TaskRun
    description: str = ""


CheckStatus = Literal["ok", "warn", "fail", "skip"]


@dataclass(frozen=True)
class CheckResult:
    """One doctor line. ``fix`` is shown under failures and warnings."""

    status: CheckStatus
    summary: str
    fix: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DoctorContext:
    """Passed to every doctor check: the settings, the agent id (may be None) and a cache
    shared by the checks of one run (for example the broker connection result). Core's
    ``daemon`` check (order 50) leaves ``cache["daemon"]``: the daemon's control-socket status
    (a dict with ``pid``, ``supervisor``: ``systemd``, ``launchd``, ``detached`` or
    ``foreground``, ``connected``, ...), or None when no daemon answers."""

    settings: Settings
    agent_id: str | None
    cache: dict[str, Any]

    @property
    def agent(self) -> str | None:
        """The agent the checks are about: ``--agent-id``, else the settings' ``agent_id``."""
        return self.agent_id or self.settings.agent_id

    def init_fix(self, host_type: str) -> str:
        """The usual fix for a host type's missing or outdated set-up: the ``swarmbus init``
        command line for this agent (``ID`` when no agent id is known)."""
        return f"run `swarmbus init --agent-id {self.agent or 'ID'} --host-type {host_type}`"


@dataclass(frozen=True)
class DoctorCheck:
    """A named check; ``run(context)`` must not raise (exceptions are reported as fail)."""

    name: str
    run: Callable[[DoctorContext], CheckResult]
    order: int = 500


@dataclass(frozen=True)
class InitStep:
    """One step of ``swarmbus init`` for a host type: a name and the declarative changes
    (``swarmbus.WriteFile``, ``JsonEntry``, ``RunCommand``, ``Verify``) that make it true.
    Core applies them, skips those already in place, lists them for ``--dry-run``, and records
    how to undo them for ``swarmbus uninit``."""

    name: str
    changes: Sequence[Change]


@dataclass(frozen=True)
class HostType:
    """A host an agent can run in (``swarmbus init --host-type NAME``)."""

    name: str
    description: str
    init_steps: Callable[[Settings], list[InitStep]] = lambda settings: []


@dataclass(frozen=True)
class Command:
    """An extra CLI subcommand. ``configure(parser)`` adds arguments; ``run(args, settings)``
    returns the exit code."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Settings], int]
