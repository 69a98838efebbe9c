"""The plugin contract: every hook swarmbus calls, in one file.

Plugins write ``from swarmbus import hookimpl`` and implement any subset of these hooks, with
any subset of each hook's arguments (pluggy passes only the names an implementation asks
for). Hooks are called with keyword arguments only. They are synchronous and should be fast;
IO belongs in the async ``Handler.handle`` callables and wake awaitables they hand back.

Lifecycle:

1. CLI start: ``swarmbus_commands`` (only when the subcommand is not a core one, or for
   ``--help``), ``swarmbus_settings_sections`` (before the config is validated).
2. Daemon start: ``swarmbus_register_handlers``.
3. Per stored message: ``swarmbus_route`` selects handlers; the built-in ``wake`` handler
   asks ``swarmbus_wake_decision`` and every ``swarmbus_wake_filter`` rule and, on a wake,
   ``swarmbus_wake``.
4. Per recorded delivery step (both sides): ``swarmbus_delivery_event``; per operator event
   (a wake failed, the loop guard tripped, a message held, a watched agent's presence changed):
   ``swarmbus_operator_event``.
5. Daemon running (after its MQTT link starts, until shutdown): ``swarmbus_services``; at its
   start, ``swarmbus_task_handlers`` (the task types it runs from the task board).
6. ``swarmbus doctor``: ``swarmbus_doctor_checks``. ``swarmbus init``: ``swarmbus_host_types``.

``docs/plugin-hooks.md`` documents each hook; ``tests/test_hookspecs.py`` fails when a hook
is missing there or has no ``test_hook_<name>`` test.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from pydantic import BaseModel

    from swarmbus.api import (
        Command,
        DeliveryEvent,
        DoctorCheck,
        Handler,
        HandlerContext,
        HostSession,
        HostType,
        OperatorEvent,
        PolicyState,
        Service,
        StoredMessage,
        TaskHandler,
        Verdict,
        WakeDecision,
        WakeOutcome,
        WakePath,
    )
    from swarmbus.settings import Settings

PROJECT = "swarmbus"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def swarmbus_settings_sections(register: Callable[[str, type[BaseModel]], None]) -> None:
    """Register a pydantic model for a plugin's config section ``[plugins.<name>]``.

    Called once per settings load, before validation, by every command that loads settings.

    :param register: ``register(name, model)``; ``name`` is the section name (use the plugin's
        entry-point name), ``model`` a pydantic v2 ``BaseModel`` subclass with defaults for
        every field. The validated instance is then ``settings.plugins[name]``.
    :returns: nothing; all implementations are called. Registering a name twice is an error.
    """


@hookspec
def swarmbus_register_handlers(register: Callable[[Handler], None], settings: Settings) -> None:
    """Register the message handlers this plugin provides.

    Called once when the daemon starts, after settings are valid.

    :param register: ``register(handler)`` with a :class:`swarmbus.Handler` (unique ``name``).
    :param settings: the validated :class:`swarmbus.Settings`.
    :returns: nothing; all implementations are called. A handler only runs for messages that
        ``swarmbus_route`` routes to it.
    """


@hookspec
def swarmbus_route(
    message: StoredMessage, handlers: frozenset[str], settings: Settings
) -> Iterable[str] | None:
    """Choose the handlers a stored message goes to.

    Called once per message after it is committed to the store (and again after a restart
    for messages whose dispatch had not finished).

    :param message: the :class:`swarmbus.StoredMessage`.
    :param handlers: the names of every registered handler.
    :param settings: the validated settings.
    :returns: handler names for this message, or None for no opinion. All results are
        collected; the message goes to the union of the names (unknown names are logged and
        ignored). The built-in router sends every message to ``archive`` and ``wake``.
    """


@hookspec(firstresult=True)
def swarmbus_wake_decision(message: StoredMessage, settings: Settings) -> WakeDecision | None:
    """Decide whether this message should wake the host agent.

    Called by the built-in ``wake`` handler once per message routed to it.

    :param message: the stored message.
    :param settings: the validated settings (``settings.wake.policy`` is the configured policy).
    :returns: ``swarmbus.wake(reason)``, ``swarmbus.skip(reason)``, or None for no opinion.
        Stops at first non-None result. The built-in policy (``trylast``) applies
        ``wake.policy``, never wakes for expired messages, and always answers.
    """


@hookspec
def swarmbus_wake_filter(message: StoredMessage, settings: Settings, state: PolicyState, now: float) -> Verdict | None:
    """One rule of the wake policy: may this message wake the host agent now?

    Called by the built-in ``wake`` handler once per message routed to it (after
    ``swarmbus_wake_decision``), again for a held message when its hold is over, and by
    ``swarmbus policy explain``. Rules are pure: decide from the arguments only, no IO.

    :param message: the stored message.
    :param settings: the validated settings (``settings.wake``: the built-in rules' config).
    :param state: a :class:`swarmbus.PolicyState`: recent wakes and traffic, read-only.
    :param now: the current Unix time in seconds (an injected clock in tests).
    :returns: a :class:`swarmbus.Verdict` (``Verdict.skip(reason)``: never wake for it;
        ``Verdict.hold(reason, until)``: not before ``until``; ``Verdict.allow()``), or None
        for no objection. All results are collected: all implementations are called and any
        veto wins: a skip beats a hold, and of several holds the latest ``until`` counts.
    """


@hookspec(firstresult=True)
def swarmbus_wake(
    message: StoredMessage, decision: WakeDecision, context: HandlerContext
) -> WakeOutcome | Awaitable[WakeOutcome] | None:
    """Wake the host agent for a message the wake decision accepted.

    Called by the built-in ``wake`` handler only when the wake chain allows it, bounded by
    ``daemon.handler_timeout``. For a waker that takes coalesced wakes
    (``swarmbus_wake_coalesce``), once per wake, one at a time per agent: ``message`` is the
    oldest message, ``decision.batch`` the others (seq order); otherwise once per message,
    at most ``daemon.handler_concurrency`` at once.

    :param message: the stored message (the oldest of a coalesced wake).
    :param decision: the :class:`swarmbus.WakeDecision` (its ``reason`` is worth logging; its
        ``batch``: the other messages of this wake).
    :param context: the :class:`swarmbus.HandlerContext` (agent id, settings, logger, send).
    :returns: a :class:`swarmbus.WakeOutcome`, an awaitable of one, or None when this plugin
        does not wake this host (for example it is configured for another host type).
        Stops at first non-None result. The core has no waker: ``wake.command``
        (``--invoke``) is run by the ``swarmbus-priority`` plugin (``trylast``).
    """


@hookspec(firstresult=True)
def swarmbus_wake_paths(settings: Settings) -> list[WakePath] | None:
    """The ways this host plugin can wake the agent, in the order to try them (the wake router).

    Called by ``swarmbus wake test`` (through the daemon) and by host plugins themselves, which
    hand the list to :func:`swarmbus.wake_by_paths` from their ``swarmbus_wake``. The order is
    the agent's configured one (the plugin's setting, with a default per host type).

    :param settings: the validated settings; answer only for your host type.
    :returns: a list of :class:`swarmbus.WakePath`, or None for another host type.
        Stops at first non-None result.
    """


@hookspec
def swarmbus_host_session(environ: Mapping[str, str]) -> HostSession | None:
    """Recognise a live host session from the environment of a process it started.

    Called by ``swarmbus mcp-server`` at start (the host runs it as a child, with the
    session's variables in its environment); each session found is registered with the
    agent's daemon (control op ``session``) and refreshed while the server runs, so wake paths
    can reach it (``HandlerContext.host_sessions``).

    :param environ: the MCP server's environment.
    :returns: a :class:`swarmbus.HostSession` (``registered_at`` and ``refreshed_at`` are set
        by the daemon), or None. All results are collected.
    """


@hookspec(firstresult=True)
def swarmbus_wake_coalesce(message: StoredMessage, settings: Settings) -> bool | None:
    """Does the waker of this message take coalesced wakes (several messages in one)?

    Called by the built-in ``wake`` handler for each message the wake chain allows, before it
    is woken. Answer it for exactly the messages your ``swarmbus_wake`` wakes.

    :param message: the stored message about to be woken.
    :param settings: the validated settings.
    :returns: True: the core runs one wake at a time for this agent; messages allowed while
        one runs (or within ``wake.debounce`` seconds) wait and go into the next wake
        together (``decision.batch``). False: one ``swarmbus_wake`` call per message, at once
        (within ``daemon.handler_concurrency``). None: no opinion. Stops at first non-None
        result; when nobody answers, False (the behaviour of wakers written before this hook).
    """


@hookspec
def swarmbus_delivery_event(event: DeliveryEvent) -> None:
    """Follow a message's delivery ladder: called once per recorded step, on both sides.

    Called by the daemon on its event loop when a step is recorded in its store: for messages
    it sent (``published``, then each receipt: ``stored``, ``wake``, ``surfaced``,
    ``acknowledged``, ``replied``; or ``gave up``) and for messages it received (the same
    steps, as they happen here). Must be quick and must not block: hand slow work to a task.

    :param event: a :class:`swarmbus.DeliveryEvent` (message id, step, side, by, peer, at, detail).
    :returns: nothing; all implementations are called. An implementation that raises is logged
        and the others still run; delivery never depends on it.
    """


@hookspec
def swarmbus_operator_event(event: OperatorEvent) -> None:
    """Hear about what a person running the swarm may care about: a failed wake, the loop
    guard tripping, a message put on hold, a watched agent going offline or coming back.

    Called by the daemon on its event loop as it happens. Must be quick and must not block:
    record it, or hand slow work (a notification) to a task or a service.

    :param event: a :class:`swarmbus.OperatorEvent` (kind, agent, at, detail, peer, count,
        until, rule, message_id).
    :returns: nothing; all implementations are called. An implementation that raises is logged
        and the others still run; delivery never depends on it.
    """


@hookspec
def swarmbus_services(register: Callable[[Service], None], context: HandlerContext) -> None:
    """Register long-running async services the daemon runs beside message handling.

    Called once when the daemon starts, after the handlers are registered; the services are
    started once its MQTT link is started and cancelled at shutdown. A service that raises is
    logged and started again after a backoff (1 s doubling to 60 s); it never stops the daemon.

    :param register: ``register(service)`` with a :class:`swarmbus.Service` (unique ``name``).
    :param context: the daemon's :class:`swarmbus.HandlerContext` (agent id, settings, logger,
        send, presence), the one ``service.run`` gets.
    :returns: nothing; all implementations are called. Registering a name twice is an error
        (the daemon does not start).
    """


@hookspec
def swarmbus_task_handlers(register: Callable[[TaskHandler], None], settings: Settings) -> None:
    """Register handlers that run tasks of a type from the task board (docs/swarm.md).

    Called once when the daemon starts, after the settings are valid. The agent then claims
    offered tasks of these types that fit its role, capabilities and swarm, runs them with the
    handler (renewing the claim's lease meanwhile) and completes them with its result; tasks of
    other types go to the host agent as wakes, when it takes them (``[tasks] host``).

    :param register: ``register(handler)`` with a :class:`swarmbus.TaskHandler` (``type``,
        async ``run(task, context)``, ``description``).
    :param settings: the validated :class:`swarmbus.Settings`.
    :returns: nothing; all implementations are called. Registering a type twice is an error
        (the daemon does not start).
    """


@hookspec
def swarmbus_doctor_checks(register: Callable[[DoctorCheck], None], settings: Settings) -> None:
    """Add checks to ``swarmbus doctor``.

    Called once per doctor run.

    :param register: ``register(check)`` with a :class:`swarmbus.DoctorCheck`; checks run in
        ascending ``order``, then name. A check returns a :class:`swarmbus.CheckResult` and
        should give a ``fix`` hint for every fail or warn.
    :param settings: the validated settings.
    :returns: nothing; all implementations are called.
    """


@hookspec
def swarmbus_host_types(register: Callable[[HostType], None]) -> None:
    """Declare host types for ``swarmbus init --host-type NAME``.

    Called once when the CLI needs the list of host types.

    :param register: ``register(host_type)`` with a :class:`swarmbus.HostType`.
    :returns: nothing; all implementations are called. Names must be unique.
    """


@hookspec
def swarmbus_commands(register: Callable[[Command], None]) -> None:
    """Add CLI subcommands.

    Called when the CLI builds its parser for a subcommand that is not a core one, and for
    ``swarmbus --help``.

    :param register: ``register(command)`` with a :class:`swarmbus.Command`.
    :returns: nothing; all implementations are called. A name that clashes with a core
        command or another plugin's command is refused with a warning.
    """


def _all_hook_names() -> list[str]:
    return sorted(n for n, v in globals().items() if n.startswith("swarmbus_") and callable(v))


HOOK_NAMES: tuple[str, ...] = tuple(_all_hook_names())
