"""Running handlers for stored messages, off the receive path (the daemon's event loop).

Each message is routed (``swarmbus_route``) to a set of handlers. Every handler has its own lane:
a queue served by ``daemon.handler_concurrency`` worker tasks (``Handler.concurrency`` when set),
each run bounded by the handler's timeout (none for ``math.inf``: the built-in ``wake`` handler
bounds each wake itself, not a message's wait for the wake in progress), so a slow wake never
holds up the archive. A finished run is handed to the writer
(:meth:`Receiver.record <swarmbus.daemon.receiver.Receiver.record>`) as an outcome, batched with
others into one transaction; when the last of a message's handlers is recorded the message is
marked dispatched in the same write. A failed write is retried by the writer, and the message
stays in memory (and counts against the backlog) until its outcome is committed.

Memory is bounded: at most ``backlog`` messages are held. Beyond that the dispatcher stops taking
messages from the receiver (they are safe in the store) and pulls them back from the store, in
order, as room frees up. The same pull runs at start (messages a crash or stop left undispatched,
marked ``redelivered``, skipping handlers already recorded as finished) and as a periodic sweep
(:meth:`Dispatcher.sweep`), so nothing left undispatched waits for a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable

from swarmbus.api import Handler, HandlerContext, StoredMessage
from swarmbus.plugins import HookRelay
from swarmbus.store import Store

log = logging.getLogger("swarmbus.dispatch")

Record = Callable[[list[tuple[int, str, str, str]], list[int]], None]


class _Lane:
    """One handler's queue and workers (started on demand, up to ``limit``)."""

    def __init__(self, handler: Handler, limit: int) -> None:
        self.handler = handler
        self.limit = limit
        self.queue: asyncio.Queue[StoredMessage] = asyncio.Queue()
        self.workers: list[asyncio.Task[None]] = []
        self.busy = 0

    def wants_worker(self) -> bool:
        """More queued runs than idle workers, and room for another worker."""
        return len(self.workers) < self.limit and self.queue.qsize() > len(self.workers) - self.busy


