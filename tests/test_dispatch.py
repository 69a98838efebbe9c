"""The dispatcher in-process, with a real store and a fake writer: bounded memory with refills in
order, lanes that do not wait for each other, outcomes that survive a failing writer, the sweep,
and messages marked redelivered after a restart."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from swarmbus.api import Handler, HandlerContext, StoredMessage
from swarmbus.daemon.dispatch import Dispatcher
from swarmbus.envelope import new_envelope
from swarmbus.plugins import HookRelay, get_plugin_manager
from swarmbus.settings import Settings
from swarmbus.store import Store

ME = "me"


def stored(store: Store, n: int, start: int = 0) -> list[StoredMessage]:
    out = []
    for i in range(start, start + n):
        result = store.accept(f"agents/{ME}/inbox", new_envelope("peer", ME, f"s{i}", f"b{i}", id=f"m{i}").to_wire(), ME)
        assert result.message is not None
        out.append(result.message)
    return out


class Writer:
    """Stands in for the receiver: records outcomes in the store, optionally failing first."""

    def __init__(self, store: Store, failures: int = 0) -> None:
        self.store = store
        self.failures = failures
        self.pending: list[tuple[list[tuple[int, str, str, str]], list[int]]] = []
        self.dispatcher: Dispatcher | None = None

    def record(self, outcomes: list[tuple[int, str, str, str]], done: list[int]) -> None:
        self.pending.append((outcomes, done))
        asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        if self.failures:
            self.failures -= 1
            asyncio.get_running_loop().call_later(0.01, self.flush)  # a failed write is retried later
            return
        batches, self.pending = self.pending, []
        for outcomes, done in batches:
            self.store.record_outcomes(outcomes, done)
            assert self.dispatcher is not None
            self.dispatcher.recorded(done)


def make(store: Store, handlers: dict[str, Callable[[StoredMessage], Awaitable[str | None]]], *,
         backlog: int = 16, failures: int = 0, concurrency: int = 2) -> tuple[Dispatcher, Writer]:
    settings = Settings.model_validate({"daemon": {"backlog": backlog, "handler_concurrency": concurrency}})
    relay = HookRelay(get_plugin_manager(entry_points=False))
    context = HandlerContext(agent_id=ME, settings=settings, logger=logging.getLogger("test"), send=None,  # type: ignore[arg-type]
                             hooks=relay)

    def wrap(fn: Callable[[StoredMessage], Awaitable[str | None]]) -> Callable[[StoredMessage, HandlerContext], Awaitable[str | None]]:
        async def handle(message: StoredMessage, ctx: HandlerContext) -> str | None:
            return await fn(message)
        return handle

    writer = Writer(store, failures)
    dispatcher = Dispatcher(store, relay, {n: Handler(n, wrap(f)) for n, f in handlers.items()}, context,
                            writer.record, backlog=backlog)
    writer.dispatcher = dispatcher
    return dispatcher, writer


async def until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with Store(tmp_path / "store.sqlite3") as s:
        yield s


def test_backlog_bounds_memory_and_refills_in_order(store: Store) -> None:
    """200 messages offered at once with a backlog of 16: never more than 16 held, all archived
    in seq order, all dispatched."""
    seen: list[int] = []
    peak = 0

    async def main() -> None:
        nonlocal peak
        gate = asyncio.Event()

        async def archive(message: StoredMessage) -> str:
            nonlocal peak
            peak = max(peak, dispatcher.held)
            await gate.wait()
            seen.append(message.seq)
            return "ok"

        dispatcher, _ = make(store, {"archive": archive}, backlog=16, concurrency=1)
        dispatcher.start()
        dispatcher.offer(stored(store, 200))
        assert dispatcher.held == 16
        gate.set()
        await until(lambda: not store.undispatched())
        await dispatcher.drain(1)

    asyncio.run(main())
    assert seen == list(range(1, 201)) and peak <= 16
    assert {d.status for d in store.deliveries()} == {"ok"}


def test_a_slow_lane_does_not_hold_up_another(store: Store) -> None:
    archived: list[str] = []

    async def main() -> None:
        release = asyncio.Event()

        async def wake(message: StoredMessage) -> str:
            await release.wait()
            return "woken"

        async def archive(message: StoredMessage) -> str:
            archived.append(message.id)
            return "appended"

        dispatcher, _ = make(store, {"wake": wake, "archive": archive}, concurrency=1)
        dispatcher.start()
        dispatcher.offer(stored(store, 5))
        await until(lambda: len(archived) == 5)  # every archive ran while the first wake still waits
        assert store.undispatched()  # nothing is dispatched before its wake finished
        release.set()
        await until(lambda: not store.undispatched())
        await dispatcher.drain(1)

    asyncio.run(main())
    assert archived == [f"m{i}" for i in range(5)]


def test_outcomes_survive_a_failing_writer(store: Store) -> None:
    """The writer fails its first attempts: the message stays held, then is dispatched."""
    async def main() -> None:
        async def archive(message: StoredMessage) -> str:
            return "ok"

        dispatcher, writer = make(store, {"archive": archive}, failures=5)
        dispatcher.start()
        dispatcher.offer(stored(store, 1))
        await until(lambda: writer.failures == 0 and not store.undispatched())
        assert dispatcher.held == 0
        await dispatcher.drain(1)

    asyncio.run(main())


def test_handler_failure_is_recorded(store: Store) -> None:
    async def main() -> None:
        async def boom(message: StoredMessage) -> str:
            raise RuntimeError("no luck")

        dispatcher, _ = make(store, {"wake": boom})  # (the built-in router sends to archive and wake)
        dispatcher.start()
        dispatcher.offer(stored(store, 1))
        await until(lambda: not store.undispatched())
        await dispatcher.drain(1)

    asyncio.run(main())
    [d] = store.deliveries()
    assert (d.handler, d.status, d.attempts) == ("wake", "failed", 1) and "no luck" in d.detail
    assert store.counters()["handler_failed"] == 1


def test_restart_redelivers_unfinished_skipping_finished_handlers(store: Store) -> None:
    messages = stored(store, 3)
    store.record_outcomes([(messages[0].seq, "archive", "ok", "before the crash")], [])
    store.record_outcomes([(messages[1].seq, "archive", "ok", ""), (messages[1].seq, "wake", "ok", "")],
                          [messages[1].seq])
    runs: list[tuple[str, str, bool]] = []

    async def main() -> None:
        def handler(name: str) -> Callable[[StoredMessage], Awaitable[str]]:
            async def run(message: StoredMessage) -> str:
                runs.append((name, message.id, message.redelivered))
                return name
            return run

        dispatcher, _ = make(store, {"archive": handler("archive"), "wake": handler("wake")})
        dispatcher.start()
        await until(lambda: not store.undispatched())
        dispatcher.offer(stored(store, 1, start=3))  # a new arrival is not marked redelivered
        await until(lambda: not store.undispatched())
        await dispatcher.drain(1)

    asyncio.run(main())
    assert sorted(runs) == sorted([("wake", "m0", True), ("archive", "m2", True), ("wake", "m2", True),
                                   ("archive", "m3", False), ("wake", "m3", False)])


def test_sweep_takes_in_what_was_left_undispatched(store: Store) -> None:
    ran: list[str] = []

    async def main() -> None:
        async def archive(message: StoredMessage) -> str:
            ran.append(message.id)
            return "ok"

        dispatcher, _ = make(store, {"archive": archive})
        dispatcher.start()
        lost = stored(store, 2)
        dispatcher.offer(lost[1:])  # the first one's hand-over was lost
        await until(lambda: ran == ["m1"])
        dispatcher.sweep()
        await until(lambda: not store.undispatched())
        await dispatcher.drain(1)

    asyncio.run(main())
    assert sorted(ran) == ["m0", "m1"]


def test_routing_failure_is_recorded_not_stranded(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async def archive(message: StoredMessage) -> str:
            return "ok"

        dispatcher, _ = make(store, {"archive": archive})

        def broken(*args: Any) -> list[str]:
            raise ValueError("router bug")

        monkeypatch.setattr(dispatcher.relay, "route", broken)
        dispatcher.start()
        dispatcher.offer(stored(store, 1))
        await until(lambda: not store.undispatched())
        await dispatcher.drain(1)

    asyncio.run(main())
    [d] = store.deliveries()
    assert (d.handler, d.status) == ("route", "failed") and "router bug" in d.detail
