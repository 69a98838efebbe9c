"""``swarmbus_wake`` for host type ``openclaw``: one ``agent`` run per wake.

The plugin takes coalesced wakes (``swarmbus_wake_coalesce``): the core runs one wake at a time
and hands the messages that arrived meanwhile to the next in ``decision.batch``; the run's prompt
is :func:`swarmbus.render_wake_prompt` of all of them, oldest first (peer content framed as
untrusted data).

The run's ``idempotencyKey`` (:func:`idempotency_key`) is the message id for a wake of one
message, else a hash of the batch's sorted ids. A retry, a daemon restart that dispatches the
same messages again in the same wake, or the CLI fallback after a dropped connection never
starts a second run for them: the gateway answers a repeated key with the first run. After a
restart the messages may be batched differently (the batch is whatever waited at that moment);
then the key differs and they are delivered again, rather than a message being lost behind a
key whose run never listed it: wakes are at-least-once.

One connection per wake. Wakes are rare next to the handshake's cost (a few ms on loopback),
a fresh connection never goes stale across gateway restarts, and nothing has to answer the
gateway's ticks between wakes. The daemon's ``handler_concurrency`` bounds how many
connections can be open at once.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from swarmbus import AgentPaths, HandlerContext, StoredMessage, WakeDecision, WakeOutcome, render_wake_prompt
from swarmbus_openclaw._version import __version__
from swarmbus_openclaw.cli_fallback import run_cli
from swarmbus_openclaw.config import ConfigProblem, OpenClawSettings, Target, config, resolve_target
from swarmbus_openclaw.gateway import AgentRun, ConnectOptions, GatewayError, GatewayUnreachable, run_agent
from swarmbus_openclaw.identity import DeviceIdentity, load_or_create

LABEL_LIMIT = 128
LOCAL_CODES = frozenset({"TIMEOUT", "CLOSED", "PROTOCOL", "HANDSHAKE", "INVALID_URL", "UNREACHABLE"})
_LABEL_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def run_label(subject: str) -> str:
    """``swarmbus: <subject>``: control characters and runs of spaces collapsed, at most
    128 characters."""
    text = " ".join(_LABEL_CONTROL.sub(" ", subject).split())
    label = f"swarmbus: {text}".strip() if text else "swarmbus: (no subject)"
    return label if len(label) <= LABEL_LIMIT else label[: LABEL_LIMIT - 1] + "…"


def identity_path(cfg: OpenClawSettings, state_dir: Path | str | None, agent_id: str | None) -> Path:
    """Where the device key pair lives: ``device_identity_path``, else
    ``<state_dir>/agents/<agent id>/openclaw-device.json``."""
    if cfg.device_identity_path is not None:
        return cfg.device_identity_path
    if not agent_id:
        raise ConfigProblem("a device identity is needed (non-loopback gateway or device_identity = \"always\") "
                            "but there is no agent id to keep it under: pass --agent-id or set device_identity_path")
    return AgentPaths.for_agent(agent_id, state_dir).root / "openclaw-device.json"


def connect_options(cfg: OpenClawSettings, target: Target, *, agent_id: str | None,
                    state_dir: Path | str | None) -> ConnectOptions:
    identity: DeviceIdentity | None = None
    if target.sign:
        path = identity_path(cfg, state_dir, agent_id)
        try:
            identity = load_or_create(path)
        except (OSError, ValueError) as exc:
            raise ConfigProblem(f"device identity {path}: {exc}") from None
    return ConnectOptions(
        url=target.url, token=target.token, password=target.password, client_id=cfg.client_id,
        client_mode=cfg.client_mode, client_version=__version__,
        display_name=f"swarmbus {agent_id}" if agent_id else "swarmbus", platform=sys.platform,
        identity=identity, connect_timeout=cfg.connect_timeout_s,
    )


def idempotency_key(messages: Sequence[StoredMessage]) -> str:
    """The message id for one message; for several ``swarmbus-batch-`` and the first 32 hex
    digits of the SHA-256 of their sorted ids (one per line): the same set of messages always
    gets the same key, whatever their order."""
    if len(messages) == 1:
        return messages[0].id
    digest = hashlib.sha256("\n".join(sorted(m.id for m in messages)).encode("utf-8")).hexdigest()
    return f"swarmbus-batch-{digest[:32]}"


def agent_params(cfg: OpenClawSettings, messages: Sequence[StoredMessage], prompt: str) -> dict[str, Any]:
    """The ``agent`` request's params for a wake of ``messages`` (oldest first, at least one)."""
    more = f" (+{len(messages) - 1} more)" if len(messages) > 1 else ""
    return {
        "message": prompt,
        "idempotencyKey": idempotency_key(messages),
        "agentId": cfg.agent_id,
        "sessionKey": cfg.session_key,
        "deliver": False,
        "label": run_label(messages[0].subject + more),
        "timeout": max(1, int(cfg.timeout_s)),
    }


