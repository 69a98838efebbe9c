"""Rule ``match`` (``[wake.match]``): only messages whose subject matches ``subject`` (a
regular expression, searched) and whose media type is in ``content_types`` wake (skip)."""

from __future__ import annotations

import re
from functools import lru_cache

from swarmbus.api import StoredMessage, Verdict
from swarmbus.hookspecs import hookimpl
from swarmbus.settings import MatchRule, Settings

RULE = "match"


@lru_cache(maxsize=32)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def verdict(message: StoredMessage, rule: MatchRule) -> Verdict | None:
    if rule.subject is not None and _compiled(rule.subject).search(message.subject) is None:
        return Verdict.skip("subject does not match wake.match.subject", rule=RULE)
    if rule.content_types:
        media = message.envelope.content_type.split(";", 1)[0].strip().lower()
        if media not in {c.lower() for c in rule.content_types}:
            return Verdict.skip(f"content type {media} is not in wake.match.content_types", rule=RULE)
    return None


@hookimpl(trylast=True)
def swarmbus_wake_filter(message: StoredMessage, settings: Settings) -> Verdict | None:
    return verdict(message, settings.wake.match)
