"""``swarmbus job``: the delegate-job loop end to end on a private mosquitto with the least-privilege
ACL of ``swarmbus broker acl`` (one broker per test module: every test uses its own job ids), the
retained outcome for a late waiter, exit codes, refusals, hostile payloads, a broker restart and the
cut-over check (``job check``)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import SwarmEnv, wait_for
from peers import RawClient, py_command
from swarmbus import testing
from swarmbus.dev_broker import (
    BrokerConfig,
    RunningBroker,
    find_mosquitto,
    free_port,
    start_broker,
    wait_until_listening,
)
from swarmbus.jobs.model import new_job_id

AGENTS = ("planner", "coder", "mallory")
OBSERVER = "dash"


@dataclass
class Bus:
    """A secured broker and the ``swarmbus broker acl`` set-up it runs with."""

    root: Path
    acl_dir: Path
    broker: RunningBroker

    @property
    def url(self) -> str:
        return self.broker.url

    def password_file(self, principal: str) -> Path:
        return self.acl_dir / "agents" / principal / "password"

    def password(self, principal: str) -> str:
        return self.password_file(principal).read_text().strip()

    def env(self, principal: str, **overrides: str) -> dict[str, str]:
        """What the principal's machine has: its generated config file (user name, password file,
        agent id) and the broker's URL."""
        return testing.isolated_env(self.root / principal, self.url, heartbeat=1, reconnect=(0.1, 0.5),
                                    SWARMBUS_CONFIG=str(self.acl_dir / "agents" / principal / "swarmbus.toml"),
                                    **overrides)

    def cli(self, principal: str, *args: str, env: dict[str, str] | None = None, input: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return testing.run_cli({**self.env(principal), **(env or {})}, *args, input=input, timeout=timeout)

    def job(self, principal: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.cli(principal, "job", *args, **kwargs)

    def submit(self, owner: str = "planner", *args: str) -> str:
        proc = self.job(owner, "submit", *args)
        ok(proc)
        return proc.stdout.strip()

    def raw(self, principal: str, *topics: str) -> RawClient:
        return RawClient(self.broker.port, *topics, username=principal, password=self.password(principal))


def ok(proc: subprocess.CompletedProcess[str], code: int = 0) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    return proc


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in lines(text)]


def acl_setup(root: Path, url: str) -> Path:
    acl_dir = root / "auth"
    env = testing.isolated_env(root, url)
    (root / "config.toml").write_text("")
    ok(testing.run_cli(env, "broker", "acl", *AGENTS, "--observer", OBSERVER, "--dir", str(acl_dir),
                       "--broker", url))
    return acl_dir


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bus]:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed", pytrace=False)
    root = tmp_path_factory.mktemp("jobs")
    running = None
    for attempt in range(3):  # a free port can be taken before mosquitto binds it
        port = free_port()
        acl_dir = acl_setup(root, f"mqtt://127.0.0.1:{port}")
        try:
            running = start_broker(BrokerConfig(state_dir=root / "broker", port=port, password_file=acl_dir / "passwd",
                                                acl_file=acl_dir / "acl", allow_anonymous=False))
            break
        except RuntimeError:
            if attempt == 2:
                raise
    assert running is not None
    try:
        yield Bus(root, acl_dir, running)
    finally:
        running.stop(timeout=5)


class Background:
    """A CLI process whose output goes to files, read while it runs."""

    def __init__(self, env: dict[str, str], *args: str, where: Path) -> None:
        where.mkdir(parents=True, exist_ok=True)
        self.out, self.err = where / "stdout", where / "stderr"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "swarmbus", *args], stdout=out, stderr=err, env=env)

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def background(tmp_path: Path) -> Iterator[list[Background]]:
    started: list[Background] = []
    yield started
    for proc in started:
        proc.kill()


def start(started: list[Background], env: dict[str, str], *args: str, where: Path) -> Background:
    proc = Background(env, *args, where=where)
    started.append(proc)
    return proc


# -- the loop, and a late waiter ------------------------------------------------------------------


