"""A fake ``codex`` for the always-on tests (copied to a bin dir on PATH as ``codex``).

Every run appends JSON lines to the log next to it: a ``started`` line (argv, environment, stdin,
cwd, pid) and, when it ends, a ``finished`` line. Behaviour, as codex-cli 0.171.0 in the parts
swarmbus uses:

- ``--version``: ``codex-cli 9.9.9-fake``.
- ``exec [OPTIONS] -`` and ``exec resume [OPTIONS] <THREAD> -``: the prompt is read from stdin
  (``-`` must be last); ``--json`` prints the JSONL events ``thread.started`` (a new id, or the
  resumed one), ``turn.started``, ``item.completed`` (an ``agent_message``), ``turn.completed``.
  Resuming a thread it does not know fails like the real one: exit 1 and ``Error: thread/resume:
  thread/resume failed: no rollout found for thread id X (code -32600)`` on stderr. The threads it
  knows are in ``fake-codex-threads.json`` beside it.

The control file ``fake-codex-control.json`` (optional) can make a run wait until a file exists
(``block_until``) or fail (``fail``: the exit code, with an error on stderr).
"""

import json
import os
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONTROL = HERE / "fake-codex-control.json"
LOG = HERE / "fake-codex-log.jsonl"
THREADS = HERE / "fake-codex-threads.json"


def load(path, default):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def record(kind, **fields):
    line = {"kind": kind, "argv": sys.argv[1:], "cwd": os.getcwd(), "pid": os.getpid(), "env": dict(os.environ),
            **fields}
    with LOG.open("a") as fh:
        fh.write(json.dumps(line) + "\n")


def emit(event):
    print(json.dumps(event), flush=True)


def run_exec(args):
    if args[-1:] != ["-"]:
        print("fake codex: the prompt must come from stdin (-)", file=sys.stderr)
        return 2
    prompt = sys.stdin.read()
    record("started", stdin=prompt)
    ctl = load(CONTROL, {})
    threads = load(THREADS, [])
    resume = "resume" in args
    if resume:
        thread = args[-2]
        if thread not in threads:
            print('WARNING: proceeding, even though we could not create PATH aliases', file=sys.stderr)
            print(f"Error: thread/resume: thread/resume failed: no rollout found for thread id {thread} "
                  "(code -32600)", file=sys.stderr)
            record("finished", code=1)
            return 1
    else:
        thread = str(uuid.uuid4())
        THREADS.write_text(json.dumps([*threads, thread]))
    if ctl.get("block_until"):
        while not Path(ctl["block_until"]).exists():
            time.sleep(0.02)
    emit({"type": "thread.started", "thread_id": thread})
    emit({"type": "turn.started"})
    if ctl.get("fail"):
        print("ERROR: fake codex: stream disconnected before completion", file=sys.stderr)
        emit({"type": "turn.failed", "error": {"message": "stream disconnected before completion"}})
        record("finished", code=int(ctl["fail"]), thread_id=thread)
        return int(ctl["fail"])
    emit({"type": "item.completed", "item": {"id": "item_0", "type": "agent_message",
                                             "text": f"handled {prompt.count('### Message')} message(s)"}})
    emit({"type": "turn.completed", "usage": {"input_tokens": 10, "output_tokens": 2}})
    record("finished", code=0, thread_id=thread)
    return 0


def main():
    args = sys.argv[1:]
    if args in (["--version"], ["-V"]):
        record("version")
        print("codex-cli 9.9.9-fake")
        return 0
    if args[:1] == ["exec"]:
        return run_exec(args[1:])
    print(f"fake codex: unsupported arguments {args}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
