"""Running handlers for stored messages, off the receive path.

Each message is routed (``swarmbus_route``) to a set of handlers. Handlers run as asyncio
tasks, concurrently, each handler bounded by its own semaphore of
``daemon.handler_concurrency`` (so many slow wakes never hold up the archive) and by its
timeout. Each attempt is recorded in the store's ``deliveries`` table as ``running``, then
``ok``, ``failed`` or ``timeout`` with a detail. A message is marked dispatched once all its
handlers finished; after a crash, messages not marked dispatched are dispatched again,
skipping handlers that already finished.
"""

from __future__ import annotations

import asyncio
import logging

from swarmbus.api import Handler, HandlerContext, StoredMessage
from swarmbus.plugins import HookRelay
from swarmbus.store import Store

log = logging.getLogger("swarmbus.daemon.dispatch")


class Dispatcher:
    def __init__(
        self,
        store: Store,
        relay: HookRelay,
        handlers: dict[str, Handler],
        context: HandlerContext,
    ) -> None:
        self.store = store
        self.relay = relay
        self.handlers = handlers
        self.context = context
        settings = context.settings
        self.default_timeout = settings.daemon.handler_timeout
        self._limits = {name: asyncio.Semaphore(settings.daemon.handler_concurrency) for name in handlers}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def busy(self) -> int:
        return len(self._tasks)

    def submit(self, message: StoredMessage) -> None:
        """Schedule dispatch of one message (call from the event loop's thread)."""
        task = asyncio.get_running_loop().create_task(self._dispatch(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch(self, message: StoredMessage) -> None:
        try:
            names = self.relay.route(message, frozenset(self.handlers), self.context.settings)
        except Exception:
            log.exception("routing failed for message %s; it stays stored and undispatched", message.id)
            return
        unknown = [n for n in names if n not in self.handlers]
        if unknown:
            log.warning("message %s routed to unknown handler(s) %s", message.id, ", ".join(unknown))
        finished = self.store.finished_handlers(message.seq)
        todo = [self.handlers[n] for n in names if n in self.handlers and n not in finished]
        await asyncio.gather(*(self._run(h, message) for h in todo))
        self.store.mark_dispatched(message.seq)

    async def _run(self, handler: Handler, message: StoredMessage) -> None:
        timeout = handler.timeout or self.default_timeout
        async with self._limits[handler.name]:
            self.store.record_delivery(message.seq, handler.name, "running")
            try:
                detail = await asyncio.wait_for(handler.handle(message, self.context), timeout)
            except TimeoutError:
                log.warning("handler %s timed out after %.0fs on message %s", handler.name, timeout, message.id)
                self.store.record_delivery(message.seq, handler.name, "timeout", f"timed out after {timeout:.0f}s")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("handler %s failed on message %s: %s", handler.name, message.id, exc)
                self.store.record_delivery(message.seq, handler.name, "failed", f"{type(exc).__name__}: {exc}")
            else:
                self.store.record_delivery(message.seq, handler.name, "ok", detail or "")

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for running handlers, then cancel the rest (they
        are dispatched again at the next start)."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