class Dispatcher:
    """See the module docstring.

    :param reader: a store connection for reads (the event loop's own).
    :param record: ``record(outcomes, dispatched_seqs)``: hands finished runs to the writer; the
        writer calls :meth:`recorded` (in this loop) once a dispatch is committed.
    :param backlog: the most messages held in memory at once.
    """

    def __init__(
        self,
        reader: Store,
        relay: HookRelay,
        handlers: dict[str, Handler],
        context: HandlerContext,
        record: Record,
        *,
        backlog: int = 1024,
    ) -> None:
        self.reader = reader
        self.relay = relay
        self.handlers = handlers
        self.context = context
        self._record = record
        self.backlog = backlog
        settings = context.settings
        self.default_timeout = settings.daemon.handler_timeout
        self.concurrency = settings.daemon.handler_concurrency
        self._lanes = {name: _Lane(handler, handler.concurrency or self.concurrency)
                       for name, handler in handlers.items()}
        self._remaining: dict[int, set[str]] = {}  # seq -> handlers not yet finished (in memory)
        self._finished: set[int] = set()  # seqs whose handlers all finished, until the write commits
        self._known_seq = 0  # every message up to here has been taken in (or is done)
        self._overflow = False
        self._redelivered_upto = 0
        self._outcomes: list[tuple[int, str, str, str]] = []
        self._done: list[int] = []
        self._flush_scheduled = False
        self._idle = asyncio.Event()  # set whenever no message has a handler left to run

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Take in what the store holds undispatched (call in the loop; lanes start their workers
        as runs are queued)."""
        pending = self.reader.pending_dispatch(0, 1)
        if pending:
            self._redelivered_upto = self.reader.last_seq()
            self._overflow = True
            self._refill()

    @property
    def busy(self) -> int:
        """Handler runs in progress."""
        return sum(lane.busy for lane in self._lanes.values())

    def running(self) -> dict[str, int]:
        """Runs in progress, per handler."""
        return {name: lane.busy for name, lane in self._lanes.items()}

    def queued(self) -> dict[str, int]:
        """Runs waiting for a worker, per handler."""
        return {name: lane.queue.qsize() for name, lane in self._lanes.items()}

    @property
    def held(self) -> int:
        """Messages in memory (queued, running, or waiting for their outcome to be written)."""
        return len(self._remaining) + len(self._finished)

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for queued and running handler runs, then cancel the
        rest (they are dispatched again at the next start)."""
        if self._remaining:
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._idle.wait()
        workers = [w for lane in self._lanes.values() for w in lane.workers]
        for worker in workers:
            worker.cancel()
        if workers:
            await asyncio.wait(workers, timeout=5)
        self._flush()

    # -- taking messages in --------------------------------------------------------------------------
    def offer(self, messages: list[StoredMessage]) -> None:
        """Newly stored messages from the receiver, in seq order."""
        for message in messages:
            if message.seq <= self._known_seq:
                continue  # already taken in from the store
            if self._overflow or self.held >= self.backlog:
                self._overflow = True  # it is safe in the store; _refill takes it in later, in order
                continue
            self._known_seq = message.seq
            self._take(message, frozenset())

    def recorded(self, seqs: list[int]) -> None:
        """The writer committed these messages as dispatched: forget them, take in more."""
        for seq in seqs:
            self._finished.discard(seq)
        if self._overflow and self.held <= self.backlog // 2:
            self._refill()

    def sweep(self) -> None:
        """Take in any message the store holds undispatched that is neither in memory nor
        waiting for room (a safety net, called periodically)."""
        if self._overflow:
            self._refill()
            return
        room = self.backlog - self.held
        if room <= 0:
            return
        for message, finished in self.reader.pending_dispatch(0, room + self.held):
            if message.seq > self._known_seq:
                break
            if message.seq not in self._remaining and message.seq not in self._finished:
                log.warning("message %s (seq %d) was left undispatched; dispatching it now", message.id, message.seq)
                self._take(message, frozenset(finished))

    def _refill(self) -> None:
        room = self.backlog - self.held
        if room <= 0:
            return
        try:
            rows = self.reader.pending_dispatch(self._known_seq, room, redelivered_upto=self._redelivered_upto)
        except Exception:
            log.exception("could not read undispatched messages from the store; retrying at the next sweep")
            return
        for message, finished in rows:
            self._known_seq = message.seq
            self._take(message, frozenset(finished))
        if len(rows) < room:
            self._overflow = False

    def _take(self, message: StoredMessage, finished: frozenset[str]) -> None:
        try:
            names = self.relay.route(message, frozenset(self.handlers), self.context.settings)
        except Exception as exc:
            log.exception("routing failed for message %s; recorded as failed", message.id)
            self._remaining[message.seq] = {"route"}
            self._finish(message.seq, "route", "failed", f"routing failed: {type(exc).__name__}: {exc}")
            return
        unknown = [n for n in names if n not in self._lanes]
        if unknown:
            log.warning("message %s routed to unknown handler(s) %s", message.id, ", ".join(unknown))
        todo = [n for n in names if n in self._lanes and n not in finished]
        if not todo:
            self._finished.add(message.seq)
            self._done.append(message.seq)
            self._schedule_flush()
            return
        self._remaining[message.seq] = set(todo)
        for name in todo:
            lane = self._lanes[name]
            lane.queue.put_nowait(message)
            if lane.wants_worker():
                worker = asyncio.get_running_loop().create_task(
                    self._work(lane), name=f"swarmbus-{lane.handler.name}-{len(lane.workers)}")
                lane.workers.append(worker)

    # -- running handlers ------------------------------------------------------------------------------
    async def _work(self, lane: _Lane) -> None:
        handler = lane.handler
        timeout = handler.timeout or self.default_timeout
        limit = None if math.isinf(timeout) else timeout
        context = self.context
        while True:
            message = await lane.queue.get()
            lane.busy += 1
            try:
                async with asyncio.timeout(limit):
                    detail = await handler.handle(message, context)
                status, detail = "ok", detail or ""
            except TimeoutError as exc:
                detail = str(exc) or f"timed out after {timeout:.0f}s"
                log.warning("handler %s on message %s: %s", handler.name, message.id, detail)
                status = "timeout"
            except asyncio.CancelledError:
                raise  # shutdown: nothing recorded, so it runs again at the next start
            except Exception as exc:
                log.warning("handler %s failed on message %s: %s", handler.name, message.id, exc)
                status, detail = "failed", f"{type(exc).__name__}: {exc}"
            finally:
                lane.busy -= 1
            self._finish(message.seq, handler.name, status, detail)

    def _finish(self, seq: int, name: str, status: str, detail: str) -> None:
        self._outcomes.append((seq, name, status, detail))
        remaining = self._remaining.get(seq)
        if remaining is not None:
            remaining.discard(name)
            if not remaining:
                del self._remaining[seq]
                self._finished.add(seq)
                self._done.append(seq)
                if not self._remaining:
                    self._idle.set()
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Hand this loop iteration's outcomes to the writer as one batch."""
        self._flush_scheduled = False
        if self._outcomes or self._done:
            outcomes, self._outcomes = self._outcomes, []
            done, self._done = self._done, []
            self._record(outcomes, done)

