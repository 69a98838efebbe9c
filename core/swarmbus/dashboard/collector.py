"""Feeding the dashboard's state from its sources, on the server's event loop.

:class:`Collector` owns the broker client (:mod:`~swarmbus.dashboard.broker`) and one
:class:`~swarmbus.dashboard.stores.StoreReader` per local agent. :meth:`Collector.connect`
(before the server starts) connects to the broker; :meth:`Collector.run` (on the server's loop)
polls the stores every :data:`POLL_INTERVAL` seconds (all of them in one worker thread, so a
slow disk never blocks a page), looks for new agent dirs every :data:`RESCAN_INTERVAL` seconds,
and ticks the state once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from swarmbus.dashboard.broker import BrokerWatcher
from swarmbus.dashboard.records import Item
from swarmbus.dashboard.state import DashboardState, Inlet
from swarmbus.dashboard.stores import StoreDelta, StoreReader, StoreUnavailable, local_agents
from swarmbus.paths import default_state_dir
from swarmbus.settings import Settings

POLL_INTERVAL = 0.25
"""Seconds between two polls of the stores (each costs one pragma per store while idle)."""
RESCAN_INTERVAL = 1.0
"""Seconds between two looks for agent dirs that appeared (or went)."""
TICK_INTERVAL = 1.0

log = logging.getLogger("swarmbus.dashboard")


class Collector:
    """The sources of one dashboard. ``agents``: only these local agents' stores (None: every
    agent dir under the state dir, including those that appear later)."""

    def __init__(self, settings: Settings, state: DashboardState, agents: list[str] | None = None) -> None:
        self.settings = settings
        self.state = state
        self.only = agents
        self.state_dir = Path(settings.state_dir).expanduser() if settings.state_dir else default_state_dir()
        self.inlet = Inlet()
        self.readers: dict[str, StoreReader] = {}
        self.watcher: BrokerWatcher | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        """The server's event loop, once :meth:`start` ran."""

    def connect(self) -> None:
        """Connect to the broker (read-only). Call before the server starts.

        :raises BrokerUnreachable: no connection within ``broker.connect_timeout``.
        """
        known = list(local_agents(self.state_dir, self.only)) + list(self.only or [])
        self.watcher = BrokerWatcher(self.settings, self._from_broker, self._broker_status, known)
        self.inlet.call(self._set_url, self.watcher.url)
        self.watcher.start(self.settings.broker.connect_timeout)

    def _set_url(self, url: str) -> None:
        self.state.set_broker(url=url)

    def _from_broker(self, item: Item) -> None:  # the link's thread
        self.inlet.call(self.state.apply_item, item)

    def _broker_status(self, connected: bool, error: str | None) -> None:  # the link's thread
        self.inlet.call(self._set_connected, connected, error)

    def _set_connected(self, connected: bool, error: str | None) -> None:
        self.state.set_broker(connected=connected, error=error)

    async def start(self) -> None:
        """Start polling and ticking on the running loop (the app's startup)."""
        self.loop = asyncio.get_running_loop()
        self.inlet.attach(self.loop)
        self._rescan()
        self._tasks = [asyncio.create_task(self._poll_loop()), asyncio.create_task(self._tick_loop())]

    async def stop(self) -> None:
        """Stop polling, close the stores and the broker connection, end every stream."""
        self.state.close_all()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for reader in self.readers.values():
            reader.close()
        if self.watcher is not None:
            await asyncio.to_thread(self.watcher.stop)

    def _rescan(self) -> None:
        found = local_agents(self.state_dir, self.only)
        for agent in [a for a in self.readers if a not in found]:
            self.readers.pop(agent).close()
        for agent, path in found.items():
            if agent not in self.readers:
                self.readers[agent] = StoreReader(agent, path)
        self.state.set_local_agents(sorted(found))
        for agent in [a for a in self.state.stores if a not in found]:
            self.state.set_store(agent, "its store is gone")

    def _poll_all(self) -> list[tuple[str, StoreDelta | None, str | None]]:  # a worker thread
        out: list[tuple[str, StoreDelta | None, str | None]] = []
        for agent, reader in list(self.readers.items()):
            try:
                out.append((agent, reader.poll(), None))
            except StoreUnavailable as exc:
                out.append((agent, None, str(exc)))
            except Exception as exc:  # a store we cannot make sense of must not stop the others
                log.exception("reading %s's store failed", agent)
                reader.close()
                out.append((agent, None, f"{type(exc).__name__}: {exc}"))
        return out

    async def _poll_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_scan = loop.time() + RESCAN_INTERVAL
        while True:
            if loop.time() >= next_scan:
                self._rescan()
                next_scan = loop.time() + RESCAN_INTERVAL
            for agent, delta, error in await asyncio.to_thread(self._poll_all):
                if error is not None:
                    self.state.set_store(agent, error)
                elif delta is not None:
                    try:
                        self.state.apply_delta(delta)
                    except Exception:  # never let one odd row stop the dashboard
                        log.exception("could not show what %s's store holds", agent)
                elif not self.state.stores.get(agent, {}).get("ok"):
                    self.state.set_store(agent, None)
            await asyncio.sleep(POLL_INTERVAL)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            if self.watcher is not None:
                self.state.set_broker(refused=self.watcher.refused())
            self.state.tick()
