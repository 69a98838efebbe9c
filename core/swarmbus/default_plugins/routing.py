"""Built-in router: every stored message goes to the ``wake`` and ``archive`` handlers.

The dispatcher hands a message to its handlers' lanes in this order, so the latency-sensitive
wake decision runs first; the archive append follows within the same moment (a woken host takes
milliseconds to start, by which time the entry is in inbox.md).
"""

from __future__ import annotations

from swarmbus.api import StoredMessage
from swarmbus.hookspecs import hookimpl

BUILTIN_ROUTES = ("wake", "archive")


@hookimpl(trylast=True)
def swarmbus_route(message: StoredMessage, handlers: frozenset[str]) -> list[str]:
    return [name for name in BUILTIN_ROUTES if name in handlers]
