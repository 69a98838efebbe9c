"""Rule ``expiry``: a message past its ``expires_at`` never wakes (skip)."""

from __future__ import annotations

from datetime import UTC, datetime

from swarmbus.api import StoredMessage, Verdict
from swarmbus.hookspecs import hookimpl

RULE = "expiry"


def verdict(message: StoredMessage, now: float) -> Verdict | None:
    expires_at = message.envelope.expires_at
    if expires_at is not None and message.envelope.expired(datetime.fromtimestamp(now, UTC)):
        return Verdict.skip(f"expired at {expires_at}", rule=RULE)
    return None


@hookimpl(trylast=True)
def swarmbus_wake_filter(message: StoredMessage, now: float) -> Verdict | None:
    return verdict(message, now)