def test_live_wait_prints_each_event_and_a_late_wait_gets_the_retained_outcome(
        bus: Bus, tmp_path: Path, background: list[Background]) -> None:
    job = new_job_id()
    # the waiter starts before the job exists: it says so once it has subscribed (our cue)
    waiter = start(background, bus.env("planner"), "job", "wait", job, "--timeout", "30", "--json",
                   where=tmp_path / "waiter")
    wait_for(lambda: "no record of job" in waiter.stderr(), 20, what="the waiter to subscribe")
    assert bus.submit("planner", "--job-id", job, "--to", "coder", "--prompt", "fix the flaky test") == job
    for event, detail in (("started", None), ("progress", "2 of 3"), ("completed", "merged in 4f2a1c")):
        ok(bus.job("coder", "event", job, event, *(["--detail", detail] if detail else []), "--agent-id", "coder"))
    assert waiter.wait() == 0, waiter.stderr()
    events = json_lines(waiter.stdout())
    assert [(e["event"], e["by"], e["detail"], e["retained"]) for e in events] == [
        ("started", "coder", None, False), ("progress", "coder", "2 of 3", False),
        ("completed", "coder", "merged in 4f2a1c", False)]

    late = ok(bus.job("dash", "wait", job, "--timeout", "5"))  # an observer, long after the job ended
    assert len(lines(late.stdout)) == 1, late.stdout
    assert late.stdout.rstrip().endswith(f"{job}  completed by coder: merged in 4f2a1c (retained outcome)")
    listed = json.loads(ok(bus.job("dash", "list", "--json")).stdout)
    mine = [row for row in listed if row["job_id"] == job]
    assert len(mine) == 1 and mine[0]["state"] == "completed" and mine[0]["owner"] == "planner"
    assert mine[0]["delegate"] == "coder" and mine[0]["prompt"] == "fix the flaky test"
    assert mine[0]["outcome"]["detail"] == "merged in 4f2a1c"


def test_wait_exit_codes(bus: Bus) -> None:
    failed = bus.submit("planner", "--to", "coder", "--payload", '{"task": "lint", "n": [1, 2.5, null]}')
    ok(bus.job("coder", "event", failed, "error", "--detail", "lint crashed", "--agent-id", "coder"))
    proc = ok(bus.job("planner", "wait", failed, "--timeout", "5"), 1)
    assert "error by coder: lint crashed" in proc.stdout

    pending = bus.submit("planner", "--prompt", "nobody will do this")
    ok(bus.job("coder", "event", pending, "started", "--agent-id", "coder"))
    began = time.monotonic()
    proc = ok(bus.job("planner", "wait", pending, "--timeout", "0.5"), 2)
    assert time.monotonic() - began < 10
    assert f"timed out after 0.5s waiting for job {pending}" in proc.stderr

    for args in (("wait", "Not-An-Id"), ("wait", pending, "--timeout", "0"), ("event", pending, "done")):
        proc = ok(bus.job("planner", *args), 2)
        assert proc.stderr.startswith("swarmbus: error:"), proc.stderr


def test_submit_usage_errors(bus: Bus, tmp_path: Path) -> None:
    for args, words in (
        (("--payload", "{bad"), "--payload is not JSON"),
        (("--payload", "null"), "a record holds a prompt or a non-null payload"),
        (("--payload", '{"a": NaN}'), "NaN"),
        (("--payload-file", str(tmp_path / "missing.json")), "No such file"),
        (("--prompt", "x", "--to", "broadcast"), "not to broadcast"),
        (("--prompt", "x", "--to", "Not An Id"), "invalid --to agent id"),
        (("--prompt", "x", "--job-id", "UPPER"), "invalid job id 'UPPER'"),
        (("--prompt", "x" * 50_001), "prompt: String should have at most 50000 characters"),
        (("--prompt", "x", "--payload", "1"), "not allowed with argument"),
    ):
        proc = ok(bus.job("planner", "submit", *args), 2)
        assert words in proc.stderr, (args, proc.stderr)
    payload = tmp_path / "job.json"
    payload.write_text('{"files": ["a.py", "b.py"], "deep": {"x": [1, 2.5, true, null]}}')
    out = json.loads(ok(bus.job("planner", "submit", "--payload-file", str(payload), "--json")).stdout)
    assert out["record"]["payload"] == {"files": ["a.py", "b.py"], "deep": {"x": [1, 2.5, True, None]}}
    assert out["delivery"] is None and out["record"]["delegate"] is None and out["record"]["prompt"] is None
    piped = ok(bus.job("planner", "submit", "--payload-file", "-", input='"from stdin"'))
    listed = json.loads(ok(bus.job("planner", "list", "--json", "--owner", "planner")).stdout)
    assert next(r for r in listed if r["job_id"] == piped.stdout.strip())["payload"] == "from stdin"


