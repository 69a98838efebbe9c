"""The daemon's wake bookkeeping: the policy chain with persisted history, holds, and re-wakes.

:class:`Attention` keeps the :class:`~swarmbus.default_plugins.history.WakeHistory` the rules read
in sync with the store, records every wake attempt (``wake_log``) and every hold (``holds``), and
runs a timer for the earliest hold. When it fires (and at each heartbeat, and at start, so holds
survive a restart) the held messages that are due are asked again: those the rules still hold get
their new ``until``, those they now skip are let go with the reason, and all the others are woken.

Waking (:meth:`Attention.wake`): when the message's waker takes coalesced wakes
(``swarmbus_wake_coalesce``), through the agent's :class:`~swarmbus.default_plugins.coalesce.Coalescer`:
one wake at a time, the messages that wait meanwhile (and released holds) in the next one, the
oldest as the ``message`` of ``swarmbus_wake``, the rest in ``decision.batch``. Otherwise one
``swarmbus_wake`` per message, at most ``daemon.handler_concurrency`` at once.

Timeouts: ``daemon.handler_timeout`` bounds each wake (the waker's run), not a message's wait for
its turn: the ``wake`` handler is registered without a dispatcher timeout. A message therefore
waits at most for the wake in progress (and ``wake.debounce``) plus its own wake, each bounded.

:func:`handle_wake` is the body of the built-in ``wake`` handler.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from swarmbus.api import HandlerContext, StoredMessage, Verdict, WakeDecision, WakeOutcome
from swarmbus.plugins import HookRelay
from swarmbus.settings import Settings
from swarmbus.store import Store

from .chain import Evaluation, evaluate
from .coalesce import Coalescer, Ticket, Wake
from .history import DAY, WakeHistory
from .operator import failures_in_a_row, fire

log = logging.getLogger("swarmbus.attention")


class WakeFailed(Exception):
    """The waker ran and reported a failure (recorded as a failed ``wake`` delivery)."""


class WakeTimedOut(TimeoutError):
    """The wake was stopped after ``daemon.handler_timeout`` (recorded as a ``timeout`` delivery)."""


def when(ts: float) -> str:
    """``ts`` as local ``YYYY-MM-DD HH:MM`` (for reasons shown to a person)."""
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def horizon(settings: Settings) -> float:
    """The longest window a built-in rule looks back over, in seconds (at least a day)."""
    wake = settings.wake
    windows = [DAY, wake.loop_guard.window]
    windows += [r.window for r in (wake.rate_limit.per_sender, wake.rate_limit.overall) if r is not None]
    return max(windows)


class Attention:
    """See the module docstring. Use from the daemon's event loop.

    :param now: the clock (Unix seconds); tests inject one.
    """

    def __init__(self, store: Store, relay: HookRelay, settings: Settings, *,
                 now: Callable[[], float] = time.time) -> None:
        self.store = store
        self.relay = relay
        self.settings = settings
        self.now = now
        self.history = WakeHistory(horizon(settings))
        self.context: HandlerContext | None = None
        self._noted_upto = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._release_task: asyncio.Task[None] | None = None
        self._loop_told: dict[str, float] = {}
        self.failed_in_a_row = 0
        """Wake attempts that failed in a row (the ``count`` of ``wake_failed`` operator events)."""
        self.coalescer = Coalescer(self._run_wake, debounce=settings.wake.debounce)
        self._alone = asyncio.Semaphore(settings.daemon.handler_concurrency)
        self.on_released: Callable[[list[tuple[StoredMessage, str, str]]], object] | None = None
        """Called with ``(message, status, detail)`` of released holds once their wake is recorded
        (the delivery ladder's ``wake`` step)."""

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self, context: HandlerContext) -> None:
        """Load the history from the store and schedule the earliest hold (call in the loop)."""
        self.context = context
        now = self.now()
        received, sent = (self.store.traffic_since(now - self.history.horizon)
                          if self.settings.wake.loop_guard.max_messages else ([], []))
        self.history.load(self.store.wakes_since(now - self.history.horizon), received, sent)
        self._noted_upto = self.store.last_seq()
        self.failed_in_a_row = failures_in_a_row(self.store)
        self.history.manual = self.store.manual_hold()
        self.tick()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._release_task is not None:
            self._release_task.cancel()

    def tick(self) -> None:
        """Release due holds now, or schedule the timer for the earliest one (periodic safety net)."""
        holds = self.store.holds()
        if holds:
            self._schedule(holds[0].until)

    # -- the hot path -----------------------------------------------------------------------------------
    def evaluate(self, message: StoredMessage) -> Evaluation:
        """Note the message as traffic (once) and run the chain for it now."""
        now = self.now()
        if message.seq > self._noted_upto:
            self._noted_upto = message.seq
            self.history.note_received(message.from_agent, message.received_at)
        return evaluate(self.relay, message, self.settings, self.history, now)

    def note_sent(self, peer: str) -> None:
        """A message to ``peer`` was spooled (loop-guard traffic)."""
        self.history.note_sent(peer, self.now())

    def hold(self, message: StoredMessage, verdict: Verdict, *, renewed: bool = False) -> None:
        """Persist a hold and make sure the timer fires by its end (a ``held`` operator event
        unless it only ``renewed`` a hold that ended). :raises StoreError."""
        until = verdict.until or self.now()
        self.store.hold(message.seq, until, verdict.reason, verdict.rule, self.now())
        self._schedule(until)
        if not renewed:
            fire(self.relay, self.context, "held", self.now(), detail=verdict.reason, peer=message.from_agent,
                 until=until, rule=verdict.rule, message_id=message.id)
        if verdict.rule == "loop_guard":
            self._tell_humans(message.from_agent, verdict)

    def begin_wake(self, messages: Sequence[StoredMessage]) -> float:
        """A wake starts now: count it at once (so messages evaluated while the waker runs see
        it); returns its time for :meth:`woken`."""
        at = self.now()
        self.history.note_wake(at, {m.from_agent for m in messages})
        return at

    def woken(self, messages: Sequence[StoredMessage], outcome: WakeOutcome, at: float,
              outcomes: Sequence[tuple[int, str, str]] = ()) -> None:
        """Record the wake attempt begun at ``at`` (the budgets and rate limits count it, ok or not)."""
        detail = outcome.detail if outcome.exit_code is None else f"{outcome.detail} (exit {outcome.exit_code})"
        try:
            self.store.record_wake(at, [(m.seq, m.from_agent) for m in messages], outcome.ok, detail, outcomes)
        except Exception:
            log.exception("could not record a wake attempt; the budgets may undercount it after a restart")
        self.failed_in_a_row = 0 if outcome.ok else self.failed_in_a_row + 1
        if not outcome.ok:
            fire(self.relay, self.context, "wake_failed", at, detail=detail, peer=messages[0].from_agent if messages else None,
                 count=self.failed_in_a_row, message_id=messages[0].id if messages else None)

    # -- holds ------------------------------------------------------------------------------------------
    def _schedule(self, until: float) -> None:
        if self._timer_at is not None and self._timer_at <= until:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = until
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(0.0, until - self.now()), self._fire)

    def _fire(self) -> None:
        self._timer = self._timer_at = None
        if self._release_task is None or self._release_task.done():
            self._release_task = asyncio.get_running_loop().create_task(self._release(), name="swarmbus-release")

    async def _release(self) -> None:
        try:
            await self.release_due()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("releasing held messages failed; trying again at the next heartbeat")
        finally:
            self._release_task = None
            holds = self.store.holds()
            if holds:
                self._schedule(max(holds[0].until, self.now() + 0.5))

    async def release_due(self) -> int:
        """Ask the rules again about every hold that is due and wake the allowed messages in one
        wake. Returns how many messages were woken."""
        now = self.now()
        allowed: list[tuple[StoredMessage, Evaluation]] = []
        dropped: list[tuple[int, str, str]] = []
        for held in self.store.holds(until=now):
            message = self.store.message(held.seq)
            if message is None:
                dropped.append((held.seq, "ok", "not woken: the message is gone"))
                continue
            result = evaluate(self.relay, message, self.settings, self.history, now)
            if result.final.action == "hold":
                self.hold(message, result.final, renewed=True)
            elif result.final.action == "skip":
                dropped.append((held.seq, "ok", f"not woken after hold: {result.reason} [{result.final.rule}]"))
            else:
                allowed.append((message, result))
        if dropped:
            self.store.drop_holds([seq for seq, _, _ in dropped], dropped)
        if not allowed or self.context is None:
            return 0
        wakes = await asyncio.gather(*(self.wake(m, f"held message released ({r.reason})", record=True)
                                       for m, r in allowed))
        return sum(1 for w in wakes if w.outcome is not None and w.outcome.ok)

    # -- waking -----------------------------------------------------------------------------------------
    async def wake(self, message: StoredMessage, reason: str, *, record: bool = False) -> Wake:
        """Wake the host for ``message`` (the chain allowed it, because of ``reason``) and return the
        wake that covered it: coalesced with others when its waker takes coalesced wakes, else on
        its own. ``record``: write its ``wake`` delivery with the wake (a released hold).

        :raises asyncio.CancelledError: the caller was cancelled (the message left its batch).
        """
        if self.relay.wake_coalesce(message, self.settings):
            return await self.coalescer.submit(message, reason, record=record)
        async with self._alone:
            return await self._run_wake([Ticket(message, reason, record, asyncio.get_running_loop().time())])

    async def _run_wake(self, tickets: Sequence[Ticket]) -> Wake:
        """One wake for ``tickets`` (oldest first): ``swarmbus_wake`` with the others in
        ``decision.batch``, bounded by ``daemon.handler_timeout``; recorded in ``wake_log`` with
        the ``wake`` deliveries of released holds."""
        if self.context is None:
            raise RuntimeError("Attention.start() was not called")
        context = self.context
        messages = tuple(t.message for t in tickets)
        first = tickets[0]
        reason = first.reason if len(tickets) == 1 else f"{first.reason}; {len(tickets)} messages in one wake"
        timeout = self.settings.daemon.handler_timeout
        timed_out = False
        started = self.begin_wake(messages)
        try:
            async with asyncio.timeout(timeout):
                outcome = await self.relay.wake(first.message, WakeDecision(True, reason, batch=messages[1:]), context)
        except TimeoutError:
            outcome, timed_out = WakeOutcome(False, f"timed out after {timeout:.0f}s"), True
        except Exception as exc:
            context.logger.warning("wake failed for %s: %s: %s", wake_label(messages), type(exc).__name__, exc)
            outcome = WakeOutcome(False, f"{type(exc).__name__}: {exc}")
        wake = Wake(messages, outcome, timed_out)
        held = [t for t in tickets if t.record]
        if outcome is None:
            self.history.forget_wake(started, {m.from_agent for m in messages})
            if held:
                self.store.drop_holds([t.message.seq for t in held], [
                    (t.message.seq, "ok", f"not woken: no waker is configured ({t.reason})") for t in held])
            return wake
        released = [(t.message, *released_delivery(wake)) for t in held]
        self.woken(messages, outcome, started, [(m.seq, status, detail) for m, status, detail in released])
        if released and self.on_released is not None:
            self.on_released(released)
        return wake

    def _tell_humans(self, peer: str, verdict: Verdict) -> None:
        now = self.now()
        if self._loop_told.get(peer, 0.0) > now:
            return
        self._loop_told[peer] = verdict.until or now
        humans = self.settings.wake.loop_guard.humans
        log.warning("loop guard: holding messages from %s until %s (%s)", peer, when(verdict.until or now),
                    verdict.reason)
        fire(self.relay, self.context, "loop_guard", now, detail=verdict.reason, peer=peer, until=verdict.until,
             rule=verdict.rule)
        if not humans or self.context is None:
            return
        context = self.context
        body = (f"swarmbus loop guard: messages from {peer} are held until {when(verdict.until or now)} "
                f"({verdict.reason}). Send {context.agent_id} a message to let the exchange go on, or see "
                f"`swarmbus inbox --agent-id {context.agent_id}`.")

        async def tell() -> None:
            for human in humans:
                try:
                    await context.send(human, f"loop guard: {peer} held", body)
                except Exception as exc:
                    log.warning("loop guard: could not tell %s: %s", human, exc)

        asyncio.get_running_loop().create_task(tell())


