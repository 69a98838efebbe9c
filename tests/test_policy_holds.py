"""Held is not dropped: holds are persisted, asked again when they end, woken in one wake
(coalesced), and survive a restart: in-process with an injected clock, then a real daemon on a
private broker stopped and started again while it holds messages."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from attention_support import ME, T0, Clock, arrive, make_attention
from conftest import SwarmEnv, wait_for
from peers import encode, py_command, raw_client, seq_of, wire
from swarmbus import HandlerContext, StoredMessage, WakeDecision, WakeOutcome, hookimpl, new_envelope
from swarmbus.default_plugins.attention import Attention, handle_wake
from swarmbus.plugins import HookRelay, get_plugin_manager
from swarmbus.settings import Settings
from swarmbus.store import Store


class Recorder:
    """A waker that takes coalesced wakes and records each: (message id, ids in its batch)."""

    def __init__(self) -> None:
        self.wakes: list[tuple[str, tuple[str, ...]]] = []

    @hookimpl
    def swarmbus_wake_coalesce(self) -> bool:
        return True

    @hookimpl
    def swarmbus_wake(self, message: StoredMessage, decision: WakeDecision) -> WakeOutcome:
        self.wakes.append((message.id, tuple(m.id for m in decision.batch)))
        return WakeOutcome(True, "recorded")


def setup(store: Store, clock: Clock, **wake: Any) -> tuple[Attention, HandlerContext, Recorder]:
    recorder = Recorder()
    attention, context = make_attention(store, clock, recorder, **wake)
    return attention, context, recorder




def test_held_messages_are_woken_together_when_the_window_opens(tmp_path: Path) -> None:
    clock = Clock(T0)
    with Store(tmp_path / "store.sqlite3") as store:
        async def main() -> None:
            attention, context, recorder = setup(store, clock, rate_limit={"overall": "1/60s"})
            attention.start(context)
            first, second, third = arrive(store, 3)
            assert (await handle_wake(first, context)).startswith("woken (wake policy is all)")
            clock.now = T0 + 10
            assert (await handle_wake(second, context)).startswith("held until")
            clock.now = T0 + 20
            assert (await handle_wake(third, context)).startswith("held until")
            assert [(h.seq, h.until, h.rule) for h in store.holds()] == [
                (second.seq, T0 + 60, "rate_limit"), (third.seq, T0 + 60, "rate_limit")]
            assert "overall rate limit" in store.holds()[0].reason

            clock.now = T0 + 59
            assert await attention.release_due() == 0  # not yet
            assert recorder.wakes == [("m0", ())]
            clock.now = T0 + 60
            assert await attention.release_due() == 2
            assert recorder.wakes == [("m0", ()), ("m1", ("m2",))]  # one wake for both, the oldest first
            assert store.holds() == []
            for seq in (second.seq, third.seq):
                [d] = store.deliveries(seq)
                assert (d.handler, d.status) == ("wake", "ok") and d.detail.startswith("woken after hold")
            attempts = store.wake_attempts(5)
            assert [(a.at, a.ok, a.seqs) for a in attempts] == [
                (T0 + 60, True, (second.seq, third.seq)), (T0, True, (first.seq,))]

            # the coalesced wake counts once: the next message is held until it is a minute old
            clock.now = T0 + 70
            [fourth] = arrive(store, 1, start=3)
            assert (await handle_wake(fourth, context)).startswith("held until")
            assert store.hold_of(fourth.seq) is not None and store.hold_of(fourth.seq).until == T0 + 120  # type: ignore[union-attr]
            attention.close()

        asyncio.run(main())


def test_holds_and_history_survive_a_restart(tmp_path: Path) -> None:
    clock = Clock(T0)
    path = tmp_path / "store.sqlite3"
    with Store(path) as store:
        async def before() -> None:
            attention, context, _ = setup(store, clock, budget={"per_hour": 1})
            attention.start(context)
            first, second = arrive(store, 2)
            await handle_wake(first, context)
            assert (await handle_wake(second, context)).startswith("held until")
            attention.close()

        asyncio.run(before())
    with Store(path) as store:  # "restarted": a new Attention on the same store
        async def after() -> None:
            clock.now = T0 + 1800
            attention, context, recorder = setup(store, clock, budget={"per_hour": 1})
            attention.start(context)
            [third] = arrive(store, 1, start=2)
            assert (await handle_wake(third, context)).startswith("held until")  # the budget remembers
            assert await attention.release_due() == 0
            clock.now = T0 + 3600
            assert await attention.release_due() == 2
            assert recorder.wakes == [("m1", ("m2",))]
            attention.close()

        asyncio.run(after())


def test_a_skip_on_release_lets_the_message_go(tmp_path: Path) -> None:
    start = float(int(time.time()))
    clock = Clock(start)
    with Store(tmp_path / "store.sqlite3") as store:
        async def main() -> None:
            attention, context, recorder = setup(store, clock, budget={"per_hour": 1})
            attention.start(context)
            first = arrive(store, 1)[0]
            await handle_wake(first, context)
            expiring = store.accept(f"agents/{ME}/inbox", new_envelope(
                "planner", ME, "soon stale", "x", id="stale",
                expires_at=datetime.fromtimestamp(start + 1800, UTC).isoformat()).to_wire(), ME)
            assert expiring.message is not None
            assert (await handle_wake(expiring.message, context)).startswith("held until")
            clock.now = start + 3600  # the message expired meanwhile
            assert await attention.release_due() == 0
            assert store.holds() == []
            [d] = store.deliveries(expiring.message.seq)
            assert d.detail.startswith("not woken after hold: expired")
            assert recorder.wakes == [("m0", ())]
            attention.close()

        asyncio.run(main())


# -- a real daemon, stopped while it holds messages ----------------------------------------------
WAKE_LOG = "import os,sys; d=sys.argv[1]; open(os.path.join(d, os.environ['SWARMBUS_ID']), 'w').write(sys.stdin.read())"


def test_held_messages_are_woken_after_a_daemon_restart(swarm: SwarmEnv, tmp_path: Path) -> None:
    woken = tmp_path / "woken"
    woken.mkdir()
    (swarm.root / "config.toml").write_text('[wake]\npolicy = "all"\n\n[wake.rate_limit]\noverall = "1/8s"\n\n'
                                            '[plugins.priority]\nbatch = true\n')  # the command takes batches
    invoke = ("--invoke", py_command(WAKE_LOG, str(woken)))
    dana = swarm.start_daemon("dana", *invoke)
    ids = ["first", "second", "third"]
    with raw_client(swarm.broker.port) as pub, Store(swarm.store_path("dana")) as store:
        # one at a time: messages arriving together would share the first wake (coalesced)
        pub.publish("agents/dana/inbox", encode(wire("dana", body="body of first", id="first")))
        wait_for(lambda: (woken / "first").exists(), 15, what="the first message's wake")
        for mid in ids[1:]:
            pub.publish("agents/dana/inbox", encode(wire("dana", body=f"body of {mid}", id=mid)))
        wait_for(lambda: len(store.holds()) == 2, 15, what="two messages held by the rate limit")
        status = swarm.cli("status", "--agent-id", "dana", check=True).stdout
        assert "held:       2 messages held from waking" in status and "overall rate limit" in status, status
        assert json.loads(swarm.cli("status", "--agent-id", "dana", "--json", check=True).stdout)[
            "status"]["holds"]["count"] == 2
        assert dana.stop() == 0
        assert sorted(p.name for p in woken.iterdir()) == ["first"]
        held = store.holds()
        assert [h.seq for h in held] == [seq_of(store, "second"), seq_of(store, "third")], "holds must outlive the daemon"

        inbox = swarm.cli("inbox", "--agent-id", "dana", check=True).stdout
        assert "held until" in inbox and "rate limit" in inbox

        swarm.start_daemon("dana", *invoke)
        wait_for(lambda: not store.holds(), 30, what="the held messages to be woken after the restart")
        wait_for(lambda: sorted(p.name for p in woken.iterdir()) == ["first", "second"], 10,
                 what="one wake for both held messages (the oldest is the wake's message)")
        batch = [json.loads(line) for line in (woken / "second").read_text().splitlines()]
        assert [(m["id"], m["body"]) for m in batch] == [("second", "body of second"), ("third", "body of third")]
        for mid in ("second", "third"):
            [d] = [d for d in store.deliveries(seq_of(store, mid)) if d.handler == "wake"]
            assert d.status == "ok" and d.detail.startswith("woken after hold (with 1 other(s))"), d
            # the released wake is the delivery ladder's `wake` step too (`swarmbus trace`)
            wait_for(lambda mid=mid: store.has_step(mid, ["wake"]), 10, what=f"the wake step of {mid}")  # type: ignore[misc]
            [step] = [s for s in store.ladder(mid) if s.step == "wake"]
            assert step.by == "dana" and step.detail.startswith("ok: woken after hold"), step
        data = json.loads(swarm.cli("inbox", "--agent-id", "dana", "--json", check=True).stdout)
        assert all(m["hold"] is None for m in data["messages"])


# an agent that answers every message: its wake command replies to the sender through its own
# daemon (argv: the swarmbus environment as a JSON file, then this agent's id)
ANSWER = ("import json,os,subprocess,sys; env=json.load(open(sys.argv[1])); sys.stdin.read();"
          " subprocess.run([sys.executable, '-m', 'swarmbus', 'send', '--agent-id', sys.argv[2], '--to',"
          " os.environ['SWARMBUS_FROM'], '--subject', 're', '--body', 'and another thing'], env=env, check=True,"
          " stdout=subprocess.DEVNULL)")


def test_loop_guard_stops_two_agents_answering_each_other(swarm: SwarmEnv, tmp_path: Path) -> None:
    """Two real daemons whose wakes answer every message: the exchange runs until the loop guard
    holds one side's messages, the operator is told, and the exchange stops."""
    (swarm.root / "config.toml").write_text('[wake]\npolicy = "all"\n\n'
                                            '[wake.loop_guard]\nmax_messages = 4\nwindow = "10m"\nhumans = ["ops"]\n')
    env_file = tmp_path / "env.json"
    env_file.write_text(json.dumps({**os.environ, **swarm.env}))
    for agent in ("alice", "bob"):
        swarm.start_daemon(agent, "--invoke", py_command(ANSWER, str(env_file), agent))
    with raw_client(swarm.broker.port, "agents/ops/inbox") as ops, \
            Store(swarm.store_path("alice")) as alice, Store(swarm.store_path("bob")) as bob:
        swarm.cli("send", "--agent-id", "alice", "--to", "bob", "--subject", "start", "--body", "let us talk",
                  check=True)
        wait_for(lambda: any(h.rule == "loop_guard" for h in alice.holds() + bob.holds()), 60,
                 what="the loop guard to hold one side of the exchange")
        [hold] = [h for h in alice.holds() + bob.holds() if h.rule == "loop_guard"]
        assert "loop guard: 5 messages with" in hold.reason and "no human in between" in hold.reason, hold
        told = wait_for(lambda: ops.received("agents/ops/inbox"), 15, what="the operator to be told")
        assert "swarmbus loop guard" in json.loads(told[0].payload)["body"]
        # the exchange stops there: every message but the held one was woken and answered (the
        # first came from the CLI), so the stores hold exactly one message more than there were wakes
        def woken(store: Store) -> int:
            return sum(1 for mid in store.message_ids() if store.has_step(mid, ["wake"]))

        def settled() -> bool:
            total = len(alice.message_ids()) + len(bob.message_ids())
            return total == woken(alice) + woken(bob) + 1
        wait_for(settled, 30, what="every answer of the exchange stored")
        assert len(alice.message_ids()) + len(bob.message_ids()) == 5  # the guard trips at the 5th
        assert len(alice.holds()) + len(bob.holds()) == 1


