"""A fake ``claude`` for the always-on tests (copied to a bin dir on PATH as ``claude``).

Every run appends one JSON line to the log next to the control file: argv, environment,
stdin, cwd and pid (a ``started`` line first, then, when it finishes, a ``finished`` line).
Behaviour, as the real binary in the parts swarmbus uses:

- ``--version``: prints a version line.
- ``mcp add -s user NAME [-e K=V]... -- CMD ARGS...`` / ``mcp remove -s user NAME``: edits the
  top-level ``mcpServers`` of ``$HOME/.claude.json``; adding an existing name fails, removing a
  missing one fails (exit 1, message on stderr).
- ``-p``: reads the prompt from stdin, prints one ``--output-format json`` result with a
  ``session_id`` (a new uuid, or the ``--resume`` id). ``--resume`` of an id listed in the
  control file's ``lost`` fails with exit 1 and "No conversation found with session ID".

The control file (JSON, optional) can also ask a ``-p`` run to wait until a file exists
(``block_until``), to start a grandchild process first (``spawn_child``), or to exit with an
error (``fail``: exit code). ``FAKE_CLAUDE_SLEEP`` (seconds) makes a ``-p`` run sleep.
"""

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

CONTROL = Path(__file__).resolve().with_name("fake-claude-control.json")
LOG = Path(__file__).resolve().with_name("fake-claude-log.jsonl")


def control():
    try:
        return json.loads(CONTROL.read_text())
    except (OSError, ValueError):
        return {}


def record(kind, **fields):
    line = {"kind": kind, "argv": sys.argv[1:], "cwd": os.getcwd(), "pid": os.getpid(),
            "env": dict(os.environ), **fields}
    with LOG.open("a") as fh:
        fh.write(json.dumps(line) + "\n")


def claude_json():
    return Path(os.environ["HOME"]) / ".claude.json"


def mcp(args):
    path = claude_json()
    data = json.loads(path.read_text()) if path.exists() else {}
    servers = data.setdefault("mcpServers", {})
    action, rest = args[0], args[1:]
    if rest[:2] != ["-s", "user"]:
        print("fake claude: only -s user is supported", file=sys.stderr)
        return 1
    rest = rest[2:]
    if action == "remove":
        name = rest[0]
        if name not in servers:
            print(f'No MCP server named "{name}" in user scope', file=sys.stderr)
            return 1
        del servers[name]
        print(f'Removed MCP server "{name}" from user config')  # what the real one says (2.1.x)
    elif action == "add":
        name, rest = rest[0], rest[1:]
        env = {}
        while rest and rest[0] == "-e":
            key, _, value = rest[1].partition("=")
            env[key] = value
            rest = rest[2:]
        if rest[:1] == ["--"]:
            rest = rest[1:]
        if name in servers:
            print(f"MCP server {name} already exists in user config", file=sys.stderr)
            return 1
        servers[name] = {"type": "stdio", "command": rest[0], "args": rest[1:], "env": env}
    else:
        return 2
    path.write_text(json.dumps(data, indent=2))
    print(f"File modified: {path}")
    return 0


def print_mode(args):
    ctl = control()
    prompt = sys.stdin.read()
    record("started", stdin=prompt)
    resume = args[args.index("--resume") + 1] if "--resume" in args else None
    if resume and resume in ctl.get("lost", []):
        print(f"No conversation found with session ID: {resume}", file=sys.stderr)
        record("finished", code=1)
        return 1
    if ctl.get("spawn_child"):
        child = subprocess.Popen(["sleep", "300"])
        record("child", child_pid=child.pid)
    if ctl.get("block_until"):
        while not Path(ctl["block_until"]).exists():
            time.sleep(0.02)
    if os.environ.get("FAKE_CLAUDE_SLEEP"):
        time.sleep(float(os.environ["FAKE_CLAUDE_SLEEP"]))
    if ctl.get("fail"):
        print("fake claude: API Error: overloaded", file=sys.stderr)
        record("finished", code=int(ctl["fail"]))
        return int(ctl["fail"])
    session = resume or str(uuid.uuid4())
    print(json.dumps({"type": "result", "subtype": "success", "is_error": False, "num_turns": 1,
                      "result": f"handled {prompt.count('### Message')} message(s)", "session_id": session}))
    record("finished", code=0, session_id=session)
    return 0


def main():
    args = sys.argv[1:]
    if args == ["--version"]:
        record("version")
        print("9.9.9 (Claude Code, fake)")
        return 0
    if args[:1] == ["mcp"]:
        record("mcp")
        return mcp(args[1:])
    if "-p" in args or "--print" in args:
        return print_mode(args)
    print(f"fake claude: unsupported arguments {args}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