def test_submit_refuses_a_taken_id_and_a_second_outcome(bus: Bus) -> None:
    job = bus.submit("planner", "--job-id", f"fixed-{new_job_id()}", "--payload", "[1, 2]")
    proc = ok(bus.job("planner", "submit", "--job-id", job, "--prompt", "again"), 1)
    assert f"job {job} already exists (recorded by planner)" in proc.stderr

    ok(bus.job("coder", "event", job, "completed", "--detail", "first", "--agent-id", "coder"))
    proc = ok(bus.job("coder", "event", job, "error", "--detail", "second", "--agent-id", "coder"), 1)
    assert f"job {job} already ended: completed by coder" in proc.stderr and "(first)" in proc.stderr
    proc = ok(bus.job("planner", "wait", job, "--timeout", "5", "--json"))
    assert [(e["event"], e["detail"]) for e in json_lines(proc.stdout)] == [("completed", "first")]


# -- refusals --------------------------------------------------------------------------------------


def test_a_worker_without_write_permission_is_refused(bus: Bus) -> None:
    # a job delegated to a principal without write permission (an observer): MQTT 5, PUBACK 135
    job = bus.submit("planner", "--to", OBSERVER, "--prompt", "you cannot report")
    proc = ok(bus.job("dash", "event", job, "started", "--agent-id", "dash"), 1)
    assert proc.stderr.startswith(f"swarmbus: error: mqtt://127.0.0.1:{bus.broker.port} refused the publish to "
                                  f"swarmbus/jobs/{job}/events/dash: Not authorized\n"), proc.stderr
    assert "hint:" in proc.stderr and "swarmbus broker acl" in proc.stderr
    proc = ok(bus.job("dash", "event", job, "completed", "--agent-id", "dash"), 1)
    assert f"refused the publish to swarmbus/jobs/{job}/outcome/dash: Not authorized" in proc.stderr
    # the same on MQTT 3.1.1, which cannot refuse: the broker acknowledges and drops it
    proc = ok(bus.job("dash", "event", job, "started", "--agent-id", "dash", "--mqtt-version", "3.1.1"), 1)
    assert "did not deliver it: on MQTT 3.1.1 that is how a broker's ACL refuses a publish" in proc.stderr
    ok(bus.job("planner", "wait", job, "--timeout", "0.3"), 2)  # nothing reached the broker

    job = bus.submit("planner", "--to", "coder", "--prompt", "only coder may report")
    # another agent posing as the delegate: its credentials may not write under coder's id
    proc = ok(bus.job("mallory", "event", job, "completed", "--agent-id", "coder"), 1)
    assert f"refused the publish to swarmbus/jobs/{job}/outcome/coder: Not authorized" in proc.stderr
    # under its own id the ACL lets it write, but the job is not delegated to it
    proc = ok(bus.job("mallory", "event", job, "completed", "--agent-id", "mallory"), 1)
    assert f"job {job} is delegated to coder by planner: only they report on it, not mallory" in proc.stderr
    ok(bus.job("planner", "wait", job, "--timeout", "0.3"), 2)  # no outcome reached the broker


def test_events_by_others_than_the_delegate_are_ignored_by_wait(bus: Bus) -> None:
    job = bus.submit("planner", "--to", "coder", "--prompt", "p")
    forged = {"job_id": job, "event": "completed", "detail": "forged", "by": "mallory",
              "at": "2020-01-01T00:00:00Z", "v": 1}
    mallory = bus.raw("mallory")
    try:  # mallory may write under its own id: a retained outcome claiming the job is done
        assert mallory.publish_reason(f"swarmbus/jobs/{job}/outcome/mallory", json.dumps(forged).encode(),
                                      retain=True) < 0x80
    finally:
        mallory.close()
    proc = ok(bus.job("planner", "wait", job, "--timeout", "0.3"), 2)
    assert "forged" not in proc.stdout
    listed = json.loads(ok(bus.job("planner", "list", "--json", "--owner", "planner")).stdout)
    assert next(row for row in listed if row["job_id"] == job)["state"] == "submitted"
    ok(bus.job("coder", "event", job, "completed", "--detail", "real", "--agent-id", "coder"))
    proc = ok(bus.job("planner", "wait", job, "--timeout", "5"))
    assert "completed by coder: real" in proc.stdout and "forged" not in proc.stdout


