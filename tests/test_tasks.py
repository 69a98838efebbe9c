"""The task board end to end: real daemons on a private mosquitto (the ``swarm`` fixture).

- three agents race for 200 tasks, on MQTT 5 (shared subscriptions) and on MQTT 3.1.1 (every
  agent gets every offer): each task is granted once and completed once, and the arbiter's
  store and the claimers' records say so;
- a claimer SIGKILLed mid-task: its lease runs out, the task is offered again and completed once
  by another agent; a claimer paused past its lease cannot complete the task afterwards, and
  ``task complete`` says why;
- an agent without the role, a capability or the swarm a task needs never gets it;
- hostile bytes on the offer topics and in task messages are quarantined, nothing crashes;
- host tasks: the grant reaches the host as an ordinary stored message, the host completes or
  fails it from the CLI, and ``task wait`` sees the outcome (also after the fact).

Leases are short (1 s) where they must run out; nothing sleeps to synchronise.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from typing import Any

import pytest

from conftest import Daemon, SwarmEnv, wait_for
from peers import raw_client
from swarmbus.board.ledger import FILE_NAME, Ledger, TaskRow, WorkRow
from swarmbus.board.wire import TASK_CONTENT_TYPE, offer_topic, state_topic
from swarmbus.control import request
from swarmbus.envelope import new_envelope
from swarmbus.paths import AgentPaths
from swarmbus.store import Store

ECHO_PLUGIN = '''\
"""A task-handler plugin for the core's tests: ``example.echo``, as the example plugin runs it
(the core env installs no example plugin; this one comes through PYTHONPATH)."""
from swarmbus import TaskHandler, hookimpl


async def echo(task, context):
    return {"echo": task.payload, "by": context.agent_id, "attempt": task.attempt}


@hookimpl
def swarmbus_task_handlers(register, settings):
    register(TaskHandler("example.echo", echo, "echo the payload back"))
'''

FAST = {"SWARMBUS_TASK_OFFER_INTERVAL": "0.3", "SWARMBUS_LOAD_PLUGINS": "taskecho,priority"}
"""Every daemon here: offers an unclaimed task again after 0.3 s; runs example.echo (the
``taskecho`` test plugin, on PYTHONPATH: see :func:`_echo_plugin`)."""
HOST = {**FAST, "SWARMBUS_TASK_HOST": "yes", "SWARMBUS_LOAD_PLUGINS": "priority"}
"""A worker whose host takes every task (no plugin handler): the grant is a stored message."""


@pytest.fixture(scope="module")
def echo_site(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A directory with the ``taskecho`` plugin and its entry point (a dist-info), for PYTHONPATH."""
    site = tmp_path_factory.mktemp("taskecho-site")
    (site / "taskecho_plugin.py").write_text(ECHO_PLUGIN)
    dist = site / "swarmbus_taskecho-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: swarmbus-taskecho\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[swarmbus]\ntaskecho = taskecho_plugin\n")
    return str(site)


@pytest.fixture(autouse=True)
def _quick_reoffers(swarm: SwarmEnv, echo_site: str) -> None:
    (swarm.root / "config.toml").write_text("[tasks]\noffer_max = 1\n")
    swarm.env["PYTHONPATH"] = echo_site  # every daemon and CLI call of the test can load taskecho


def start(swarm: SwarmEnv, agent: str, *flags: str, env: dict[str, str] | None = None) -> Daemon:
    return swarm.start_daemon(agent, "--wake-policy", "none", *flags, env={**FAST, **(env or {})})


def post(swarm: SwarmEnv, poster: str, task_type: str = "example.echo", **fields: Any) -> str:
    socket = AgentPaths.for_agent(poster, swarm.state_dir).socket
    answer = request(socket, {"op": "task", "action": "post", "type": task_type, **fields}, timeout=30)
    assert answer.get("ok"), answer
    return str(answer["task"]["task_id"])


def ledger(swarm: SwarmEnv, agent: str) -> Ledger:
    found = Ledger.open_readonly(swarm.state_dir / "agents" / agent / FILE_NAME)
    assert found is not None, f"{agent} has no task board database"
    return found