async def handle_wake(message: StoredMessage, context: HandlerContext) -> str:
    """The built-in ``wake`` handler: run the chain, then wake, hold or skip. Returns the detail
    recorded with the delivery. :raises WakeFailed: the waker reported a failure."""
    attention: Attention | None = context.attention
    if attention is None:  # outside a daemon (tests, embedders): no history, holds are not kept
        from .history import WakeHistory as _Empty

        result = evaluate(context.hooks, message, context.settings, _Empty(), time.time())
    else:
        result = attention.evaluate(message)
    final = result.final
    if final.action == "skip":
        return f"not woken: {result.reason}"
    if final.action == "hold":
        if attention is None:
            return f"not woken: held until {when(final.until or 0)} ({final.reason}); not kept outside a daemon"
        attention.hold(message, final)
        return f"held until {when(final.until or 0)} ({final.reason})"
    decision = result.decision
    if attention is None:
        outcome = await context.hooks.wake(message, decision, context)
        return handler_detail(Wake((message,), outcome), decision.reason)
    return handler_detail(await attention.wake(message, decision.reason), decision.reason)


def wake_label(messages: Sequence[StoredMessage]) -> str:
    """Which wake, for a reason shown to a person: ``#12, #13, #15`` (see :meth:`Wake.label`)."""
    return Wake(tuple(messages), None).label()


