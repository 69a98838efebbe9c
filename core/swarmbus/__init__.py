"""swarmbus: reactive, durable pub/sub messaging between AI agents over MQTT.

The public API for plugins and embedders is the set of names in ``__all__``; every other
module is internal. Names are imported lazily so that ``import swarmbus`` (and therefore
``swarmbus send``) stays cheap: nothing here pulls in paho-mqtt, pydantic or pluggy until it
is used.
"""

from __future__ import annotations

from swarmbus._version import __version__

TYPE_CHECKING = False  # not `from typing import ...`: typing costs ~15 ms on the send path

_EXPORTS: dict[str, str] = {
    "hookimpl": "swarmbus.hookspecs",
    "hookspec": "swarmbus.hookspecs",
    "Envelope": "swarmbus.envelope",
    "EnvelopeError": "swarmbus.envelope",
    "new_envelope": "swarmbus.envelope",
    "validate_agent_id": "swarmbus.envelope",
    "StoredMessage": "swarmbus.api",
    "Handler": "swarmbus.api",
    "HandlerContext": "swarmbus.api",
    "DeliveryEvent": "swarmbus.api",
    "OperatorEvent": "swarmbus.api",
    "OPERATOR_EVENT_KINDS": "swarmbus.api",
    "Service": "swarmbus.api",
    "Task": "swarmbus.api",
    "TaskHandler": "swarmbus.api",
    "WakeDecision": "swarmbus.api",
    "WakeOutcome": "swarmbus.api",
    "WakePath": "swarmbus.api",
    "HostSession": "swarmbus.api",
    "wake_by_paths": "swarmbus.wake_router",
    "probe_paths": "swarmbus.wake_router",
    "Verdict": "swarmbus.api",
    "PolicyState": "swarmbus.api",
    "combine_verdicts": "swarmbus.api",
    "CheckResult": "swarmbus.api",
    "DoctorCheck": "swarmbus.api",
    "DoctorContext": "swarmbus.api",
    "HostType": "swarmbus.api",
    "InitStep": "swarmbus.api",
    "Command": "swarmbus.api",
    "wake": "swarmbus.api",
    "skip": "swarmbus.api",
    "Settings": "swarmbus.settings",
    "get_plugin_manager": "swarmbus.plugins",
    "HookRelay": "swarmbus.plugins",
    "SwarmbusError": "swarmbus.errors",
    "run_child": "swarmbus.children",
    "scrubbed_env": "swarmbus.children",
    "program_problem": "swarmbus.children",
    "find_program": "swarmbus.children",
    "check_env_passthrough": "swarmbus.children",
    "read_json_file": "swarmbus.files",
    "write_json_file": "swarmbus.files",
    "TomlEntries": "swarmbus.provision",
    "program_version": "swarmbus.provision",
    "render_wake_prompt": "swarmbus.prompts",
    "render_message": "swarmbus.prompts",
    "SKILL_RULES": "swarmbus.prompts",
    "WriteFile": "swarmbus.provision",
    "JsonEntry": "swarmbus.provision",
    "RunCommand": "swarmbus.provision",
    "Verify": "swarmbus.provision",
    "ProvisionError": "swarmbus.provision",
    "AgentPaths": "swarmbus.paths",
}

# Spelled out (not computed from _EXPORTS) so that type checkers see the public names;
# tests/test_packaging.py checks the two agree.
__all__ = [
    "OPERATOR_EVENT_KINDS",
    "SKILL_RULES",
    "AgentPaths",
    "CheckResult",
    "Command",
    "DeliveryEvent",
    "DoctorCheck",
    "DoctorContext",
    "Envelope",
    "EnvelopeError",
    "Handler",
    "HandlerContext",
    "HookRelay",
    "HostSession",
    "HostType",
    "InitStep",
    "JsonEntry",
    "OperatorEvent",
    "PolicyState",
    "ProvisionError",
    "RunCommand",
    "Service",
    "Settings",
    "StoredMessage",
    "SwarmbusError",
    "Task",
    "TaskHandler",
    "TomlEntries",
    "Verdict",
    "Verify",
    "WakeDecision",
    "WakeOutcome",
    "WakePath",
    "WriteFile",
    "__version__",
    "check_env_passthrough",
    "combine_verdicts",
    "find_program",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "new_envelope",
    "probe_paths",
    "program_problem",
    "program_version",
    "read_json_file",
    "render_message",
    "render_wake_prompt",
    "run_child",
    "scrubbed_env",
    "skip",
    "validate_agent_id",
    "wake",
    "wake_by_paths",
    "write_json_file",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from swarmbus.api import (
        OPERATOR_EVENT_KINDS,
        CheckResult,
        Command,
        DeliveryEvent,
        DoctorCheck,
        DoctorContext,
        Handler,
        HandlerContext,
        HostSession,
        HostType,
        InitStep,
        OperatorEvent,
        PolicyState,
        Service,
        StoredMessage,
        Task,
        TaskHandler,
        Verdict,
        WakeDecision,
        WakeOutcome,
        WakePath,
        combine_verdicts,
        skip,
        wake,
    )
    from swarmbus.children import check_env_passthrough, find_program, program_problem, run_child, scrubbed_env
    from swarmbus.envelope import Envelope, EnvelopeError, new_envelope, validate_agent_id
    from swarmbus.errors import SwarmbusError
    from swarmbus.files import read_json_file, write_json_file
    from swarmbus.hookspecs import hookimpl, hookspec
    from swarmbus.paths import AgentPaths
    from swarmbus.plugins import HookRelay, get_plugin_manager
    from swarmbus.prompts import SKILL_RULES, render_message, render_wake_prompt
    from swarmbus.provision import (
        JsonEntry,
        ProvisionError,
        RunCommand,
        TomlEntries,
        Verify,
        WriteFile,
        program_version,
    )
    from swarmbus.settings import Settings
    from swarmbus.wake_router import probe_paths, wake_by_paths


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'swarmbus' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
