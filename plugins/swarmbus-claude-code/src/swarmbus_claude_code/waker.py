"""Headless wakes: ``claude -p --resume <session>`` per wake, for every message of the wake.

- The prompt (``swarmbus.render_wake_prompt``: every peer field fenced and framed as
  untrusted data) goes to ``claude -p`` on stdin: no shell, no argv length limit, and text
  starting with ``-`` cannot be taken for an option.
- The child gets a scrubbed environment: an allow-list (PATH, HOME, locale, ...) plus
  ``env_passthrough`` plus the non-secret ``SWARMBUS_CONFIG``/``SWARMBUS_STATE_DIR`` and
  ``SWARMBUS_AGENT_ID``; never broker settings or credentials. It runs in its own process
  group, which is killed when the wake is cancelled (handler timeout, daemon shutdown), and on
  Linux it dies with the daemon.
- The session id from ``--output-format json`` is kept in
  ``<state>/agents/<id>/claude-session.json`` and resumed next time; when Claude no longer has
  that session the wake is retried once without ``--resume`` and the new id is kept.
- One wake at a time per agent is the core's: the plugin answers ``swarmbus_wake_coalesce``
  with True, so the daemon runs one wake at a time and hands the messages that arrived while
  one ran to the next in ``decision.batch``; :func:`wake_once` lists them all in one prompt.
- Each wake is logged (exit status, duration, session id, the last lines of output) and
  recorded in ``<state>/agents/<id>/claude-last-wake.json`` for ``swarmbus doctor``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarmbus import (
    HandlerContext,
    StoredMessage,
    WakeOutcome,
    read_json_file,
    render_wake_prompt,
    run_child,
    scrubbed_env,
    write_json_file,
)
from swarmbus_claude_code.session import WAKE_CHILD_ENV
from swarmbus_claude_code.settings import (
    CCSettings,
    agent_dir,
    config,
    find_claude,
    locator_env,
)

SESSION_FILE = "claude-session.json"
LAST_WAKE_FILE = "claude-last-wake.json"
TAIL_LINES = 20
TAIL_CHARS = 2000
_SESSION_LOST = re.compile(r"no conversation found|session id", re.IGNORECASE)
"""What ``claude -p --resume X`` says when it does not have session X (observed in 2.1.x:
"No conversation found with session ID: X", and "--resume requires a valid session ID ...")."""


# -- environment and argv ----------------------------------------------------------------------
def child_environment(cfg: CCSettings, agent_id: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    base = os.environ if base is None else base
    env = scrubbed_env(cfg.env_passthrough, base)  # never broker credentials, even when listed
    env.update(locator_env(dict(base)))
    env["SWARMBUS_AGENT_ID"] = agent_id
    env[WAKE_CHILD_ENV] = "1"  # its MCP server must not offer this short-lived run as a live session
    return env


def claude_argv(claude: str, cfg: CCSettings, session_id: str | None) -> list[str]:
    """``claude -p`` with the prompt on stdin."""
    argv = [claude, "-p", "--output-format", "json", "--permission-mode", cfg.permission_mode]
    if cfg.model:
        argv += ["--model", cfg.model]
    if cfg.max_turns is not None:
        argv += ["--max-turns", str(cfg.max_turns)]
    if session_id:
        argv += ["--resume", session_id]
    if cfg.allowed_tools:
        argv += ["--allowedTools", *cfg.allowed_tools]  # variadic: keep it last
    return argv


# -- state files -------------------------------------------------------------------------------
def load_session(state: Path, cwd: Path) -> str | None:
    """The kept session id, if it was made in ``cwd`` (Claude keys sessions by directory)."""
    data = read_json_file(state / SESSION_FILE)
    if not data or data.get("cwd") != str(cwd):
        return None
    sid = data.get("session_id")
    return sid if isinstance(sid, str) and sid else None


def save_session(state: Path, session_id: str, cwd: Path) -> None:
    write_json_file(state / SESSION_FILE, {"session_id": session_id, "cwd": str(cwd), "updated_at": time.time()})


def load_last_wake(state: Path) -> dict[str, Any] | None:
    return read_json_file(state / LAST_WAKE_FILE)


# -- running claude ----------------------------------------------------------------------------
async def run_process(argv: Sequence[str], stdin: bytes, env: dict[str, str], cwd: Path) -> tuple[int, bytes, bytes]:
    """Run ``argv`` (no shell, own process group, dies with the daemon, killed on cancellation:
    :func:`swarmbus.run_child`); return (exit code, stdout, stderr)."""
    return await run_child(argv, stdin=stdin, env=env, cwd=cwd)


def parse_result(stdout: bytes) -> dict[str, Any] | None:
    """The ``--output-format json`` result object (the last JSON object line), or None."""
    text = stdout.decode("utf-8", "replace").strip()
    if not text:
        return None
    candidates = [text, *reversed(text.splitlines())]
    for candidate in candidates:
        try:
            data = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(data, dict):
            return data
    return None


def _tail(*parts: str) -> str:
    lines = [line for part in parts for line in part.strip().splitlines() if line.strip()]
    return "\n".join(lines[-TAIL_LINES:])[-TAIL_CHARS:]


@dataclass
class _Run:
    code: int
    stdout: str
    stderr: str
    result: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        return self.code == 0 and self.result is not None and not self.result.get("is_error")

    @property
    def session_id(self) -> str | None:
        sid = (self.result or {}).get("session_id")
        return sid if isinstance(sid, str) and sid else None

    def output_tail(self) -> str:
        text = (self.result or {}).get("result")
        return _tail(self.stderr, text if isinstance(text, str) else self.stdout)


async def _run_claude(argv: list[str], prompt: str, env: dict[str, str], cwd: Path) -> _Run:
    code, out, err = await run_process(argv, prompt.encode("utf-8"), env, cwd)
    return _Run(code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), parse_result(out))


async def wake_once(messages: Sequence[StoredMessage], context: HandlerContext) -> WakeOutcome:
    """One headless wake covering ``messages``."""
    cfg = config(context.settings)
    agent_id = context.agent_id
    state = agent_dir(context.settings, agent_id)
    started = time.monotonic()
    ids = [m.id for m in messages]
    claude = find_claude(cfg)
    if claude is None:
        outcome = WakeOutcome(False, "claude not found: install Claude Code or set claude_path under [plugins.cc]")
        _record(context, state, outcome, ids, started, None, "", resumed=False, recreated=False)
        return outcome
    cwd = Path(cfg.cwd).expanduser() if cfg.cwd else state
    cwd.mkdir(parents=True, exist_ok=True)
    prompt = render_wake_prompt(messages, agent_id, instructions=cfg.extra_instructions)
    env = child_environment(cfg, agent_id)
    previous = load_session(state, cwd)
    run = await _run_claude(claude_argv(claude, cfg, previous), prompt, env, cwd)
    recreated = False
    if previous and run.code != 0 and run.result is None and _SESSION_LOST.search(run.stderr + run.stdout):
        # no result at all and an error about the session: Claude does not have it any more
        last = (_tail(run.stderr, run.stdout).splitlines() or ["no output"])[-1]
        context.logger.warning("claude session %s of %s is gone (%s); starting a new one", previous, agent_id, last)
        run = await _run_claude(claude_argv(claude, cfg, None), prompt, env, cwd)
        recreated = True
    sid = run.session_id
    if sid:  # a failed retry keeps the old id: if the failure was transient, the next wake resumes it
        save_session(state, sid, cwd)
    elapsed = time.monotonic() - started
    how = "new session (the previous one was gone)" if recreated else ("resumed" if previous else "new session")
    if run.ok:
        detail = f"claude exited 0 in {elapsed:.1f}s, session {sid} ({how}), {len(messages)} message(s)"
    else:
        reason = (run.result or {}).get("subtype") or (_tail(run.stderr, run.stdout).splitlines() or ["no output"])[-1]
        detail = f"claude exited {run.code} in {elapsed:.1f}s: {str(reason)[:300]}"
    outcome = WakeOutcome(run.ok, detail, exit_code=run.code)
    _record(context, state, outcome, ids, started, sid, run.output_tail(), resumed=bool(previous) and not recreated,
            recreated=recreated)
    return outcome


def _record(context: HandlerContext, state: Path, outcome: WakeOutcome, ids: list[str], started: float,
            session_id: str | None, tail: str, *, resumed: bool, recreated: bool) -> None:
    duration = round(time.monotonic() - started, 3)
    fields = {"agent_id": context.agent_id, "ok": outcome.ok, "exit_code": outcome.exit_code, "duration_s": duration,
              "session_id": session_id, "resumed": resumed, "session_recreated": recreated, "message_ids": ids,
              "detail": outcome.detail}
    log = context.logger.info if outcome.ok else context.logger.warning
    last_line = (tail.splitlines() or [""])[-1][:200]
    log("cc wake %s for %d message(s) [%s]: %s%s", "ok" if outcome.ok else "failed", len(ids), ", ".join(ids),
        outcome.detail, f"; last output: {last_line}" if last_line else "",
        extra={"wake_output": tail, **{k: v for k, v in fields.items() if k != "detail"}})
    if tail:  # the whole tail in text logs too, at debug level (JSON logs carry it as wake_output)
        context.logger.debug("cc wake output (last lines):\n%s", tail)
    with contextlib.suppress(OSError):
        write_json_file(state / LAST_WAKE_FILE, {**fields, "finished_at": time.time(), "output_tail": tail})