def describe_run(run: AgentRun, cfg: OpenClawSettings) -> str:
    retries = f" after {run.attempts} attempts" if run.attempts > 1 else ""
    text = f"openclaw run {run.run_id} {run.status} (session {cfg.session_key}){retries}"
    if run.summary and run.summary != run.status:
        text += f": {run.summary}"
    if run.error is not None:
        text += f"; {run.error.describe()}"
    return text


def explain(exc: GatewayError, target: Target) -> str:
    """One line for a refused wake, with what to do about it. Never contains the token."""
    code = exc.detail_code or ""
    if code.startswith("AUTH_") or "unauthorized" in exc.message:
        hint = (f"the gateway refused the credentials (token from {target.token_source}); make it match "
                "gateway.auth.token in OpenClaw's config, or set [plugins.openclaw] token / token_file")
    elif exc.code == "PAIRING_REQUIRED" or code.startswith("PAIRING"):
        request = exc.details.get("requestId") if isinstance(exc.details, dict) else None
        hint = "approve this device on the gateway host: openclaw devices approve " + (request or "<requestId>")
    elif exc.code == "FORBIDDEN":
        hint = "the connection lacks operator.write: grant it to this client or device"
    else:
        hint = ""
    if exc.code in LOCAL_CODES:  # this client's own codes: nothing was refused
        return f"wake through gateway {target.url} failed: {exc.describe()}"
    return f"gateway {target.url} refused the wake: {exc.describe()}" + (f" ({hint})" if hint else "")


async def wake_openclaw(message: StoredMessage, decision: WakeDecision, context: HandlerContext) -> WakeOutcome:
    settings = context.settings
    cfg = config(settings)
    log = context.logger
    try:
        target = resolve_target(cfg)
        options = connect_options(cfg, target, agent_id=context.agent_id, state_dir=settings.state_dir)
    except ConfigProblem as exc:
        return WakeOutcome(False, f"openclaw: {exc}")
    messages = [message, *decision.batch]
    ids = ", ".join(m.id for m in messages)
    prompt = render_wake_prompt(messages, context.agent_id, instructions=cfg.extra_instructions)
    params = agent_params(cfg, messages, prompt)

    def on_retry(attempt: int, exc: GatewayError, delay: float) -> None:
        log.warning("openclaw: attempt %d for message(s) %s: %s; retrying in %.2fs (same idempotencyKey)",
                    attempt, ids, exc.describe(), delay)

    try:
        run, hello = await run_agent(options, params, wait_final=cfg.wait_for_final, timeout=cfg.timeout_s,
                                     max_attempts=cfg.max_attempts, on_retry=on_retry)
    except GatewayUnreachable as exc:
        if not cfg.use_cli_fallback:
            return WakeOutcome(False, f"{exc.message}; start the gateway (openclaw gateway run) or enable "
                                      "use_cli_fallback")
        log.warning("openclaw: %s; falling back to the openclaw CLI for message(s) %s", exc.message, ids)
        result = await run_cli(cfg, target, prompt)
        log.info("openclaw: CLI fallback for message(s) %s: %s", ids, result.detail,
                 extra={"message_id": message.id, "message_ids": [m.id for m in messages], "run_id": result.run_id,
                        "exit_code": result.exit_code})
        return WakeOutcome(result.ok, f"{exc.message}; {result.detail}", exit_code=result.exit_code)
    except GatewayError as exc:
        return WakeOutcome(False, explain(exc, target))
    detail = describe_run(run, cfg)
    if context.mark_step is not None:  # the gateway accepted the run: the prompt reached the agent
        context.mark_step([m.id for m in messages], "surfaced", f"openclaw gateway accepted run {run.run_id}")
    log.info("openclaw: message(s) %s -> %s (gateway %s, protocol %d)", ids, detail, hello.server_version,
             hello.protocol, extra={"message_id": message.id, "message_ids": [m.id for m in messages],
                                    "run_id": run.run_id, "run_status": run.status, "reason": decision.reason})
    return WakeOutcome(run.ok, detail)
