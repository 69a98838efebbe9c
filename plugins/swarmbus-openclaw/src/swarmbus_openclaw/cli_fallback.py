"""The fallback waker: ``openclaw agent`` as a child process.

Used when the gateway URL this plugin resolved does not answer and ``use_cli_fallback`` is
on. The CLI resolves its own gateway target (remote mode, profiles, TLS settings this plugin
does not read), and with ``cli_local = true`` it adds ``--local`` and runs the turn embedded,
with no gateway at all. The prompt goes in a 0600 temporary file (``--message-file``), so its
size is not limited by argv and it never shows in ``ps``.

The child's environment is scrubbed: an allow-list of ordinary variables, every ``OPENCLAW_*``
variable of the daemon (the CLI's own settings), and ``OPENCLAW_GATEWAY_TOKEN`` when the token
came from swarmbus' config. Broker credentials and other ``SWARMBUS_*`` values never reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from swarmbus import run_child, scrubbed_env
from swarmbus_openclaw.config import OpenClawSettings, Target

EXTRA_ENV_ALLOW = ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "NODE_EXTRA_CA_CERTS")
"""Besides swarmbus's base allow-list (swarmbus.scrubbed_env), what the openclaw CLI needs."""
OUTPUT_LIMIT = 64 * 1024


@dataclass(frozen=True)
class CliResult:
    ok: bool
    exit_code: int | None
    run_id: str | None
    status: str | None
    detail: str
    argv: tuple[str, ...] = ()


def find_openclaw(cfg: OpenClawSettings) -> str | None:
    """The ``openclaw`` executable: ``openclaw_path`` or ``openclaw`` on PATH."""
    if cfg.openclaw_path:
        path = os.path.expanduser(cfg.openclaw_path)
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else shutil.which(path)
    return shutil.which("openclaw")


def cli_environment(cfg: OpenClawSettings, target: Target | None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    base = os.environ if base is None else base
    env = scrubbed_env(EXTRA_ENV_ALLOW, base)
    env.update({k: v for k, v in base.items() if k.startswith("OPENCLAW_")})
    if target is not None and target.token and target.token_source.startswith(("[plugins.openclaw]", "token_file")):
        env["OPENCLAW_GATEWAY_TOKEN"] = target.token
    if cfg.config_path is not None:
        env["OPENCLAW_CONFIG_PATH"] = str(cfg.config_path)
    env.setdefault("NO_COLOR", "1")
    return env


def cli_argv(executable: str, cfg: OpenClawSettings, message_file: str) -> list[str]:
    argv = [executable, "agent", "--session-key", cfg.session_key, "--message-file", message_file, "--json",
            "--timeout", str(max(1, int(cfg.timeout_s)))]
    if cfg.cli_local:
        argv.append("--local")
    return argv


def _parse_json(stdout: str) -> dict[str, Any] | None:
    text = stdout.strip()
    if not text:
        return None
    with contextlib.suppress(ValueError):
        data = json.loads(text)
        return data if isinstance(data, dict) else None
    start = text.find("{")  # tolerate log lines before the JSON document
    with contextlib.suppress(ValueError):
        data = json.loads(text[start:]) if start >= 0 else None
        return data if isinstance(data, dict) else None
    return None


async def run_cli(cfg: OpenClawSettings, target: Target | None, prompt: str, *,
                  base_env: Mapping[str, str] | None = None) -> CliResult:
    """Run ``openclaw agent ... --json`` once with ``prompt``; parse its JSON answer."""
    executable = find_openclaw(cfg)
    if executable is None:
        where = cfg.openclaw_path or "openclaw on PATH"
        return CliResult(False, None, None, None, f"CLI fallback unavailable: {where} not found")
    fd, path = tempfile.mkstemp(prefix="swarmbus-openclaw-", suffix=".md")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(prompt)
        argv = cli_argv(executable, cfg, path)
        try:
            code, out, err = await asyncio.wait_for(
                run_child(argv, env=cli_environment(cfg, target, base_env)), cfg.timeout_s + 30)
        except FileNotFoundError:
            return CliResult(False, None, None, None, f"CLI fallback unavailable: {executable} not found")
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
    data = _parse_json(out[-OUTPUT_LIMIT:].decode("utf-8", "replace"))
    stderr_tail = err[-2000:].decode("utf-8", "replace").strip().splitlines()
    if data is None:
        last = stderr_tail[-1] if stderr_tail else "no JSON output"
        return CliResult(False, code, None, None, f"openclaw agent exited {code}: {last}", tuple(argv))
    run_id = data.get("runId") if isinstance(data.get("runId"), str) else None
    status = data.get("status") if isinstance(data.get("status"), str) else None
    ok = code == 0 and data.get("ok", True) is not False
    if ok:
        detail = f"openclaw agent (CLI) run {run_id or '?'} {status or 'ok'}"
    else:
        error = data.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        first = str(message or "failed").strip().splitlines()
        detail = f"openclaw agent (CLI) exited {code}: {first[0] if first else 'failed'}"
    return CliResult(ok, code, run_id, status, detail, tuple(argv))