# -- doctor and policy explain ------------------------------------------------------------------
def test_doctor_fails_when_wakes_keep_failing(tmp_path: Path) -> None:
    from swarmbus import DoctorContext
    from swarmbus.default_plugins.doctor import check_wakes
    from swarmbus.paths import AgentPaths

    settings = Settings.model_validate({"agent_id": ME, "state_dir": str(tmp_path)})
    ctx = DoctorContext(settings=settings, agent_id=ME, cache={})
    assert check_wakes(ctx).status == "skip"  # no store yet
    path = AgentPaths.for_agent(ME, tmp_path).store
    with Store(path) as store:
        messages = arrive(store, 4)
        assert check_wakes(ctx).status == "ok"
        for i, m in enumerate(messages[:3]):
            store.record_wake(T0 + i, [(m.seq, m.from_agent)], False, "notify exited 3 (exit 3)")
        result = check_wakes(ctx)
        assert result.status == "fail" and "the last 3 wakes failed" in result.summary and "exited 3" in result.summary
        assert result.fix and "swarmbus inbox" in result.fix
        store.record_wake(T0 + 10, [(messages[3].seq, "planner")], True, "ok")
        assert check_wakes(ctx).status == "ok"
        store.record_wake(T0 + 11, [(messages[3].seq, "planner")], False, "boom")
        assert check_wakes(ctx).status == "warn"


