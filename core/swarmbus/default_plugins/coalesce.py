"""One wake at a time per agent; the messages that wait meanwhile go into the next wake together.

:class:`Coalescer` is the mechanism only: what a wake *does* is the ``run`` callable it is given
(:class:`~swarmbus.default_plugins.attention.Attention` passes one that calls ``swarmbus_wake``
with ``decision.batch`` and records the attempt). A message is :meth:`~Coalescer.submit`-ted and
its caller awaits the :class:`Wake` that covered it:

- while no wake runs, a wake starts for every waiting message (after ``debounce`` seconds counted
  from the oldest one's arrival, when set), oldest first (seq order);
- while one runs, new messages wait; when it ends, the next wake takes all of them;
- a caller that is cancelled (daemon shutdown, a release task stopped) takes its message out of
  the batch: out of the queue before its wake starts, and if every message of a running wake is
  abandoned that wake is cancelled too (the waker's child is killed);
- a wake that raises is a failed :class:`Wake` for every message in it; the next one still runs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from swarmbus.api import StoredMessage, WakeOutcome

log = logging.getLogger("swarmbus.coalesce")


@dataclass(frozen=True)
class Ticket:
    """One message waiting for (or in) a wake: ``reason`` is why the policy woke it; ``record``
    True when the wake itself must write its ``wake`` delivery (a released hold, whose dispatch
    finished long ago) rather than the handler awaiting it."""

    message: StoredMessage
    reason: str
    record: bool = False
    queued_at: float = 0.0
    """Event-loop time (monotonic seconds) when it started to wait."""
    future: asyncio.Future[Wake] = field(default_factory=lambda: asyncio.get_running_loop().create_future(),
                                         compare=False, repr=False)


@dataclass(frozen=True)
class Wake:
    """One wake's result, shared by every message in it.

    ``messages``: the messages it covered, oldest first. ``outcome``: the waker's
    :class:`~swarmbus.WakeOutcome`, or None when no waker answered. ``timed_out``: it was stopped
    after ``daemon.handler_timeout`` (``outcome`` then says so and is not ok).
    """

    messages: tuple[StoredMessage, ...]
    outcome: WakeOutcome | None
    timed_out: bool = False

    def label(self, limit: int = 6) -> str:
        """Which wake: ``#12`` or ``#12, #13, #15`` (``#12, ... #40 (11 messages)`` when long)."""
        seqs = [f"#{m.seq}" for m in self.messages]
        if len(seqs) <= limit:
            return ", ".join(seqs)
        return f"{', '.join(seqs[:limit - 1])}, ... {seqs[-1]} ({len(seqs)} messages)"


RunWake = Callable[[Sequence[Ticket]], Coroutine[Any, Any, Wake]]
"""``run(tickets)``: do one wake for ``tickets`` (oldest first, at least one)."""


class Coalescer:
    """See the module docstring. Use from one event loop.

    :param run: performs one wake (never called with an empty batch, never twice at once).
    :param debounce: seconds a wake waits after its oldest message arrived (0: none).
    """

    def __init__(self, run: RunWake, *, debounce: float = 0.0) -> None:
        self._run = run
        self.debounce = debounce
        self._pending: list[Ticket] = []
        self._runner: asyncio.Task[None] | None = None
        self._debouncing = False
        self.wakes = 0
        """How many wakes have started."""

    @property
    def waiting(self) -> int:
        """Messages waiting for the next wake."""
        return sum(1 for t in self._pending if not t.future.done())

    @property
    def running(self) -> bool:
        """Is a wake (or its debounce) in progress?"""
        return self._runner is not None and not self._runner.done()

    async def submit(self, message: StoredMessage, reason: str, *, record: bool = False) -> Wake:
        """Queue ``message`` for the next wake and return that wake's result.

        :raises asyncio.CancelledError: the caller was cancelled (the message left its batch).
        """
        loop = asyncio.get_running_loop()
        ticket = Ticket(message, reason, record, loop.time())
        ticket.future.add_done_callback(self._left)
        self._pending.append(ticket)
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._drain(), name="swarmbus-wake")
        return await ticket.future  # cancelling this cancels the future: the message leaves its batch

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            live = [t for t in self._pending if not t.future.done()]
            if not live:
                self._pending = []
                break
            due = min(t.queued_at for t in live) + self.debounce
            if due > loop.time():
                self._debouncing = True
                try:
                    await asyncio.sleep(due - loop.time())
                finally:
                    self._debouncing = False
                continue
            batch = sorted((t for t in self._pending if not t.future.done()), key=lambda t: t.message.seq)
            self._pending = []
            self.wakes += 1
            wake: asyncio.Task[Wake] = loop.create_task(self._run(batch), name="swarmbus-wake-run")
            for ticket in batch:
                ticket.future.add_done_callback(functools.partial(_cancel_if_abandoned, batch, wake))
            try:
                result = await wake
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # the runner itself is being cancelled (the loop is shutting down)
                result = Wake(tuple(t.message for t in batch), WakeOutcome(False, "wake cancelled"))
            except Exception as exc:  # a bug or an OS error: fail these messages, keep serving
                log.exception("a wake failed")
                result = Wake(tuple(t.message for t in batch),
                              WakeOutcome(False, f"wake failed: {type(exc).__name__}: {exc}"))
            for ticket in batch:
                if not ticket.future.done():
                    ticket.future.set_result(result)

    def _left(self, future: asyncio.Future[Wake]) -> None:
        """A ticket is done: when it was the last one waiting out a debounce, stop waiting."""
        if future.cancelled() and self._debouncing and self.waiting == 0 and self._runner is not None:
            self._pending = []
            self._runner.cancel()


def _cancel_if_abandoned(batch: Sequence[Ticket], wake: asyncio.Task[Wake], _: asyncio.Future[Wake]) -> None:
    if all(t.future.cancelled() for t in batch):
        wake.cancel()  # nobody waits for this wake any more (shutdown): stop the waker's child
