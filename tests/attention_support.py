"""Shared by the in-process attention tests (holds, operator events): an injected clock, an
Attention wired to a given waker or listener plugin, and messages stored as if they arrived."""

from __future__ import annotations

import logging
from typing import Any

from swarmbus import HandlerContext, StoredMessage, new_envelope
from swarmbus.default_plugins.attention import Attention
from swarmbus.plugins import HookRelay, get_plugin_manager
from swarmbus.settings import Settings
from swarmbus.store import Store

ME = "coder"
T0 = 1_700_000_000.0


class Clock:
    """A settable clock (Unix seconds) for ``Attention(now=...)``."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_attention(store: Store, clock: Clock, plugin: object, **wake: Any) -> tuple[Attention, HandlerContext]:
    """An Attention for agent :data:`ME` with ``plugin`` registered and ``[wake]`` = policy
    ``all`` plus ``wake``, and the handler context to start it with."""
    pm = get_plugin_manager(entry_points=False, env={})
    pm.register(plugin)
    relay = HookRelay(pm)
    settings = Settings.model_validate({"wake": {"policy": "all", **wake}})
    attention = Attention(store, relay, settings, now=clock)

    async def send(to: str, subject: str, body: str, **fields: Any) -> str:
        return "sent"

    context = HandlerContext(ME, settings, logging.getLogger("test"), send, relay, attention=attention)
    return attention, context


def arrive(store: Store, n: int, start: int = 0, sender: str = "planner") -> list[StoredMessage]:
    """Store ``n`` messages from ``sender`` to :data:`ME`, ids ``m<start>``..."""
    out = []
    for i in range(start, start + n):
        result = store.accept(f"agents/{ME}/inbox", new_envelope(sender, ME, f"s{i}", f"b{i}", id=f"m{i}").to_wire(), ME)
        assert result.message is not None
        out.append(result.message)
    return out
