"""Rule ``senders`` (``[wake.senders]``): ``deny`` never wakes; a non-empty ``allow`` list
wakes only for the senders on it. Both are skips: the message stays stored and readable."""

from __future__ import annotations

from swarmbus.api import StoredMessage, Verdict
from swarmbus.hookspecs import hookimpl
from swarmbus.settings import SendersRule, Settings

RULE = "senders"


def verdict(message: StoredMessage, rule: SendersRule) -> Verdict | None:
    sender = message.from_agent
    if sender in rule.deny:
        return Verdict.skip(f"sender {sender} is on wake.senders.deny", rule=RULE)
    if rule.allow and sender not in rule.allow:
        return Verdict.skip(f"sender {sender} is not on wake.senders.allow", rule=RULE)
    return None


@hookimpl(trylast=True)
def swarmbus_wake_filter(message: StoredMessage, settings: Settings) -> Verdict | None:
    return verdict(message, settings.wake.senders)
