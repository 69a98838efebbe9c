"""``swarmbus dashboard`` (issue 13): its JSON API and event stream against a private mosquitto
and real daemons, its handling of hostile records, and who may see it.

The dashboard runs as the user runs it (``python -m swarmbus dashboard --port 0``, a real uvicorn
on a free port); the tests read ``/api/state`` and ``/api/events`` (Server-Sent Events) with the
standard library's HTTP client. Skipped when the ``dashboard`` extra (Starlette, uvicorn) is not
installed.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

pytest.importorskip("starlette", reason="the dashboard extra is not installed (pip install 'swarmbus[dashboard]')")
pytest.importorskip("uvicorn", reason="the dashboard extra is not installed (pip install 'swarmbus[dashboard]')")

from conftest import SwarmEnv, wait_for
from peers import raw_client
from swarmbus import testing
from swarmbus.dashboard.app import host_of
from swarmbus.dashboard.records import MAX_PAYLOAD, TaskState, classify
from swarmbus.dashboard.state import MAX_AGENTS, MAX_TASKS, DashboardState
from swarmbus.dashboard.stores import StoreReader
from swarmbus.envelope import new_envelope
from swarmbus.store import Store

pytestmark = pytest.mark.broker


# -- a dashboard process and a reader of its stream ------------------------------------------------------


class Dashboard(testing.DashboardProcess):
    """:class:`swarmbus.testing.DashboardProcess`, with the HTTP calls the tests make."""

    def get(self, path: str, headers: dict[str, str] | None = None,
            host: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(host, self.port, timeout=10)
        try:
            conn.request("GET", path, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def state(self, path: str = "/api/state") -> dict[str, Any]:
        status, headers, body = self.get(path)
        assert status == 200, body
        assert headers["content-type"].startswith("application/json")
        return json.loads(body)  # type: ignore[no-any-return]


class Stream:
    """``/api/events`` read in a thread into a model, as the page keeps it: ``agents``, ``messages``,
    ``holds``, ``quarantine``, ``jobs``, ``tasks`` (dicts by key), ``malformed``, ``status``."""

    def __init__(self, dash: Dashboard, path: str = "/api/events", headers: dict[str, str] | None = None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", dash.port, timeout=60)
        self.conn.request("GET", path, headers=headers or {})
        self.sock = self.conn.sock
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200
        assert self.resp.getheader("content-type", "").startswith("text/event-stream")
        self.events: list[tuple[str, Any]] = []
        self.lock = threading.Lock()
        self.model: dict[str, Any] = {}
        self.ended = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        kind, data = "message", []
        try:
            while True:
                raw = self.resp.readline()
                if not raw:
                    break
                line = raw.decode("utf-8").rstrip("\n")
                if line == "":
                    if data:
                        self._apply(kind, json.loads("\n".join(data)))
                    kind, data = "message", []
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data.append(line[6:])
        except (OSError, ValueError, AttributeError):  # closed under the reader: the test is over
            pass
        self.ended = True

    def _apply(self, kind: str, view: Any) -> None:
        with self.lock:
            self.events.append((kind, view))
            m = self.model
            if kind == "snapshot":
                m["agents"] = {a["agent"]: a for a in view["agents"]}
                m["messages"] = {x["id"]: x for x in view["messages"]}
                m["holds"] = {h["key"]: h for h in view["holds"]}
                m["quarantine"] = {q["key"]: q for q in view["quarantine"]}
                m["jobs"] = {j["job_id"]: j for j in view["jobs"]}
                m["tasks"] = {t["key"]: t for t in view["tasks"]}
                m["malformed"], m["status"] = view["malformed"], view["status"]
            elif kind in ("agent", "message", "hold", "quarantine", "job", "task"):
                key = {"agent": "agent", "message": "id", "job": "job_id"}.get(kind, "key")
                m[kind + ("s" if kind != "quarantine" else "")][view[key]] = view
            elif kind.endswith("_removed"):
                base = kind[:-len("_removed")]
                key = {"agent": "agent", "message": "id", "job": "job_id"}.get(base, "key")
                m[base + "s"].pop(view[key], None)
            elif kind in ("malformed", "status"):
                m[kind] = view

    def get(self, section: str, key: str) -> Any:
        with self.lock:
            return self.model.get(section, {}).get(key)

    def section(self, section: str) -> Any:
        with self.lock:
            return self.model.get(section)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # wakes the reader now (a bare close waits for its read)
            self.sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()


@pytest.fixture
def dashboard(swarm: SwarmEnv) -> Iterator[Any]:
    started: list[Dashboard] = []
    streams: list[Stream] = []

    def start(*args: str) -> Dashboard:
        dash = Dashboard(swarm.env, *args)
        started.append(dash)
        return dash

    def stream(dash: Dashboard, *args: Any, **kwargs: Any) -> Stream:
        s = Stream(dash, *args, **kwargs)
        streams.append(s)
        return s

    start.stream = stream  # type: ignore[attr-defined]
    yield start
    for s in streams:
        s.close()
    for dash in started:
        dash.stop()


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _reached(message: dict[str, Any] | None, step: str, by: str) -> bool:
    if message is None:
        return False
    row = next(s for s in message["ladder"] if s["step"] == step)
    return bool(row["reached"]) and by in row["by"]


def _task(task_id: str, owner: str, state: str, claimer: str | None = None, **extra: Any) -> bytes:
    body = {"task_id": task_id, "type": "review", "owner": owner, "role": "reviewer", "capabilities": ["python"],
            "payload": {"pr": 7}, "state": state, "claimer": claimer, "fence": 1 if claimer else 0, "attempt": 1,
            "max_attempts": 3, "lease_until": None, "result": None, "error": None, "created_at": _now(),
            "updated_at": _now(), "v": 1, **extra}
    return json.dumps(body).encode()


# -- end to end: presence, messages, holds, quarantine ---------------------------------------------------


def test_presence_and_a_message_with_its_ladder_appear_live(swarm: SwarmEnv, dashboard: Any) -> None:
    swarm.start_daemon("alice")
    swarm.start_daemon("bob")
    with raw_client(swarm.broker.port) as raw:  # type: ignore[attr-defined]
        carol = {"agent": "carol", "status": "online", "ts": _now(), "heartbeat_s": 60.0, "role": "reviewer",
                 "capabilities": ["python", "review"], "swarm": "blue"}
        assert raw.publish_reason("agents/carol/presence", json.dumps(carol).encode(), retain=True) in (0, 16)
    dash = dashboard()
    assert dash.url.startswith("http://127.0.0.1:")
    stream = dashboard.stream(dash)
    for agent in ("alice", "bob", "carol"):
        wait_for(lambda a=agent: (stream.get("agents", a) or {}).get("status") == "online", 15, what=f"{agent} online")
    assert stream.get("agents", "alice")["local"] is True
    seen = stream.get("agents", "carol")
    assert (seen["role"], seen["capabilities"], seen["swarm"], seen["local"]) == ("reviewer", ["python", "review"],
                                                                                 "blue", False)

    sent = json.loads(swarm.cli("send", "--agent-id", "alice", "--to", "bob", "--subject", "dash <i>one</i>",
                                "--body", "hello bob", "--json", check=True).stdout)
    message_id = sent["id"]
    wait_for(lambda: _reached(stream.get("messages", message_id), "stored", "bob"), 15, what="the message, stored")
    shown = stream.get("messages", message_id)
    assert (shown["from"], shown["to"], shown["subject"], shown["preview"]) == ("alice", "bob", "dash <i>one</i>",
                                                                               "hello bob")
    assert shown["sent_by"] == "alice" and shown["received_by"] == ["bob"]
    wait_for(lambda: _reached(stream.get("messages", message_id), "published", "alice"), 10, what="published")
    assert not _reached(stream.get("messages", message_id), "surfaced", "bob")

    swarm.cli("read", "--agent-id", "bob", check=True)  # shows it: the surfaced step
    wait_for(lambda: _reached(stream.get("messages", message_id), "surfaced", "bob"), 15, what="surfaced, live")

    # the snapshot says the same, and agrees with `swarmbus trace`
    snap = dash.state()
    message = next(m for m in snap["messages"] if m["id"] == message_id)
    steps = {(s["step"], s["by"]) for s in message["steps"]}
    traced = json.loads(swarm.cli("trace", "--agent-id", "bob", message_id, "--json", check=True).stdout)
    assert {(s["step"], s["by"]) for s in traced["steps"]} <= steps
    traced = json.loads(swarm.cli("trace", "--agent-id", "alice", message_id, "--json", check=True).stdout)
    assert {(s["step"], s["by"]) for s in traced["steps"]} <= steps
    assert {"alice", "bob", "carol"} <= {a["agent"] for a in snap["agents"]}


def test_quarantined_and_held_messages_show_their_reasons(swarm: SwarmEnv, dashboard: Any) -> None:
    swarm.start_daemon("bob")
    dash = dashboard("--agent-id", "bob")
    stream = dashboard.stream(dash)
    wait_for(lambda: (stream.get("agents", "bob") or {}).get("status") == "online", 15, what="bob online")
    with raw_client(swarm.broker.port) as raw:  # type: ignore[attr-defined]
        raw.publish("agents/bob/inbox", b'{"not": "an envelope"')
    shown = wait_for(lambda: next(iter((stream.section("quarantine") or {}).values()), None), 15,
                     what="the quarantined publish")
    listed = json.loads(swarm.cli("inbox", "--agent-id", "bob", "--quarantined", "--json", check=True).stdout)
    assert shown["reason"] == listed["quarantined"][0]["reason"] and shown["reason"]
    assert (shown["agent"], shown["topic"]) == ("bob", "agents/bob/inbox")
    assert shown["preview"] == '{"not": "an envelope"'

    swarm.cli("policy", "hold", "--agent-id", "bob", "--reason", "deploy <freeze>", check=True)
    wait_for(lambda: stream.get("holds", "bob/manual"), 15, what="the operator's hold")
    assert stream.get("holds", "bob/manual")["reason"] == "deploy <freeze>"
    sent = json.loads(swarm.cli("send", "--agent-id", "alice", "--to", "bob", "--subject", "urgent", "--body", "now",
                                "--priority", "high", "--json", check=True).stdout)
    hold = wait_for(lambda: next((h for h in (stream.section("holds") or {}).values() if h["id"] == sent["id"]), None),
                    15, what="the held message")
    explained = json.loads(swarm.cli("policy", "explain", "--agent-id", "bob", "--message", sent["id"], "--json",
                                     check=True).stdout)["message"]
    assert (hold["reason"], hold["rule"]) == (explained["hold"]["reason"], explained["hold"]["rule"])
    assert hold["subject"] == "urgent" and hold["from"] == "alice"
    wait_for(lambda: (stream.get("messages", sent["id"]) or {}).get("held"), 10, what="the message marked held")

    swarm.cli("policy", "release", "--agent-id", "bob", check=True)
    wait_for(lambda: stream.get("holds", "bob/manual") is None, 15, what="the hold gone")


# -- jobs and tasks, and hostile records ---------------------------------------------------------------


def test_jobs_and_tasks_from_their_retained_topics(swarm: SwarmEnv, dashboard: Any) -> None:
    port = swarm.broker.port  # type: ignore[attr-defined]
    record = {"job_id": "j1", "owner": "planner", "delegate": "coder", "prompt": "fix the <b>build</b>",
              "payload": None, "created_at": _now(), "v": 1}
    with raw_client(port) as raw:  # retained before the dashboard starts: it must still see them
        assert raw.publish_reason("swarmbus/jobs/j1/record/planner", json.dumps(record).encode(), retain=True) in (0, 16)
        assert raw.publish_reason("swarmbus/tasks/t1/state/planner", _task("t1", "planner", "open"), retain=True) in (0, 16)
    dash = dashboard()
    stream = dashboard.stream(dash)
    job = wait_for(lambda: stream.get("jobs", "j1"), 15, what="the job record")
    assert (job["owner"], job["delegate"], job["prompt"], job["state"]) == ("planner", "coder", "fix the <b>build</b>",
                                                                           "submitted")
    wait_for(lambda: (stream.get("tasks", "t1/planner") or {}).get("state") == "open", 15, what="the open task")

    with raw_client(port) as raw:
        event = {"job_id": "j1", "event": "started", "detail": None, "by": "coder", "at": _now(), "v": 1}
        raw.publish_reason("swarmbus/jobs/j1/events/coder", json.dumps(event).encode())
        wait_for(lambda: stream.get("jobs", "j1")["state"] == "started", 15, what="the job started")
        outcome = {**event, "event": "completed", "detail": "green"}
        raw.publish_reason("swarmbus/jobs/j1/outcome/coder", json.dumps(outcome).encode(), retain=True)
        wait_for(lambda: stream.get("jobs", "j1")["state"] == "completed", 15, what="the job completed")
        assert stream.get("jobs", "j1")["outcome"] == {"event": "completed", "detail": "green", "by": "coder",
                                                       "at": outcome["at"]}
        for state, claimer in (("claimed", "coder"), ("completed", "coder")):
            raw.publish_reason("swarmbus/tasks/t1/state/planner",
                               _task("t1", "planner", state, claimer, result="ok" if state == "completed" else None),
                               retain=True)
            wait_for(lambda s=state: stream.get("tasks", "t1/planner")["state"] == s, 15, what=f"the task {state}")
        task = stream.get("tasks", "t1/planner")
        assert [h["state"] for h in task["history"]] == ["open", "claimed", "completed"]
        assert (task["claimer"], task["result"], task["type"], task["owner"]) == ("coder", "ok", "review", "planner")
        snap = dash.state()
        assert [t["state"] for t in snap["tasks"]] == ["completed"] and snap["jobs"][0]["state"] == "completed"

        raw.publish_reason("swarmbus/tasks/t1/state/planner", b"", retain=True)  # cleared: gone from the board
        wait_for(lambda: stream.get("tasks", "t1/planner") is None, 15, what="the cleared task gone")


HOSTILE: list[tuple[str, bytes]] = [
    ("swarmbus/tasks/t2/state/mallory", b"{not json"),
    ("swarmbus/tasks/t2/state/mallory", b'{"task_id": "t2", "task_id": "t3"}'),
    ("swarmbus/tasks/t2/state/mallory", b'{"task_id": "t2", "type": "x", "owner": "mallory", "state": NaN}'),
    ("swarmbus/tasks/t2/state/mallory", b"\xff\xfe garbage"),
    ("swarmbus/tasks/t2/state/mallory", b"[" * 100000),
    ("swarmbus/tasks/t2/state/mallory", b" " * (MAX_PAYLOAD + 1)),
    ("swarmbus/tasks/t2/state/mallory", json.dumps({"task_id": "t2", "type": "x", "owner": "planner",
                                                    "state": "open"}).encode()),  # the topic says mallory
    ("swarmbus/tasks/t2/state/mallory", json.dumps({"task_id": "t2", "type": "x", "owner": "mallory",
                                                    "state": "open", "fence": "1"}).encode()),
    ("swarmbus/tasks/t2/state/mallory", json.dumps({"task_id": "../etc", "type": "x", "owner": "mallory",
                                                    "state": "open"}).encode()),
    ("swarmbus/tasks/BAD ID/state/mallory", b"{}"),
    ("swarmbus/tasks/t2/state/mallory", json.dumps({"task_id": "t2", "type": "\ud800", "owner": "mallory",
                                                    "state": "open"}).encode()),  # a lone surrogate in a text
    ("swarmbus/jobs/j2/record/mallory", json.dumps({"job_id": "j2", "owner": "mallory", "prompt": 5}).encode()),
    ("swarmbus/jobs/j2/outcome/mallory", json.dumps({"job_id": "j2", "event": "started", "by": "mallory"}).encode()),
    ("swarmbus/jobs/j2/events/mallory", json.dumps({"job_id": "j2", "event": "exploded", "by": "mallory"}).encode()),
    ("swarmbus/jobs/j2/events/mallory", b""),
    ("agents/mallory/presence", b'{"agent": "someone-else", "status": "online"}'),
    ("agents/mallory/presence/heartbeat", b"[1, 2]"),
]


def test_hostile_records_are_counted_and_never_break_it(swarm: SwarmEnv, dashboard: Any) -> None:
    dash = dashboard()
    stream = dashboard.stream(dash)
    wait_for(lambda: (stream.section("status") or {}).get("broker", {}).get("connected"), 15, what="connected")
    markup = "<script>alert(1)</script>\u2028 \"'&"
    nasty = markup + "\ud800"  # a lone surrogate: only in a free JSON value (a text field refuses it)
    with raw_client(swarm.broker.port) as raw:  # type: ignore[attr-defined]
        for topic, payload in HOSTILE:
            raw.publish(topic, payload)
        # valid records full of markup and odd characters: shown as text (JSON escapes), never as markup
        raw.publish_reason("swarmbus/tasks/t9/state/mallory", _task("t9", "mallory", "open", payload=nasty,
                                                                     type=markup, extra_key={"a": [1]}))
        raw.publish_reason("agents/mallory/presence", json.dumps(
            {"agent": "mallory", "status": "online", "ts": _now(), "role": nasty, "capabilities": [nasty, 5],
             "swarm": {"no": 1}}).encode())
    task = wait_for(lambda: stream.get("tasks", "t9/mallory"), 15, what="the valid task after the hostile ones")
    assert task["payload"] == nasty and task["type"] == markup
    agent = wait_for(lambda: stream.get("agents", "mallory"), 15, what="mallory's presence")
    assert agent["role"] == nasty[:64] and agent["capabilities"] == [nasty[:64]] and agent["swarm"] is None
    malformed = wait_for(lambda: (stream.section("malformed") or {}).get("total") == len(HOSTILE)
                         and stream.section("malformed"), 15, what="every malformed record counted")
    assert malformed["counts"] == {"tasks": 11, "jobs": 4, "presence": 2}
    reasons = " | ".join(r["reason"] for r in malformed["recent"])
    for words in ("duplicate key", "not UTF-8", "nested too deeply", "too large", "is not the topic's"):
        assert words in reasons
    assert stream.get("tasks", "t2/mallory") is None and stream.get("jobs", "j2") is None

    status, _headers, body = dash.get("/api/state")
    assert status == 200 and body.isascii()  # \u escapes: a lone surrogate cannot break the encoding
    snap = json.loads(body)
    assert next(t for t in snap["tasks"] if t["key"] == "t9/mallory")["payload"] == nasty
    page = dash.get("/")[2]
    assert b"alert(1)" not in page and b"innerHTML" not in dash.get("/dashboard.js")[2]
    assert dash.proc.poll() is None


def test_the_page_and_its_security_headers(swarm: SwarmEnv, dashboard: Any) -> None:
    dash = dashboard()
    for path, kind in (("/", "text/html"), ("/dashboard.js", "text/javascript"), ("/dashboard.css", "text/css")):
        status, headers, body = dash.get(path)
        assert status == 200 and headers["content-type"].startswith(kind) and body
        csp = headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
    html = dash.get("/")[2].decode()
    assert "<script>" not in html and "style=" not in html and "http" not in html.replace("http-equiv", "")
    assert dash.get("/api/state", {"Host": "evil.example:80"})[0] == 400  # DNS rebinding: not a loopback name
    assert dash.get("/api/state", {"Host": f"localhost:{dash.port}"})[0] == 200
    assert dash.get("/nowhere")[0] == 404


# -- who may see it -----------------------------------------------------------------------------------------


def test_a_token_is_required_beyond_loopback(swarm: SwarmEnv, dashboard: Any) -> None:
    dash = dashboard("--bind", "0.0.0.0")
    query = urlsplit(dash.url).query
    assert query.startswith("token=") and len(query) > 30
    token = query[len("token="):]
    assert any("printed only this once" in line for line in dash.out)
    assert dash.get("/api/state")[0] == 401
    assert dash.get("/api/events")[0] == 401
    assert dash.get("/")[0] == 401
    assert dash.get(f"/api/state?token={token[:-1]}x")[0] == 401
    assert dash.get("/api/state", {"Cookie": f"swarmbus_dashboard_{dash.port}=wrong"})[0] == 401
    assert dash.get(f"/api/state?token={token}")[0] == 200
    status, headers, _ = dash.get(f"/?token={token}")  # the first visit: a cookie, and the token out of the URL
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"].split(";")[0]
    assert cookie == f"swarmbus_dashboard_{dash.port}={token}"
    assert "HttpOnly" in headers["set-cookie"] and "SameSite=Strict" in headers["set-cookie"]
    assert dash.get("/", {"Cookie": cookie})[0] == 200
    assert dash.get("/api/state", {"Cookie": f"other=1; {cookie}", "Host": "anything.example"})[0] == 200
    stream = dashboard.stream(dash, headers={"Cookie": cookie})
    wait_for(lambda: stream.section("status"), 10, what="the stream, with the cookie")


def test_a_token_file_is_required_also_on_loopback(swarm: SwarmEnv, dashboard: Any, tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_text("abc\n")
    proc = swarm.cli("dashboard", "--port", "0", "--token-file", str(short))
    assert proc.returncode == 2 and "at least 16" in proc.stderr and "Traceback" not in proc.stderr
    good = tmp_path / "token"
    good.write_text("s3cret-token-0123456789\n")
    dash = dashboard("--token-file", str(good))
    assert "token" not in dash.url and "s3cret" not in "".join(dash.out)  # a token given is never printed
    assert dash.get("/api/state")[0] == 401
    assert dash.get("/api/state?token=s3cret-token-0123456789")[0] == 200


# -- how it fails, and how it stops ---------------------------------------------------------------------


def test_usage_errors_exit_2_with_one_line(swarm: SwarmEnv) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = swarm.cli("dashboard", "--port", str(port))
        assert proc.returncode == 2 and "in use" in proc.stderr and "Traceback" not in proc.stderr
    proc = swarm.cli("dashboard", "--port", "0", "--agent-id", "Not Valid")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = swarm.cli("dashboard", "--port", "0", env={"SWARMBUS_BROKER_URL": f"mqtt://127.0.0.1:{_closed_port()}"})
    assert proc.returncode == 2 and "broker unreachable" in proc.stderr and "Traceback" not in proc.stderr
    help_text = swarm.cli("dashboard", "--help", check=True).stdout
    assert "pip install 'swarmbus[dashboard]'" in help_text and "Exit codes" in help_text


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_without_the_extra_it_says_how_to_install_it(swarm: SwarmEnv, tmp_path: Path) -> None:
    hidden = tmp_path / "hide"
    (hidden / "starlette").mkdir(parents=True)
    (hidden / "starlette" / "__init__.py").write_text("raise ImportError('hidden by the test', name='starlette')\n")
    proc = swarm.cli("dashboard", "--port", "0", env={"PYTHONPATH": str(hidden)})
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'swarmbus[dashboard]'" in proc.stderr and "Traceback" not in proc.stderr


def test_sigterm_stops_it_promptly_with_a_stream_open(swarm: SwarmEnv, dashboard: Any) -> None:
    dash = dashboard()
    stream = dashboard.stream(dash)
    wait_for(lambda: stream.section("status"), 10, what="the stream open")
    started = time.monotonic()
    assert dash.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 5
    wait_for(lambda: stream.ended, 5, what="the stream ended")


# -- the parts, without processes ------------------------------------------------------------------------


def test_classify_refuses_what_does_not_match_its_topic() -> None:
    ok = classify("swarmbus/tasks/t1/state/planner", _task("t1", "planner", "open"))
    assert ok is not None and ok.kind == "task" and isinstance(ok.value, TaskState)
    assert ok.value.model_extra == {}
    extra = classify("swarmbus/tasks/t1/state/planner", _task("t1", "planner", "open", future_field=[1]))
    assert extra is not None and extra.kind == "task"  # a field the contract does not name is allowed
    for topic, payload in HOSTILE:
        item = classify(topic, payload)
        assert item is not None and item.kind == "malformed" and item.reason, (topic, payload[:60])
    assert classify("swarmbus/jobs/j1/unknown/planner", b"{}") is None  # not a jobs topic the dashboard shows
    assert classify("elsewhere/x", b"{}") is None
    cleared = classify("swarmbus/jobs/j1/outcome/coder", b"")
    assert cleared is not None and cleared.kind == "job_outcome" and cleared.value is None
    assert host_of("[::1]:8080") == "::1" and host_of("LocalHost:1") == "localhost" and host_of("x") == "x"


def test_state_is_bounded_and_orders_a_tasks_history() -> None:
    state = DashboardState(clock=lambda: 1000.0)
    for i in range(MAX_TASKS + 5):
        item = classify(f"swarmbus/tasks/t{i}/state/o", _task(f"t{i}", "o", "open"))
        assert item is not None
        state.apply_item(item)
    assert len(state.tasks) == MAX_TASKS and state.dropped["tasks"] == 5
    for s in ("claimed", "claimed", "open", "claimed", "completed"):
        item = classify("swarmbus/tasks/t0/state/o", _task("t0", "o", s, "w" if s != "open" else None))
        assert item is not None
        state.apply_item(item)
    assert [h["state"] for h in state.tasks["t0/o"]["history"]] == ["open", "claimed", "open", "claimed", "completed"]
    for i in range(MAX_AGENTS + 3):  # heartbeats of agents nobody announced cannot grow it without end either
        beat = classify(f"agents/a{i}/presence/heartbeat", json.dumps({"agent": f"a{i}", "ts": _now()}).encode())
        assert beat is not None and beat.kind == "heartbeat"
        state.apply_item(beat)
    assert state.dropped["agents"] == 3 and state.agents == {}


def test_the_store_reader_never_blocks_the_daemons_writes(tmp_path: Path) -> None:
    path = tmp_path / "agents" / "bob" / "store.sqlite3"
    with Store(path) as store:
        envelope = new_envelope("alice", "bob", "s", "the body")
        store.accept("agents/bob/inbox", envelope.to_wire(), "bob")
        reader = StoreReader("bob", path)
        first = reader.poll()
        assert first is not None and [(r["id"], r["preview"]) for r in first.received] == [(envelope.id, "the body")]
        assert reader.poll() is None  # nothing committed since: one pragma
        with store.transaction() as db:  # the writer takes its lock while the reader has its connection open
            db.execute("INSERT INTO counters VALUES ('duplicates', 1)")
        delta = reader.poll()
        assert delta is not None and delta.counters.get("duplicates") == 1 and not delta.received
        with pytest.raises(sqlite3.OperationalError):  # and the reader cannot write
            reader._db.execute("INSERT INTO counters VALUES ('x', 1)")  # type: ignore[union-attr]
        reader.close()