def test_policy_explain(swarm: SwarmEnv) -> None:
    (swarm.root / "config.toml").write_text(
        '[wake]\npolicy = "all"\n\n[wake.senders]\ndeny = ["mallory"]\n\n'
        '[wake.quiet_hours]\nstart = "00:00"\nend = "23:59"\ntimezone = "Europe/Berlin"\n')
    with Store(swarm.store_path("erin")) as store:
        store.accept("agents/erin/inbox", new_envelope("planner", "erin", "hi", "x", id="calm").to_wire(), "erin")
        store.accept("agents/erin/inbox", new_envelope("mallory", "erin", "hi", "x", id="bad").to_wire(), "erin")
    text = swarm.cli("policy", "explain", "--agent-id", "erin", check=True).stdout
    assert "quiet_hours (swarmbus_wake_filter) start=00:00" in text and "deny=['mallory']" in text

    data = json.loads(swarm.cli("policy", "explain", "--agent-id", "erin", "--message", "calm", "--json",
                                check=True).stdout)
    rules = [link["rule"] for link in data["chain"]]
    assert rules[0] == "decision" and {"quiet_hours", "senders", "budget", "loop_guard"} <= set(rules)
    verdicts = {v["rule"]: v["action"] for v in data["message"]["verdicts"]}
    now = data["message"]["now"]
    in_window = datetime.fromtimestamp(now, ZoneInfo("Europe/Berlin")).strftime("%H:%M") != "23:59"
    assert verdicts["decision"] == "allow"
    assert data["message"]["final"]["action"] == ("hold" if in_window else "allow")
    bad = json.loads(swarm.cli("policy", "explain", "--agent-id", "erin", "--message", "bad", "--json",
                               check=True).stdout)
    assert bad["message"]["final"]["action"] == "skip" and bad["message"]["final"]["rule"] == "senders"

    missing = swarm.cli("policy", "explain", "--agent-id", "erin", "--message", "nope")
    assert missing.returncode == 1 and "no message 'nope'" in missing.stderr
    (swarm.root / "config.toml").write_text('[wake.rate_limit]\noverall = "lots"\n')
    bad_config = swarm.cli("policy", "explain", "--agent-id", "erin")
    assert bad_config.returncode == 2 and "wake.rate_limit.overall" in bad_config.stderr
    assert "Traceback" not in bad_config.stderr


def test_no_waker_counts_no_wake(tmp_path: Path) -> None:
    clock = Clock(T0)
    with Store(tmp_path / "store.sqlite3") as store:
        async def main() -> None:
            relay = HookRelay(get_plugin_manager(entry_points=False, env={}))  # no waker at all
            settings = Settings.model_validate({"wake": {"policy": "all", "budget": {"per_hour": 1}}})
            attention = Attention(store, relay, settings, now=clock)

            async def send(to: str, subject: str, body: str, **fields: Any) -> str:
                return "sent"

            context = HandlerContext(ME, settings, logging.getLogger("test"), send, relay, attention=attention)
            attention.start(context)
            for m in arrive(store, 2):
                assert "no waker is configured" in await handle_wake(m, context)  # never "held": nothing woke
            assert attention.history.wake_times(0) == [] and store.wake_attempts(5) == []
            attention.close()

        asyncio.run(main())
