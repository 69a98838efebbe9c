"""The wake policy's rules, table-driven with an injected clock and a fake history: each rule on
its own, then the whole chain (any veto wins) and the configuration errors."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from swarmbus import StoredMessage, Verdict, combine_verdicts, new_envelope
from swarmbus.config import RawConfig
from swarmbus.default_plugins.chain import evaluate
from swarmbus.default_plugins.rules import budget, expiry, loop_guard, match, quiet_hours, rate_limit, senders
from swarmbus.errors import ConfigError
from swarmbus.plugins import HookRelay, get_plugin_manager
from swarmbus.settings import Settings, build_settings, parse_duration, parse_rate

ME = "coder"
BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str, zone: Any = UTC) -> float:
    """``"2024-03-30 23:00"`` in ``zone`` as Unix seconds."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=zone).timestamp()


def msg(sender: str = "planner", *, subject: str = "hi", priority: str = "normal", seq: int = 1,
        **fields: Any) -> StoredMessage:
    return StoredMessage(seq, new_envelope(sender, ME, subject, "body", priority=priority, **fields),
                         f"agents/{ME}/inbox", 0.0)


@dataclass
class FakeState:
    """A PolicyState with fixed contents."""

    wakes: list[tuple[float, str]] = field(default_factory=list)  # (at, sender)
    traffic: dict[str, list[float]] = field(default_factory=dict)
    last_from: dict[str, float] = field(default_factory=dict)

    def wake_times(self, since: float, sender: str | None = None) -> Sequence[float]:
        return sorted(t for t, s in self.wakes if t >= since and sender in (None, s))

    def exchange_times(self, peer: str, since: float) -> Sequence[float]:
        return sorted(t for t in self.traffic.get(peer, []) if t >= since)

    def last_message_from(self, senders: Collection[str]) -> float | None:
        found = [self.last_from[s] for s in senders if s in self.last_from]
        return max(found) if found else None


def wake_settings(**wake: Any) -> Settings:
    return Settings.model_validate({"wake": wake})


def summary(v: Verdict | None) -> tuple[str, float | None] | None:
    return None if v is None else (v.action, v.until)


# -- senders ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("config", "sender", "expected"), [
    ({}, "anyone", None),
    ({"deny": ["mallory"]}, "mallory", "skip"),
    ({"deny": ["mallory"]}, "planner", None),
    ({"allow": ["planner"]}, "planner", None),
    ({"allow": ["planner"]}, "stranger", "skip"),
    ({"allow": ["mallory"], "deny": ["mallory"]}, "mallory", "skip"),  # deny wins
])
def test_senders(config: dict[str, Any], sender: str, expected: str | None) -> None:
    v = senders.verdict(msg(sender), wake_settings(senders=config).wake.senders)
    assert (v.action if v else None) == expected


# -- match ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("config", "subject", "content_type", "expected"), [
    ({}, "anything", "text/plain", None),
    ({"subject": "^(review|deploy)"}, "review please", "text/plain", None),
    ({"subject": "^(review|deploy)"}, "chit-chat", "text/plain", "skip"),
    ({"content_types": ["text/markdown"]}, "x", "text/markdown; charset=utf-8", None),
    ({"content_types": ["text/markdown"]}, "x", "application/json", "skip"),
    ({"subject": "urgent", "content_types": ["TEXT/PLAIN"]}, "very urgent", "text/plain", None),
])
def test_match(config: dict[str, Any], subject: str, content_type: str, expected: str | None) -> None:
    v = match.verdict(msg(subject=subject, content_type=content_type), wake_settings(match=config).wake.match)
    assert (v.action if v else None) == expected


# -- expiry -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("expires_at", "now", "expected"), [
    (None, at("2030-01-01 00:00"), None),
    ("2024-06-01T12:00:00+00:00", at("2024-06-01 11:59"), None),
    ("2024-06-01T12:00:00+00:00", at("2024-06-01 12:00"), "skip"),
    ("2024-06-01T12:00:00+00:00", at("2024-06-02 00:00"), "skip"),
])
def test_expiry(expires_at: str | None, now: float, expected: str | None) -> None:
    v = expiry.verdict(msg(expires_at=expires_at), now)
    assert (v.action if v else None) == expected


