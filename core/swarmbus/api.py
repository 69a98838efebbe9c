"""Value types shared by the core and by plugins (the names re-exported from ``swarmbus``).

They are plain frozen dataclasses: no IO, no transport types, nothing that ties a plugin to
paho-mqtt or to the daemon's internals.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

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
    """The answer of ``swarmbus_wake_decision``: wake the host agent, or not, and why."""

    wake: bool
    reason: str


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


HandleFunc = Callable[[StoredMessage, HandlerContext], Awaitable[str | None]]


@dataclass(frozen=True)
class Handler:
    """A named async handler for stored messages.

    ``handle(message, context)`` returns an optional detail string; raising records the
    delivery as failed. ``timeout`` (seconds) overrides ``daemon.handler_timeout``; on
    timeout the handler's task is cancelled and the delivery is recorded as ``timeout``.
    """

    name: str
    handle: HandleFunc
    timeout: float | None = None
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
