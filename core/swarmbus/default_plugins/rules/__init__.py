"""The built-in wake rules: one ``swarmbus_wake_filter`` implementation per module, each a pure
function of (message, settings, state, now).
A rule whose config section is empty has no opinion (returns None), so the defaults change
nothing: only the priority threshold (``swarmbus_wake_decision``) and expiry apply. The plugin
manager registers each module (``swarmbus.plugins.DEFAULT_PLUGINS``)."""

from __future__ import annotations

from collections.abc import Sequence


def window_opens(times: Sequence[float], limit: int, window: float, now: float) -> float | None:
    """With events at ``times`` (oldest first) and at most ``limit`` allowed in any ``window``
    seconds: None when one more fits now, else the Unix time at which one more fits."""
    recent = [t for t in times if t > now - window]
    if len(recent) < limit:
        return None
    return recent[len(recent) - limit] + window
