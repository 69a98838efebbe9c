"""swarmbus-openclaw: swarmbus host plugin for OpenClaw (host type ``openclaw``).

When a message should wake the agent, the daemon starts an OpenClaw agent turn through the
gateway's WebSocket protocol (v4): one ``agent`` run per wake with the framed wake prompt (every
message of a coalesced wake in it), an ``idempotencyKey`` derived from the message ids and a
dedicated session key. Falls back to ``openclaw agent`` when the
gateway does not answer. ``swarmbus init --host-type openclaw`` installs the ``swarmbus``
skill and checks the gateway; ``swarmbus doctor`` checks reachability, auth, protocol and
scopes.

Hooks: ``swarmbus_settings_sections`` (``[plugins.openclaw]``), ``swarmbus_wake``,
``swarmbus_wake_coalesce`` (True: one wake at a time, the messages that wait in the next one),
``swarmbus_host_types``, ``swarmbus_doctor_checks``. Only the public ``swarmbus`` API is used.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel

from swarmbus import (
    DoctorCheck,
    HandlerContext,
    HostType,
    InitStep,
    Settings,
    StoredMessage,
    WakeDecision,
    WakePath,
    hookimpl,
)
from swarmbus_openclaw._version import __version__
from swarmbus_openclaw.config import NAME, OpenClawSettings, config
from swarmbus_openclaw.protocol import HOST_TYPE

__all__ = ["HOST_TYPE", "NAME", "OpenClawSettings", "__version__", "config"]

# The gateway client, doctor checks and init steps (with websockets and cryptography) load on
# first use: a daemon of another host type, or a command that never wakes, does not pay for them.


@hookimpl
def swarmbus_settings_sections(register: Callable[[str, type[BaseModel]], None]) -> None:
    register(NAME, OpenClawSettings)


@hookimpl
def swarmbus_wake_coalesce(settings: Settings) -> bool | None:
    return True if settings.host_type == HOST_TYPE else None


@hookimpl
def swarmbus_wake_paths(settings: Settings) -> list[WakePath] | None:
    if settings.host_type != HOST_TYPE:
        return None
    from swarmbus_openclaw.paths import wake_paths

    return wake_paths()


@hookimpl
def swarmbus_wake(message: StoredMessage, decision: WakeDecision, context: HandlerContext) -> object:
    if context.settings.host_type != HOST_TYPE:
        return None
    from swarmbus_openclaw.wake import wake_openclaw

    return wake_openclaw(message, decision, context)


def _init_steps(settings: Settings) -> list[InitStep]:
    from swarmbus_openclaw.setup import init_steps

    return init_steps(settings)


@hookimpl
def swarmbus_host_types(register: Callable[[HostType], None]) -> None:
    register(HostType(HOST_TYPE, "an OpenClaw agent, woken through the OpenClaw gateway (WebSocket protocol v4)",
                      _init_steps))


@hookimpl
def swarmbus_doctor_checks(register: Callable[[DoctorCheck], None], settings: Settings) -> None:
    from swarmbus_openclaw.doctor import register_checks

    register_checks(register)
