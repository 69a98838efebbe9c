"""What the core offers an operator plugin: services run beside message handling (restarted with
backoff, cancelled at shutdown), operator events (a wake failed N times in a row, the loop guard
tripped, a message held, a watched agent's presence changed), and the operator's own hold on an
agent's wakes (``swarmbus policy hold|release``): in-process with an injected clock, then a real
daemon on a private broker."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from attention_support import ME, T0, Clock, arrive, make_attention
from conftest import SwarmEnv, wait_for
from peers import encode, py_command, raw_client, wire
from swarmbus import (
    HandlerContext,
    OperatorEvent,
    Service,
    StoredMessage,
    WakeDecision,
    WakeOutcome,
    hookimpl,
)
from swarmbus.daemon.services import ServiceRunner
from swarmbus.default_plugins import manual
from swarmbus.default_plugins.attention import Attention, WakeFailed, handle_wake
from swarmbus.plugins import HookRelay, get_plugin_manager
from swarmbus.settings import Settings
from swarmbus.store import ManualHold, Store


class Pager:
    """Records every operator event; a waker whose outcome the test sets."""

    def __init__(self) -> None:
        self.events: list[OperatorEvent] = []
        self.ok = True
        self.woken: list[str] = []

    @hookimpl
    def swarmbus_operator_event(self, event: OperatorEvent) -> None:
        self.events.append(event)

    @hookimpl
    def swarmbus_wake(self, message: StoredMessage, decision: WakeDecision) -> WakeOutcome:
        self.woken.extend([message.id, *(m.id for m in decision.batch)])
        return WakeOutcome(self.ok, "worked" if self.ok else "notify exited 3")

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


def setup(store: Store, clock: Clock, **wake: Any) -> tuple[Attention, HandlerContext, Pager]:
    pager = Pager()
    attention, context = make_attention(store, clock, pager, **wake)
    return attention, context, pager




# -- services ----------------------------------------------------------------------------------
def test_services_are_restarted_with_backoff_and_cancelled_at_close(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[float] = []
    cancelled: list[str] = []

    async def flaky(ctx: HandlerContext) -> None:
        runs.append(time.monotonic())
        if len(runs) <= 3:
            raise RuntimeError(f"boom {len(runs)}")
        try:
            await asyncio.Event().wait()  # runs until cancelled
        except asyncio.CancelledError:
            cancelled.append(ctx.agent_id)
            raise

    async def once(ctx: HandlerContext) -> None:
        return None

    async def main() -> list[dict[str, Any]]:
        relay = HookRelay(get_plugin_manager(entry_points=False, env={}))
        ctx = HandlerContext(ME, Settings(), logging.getLogger("test"), lambda *a, **k: None, relay)  # type: ignore[arg-type,return-value]
        runner = ServiceRunner([Service("flaky", flaky), Service("once", once)], ctx, backoff_min=0.05, backoff_max=0.2)
        runner.start()
        deadline = time.monotonic() + 10
        while len(runs) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        status = runner.status()
        await runner.close()
        return status

    with caplog.at_level(logging.ERROR, logger="swarmbus.daemon"):
        status = asyncio.run(main())
    assert len(runs) == 4, runs
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert gaps[0] >= 0.045 and gaps[1] >= 0.095 and gaps[2] >= 0.19, gaps  # 0.05, 0.1, 0.2 (the cap)
    states = {s["name"]: s for s in status}
    assert states["flaky"]["state"] == "running" and states["flaky"]["restarts"] == 3
    assert states["flaky"]["last_error"] == "RuntimeError: boom 3"
    assert states["once"]["state"] == "finished" and states["once"]["restarts"] == 0
    assert cancelled == [ME]
    assert "service flaky failed (RuntimeError: boom 1); starting it again in 0.05s" in caplog.text


# -- operator events from the wake bookkeeping -----------------------------------------------------
def test_wake_failures_in_a_row_are_counted_and_survive_a_restart(tmp_path: Path) -> None:
    clock = Clock(T0)
    path = tmp_path / "store.sqlite3"
    with Store(path) as store:
        async def main() -> None:
            attention, context, pager = setup(store, clock)
            attention.start(context)
            pager.ok = False
            for i, m in enumerate(arrive(store, 2)):
                clock.now = T0 + i  # (attempts are told apart by their time)
                with pytest.raises(WakeFailed):
                    await handle_wake(m, context)
            assert [(e.kind, e.count, e.peer, e.agent) for e in pager.events] == [
                ("wake_failed", 1, "planner", ME), ("wake_failed", 2, "planner", ME)]
            assert "notify exited 3" in pager.events[0].detail and pager.events[0].message_id == "m0"
            attention.close()

        asyncio.run(main())
    with Store(path) as store:  # restarted: the streak goes on from the store
        async def again() -> None:
            attention, context, pager = setup(store, clock)
            attention.start(context)
            pager.ok = False
            clock.now = T0 + 10
            [third] = arrive(store, 1, start=2)
            with pytest.raises(WakeFailed):
                await handle_wake(third, context)
            assert [(e.kind, e.count) for e in pager.events] == [("wake_failed", 3)]
            pager.ok = True
            [fourth, fifth] = arrive(store, 2, start=3)
            clock.now = T0 + 11
            await handle_wake(fourth, context)
            pager.ok = False
            clock.now = T0 + 12
            with pytest.raises(WakeFailed):
                await handle_wake(fifth, context)
            assert [(e.kind, e.count) for e in pager.events] == [("wake_failed", 3), ("wake_failed", 1)]
            attention.close()

        asyncio.run(again())


def test_a_hold_is_an_event_once_and_the_loop_guard_is_one_too(tmp_path: Path) -> None:
    clock = Clock(T0)
    with Store(tmp_path / "store.sqlite3") as store:
        async def held_once() -> None:
            attention, context, pager = setup(store, clock, budget={"per_hour": 1})
            attention.start(context)
            first, second, third = arrive(store, 3)
            await handle_wake(first, context)
            assert (await handle_wake(second, context)).startswith("held until")
            [held] = [e for e in pager.events if e.kind == "held"]
            assert (held.agent, held.peer, held.rule, held.message_id) == (ME, "planner", "budget", "m1")
            assert held.until == T0 + 3600 and "budget" in held.detail
            assert (await handle_wake(third, context)).startswith("held until")
            clock.now = T0 + 3600  # the rules are asked again (both allowed): no new event
            assert await attention.release_due() == 2
            assert [e.message_id for e in pager.events if e.kind == "held"] == ["m1", "m2"]
            attention.close()

        asyncio.run(held_once())

        async def guarded() -> None:
            attention, context, pager = setup(store, clock, loop_guard={"max_messages": 2, "window": "10m"})
            attention.start(context)
            outcomes = []
            for i, m in enumerate(arrive(store, 4, start=20, sender="chatty")):
                clock.now = T0 + 7200 + i
                outcomes.append(await handle_wake(m, context))
            assert [o.split(" ")[0] for o in outcomes] == ["woken", "woken", "held", "held"], outcomes
            guards = [e for e in pager.events if e.kind == "loop_guard"]
            assert len(guards) == 1 and guards[0].peer == "chatty" and guards[0].rule == "loop_guard"  # once per episode
            assert guards[0].until is not None and "loop guard" in guards[0].detail
            assert [e.kind for e in pager.events].count("held") == 2
            attention.close()

        asyncio.run(guarded())


# -- the operator's hold -----------------------------------------------------------------------------
def test_manual_hold_holds_every_wake_and_release_wakes_them(tmp_path: Path) -> None:
    clock = Clock(T0)
    path = tmp_path / "store.sqlite3"
    with Store(path) as store:
        async def main() -> None:
            attention, context, pager = setup(store, clock)
            attention.start(context)
            answer = await manual.control(attention, ME, {"op": "hold", "duration": None, "reason": "deploy"})
            assert answer["ok"] and answer["manual_hold"] == {"since": T0, "until": None, "reason": "deploy"}
            first, second = arrive(store, 2)
            for m in (first, second):
                detail = await handle_wake(m, context)
                assert detail.startswith("held until") and "held by the operator until released" in detail, detail
            assert {h.rule for h in store.holds()} == {"manual"} and pager.woken == []
            held = [e for e in pager.events if e.kind == "held"]
            assert [e.message_id for e in held] == ["m0", "m1"] and all(e.rule == "manual" for e in held)
            assert store.manual_hold() == ManualHold(T0, None, "deploy")

            attention.close()

            # a day later (the daemon restarted meanwhile) the open-ended hold is renewed, not ended
            clock.now = T0 + 86400
            attention, context, renewed = setup(store, clock)
            attention.start(context)  # due holds: released in the background, held again
            wait_until = time.monotonic() + 5
            while store.holds()[0].until <= clock.now and time.monotonic() < wait_until:
                await asyncio.sleep(0.01)
            assert [h.until for h in store.holds()] == [T0 + 2 * 86400] * 2
            assert renewed.events == [] and renewed.woken == []  # renewed: no new `held` events
            pager = renewed

            answer = await manual.control(attention, ME, {"op": "release"})
            assert answer["ok"] and answer["released"] == 2 and answer["manual_hold"] is None
            wait_until = time.monotonic() + 5
            while store.holds() and time.monotonic() < wait_until:
                await asyncio.sleep(0.01)
            assert store.holds() == [] and sorted(pager.woken) == ["m0", "m1"]
            assert store.manual_hold() is None

            bad = await manual.control(attention, ME, {"op": "hold", "duration": -5})
            assert bad["ok"] is False and bad["kind"] == "usage"
            attention.close()

        asyncio.run(main())


def test_manual_hold_with_a_deadline_ends_by_itself_and_survives_a_restart(tmp_path: Path) -> None:
    clock = Clock(T0)
    path = tmp_path / "store.sqlite3"
    with Store(path) as store:
        async def main() -> None:
            attention, context, _ = setup(store, clock)
            attention.start(context)
            await manual.control(attention, ME, {"op": "hold", "duration": 7200, "reason": ""})
            attention.close()

        asyncio.run(main())
    with Store(path) as store:
        async def after() -> None:
            attention, context, pager = setup(store, clock)
            attention.start(context)  # the hold is read back from the store
            [m] = arrive(store, 1)
            assert (await handle_wake(m, context)).startswith("held until")
            assert store.hold_of(m.seq).until == T0 + 7200  # type: ignore[union-attr]
            clock.now = T0 + 7200
            assert await attention.release_due() == 1
            assert pager.woken == ["m0"]
            attention.close()

        asyncio.run(after())


# -- presence changes of watched agents ----------------------------------------------------------
def test_listener_reports_presence_of_watched_agents() -> None:
    from swarmbus.daemon.listener import Daemon
    from swarmbus.daemon.peers import Peers

    pager = Pager()
    pm = get_plugin_manager(entry_points=False, env={})
    pm.register(pager)
    daemon = Daemon.__new__(Daemon)
    daemon.relay = HookRelay(pm)
    subscribed: list[str] = []
    daemon.peers = Peers(ME, subscribe=lambda subs: subscribed.extend(s.topic for s in subs),
                         on_change=daemon._peer_presence_changed)
    daemon._watch_presence(["planner", ME])
    assert subscribed == ["agents/planner/presence"]  # never our own id
    daemon.peers.on_synced()
    assert daemon._presence_of("planner") is None
    daemon.peers.on_message("agents/planner/presence", encode({"agent": "planner", "status": "online",
                                                                "ts": "2025-01-01T00:00:00Z", "instance": "i1"}))
    seen = daemon._presence_of("planner")
    assert seen is not None and seen["online"] is True and seen["instance"] == "i1" and seen["ts"] == "2025-01-01T00:00:00Z"
    daemon.peers.on_message("agents/planner/presence", encode({"agent": "planner", "status": "offline",
                                                                "reason": "stopped"}))
    assert [(e.kind, e.agent, e.detail) for e in pager.events] == [("peer_offline", "planner", "stopped")]
    daemon._peer_presence_changed("planner", True)
    assert pager.events[-1].kind == "peer_online"


# -- a real daemon -------------------------------------------------------------------------------------
WAKE_LOG = "import os,sys; d=sys.argv[1]; open(os.path.join(d, os.environ['SWARMBUS_ID']), 'w').write(sys.stdin.read())"


def test_policy_hold_and_release_with_a_running_daemon(swarm: SwarmEnv, tmp_path: Path) -> None:
    woken = tmp_path / "woken"
    woken.mkdir()
    (swarm.root / "config.toml").write_text('[wake]\npolicy = "all"\n')
    not_running = swarm.cli("policy", "hold", "--agent-id", "dana")
    assert not_running.returncode == 1 and "no daemon of dana answers on this machine" in not_running.stderr
    swarm.start_daemon("dana", "--invoke", py_command(WAKE_LOG, str(woken)))
    held = swarm.cli("policy", "hold", "--agent-id", "dana", "--reason", "deploy freeze", check=True)
    assert "dana: every wake is held until released" in held.stdout and "deploy freeze" in held.stdout
    status = json.loads(swarm.cli("status", "--agent-id", "dana", "--json", check=True).stdout)["status"]
    assert status["manual_hold"]["reason"] == "deploy freeze" and status["manual_hold"]["until"] is None
    with raw_client(swarm.broker.port) as pub, Store(swarm.store_path("dana")) as store:  # type: ignore[attr-defined]
        for mid in ("one", "two"):
            pub.publish("agents/dana/inbox", encode(wire("dana", body=f"body of {mid}", id=mid)))
        wait_for(lambda: len(store.holds()) == 2, 15, what="both messages held by the operator")
        assert {h.rule for h in store.holds()} == {"manual"} and not list(woken.iterdir())
        status = json.loads(swarm.cli("status", "--agent-id", "dana", "--json", check=True).stdout)["status"]
        assert status["unread"] == 2 and status["holds"]["count"] == 2
        released = swarm.cli("policy", "release", "--agent-id", "dana", "--json", check=True)
        assert json.loads(released.stdout)["released"] == 2
        wait_for(lambda: sorted(p.name for p in woken.iterdir()) == ["one", "two"], 15, what="both woken")
        wait_for(lambda: not store.holds(), 15, what="the holds to be gone")
        assert store.manual_hold() is None
    timed = swarm.cli("policy", "hold", "--agent-id", "dana", "--for", "2h", check=True)
    assert "dana: every wake is held until " in timed.stdout
    bad = swarm.cli("policy", "hold", "--agent-id", "dana", "--for", "soon")
    assert bad.returncode == 2 and "--for" in bad.stderr
    assert swarm.cli("policy", "release", "--agent-id", "dana", "--for", "1h").returncode == 2
