"""Building the plugin manager, and the typed relay the core calls hooks through.

:func:`get_plugin_manager` is a factory: each call returns a new, validated manager with the
built-in plugins (``DEFAULT_PLUGINS``) and the installed entry points of group ``swarmbus``.
``SWARMBUS_LOAD_PLUGINS`` (comma-separated distribution or entry-point names; empty means
none) restricts which installed plugins load. A plugin that fails to import is skipped, and
its error is kept in :attr:`PluginManager.infos` for ``swarmbus plugins`` and ``doctor``.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import import_module
from typing import TYPE_CHECKING, Any

import pluggy

from swarmbus import hookspecs
from swarmbus._version import __version__
from swarmbus.hookspecs import PROJECT

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

log = logging.getLogger("swarmbus.plugins")

GROUP = "swarmbus"
LOAD_ENV = "SWARMBUS_LOAD_PLUGINS"
TRACE_ENV = "SWARMBUS_TRACE_PLUGINS"
DEFAULT_PLUGINS = (
    "swarmbus.default_plugins.routing",
    "swarmbus.default_plugins.archive",
    "swarmbus.default_plugins.policy",
    "swarmbus.default_plugins.rules.expiry",
    "swarmbus.default_plugins.rules.senders",
    "swarmbus.default_plugins.rules.match",
    "swarmbus.default_plugins.rules.quiet_hours",
    "swarmbus.default_plugins.rules.rate_limit",
    "swarmbus.default_plugins.rules.budget",
    "swarmbus.default_plugins.rules.loop_guard",
    "swarmbus.default_plugins.rules.manual",
    "swarmbus.default_plugins.wake",
    "swarmbus.default_plugins.doctor",
    "swarmbus.default_plugins.security",
    "swarmbus.default_plugins.tasks",
)


COMMAND_WAKER = "priority"
"""The entry-point name of the plugin that runs ``wake.command`` (``start --invoke``)."""
COMMAND_WAKER_DISTRIBUTION = "swarmbus-priority"


def command_waker_problem(infos: Mapping[str, PluginInfo]) -> tuple[str, str] | None:
    """Why ``wake.command`` (``--invoke``) would never run with these plugins (``pm.infos``), and
    the fix, as ``(problem, fix)``: the command-waker plugin (:data:`COMMAND_WAKER`) is not
    installed, was left out by ``SWARMBUS_LOAD_PLUGINS``, or failed to load. None when it is loaded."""
    info = infos.get(COMMAND_WAKER)
    needs = f"--invoke / wake.command needs the {COMMAND_WAKER} plugin ({COMMAND_WAKER_DISTRIBUTION})"
    if info is None:
        return f"{needs}, which is not installed", f"pip install {COMMAND_WAKER_DISTRIBUTION}"
    if info.status == "blocked":
        return f"{needs}, which {LOAD_ENV} leaves out", f"add {COMMAND_WAKER} to {LOAD_ENV}"
    if info.status != "loaded":
        return f"{needs}, which failed to load ({info.error})", f"pip install --force-reinstall {COMMAND_WAKER_DISTRIBUTION}"
    return None


@dataclass
class PluginInfo:
    """What ``swarmbus plugins`` shows for one plugin."""

    name: str
    distribution: str
    version: str
    module: str
    builtin: bool
    status: str = "loaded"  # loaded | blocked | failed
    error: str | None = None
    hooks: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "distribution": self.distribution, "version": self.version,
            "module": self.module, "builtin": self.builtin, "status": self.status,
            "error": self.error, "hooks": self.hooks,
        }


class PluginManager(pluggy.PluginManager):
    """A pluggy manager that also remembers each plugin's load status."""

    def __init__(self) -> None:
        super().__init__(PROJECT)
        self.infos: dict[str, PluginInfo] = {}