def tasks_of(swarm: SwarmEnv, poster: str) -> dict[str, TaskRow]:
    with ledger(swarm, poster) as db:
        return {t.task_id: t for t in db.tasks(limit=100_000)}


def works_of(swarm: SwarmEnv, agent: str) -> list[WorkRow]:
    path = swarm.state_dir / "agents" / agent / FILE_NAME
    if not path.exists():
        return []
    with ledger(swarm, agent) as db:
        return db.works(limit=100_000)


def task(swarm: SwarmEnv, poster: str, task_id: str) -> TaskRow | None:
    with ledger(swarm, poster) as db:
        return db.task(task_id)


def events(swarm: SwarmEnv, poster: str, task_id: str) -> list[tuple[str, str | None, int | None]]:
    with ledger(swarm, poster) as db:
        return [(e.event, e.by, e.fence) for e in db.events(task_id)]


def quarantined(swarm: SwarmEnv, agent: str) -> list[str]:
    with Store(swarm.store_path(agent)) as store:
        return [q.reason for q in store.quarantined(1000)]


def stored_messages(swarm: SwarmEnv, agent: str) -> list[Any]:
    with Store(swarm.store_path(agent)) as store:
        return store.messages_after(0)


# -- exactly once under a race ---------------------------------------------------------------------------
def _race(swarm: SwarmEnv, count: int, *flags: str) -> dict[str, Any]:
    workers = ["w1", "w2", "w3"]
    start(swarm, "poster", "--role", "poster", *flags)
    for name in workers:
        start(swarm, name, "--role", "worker", "--capability", "python", *flags, env={"SWARMBUS_TASK_CAPACITY": "8"})
    began = time.monotonic()
    ids = [post(swarm, "poster", role="worker", capabilities=["python"], payload={"n": i}, lease=30) for i in range(count)]
    wait_for(lambda: sum(t.state == "completed" for t in tasks_of(swarm, "poster").values()) == count, 120,
             interval=0.2, what=f"all {count} tasks completed")
    took = time.monotonic() - began
    rows = tasks_of(swarm, "poster")
    assert set(rows) == set(ids)
    grants: Counter[str] = Counter()
    refused = 0
    for task_id, row in rows.items():
        history = events(swarm, "poster", task_id)
        granted = [e for e in history if e[0] == "granted"]
        completed = [e for e in history if e[0] == "completed"]
        refused += sum(1 for e in history if e[0] == "refused claim")
        # the arbiter's store: one grant, one completion, by the same claim (agent and fence)
        assert len(granted) == 1 and len(completed) == 1, (task_id, history)
        assert granted[0][1:] == completed[0][1:] == (row.claimer, row.fence) and row.fence == 1
        assert row.claimer in workers and row.result["by"] == row.claimer  # the handler ran where it was granted
        assert row.result["echo"] == row.spec.payload
        grants[row.claimer] += 1
    # the claimers' records: each task completed (accepted) by exactly one of them, the one granted
    # (a claimer records "done" when the arbiter's acknowledgement arrives, just after the arbiter's
    # commit: wait for the last ones)
    def accepted() -> Counter[str]:
        done: Counter[str] = Counter()
        for name in workers:
            for w in works_of(swarm, name):
                if w.state == "done":
                    done[w.task_id] += 1
                    assert rows[w.task_id].claimer == name and w.fence == rows[w.task_id].fence
        return done

    done = wait_for(lambda: d if sum((d := accepted()).values()) >= count else None, 30, interval=0.2,
                    what="every claimer's record of its accepted completions")
    assert done == Counter(dict.fromkeys(ids, 1))
    # every other claim ended refused (another won it) or abandoned, once the last answers arrived
    settled = ("done", "refused", "abandoned")
    wait_for(lambda: all(w.state in settled for name in workers for w in works_of(swarm, name)), 30, interval=0.2,
             what="every losing claim refused")
    # protocol messages never reach the agents' inboxes (nothing for `swarmbus read` or a wake)
    for name in ["poster", *workers]:
        assert stored_messages(swarm, name) == []
    return {"took": took, "grants": grants, "refused": refused}


