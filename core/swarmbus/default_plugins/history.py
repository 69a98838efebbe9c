"""The wake history the rules read (:class:`swarmbus.PolicyState`), kept in memory.

The daemon loads it from the store at start (:meth:`WakeHistory.load`) and keeps it in sync as
it wakes, receives and sends, so a rule reads a few list entries, never the database. Entries
older than the longest window any rule can ask about are dropped as new ones arrive.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Collection, Sequence
from typing import Any

DAY = 86400.0


class WakeHistory:
    """An in-memory :class:`swarmbus.PolicyState`. Times are Unix seconds.

    :param horizon: seconds of history kept (at least a day: the daily budget).
    """

    def __init__(self, horizon: float = DAY) -> None:
        self.horizon = max(horizon, DAY)
        self._wakes: deque[float] = deque()
        self._wakes_by: dict[str, deque[float]] = {}
        self._traffic: dict[str, deque[float]] = {}
        self._last_from: dict[str, float] = {}
        self.manual: Any = None
        """The operator's hold on every wake (a :class:`swarmbus.store.ManualHold`), or None:
        read by the built-in ``manual`` rule (``swarmbus policy hold``)."""

    # -- PolicyState ---------------------------------------------------------------------------
    def wake_times(self, since: float, sender: str | None = None) -> Sequence[float]:
        times = self._wakes if sender is None else self._wakes_by.get(sender)
        return _since(times, since) if times else []

    def exchange_times(self, peer: str, since: float) -> Sequence[float]:
        times = self._traffic.get(peer)
        return _since(times, since) if times else []

    def last_message_from(self, senders: Collection[str]) -> float | None:
        found = [self._last_from[s] for s in senders if s in self._last_from]
        return max(found) if found else None

    # -- keeping it in sync ------------------------------------------------------------------------
    def note_wake(self, at: float, senders: Collection[str]) -> None:
        """One wake (coalesced or not) for messages from ``senders``."""
        _append(self._wakes, at, self.horizon)
        for sender in set(senders):
            _append(self._wakes_by.setdefault(sender, deque()), at, self.horizon)

    def forget_wake(self, at: float, senders: Collection[str]) -> None:
        """Undo :meth:`note_wake` (nothing woke after all: no waker answered)."""
        for times in (self._wakes, *(self._wakes_by.get(s) for s in set(senders))):
            if times is not None and at in times:
                times.remove(at)

    def note_received(self, sender: str, at: float) -> None:
        _append(self._traffic.setdefault(sender, deque()), at, self.horizon)
        if at > self._last_from.get(sender, 0.0):
            self._last_from[sender] = at

    def note_sent(self, peer: str, at: float) -> None:
        _append(self._traffic.setdefault(peer, deque()), at, self.horizon)

    def load(self, wakes: Sequence[tuple[float, Collection[str]]], received: Sequence[tuple[float, str]],
             sent: Sequence[tuple[float, str]]) -> None:
        """Fill from the store: ``wakes`` (at, senders), ``received`` (at, sender), ``sent``
        (at, peer), each oldest first."""
        for at, senders in wakes:
            self.note_wake(at, senders)
        for at, sender in sorted([*received, *((a, p) for a, p in sent)]):
            self._traffic.setdefault(sender, deque()).append(at)
        for at, sender in received:
            if at > self._last_from.get(sender, 0.0):
                self._last_from[sender] = at


def _append(times: deque[float], at: float, horizon: float) -> None:
    if times and at < times[-1]:
        bisect.insort(times, at)  # (rare: a clock step backwards)
    else:
        times.append(at)
    while times and times[0] < at - horizon:
        times.popleft()


def _since(times: deque[float], since: float) -> list[float]:
    if not times or times[-1] < since:
        return []
    if times[0] >= since:
        return list(times)
    return list(times)[bisect.bisect_left(times, since):]
