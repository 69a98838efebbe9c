"""Built-in wake policy (``trylast``): applies ``wake.policy`` when no plugin has an opinion.

- expired messages (``expires_at`` in the past) never wake;
- ``none`` never wakes, ``all`` always does;
- ``high`` (default; the predecessor's ``priority-high``) wakes only for ``priority = high``.
"""

from __future__ import annotations

from swarmbus.api import StoredMessage, WakeDecision, skip, wake
from swarmbus.hookspecs import hookimpl
from swarmbus.settings import Settings


@hookimpl(trylast=True)
def swarmbus_wake_decision(message: StoredMessage, settings: Settings) -> WakeDecision:
    if message.envelope.expired():
        return skip(f"expired at {message.envelope.expires_at}")
    policy = settings.wake.policy
    if policy == "none":
        return skip("wake policy is none")
    if policy == "all":
        return wake("wake policy is all")
    if message.priority == "high":
        return wake("priority is high")
    return skip(f"priority {message.priority} is below the wake policy (high)")
