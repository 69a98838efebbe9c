"""Headless wakes: ``codex exec resume <thread> -`` with the prompt on stdin.

- The first wake of an agent without a thread runs ``codex exec --json --skip-git-repo-check ... -``
  and keeps the thread id from its ``{"type": "thread.started", "thread_id": ...}`` event in the
  agent's state dir; later wakes run ``codex exec resume --json --skip-git-repo-check ... <thread> -``.
  The sandbox, the approval policy and the model go in as ``-c sandbox_mode=...``,
  ``-c approval_policy=...`` and ``-m`` (``exec resume`` has no ``--sandbox``); with the swarmbus MCP
  server registered (and ``wait_for_mcp``), ``-c mcp_servers.swarmbus.required=true`` makes Codex
  wait for it before the first model request (0.171.0 often does not otherwise: the server takes
  about a second to start).
- The prompt goes on stdin (``-``): no shell, no argv length limit, and text starting with ``-``
  cannot be taken for an option.
- The child runs through ``swarmbus.run_child``: argv only, in its own process group, killed
  when the wake is cancelled, dying with the daemon; with a scrubbed environment
  (``swarmbus.scrubbed_env``: PATH, HOME, locale, ... plus ``env_passthrough``; never broker
  settings or credentials) plus ``CODEX_HOME``, the non-secret ``SWARMBUS_CONFIG`` /
  ``SWARMBUS_STATE_DIR`` and ``SWARMBUS_AGENT_ID``.
- ``no rollout found for thread id`` (Codex does not have the thread): a thread kept from an
  earlier wake is replaced by a new one (the run is repeated without ``resume``); a configured
  ``thread_id`` is never replaced (the wake fails and says so).
- A success is exit 0 with a ``turn.completed`` event: the model read the messages.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarmbus import HandlerContext, run_child, scrubbed_env
from swarmbus_codex import codex_config
from swarmbus_codex.config import MCP_NAME, CodexSettings, codex_home, config_toml_path, locator_env
from swarmbus_codex.state import Thread

TAIL_LINES = 20
TAIL_CHARS = 2000
LOST = ("no rollout found", "thread not found")


def child_environment(cfg: CodexSettings, agent_id: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    base = os.environ if base is None else base
    env = scrubbed_env(cfg.env_passthrough, base)  # never broker credentials, even when listed
    env.update(locator_env(dict(base)))
    env["CODEX_HOME"] = str(codex_home(cfg))
    env["SWARMBUS_AGENT_ID"] = agent_id
    return env


def overrides(cfg: CodexSettings) -> list[str]:
    argv = ["-c", f"sandbox_mode={json.dumps(cfg.sandbox)}", "-c", f"approval_policy={json.dumps(cfg.approval_policy)}"]
    if cfg.wait_for_mcp and codex_config.current_entry(config_toml_path(cfg), MCP_NAME) is not None:
        argv += ["-c", f"mcp_servers.{MCP_NAME}.required=true"]
    if cfg.model:
        argv += ["-m", cfg.model]
    return argv


def exec_argv(codex: str, cfg: CodexSettings, thread_id: str | None) -> list[str]:
    """``codex exec`` (a new thread) or ``codex exec resume <thread>``, prompt on stdin."""
    if thread_id is None:
        return [codex, "exec", "--json", "--skip-git-repo-check", *overrides(cfg), "-"]
    return [codex, "exec", "resume", "--json", "--skip-git-repo-check", *overrides(cfg), thread_id, "-"]


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def thread_id(self) -> str | None:
        for event in self.events:
            if event.get("type") == "thread.started" and isinstance(event.get("thread_id"), str):
                return str(event["thread_id"])
        return None

    @property
    def completed(self) -> bool:
        return any(e.get("type") == "turn.completed" for e in self.events)

    @property
    def ok(self) -> bool:
        return self.code == 0 and self.completed

    @property
    def lost_thread(self) -> bool:
        text = (self.stderr + self.stdout).lower()
        return self.code != 0 and not self.completed and any(s in text for s in LOST)

    def reason(self) -> str:
        for event in reversed(self.events):
            if event.get("type") == "turn.failed":
                error = event.get("error")
                return str(error.get("message") if isinstance(error, dict) else error)[:300]
        lines = [ln for ln in self.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING: proceeding")]
        errors = [ln for ln in lines if "error" in ln.lower()]
        return ((errors or lines or ["no output"])[0])[:300]

    def tail(self) -> str:
        said = [str(e["item"].get("text")) for e in self.events
                if e.get("type") == "item.completed" and isinstance(e.get("item"), dict)
                and e["item"].get("type") == "agent_message"]
        lines = [ln for part in (self.stderr, *said) for ln in part.strip().splitlines() if ln.strip()]
        return "\n".join(lines[-TAIL_LINES:])[-TAIL_CHARS:]


def parse_events(stdout: str) -> list[dict[str, Any]]:
    events = []
    for line in stdout.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


async def run_codex(argv: Sequence[str], prompt: str, env: dict[str, str], cwd: Path) -> Run:
    code, out, err = await run_child(argv, stdin=prompt.encode("utf-8"), env=env, cwd=cwd)
    stdout = out.decode("utf-8", "replace")
    return Run(code, stdout, err.decode("utf-8", "replace"), parse_events(stdout))


@dataclass
class Outcome:
    ok: bool
    detail: str
    exit_code: int | None
    thread_id: str | None
    tail: str


async def wake_headless(codex: str, cfg: CodexSettings, context: HandlerContext, prompt: str,
                        thread: Thread | None, cwd: Path, count: int) -> Outcome:
    """One headless run covering ``count`` messages; see the module docstring."""
    started = time.monotonic()
    env = child_environment(cfg, context.agent_id)
    cwd.mkdir(parents=True, exist_ok=True)
    run = await run_codex(exec_argv(codex, cfg, thread.id if thread else None), prompt, env, cwd)
    how = "resumed" if thread else "new thread"
    if thread is not None and run.lost_thread:
        if thread.configured:
            detail = (f"codex has no thread {thread.id} (thread_id in [plugins.codex]): {run.reason()}; "
                      "fix thread_id, or remove it to let swarmbus start a thread")
            return Outcome(False, detail, run.code, None, run.tail())
        context.logger.warning("codex thread %s of %s is gone (%s); starting a new one", thread.id, context.agent_id,
                               run.reason())
        run = await run_codex(exec_argv(codex, cfg, None), prompt, env, cwd)
        how = f"new thread: {thread.id} was gone"
    elapsed = time.monotonic() - started
    tid = run.thread_id or (thread.id if thread is not None and how == "resumed" else None)
    plural = "s" if count != 1 else ""
    if run.ok:
        detail = f"codex exec exited 0 in {elapsed:.1f}s, thread {tid} ({how}), {count} message{plural}"
    else:
        detail = f"codex exec exited {run.code} in {elapsed:.1f}s ({how}): {run.reason()}"
    return Outcome(run.ok, detail, run.code, tid, run.tail())
