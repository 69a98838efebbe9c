"""Built-in ``wake`` handler.

The ``wake`` handler asks ``swarmbus_wake_decision`` and every ``swarmbus_wake_filter`` rule
(any veto wins) and, on a wake, ``swarmbus_wake``; a held message is woken later. Wakes are
coalesced for wakers that take them (``swarmbus_wake_coalesce``): one at a time per agent, the
messages that wait meanwhile in the next one. The handler has no dispatcher timeout and may run
for every message in memory at once (``daemon.backlog``): a message waiting for the wake in
progress costs nothing, and the wake itself is bounded by ``daemon.handler_timeout`` (see
:mod:`swarmbus.default_plugins.attention`). The core has no waker of its own: the command waker (``wake.command``, ``--invoke``) is the
``swarmbus-priority`` plugin (part of the default install), host wakers are host plugins.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from swarmbus.api import Handler
from swarmbus.hookspecs import hookimpl
from swarmbus.settings import Settings

from .attention import WakeFailed, handle_wake

__all__ = ["WakeFailed", "swarmbus_register_handlers"]


@hookimpl
def swarmbus_register_handlers(register: Callable[[Handler], None], settings: Settings) -> None:
    # the policy chain (swarmbus_wake_decision, then every swarmbus_wake_filter rule), then
    # swarmbus_wake, a hold, or a skip: see swarmbus.default_plugins.attention
    register(Handler("wake", handle_wake, timeout=math.inf, concurrency=settings.daemon.backlog,
                     description="wake the host agent when policy says so"))
