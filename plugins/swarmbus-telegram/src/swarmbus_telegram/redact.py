"""Keep the bot token out of every log line, whoever writes it: a logging filter on the root
logger's handlers that replaces the token (and anything shaped like a bot token) in a record's
message and traceback by ``<token>``. The plugin's own code never logs the token; this is the
second line, for a library that might (httpx logs request URLs, which hold it)."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable

from swarmbus_telegram.botapi import _TOKENISH, scrub
from swarmbus_telegram.config import Secret


class Redactor(logging.Filter):
    """Scrubs ``token`` from each record (never drops one)."""

    def __init__(self, token: Secret) -> None:
        super().__init__("swarmbus-telegram-redactor")
        self._token = token

    def _dirty(self, text: str) -> bool:
        secret = self._token.reveal()
        return bool(secret and secret in text) or _TOKENISH.search(text) is not None

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to the handler
            return True
        if self._dirty(message):
            record.msg, record.args = scrub(message, self._token), ()
        if record.exc_info and record.exc_info[1] is not None:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            if self._dirty(text):
                record.exc_text, record.exc_info = scrub(text, self._token), None
        elif record.exc_text and self._dirty(record.exc_text):
            record.exc_text = scrub(record.exc_text, self._token)
        return True


def install(token: Secret) -> Callable[[], None]:
    """Add a :class:`Redactor` to every handler of the root logger; returns the function that
    removes them again."""
    redactor = Redactor(token)
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(redactor)

    def remove() -> None:
        for handler in handlers:
            handler.removeFilter(redactor)

    return remove
