"""``swarmbus job``: the delegate-job loop (docs/jobs.md).

``submit`` publishes a retained job record and, with ``--to``, delivers the job to the delegate as
an ordinary swarmbus message (through the owner's daemon when one runs, else directly: what
``swarmbus send`` does), so the delegate's host is woken by its wake policy. ``event`` reports
``started`` / ``progress`` / ``completed`` / ``error``; the terminal ones are also retained as the
job's outcome. ``wait`` prints each event until the outcome (a late waiter gets the retained
one), ``watch`` streams events, ``list`` shows jobs from the retained data, ``check`` is the
seed's cut-over check. Everything a peer publishes under ``swarmbus/jobs/#`` is validated
(:mod:`swarmbus.jobs.model`); what is not acceptable is reported on stderr and skipped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from swarmbus.cli.common import load_settings_for, print_json, raw_config, safe_text
from swarmbus.cli.main import HelpFormatter, Parser, _agent, _broker, _common, _json
from swarmbus.errors import SwarmbusError, TimeoutExpired, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from swarmbus.jobs.bus import Seen
    from swarmbus.jobs.model import JobEvent, JobRecord

EXIT_COMPLETED, EXIT_ERROR, EXIT_TIMEOUT = 0, 1, 2
MAX_WAIT = 30 * 86400.0
MAX_WARNINGS = 50
"""Malformed-message warnings printed per command; the rest are counted."""

DESCRIPTION = """\
Delegate a job to another agent and follow it: a retained job record, lifecycle events from
the worker (started, progress, completed, error), a retained outcome a late waiter still gets.

  JID=$(swarmbus job submit --agent-id planner --to coder --prompt "fix the flaky test")
  swarmbus job event "$JID" started --agent-id coder
  swarmbus job event "$JID" completed --detail "merged in 4f2a1c" --agent-id coder
  swarmbus job wait "$JID" --timeout 600        # prints each event; exit 0 completed, 1 error, 2 timeout
  swarmbus job list
  swarmbus job check --readonly-username dash --readonly-password-file dash.pw

Topics (QoS 1; the last segment is the publishing agent, so `swarmbus broker acl` lets an agent
write only under its own id): swarmbus/jobs/<job_id>/record/<owner> (retained),
swarmbus/jobs/<job_id>/events/<by>, swarmbus/jobs/<job_id>/outcome/<by> (retained).
See docs/jobs.md.
"""

SUBMIT = """\
Publish a job record (retained on swarmbus/jobs/<job_id>/record/<owner>) and print the job id.
With --to, also send the job to that agent as a swarmbus message (subject `job <id>`; a prompt
as text/plain with the commands to report back, a payload as the record in application/json),
through the owner's daemon when one runs here, else directly, at --priority (default high, which
the default wake policy wakes the delegate's host for).

  swarmbus job submit --agent-id planner --to coder --prompt "fix the flaky test"
  swarmbus job submit --agent-id planner --payload '{"repo": "api", "task": "lint"}' --json
  echo '{"n": 3}' | swarmbus job submit --agent-id planner --to coder --payload-file -

