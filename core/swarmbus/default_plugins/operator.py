"""Operator events (``swarmbus_operator_event``) fired by the wake bookkeeping: small helpers so
that :mod:`swarmbus.default_plugins.attention` only says when.

See :class:`swarmbus.OperatorEvent` for the kinds and their fields.
"""

from __future__ import annotations

from typing import Any

from swarmbus.api import HandlerContext, OperatorEvent
from swarmbus.plugins import HookRelay
from swarmbus.store import Store

FAILURES_LOOKED_AT = 100
"""The most recent wake attempts read at start to count the failures in a row."""


def fire(relay: HookRelay, context: HandlerContext | None, kind: str, at: float, **fields: Any) -> None:
    """Call ``swarmbus_operator_event`` with an event of ``kind`` for the context's agent (never
    raises; nothing is fired outside a daemon, before ``Attention.start``)."""
    if context is None:
        return
    relay.operator_event(OperatorEvent(kind, context.agent_id, at, **fields))


def failures_in_a_row(store: Store) -> int:
    """How many of the latest wake attempts in the store failed in a row (up to
    :data:`FAILURES_LOOKED_AT`); 0 when the latest one worked or there is none."""
    count = 0
    for attempt in store.wake_attempts(FAILURES_LOOKED_AT):
        if attempt.ok:
            break
        count += 1
    return count
