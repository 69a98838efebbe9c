"""The OpenClaw host's wake path for the core's wake router and ``swarmbus wake test``.

One path, ``gateway``: an ``agent`` run through the gateway's WebSocket protocol, confirmed by its
``accepted`` answer (the ladder's ``surfaced``), with the ``openclaw agent`` CLI as this path's
own fallback when the gateway cannot be reached at all (never after it was reached: a second run
of the same messages). The probe only resolves the configuration; the test is a full handshake
(``connect.challenge`` -> ``connect`` -> ``hello-ok``), which starts no run.
"""

from __future__ import annotations

from swarmbus import HandlerContext, StoredMessage, WakeDecision, WakeOutcome, WakePath
from swarmbus_openclaw.config import ConfigProblem, config, resolve_target
from swarmbus_openclaw.gateway import GatewayError, probe


async def _probe(context: HandlerContext) -> str | None:
    try:
        resolve_target(config(context.settings))
    except ConfigProblem as exc:
        return f"openclaw configuration unusable: {exc}"
    return None


async def _wake(messages: list[StoredMessage], context: HandlerContext) -> WakeOutcome:
    from swarmbus_openclaw.wake import wake_openclaw

    return await wake_openclaw(messages[0], WakeDecision(True, "router", batch=tuple(messages[1:])), context)


async def _test(context: HandlerContext) -> str | None:
    from swarmbus_openclaw.wake import connect_options, explain

    cfg = config(context.settings)
    try:
        target = resolve_target(cfg)
        options = connect_options(cfg, target, agent_id=context.agent_id, state_dir=context.settings.state_dir)
        await probe(options)
    except ConfigProblem as exc:
        return str(exc)
    except GatewayError as exc:
        return exc.message if exc.code == "UNREACHABLE" else explain(exc, target)
    return None


def wake_paths() -> list[WakePath]:
    return [WakePath("gateway", _probe, _wake, "an agent run through the OpenClaw gateway (CLI fallback when "
                                               "it is unreachable)", test=_test)]
