"""Plugins' long-running services (``swarmbus_services``), kept running beside message handling.

The daemon collects the services when it starts (:meth:`swarmbus.plugins.HookRelay.services`),
starts them once its MQTT link is started (:meth:`ServiceRunner.start`) and cancels them at
shutdown (:meth:`ServiceRunner.close`). Each runs as its own task on the daemon's event loop:

- one that raises is logged and started again after a backoff: ``backoff_min`` seconds (1 s),
  doubling up to ``backoff_max`` (60 s); a run that lasted longer than ``backoff_max`` starts
  the backoff again from ``backoff_min``;
- one that returns is finished (logged, not started again);
- nothing a service does stops the daemon or any other service.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from swarmbus.api import HandlerContext, Service

log = logging.getLogger("swarmbus.daemon")


@dataclass
class ServiceState:
    """What :meth:`ServiceRunner.status` says about one service."""

    name: str
    state: str = "not started"  # not started | running | backing off | finished | cancelled
    restarts: int = 0
    last_error: str | None = None
    last_error_at: float | None = None


class ServiceRunner:
    """Runs ``services`` with ``context`` (see the module docstring). Use from the event loop.

    :param backoff_min: seconds before the first restart of a service that raised.
    :param backoff_max: the longest wait between restarts, in seconds.
    """

    def __init__(self, services: Sequence[Service], context: HandlerContext, *, backoff_min: float = 1.0,
                 backoff_max: float = 60.0) -> None:
        self.services = list(services)
        self.context = context
        self.backoff_min = backoff_min
        self.backoff_max = max(backoff_max, backoff_min)
        self.states = {s.name: ServiceState(s.name) for s in self.services}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start every service, each in its own task (call once, in the loop)."""
        loop = asyncio.get_running_loop()
        for service in self.services:
            self._tasks.append(loop.create_task(self._keep(service), name=f"swarmbus-service-{service.name}"))

    async def _keep(self, service: Service) -> None:
        state = self.states[service.name]
        delay = self.backoff_min
        while True:
            started = time.monotonic()
            state.state = "running"
            try:
                result = service.run(self.context)
                if not inspect.isawaitable(result):
                    raise TypeError(f"service {service.name!r}: run(context) must be an async function")
                await result
            except asyncio.CancelledError:
                state.state = "cancelled"
                raise
            except Exception as exc:
                state.last_error = f"{type(exc).__name__}: {exc}"
                state.last_error_at = time.time()
                if time.monotonic() - started > self.backoff_max:
                    delay = self.backoff_min
                log.exception("service %s failed (%s); starting it again in %gs", service.name, state.last_error,
                              delay)
            else:
                state.state = "finished"
                log.info("service %s finished", service.name)
                return
            state.state = "backing off"
            await asyncio.sleep(delay)
            state.restarts += 1
            delay = min(delay * 2, self.backoff_max)

    async def close(self, timeout: float = 2.0) -> None:
        """Cancel every service and wait up to ``timeout`` seconds for them to end."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.gather(*tasks, return_exceptions=True)

    def status(self) -> list[dict[str, Any]]:
        """``[{"name", "state", "restarts", "last_error", "last_error_at"}, ...]`` per service."""
        return [vars(state).copy() for state in self.states.values()]
