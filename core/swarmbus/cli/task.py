"""``swarmbus task``: post tasks to the task board, complete or fail the ones this agent holds,
list, show and wait for them (docs/swarm.md, "The task board").

``post``, ``complete`` and ``fail`` talk to the agent's daemon (control op ``task``): the poster's
daemon is the task's arbiter, the claimer's daemon holds its claim. ``list`` and ``show`` read
the agent's board database (no daemon needed; ``show`` asks the broker for a task known here
neither as posted nor as claimed). ``wait`` follows the task's retained state record on the
broker, from any agent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import sys
import time
from pathlib import Path
from typing import Any

from swarmbus.cli.common import load_settings_for, print_json, raw_config, safe_text
from swarmbus.control import DaemonUnavailable, request
from swarmbus.envelope import validate_own_id
from swarmbus.errors import SwarmbusError, TimeoutExpired, UsageError
from swarmbus.paths import AgentPaths

DESCRIPTION = """\
A task board on which exactly one eligible agent claims each task (docs/swarm.md).

post: the agent's daemon (it must run) becomes the task's arbiter: it keeps the task, offers it
to the agents whose role, capabilities and swarm fit, grants it to the first claim (one
transaction: the claim cannot be won twice), with a lease the claimer's daemon renews, and
offers it again (attempt + 1) when the lease runs out, up to --max-attempts; then it fails.
Prints the task id. Agents take a task with a plugin's handler for its type, or, when their
host takes tasks, as a wake for the host, which then completes or fails it:

  swarmbus task post review.diff --agent-id planner --role reviewer --capability python \\
      --payload '{"pr": 42}' --lease 120 --max-attempts 2
  swarmbus task complete t-4f3a9c1b2d7e8f60 --agent-id rev-1 --result '{"approved": true}'
  swarmbus task fail t-4f3a9c1b2d7e8f60 --agent-id rev-1 --error "repository unreachable"
  swarmbus task wait t-4f3a9c1b2d7e8f60 --agent-id planner --timeout 600
  swarmbus task list --agent-id planner
  swarmbus task show t-4f3a9c1b2d7e8f60 --agent-id planner --json

complete/fail: the arbiter accepts them only from the claim that holds the task now (its
fence); a claimer whose lease ran out is refused, and this command says why.