Exit codes: 0 recorded (and sent); 1 refused (the job id exists, the broker's ACL denies it), or
the record was published but the message could not be sent; 2 usage error or broker unreachable.
"""

EVENT = """\
Report an event of a job, as --agent-id BY (on swarmbus/jobs/<job_id>/events/<by>). completed and
error end the job: they are also published retained on swarmbus/jobs/<job_id>/outcome/<by>, so a
waiter that comes later still gets them. A job that already has an outcome takes no more events
(the outcome is printed). When the job's record names a delegate, only the delegate and the
owner may report (`job wait` ignores anyone else).

  swarmbus job event j-3f9c01ab77d2 started --agent-id coder
  swarmbus job event j-3f9c01ab77d2 progress --detail "3 of 5 files" --agent-id coder
  swarmbus job event j-3f9c01ab77d2 error --detail "tests fail on main" --agent-id coder

Exit codes: 0 published; 1 refused (the job already ended, BY may not report on it, or the
broker's ACL denies BY the topic); 2 usage error or broker unreachable.
"""

WAIT = """\
Wait for a job's outcome, printing each event as it arrives (one JSON object per line with
--json). A job that already ended prints its retained outcome at once, however late.

  swarmbus job wait j-3f9c01ab77d2 --timeout 600

Exit codes: 0 completed, 1 error, 2 timed out (also: usage error, broker unreachable).
"""

WATCH = """\
Print the events of every job (or of JOB), and records as they are submitted, until interrupted
(or --timeout). --retained first prints the retained records and outcomes already there.

  swarmbus job watch
  swarmbus job watch j-3f9c01ab77d2 --json

Exit codes: 0 stopped by --timeout, 130 interrupted, 2 usage error or broker unreachable.
"""

LIST = """\
List jobs from the broker's retained data: each record, and its outcome when it has one. The
state is submitted, completed or error: started and progress events are not retained, so a job
that is being worked on still shows submitted.

  swarmbus job list
  swarmbus job list --owner planner --json

Exit codes: 0 listed (also when there are none), 1 the broker did not answer in time, 2 usage
error or broker unreachable.
"""

CHECK = """\
The delegate-job cut-over check: against the broker the settings name (e.g. only MQTT_BROKER,
MQTT_PORT, MQTT_TLS, MQTT_CA_CERTS, MQTT_USERNAME, MQTT_PASSWORD in the environment), verify and
report line by line: connect; subscribe; publish a test job's record and events; the subscriber
receives them; a late subscriber gets the retained terminal event; and, given a credential without
write permission (e.g. an observer of `swarmbus broker acl --observer`), that its publish is
refused (PUBACK 135 on MQTT 5; on MQTT 3.1.1, which cannot refuse, by its absence). The test
job's retained topics are cleared afterwards. It publishes as the agent the broker user name is.

  export MQTT_BROKER=bus.internal MQTT_PORT=8883 MQTT_TLS=1 MQTT_CA_CERTS=$PWD/ca.crt
  export MQTT_USERNAME=planner MQTT_PASSWORD=...
  swarmbus job check --readonly-username dash --readonly-password-file dash.pw

Exit codes: 0 every step passed, 1 a step failed, 2 usage error or broker unreachable.
"""


# -- arguments ---------------------------------------------------------------------------------------


def configure(p: argparse.ArgumentParser) -> None:
    """Add this command's description and arguments to p."""
    p.description = DESCRIPTION
    sub = p.add_subparsers(dest="job_action", metavar="ACTION", parser_class=Parser, required=True)

    def add(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=description, formatter_class=HelpFormatter)

    s = add("submit", "publish a job record; with --to, send the job to that agent", SUBMIT)
    _agent(s, required_hint="; the job's owner")
    s.add_argument("--to", metavar="ID", help="the agent the job is delegated to (it gets the job as a message)")
    what = s.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", metavar="TEXT", help="what to do, as text")
    what.add_argument("--payload", metavar="JSON", help="what to do, as any JSON value")
    what.add_argument("--payload-file", metavar="PATH", help="read the JSON payload from a file, or `-` for stdin")
    s.add_argument("--job-id", metavar="ID", help="use this id (1-64 of a-z 0-9 _ -) instead of a new j-<12 hex>")
    s.add_argument("--priority", default="high", type=str.lower, choices=("low", "normal", "high"),
                   help="the message's priority (default high: the default wake policy wakes on it)")
    s.add_argument("--direct", action="store_true", help="send the message directly, not through the daemon")
    _json(s)
    _broker(s)
    _common(s)

    e = add("event", "report a job's event (completed and error end it)", EVENT)
    e.add_argument("job", metavar="JOB", help="the job id")
    e.add_argument("event", choices=("started", "progress", "completed", "error"), help="what happened")
    e.add_argument("--detail", metavar="TEXT", help="a line about it (at most 8192 characters)")
    _agent(e, required_hint="; who reports")
    _json(e)
    _broker(e)
    _common(e)

    w = add("wait", "wait for a job's outcome, printing each event", WAIT)
    w.add_argument("job", metavar="JOB", help="the job id")
    w.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS", help="give up after this (exit 2; "
                   "default 3600)")
    _agent(w, required_hint="; optional: the owner whose record counts if two claim the job id")
    _json(w)
    _broker(w)
    _common(w)

    t = add("watch", "stream the events of every job, or of one", WATCH)
    t.add_argument("job", metavar="JOB", nargs="?", help="only this job")
    t.add_argument("--retained", action="store_true", help="first print the retained records and outcomes")
    t.add_argument("--timeout", type=float, metavar="SECONDS", help="stop after this long (exit 0)")
    _agent(t)
    _json(t)
    _broker(t)
    _common(t)

    li = add("list", "list jobs from the retained records and outcomes", LIST)
    li.add_argument("--owner", metavar="ID", help="only the jobs of this owner")
    _agent(li)
    _json(li)
    _broker(li)
    _common(li)

    c = add("check", "the cut-over check: connect, subscribe, publish, retained outcome, read-only refused", CHECK)
    c.add_argument("--readonly-username", metavar="USER", help="a broker user without write permission")
    c.add_argument("--readonly-password-file", metavar="PATH", help="the file holding that user's password")
    c.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                   help="how long each step may wait (default 10)")
    _agent(c, required_hint="; used when the broker user name is not an agent id")
    _json(c)
    _broker(c)
    _common(c)


