"""swarmbus-openclaw: swarmbus host plugin for OpenClaw (host type ``openclaw``).

When a message should wake the agent, the daemon starts an OpenClaw agent turn through the
gateway's WebSocket protocol (v4): ``agent`` with the framed wake prompt, the swarmbus message
id as ``idempotencyKey`` and a dedicated session key. Falls back to ``openclaw agent`` when the
gateway does not answer. ``swarmbus init --host-type openclaw`` installs the ``swarmbus``
skill and checks the gateway; ``swarmbus doctor`` checks reachability, auth, protocol and
scopes.

Hooks: ``swarmbus_settings_sections`` (``[plugins.openclaw]``), ``swarmbus_wake``,
``swarmbus_host_types``, ``swarmbus_doctor_checks``. Only the public ``swarmbus`` API is used.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel

from swarmbus import DoctorCheck, HandlerContext, HostType, Settings, StoredMessage, WakeDecision, hookimpl
from swarmbus_openclaw._version import __version__
from swarmbus_openclaw.config import NAME, OpenClawSettings, config
from swarmbus_openclaw.doctor import register_checks
from swarmbus_openclaw.setup import init_steps
from swarmbus_openclaw.wake import HOST_TYPE, wake_openclaw

__all__ = ["HOST_TYPE", "NAME", "OpenClawSettings", "__version__", "config"]


@hookimpl
def swarmbus_settings_sections(register: Callable[[str, type[BaseModel]], None]) -> None:
    register(NAME, OpenClawSettings)


@hookimpl
def swarmbus_wake(message: StoredMessage, decision: WakeDecision, context: HandlerContext) -> object:
    if context.settings.host_type != HOST_TYPE:
        return None
    return wake_openclaw(message, decision, context)


@hookimpl
def swarmbus_host_types(register: Callable[[HostType], None]) -> None:
    register(HostType(HOST_TYPE, "an OpenClaw agent, woken through the OpenClaw gateway (WebSocket protocol v4)",
                      init_steps))


@hookimpl
def swarmbus_doctor_checks(register: Callable[[DoctorCheck], None], settings: Settings) -> None:
    register_checks(register)
