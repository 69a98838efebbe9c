"""The concurrency limit per priority, and batches of the messages that wait for it.

Each priority bucket (``high``, ``normal``, ``low``; see :func:`swarmbus_priority.config.bucket`)
has a semaphore of its configured size, per event loop (the daemon has one; each test's
``asyncio.run`` its own). :func:`run_limited` runs one message's command inside its bucket's
limit; :func:`run_batched` lets messages that wait for the same bucket and command share the
next run.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar, cast

from swarmbus import StoredMessage

T = TypeVar("T")


@dataclass
class _Batch:
    messages: list[StoredMessage]
    result: asyncio.Future[object]


@dataclass
class _LoopState:
    semaphores: dict[tuple[str, int], asyncio.Semaphore] = field(default_factory=dict)
    open_batches: dict[tuple[str, tuple[str, ...]], _Batch] = field(default_factory=dict)


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


async def run_batched(bucket: str, limit: int, argv: Sequence[str], message: StoredMessage,
                      run: Callable[[list[StoredMessage]], Awaitable[T]]) -> T:
    """Like :func:`run_limited`, for a command configured with ``batch = true``: a message that
    finds an open batch for the same bucket and argv (one still waiting for its slot) joins it
    and gets that run's result; otherwise it opens one, waits for a slot, closes the batch and
    runs ``run(messages)`` once for every message in it, oldest first.

    :raises RuntimeError: (for a message that joined) the run it joined was cancelled.
    """
    state = _state()
    key = (bucket, tuple(argv))
    joined = state.open_batches.get(key)
    if joined is not None:
        joined.messages.append(message)
        return cast(T, await asyncio.shield(joined.result))
    batch = _Batch([message], asyncio.get_running_loop().create_future())
    state.open_batches[key] = batch
    try:
        async with _semaphore(bucket, limit):
            if state.open_batches.get(key) is batch:
                del state.open_batches[key]  # later arrivals open the next batch
            result = await run(list(batch.messages))
    except BaseException as exc:
        if state.open_batches.get(key) is batch:
            del state.open_batches[key]
        if not batch.result.done():
            batch.result.set_exception(RuntimeError(f"the batched run was stopped ({type(exc).__name__})"))
            batch.result.exception()  # retrieved: no "never retrieved" warning when nobody joined
        raise
    batch.result.set_result(result)
    return result
