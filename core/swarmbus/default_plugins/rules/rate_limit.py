"""Rule ``rate_limit`` (``[wake.rate_limit]``): at most ``per_sender`` wakes for one sender and
``overall`` wakes in all within their windows; beyond that a message is held until there is room."""

from __future__ import annotations

from swarmbus.api import PolicyState, StoredMessage, Verdict
from swarmbus.hookspecs import hookimpl
from swarmbus.settings import RateLimitRule, Settings

from . import window_opens

RULE = "rate_limit"


def _rate(count: int, window: float) -> str:
    return f"{count}/{window:g}s"


def verdict(message: StoredMessage, rule: RateLimitRule, state: PolicyState, now: float) -> Verdict | None:
    holds: list[Verdict] = []
    if rule.per_sender is not None:
        limit, window = rule.per_sender.count, rule.per_sender.window
        until = window_opens(state.wake_times(now - window, message.from_agent), limit, window, now)
        if until is not None:
            holds.append(Verdict.hold(f"rate limit for {message.from_agent} ({_rate(limit, window)})", until, rule=RULE))
    if rule.overall is not None:
        limit, window = rule.overall.count, rule.overall.window
        until = window_opens(state.wake_times(now - window), limit, window, now)
        if until is not None:
            holds.append(Verdict.hold(f"overall rate limit ({_rate(limit, window)})", until, rule=RULE))
    return max(holds, key=lambda v: v.until or 0.0) if holds else None


@hookimpl(trylast=True)
def swarmbus_wake_filter(message: StoredMessage, settings: Settings, state: PolicyState, now: float) -> Verdict | None:
    return verdict(message, settings.wake.rate_limit, state, now)
