"""Rule ``budget`` (``[wake.budget]``): at most ``per_hour`` wakes in any hour and ``per_day`` in
any 24 hours; beyond that a message is held until the budget refills."""

from __future__ import annotations

from swarmbus.api import PolicyState, Verdict
from swarmbus.hookspecs import hookimpl
from swarmbus.settings import BudgetRule, Settings

from . import window_opens

RULE = "budget"


def verdict(rule: BudgetRule, state: PolicyState, now: float) -> Verdict | None:
    holds: list[Verdict] = []
    for limit, window, name in ((rule.per_hour, 3600.0, "hourly"), (rule.per_day, 86400.0, "daily")):
        if limit is None:
            continue
        until = window_opens(state.wake_times(now - window), limit, window, now)
        if until is not None:
            holds.append(Verdict.hold(f"{name} wake budget ({limit}) spent", until, rule=RULE))
    return max(holds, key=lambda v: v.until or 0.0) if holds else None


@hookimpl(trylast=True)
def swarmbus_wake_filter(settings: Settings, state: PolicyState, now: float) -> Verdict | None:
    return verdict(settings.wake.budget, state, now)