# -- quiet hours ------------------------------------------------------------------------------
NIGHT = {"start": "22:00", "end": "07:00", "timezone": "Europe/Berlin"}


@pytest.mark.parametrize(("config", "now", "priority", "sender", "expected"), [
    # across midnight, winter time (UTC+1)
    (NIGHT, at("2024-01-10 21:59", BERLIN), "normal", "planner", None),
    (NIGHT, at("2024-01-10 22:00", BERLIN), "normal", "planner", ("hold", at("2024-01-11 07:00", BERLIN))),
    (NIGHT, at("2024-01-11 03:00", BERLIN), "normal", "planner", ("hold", at("2024-01-11 07:00", BERLIN))),
    (NIGHT, at("2024-01-11 07:00", BERLIN), "normal", "planner", None),
    # the night DST starts (31 Mar 2024, 02:00 -> 03:00): 22:00 to 07:00 is 8 hours, not 9
    (NIGHT, at("2024-03-30 23:00", BERLIN), "normal", "planner", ("hold", at("2024-03-31 07:00", BERLIN))),
    # the night DST ends (27 Oct 2024, 03:00 -> 02:00): 10 hours
    (NIGHT, at("2024-10-26 22:30", BERLIN), "normal", "planner", ("hold", at("2024-10-27 07:00", BERLIN))),
    # a window within one day
    ({"start": "12:00", "end": "13:30", "timezone": "UTC"}, at("2024-05-01 12:45"), "normal", "x",
     ("hold", at("2024-05-01 13:30"))),
    ({"start": "12:00", "end": "13:30", "timezone": "UTC"}, at("2024-05-01 13:30"), "normal", "x", None),
    # breakthrough
    (NIGHT, at("2024-01-11 03:00", BERLIN), "high", "planner", ("hold", at("2024-01-11 07:00", BERLIN))),
    ({**NIGHT, "breakthrough": "high"}, at("2024-01-11 03:00", BERLIN), "high", "planner", ("allow", None)),
    ({**NIGHT, "breakthrough": "high"}, at("2024-01-11 03:00", BERLIN), "normal", "planner",
     ("hold", at("2024-01-11 07:00", BERLIN))),
    ({**NIGHT, "breakthrough": "high", "breakthrough_senders": ["boss"]}, at("2024-01-11 03:00", BERLIN), "high",
     "boss", ("allow", None)),
    ({**NIGHT, "breakthrough": "high", "breakthrough_senders": ["boss"]}, at("2024-01-11 03:00", BERLIN), "high",
     "planner", ("hold", at("2024-01-11 07:00", BERLIN))),
    ({}, at("2024-01-11 03:00", BERLIN), "normal", "planner", None),  # not configured
])
def test_quiet_hours(config: dict[str, Any], now: float, priority: str, sender: str,
                     expected: tuple[str, float | None] | None) -> None:
    v = quiet_hours.verdict(msg(sender, priority=priority), wake_settings(quiet_hours=config).wake.quiet_hours, now)
    assert summary(v) == expected


def test_quiet_hours_dst_night_lengths() -> None:
    rule = wake_settings(quiet_hours=NIGHT).wake.quiet_hours
    spring = quiet_hours.window_end(rule, at("2024-03-30 22:00", BERLIN))
    autumn = quiet_hours.window_end(rule, at("2024-10-26 22:00", BERLIN))
    assert spring is not None and autumn is not None
    assert spring - at("2024-03-30 22:00", BERLIN) == 8 * 3600
    assert autumn - at("2024-10-26 22:00", BERLIN) == 10 * 3600
    v = quiet_hours.verdict(msg(), rule, at("2024-01-11 03:00", BERLIN))
    assert v is not None and "quiet hours until 07:00 Europe/Berlin" in v.reason


# -- rate limits and budgets: full, then refilled -----------------------------------------------
T0 = at("2024-05-01 12:00")