Exit codes: post 0 posted, 1 no daemon runs for the agent; complete/fail 0 accepted, 1 refused
or no answer (it is still delivered); show 1 no such task; wait 0 completed, 1 failed,
2 timeout; 2 usage error or broker unreachable (all)."""


def configure(p: argparse.ArgumentParser) -> None:
    """``swarmbus task ACTION ...``."""
    from swarmbus.cli.main import HelpFormatter, Parser, _agent, _broker, _common, _json

    p.description = DESCRIPTION
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser, required=True)

    def add(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        return actions.add_parser(name, help=help_text, description=description, formatter_class=HelpFormatter)

    post = add("post", "post a task; prints its id",
               "Post a task; this agent's daemon (it must run) is its arbiter. Prints the task id.\n\n"
               "  swarmbus task post example.echo --agent-id planner --payload '{\"text\": \"hi\"}'\n"
               "  jq -c . job.json | swarmbus task post build.run --agent-id planner --role builder \\\n"
               "      --payload-file -\n\nExit codes: 0 posted, 1 no daemon runs for the agent (or it refused the task),\n"
               "2 usage error.")
    post.add_argument("type", metavar="TYPE", help="what to do: 1-64 of a-z 0-9 . _ - (e.g. example.echo)")
    post.add_argument("--role", metavar="R", help="only agents with this role may take it (default: any role)")
    post.add_argument("--capability", metavar="C", action="append", dest="capabilities",
                      help="agents must have this capability; repeat it for several (all needed)")
    body = post.add_mutually_exclusive_group(required=True)
    body.add_argument("--payload", metavar="JSON", help="the task's input: any JSON value (at most 48 KiB)")
    body.add_argument("--payload-file", metavar="PATH", help="read the payload JSON from a file, or `-` for stdin")
    post.add_argument("--max-attempts", type=int, metavar="N",
                      help="offer it at most N times before it fails (default [tasks] max_attempts, 3)")
    post.add_argument("--lease", type=float, metavar="S",
                      help="a claim lasts S seconds without a renewal (default [tasks] lease, 60)")
    post.add_argument("--priority", choices=("low", "normal", "high"), default="high",
                      help="of the wake a host gets for it (default high: wakes under the default policy)")
    _common_args(post, _agent, _json, _common)

    complete = add("complete", "complete a task this agent holds, with its result",
                   "Complete a task this agent holds (its daemon must run) and wait for the arbiter's answer.\n\n"
                   "  swarmbus task complete t-4f3a9c1b2d7e8f60 --agent-id rev-1 --result '{\"ok\": true}'\n\n"
                   "Exit codes: 0 accepted; 1 refused (the lease ran out: the task was offered again), not held\n"
                   "here, or no answer within --timeout (it is still delivered); 2 usage error.")
    complete.add_argument("task_id", metavar="TASK", help="the task id")
    result = complete.add_mutually_exclusive_group(required=True)
    result.add_argument("--result", metavar="JSON", help="the result: any JSON value (at most 48 KiB)")
    result.add_argument("--result-file", metavar="PATH", help="read the result JSON from a file, or `-` for stdin")
    _finish_args(complete)
    _common_args(complete, _agent, _json, _common)

    fail = add("fail", "give up a task this agent holds (it is offered again while attempts remain)",
               "Fail a task this agent holds: the arbiter offers it again while attempts remain (--final:\n"
               "not at all).\n\n  swarmbus task fail t-4f3a9c1b2d7e8f60 --agent-id rev-1 --error \"no GPU free\"\n\n"
               "Exit codes: 0 accepted; 1 refused, not held here, or no answer within --timeout; 2 usage error.")
    fail.add_argument("task_id", metavar="TASK", help="the task id")
    fail.add_argument("--error", required=True, metavar="TEXT", help="why (at most 2000 characters)")
    fail.add_argument("--final", action="store_true", help="do not offer it again: the task fails now")
    _finish_args(fail)
    _common_args(fail, _agent, _json, _common)

    listing = add("list", "the tasks this agent posted and those it claimed",
                  "The tasks this agent posted (it is their arbiter) and those it claimed, newest first, from its\n"
                  "board database (no daemon needed).\n\n  swarmbus task list --agent-id planner --state open\n\n"
                  "Exit codes: 0 listed, 2 usage error.")
    listing.add_argument("--state", choices=("open", "claimed", "completed", "failed"),
                         help="only posted tasks in this state")
    listing.add_argument("--limit", type=int, default=50, metavar="N", help="at most N of each (default 50)")
    _common_args(listing, _agent, _json, _common)

    show = add("show", "a task's state, history and this agent's claim",
               "A task's state record and history (when this agent posted it), this agent's claim on it, or\n"
               "else its retained state record from the broker.\n\n"
               "  swarmbus task show t-4f3a9c1b2d7e8f60 --agent-id planner --json\n\n"
               "Exit codes: 0 shown, 1 no such task, 2 usage error or broker unreachable.")
    show.add_argument("task_id", metavar="TASK", help="the task id")
    _common_args(show, _agent, _json, _common, _broker)

    wait = add("wait", "wait until a task is completed or failed, printing each change",
               "Follow a task's retained state record on the broker (from any agent, also after the task\n"
               "ended) and print each change until it is completed or failed.\n\n"
               "  swarmbus task wait t-4f3a9c1b2d7e8f60 --agent-id planner --timeout 600 --json\n\n"
               "Exit codes: 0 completed, 1 failed, 2 timeout (or usage error, broker unreachable).")
    wait.add_argument("task_id", metavar="TASK", help="the task id")
    wait.add_argument("--timeout", type=float, default=600.0, metavar="S", help="give up after S seconds (default 600)")
    _common_args(wait, _agent, _json, _common, _broker)


def _finish_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--owner", metavar="ID", help="the task's poster, when tasks of several posters share the id here")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="wait S seconds for the arbiter's answer (default 30)")


def _common_args(p: argparse.ArgumentParser, *builders: Any) -> None:
    for build in builders:
        build(p)


# -- running ----------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    return int({"post": _post, "complete": _finish, "fail": _finish, "list": _list, "show": _show,
                "wait": _wait}[args.action](args))


def _agent_of(args: argparse.Namespace) -> tuple[str, AgentPaths]:
    raw = raw_config(args)
    agent_id = args.agent_id or raw.get("agent_id")
    if not agent_id:
        raise UsageError("no agent id: pass --agent-id ID or set SWARMBUS_AGENT_ID")
    validate_own_id(agent_id)
    return agent_id, AgentPaths.for_agent(agent_id, raw.get("state_dir"))


def _json_arg(text: str | None, path: str | None, what: str) -> Any:
    if path is not None:
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the {what} from {path}: {exc}") from None
    from swarmbus.board.wire import TaskWireError, check_value, loads

    try:
        return check_value(loads(text or ""), what)
    except TaskWireError as exc:
        raise UsageError(f"the {what} is not usable JSON: {exc}") from None


def _ask(agent_id: str, paths: AgentPaths, req: dict[str, Any], timeout: float) -> dict[str, Any]:
    try:
        return request(paths.socket, {"op": "task", **req}, timeout=timeout)
    except DaemonUnavailable:
        raise SwarmbusError(f"no daemon runs for {agent_id} here: the task board lives in it",
                            hint=f"start it: swarmbus start --agent-id {agent_id} --detach") from None
    except TimeoutError:
        raise TimeoutExpired(f"{agent_id}'s daemon did not answer within {timeout:.0f}s") from None


def _post(args: argparse.Namespace) -> int:
    agent_id, paths = _agent_of(args)
    payload = _json_arg(args.payload, args.payload_file, "payload")
    from swarmbus.board.wire import TaskWireError, check_names, check_type

    try:
        check_type(args.type)
        capabilities = list(check_names(args.capabilities or [], "capability"))
        if args.role is not None:
            check_names([args.role], "role")
    except TaskWireError as exc:
        raise UsageError(str(exc)) from None
    answer = _ask(agent_id, paths, {"action": "post", "type": args.type, "role": args.role,
                                   "capabilities": capabilities, "payload": payload, "max_attempts": args.max_attempts,
                                   "lease": args.lease, "priority": args.priority}, 30.0)
    if not answer.get("ok"):
        raise (UsageError if answer.get("kind") == "usage" else SwarmbusError)(
            f"the task was not posted: {answer.get('error')}")
    task = answer["task"]
    if args.json:
        print_json(task)
    else:
        print(task["task_id"])
    return 0


def _finish(args: argparse.Namespace) -> int:
    agent_id, paths = _agent_of(args)
    req: dict[str, Any] = {"action": args.action, "task_id": args.task_id, "owner": args.owner,
                           "timeout": args.timeout}
    if args.action == "complete":
        req["result"] = _json_arg(args.result, args.result_file, "result")
    else:
        req.update(error=args.error, final=args.final)
    answer = _ask(agent_id, paths, req, args.timeout + 10.0)
    if args.json:
        print_json(answer)
    if answer.get("ok"):
        if not args.json:
            print(f"{args.task_id}: {answer.get('answer')}")
        return 0
    if answer.get("kind") == "usage":
        raise UsageError(str(answer.get("error")))
    if not args.json:
        print(f"swarmbus: {args.task_id}: {answer.get('error')}", file=sys.stderr)
    return 1


def _ledger(paths: AgentPaths) -> Any:
    from swarmbus.board.ledger import FILE_NAME, Ledger

    return Ledger.open_readonly(paths.root / FILE_NAME)


def _work_json(w: Any) -> dict[str, Any]:
    from swarmbus.board.wire import iso

    return {"task_id": w.task_id, "owner": w.owner, "type": w.type, "state": w.state, "host": w.host,
            "fence": w.fence, "attempt": w.attempt, "lease": w.lease, "result": w.result, "error": w.error,
            "answer": w.answer, "outcome": w.outcome, "claimed_at": iso(w.claimed_at),
            "updated_at": iso(w.updated_at)}


def _list(args: argparse.Namespace) -> int:
    agent_id, paths = _agent_of(args)
    ledger = _ledger(paths)
    posted: list[Any] = []
    claimed: list[Any] = []
    if ledger is not None:
        with ledger:
            posted = ledger.tasks((args.state,) if args.state else (), args.limit)
            claimed = [] if args.state else ledger.works((), args.limit)
    if args.json:
        print_json({"agent": agent_id, "posted": [t.record() for t in posted], "claimed": [_work_json(w) for w in claimed]})
        return 0
    if not posted and not claimed:
        print(f"{agent_id} has posted and claimed no tasks" + (f" ({args.state})" if args.state else ""))
        return 0
    if posted:
        print(f"posted by {agent_id} (it is their arbiter):")
        for t in posted:
            who = f" by {t.claimer} (fence {t.fence})" if t.claimer and t.state != "open" else ""
            print(f"  {t.task_id}  {t.spec.type:<20} {t.state:<9} attempt {t.attempt}/{t.spec.max_attempts}{who}")
    if claimed:
        print(f"claimed by {agent_id}:")
        for w in claimed:
            how = "host" if w.host else "handler"
            print(f"  {w.task_id}  {w.type:<20} {w.state:<10} from {w.owner} ({how}"
                  + (f", fence {w.fence}" if w.fence else "") + ")" + (f": {safe_text(w.answer)}" if w.answer else ""))
    return 0


def _task_id(args: argparse.Namespace) -> str:
    """``args.task_id``, checked; a malformed one is a usage error."""
    from swarmbus.board.wire import TaskWireError, check_task_id

    try:
        return check_task_id(args.task_id)
    except TaskWireError as exc:
        raise UsageError(str(exc)) from None


def _show(args: argparse.Namespace) -> int:
    agent_id, paths = _agent_of(args)
    task_id = _task_id(args)
    ledger = _ledger(paths)
    record = None
    events: list[Any] = []
    claims: list[Any] = []
    if ledger is not None:
        with ledger:
            row = ledger.task(task_id)
            if row is not None:
                record, events = row.record(), ledger.events(task_id)
            claims = ledger.work_by_task(task_id)
    source = "arbiter"
    if record is None and not claims:
        settings = load_settings_for(args)
        record = _fetch_state(settings, agent_id, task_id, settings.broker.connect_timeout + 5.0)
        source = "broker"
    if record is None and not claims:
        if args.json:
            print_json({"task": None, "events": [], "claims": []})
        print(f"swarmbus: no task {task_id} is known here or on the broker", file=sys.stderr)
        return 1
    if args.json:
        print_json({"task": record, "source": source if record else None, "events": [e.to_json() for e in events],
                    "claims": [_work_json(w) for w in claims]})
        return 0
    if record is not None:
        _print_record(record, prefix=f"{task_id} ({'posted here' if source == 'arbiter' else 'from the broker'}): ")
        for e in events:
            fence = f" fence {e.fence}" if e.fence else ""
            by = f" by {e.by}" if e.by else ""
            print(f"  {_clock(e.at)}  {e.event}{by}{fence}" + (f": {safe_text(e.detail)}" if e.detail else ""))
    for w in claims:
        print(f"claimed here from {w.owner}: {w.state}" + (f", fence {w.fence}" if w.fence else "")
              + (f": {safe_text(w.answer)}" if w.answer else ""))
        if w.outcome and w.outcome != w.answer:
            print(f"  its outcome: {safe_text(w.outcome)}")
    return 0


def _clock(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _print_record(record: dict[str, Any], prefix: str = "") -> None:
    state = record.get("state")
    line = f"{prefix}{state}, attempt {record.get('attempt')}/{record.get('max_attempts')}"
    if record.get("claimer") and state != "open":
        line += f", {'claimed' if state == 'claimed' else state} by {record['claimer']} (fence {record.get('fence')})"
    if state == "claimed" and record.get("lease_until"):
        line += f", lease until {record['lease_until']}"
    if state == "completed":
        line += f": {safe_text(json.dumps(record.get('result'), ensure_ascii=False))}"
    elif record.get("error"):
        line += f" ({'error' if state == 'failed' else 'last error'}: {safe_text(str(record['error']))})"
    print(line, flush=True)


def _fetch_state(settings: Any, agent_id: str, task_id: str, timeout: float) -> dict[str, Any] | None:
    """The task's retained state record on the broker, or None (a sentinel marks the end of the
    retained messages: no fixed wait)."""
    records = queue.Queue[dict[str, Any]]()
    done = _follow(settings, agent_id, task_id, records, sentinel=True)
    try:
        done.wait_connected()
        if not done.sentinel_arrived(timeout):
            raise TimeoutExpired(f"the broker did not answer within {timeout:.0f}s")
    finally:
        done.stop()
    found = None
    while not records.empty():
        found = records.get_nowait()
    return found


class _Follower:
    def __init__(self, link: Any, settings: Any, sentinel: Any) -> None:
        self.link, self.settings, self.sentinel = link, settings, sentinel

    def wait_connected(self) -> None:
        self.link.wait_connected(self.settings.broker.connect_timeout)

    def sentinel_arrived(self, timeout: float) -> bool:
        return bool(self.sentinel.wait(timeout))

    def stop(self) -> None:
        self.link.stop(timeout=2.0)


def _follow(settings: Any, agent_id: str, task_id: str, out: queue.Queue[dict[str, Any]], *,
            sentinel: bool = False) -> _Follower:
    """Subscribe to the task's state topic on the broker; each valid record goes into ``out``."""
    import secrets
    import threading

    from swarmbus.board.wire import TaskWireError, parse_state, state_filter
    from swarmbus.topics import sync_topic
    from swarmbus.transport.link import MqttLink, Subscription
    from swarmbus.transport.negotiated import ProtocolMemory
    from swarmbus.transport.publish import one_shot_client_id

    broker = settings.broker
    arrived = threading.Event()
    sync = sync_topic(broker.client_id_prefix, broker.username, agent_id, secrets.token_hex(8))
    link: Any = None

    def on_message(topic: str, payload: bytes, mid: int, qos: int) -> None:
        if topic == sync:
            arrived.set()
            return
        with contextlib.suppress(TaskWireError):  # a cleared or malformed record says nothing about the task
            out.put(parse_state(topic, payload))

    def on_connected(session_present: bool) -> None:
        if sentinel:
            link.publish(sync, b"sync", qos=1)

    subs = [Subscription(state_filter(task_id), 1)] + ([Subscription(sync, 1)] if sentinel else [])
    link = MqttLink(broker, client_id=one_shot_client_id(broker.client_id_prefix, agent_id, "task"),
                    subscriptions=subs, on_message=on_message, on_connected=on_connected, reconnect_min=0.2,
                    reconnect_max=2.0, protocol_memory=ProtocolMemory.in_state_dir(settings.state_dir))
    link.start()
    return _Follower(link, settings, arrived)


