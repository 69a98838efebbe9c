"""The concurrency limit per priority.

Each priority bucket (``high``, ``normal``, ``low``; see :func:`swarmbus_priority.config.bucket`)
has a semaphore of its configured size, per event loop (the daemon has one; each test's
``asyncio.run`` its own). :func:`run_limited` runs one command inside its bucket's limit.
Batches (``batch = true``) are the core's coalesced wakes: the messages that waited for the
agent's previous wake arrive together in ``decision.batch``.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


@dataclass
class _LoopState:
    semaphores: dict[tuple[str, int], asyncio.Semaphore] = field(default_factory=dict)


_STATE: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = weakref.WeakKeyDictionary()


def _state() -> _LoopState:
    loop = asyncio.get_running_loop()
    state = _STATE.get(loop)
    if state is None:
        state = _STATE[loop] = _LoopState()
    return state


def _semaphore(bucket: str, limit: int) -> asyncio.Semaphore:
    semaphores = _state().semaphores
    key = (bucket, limit)
    if key not in semaphores:
        semaphores[key] = asyncio.Semaphore(limit)
    return semaphores[key]


async def run_limited(bucket: str, limit: int, run: Callable[[], Awaitable[T]]) -> T:
    """Await ``run()`` once fewer than ``limit`` runs of ``bucket`` are in progress (first come,
    first served)."""
    async with _semaphore(bucket, limit):
        return await run()