# -- shared helpers ----------------------------------------------------------------------------------


class _Warnings:
    """One-line warnings on stderr about what peers sent, at most MAX_WARNINGS of them."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, text: str) -> None:
        self.count += 1
        if self.count <= MAX_WARNINGS:
            sys.stderr.write(f"swarmbus: warning: {safe_text(text)}\n")
        elif self.count == MAX_WARNINGS + 1:
            sys.stderr.write("swarmbus: warning: more malformed job messages; not reporting them one by one\n")
        sys.stderr.flush()

    def malformed(self, seen: Seen) -> None:
        self(f"ignored {seen.topic[:200]}: {seen.error}")


def _job_id(value: str) -> str:
    from swarmbus.jobs.model import validate_job_id

    return validate_job_id(value)


def _timeout(value: float | None, flag: str = "--timeout") -> float | None:
    if value is not None and not 0 < value <= MAX_WAIT:
        raise UsageError(f"{flag} must be more than 0 and at most {MAX_WAIT:.0f} seconds (30 days)")
    return value


def _event_line(event: JobEvent, *, retained: bool = False) -> str:
    detail = f": {event.detail}" if event.detail else ""
    return safe_text(f"{event.at}  {event.job_id}  {event.event} by {event.by}{detail}"
                     + (" (retained outcome)" if retained else ""))


def _emit_event(event: JobEvent, as_json: bool, *, retained: bool = False) -> None:
    if as_json:
        print_json({"kind": "event", **event.to_dict(), "retained": retained})
    else:
        print(_event_line(event, retained=retained), flush=True)


def _summary(prompt: str | None, width: int = 60) -> str:
    """A prompt on one line, cut at ``width`` characters; ``(payload)`` without one."""
    if prompt is None:
        return "(payload)"
    text = " ".join(prompt.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def _emit_record(record: JobRecord, as_json: bool) -> None:
    if as_json:
        print_json({"kind": "record", **record.to_dict()})
    else:
        to = f" to {record.delegate}" if record.delegate else ""
        print(f"{record.created_at}  {record.job_id}  submitted by {record.owner}{to}: "
              f"{safe_text(_summary(record.prompt))}", flush=True)


def _describe(event: JobEvent) -> str:
    detail = f" ({event.detail})" if event.detail else ""
    return safe_text(f"{event.event} by {event.by} at {event.at}{detail}")


def run(args: argparse.Namespace) -> int:
    """Run the command; returns the exit code."""
    action = {"submit": _submit, "event": _event, "wait": _wait, "watch": _watch, "list": _list,
              "check": _check}[args.job_action]
    return action(args)


# -- submit ------------------------------------------------------------------------------------------


def _payload(args: argparse.Namespace) -> Any:
    from swarmbus.jobs.model import MAX_RECORD_BYTES, JobDataError, decode_json

    text: str | bytes
    if args.payload is not None:
        text, where = args.payload, "--payload"
    else:
        where = f"--payload-file {args.payload_file}"
        try:
            raw = sys.stdin.buffer.read() if args.payload_file == "-" else Path(args.payload_file).expanduser().read_bytes()
        except OSError as exc:
            raise UsageError(f"{where}: {exc.strerror}") from None
        text = raw
    try:
        return decode_json(text, max_bytes=MAX_RECORD_BYTES, what=where)
    except JobDataError as exc:
        raise UsageError(str(exc)) from None


def _message_body(record: JobRecord) -> tuple[str, str]:
    """(body, content type) of the message that delivers ``record`` to its delegate."""
    from swarmbus.jobs.model import encode

    if record.prompt is None:
        return encode(record).decode("utf-8"), "application/json"
    jid, by = record.job_id, record.delegate
    footer = (f"\n\n-- swarmbus job {jid} from {record.owner} --\n"
              "Report on it (completed and error end it; --detail says what happened):\n"
              f"  swarmbus job event {jid} started --agent-id {by}\n"
              f"  swarmbus job event {jid} completed --detail \"...\" --agent-id {by}\n"
              f"  swarmbus job event {jid} error --detail \"...\" --agent-id {by}\n")
    return record.prompt + footer, "text/plain"


def _submit(args: argparse.Namespace) -> int:
    from swarmbus.envelope import BROADCAST, validate_agent_id
    from swarmbus.jobs.bus import JobBus, publish_record
    from swarmbus.jobs.model import JobRecord, encode, make, new_job_id, now_rfc3339
    from swarmbus.topics import job_filter

    if args.to is not None:
        validate_agent_id(args.to, role="--to agent id")
        if args.to == BROADCAST:
            raise UsageError("--to: a job goes to one agent, not to broadcast")
    job_id = _job_id(args.job_id) if args.job_id is not None else new_job_id()
    prompt = args.prompt
    payload = None if prompt is not None else _payload(args)
    settings = load_settings_for(args)
    owner = settings.require_agent_id()
    record: JobRecord = make(JobRecord, "record", job_id=job_id, owner=owner, delegate=args.to, prompt=prompt,
                             payload=payload, created_at=now_rfc3339(), v=1)
    encode(record)  # the size limit, before connecting
    with JobBus(settings, agent_id=owner, filters=[job_filter(job_id, "record")]) as bus:
        taken = sorted({s.record.owner for s in bus.snapshot() if s.record is not None and s.record.job_id == job_id})
        if taken:
            raise SwarmbusError(f"job {job_id} already exists (recorded by {', '.join(taken)}): choose another "
                                "--job-id, or leave it out for a new one")
        publish_record(bus, record, confirm=True)
    delivery: dict[str, str] | None = None
    if record.delegate is not None:
        try:
            delivery = _deliver(args, record)
        except SwarmbusError as exc:
            raise type(exc)(f"job {job_id} was recorded, but the message to {record.delegate} was not sent: {exc}",
                            hint=exc.hint) from None
    if args.json:
        print_json({"job_id": job_id, "record": record.to_dict(), "delivery": delivery})
    else:
        print(job_id)
        if delivery is not None and delivery["status"] == "queued":
            sys.stderr.write(f"swarmbus: note: the daemon of {owner} queued the message to {record.delegate}: it "
                             "publishes it when the broker is back\n")
    return 0


def _deliver(args: argparse.Namespace, record: JobRecord) -> dict[str, str]:
    """Send the job to its delegate as ``swarmbus send`` would: through the owner's daemon when one
    runs (and the broker flags name no other broker), else directly. Returns ``{"status":
    "published" or "queued", "via": "daemon" or "direct", "id": the message id}``."""
    from swarmbus.cli.send import deliver
    from swarmbus.envelope import new_envelope

    assert record.delegate is not None
    body, content_type = _message_body(record)
    envelope = new_envelope(record.owner, record.delegate, f"job {record.job_id}", body,
                            content_type=content_type, priority=args.priority)
    status, via = deliver(args, raw_config(args), envelope)
    return {"status": status, "via": via, "id": envelope.id}


# -- event -------------------------------------------------------------------------------------------


def _event(args: argparse.Namespace) -> int:
    from swarmbus.jobs.bus import JobBus, publish_event
    from swarmbus.jobs.model import JobEvent, encode, make, now_rfc3339
    from swarmbus.jobs.state import JobView, collect
    from swarmbus.topics import job_filter

    job_id = _job_id(args.job)
    settings = load_settings_for(args)
    by = settings.require_agent_id()
    event: JobEvent = make(JobEvent, "event", job_id=job_id, event=args.event, detail=args.detail, by=by,
                           at=now_rfc3339(), v=1)
    encode(event)
    with JobBus(settings, agent_id=by, filters=[job_filter(job_id)]) as bus:
        view = collect(bus.snapshot()).get(job_id) or JobView(job_id)
        if view.records and not any(view.allowed(by, owner) for owner in view.records):
            record = view.record()
            assert record is not None
            raise SwarmbusError(f"job {job_id} is delegated to {record.delegate} by {record.owner}: only they report "
                                f"on it, not {by} (`job wait` would ignore the event); nothing was published")
        outcome = view.outcome()
        if outcome is not None:
            raise SwarmbusError(f"job {job_id} already ended: {_describe(outcome)}; the {event.event} event was "
                                "not published")
        if not view.records:
            sys.stderr.write(f"swarmbus: note: no record of job {job_id} on the broker; publishing the event anyway\n")
        publish_event(bus, event, confirm=True)
    if args.json:
        print_json(event.to_dict())
    else:
        print(f"job {job_id}: {event.event} by {by}" + (" (retained as its outcome)" if event.terminal else ""))
    return 0


# -- wait --------------------------------------------------------------------------------------------


def _wait(args: argparse.Namespace) -> int:
    from swarmbus.jobs.bus import JobBus
    from swarmbus.jobs.state import JobView, collect
    from swarmbus.topics import job_filter

    job_id = _job_id(args.job)
    timeout = _timeout(args.timeout)
    assert timeout is not None
    deadline = time.monotonic() + timeout
    settings = load_settings_for(args)
    prefer = settings.agent_id
    warn = _Warnings()
    seen_keys: set[tuple[str, str, str, str]] = set()
    last: JobEvent | None = None
    try:
        with JobBus(settings, agent_id=prefer, filters=[job_filter(job_id)],
                    sync_timeout=max(0.1, min(10.0, deadline - time.monotonic()))) as bus:
            snapshot = bus.snapshot()
            for item in snapshot:
                if item.error is not None:
                    warn.malformed(item)
            view = collect(snapshot).get(job_id) or JobView(job_id)
            _conflicts(view, prefer, warn)
            outcome = view.outcome(prefer)
            if outcome is not None:
                _emit_event(outcome, args.json, retained=True)
                return EXIT_COMPLETED if outcome.event == "completed" else EXIT_ERROR
            if not view.records:
                sys.stderr.write(f"swarmbus: note: no record of job {job_id} on the broker yet; waiting up to "
                                 f"{timeout:g}s for its events\n")
            while (left := deadline - time.monotonic()) > 0:
                got = bus.next(min(left, 1.0))
                if got is None:
                    continue
                if got.error is not None:
                    warn.malformed(got)
                    continue
                if got.record is not None:
                    view.add(got)
                    continue
                event = got.event
                if event is None or event.job_id != job_id or event.key in seen_keys:
                    continue
                seen_keys.add(event.key)
                if not view.allowed(event.by, prefer):
                    record = view.record(prefer)
                    warn(f"ignored {event.event} by {event.by}: job {job_id} is delegated to "
                         f"{record.delegate if record else '?'}")
                    continue
                _emit_event(event, args.json)
                last = event
                if event.terminal:
                    return EXIT_COMPLETED if event.event == "completed" else EXIT_ERROR
    except TimeoutExpired as exc:
        sys.stderr.write(f"swarmbus: error: {exc}\n")
        return EXIT_TIMEOUT
    so_far = f"; last event: {last.event} by {last.by} at {last.at}" if last else "; no event arrived"
    sys.stderr.write(f"swarmbus: error: timed out after {timeout:g}s waiting for job {job_id} to end{so_far}\n")
    return EXIT_TIMEOUT


def _conflicts(view: Any, prefer: str | None, warn: _Warnings) -> None:
    for other in view.conflicts(prefer):
        chosen = view.record(prefer)
        warn(f"job {view.job_id} has another record, by {other.owner} (created {other.created_at}); using "
             f"{chosen.owner}'s")


# -- watch -------------------------------------------------------------------------------------------


def _watch(args: argparse.Namespace) -> int:
    from swarmbus.jobs.bus import JobBus
    from swarmbus.topics import job_filter

    job_id = _job_id(args.job) if args.job is not None else None
    timeout = _timeout(args.timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    settings = load_settings_for(args)
    warn = _Warnings()
    seen: dict[tuple[str, ...], None] = {}  # insertion-ordered: the oldest are dropped first

    def fresh(key: tuple[str, ...]) -> bool:
        if key in seen:
            return False
        seen[key] = None
        if len(seen) > 10_000:
            del seen[next(iter(seen))]
        return True

    def show(item: Seen, *, retained: bool = False) -> None:
        if item.error is not None:
            warn.malformed(item)
        elif item.record is not None:
            if fresh(("record", item.record.job_id, item.record.owner, item.record.created_at)):
                _emit_record(item.record, args.json)
        elif item.event is not None and fresh(item.event.key):
            _emit_event(item.event, args.json, retained=retained)

    dropped = 0
    with JobBus(settings, agent_id=settings.agent_id, filters=[job_filter(job_id)], role="watch", quiet=False) as bus:
        for item in bus.snapshot():  # the retained state: shown with --retained, never again after a reconnect
            if args.retained:
                show(item, retained=item.kind == "outcome")
            elif item.record is not None:
                fresh(("record", item.record.job_id, item.record.owner, item.record.created_at))
            elif item.event is not None:
                fresh(item.event.key)
            elif item.error is not None:
                warn.malformed(item)
        while deadline is None or (left := deadline - time.monotonic()) > 0:
            got = bus.next(1.0 if deadline is None else min(left, 1.0))
            if bus.dropped > dropped:
                warn(f"{bus.dropped - dropped} job messages dropped: they came faster than they could be shown")
                dropped = bus.dropped
            if got is not None:
                show(got)
    return 0


# -- list --------------------------------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    from swarmbus.envelope import validate_agent_id
    from swarmbus.jobs.bus import JobBus
    from swarmbus.jobs.state import collect
    from swarmbus.topics import job_filter

    owner = validate_agent_id(args.owner, role="--owner agent id") if args.owner is not None else None
    settings = load_settings_for(args)
    warn = _Warnings()
    with JobBus(settings, agent_id=settings.agent_id, filters=[job_filter(None, "record"), job_filter(None, "outcome")],
                role="jobs") as bus:
        snapshot = bus.snapshot()
    for item in snapshot:
        if item.error is not None:
            warn.malformed(item)
    rows: list[dict[str, Any]] = []
    for view in collect(snapshot).values():
        _conflicts(view, owner, warn)
        record = view.record(owner)
        if owner is not None and (record is None or record.owner != owner):
            continue
        outcome = view.outcome(owner)
        rows.append({
            "job_id": view.job_id,
            "state": view.state(owner),
            "owner": record.owner if record else None,
            "delegate": record.delegate if record else None,
            "created_at": record.created_at if record else None,
            "prompt": record.prompt if record else None,
            "payload": record.payload if record else None,
            "outcome": outcome.to_dict() if outcome else None,
        })
    rows.sort(key=lambda r: (r["created_at"] is None, r["created_at"] or "", r["job_id"]))
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        sys.stderr.write("no jobs on the broker" + (f" owned by {owner}" if owner else "") + "\n")
        return 0
    for row in rows:
        who = f"{row['owner'] or '?'} -> {row['delegate'] or '-'}"
        ended = row["outcome"]
        if ended is not None:
            detail = f": {ended['detail']}" if ended["detail"] else ""
            said = f"{ended['event']} by {ended['by']} at {ended['at']}{detail}"
        else:
            said = "no record (an outcome only)" if row["owner"] is None else "no outcome yet"
        what = ""
        if row["owner"] is not None:
            what = f"  {row['created_at']}  {_summary(row['prompt'], 50)}"
        print(safe_text(f"{row['job_id']}  {row['state']:<9}  {who}{what}  [{said}]"))
    return 0


# -- check -------------------------------------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    from swarmbus.jobs.check import run_check

    timeout = _timeout(args.timeout)
    assert timeout is not None
    if (args.readonly_username is None) != (args.readonly_password_file is None):
        raise UsageError("--readonly-username and --readonly-password-file go together")
    readonly = None
    if args.readonly_username is not None:
        try:
            secret = Path(args.readonly_password_file).expanduser().read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise UsageError(f"--readonly-password-file {args.readonly_password_file}: {why}") from None
        readonly = (args.readonly_username, secret)
    raw = raw_config(args)
    settings = load_settings_for(args)
    report = run_check(settings, agent_id=settings.agent_id, readonly=readonly, timeout=timeout)
    if args.json:
        print_json(report.to_json())
    else:
        source = raw.sources.get("broker.host", "the default")
        print(f"cut-over check: broker {settings.broker.url} (host from {source}), test job {report.job_id}, "
              f"as {report.agent}")
        for step in report.steps:
            print(safe_text(f"{step.status.upper():<4}  {step.name}: {step.detail}"))
        failed = sum(s.status == "fail" for s in report.steps)
        passed = sum(s.status == "pass" for s in report.steps)
        skipped = sum(s.status == "skip" for s in report.steps)
        tail = f", {skipped} skipped" if skipped else ""
        print(f"cut-over check: {'passed' if report.ok else 'FAILED'} ({passed} passed, {failed} failed{tail})")
    if not report.reached:
        return 2
    return 0 if report.ok else 1
