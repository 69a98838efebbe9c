"""Built-in router: every stored message goes to the ``archive`` and ``wake`` handlers."""

from __future__ import annotations

from swarmbus.api import StoredMessage
from swarmbus.hookspecs import hookimpl

BUILTIN_ROUTES = ("archive", "wake")


@hookimpl(trylast=True)
def swarmbus_route(message: StoredMessage, handlers: frozenset[str]) -> list[str]:
    return [name for name in BUILTIN_ROUTES if name in handlers]