def _wait(args: argparse.Namespace) -> int:
    agent_id, _ = _agent_of(args)
    task_id = _task_id(args)
    settings = load_settings_for(args)
    records = queue.Queue[dict[str, Any]]()
    follower = _follow(settings, agent_id, task_id, records)
    deadline = time.monotonic() + max(0.0, args.timeout)
    seen: tuple[Any, ...] | None = None
    try:
        follower.wait_connected()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                print(f"swarmbus: {task_id}: no outcome within {args.timeout:g}s"
                      + (f" (it is {seen[0]})" if seen else " (no state record seen)"), file=sys.stderr)
                return 2
            try:
                record = records.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            key = (record["state"], record["attempt"], record["claimer"], record["fence"])
            if key == seen:
                continue
            if seen is not None and _older(record, seen):
                continue
            seen = key
            if args.json:
                print_json(record)
            else:
                _print_record(record, prefix=f"{task_id}: ")
            if record["state"] in ("completed", "failed"):
                return 0 if record["state"] == "completed" else 1
    finally:
        follower.stop()


def _older(record: dict[str, Any], seen: tuple[Any, ...]) -> bool:
    """A record that is behind what was shown already (retained and live copies may cross)."""
    order = {"open": 0, "claimed": 1, "completed": 2, "failed": 2}
    return (int(record["attempt"]), int(record["fence"]), order[record["state"]]) < (
        int(seen[1]), int(seen[3]), order[str(seen[0])])

