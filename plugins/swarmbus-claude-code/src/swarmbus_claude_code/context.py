"""``swarmbus cc-context --agent-id ID``: the UserPromptSubmit hook of the ``context`` mode.

Prints ``{"hookSpecificOutput": {"hookEventName": "UserPromptSubmit", "additionalContext":
...}}`` with the agent's unread messages (rendered by ``swarmbus.render_wake_prompt``, so
each is framed as untrusted data), or nothing when there are none, and advances the
``context`` consumer's cursor. It always exits 0 and never waits for long: a failure to read
is reported on stderr (Claude Code shows it in verbose mode) and the prompt goes on without
context.

The messages come from ``swarmbus read --consumer context --json`` (the public CLI), run as
a child with a deadline: with a daemon running it only reads the local store.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

from swarmbus import Envelope, Settings, StoredMessage, render_wake_prompt
from swarmbus_claude_code.settings import config

CONSUMER = "context"
MAX_MESSAGES = 20
READ_TIMEOUT = 20.0
_STORE_KEYS = ("seq", "topic", "received_at")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agent-id", metavar="ID", help="the agent whose unread messages to add (env SWARMBUS_AGENT_ID)")
    parser.add_argument("--max", type=int, default=MAX_MESSAGES, metavar="N",
                        help=f"at most N messages per prompt (default {MAX_MESSAGES})")


def to_stored(item: dict[str, Any]) -> StoredMessage:
    """A ``swarmbus read --json`` item back as a StoredMessage."""
    envelope = Envelope.from_dict({k: v for k, v in item.items() if k not in _STORE_KEYS})
    return StoredMessage(int(item["seq"]), envelope, str(item.get("topic", "")), float(item.get("received_at", 0.0)))


def read_unread(args: argparse.Namespace, agent_id: str, limit: int) -> list[StoredMessage]:
    argv = [sys.executable, "-m", "swarmbus", "read", "--agent-id", agent_id, "--consumer", CONSUMER,
            "--json", "--max", str(limit)]
    for flag, value in (("--config", getattr(args, "config", None)), ("--state-dir", getattr(args, "state_dir", None))):
        if value:
            argv += [flag, str(value)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=READ_TIMEOUT, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise RuntimeError(f"swarmbus read exited {proc.returncode}: {lines[-1] if lines else ''}")
    items = json.loads(proc.stdout or "[]")
    return [to_stored(item) for item in items]


def hook_output(messages: list[StoredMessage], agent_id: str, instructions: str | None) -> str:
    text = render_wake_prompt(messages, agent_id, instructions=instructions)
    return json.dumps({"hookSpecificOutput": {"hookEventName": "UserPromptSubmit", "additionalContext": text}})


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        agent_id = settings.require_agent_id()
        messages = read_unread(args, agent_id, max(1, min(args.max, 100)))
    except Exception as exc:  # never fail the user's prompt because of swarmbus
        print(f"swarmbus cc-context: no messages added: {exc}", file=sys.stderr)
        return 0
    if messages:
        print(hook_output(messages, agent_id, config(settings).extra_instructions))
    return 0
