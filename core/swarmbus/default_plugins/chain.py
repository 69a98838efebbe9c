"""The wake policy as one chain in which any veto wins.

1. ``swarmbus_wake_decision`` (firstresult) gives the base decision: a plugin's answer, else the
   built-in priority threshold (``wake.policy``). A *skip* here is a veto; a *wake* is no
   objection (so a plugin can wake a message below the threshold, as before, but never past
   another rule's veto).
2. Every ``swarmbus_wake_filter`` rule is asked; :func:`swarmbus.combine_verdicts` combines them
   with the base decision: any skip wins, else the latest hold, else wake.
"""

from __future__ import annotations

from dataclasses import dataclass

from swarmbus.api import PolicyState, StoredMessage, Verdict, WakeDecision, combine_verdicts
from swarmbus.plugins import HookRelay
from swarmbus.settings import Settings

DECISION_RULE = "decision"


@dataclass(frozen=True)
class Evaluation:
    """What the chain said about one message: the base ``decision``, each rule's ``verdicts``
    (base decision first), and the combined ``final`` verdict."""

    decision: WakeDecision
    verdicts: tuple[Verdict, ...]
    final: Verdict

    @property
    def wake(self) -> bool:
        return self.final.action == "allow"

    @property
    def reason(self) -> str:
        """Why: the combined verdict's reason, or the base decision's when nothing objected."""
        return self.decision.reason if self.wake else self.final.reason


def evaluate(relay: HookRelay, message: StoredMessage, settings: Settings, state: PolicyState,
             now: float) -> Evaluation:
    """Run the chain for ``message`` at Unix time ``now``."""
    decision = relay.wake_decision(message, settings)
    base = (Verdict.allow(decision.reason, rule=DECISION_RULE) if decision.wake
            else Verdict.skip(decision.reason, rule=DECISION_RULE))
    verdicts = (base, *(v if v.rule else Verdict(v.action, v.reason, v.until, "plugin")
                        for v in relay.wake_filters(message, settings, state, now)))
    return Evaluation(decision, verdicts, combine_verdicts(verdicts))