# -- the whole loop through the daemons: the delegate's host is woken and reports back ---------------

WORKER = """\
import os, subprocess, sys
config, state, url, log = sys.argv[1:5]
job = os.environ["SWARMBUS_SUBJECT"].split()[1]
body = sys.stdin.read()
env = {"PATH": os.environ.get("PATH", ""), "SWARMBUS_CONFIG": config, "SWARMBUS_STATE_DIR": state,
       "SWARMBUS_BROKER_URL": url, "SWARMBUS_LOAD_PLUGINS": ""}
for args in (["started"], ["completed", "--detail", "did: " + body.splitlines()[0]]):
    done = subprocess.run([sys.executable, "-m", "swarmbus", "job", "event", job, *args, "--agent-id", "coder"],
                          env=env, capture_output=True, text=True)
    open(log, "a").write(f"{args[0]} {done.returncode} {done.stderr}\\n")
"""


@pytest.fixture
def daemons() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        testing.stop_daemon(proc, timeout=10)


def test_the_delegate_loop_through_the_daemons(bus: Bus, tmp_path: Path,
                                               daemons: list[subprocess.Popen[bytes]]) -> None:
    log = tmp_path / "worker.log"
    invoke = py_command(WORKER, str(bus.acl_dir / "agents" / "coder" / "swarmbus.toml"),
                        str(tmp_path / "worker-state"), bus.url, str(log))
    for agent, flags in (("coder", ("--invoke", invoke)), ("planner", ())):
        env = bus.env(agent, SWARMBUS_LOAD_PLUGINS="priority")
        log_path = tmp_path / f"{agent}.log"
        daemons.append(testing.start_daemon(env, agent, *flags, log_path=log_path))
        testing.wait_daemon_connected(env, agent, daemons[-1], 20, log_path=log_path)
    proc = ok(bus.job("planner", "submit", "--to", "coder", "--prompt", "rename the module\nand fix imports",
                      "--json", env={"SWARMBUS_LOAD_PLUGINS": "priority"}))
    out = json.loads(proc.stdout)
    assert out["delivery"]["via"] == "daemon" and out["delivery"]["status"] == "published"
    proc = ok(bus.job("planner", "wait", out["job_id"], "--timeout", "30"))
    assert lines(proc.stdout)[-1].split("  ")[2].startswith("completed by coder: did: rename the module")
    wait_for(lambda: len(log.read_text().splitlines()) >= 2, 10, what="the worker to log both events")
    assert log.read_text().splitlines() == ["started 0 ", "completed 0 "]
    read = ok(bus.cli("coder", "read", "--json", env={"SWARMBUS_LOAD_PLUGINS": "priority"}))
    message = next(m for m in json.loads(read.stdout) if m["subject"] == f"job {out['job_id']}")
    assert message["from"] == "planner" and message["priority"] == "high", message
    assert message["body"].startswith("rename the module\nand fix imports\n\n-- swarmbus job ")
    assert f"swarmbus job event {out['job_id']} completed" in message["body"]


# -- hostile input ---------------------------------------------------------------------------------