def test_three_agents_race_for_200_tasks_each_completed_once(swarm: SwarmEnv) -> None:
    outcome = _race(swarm, 200)
    assert swarm.status("w1")["tasks"]["shared"] is True  # MQTT 5: one agent of the pool gets each offer
    assert all(outcome["grants"][w] > 0 for w in ("w1", "w2", "w3")), outcome  # the broker spread them
    print(f"200 tasks, 3 agents, MQTT 5 shared subscriptions: {outcome}")


def test_mqtt311_fallback_every_agent_races_and_still_exactly_once(swarm: SwarmEnv) -> None:
    outcome = _race(swarm, 200, "--mqtt-version", "3.1.1")
    status = swarm.status("w2")
    assert status["protocol"] == "3.1.1" and status["tasks"]["shared"] is False
    assert outcome["refused"] > 0, outcome  # every agent claimed every offer it could: the arbiter refused the rest
    print(f"200 tasks, 3 agents, MQTT 3.1.1: {outcome}")


# -- leases and fences -------------------------------------------------------------------------------------
def test_sigkilled_claimer_task_is_offered_again_and_completed_once(swarm: SwarmEnv) -> None:
    start(swarm, "poster")
    a = start(swarm, "a", "--role", "worker", env=HOST)
    task_id = post(swarm, "poster", "build.run", role="worker", payload={"target": "all"}, lease=3, max_attempts=3)
    wait_for(lambda: (t := task(swarm, "poster", task_id)) is not None and t.state == "claimed" and t.claimer == "a",
             15, what="a to hold the task")
    a.kill9()  # mid-task: no renewal, no completion, ever
    start(swarm, "b", "--role", "worker", env=HOST)
    began = time.monotonic()
    row = wait_for(lambda: (t := task(swarm, "poster", task_id)) is not None and t.state == "claimed"
                   and t.claimer == "b" and t, 20, what="the task offered again and granted to b")
    print(f"re-offered and granted to b {time.monotonic() - began:.2f}s after b started")
    assert row.attempt >= 2 and row.fence >= 2
    # b's host got the grant as an ordinary message (the wake policy decides about waking it)
    # (the arbiter records the grant, then sends it: wait until b's daemon stored it)
    grants = wait_for(lambda: [m for m in stored_messages(swarm, "b") if task_id in m.subject], 15,
                      what="the grant in b's store")
    [grant] = grants
    body = json.loads(grant.body)
    assert (grant.envelope.content_type, body["op"], body["task"]["payload"]) == (TASK_CONTENT_TYPE, "grant",
                                                                                  {"target": "all"})
    done = swarm.cli("task", "complete", task_id, "--agent-id", "b", "--result", '{"built": true}')
    assert done.returncode == 0, done.stderr
    assert "accepted" in done.stdout
    row = task(swarm, "poster", task_id)
    assert row is not None and (row.state, row.claimer, row.result) == ("completed", "b", {"built": True})
    history = events(swarm, "poster", task_id)
    assert [e for e in history if e[0] == "completed"] == [("completed", "b", row.fence)]
    assert ("expired", "a", 1) in history and ("granted", "a", 1) in history
    wait = swarm.cli("task", "wait", task_id, "--agent-id", "poster", "--timeout", "10", "--json")
    assert wait.returncode == 0, wait.stderr
    assert json.loads(wait.stdout.splitlines()[-1])["state"] == "completed"