def handler_detail(wake: Wake, reason: str) -> str:
    """The ``wake`` delivery detail of one message woken by ``wake`` because of ``reason``.

    :raises WakeTimedOut: the wake timed out. :raises WakeFailed: the waker reported a failure.
    """
    outcome = wake.outcome
    if outcome is None:
        return f"not woken: no waker is configured ({reason})"
    others = len(wake.messages) - 1
    where = f" with {others} other(s) in wake {wake.label()}" if others else ""
    if wake.timed_out:
        raise WakeTimedOut(outcome.detail + (f" (wake {wake.label()})" if others else ""))
    if not outcome.ok:
        raise WakeFailed((outcome.detail or "wake failed") + (f" (wake {wake.label()})" if others else ""))
    return f"woken ({reason}){where}: {outcome.detail}"


def released_delivery(wake: Wake) -> tuple[str, str]:
    """``(status, detail)`` of the ``wake`` delivery of a released hold woken by ``wake``."""
    outcome = wake.outcome
    assert outcome is not None
    others = len(wake.messages) - 1
    where = f" in wake {wake.label()}" if others else ""
    if outcome.ok:
        return "ok", f"woken after hold (with {others} other(s)){where}: {outcome.detail}"
    return ("timeout" if wake.timed_out else "failed"), f"wake after hold failed{where}: {outcome.detail}"
