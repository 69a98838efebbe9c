"""What the retained data says about jobs: records and outcomes joined per job id.

Who may report on a job: when its record names a ``delegate``, only that delegate and the
record's owner (events by anyone else are ignored, and reported); without a delegate, anyone.
The broker's ACL vouches for the reporter, since an agent may only write under its own id
(``swarmbus/jobs/+/events/<self>``).

Two records for one job id (two owners: a peer may publish a record under its own id for any
job id it has seen) are a conflict: the record of the owner the caller names wins, else the one
created first; the others are reported. The outcome is the earliest terminal event (by ``at``)
from an allowed reporter. ``started`` and ``progress`` are not retained, so from retained data
alone a job is ``submitted`` until it has an outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from swarmbus.jobs.bus import Seen
from swarmbus.jobs.model import JobEvent, JobRecord, parse_rfc3339

__all__ = ["JobView", "collect"]


def _when(stamp: str) -> datetime:
    return parse_rfc3339(stamp)  # validated when decoded: never raises here


@dataclass
class JobView:
    """One job as far as the messages seen tell: its records (by owner) and outcomes (by reporter)."""

    job_id: str
    records: dict[str, JobRecord] = field(default_factory=dict)
    outcomes: dict[str, JobEvent] = field(default_factory=dict)

    def add(self, seen: Seen) -> None:
        """Take a valid record or outcome (anything else is ignored)."""
        if seen.record is not None:
            self.records[seen.record.owner] = seen.record
        elif seen.event is not None and seen.kind == "outcome":
            self.outcomes[seen.event.by] = seen.event

    def record(self, prefer_owner: str | None = None) -> JobRecord | None:
        """The record that counts: ``prefer_owner``'s, else the first created (ties: by owner id)."""
        if prefer_owner is not None and prefer_owner in self.records:
            return self.records[prefer_owner]
        if not self.records:
            return None
        return min(self.records.values(), key=lambda r: (_when(r.created_at), r.owner))

    def conflicts(self, prefer_owner: str | None = None) -> list[JobRecord]:
        """The records that do not count (see :meth:`record`)."""
        chosen = self.record(prefer_owner)
        return [r for r in self.records.values() if r is not chosen]

    def allowed(self, by: str, prefer_owner: str | None = None) -> bool:
        """Whether ``by``'s events count for this job (see the module docstring)."""
        record = self.record(prefer_owner)
        return record is None or record.delegate is None or by in (record.delegate, record.owner)

    def outcome(self, prefer_owner: str | None = None) -> JobEvent | None:
        """The earliest terminal event from an allowed reporter, or None."""
        valid = [e for e in self.outcomes.values() if self.allowed(e.by, prefer_owner)]
        return min(valid, key=lambda e: (_when(e.at), e.by)) if valid else None

    def state(self, prefer_owner: str | None = None) -> str:
        """``completed`` or ``error`` (its outcome), ``submitted`` (a record, no outcome)."""
        outcome = self.outcome(prefer_owner)
        return outcome.event if outcome is not None else "submitted"


def collect(seen: list[Seen]) -> dict[str, JobView]:
    """Group valid records and outcomes by job id (arrival order of first sight)."""
    views: dict[str, JobView] = {}
    for item in seen:
        job = item.record or item.event
        if job is None:
            continue
        views.setdefault(job.job_id, JobView(job.job_id)).add(item)
    return views