def test_late_completion_by_an_expired_claimer_is_refused(swarm: SwarmEnv) -> None:
    start(swarm, "poster")
    a = start(swarm, "a", "--role", "worker", env=HOST)
    task_id = post(swarm, "poster", "review.diff", role="worker", payload={"pr": 7}, lease=3, max_attempts=3)
    wait_for(lambda: (t := task(swarm, "poster", task_id)) is not None and t.claimer == "a", 15, what="a to hold it")
    os.kill(a.proc.pid, signal.SIGSTOP)  # paused (a long GC, a laptop lid): its lease runs out
    try:
        start(swarm, "b", "--role", "worker", env=HOST)
        wait_for(lambda: (t := task(swarm, "poster", task_id)) is not None and t.claimer == "b", 20,
                 what="the task granted to b after a's lease expired")
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    late = swarm.cli("task", "complete", task_id, "--agent-id", "a", "--result", '{"approved": true}',
                     "--timeout", "15")
    assert late.returncode == 1, (late.stdout, late.stderr)
    assert "refused" in late.stderr and ("stale fence 1" in late.stderr or "lease" in late.stderr), late.stderr
    assert "Traceback" not in late.stderr
    # the refusal is recorded on a's side, where `task show` finds it
    shown = json.loads(swarm.cli("task", "show", task_id, "--agent-id", "a", "--json").stdout)
    [claim] = shown["claims"]  # (a may have claimed the task again meanwhile, from an offer it had buffered)
    assert "refused" in claim["outcome"] and ("stale fence 1" in claim["outcome"] or "lease" in claim["outcome"])
    ok = swarm.cli("task", "complete", task_id, "--agent-id", "b", "--result", '{"approved": false}')
    assert ok.returncode == 0, ok.stderr
    row = task(swarm, "poster", task_id)
    assert row is not None and (row.state, row.claimer, row.result) == ("completed", "b", {"approved": False})
    history = events(swarm, "poster", task_id)
    assert [e[1] for e in history if e[0] == "completed"] == ["b"]


def test_completion_while_the_arbiter_is_down_is_delivered_when_it_is_back(swarm: SwarmEnv) -> None:
    """The protocol rides on durable messages: a completion sent while the poster's daemon is
    stopped waits in the claimer's outbox and the broker, and counts when the arbiter is back;
    the lease did not run out meanwhile (the arbiter could not hear renewals)."""
    poster = start(swarm, "poster")
    start(swarm, "dev", "--role", "dev", env=HOST)
    task_id = post(swarm, "poster", "code.fix", role="dev", payload={"issue": 3}, lease=2)
    wait_for(lambda: (t := task(swarm, "poster", task_id)) is not None and t.claimer == "dev", 15, what="dev holds it")
    assert poster.stop() == 0
    pending = swarm.cli("task", "complete", task_id, "--agent-id", "dev", "--result", '"fixed"', "--timeout", "1")
    assert pending.returncode == 1 and "no answer from the arbiter poster" in pending.stderr, pending.stderr
    start(swarm, "poster")
    row = wait_for(lambda: (t := task(swarm, "poster", task_id)) is not None and t.state == "completed" and t, 20,
                   what="the completion applied once the arbiter is back")
    assert (row.claimer, row.fence, row.attempt, row.result) == ("dev", 1, 1, "fixed")
    assert "expired" not in [e[0] for e in events(swarm, "poster", task_id)]
    wait_for(lambda: [w.state for w in works_of(swarm, "dev")] == ["done"], 15, what="dev to get the answer")


