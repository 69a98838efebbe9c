"""Rule ``quiet_hours`` (``[wake.quiet_hours]``): inside the window (local wall-clock time in
an IANA time zone, across midnight when ``end`` < ``start``, daylight saving time included) a
message is held until the window ends, unless it breaks through (``breakthrough = "high"``:
priority high, from ``breakthrough_senders`` when that list is not empty)."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from swarmbus.api import StoredMessage, Verdict
from swarmbus.hookspecs import hookimpl
from swarmbus.settings import QuietHoursRule, Settings

RULE = "quiet_hours"


@lru_cache(maxsize=16)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _clock(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def window_end(rule: QuietHoursRule, now: float) -> float | None:
    """None outside the quiet window; inside it, the Unix time at which it ends."""
    if rule.start is None or rule.end is None:
        return None
    zone = _zone(rule.timezone)
    local = datetime.fromtimestamp(now, zone)
    start, end, clock = _clock(rule.start), _clock(rule.end), local.time().replace(tzinfo=None)
    inside = (start <= clock < end) if start < end else (clock >= start or clock < end)
    if not inside:
        return None
    day = local.date()
    until = datetime.combine(day, end, tzinfo=zone).timestamp()
    while until <= now:  # the end is tomorrow (across midnight), or today's end was skipped by a DST gap
        day += timedelta(days=1)
        until = datetime.combine(day, end, tzinfo=zone).timestamp()
    return until


def verdict(message: StoredMessage, rule: QuietHoursRule, now: float) -> Verdict | None:
    until = window_end(rule, now)
    if until is None:
        return None
    if rule.breakthrough == "high" and message.priority == "high" and (
            not rule.breakthrough_senders or message.from_agent in rule.breakthrough_senders):
        return Verdict.allow("priority high breaks through quiet hours", rule=RULE)
    local_end = datetime.fromtimestamp(until, _zone(rule.timezone)).strftime("%H:%M")
    return Verdict.hold(f"quiet hours until {local_end} {rule.timezone}", until, rule=RULE)


@hookimpl(trylast=True)
def swarmbus_wake_filter(message: StoredMessage, settings: Settings, now: float) -> Verdict | None:
    return verdict(message, settings.wake.quiet_hours, now)
