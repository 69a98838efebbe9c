"""The delegate-job cut-over check (``swarmbus job check``): does this broker, reached with these
settings alone, carry the delegate-job loop?

Steps, each reported pass, fail or skip (:class:`Step`):

1. ``connect``: a connection with the configured broker settings (``MQTT_*`` / ``SWARMBUS_*``
   environment, the config file, flags).
2. ``subscribe``: a QoS 1 subscription to a fresh test job's topics, granted, and the
   connection's sync sentinel delivered back through it.
3. ``publish``: the test job's record (retained), ``started`` and ``completed`` (the outcome
   retained), each acknowledged.
4. ``receive``: the subscriber got ``started`` then ``completed``.
5. ``late subscriber``: a new connection that subscribes after ``completed`` gets the retained
   record and terminal event.
6. ``read-only refused``: with a credential without write permission (``--readonly-username``,
   ``--readonly-password-file``), a forged retained ``completed`` is refused: PUBACK 135 on
   MQTT 5; on MQTT 3.1.1, which cannot refuse, by its absence (the broker acknowledges and drops
   it: a marker published after it arrives, and the forged event did not). Skipped without one.
7. ``cleanup``: the test job's retained topics cleared (empty retained publishes).

The test publishes as the agent id the broker user name is (the least-privilege ACL lets an agent
write only under its own id), else ``--agent-id``, else ``swarmbus-check``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

from pydantic import SecretStr

from swarmbus.envelope import AGENT_ID_RE
from swarmbus.errors import BrokerUnreachable, PublishRefused, SwarmbusError, TimeoutExpired
from swarmbus.jobs.bus import JobBus, Seen, publish_event, publish_record
from swarmbus.jobs.model import JobEvent, JobRecord, encode, new_job_id, now_rfc3339
from swarmbus.settings import Settings
from swarmbus.topics import job_events_topic, job_filter, job_outcome_topic, job_record_topic

__all__ = ["CheckReport", "Step", "run_check"]

PASS, FAIL, SKIP = "pass", "fail", "skip"
DEFAULT_AGENT = "swarmbus-check"


@dataclass
class Step:
    """One step: its name, ``pass``/``fail``/``skip`` and what was seen."""

    name: str
    status: str
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"step": self.name, "status": self.status, "detail": self.detail}


@dataclass
class CheckReport:
    """The whole check: the broker, the test job, the steps, and whether the broker was reached."""

    broker: str
    job_id: str
    agent: str
    steps: list[Step]
    reached: bool = True

    @property
    def ok(self) -> bool:
        """True when no step failed (skipped ones do not count)."""
        return self.reached and all(s.status != FAIL for s in self.steps)

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "reached": self.reached, "broker": self.broker, "job_id": self.job_id,
                "agent": self.agent, "steps": [s.to_json() for s in self.steps]}


def check_agent(settings: Settings, agent_id: str | None) -> str:
    """The agent id the check publishes as (see the module docstring)."""
    user = settings.broker.username
    if user is not None and AGENT_ID_RE.match(user):
        return user
    return agent_id or settings.agent_id or DEFAULT_AGENT


def _wait_events(bus: JobBus, job_id: str, wanted: list[str], deadline: float) -> tuple[list[str], list[Seen]]:
    """Read live messages until the events ``wanted`` (in order, on the events topics) came or
    the deadline passed; returns the events seen and everything read."""
    got: list[str] = []
    read: list[Seen] = []
    while got != wanted:
        item = bus.next(deadline - time.monotonic())
        if item is None:
            break
        read.append(item)
        if item.event is not None and item.kind == "events" and item.event.job_id == job_id:
            got.append(item.event.event)
            if got != wanted[:len(got)]:
                break
    return got, read


def run_check(settings: Settings, *, agent_id: str | None = None, readonly: tuple[str, str] | None = None,
              timeout: float = 10.0) -> CheckReport:
    """Run the check (see the module docstring) against ``settings.broker``; ``readonly`` is a
    ``(user name, password)`` without write permission. Never raises for what the broker does:
    each problem is a failed step; an unreachable broker ends the check (``reached`` False).

    :raises ConfigError: the password file or TLS files cannot be read.
    """
    agent = check_agent(settings, agent_id)
    job_id = new_job_id()
    report = CheckReport(settings.broker.url, job_id, agent, [])
    steps = report.steps
    user = settings.broker.username or "anonymous"
    try:
        bus = JobBus(settings, agent_id=agent, filters=[job_filter(job_id)], role="check", sync_timeout=timeout)
        bus.__enter__()
    except (BrokerUnreachable, TimeoutExpired) as exc:
        connected = isinstance(exc, TimeoutExpired)
        steps.append(Step("connect", PASS if connected else FAIL, str(exc) if not connected else
                          f"{settings.broker.url} as {user}"))
        if connected:
            steps.append(Step("subscribe", FAIL, f"the sync sentinel never came back through the subscription: {exc}"))
        report.reached = connected
        return report
    try:
        tls = ", TLS" if settings.broker.tls else ""
        steps.append(Step("connect", PASS, f"{bus.link.url} as {user} (MQTT {bus.protocol}{tls})"))
        refused = bus.refused_filters
        if refused:
            steps.append(Step("subscribe", FAIL, f"the broker refused the subscription to {', '.join(refused)}"))
            return report
        steps.append(Step("subscribe", PASS, f"{job_filter(job_id)} at QoS 1 (the sync sentinel came back)"))
        published = _publish(bus, settings, agent, job_id, steps, timeout)
        if published:
            _receive(bus, job_id, steps, timeout)
            _late(settings, agent, job_id, steps, timeout)
        else:
            steps.append(Step("receive", SKIP, "nothing was published"))
            steps.append(Step("late subscriber", SKIP, "nothing was published"))
        _readonly(bus, settings, agent, job_id, readonly, steps, timeout)
        _cleanup(bus, agent, job_id, steps, timeout)
    finally:
        bus.__exit__(None, None, None)
    return report


def _publish(bus: JobBus, settings: Settings, agent: str, job_id: str, steps: list[Step], timeout: float) -> bool:
    record = JobRecord(job_id=job_id, owner=agent, delegate=agent, prompt="swarmbus job check: cut-over smoke test",
                       payload=None, created_at=now_rfc3339(), v=1)
    try:
        publish_record(bus, record, timeout=timeout)
        for event in ("started", "completed"):
            publish_event(bus, JobEvent(job_id=job_id, event=event, detail="swarmbus job check", by=agent,
                                        at=now_rfc3339(), v=1), timeout=timeout)
    except (PublishRefused, TimeoutExpired, BrokerUnreachable) as exc:
        steps.append(Step("publish", FAIL, f"as {agent}: {exc}"))
        return False
    retained = job_record_topic(job_id, agent)
    steps.append(Step("publish", PASS, f"record (retained, {retained}), started, completed (outcome retained) "
                                       "acknowledged"))
    return True


def _receive(bus: JobBus, job_id: str, steps: list[Step], timeout: float) -> None:
    got, _ = _wait_events(bus, job_id, ["started", "completed"], time.monotonic() + timeout)
    if got == ["started", "completed"]:
        steps.append(Step("receive", PASS, "the subscriber got started, then completed"))
    else:
        why = (f"got only {', '.join(got)}" if got else "got nothing") + f" within {timeout:g}s"
        if bus.protocol == "3.1.1":
            why += " (on MQTT 3.1.1 a publish the ACL denies is acknowledged and dropped)"
        steps.append(Step("receive", FAIL, f"the subscriber expected started, then completed: {why}"))


def _late(settings: Settings, agent: str, job_id: str, steps: list[Step], timeout: float) -> None:
    try:
        with JobBus(settings, agent_id=agent, filters=[job_filter(job_id)], role="check-late",
                    sync_timeout=timeout) as late:
            seen = late.snapshot()
    except (BrokerUnreachable, TimeoutExpired) as exc:
        steps.append(Step("late subscriber", FAIL, str(exc)))
        return
    outcome = next((s.event for s in seen if s.kind == "outcome" and s.event is not None and s.event.by == agent), None)
    record = any(s.record is not None and s.record.owner == agent for s in seen)
    if outcome is not None and outcome.event == "completed" and record:
        steps.append(Step("late subscriber", PASS, "a subscriber that joined after completed got the retained "
                                                   "record and terminal event"))
    else:
        missing = [what for what, there in (("the record", record), ("the terminal event", outcome is not None))
                   if not there]
        steps.append(Step("late subscriber", FAIL, f"a subscriber that joined after completed did not get "
                                                   f"{' and '.join(missing)} (is retain disabled on this broker?)"))


def _readonly(bus: JobBus, settings: Settings, agent: str, job_id: str, readonly: tuple[str, str] | None,
              steps: list[Step], timeout: float) -> None:
    name = "read-only refused"
    if readonly is None:
        steps.append(Step(name, SKIP, "no credential without write permission given (--readonly-username, "
                                      "--readonly-password-file)"))
        return
    user, password = readonly
    forger = user if AGENT_ID_RE.match(user) else "readonly"
    broker = settings.broker.model_copy(update={"username": user, "password": SecretStr(password),
                                                "password_file": None})
    topic = job_outcome_topic(job_id, forger)
    forged = encode(JobEvent(job_id=job_id, event="completed", detail="forged by swarmbus job check", by=forger,
                             at=now_rfc3339(), v=1))
    try:
        with JobBus(settings, agent_id=forger, broker=broker, role="check-ro", sync=False) as ro:
            try:
                ro.publish(topic, forged, retain=True, timeout=timeout)
            except PublishRefused as exc:
                steps.append(Step(name, PASS, f"{user}'s publish was refused: {str(exc).rsplit(': ', 1)[-1]}"))
                return
            except (TimeoutExpired, BrokerUnreachable) as exc:
                steps.append(Step(name, FAIL, f"{user}'s publish got no answer: {exc}"))
                return
            if ro.protocol == "3.1.1":
                _absent(bus, agent, job_id, topic, user, steps, timeout)
                if steps[-1].status == PASS:
                    return
            else:
                steps.append(Step(name, FAIL, f"the broker accepted a retained publish to {topic} by {user}: "
                                              "this credential can write (check the broker's ACL)"))
            with contextlib.suppress(SwarmbusError):  # it could write: it can also clear what it wrote
                ro.publish(topic, b"", retain=True, timeout=timeout)
    except (BrokerUnreachable, TimeoutExpired) as exc:
        steps.append(Step(name, FAIL, f"cannot connect as {user}, so the refusal cannot be checked: {exc}"))


def _absent(bus: JobBus, agent: str, job_id: str, topic: str, user: str, steps: list[Step], timeout: float) -> None:
    """MQTT 3.1.1: the forged publish was acknowledged. Publish a marker after it; when the marker
    arrives and the forged one has not (mosquitto routes publishes in order), it was dropped."""
    name = "read-only refused"
    marker = JobEvent(job_id=job_id, event="progress", detail="swarmbus job check marker", by=agent,
                      at=now_rfc3339(), v=1)
    deadline = time.monotonic() + timeout
    try:
        bus.publish(job_events_topic(job_id, agent), encode(marker), timeout=timeout)
    except SwarmbusError as exc:
        steps.append(Step(name, FAIL, f"could not publish the marker: {exc}"))
        return
    marked = False
    while time.monotonic() < deadline:
        item = bus.next(deadline - time.monotonic())
        if item is None:
            break
        if item.topic == topic:
            steps.append(Step(name, FAIL, f"the broker delivered a publish by {user} to {topic}: this credential "
                                          "can write (check the broker's ACL)"))
            return
        if item.event is not None and item.event.key == marker.key:
            marked = True
            break
    if not marked:
        steps.append(Step(name, FAIL, f"the marker did not come back within {timeout:g}s, so the refusal cannot "
                                      "be told on MQTT 3.1.1"))
        return
    steps.append(Step(name, PASS, f"{user}'s publish was acknowledged and dropped (MQTT 3.1.1 cannot refuse a "
                                  "publish: told by its absence)"))


def _cleanup(bus: JobBus, agent: str, job_id: str, steps: list[Step], timeout: float) -> None:
    try:
        for topic in (job_record_topic(job_id, agent), job_outcome_topic(job_id, agent)):
            bus.publish(topic, b"", retain=True, timeout=timeout)
    except SwarmbusError as exc:
        steps.append(Step("cleanup", FAIL, f"could not clear the test job's retained topics: {exc}"))
        return
    steps.append(Step("cleanup", PASS, f"cleared the retained record and outcome of {job_id}"))
