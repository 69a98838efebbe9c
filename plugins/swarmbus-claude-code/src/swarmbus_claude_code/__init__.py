"""swarmbus-claude-code: the Claude Code host plugin (host type ``cc``).

Hooks:

- ``swarmbus_settings_sections``: ``[plugins.cc]`` (:class:`CCSettings`);
- ``swarmbus_host_types``: ``cc``, whose init steps install the skill, register the MCP
  server, install the hook the wake mode needs and check ``claude --version``
  (:mod:`swarmbus_claude_code.install`);
- ``swarmbus_wake``: for agents with ``host_type = "cc"``; in ``auto`` mode (the default) the
  core's wake router tries the paths of :mod:`swarmbus_claude_code.paths` in order (the live
  session's inbox, a waiting Stop hook, a headless resume); in ``resume`` mode a headless
  ``claude -p --resume`` per wake for the message and its ``decision.batch``
  (:mod:`swarmbus_claude_code.waker`);
- ``swarmbus_wake_paths``: those paths, for ``swarmbus wake test``;
- ``swarmbus_host_session``: the Claude Code session the swarmbus MCP server runs in (its inbox
  socket, :mod:`swarmbus_claude_code.session`), registered with the daemon;
- ``swarmbus_wake_coalesce``: True in ``auto`` and ``resume`` modes, so the core runs one wake
  at a time per agent and coalesces the messages that wait into the next;
  in ``rewake`` and ``context`` modes the hook in Claude Code delivers the message;
- ``swarmbus_doctor_checks``: claude, MCP, skill, hook, last wake (:mod:`swarmbus_claude_code.doctor`);
- ``swarmbus_commands``: ``swarmbus cc-context``, the UserPromptSubmit hook
  (:mod:`swarmbus_claude_code.context`).

It imports only names from ``swarmbus`` itself (the public API).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from pydantic import BaseModel

from swarmbus import (
    Command,
    DoctorCheck,
    HandlerContext,
    HostSession,
    HostType,
    InitStep,
    Settings,
    StoredMessage,
    WakeDecision,
    WakeOutcome,
    WakePath,
    hookimpl,
)
from swarmbus_claude_code.settings import NAME, CCSettings, config

__version__ = "0.1.0"
__all__ = ["NAME", "CCSettings", "__version__", "config"]

HOOK_DELIVERY = {
    "rewake": "delivered via the Stop hook: an idle Claude Code session is woken by `swarmbus wait`",
    "context": "delivered via UserPromptSubmit context: added to the next prompt of a Claude Code session",
}


@hookimpl
def swarmbus_settings_sections(register: Callable[[str, type[BaseModel]], None]) -> None:
    register(NAME, CCSettings)


def _init_steps(settings: Settings) -> list[InitStep]:
    from swarmbus_claude_code.install import init_steps

    return init_steps(settings)


@hookimpl
def swarmbus_host_types(register: Callable[[HostType], None]) -> None:
    register(HostType(NAME, "Claude Code: skill, MCP server, hooks; wakes by claude -p --resume", _init_steps))


@hookimpl
def swarmbus_wake_coalesce(settings: Settings) -> bool | None:
    if settings.host_type != NAME:
        return None
    return config(settings).wake_mode in ("auto", "resume")


@hookimpl
def swarmbus_wake_paths(settings: Settings) -> list[WakePath] | None:
    if settings.host_type != NAME:
        return None
    from swarmbus_claude_code.paths import wake_paths

    return wake_paths(settings)


@hookimpl
def swarmbus_host_session(environ: Mapping[str, str]) -> HostSession | None:
    from swarmbus_claude_code.session import session_from_environ

    return session_from_environ(environ)


@hookimpl
def swarmbus_wake(message: StoredMessage, decision: WakeDecision,
                  context: HandlerContext) -> Awaitable[WakeOutcome] | WakeOutcome | None:
    if context.settings.host_type != NAME:
        return None
    cfg = config(context.settings)
    if cfg.wake_mode == "auto":
        from swarmbus import wake_by_paths
        from swarmbus_claude_code.paths import SURFACED_BY, wake_paths

        return wake_by_paths([message, *decision.batch], wake_paths(context.settings, cfg), context,
                             timeout=cfg.path_timeout, surfaced=SURFACED_BY, fall_back=cfg.fall_back)
    if cfg.wake_mode != "resume":
        return WakeOutcome(True, HOOK_DELIVERY[cfg.wake_mode])
    from swarmbus_claude_code.waker import wake_once

    return wake_once([message, *decision.batch], context)


@hookimpl
def swarmbus_doctor_checks(register: Callable[[DoctorCheck], None], settings: Settings) -> None:
    if settings.host_type != NAME:
        return
    from swarmbus_claude_code.doctor import doctor_checks

    for check in doctor_checks():
        register(check)


@hookimpl
def swarmbus_commands(register: Callable[[Command], None]) -> None:
    from swarmbus_claude_code import context

    register(Command("cc-context", "Claude Code UserPromptSubmit hook: add unread swarmbus messages as context",
                     context.configure, context.run))