def _allowed(env: Mapping[str, str]) -> set[str] | None:
    value = env.get(LOAD_ENV)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def _hooks_of(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    return sorted(caller.name for caller in (pm.get_hookcallers(plugin) or []))


def get_plugin_manager(*, entry_points: bool = True, env: Mapping[str, str] | None = None) -> PluginManager:
    """Return a new plugin manager with built-ins and (optionally) installed plugins.

    :param entry_points: load installed plugins (group ``swarmbus``); tests pass False and
        register their own plugin objects.
    :param env: environment to read ``SWARMBUS_LOAD_PLUGINS``/``SWARMBUS_TRACE_PLUGINS`` from.
    :raises pluggy.PluginValidationError: a built-in plugin does not match the hookspecs.
    """
    env = os.environ if env is None else env
    pm = PluginManager()
    pm.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        module = import_module(module_name)
        pm.register(module, name=module_name)
        pm.infos[module_name] = PluginInfo(
            module_name, "swarmbus", __version__, module_name, True, hooks=_hooks_of(pm, module)
        )
    if entry_points:
        _load_entry_points(pm, _allowed(env))
    pm.check_pending()
    if env.get(TRACE_ENV):
        def before(name: str, impls: Any, kwargs: Any) -> None:
            log.warning("hook %s(%s)", name, ", ".join(sorted(kwargs)))

        def after(outcome: Any, name: str, impls: Any, kwargs: Any) -> None:
            log.warning("hook %s -> %r", name, outcome.get_result() if outcome.exception is None else outcome.exception)

        pm.add_hookcall_monitoring(before, after)
    return pm


def _load_entry_points(pm: PluginManager, allowed: set[str] | None) -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=GROUP):
        dist = ep.dist.name if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else "?"
        info = PluginInfo(ep.name, dist, version, ep.value, False)
        pm.infos[ep.name] = info
        if allowed is not None and ep.name not in allowed and dist not in allowed:
            info.status = "blocked"
            pm.set_blocked(ep.name)
            continue
        if pm.has_plugin(ep.name) or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
            # an unknown hook name (a typo) would make check_pending() fail for everyone: refuse this plugin
            unknown = sorted(c.name for c in (pm.get_hookcallers(plugin) or []) if c.spec is None and any(
                i.plugin is plugin and not i.optionalhook for i in c.get_hookimpls()))
            if unknown:
                pm.unregister(plugin)
                raise pluggy.PluginValidationError(plugin, f"unknown hook(s) {', '.join(unknown)}")
        except Exception as exc:  # a broken plugin must not take the daemon down
            info.status = "failed"
            info.error = f"{type(exc).__name__}: {exc}"
            log.error("failed to load swarmbus plugin %s (%s %s): %s", ep.name, dist, version, info.error)
            continue
        info.hooks = _hooks_of(pm, plugin)


