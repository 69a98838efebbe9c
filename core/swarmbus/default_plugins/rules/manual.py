"""Rule ``manual``: the operator's hold on every wake of this agent (``swarmbus policy hold
--agent-id ID [--for DURATION]``, recorded in the agent's store and read into the daemon's
memory): while it lasts, every message is held, until its deadline or, without one, for a day
at a time (renewed) until ``swarmbus policy release``, which asks the rules again at once about
every message it held. Silent when there is no hold."""

from __future__ import annotations

from datetime import datetime

from swarmbus.api import PolicyState, StoredMessage, Verdict
from swarmbus.hookspecs import hookimpl

RULE = "manual"
RENEW = 86400.0
"""Seconds an open-ended hold holds a message before the rules are asked again (it is then held
again while the operator's hold lasts)."""


def verdict(state: PolicyState, now: float) -> Verdict | None:
    hold = getattr(state, "manual", None)  # the daemon's WakeHistory carries it; other states none
    if hold is None or (hold.until is not None and hold.until <= now):
        return None
    why = f": {hold.reason}" if hold.reason else ""
    if hold.until is None:
        return Verdict.hold(f"held by the operator until released (swarmbus policy release){why}", now + RENEW,
                            rule=RULE)
    end = datetime.fromtimestamp(hold.until).strftime("%Y-%m-%d %H:%M")
    return Verdict.hold(f"held by the operator until {end}{why}", hold.until, rule=RULE)


@hookimpl(trylast=True)
def swarmbus_wake_filter(message: StoredMessage, state: PolicyState, now: float) -> Verdict | None:
    return verdict(state, now)