# -- eligibility ---------------------------------------------------------------------------------------------
def test_ineligible_agents_never_get_a_task(swarm: SwarmEnv) -> None:
    start(swarm, "poster", "--swarm", "s1")
    start(swarm, "good", "--swarm", "s1", "--role", "worker", "--capability", "python")
    start(swarm, "both", "--swarm", "s1", "--role", "worker", "--capability", "python", "--capability", "gpu")
    start(swarm, "norole", "--swarm", "s1", "--role", "tester", "--capability", "python", "--capability", "gpu")
    start(swarm, "nocap", "--swarm", "s1", "--role", "worker", "--capability", "go")
    start(swarm, "elsewhere", "--swarm", "s2", "--role", "worker", "--capability", "python", "--capability", "gpu")
    simple = [post(swarm, "poster", role="worker", capabilities=["python"], payload=i) for i in range(10)]
    gpu = [post(swarm, "poster", role="worker", capabilities=["gpu", "python"], payload=i) for i in range(5)]
    wait_for(lambda: all(t.state == "completed" for t in tasks_of(swarm, "poster").values()), 30,
             what="every task completed")
    rows = tasks_of(swarm, "poster")
    assert {rows[t].claimer for t in gpu} == {"both"}  # the only eligible one for python+gpu
    subscribed = swarm.status("both")["tasks"]["offer_subscriptions"]
    assert "$share/swarmbus-tasks/swarmbus/tasks/_offer/s1/worker/gpu/+" in subscribed
    assert "swarmbus/tasks/_offer/s1/worker/~many/+" in subscribed  # never shared: not all of that pool fit
    assert {rows[t].claimer for t in simple} <= {"good", "both"}
    for name in ("norole", "nocap", "elsewhere"):
        assert works_of(swarm, name) == [], name  # never even claimed: the offers were not for them
    # an agent that claims anyway (its own profile) is refused by the arbiter
    blocked = post(swarm, "poster", role="nobody", payload=None)
    claim = {"v": 1, "op": "claim", "task_id": blocked, "attempt": 1, "role": "tester", "capabilities": ["python"],
             "swarm": "s1"}
    sent = swarm.cli("send", "--agent-id", "norole", "--to", "poster", "--subject", "claim", "--content-type",
                     TASK_CONTENT_TYPE, "--body", json.dumps(claim))
    assert sent.returncode == 0, sent.stderr
    wait_for(lambda: any(e[0] == "refused claim" and e[1] == "norole" for e in events(swarm, "poster", blocked)),
             15, what="the arbiter to refuse the ineligible claim")
    row = task(swarm, "poster", blocked)
    assert row is not None and row.state == "open" and row.fence == 0


# -- hostile input ------------------------------------------------------------------------------------------
POISON = [b"", b"null", b"[" * 100_000, b"\xff\xfe not utf-8", b'{"v": 1, "op": "offer"}',
          b'{"v": 1, "op": "offer", "task_id": "t-1", "owner": "someone-else", "type": "a", "attempt": 1, '
          b'"lease": 5, "offered_at": "2026-01-01T00:00:00+00:00", "capabilities": []}',
          b'{"a": 1, "a": 2}', bytes(range(256)) * 20]


def test_hostile_task_input_is_quarantined_and_nothing_crashes(swarm: SwarmEnv) -> None:
    poster = start(swarm, "poster")
    worker = start(swarm, "w", "--role", "worker")
    port = swarm.broker.port  # type: ignore[attr-defined]
    offer = offer_topic(None, "worker", [], "mallory")
    with raw_client(port) as raw:
        for payload in POISON:
            raw.publish(offer, payload)
        for body in ["not json", '{"v": 1, "op": "claim"}', '{"v": 2, "op": "claim", "task_id": "t-1"}',
                     '{"v": 1, "op": "complete", "task_id": "t-x", "fence": 1, "result": NaN}', "[]",
                     '{"v": 1, "op": "grant", "task_id": "t-1", "fence": 1, "attempt": 1, "task": {}}']:
            envelope = new_envelope("mallory", "poster", "task", body, content_type=TASK_CONTENT_TYPE)
            raw.publish("agents/poster/inbox", json.dumps(envelope.to_dict()).encode())
        raw.publish(state_topic("t-garbage", "mallory"), b"\x00garbage")  # only readers parse these
    wait_for(lambda: sum("invalid task offer" in r for r in quarantined(swarm, "w")) == len(POISON), 15,
             what="every poisoned offer quarantined by the worker")
    wait_for(lambda: sum("invalid task message" in r for r in quarantined(swarm, "poster")) == 6, 15,
             what="every malformed task message quarantined by the poster")
    assert poster.proc.poll() is None and worker.proc.poll() is None
    # and the board still works
    task_id = post(swarm, "poster", role="worker", payload="still fine")
    wait_for(lambda: (t := task(swarm, "poster", task_id)) is not None and t.state == "completed", 15,
             what="a task completed after the poison")
    assert swarm.status("w")["tasks"]["counters"]["offers_rejected"] == len(POISON)
    garbage = swarm.cli("task", "wait", "t-garbage", "--agent-id", "w", "--timeout", "1")
    assert garbage.returncode == 2 and "no state record seen" in garbage.stderr