class HookRelay:
    """Typed calls into the hooks: the core calls hooks only through this class."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self.hook = pm.hook

    def settings_sections(self) -> dict[str, type[BaseModel]]:
        sections: dict[str, type[BaseModel]] = {}

        def register(name: str, model: type[BaseModel]) -> None:
            if name in sections:
                raise ValueError(f"settings section {name!r} registered twice")
            sections[name] = model

        self.hook.swarmbus_settings_sections(register=register)
        return sections

    def handlers(self, settings: Settings) -> dict[str, Handler]:
        found: dict[str, Handler] = {}

        def register(handler: Handler) -> None:
            if handler.name in found:
                raise ValueError(f"handler {handler.name!r} registered twice")
            found[handler.name] = handler

        self.hook.swarmbus_register_handlers(register=register, settings=settings)
        return found

    def route(self, message: StoredMessage, handlers: frozenset[str], settings: Settings) -> list[str]:
        names: list[str] = []
        for result in self.hook.swarmbus_route(message=message, handlers=handlers, settings=settings):
            for name in result or ():
                if name not in names:
                    names.append(name)
        return names

    def wake_decision(self, message: StoredMessage, settings: Settings) -> WakeDecision:
        decision: WakeDecision = self.hook.swarmbus_wake_decision(message=message, settings=settings)
        return decision

    def wake_filters(self, message: StoredMessage, settings: Settings, state: PolicyState, now: float) -> list[Verdict]:
        """Every ``swarmbus_wake_filter`` rule's verdict (None answers left out), in call order."""
        return self.hook.swarmbus_wake_filter(  # type: ignore[no-any-return]
            message=message, settings=settings, state=state, now=now)

    def wake_filter_chain(self) -> list[str]:
        """The plugin names of the ``swarmbus_wake_filter`` implementations, in call order."""
        return [impl.plugin_name for impl in reversed(self.hook.swarmbus_wake_filter.get_hookimpls())]

    def wake_coalesce(self, message: StoredMessage, settings: Settings) -> bool:
        """``swarmbus_wake_coalesce``: does this message's waker take coalesced wakes? (False
        when no plugin answers.)"""
        return bool(self.hook.swarmbus_wake_coalesce(message=message, settings=settings))

    async def wake(self, message: StoredMessage, decision: WakeDecision, context: HandlerContext) -> WakeOutcome | None:
        result = self.hook.swarmbus_wake(message=message, decision=decision, context=context)
        if inspect.isawaitable(result):
            result = await result
        return result  # type: ignore[no-any-return]

    def delivery_event(self, event: DeliveryEvent) -> None:
        """Call every ``swarmbus_delivery_event`` implementation; one that raises is logged and
        the others still run (this never raises)."""
        hook = self.hook.swarmbus_delivery_event
        for impl in reversed(hook.get_hookimpls()):
            try:
                impl.function(*[{"event": event}[name] for name in impl.argnames])
            except Exception:
                log.exception("plugin %s failed in swarmbus_delivery_event (%s of %s); ignored", impl.plugin_name,
                              event.step, event.message_id)

    def operator_event(self, event: OperatorEvent) -> None:
        """Call every ``swarmbus_operator_event`` implementation; one that raises is logged and
        the others still run (this never raises)."""
        hook = self.hook.swarmbus_operator_event
        for impl in reversed(hook.get_hookimpls()):
            try:
                impl.function(*[{"event": event}[name] for name in impl.argnames])
            except Exception:
                log.exception("plugin %s failed in swarmbus_operator_event (%s of %s); ignored", impl.plugin_name,
                              event.kind, event.agent)

    def wake_paths(self, settings: Settings) -> list[WakePath]:
        """The host plugin's wake paths for ``settings`` (``swarmbus_wake_paths``), in the
        configured order; empty when no plugin offers any."""
        return list(self.hook.swarmbus_wake_paths(settings=settings) or [])

    def task_handlers(self, register: Callable[[TaskHandler], None], settings: Settings) -> None:
        """Call every plugin's ``swarmbus_task_handlers`` with ``register``."""
        self.hook.swarmbus_task_handlers(register=register, settings=settings)

    def host_sessions(self, environ: Mapping[str, str]) -> list[HostSession]:
        """Every host session found in ``environ`` (``swarmbus_host_session``)."""
        return [s for s in self.hook.swarmbus_host_session(environ=environ) if s is not None]

    def services(self, context: HandlerContext) -> list[Service]:
        """Every service registered through ``swarmbus_services``, in registration order.

        :raises ValueError: a service name was registered twice."""
        found: dict[str, Service] = {}

        def register(service: Service) -> None:
            if service.name in found:
                raise ValueError(f"service {service.name!r} registered twice")
            found[service.name] = service

        self.hook.swarmbus_services(register=register, context=context)
        return list(found.values())

    def doctor_checks(self, settings: Settings) -> list[DoctorCheck]:
        checks: list[DoctorCheck] = []
        self.hook.swarmbus_doctor_checks(register=checks.append, settings=settings)
        return sorted(checks, key=lambda c: (c.order, c.name))

    def host_types(self) -> dict[str, HostType]:
        found: dict[str, HostType] = {}

        def register(host: HostType) -> None:
            if host.name in found:
                raise ValueError(f"host type {host.name!r} registered twice")
            found[host.name] = host

        self.hook.swarmbus_host_types(register=register)
        return found

    def commands(self, reserved: frozenset[str] = frozenset()) -> dict[str, Command]:
        found: dict[str, Command] = {}

        def register(command: Command) -> None:
            if command.name in reserved or command.name in found:
                log.warning("plugin command %r clashes with an existing command; ignored", command.name)
                return
            found[command.name] = command

        self.hook.swarmbus_commands(register=register)
        return found
