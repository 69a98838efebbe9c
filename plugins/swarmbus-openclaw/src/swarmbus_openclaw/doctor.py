"""``swarmbus doctor`` checks for host type ``openclaw`` (all skipped for other host types).

- ``openclaw-gateway``: reachable, and the handshake with the token succeeds (a refused token
  fails with the gateway's ``details.code``, e.g. ``AUTH_TOKEN_MISMATCH``);
- ``openclaw-protocol``: the gateway negotiated protocol 4;
- ``openclaw-scopes``: ``operator.write`` is in hello-ok's ``auth.scopes`` (``agent`` needs it);
- ``openclaw-cli``: ``openclaw --version`` runs (the fallback waker); a warning only.

The handshake runs once per doctor run; its result is shared through ``ctx.cache``.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from typing import Any

from swarmbus import CheckResult, DoctorCheck, DoctorContext
from swarmbus_openclaw.cli_fallback import cli_environment, find_openclaw
from swarmbus_openclaw.config import ConfigProblem, config, resolve_target
from swarmbus_openclaw.gateway import GatewayError, probe, scopes_text
from swarmbus_openclaw.protocol import HOST_TYPE, PROTOCOL_VERSION
from swarmbus_openclaw.wake import connect_options, explain

CACHE_KEY = "openclaw-probe"


def _applies(ctx: DoctorContext) -> bool:
    return ctx.settings.host_type == HOST_TYPE


def _skip_other_host(ctx: DoctorContext) -> CheckResult:
    return CheckResult("skip", f"host type is {ctx.settings.host_type or 'none'}, not openclaw")


def _probe(ctx: DoctorContext) -> dict[str, Any]:
    if CACHE_KEY in ctx.cache:
        return ctx.cache[CACHE_KEY]  # type: ignore[no-any-return]
    cfg = config(ctx.settings)
    result: dict[str, Any]
    try:
        target = resolve_target(cfg)
        options = connect_options(cfg, target, agent_id=ctx.agent_id or ctx.settings.agent_id,
                                  state_dir=ctx.settings.state_dir)
    except ConfigProblem as exc:
        result = {"ok": False, "summary": f"openclaw configuration unusable: {exc}",
                  "fix": "fix [plugins.openclaw] in swarmbus' config"}
        ctx.cache[CACHE_KEY] = result
        return result
    try:
        hello = asyncio.run(probe(options))
        result = {"ok": True, "hello": hello, "target": target}
    except GatewayError as exc:
        if exc.code == "UNREACHABLE":
            fix = ("start the gateway (`openclaw gateway run`, or its service) or point [plugins.openclaw] "
                   f"gateway_url at it (URL from {target.url_source})")
            summary = exc.message
        else:
            fix = "see the message; `openclaw config get gateway.auth` shows the gateway's auth settings"
            summary = explain(exc, target)
        result = {"ok": False, "summary": summary, "fix": fix, "error": exc, "target": target}
    ctx.cache[CACHE_KEY] = result
    return result


def check_gateway(ctx: DoctorContext) -> CheckResult:
    if not _applies(ctx):
        return _skip_other_host(ctx)
    probe_result = _probe(ctx)
    if not probe_result["ok"]:
        error = probe_result.get("error")
        details = {"code": error.code, "details_code": error.detail_code} if isinstance(error, GatewayError) else {}
        return CheckResult("fail", probe_result["summary"], fix=probe_result["fix"], details=details)
    hello, target = probe_result["hello"], probe_result["target"]
    signed = "signed device" if target.sign else "no device identity (loopback)"
    return CheckResult("ok", f"OpenClaw gateway {target.url} reachable, handshake OK (OpenClaw "
                             f"{hello.server_version}, token from {target.token_source}, {signed})",
                       details={"url": target.url, "server_version": hello.server_version})


def check_protocol(ctx: DoctorContext) -> CheckResult:
    if not _applies(ctx):
        return _skip_other_host(ctx)
    probe_result = _probe(ctx)
    if not probe_result["ok"]:
        return CheckResult("skip", "protocol not negotiated (no handshake)")
    hello = probe_result["hello"]
    if hello.protocol != PROTOCOL_VERSION:
        return CheckResult("fail", f"gateway negotiated protocol {hello.protocol}, expected {PROTOCOL_VERSION}",
                           fix="upgrade OpenClaw (npm install -g openclaw@latest) or swarmbus-openclaw")
    return CheckResult("ok", f"gateway protocol {hello.protocol}")


def check_scopes(ctx: DoctorContext) -> CheckResult:
    if not _applies(ctx):
        return _skip_other_host(ctx)
    probe_result = _probe(ctx)
    if not probe_result["ok"]:
        return CheckResult("skip", "scopes not known (no handshake)")
    hello = probe_result["hello"]
    if "operator.write" not in hello.scopes:
        return CheckResult("fail", f"operator.write not granted (scopes: {scopes_text(hello.scopes)}); "
                                   "the agent method needs it",
                           fix="use the gateway's shared token, or approve this device with operator.write")
    return CheckResult("ok", f"operator.write granted (scopes: {scopes_text(hello.scopes)})")


def check_cli(ctx: DoctorContext) -> CheckResult:
    if not _applies(ctx):
        return _skip_other_host(ctx)
    cfg = config(ctx.settings)
    if not cfg.use_cli_fallback:
        return CheckResult("skip", "CLI fallback disabled (use_cli_fallback = false)")
    executable = find_openclaw(cfg)
    if executable is None:
        return CheckResult("warn", "openclaw CLI not found: no fallback when the gateway is unreachable",
                           fix="npm install -g openclaw, or set [plugins.openclaw] openclaw_path")
    try:
        proc = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=30,
                              env=cli_environment(cfg, None))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return CheckResult("warn", f"{executable} --version failed: {exc}",
                           fix="check the openclaw install (it needs node >= 24.16 on PATH)")
    version = (proc.stdout.strip().splitlines() or [""])[0]
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return CheckResult("warn", f"{executable} --version exited {proc.returncode}: {last}",
                           fix="check the openclaw install (it needs node >= 24.16 on PATH)")
    return CheckResult("ok", f"CLI fallback available: {version or executable}")


def register_checks(register: Callable[[DoctorCheck], None]) -> None:
    register(DoctorCheck("openclaw-gateway", check_gateway, order=700))
    register(DoctorCheck("openclaw-protocol", check_protocol, order=701))
    register(DoctorCheck("openclaw-scopes", check_scopes, order=702))
    register(DoctorCheck("openclaw-cli", check_cli, order=703))
