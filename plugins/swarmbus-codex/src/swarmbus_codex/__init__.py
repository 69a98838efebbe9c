"""swarmbus-codex: the OpenAI Codex CLI host plugin (host type ``codex``).

Hooks:

- ``swarmbus_settings_sections``: ``[plugins.codex]`` (:class:`CodexSettings`);
- ``swarmbus_host_types``: ``codex``, whose init steps install the skill, register the swarmbus
  MCP server in Codex's ``config.toml`` and check ``codex --version``
  (:mod:`swarmbus_codex.install`);
- ``swarmbus_wake``: for agents with ``host_type = "codex"``, the core's wake router tries the
  paths of :mod:`swarmbus_codex.paths` in order: a turn through a running ``codex app-server``,
  else a headless ``codex exec resume`` (never beside a live app-server: no second writer);
- ``swarmbus_wake_paths``: those paths, for ``swarmbus wake test``;
- ``swarmbus_wake_coalesce``: True, so the core runs one wake at a time per agent and hands the
  messages that arrive meanwhile to the next one (``decision.batch``);
- ``swarmbus_doctor_checks``: codex, MCP, skill, app-server, last wake (:mod:`swarmbus_codex.doctor`).

It imports only names from ``swarmbus`` itself (the public API). The app-server client (and
``websockets``) loads on the first wake, doctor check or init step of host type ``codex``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from pydantic import BaseModel

from swarmbus import (
    DoctorCheck,
    HandlerContext,
    HostType,
    InitStep,
    Settings,
    StoredMessage,
    WakeDecision,
    WakeOutcome,
    WakePath,
    hookimpl,
)
from swarmbus_codex._version import __version__
from swarmbus_codex.config import NAME, CodexSettings, config

__all__ = ["NAME", "CodexSettings", "__version__", "config"]


@hookimpl
def swarmbus_settings_sections(register: Callable[[str, type[BaseModel]], None]) -> None:
    register(NAME, CodexSettings)


def _init_steps(settings: Settings) -> list[InitStep]:
    from swarmbus_codex.install import init_steps

    return init_steps(settings)


@hookimpl
def swarmbus_host_types(register: Callable[[HostType], None]) -> None:
    register(HostType(NAME, "OpenAI Codex CLI: skill, MCP server in config.toml; wakes through a running "
                            "app-server, else codex exec resume", _init_steps))


@hookimpl
def swarmbus_wake_coalesce(settings: Settings) -> bool | None:
    return True if settings.host_type == NAME else None


@hookimpl
def swarmbus_wake_paths(settings: Settings) -> list[WakePath] | None:
    if settings.host_type != NAME:
        return None
    from swarmbus_codex.paths import wake_paths

    return wake_paths(settings)


@hookimpl
def swarmbus_wake(message: StoredMessage, decision: WakeDecision,
                  context: HandlerContext) -> Awaitable[WakeOutcome] | None:
    if context.settings.host_type != NAME:
        return None
    from swarmbus_codex.paths import wake

    return wake([message, *decision.batch], context)


@hookimpl
def swarmbus_doctor_checks(register: Callable[[DoctorCheck], None], settings: Settings) -> None:
    if settings.host_type != NAME:
        return
    from swarmbus_codex.doctor import doctor_checks

    for check in doctor_checks():
        register(check)