def hostile_messages(job: str, kind: str = "outcome") -> list[tuple[str, bytes, str]]:
    """(topic, payload, what the warning says) for garbage a peer may publish: each on a topic of
    its own (a retained message replaces the one before it on the same topic)."""
    def event(**over: object) -> bytes:
        base: dict[str, object] = {"job_id": job, "event": "completed", "detail": None, "by": "mallory",
                                   "at": "2030-01-01T00:00:00Z", "v": 1}
        return json.dumps({**base, **over}).encode()

    bad = [
        (b"not json", "is not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[" * 8_000 + b"]" * 8_000, "too deeply"),
        (b'{"job_id": "' + b"x" * 70_000 + b'"}', "the limit is"),
        (b'{"job_id": "a", "job_id": "b"}', "twice"),
        (event(detail=float("nan")), "NaN"),
        (event(v=True), "v: must be 1"),
        (event(v=2), "v: must be 1"),
        (event(at="yesterday"), "RFC 3339"),
        (event(event="finished"), "event: Input should be"),
        (event(extra="field"), "extra: Extra inputs are not permitted"),
        (event(detail={"not": "text"}), "detail"),
        (event(detail="x" * 9000), "detail"),
        (json.dumps([1, 2, 3]).encode(), "must be a JSON object"),
        (b'{"n": ' + b"9" * 400 + b"}", "at most 20 digits"),
        (event(by="planner"), "is not the topic's"),
    ]
    out = [(f"swarmbus/jobs/h{i}-{job}/{kind}/mallory", payload, why) for i, (payload, why) in enumerate(bad)]
    out += [
        (f"swarmbus/jobs/{job}/outcome/mallory", event(event="started"), "must be completed or error"),
        (f"swarmbus/jobs/{job}-r/record/mallory", b'{"payload": ' + b"[" * 40 + b"]" * 40 + b"}", "deep"),
        (f"swarmbus/jobs/{job}", b"{}", "not a job topic"),
        (f"swarmbus/jobs/{job}/bogus/mallory", b"{}", "not a job topic"),
        ("swarmbus/jobs/BAD ID/events/mallory", b"{}", "not a job topic"),
        (f"swarmbus/jobs/{job}/events/mallory/extra", b"{}", "not a job topic"),
    ]
    return out


def test_hostile_payloads_do_not_crash_wait_list_or_watch(swarm: SwarmEnv, tmp_path: Path,
                                                          background: list[Background]) -> None:
    # an open broker (no ACL): a peer may publish anything anywhere under swarmbus/jobs/#
    env = {**swarm.env, "SWARMBUS_LOAD_PLUGINS": ""}
    job = json.loads(ok(testing.run_cli(env, "job", "submit", "--agent-id", "planner", "--to", "coder",
                                        "--prompt", "p", "--json")).stdout)["job_id"]
    port = int(swarm.broker.port)  # type: ignore[attr-defined]
    peer = RawClient(port)
    try:
        for topic, payload, _ in hostile_messages(job):
            assert peer.publish_reason(topic, payload, retain=True) < 0x80, topic
        # valid, but by mallory, who is not the delegate: wait and list ignore it
        intruder = {"job_id": job, "event": "completed", "detail": "intruder", "by": "mallory",
                    "at": "2020-01-01T00:00:00Z", "v": 1}
        assert peer.publish_reason(f"swarmbus/jobs/{job}/outcome/mallory", json.dumps(intruder).encode(),
                                   retain=True) < 0x80
        escape = {"job_id": job, "event": "completed", "detail": "done \x1b[31mred\x1b[0m", "by": "coder",
                  "at": "2030-01-01T00:00:01Z", "v": 1}
        watcher = start(background, env, "job", "watch", "--retained", "--timeout", "30", "--json",
                        where=tmp_path / "watch")
        # live hostile messages, then a valid marker event, until the watcher shows the marker
        marker = {**escape, "event": "progress", "detail": "marker", "at": "2030-01-01T00:00:00.5Z"}

        def marker_seen() -> bool:
            for topic, payload, _ in hostile_messages(job, "events"):
                peer.publish(topic, payload, wait=False)
            peer.publish(f"swarmbus/jobs/{job}/events/coder", json.dumps(marker).encode())
            return '"detail": "marker"' in watcher.stdout()

        wait_for(marker_seen, 20, interval=0.2, what="the watcher to show the marker after the hostile burst")
        assert peer.publish_reason(f"swarmbus/jobs/{job}/outcome/coder", json.dumps(escape).encode(), retain=True) == 0
        wait_for(lambda: '"event": "completed", "detail": "done' in watcher.stdout(), 20, what="the escape event")
    finally:
        peer.close()
    watcher.proc.send_signal(signal.SIGINT)
    assert watcher.wait() == 130
    warned = watcher.stderr()
    assert "Traceback" not in warned and "internal error" not in warned
    for _, _, why in hostile_messages(job):
        assert why in warned, (why, warned)
    shown = json_lines(watcher.stdout())
    assert {(s["kind"], s.get("event")) for s in shown} >= {("record", None), ("event", "progress"),
                                                             ("event", "completed")}

    proc = ok(testing.run_cli(env, "job", "wait", job, "--timeout", "5"))  # mallory's outcomes are ignored
    assert lines(proc.stdout) == [f"2030-01-01T00:00:01Z  {job}  completed by coder: done \ufffd[31mred\ufffd[0m "
                                  "(retained outcome)"]
    assert "swarmbus: warning: ignored" in proc.stderr and "Traceback" not in proc.stderr
    for args in (("list",), ("list", "--json"), ("watch", "--retained", "--timeout", "0.5")):
        proc = ok(testing.run_cli(env, "job", *args))
        assert "\x1b" not in proc.stdout and "swarmbus: warning: ignored" in proc.stderr
        assert "intruder" not in proc.stdout or args[0] == "watch"
    rows = json.loads(ok(testing.run_cli(env, "job", "list", "--json")).stdout)
    row = next(r for r in rows if r["job_id"] == job)
    assert row["state"] == "completed" and row["outcome"]["by"] == "coder" and row["owner"] == "planner"