@pytest.mark.parametrize(("config", "wakes", "now", "sender", "expected"), [
    ({"per_sender": "2/10m"}, [(T0, "a")], T0 + 1, "a", None),
    ({"per_sender": "2/10m"}, [(T0, "a"), (T0 + 60, "a")], T0 + 120, "a", ("hold", T0 + 600)),
    ({"per_sender": "2/10m"}, [(T0, "a"), (T0 + 60, "a")], T0 + 120, "b", None),  # another sender
    ({"per_sender": "2/10m"}, [(T0, "a"), (T0 + 60, "a")], T0 + 600, "a", None),  # refilled
    ({"overall": "3/h"}, [(T0, "a"), (T0 + 1, "b"), (T0 + 2, "c")], T0 + 10, "d", ("hold", T0 + 3600)),
    ({"overall": "3/h"}, [(T0, "a"), (T0 + 1, "b"), (T0 + 2, "c")], T0 + 3600, "d", None),
    ({"per_sender": "1/m", "overall": "2/h"}, [(T0, "a"), (T0 + 5, "b")], T0 + 10, "a", ("hold", T0 + 3600)),
])
def test_rate_limit(config: dict[str, Any], wakes: list[tuple[float, str]], now: float, sender: str,
                    expected: tuple[str, float] | None) -> None:
    v = rate_limit.verdict(msg(sender), wake_settings(rate_limit=config).wake.rate_limit, FakeState(wakes), now)
    assert summary(v) == expected


@pytest.mark.parametrize(("config", "wakes", "now", "expected"), [
    ({}, [T0] * 100, T0, None),
    ({"per_hour": 2}, [T0], T0 + 1, None),
    ({"per_hour": 2}, [T0, T0 + 100], T0 + 200, ("hold", T0 + 3600)),
    ({"per_hour": 2}, [T0, T0 + 100], T0 + 3600, None),  # one hour later: refilled
    ({"per_day": 3}, [T0, T0 + 7200, T0 + 14400], T0 + 20000, ("hold", T0 + 86400)),
    ({"per_hour": 10, "per_day": 3}, [T0, T0 + 7200, T0 + 14400], T0 + 20000, ("hold", T0 + 86400)),
    ({"per_day": 3}, [T0, T0 + 7200, T0 + 14400], T0 + 86400, None),
])
def test_budget(config: dict[str, Any], wakes: list[float], now: float, expected: tuple[str, float] | None) -> None:
    state = FakeState([(t, "a") for t in wakes])
    assert summary(budget.verdict(wake_settings(budget=config).wake.budget, state, now)) == expected


# -- loop guard -------------------------------------------------------------------------------
LOOP = {"max_messages": 3, "window": "10m", "humans": ["alice"]}


@pytest.mark.parametrize(("config", "traffic", "last_from", "sender", "now", "expected"), [
    (LOOP, [T0, T0 + 1, T0 + 2], {}, "bot", T0 + 3, None),  # 3 is not more than 3
    (LOOP, [T0, T0 + 1, T0 + 2, T0 + 3], {}, "bot", T0 + 4, ("hold", T0 + 600)),
    (LOOP, [T0, T0 + 1, T0 + 2, T0 + 3], {"alice": T0 + 1.5}, "bot", T0 + 4, None),  # a human in between
    (LOOP, [T0, T0 + 1, T0 + 2, T0 + 3], {"alice": T0 - 5}, "bot", T0 + 4, ("hold", T0 + 600)),
    (LOOP, [T0, T0 + 1, T0 + 2, T0 + 3], {}, "bot", T0 + 700, None),  # an old exchange
    (LOOP, [T0, T0 + 1, T0 + 2, T0 + 3], {}, "alice", T0 + 4, None),  # humans are never held
    ({}, [T0] * 50, {}, "bot", T0 + 4, None),
])
def test_loop_guard(config: dict[str, Any], traffic: list[float], last_from: dict[str, float], sender: str,
                    now: float, expected: tuple[str, float] | None) -> None:
    state = FakeState(traffic={sender: traffic}, last_from=last_from)
    assert summary(loop_guard.verdict(msg(sender), wake_settings(loop_guard=config).wake.loop_guard, state, now)) \
        == expected


