"""The daemon's wake bookkeeping: the policy chain with persisted history, holds, and re-wakes.

:class:`Attention` keeps the :class:`~swarmbus.default_plugins.history.WakeHistory` the rules read
in sync with the store, records every wake attempt (``wake_log``) and every hold (``holds``), and
runs a timer for the earliest hold. When it fires (and at each heartbeat, and at start, so holds
survive a restart) the held messages that are due are asked again: those the rules still hold get
their new ``until``, those they now skip are let go with the reason, and all the others are woken
**in one wake**: the oldest is the ``message`` of ``swarmbus_wake``, the rest ride along in
``decision.batch``.

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
from .history import DAY, WakeHistory

log = logging.getLogger("swarmbus.attention")


class WakeFailed(Exception):
    """The waker ran and reported a failure (recorded as a failed ``wake`` delivery)."""


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

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self, context: HandlerContext) -> None:
        """Load the history from the store and schedule the earliest hold (call in the loop)."""
        self.context = context
        now = self.now()
        received, sent = (self.store.traffic_since(now - self.history.horizon)
                          if self.settings.wake.loop_guard.max_messages else ([], []))
        self.history.load(self.store.wakes_since(now - self.history.horizon), received, sent)
        self._noted_upto = self.store.last_seq()
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

    def hold(self, message: StoredMessage, verdict: Verdict) -> None:
        """Persist a hold and make sure the timer fires by its end. :raises StoreError."""
        until = verdict.until or self.now()
        self.store.hold(message.seq, until, verdict.reason, verdict.rule, self.now())
        self._schedule(until)
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
                self.hold(message, result.final)
            elif result.final.action == "skip":
                dropped.append((held.seq, "ok", f"not woken after hold: {result.reason} [{result.final.rule}]"))
            else:
                allowed.append((message, result))
        if dropped:
            self.store.drop_holds([seq for seq, _, _ in dropped], dropped)
        if not allowed or self.context is None:
            return 0
        messages = [m for m, _ in allowed]
        first, rest = messages[0], tuple(messages[1:])
        reason = f"held messages released ({len(messages)} in one wake)"
        decision = WakeDecision(True, reason, batch=rest)
        context = self.context
        started = self.begin_wake(messages)
        try:
            async with asyncio.timeout(context.settings.daemon.handler_timeout):
                outcome = await self.relay.wake(first, decision, context)
        except TimeoutError:
            outcome = WakeOutcome(False, f"timed out after {context.settings.daemon.handler_timeout:.0f}s")
        except Exception as exc:
            outcome = WakeOutcome(False, f"{type(exc).__name__}: {exc}")
        if outcome is None:
            self.history.forget_wake(started, {m.from_agent for m in messages})
            self.store.drop_holds([m.seq for m in messages],
                                  [(m.seq, "ok", f"not woken: no waker is configured ({reason})") for m in messages])
            return 0
        status = "ok" if outcome.ok else "failed"
        text = (f"woken after hold (with {len(messages) - 1} other(s)): {outcome.detail}" if outcome.ok
                else f"wake after hold failed: {outcome.detail}")
        self.woken(messages, outcome, started, [(m.seq, status, text) for m in messages])
        return len(messages) if outcome.ok else 0

    def _tell_humans(self, peer: str, verdict: Verdict) -> None:
        now = self.now()
        if self._loop_told.get(peer, 0.0) > now:
            return
        self._loop_told[peer] = verdict.until or now
        humans = self.settings.wake.loop_guard.humans
        log.warning("loop guard: holding messages from %s until %s (%s)", peer, when(verdict.until or now),
                    verdict.reason)
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
    started = attention.begin_wake([message]) if attention is not None else 0.0
    outcome = await context.hooks.wake(message, decision, context)
    if outcome is None:
        if attention is not None:
            attention.history.forget_wake(started, {message.from_agent})
        return f"not woken: no waker is configured ({decision.reason})"
    if attention is not None:
        attention.woken([message], outcome, started)
    if not outcome.ok:
        raise WakeFailed(outcome.detail or "wake failed")
    return f"woken ({decision.reason}): {outcome.detail}"