# -- a broker restart keeps records and outcomes (swarmbus broker's persistence) -----------------------


def test_a_broker_restart_keeps_the_record_and_the_outcome(tmp_path: Path) -> None:
    port = free_port()
    acl_dir = acl_setup(tmp_path, f"mqtt://127.0.0.1:{port}")
    state = tmp_path / "broker-state"
    env = testing.isolated_env(tmp_path, f"mqtt://127.0.0.1:{port}", SWARMBUS_STATE_DIR=str(state))

    def run_broker() -> subprocess.Popen[bytes]:
        log = (tmp_path / "broker.log").open("ab")
        proc = subprocess.Popen([sys.executable, "-m", "swarmbus", "broker", "--secure", str(acl_dir),
                                 "--port", str(port)], env=env, stdout=log, stderr=log)
        wait_until_listening("127.0.0.1", port, 20, proc, log_paths=[tmp_path / "broker.log"])
        return proc

    def job(principal: str, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        agent_env = testing.isolated_env(tmp_path / principal, f"mqtt://127.0.0.1:{port}",
                                         SWARMBUS_CONFIG=str(acl_dir / "agents" / principal / "swarmbus.toml"))
        return ok(testing.run_cli(agent_env, "job", *args), code)

    broker = run_broker()
    try:
        jid = job("planner", "submit", "--to", "coder", "--prompt", "survive a restart").stdout.strip()
        ok_done = job("coder", "event", jid, "completed", "--detail", "kept", "--agent-id", "coder")
        assert "retained as its outcome" in ok_done.stdout
        published = time.time_ns()
        db = state / "broker" / str(port) / "mosquitto.db"
        # the autosave (every second) has written the db after both publishes: then kill -9, as a crash
        wait_for(lambda: db.exists() and db.stat().st_mtime_ns > published, 10, what="mosquitto's autosave")
        broker.kill()
        broker.wait(10)
        broker = run_broker()
        rows = json.loads(job("dash", "list", "--json").stdout)
        row = next(r for r in rows if r["job_id"] == jid)
        assert (row["state"], row["owner"], row["prompt"], row["outcome"]["detail"]) == (
            "completed", "planner", "survive a restart", "kept")
        assert "completed by coder: kept" in job("planner", "wait", jid, "--timeout", "5").stdout
    finally:
        if broker.poll() is None:
            broker.send_signal(signal.SIGTERM)
            broker.wait(10)


# -- the cut-over check --------------------------------------------------------------------------------


def mqtt_env(bus: Bus, user: str, **extra: str) -> dict[str, str]:
    """Only MQTT_* settings name the broker (no SWARMBUS_BROKER_*, an empty config file)."""
    env = testing.isolated_env(bus.root / f"check-{user}", "unused", **extra)
    del env["SWARMBUS_BROKER_URL"]
    Path(env["SWARMBUS_CONFIG"]).parent.mkdir(parents=True, exist_ok=True)
    Path(env["SWARMBUS_CONFIG"]).write_text("")
    env.update(MQTT_BROKER="127.0.0.1", MQTT_PORT=str(bus.broker.port), MQTT_USERNAME=user,
               MQTT_PASSWORD=bus.password(user), MQTT_CLIENT_ID_PREFIX="swarmbus")
    return env


def test_job_check_passes_against_a_good_set_up(bus: Bus) -> None:
    env = mqtt_env(bus, "planner")
    proc = ok(testing.run_cli(env, "job", "check", "--readonly-username", "dash",
                              "--readonly-password-file", str(bus.password_file("dash"))))
    out = lines(proc.stdout)
    assert "host from env:MQTT_BROKER" in out[0]
    assert [line.split(":")[0] for line in out[1:-1]] == [
        "PASS  connect", "PASS  subscribe", "PASS  publish", "PASS  receive", "PASS  late subscriber",
        "PASS  read-only refused", "PASS  cleanup"]
    assert "dash's publish was refused: Not authorized" in proc.stdout
    assert out[-1] == "cut-over check: passed (7 passed, 0 failed)"

    report = json.loads(ok(testing.run_cli(env, "job", "check", "--json", "--mqtt-version", "3.1.1",
                                           "--readonly-username", "dash", "--readonly-password-file",
                                           str(bus.password_file("dash")))).stdout)
    assert report["ok"] and all(step["status"] == "pass" for step in report["steps"])
    assert "MQTT 3.1.1" in report["steps"][0]["detail"]
    assert "told by its absence" in report["steps"][5]["detail"]
    # the test jobs left nothing retained behind
    listed = json.loads(ok(bus.job("dash", "list", "--json")).stdout)
    assert report["job_id"] not in {row["job_id"] for row in listed}


def test_job_check_reports_the_failing_step(bus: Bus) -> None:
    env = mqtt_env(bus, "planner")
    # a "read-only" credential that can write (an agent): the refusal step fails, the rest pass
    proc = ok(testing.run_cli(env, "job", "check", "--json", "--readonly-username", "coder",
                              "--readonly-password-file", str(bus.password_file("coder"))), 1)
    report = json.loads(proc.stdout)
    status = {step["step"]: step["status"] for step in report["steps"]}
    assert status.pop("read-only refused") == "fail" and set(status.values()) == {"pass"}
    assert "this credential can write" in report["steps"][5]["detail"]
    listed = json.loads(ok(bus.job("dash", "list", "--json")).stdout)
    assert report["job_id"] not in {row["job_id"] for row in listed}  # the forged outcome was cleared too

    # a credential that may not write jobs at all (an observer as the main user): publish fails
    proc = ok(testing.run_cli(mqtt_env(bus, "dash"), "job", "check"), 1)
    assert "FAIL  publish: as dash:" in proc.stdout and "Not authorized" in proc.stdout
    assert proc.stdout.rstrip().endswith("FAILED (2 passed, 2 failed, 3 skipped)")
    assert "Traceback" not in proc.stderr and "WARNING" not in proc.stderr

    # a wrong read-only password: it cannot connect, so the refusal cannot be shown
    wrong = bus.root / "wrong.pw"
    wrong.write_text("not-the-password\n")
    proc = ok(testing.run_cli(env, "job", "check", "--readonly-username", "dash", "--readonly-password-file",
                              str(wrong)), 1)
    assert "FAIL  read-only refused: cannot connect as dash" in proc.stdout

    # unreachable, and usage errors
    dead = {**env, "MQTT_PORT": str(free_port())}
    proc = ok(testing.run_cli(dead, "job", "check"), 2)
    assert "FAIL  connect:" in proc.stdout
    proc = ok(testing.run_cli(env, "job", "check", "--readonly-username", "dash"), 2)
    assert "--readonly-username and --readonly-password-file go together" in proc.stderr


def test_help_teaches(bus: Bus) -> None:
    for action, words in (("submit", ("--payload-file", "Exit codes")), ("wait", ("0 completed, 1 error, 2 timed",)),
                          ("check", ("MQTT_BROKER", "PUBACK 135")), ("list", ("not retained",))):
        proc = ok(bus.job("planner", action, "--help"))
        for word in words:
            assert word in proc.stdout, (action, word)