# -- host tasks and the CLI --------------------------------------------------------------------------------
def test_host_tasks_through_the_cli(swarm: SwarmEnv) -> None:
    start(swarm, "planner", "--role", "planner")
    start(swarm, "dev", "--role", "dev", env=HOST)
    posted = swarm.cli("task", "post", "code.fix", "--agent-id", "planner", "--role", "dev", "--payload",
                       '{"issue": 12}', "--lease", "20", "--max-attempts", "2")
    assert posted.returncode == 0, posted.stderr
    task_id = posted.stdout.strip()
    wait_for(lambda: (t := task(swarm, "planner", task_id)) is not None and t.claimer == "dev", 15,
             what="dev to hold the task")
    read = json.loads(swarm.cli("read", "--agent-id", "dev", "--json").stdout)
    [message] = [m for m in read if task_id in m["subject"]]
    assert json.loads(message["body"])["task"]["payload"] == {"issue": 12} and message["priority"] == "high"
    failed = swarm.cli("task", "fail", task_id, "--agent-id", "dev", "--error", "needs a human")
    assert failed.returncode == 0 and "the task is open" in failed.stdout, failed.stderr
    # offered again (attempt 2); dev takes it again and gives up for good
    wait_for(lambda: (t := task(swarm, "planner", task_id)) is not None and t.attempt == 2 and t.state == "claimed",
             15, what="attempt 2 granted")
    final = swarm.cli("task", "fail", task_id, "--agent-id", "dev", "--error", "no way", "--final")
    assert final.returncode == 0, final.stderr
    waited = swarm.cli("task", "wait", task_id, "--agent-id", "planner", "--timeout", "10")
    assert waited.returncode == 1 and "failed" in waited.stdout, (waited.stdout, waited.stderr)
    listing = json.loads(swarm.cli("task", "list", "--agent-id", "planner", "--json").stdout)
    assert [t["state"] for t in listing["posted"]] == ["failed"] and listing["posted"][0]["error"] == "dev: no way"
    again = swarm.cli("task", "complete", task_id, "--agent-id", "dev", "--result", "1")
    assert again.returncode == 1 and "not running" in again.stderr


def test_task_cli_errors_are_one_line(swarm: SwarmEnv) -> None:
    no_daemon = swarm.cli("task", "post", "a.b", "--agent-id", "ghost", "--payload", "1")
    assert no_daemon.returncode == 1 and "no daemon runs for ghost" in no_daemon.stderr
    start(swarm, "p")
    for args, fragment in [
        (["task", "post", "Bad Type!", "--agent-id", "p", "--payload", "1"], "task type"),
        (["task", "post", "a.b", "--agent-id", "p", "--payload", "{nope"], "not usable JSON"),
        (["task", "post", "a.b", "--agent-id", "p", "--payload", "1", "--role", "NO"], "role"),
        (["task", "post", "a.b", "--agent-id", "p", "--payload", "1", "--lease", "0.01"], "lease"),
        (["task", "show", "../x", "--agent-id", "p"], "task id"),
    ]:
        proc = swarm.cli(*args)
        assert proc.returncode == 2 and fragment in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
    unknown = swarm.cli("task", "complete", "t-nothing", "--agent-id", "p", "--result", "1")
    assert unknown.returncode == 1 and "never claimed" in unknown.stderr
    missing = swarm.cli("task", "show", "t-nothing", "--agent-id", "p")
    assert missing.returncode == 1 and "no task t-nothing" in missing.stderr
    assert swarm.cli("task", "wait", "t-nothing", "--agent-id", "p", "--timeout", "0.5").returncode == 2
    help_text = swarm.cli("task", "--help").stdout
    assert "Exit codes" in help_text and "swarmbus task post" in help_text
