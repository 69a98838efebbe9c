"""The operator's hold on an agent's wakes: the daemon's side of ``swarmbus policy hold`` and
``swarmbus policy release`` (control-socket ops ``hold`` and ``release``, see
:mod:`swarmbus.control`).

``hold`` records a :class:`~swarmbus.store.ManualHold` in the agent's store and in the daemon's
memory, so the built-in ``manual`` rule (:mod:`swarmbus.default_plugins.rules.manual`) holds every
wake from then on (also after a restart). ``release`` removes it and makes every message it held
due now: the held-message release of :class:`~swarmbus.default_plugins.attention.Attention` asks
every rule again and wakes what they allow (in one wake for a waker that coalesces), in the
background.
"""

from __future__ import annotations

import math
from typing import Any

from swarmbus.errors import StoreError
from swarmbus.store import ManualHold

from .attention import Attention
from .rules.manual import RULE

MAX_HOLD = 366 * 86400.0
"""The longest hold with a deadline, in seconds."""


def describe(hold: ManualHold | None, now: float) -> dict[str, Any] | None:
    """``{"since", "until" (None: until released), "reason"}`` of a hold in force at ``now``, or None."""
    if hold is None or (hold.until is not None and hold.until <= now):
        return None
    return {"since": hold.since, "until": hold.until, "reason": hold.reason}


def _seconds(value: Any) -> bool:
    return (not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
            and 0 < value <= MAX_HOLD)


async def control(attention: Attention, agent_id: str, req: dict[str, Any]) -> dict[str, Any]:
    """Answer a control request ``{"op": "hold", "duration": seconds | null, "reason": str}`` or
    ``{"op": "release"}``: ``{"ok": true, "agent_id", "manual_hold": {...} | null, "held": n}``
    (``held``: messages held now, any rule), plus ``released`` (messages the hold held, now
    asked again) for ``release``. Usage errors answer ``{"ok": false, "kind": "usage", ...}``."""
    now = attention.now()
    op = req.get("op")
    try:
        if op == "hold":
            duration = req.get("duration")
            if duration is not None and not _seconds(duration):
                return {"ok": False, "kind": "usage",
                        "error": f"duration must be a number of seconds between 0 and {MAX_HOLD:.0f}"}
            reason = req.get("reason") or ""
            if not isinstance(reason, str):
                return {"ok": False, "kind": "usage", "error": "reason must be text"}
            hold = ManualHold(now, None if duration is None else now + float(duration), reason[:200])
            attention.store.set_manual_hold(hold)
            attention.history.manual = hold
            return {"ok": True, "agent_id": agent_id, "manual_hold": describe(hold, now),
                    "held": len(attention.store.holds())}
        if op == "release":
            attention.store.set_manual_hold(None)
            attention.history.manual = None
            released = attention.store.end_holds_of(RULE, now)
            if released:
                attention.tick()  # due now: the release asks the rules again and wakes them
            return {"ok": True, "agent_id": agent_id, "manual_hold": None, "released": released,
                    "held": len(attention.store.holds())}
    except StoreError as exc:
        return {"ok": False, "kind": "failure", "error": f"could not record it in the store: {exc}"}
    return {"ok": False, "kind": "usage", "error": f"unknown op {op!r}"}
