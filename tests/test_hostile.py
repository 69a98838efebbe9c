"""The core under attack and load: real daemons on a private mosquitto, driven as a hostile peer
and as a heavy user would drive them. Each test is one defect the predecessor-beating core must
not have (issue: "a core that holds under attack and load"):

- poison payloads on the inbox and on broadcast never stall a receiver, also across a restart;
- concurrent sends while the broker is down are all answered truthfully, and delivered once;
- a send the daemon reports as failed is never delivered later;
- a store that fails its writes mid-dispatch (a full disk) stalls nothing for good: the receive
  path stops acknowledging and says why, and everything resumes, without a restart, once it can;
- repeated SIGKILLs mid-stream with a slow wake handler archive every message exactly once;
- a second daemon for the same agent id (another state dir) stops and says who holds the id;
  a session takeover stops the daemon that lost it; "last seen" after a crash is the last beat.

Nothing sleeps to synchronise: every wait polls a condition with a deadline.
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from conftest import SwarmEnv, wait_for
from peers import delivery, encode, inbox_text, py_command, raw_client, wire
from swarmbus import testing
from swarmbus.envelope import parse_timestamp
from swarmbus.paths import AgentPaths
from swarmbus.store import Store

# -- poison ------------------------------------------------------------------------------------------------

POISONS: list[bytes] = [
    b"[" * 200_000,  # nesting deep enough to exhaust the JSON parser's recursion
    b'{"id": "big", "n": ' + b"9" * 50_000 + b"}",  # past the int string-conversion limit
    b'{"id": "x", "from": "zed", "to": "me", "ts": NaN}',  # not JSON, but json.loads takes it
    b"\xff\xfe\xfd not UTF-8",
    b"",
    b"null",
    b'"just a string"',
    b'{"id": 1}',
    b'{"a": ' * 30_000 + b"1" + b"}" * 30_000,
    bytes(range(256)) * 100,
    b'{"id": "dup-key", "id": "other", "from": "zed"}',
]


def _valid(to: str, subject: str) -> bytes:
    return encode(wire(to, subject=subject, id=f"valid-{uuid.uuid4().hex}"))


def test_poison_never_stalls_inbox_or_broadcast_even_after_restart(swarm: SwarmEnv) -> None:
    """More poison than mosquitto's in-flight window (20) on the inbox and on broadcast, then a
    valid message on each: both arrive at both daemons, every poison is quarantined and
    acknowledged (none comes back after a restart), and doctor finds nothing stuck."""
    me, peer = swarm.start_daemon("me"), swarm.start_daemon("peer")
    rounds = 3
    with raw_client(swarm.broker.port) as pub:
        for _ in range(rounds):
            for poison in POISONS:
                pub.publish("agents/me/inbox", poison, wait=False)
                pub.publish("agents/broadcast", poison, wait=False)
        pub.publish("agents/me/inbox", _valid("me", "after poison, directed"))
        pub.publish("agents/broadcast", _valid("broadcast", "after poison, broadcast"))

    def subjects(agent: str) -> set[str]:
        with Store(swarm.store_path(agent)) as store:
            return {m.subject for m in store.recent(50)}

    wait_for(lambda: {"after poison, directed", "after poison, broadcast"} <= subjects("me"), 30,
             what="the valid messages behind the poison to reach me")
    wait_for(lambda: "after poison, broadcast" in subjects("peer"), 30, what="the broadcast to reach peer")
    poison_count = rounds * len(POISONS)
    for agent, expected in (("me", 2 * poison_count), ("peer", poison_count)):
        status = wait_for(lambda a=agent, n=expected: (s := swarm.status(a)) and s["counters"].get("quarantined") == n
                          and s, 30, what=f"{agent} to quarantine {expected} poison payloads")
        assert status["unacked"] == 0 and status["store_error"] is None and status["callback_errors"] == 0
    with Store(swarm.store_path("me")) as store:
        reasons = [row.reason for row in store.quarantined(500)]
    assert all(reason for reason in reasons)
    assert any("nest" in r or "deep" in r or "recursion" in r.lower() for r in reasons), reasons[:5]
    doctor = swarm.cli("doctor", "--agent-id", "me", "--json")
    daemon_check = next(c for c in json.loads(doctor.stdout)["checks"] if c["name"] == "daemon")
    assert daemon_check["status"] == "ok", daemon_check

    # everything was acknowledged: a restart brings back no poison, and new messages flow
    me.stop()
    peer.stop()
    swarm.start_daemon("me")
    with raw_client(swarm.broker.port) as pub:
        pub.publish("agents/me/inbox", _valid("me", "after restart"))
    wait_for(lambda: "after restart" in subjects("me"), 20, what="a message after the restart")
    assert swarm.status("me")["counters"]["quarantined"] == 2 * poison_count  # type: ignore[index]


# -- sends while the broker is down --------------------------------------------------------------------------


def _stop_broker_and_wait(swarm: SwarmEnv, *agents: str) -> None:
    swarm.broker.stop()  # type: ignore[attr-defined]
    for agent in agents:
        wait_for(lambda a=agent: not (swarm.status(a) or {}).get("connected"), 15, what=f"{agent} to see the broker gone")


def test_concurrent_sends_with_broker_down_are_answered_truthfully(swarm: SwarmEnv) -> None:
    """30 concurrent `swarmbus send` through the daemon with the broker down: every one answers
    "queued" (exit 0) within its --wait, none claims a failure, and after the broker comes back
    each is delivered exactly once."""
    swarm.start_daemon("sender")
    swarm.start_daemon("receiver")
    _stop_broker_and_wait(swarm, "sender")
    procs = []
    for i in range(30):
        procs.append((time.monotonic(), subprocess.Popen(
            [sys.executable, "-m", "swarmbus", "send", "--agent-id", "sender", "--to", "receiver",
             "--subject", f"queued {i}", "--body", "b", "--wait", "2", "--json"],
            env=swarm.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    ids = []
    for _started, proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        answer = json.loads(out)
        assert answer["status"] == "queued", answer
        ids.append(answer["id"])
    assert len(set(ids)) == 30
    swarm.broker.restart()  # type: ignore[attr-defined]
    with Store(swarm.store_path("receiver")) as store:
        wait_for(lambda: set(ids) <= set(store.message_ids()), 30, what="all 30 queued sends to arrive")
        assert sorted(store.message_ids()) == sorted(ids)  # once each, nothing else


def test_a_send_reported_failed_is_not_delivered_later(swarm: SwarmEnv) -> None:
    """A daemon that cannot take a send in time (stopped) makes the client report a failure;
    once it runs again it refuses the expired request instead of sending it."""
    sender = swarm.start_daemon("stuck")
    swarm.start_daemon("listener")
    sender.signal(signal.SIGSTOP)
    try:
        proc = swarm.cli("send", "--agent-id", "stuck", "--to", "listener", "--subject", "too late",
                         "--body", "b", "--wait", "0.5")
    finally:
        sender.signal(signal.SIGCONT)
    assert proc.returncode == 1, proc
    assert "not sent" in proc.stderr and "Traceback" not in proc.stderr
    # the daemon has now read the request, after its deadline: a marker sent afterwards arrives,
    # and the failed one never does
    ok = swarm.cli("send", "--agent-id", "stuck", "--to", "listener", "--subject", "marker", "--body", "b")
    assert ok.returncode == 0, ok.stderr
    with Store(swarm.store_path("listener")) as store:
        wait_for(lambda: any(m.subject == "marker" for m in store.recent(10)), 15, what="the marker")
        assert [m.subject for m in store.recent(10)] == ["marker"]
    with Store(swarm.store_path("stuck")) as store:
        assert len(store._query("SELECT id FROM outbox")) == 1  # only the marker was ever spooled


# -- a store that fails its writes ----------------------------------------------------------------------------

GATED_WAKE = ("import os,sys,time; sys.stdin.read(); go=sys.argv[1]\n"
              "while not os.path.exists(go): time.sleep(0.01)")


@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs prlimit (Linux) to make the store's writes fail")
def test_store_failing_mid_dispatch_recovers_without_restart(swarm: SwarmEnv, tmp_path: Path) -> None:
    """The daemon's writes fail (RLIMIT_FSIZE: every write that grows a file gets EFBIG, as on a
    full disk) while a wake runs: its outcome cannot be recorded and a new message cannot be
    committed. The new one is not acknowledged, status and doctor say why; once writes work
    again both are finished without a restart, each archived once."""
    go = tmp_path / "go"
    daemon = swarm.start_daemon("full", "--wake-policy", "all", "--invoke", py_command(GATED_WAKE, str(go)))
    with raw_client(swarm.broker.port) as pub:
        pub.publish("agents/full/inbox", encode(wire("full", id="first", subject="first")))
    with Store(swarm.store_path("full")) as store:
        wait_for(lambda: getattr(delivery(store, "first", "archive"), "status", None) == "ok", 15,
                 what="the first message archived while its wake waits")
        resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))
        try:
            go.touch()  # the wake finishes now, and its outcome cannot be written
            status = wait_for(lambda: (s := swarm.status("full")) and s["store_error"] and s, 15,
                              what="the daemon to report its store error")
            assert "I/O" in status["store_error"] or "full" in status["store_error"]
            with raw_client(swarm.broker.port) as pub:
                pub.publish("agents/full/inbox", encode(wire("full", id="second", subject="second")))
            wait_for(lambda: (swarm.status("full") or {}).get("unacked") == 1, 15, what="the second to wait unacked")
            doctor = swarm.cli("doctor", "--agent-id", "full", "--json")
            check = next(c for c in json.loads(doctor.stdout)["checks"] if c["name"] == "daemon")
            assert check["status"] == "fail" and "cannot write its store" in check["summary"], check
            assert store.undispatched() and [m.id for m in store.recent(5)] == ["first"]
        finally:
            resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        wait_for(lambda: store.count_messages() == 2 and not store.undispatched(), 30,
                 what="both messages stored and dispatched once writes work again")
    status = swarm.status("full")
    assert status is not None and status["store_error"] is None and status["unacked"] == 0
    assert daemon.proc.poll() is None  # no restart was needed
    text = inbox_text(swarm, "full")
    assert text.count('"id": "first"') == 1 and text.count('"id": "second"') == 1


# -- repeated SIGKILLs ---------------------------------------------------------------------------------------


def test_repeated_sigkills_archive_every_message_exactly_once(swarm: SwarmEnv) -> None:
    """1,000 messages streamed to a daemon with a slow wake handler and a small backlog (so the
    archive keeps appending while wakes run), SIGKILLed three times mid-dispatch: all 1,000
    stored once, and each in inbox.md exactly once."""
    total = 1000
    ids = [f"kill-{i:04d}-{uuid.uuid4().hex[:6]}" for i in range(total)]
    slow = ("--wake-policy", "all", "--invoke", "sleep 0.05", "--handler-concurrency", "8")
    small = {"SWARMBUS_BACKLOG": "16"}
    daemon = swarm.start_daemon("victim", *slow, env=small)
    with raw_client(swarm.broker.port) as pub, Store(swarm.store_path("victim")) as store:
        infos = [pub.publish("agents/victim/inbox", encode(wire("victim", id=mid, body=f"n {i}")), wait=False)
                 for i, mid in enumerate(ids)]

        def dispatched() -> int:
            return store.count_messages() - len(store.undispatched())

        for kill in range(3):
            floor = dispatched()
            wait_for(lambda f=floor: dispatched() > f + 60, 60, interval=0.005, what=f"progress before kill {kill + 1}")
            daemon.kill9()
            daemon = swarm.start_daemon("victim", *slow, env=small)
        for info in infos:
            info.wait_for_publish(30)
        daemon.stop()
        swarm.start_daemon("victim")  # no slow wake: finish quickly
        wait_for(lambda: store.count_messages() == total and not store.undispatched(), 90,
                 what="all messages stored and dispatched")
        assert sorted(store.message_ids()) == sorted(ids)
    text = inbox_text(swarm, "victim")
    counts = {mid: text.count(f'"id": "{mid}"') for mid in ids}
    assert all(n == 1 for n in counts.values()), {k: v for k, v in counts.items() if v != 1}
    assert text.count("\n## [") == total


def test_archive_appended_before_a_crash_is_not_appended_again(swarm: SwarmEnv) -> None:
    """The exact state a crash between the archive's append and its record leaves: the entry
    is in inbox.md, the store says the message was never dispatched. After the restart the
    message is dispatched again, and the archive recognises its own entry."""
    daemon = swarm.start_daemon("crashy")
    with raw_client(swarm.broker.port) as pub:
        pub.publish("agents/crashy/inbox", encode(wire("crashy", id="once-only", subject="once")))
    with Store(swarm.store_path("crashy")) as store:
        wait_for(lambda: store.count_messages() == 1 and not store.undispatched(), 15, what="the message dispatched")
        daemon.stop()
        with store.transaction() as db:  # undo the record, keep the append: as if killed in between
            db.execute("UPDATE dispatches SET done_at = NULL")
            db.execute("DELETE FROM deliveries")
        swarm.start_daemon("crashy")
        wait_for(lambda: not store.undispatched(), 15, what="the message dispatched again")
        archive = delivery(store, "once-only", "archive")
    assert archive.status == "ok" and archive.detail.startswith("already in"), archive
    assert inbox_text(swarm, "crashy").count('"id": "once-only"') == 1


# -- one owner per agent id ------------------------------------------------------------------------------------


def test_second_daemon_with_another_state_dir_stops_and_names_the_holder(swarm: SwarmEnv, tmp_path: Path) -> None:
    first = swarm.start_daemon("solo")
    connects = first.wait_connected()["connected_since"]
    other = testing.isolated_env(tmp_path / "other", swarm.broker_url, heartbeat=1, reconnect=(0.1, 0.5))
    (tmp_path / "other" / "config.toml").parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "other" / "config.toml").write_text("")
    log_path = tmp_path / "second.log"
    second = testing.start_daemon(other, "solo", log_path=log_path)
    try:
        assert second.wait(30) == 1
    finally:
        testing.stop_daemon(second)
    log = log_path.read_text()
    assert "held by a live swarmbus daemon" in log and f"pid {first.proc.pid}" in log, log
    assert "Traceback" not in log
    # the first one was never disturbed: same connection, still receiving
    status = swarm.status("solo")
    assert status is not None and status["connected"] and status["connected_since"] == connects
    with raw_client(swarm.broker.port) as pub:
        pub.publish("agents/solo/inbox", encode(wire("solo", subject="still mine")))
    with Store(swarm.store_path("solo")) as store:
        wait_for(lambda: any(m.subject == "still mine" for m in store.recent(5)), 15, what="the first to keep receiving")
    assert not (tmp_path / "other" / "state" / "agents" / "solo" / "store.sqlite3").exists() or \
        Store(tmp_path / "other" / "state" / "agents" / "solo" / "store.sqlite3").count_messages() == 0


def test_session_takeover_stops_the_daemon_that_lost_it(swarm: SwarmEnv) -> None:
    """A foreign client that keeps connecting with the daemon's client id (mosquitto 2.0 closes
    the old connection without a reason code): the daemon stops instead of ping-ponging."""
    daemon = swarm.start_daemon("taken")
    thief = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="swarmbus-taken",
                        protocol=mqtt.MQTTv5)
    thief.connect("127.0.0.1", swarm.broker.port)
    thief.loop_start()
    try:
        assert daemon.proc.wait(20) == 1
        log = daemon.log()
        assert "keeps connecting as swarmbus-taken" in log and "Traceback" not in log, log
    finally:
        thief.loop_stop()
        thief.disconnect()


def test_last_seen_after_a_crash_is_the_last_heartbeat(swarm: SwarmEnv) -> None:
    daemon = swarm.start_daemon("beating")
    started = time.time()
    wait_for(lambda: time.time() - started > 2.5, 5, interval=0.1, what="a few heartbeats (interval 1 s)")
    daemon.kill9()

    def record() -> dict[str, Any] | None:
        rows = json.loads(swarm.cli("list", "--all", "--json").stdout or "[]")
        row = next((r for r in rows if r["agent"] == "beating"), None)
        return row if row and row["status"] == "offline" else None

    row = wait_for(record, 15, what="the Last Will")
    assert row["reason"] == "connection lost"
    assert parse_timestamp(row["last_seen"]).timestamp() > started + 1.5, row  # a heartbeat, not the start


# -- hostile bytes on the control socket -------------------------------------------------------------------------


def test_control_socket_survives_garbage(swarm: SwarmEnv) -> None:
    import socket as socketlib

    swarm.start_daemon("sock")
    path = AgentPaths.for_agent("sock", swarm.state_dir).socket
    for junk in (b"not json\n", b"[1,2]\n", b'{"op": "send", "envelope": 5}\n', b"\xff\xfe\n", b"{" * 10000 + b"\n"):
        with socketlib.socket(socketlib.AF_UNIX) as s:
            s.connect(str(path))
            s.sendall(junk)
            answer = json.loads(s.makefile("rb").readline())
            assert answer["ok"] is False, answer
    assert swarm.status("sock")["connected"]  # type: ignore[index]
