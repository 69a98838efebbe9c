"""Delegated jobs (``swarmbus job ...``; docs/jobs.md): a record, lifecycle events, a retained outcome.

| topic                                      | retained | payload                      |
|--------------------------------------------|----------|------------------------------|
| ``swarmbus/jobs/<job_id>/record/<owner>``  | yes      | the job record               |
| ``swarmbus/jobs/<job_id>/events/<by>``     | no       | every event                  |
| ``swarmbus/jobs/<job_id>/outcome/<by>``    | yes      | the terminal event (completed, error) |

All QoS 1. The last segment is the publishing agent, so the least-privilege ACL of ``swarmbus
broker acl`` lets an agent write only under its own id.

Modules: :mod:`~swarmbus.jobs.model` (ids, limits, the strict codec), :mod:`~swarmbus.jobs.bus`
(one connection: snapshot of retained data, live stream, publishes), :mod:`~swarmbus.jobs.state`
(records and outcomes joined per job), :mod:`~swarmbus.jobs.check` (the cut-over check).
"""

from __future__ import annotations

from swarmbus.jobs.model import (
    EVENTS,
    TERMINAL,
    JobDataError,
    JobEvent,
    JobRecord,
    decode_event,
    decode_record,
    encode,
    new_job_id,
    now_rfc3339,
    validate_job_id,
)

__all__ = [
    "EVENTS",
    "TERMINAL",
    "JobDataError",
    "JobEvent",
    "JobRecord",
    "decode_event",
    "decode_record",
    "encode",
    "new_job_id",
    "now_rfc3339",
    "validate_job_id",
]
