"""Rule ``loop_guard`` (``[wake.loop_guard]``): more than ``max_messages`` messages between this
agent and one peer (both ways) within ``window`` seconds, with no message from a human (an id on
``humans``) in that time, look like two agents answering each other forever: that peer's
messages are held until the exchange slows down (the daemon tells the humans once per episode).
A message from a human is never held by this rule, and resets the count."""

from __future__ import annotations

from swarmbus.api import PolicyState, StoredMessage, Verdict
from swarmbus.hookspecs import hookimpl
from swarmbus.settings import LoopGuardRule, Settings

RULE = "loop_guard"


def verdict(message: StoredMessage, rule: LoopGuardRule, state: PolicyState, now: float) -> Verdict | None:
    limit = rule.max_messages
    peer = message.from_agent
    if limit is None or peer in rule.humans or message.is_broadcast:
        return None
    since = now - rule.window
    if rule.humans:
        human = state.last_message_from(rule.humans)
        if human is not None and human > since:
            since = human
    recent = [t for t in state.exchange_times(peer, since) if t > since]
    if len(recent) <= limit:
        return None
    until = recent[len(recent) - limit - 1] + rule.window
    return Verdict.hold(f"loop guard: {len(recent)} messages with {peer} within {rule.window:g}s "
                        "and no human in between", max(until, now + 1.0), rule=RULE)


@hookimpl(trylast=True)
def swarmbus_wake_filter(message: StoredMessage, settings: Settings, state: PolicyState, now: float) -> Verdict | None:
    return verdict(message, settings.wake.loop_guard, state, now)