# -- the chain --------------------------------------------------------------------------------
@pytest.mark.parametrize(("verdicts", "expected"), [
    ([], ("allow", None)),
    ([Verdict.allow()], ("allow", None)),
    ([Verdict.hold("a", 10), Verdict.hold("b", 20), Verdict.allow()], ("hold", 20)),
    ([Verdict.hold("a", 10), Verdict.skip("no"), Verdict.hold("b", 20)], ("skip", None)),
])
def test_combine_verdicts(verdicts: list[Verdict], expected: tuple[str, float | None]) -> None:
    assert summary(combine_verdicts(verdicts)) == expected


def relay() -> HookRelay:
    return HookRelay(get_plugin_manager(entry_points=False, env={}))


@pytest.mark.parametrize(("wake", "message", "now", "expected", "rule"), [
    ({}, msg(priority="high"), T0, "allow", "chain"),  # the defaults: today's behaviour
    ({}, msg(priority="normal"), T0, "skip", "decision"),
    ({"policy": "none"}, msg(priority="high"), T0, "skip", "decision"),
    ({"policy": "all"}, msg(expires_at="2000-01-01T00:00:00+00:00"), T0, "skip", "decision"),
    ({"policy": "all", "quiet_hours": {"start": "11:00", "end": "13:00"}}, msg(), T0, "hold", "quiet_hours"),
    ({"policy": "all", "quiet_hours": {"start": "11:00", "end": "13:00"}, "senders": {"deny": ["planner"]}},
     msg(), T0, "skip", "senders"),
    ({"policy": "all", "budget": {"per_hour": 1}}, msg(), T0, "hold", "budget"),
    ({"policy": "high", "budget": {"per_hour": 1}}, msg(), T0, "skip", "decision"),  # a skip beats a hold
])
def test_chain(wake: dict[str, Any], message: StoredMessage, now: float, expected: str, rule: str) -> None:
    state = FakeState(wakes=[(T0 - 10, "x")])
    result = evaluate(relay(), message, wake_settings(**wake), state, now)
    assert (result.final.action, result.final.rule) == (expected, rule)
    assert result.verdicts[0].rule == "decision"


# -- configuration ----------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("10m", 600), ("2h", 7200), ("1d", 86400), ("h", 3600),
                                               (30, 30), ("1.5m", 90)])
def test_parse_duration(text: Any, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_parse_rate() -> None:
    assert parse_rate("5/10m") == (5, 600)
    assert parse_rate("20/h") == (20, 3600)
    for bad in ("5", "0/h", "x/h", "5/10y", "5/", -1):
        with pytest.raises(ValueError):
            parse_rate(bad)


@pytest.mark.parametrize(("values", "key", "words"), [
    ({"wake.quiet_hours.timezone": "Europe/Berln", "wake.quiet_hours.start": "22:00",
      "wake.quiet_hours.end": "07:00"}, "wake.quiet_hours.timezone", "unknown IANA time zone"),
    ({"wake.quiet_hours.start": "25:00", "wake.quiet_hours.end": "07:00"}, "wake.quiet_hours.start", "HH:MM"),
    ({"wake.quiet_hours.start": "22:00"}, "wake.quiet_hours", "both start and end"),
    ({"wake.rate_limit.per_sender": "5 per minute"}, "wake.rate_limit.per_sender", "a rate like 5/10m"),
    ({"wake.loop_guard.window": "soon"}, "wake.loop_guard.window", "a duration like 10m"),
    ({"wake.match.subject": "(unclosed"}, "wake.match.subject", "not a regular expression"),
    ({"wake.budget.per_hour": 0}, "wake.budget.per_hour", "greater than or equal to 1"),
    ({"wake.quiet_hours.breakthrough": "urgent"}, "wake.quiet_hours.breakthrough", "'none' or 'high'"),
])
def test_bad_config_is_a_clear_error(values: dict[str, Any], key: str, words: str) -> None:
    raw = RawConfig()
    for k, v in values.items():
        raw.set(k, v, "file:/x/config.toml")
    with pytest.raises(ConfigError) as err:
        build_settings(raw)
    text = str(err.value)
    assert text.startswith("invalid configuration: ") and key in text and words in text, text
    assert "Traceback" not in text
