"""Coalescing in the core: one wake at a time per agent, the messages that wait in the next one.

In-process first (a store, the real :class:`Attention` and ``handle_wake``, a fake waker plugin
whose wakes block on an event), then a real daemon on a private mosquitto with a slow wake command
of the ``swarmbus-priority`` plugin configured with ``batch = true``. Every wait is a condition
with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import SwarmEnv, wait_for
from peers import encode, py_command, raw_client, seq_of, wire
from swarmbus import HandlerContext, StoredMessage, WakeDecision, WakeOutcome, hookimpl, new_envelope
from swarmbus.default_plugins.attention import Attention, WakeTimedOut, handle_wake
from swarmbus.default_plugins.coalesce import Coalescer, Ticket, Wake
from swarmbus.plugins import HookRelay, get_plugin_manager
from swarmbus.settings import Settings
from swarmbus.store import Store

ME = "coder"


class SlowWaker:
    """A waker whose wakes block until ``release`` is set (``hold`` False: return at once); it
    records each call as (message id, ids in ``decision.batch``) and how many run at once."""

    def __init__(self, *, coalesce: bool | None = True) -> None:
        self.coalesce = coalesce
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.release = asyncio.Event()
        self.running = 0
        self.most_at_once = 0
        self.cancelled = 0
        self.work = 0.0  # seconds each wake takes after its release (the fake's own work)
        self.block_first_only = False

    @hookimpl
    def swarmbus_wake_coalesce(self) -> bool | None:
        return self.coalesce

    @hookimpl
    def swarmbus_wake(self, message: StoredMessage, decision: WakeDecision) -> Any:
        self.calls.append((message.id, tuple(m.id for m in decision.batch)))
        first = len(self.calls) == 1

        async def run() -> WakeOutcome:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            try:
                if first or not self.block_first_only:
                    await self.release.wait()
                if self.work:
                    await asyncio.sleep(self.work)
                return WakeOutcome(True, f"woke for {1 + len(decision.batch)}")
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            finally:
                self.running -= 1

        return run()


def setup(store: Store, waker: SlowWaker, **settings: Any) -> tuple[Attention, HandlerContext]:
    pm = get_plugin_manager(entry_points=False, env={})
    pm.register(waker)
    relay = HookRelay(pm)
    config = Settings.model_validate({"wake": {"policy": "all", **settings.pop("wake", {})}, **settings})
    attention = Attention(store, relay, config)

    async def send(to: str, subject: str, body: str, **fields: Any) -> str:
        return "sent"

    context = HandlerContext(ME, config, logging.getLogger("test"), send, relay, attention=attention)
    attention.start(context)
    return attention, context


def arrive(store: Store, n: int, start: int = 0) -> list[StoredMessage]:
    out = []
    for i in range(start, start + n):
        result = store.accept(f"agents/{ME}/inbox", new_envelope("planner", ME, f"s{i}", f"b{i}", id=f"m{i}").to_wire(),
                              ME)
        assert result.message is not None
        out.append(result.message)
    return out


async def until(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Let the loop run until ``condition()`` holds; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.005)


def handle(messages: list[StoredMessage], context: HandlerContext) -> list[asyncio.Task[str]]:
    return [asyncio.ensure_future(handle_wake(m, context)) for m in messages]


# -- in-process ---------------------------------------------------------------------------------
def test_ten_messages_during_a_slow_wake_make_two_wakes(tmp_path: Path) -> None:
    with Store(tmp_path / "store.sqlite3") as store:
        async def main() -> None:
            waker = SlowWaker()
            attention, context = setup(store, waker)
            first, *later = arrive(store, 11)
            [running] = handle([first], context)
            await until(lambda: waker.running == 1, "the first wake to start")
            waiting = handle(later, context)
            await until(lambda: attention.coalescer.waiting == 10, "ten messages waiting for the next wake")
            assert waker.calls == [("m0", ())]  # one wake at a time
            waker.release.set()
            details = await asyncio.gather(running, *waiting)
            assert waker.calls == [("m0", ()), ("m1", tuple(f"m{i}" for i in range(2, 11)))]  # oldest first
            assert waker.most_at_once == 1 and attention.coalescer.wakes == 2
            assert details[0] == "woken (wake policy is all): woke for 1"
            label = f"#{later[0].seq}, #{later[1].seq}, #{later[2].seq}, #{later[3].seq}, #{later[4].seq}, ... " \
                    f"#{later[-1].seq} (10 messages)"
            for detail in details[1:]:
                assert detail == f"woken (wake policy is all) with 9 other(s) in wake {label}: woke for 10"
            attempts = store.wake_attempts(5)  # a coalesced wake is one attempt, for all its messages
            assert [(a.ok, a.seqs) for a in attempts] == [(True, tuple(m.seq for m in later)), (True, (first.seq,))]
            assert len(attention.history.wake_times(0)) == 2
            attention.close()

        asyncio.run(main())


def test_a_per_message_waker_gets_one_call_per_message_at_once(tmp_path: Path) -> None:
    with Store(tmp_path / "store.sqlite3") as store:
        async def main() -> None:
            waker = SlowWaker(coalesce=False)
            attention, context = setup(store, waker, daemon={"handler_concurrency": 3})
            tasks = handle(arrive(store, 5), context)
            await until(lambda: waker.running == 3, "three wakes running at once")
            assert len(waker.calls) == 3  # the concurrency limit holds the other two
            waker.release.set()
            details = await asyncio.gather(*tasks)
            assert sorted(waker.calls) == [(f"m{i}", ()) for i in range(5)]
            assert waker.most_at_once == 3 and attention.coalescer.wakes == 0
            assert all(d == "woken (wake policy is all): woke for 1" for d in details)
            assert len(store.wake_attempts(10)) == 5
            attention.close()

        asyncio.run(main())


def test_no_answer_means_one_call_per_message(tmp_path: Path) -> None:
    with Store(tmp_path / "store.sqlite3") as store:
        async def main() -> None:
            waker = SlowWaker(coalesce=None)  # a waker written before swarmbus_wake_coalesce
            attention, context = setup(store, waker)
            tasks = handle(arrive(store, 3), context)
            await until(lambda: waker.running == 3, "three wakes at once")
            waker.release.set()
            await asyncio.gather(*tasks)
            assert sorted(waker.calls) == [("m0", ()), ("m1", ()), ("m2", ())]
            attention.close()

        asyncio.run(main())


def test_a_cancelled_message_leaves_its_batch(tmp_path: Path) -> None:
    with Store(tmp_path / "store.sqlite3") as store:
        async def main() -> None:
            waker = SlowWaker()
            attention, context = setup(store, waker)
            first, second, third = arrive(store, 3)
            [running] = handle([first], context)
            await until(lambda: waker.running == 1, "the first wake")
            gone, staying = handle([second, third], context)
            await until(lambda: attention.coalescer.waiting == 2, "two waiting")
            gone.cancel()  # e.g. the daemon's shutdown reached this handler first
            waker.release.set()
            await running
            assert await staying == "woken (wake policy is all): woke for 1"
            assert gone.cancelled()
            assert waker.calls == [("m0", ()), ("m2", ())]
            attention.close()

        asyncio.run(main())


def test_a_wake_nobody_waits_for_is_cancelled(tmp_path: Path) -> None:
    with Store(tmp_path / "store.sqlite3") as store:
        async def main() -> None:
            waker = SlowWaker()
            attention, context = setup(store, waker)
            tasks = handle(arrive(store, 1), context)
            await until(lambda: waker.running == 1, "the first wake")
            more = handle(arrive(store, 2, start=1), context)
            await until(lambda: attention.coalescer.waiting == 2, "two waiting")
            for task in [*tasks, *more]:
                task.cancel()
            await until(lambda: waker.cancelled == 1 and not attention.coalescer.running,
                        "the abandoned wake to be cancelled and the queue to empty")
            assert waker.calls == [("m0", ())]  # the two that waited left: no second wake
            assert store.wake_attempts(5) == []  # a cancelled wake is not recorded (dispatched again at start)
            attention.close()

        asyncio.run(main())


def test_the_timeout_bounds_each_wake_not_the_wait_for_it(tmp_path: Path) -> None:
    """``daemon.handler_timeout`` stops a wake that runs too long; a message that waited for that
    wake longer than the timeout is still woken by the next one."""
    with Store(tmp_path / "store.sqlite3") as store:
        async def main() -> None:
            waker = SlowWaker()
            waker.block_first_only = True  # the first wake never ends by itself
            waker.work = 0.1
            attention, context = setup(store, waker, daemon={"handler_timeout": 0.3})
            first, second = arrive(store, 2)
            loop = asyncio.get_running_loop()
            [stuck] = handle([first], context)
            await until(lambda: waker.running == 1, "the first wake")
            queued_at = loop.time()
            [waiting] = handle([second], context)
            with pytest.raises(WakeTimedOut, match="timed out after 0s"):
                await stuck
            assert await waiting == "woken (wake policy is all): woke for 1"
            assert loop.time() - queued_at > 0.3  # longer than the timeout, in all
            assert waker.calls == [("m0", ()), ("m1", ())]
            [newest, timed_out] = store.wake_attempts(5)
            assert (timed_out.ok, timed_out.seqs, newest.ok) == (False, (first.seq,), True)
            attention.close()

        asyncio.run(main())


def test_debounce_waits_for_the_burst(tmp_path: Path) -> None:
    with Store(tmp_path / "store.sqlite3") as store:
        async def main() -> None:
            waker = SlowWaker()
            waker.release.set()
            attention, context = setup(store, waker, wake={"debounce": "30s"})
            assert attention.coalescer.debounce == 30
            tasks = handle(arrive(store, 1), context)
            await until(lambda: attention.coalescer.running, "the debounce to start")
            tasks += handle(arrive(store, 2, start=1), context)
            await until(lambda: attention.coalescer.waiting == 3, "three waiting")
            assert waker.calls == []  # within the window: no wake yet
            for task in tasks:
                task.cancel()
            await until(lambda: not attention.coalescer.running, "the abandoned debounce to end")
            assert waker.calls == []
            attention.close()

        asyncio.run(main())


def test_a_short_debounce_makes_one_wake(tmp_path: Path) -> None:
    with Store(tmp_path / "store.sqlite3") as store:
        async def main() -> None:
            waker = SlowWaker()
            waker.release.set()
            attention, context = setup(store, waker, wake={"debounce": 0.2})
            tasks = handle(arrive(store, 1), context)
            await until(lambda: attention.coalescer.running, "the debounce to start")
            tasks += handle(arrive(store, 2, start=1), context)
            await asyncio.gather(*tasks)
            assert waker.calls == [("m0", ("m1", "m2"))]
            attention.close()

        asyncio.run(main())


def test_coalescer_fails_a_wake_that_raises_and_keeps_serving() -> None:
    async def main() -> None:
        runs: list[list[int]] = []

        async def run(tickets: Any) -> Wake:
            runs.append([t.message.seq for t in tickets])
            if len(runs) == 1:
                raise OSError("disk on fire")
            return Wake(tuple(t.message for t in tickets), WakeOutcome(True, "fine"))

        coalescer = Coalescer(run)
        messages = [StoredMessage(i, new_envelope("p", ME, "s", "b"), "t", 0.0) for i in (1, 2)]
        failed = await coalescer.submit(messages[0], "r")
        assert failed.outcome is not None and not failed.outcome.ok and "OSError: disk on fire" in failed.outcome.detail
        ok = await coalescer.submit(messages[1], "r")
        assert ok.outcome is not None and ok.outcome.ok
        assert runs == [[1], [2]]
        assert Ticket(messages[0], "r").record is False

    asyncio.run(main())


def test_settings_debounce() -> None:
    assert Settings().wake.debounce == 0
    assert Settings.model_validate({"wake": {"debounce": "2m"}}).wake.debounce == 120
    assert Settings.model_validate({"wake": {"debounce": 1.5}}).wake.debounce == 1.5
    for bad in ("soon", -1):
        with pytest.raises(ValueError, match="debounce"):
            Settings.model_validate({"wake": {"debounce": bad}})


# -- a real daemon --------------------------------------------------------------------------------
SLOW_BATCH = (
    "import json, os, sys, time\n"
    "d = sys.argv[1]\n"
    "ids = os.environ['SWARMBUS_IDS'].split(',')\n"
    "stdin_ids = [json.loads(line)['id'] for line in sys.stdin.read().splitlines()]\n"
    "with open(os.path.join(d, 'runs.jsonl'), 'a') as f:\n"
    "    f.write(json.dumps({'ids': ids, 'stdin_ids': stdin_ids}) + '\\n')\n"
    "deadline = time.monotonic() + 60\n"
    "while not os.path.exists(os.path.join(d, 'release')) and time.monotonic() < deadline:\n"
    "    time.sleep(0.02)\n"
)


def test_ten_messages_during_a_slow_wake_make_two_wakes_in_a_daemon(swarm: SwarmEnv, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    runs_file = work / "runs.jsonl"
    (swarm.root / "config.toml").write_text('[wake]\npolicy = "all"\n\n[plugins.priority]\nbatch = true\n')
    swarm.start_daemon("dana", "--invoke", py_command(SLOW_BATCH, str(work)))

    def runs() -> list[dict[str, Any]]:
        return [json.loads(line) for line in runs_file.read_text().splitlines()] if runs_file.exists() else []

    with raw_client(swarm.broker.port) as pub, Store(swarm.store_path("dana")) as store:
        pub.publish("agents/dana/inbox", encode(wire("dana", body="first", id="first")))
        wait_for(lambda: runs(), 20, what="the first (slow) wake to start")
        later = [f"later-{i}" for i in range(10)]
        for mid in later:
            pub.publish("agents/dana/inbox", encode(wire("dana", body=f"body of {mid}", id=mid)))

        def waiting() -> bool:
            status = swarm.status("dana") or {}
            return status.get("handlers_running", {}).get("wake") == 11

        wait_for(waiting, 20, what="eleven wake runs: one wake, ten messages waiting for the next")
        assert len(runs()) == 1
        (work / "release").touch()
        wait_for(lambda: len(runs()) == 2, 20, what="the second wake")

        def all_woken() -> bool:
            deliveries = [[d for d in store.deliveries(seq_of(store, mid)) if d.handler == "wake"]
                          for mid in ["first", *later]]
            return all(ds and ds[0].status == "ok" for ds in deliveries)

        wait_for(all_woken, 20, what="every message's wake delivery recorded ok")
        first_run, second_run = runs()
        assert first_run == {"ids": ["first"], "stdin_ids": ["first"]}
        assert second_run == {"ids": later, "stdin_ids": later}  # one run, oldest first
        seqs = [seq_of(store, mid) for mid in later]
        for mid in later:
            [d] = [d for d in store.deliveries(seq_of(store, mid)) if d.handler == "wake"]
            assert d.detail.startswith(f"woken (wake policy is all) with 9 other(s) in wake #{seqs[0]}, "), d.detail
        assert [a.seqs for a in store.wake_attempts(5)] == [tuple(seqs), (seq_of(store, "first"),)]
