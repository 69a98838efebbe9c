"""Integration tests for the listener daemon (``swarmbus start``) on a private mosquitto.

Each test drives real daemon processes through the CLI and a raw paho client, and checks what
ends up in the per-agent store, the markdown inbox, the wake children and the retained
presence records. Nothing sleeps to synchronise: every wait polls a condition with a deadline.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from conftest import SwarmEnv, wait_for
from peers import (
    PID_CHILD,
    delivery,
    encode,
    inbox_text,
    presence,
    py_command,
    raw_client,
    wire,
)
from swarmbus.envelope import WIRE_KEYS, parse_timestamp
from swarmbus.store import Store
from swarmbus.testing import pid_alive

# -- 1. directed and broadcast between two daemons ----------------------------------------------


def test_two_daemons_exchange_directed_and_broadcast(swarm: SwarmEnv) -> None:
    alice = swarm.start_daemon("alice")
    bob = swarm.start_daemon("bob")
    assert bob.wait_connected()["protocol"] == "5"

    with raw_client(swarm.broker.port, "agents/bob/inbox") as sniffer, \
            Store(swarm.store_path("alice")) as alice_store, Store(swarm.store_path("bob")) as bob_store:
        # alice -> bob, directed, sent through alice's daemon
        sent = swarm.cli("send", "--agent-id", "alice", "--to", "bob", "--subject", "plan review",
                         "--body", "line one\nline two", "--json", check=True)
        directed_id = json.loads(sent.stdout)["id"]
        wait_for(lambda: directed_id in bob_store.message_ids(), 10, what="bob to store alice's message")
        wait_for(lambda: directed_id in inbox_text(swarm, "bob"), 10, what="bob's inbox.md entry")
        text = inbox_text(swarm, "bob")
        assert "## [" in text and "From: alice | plan review" in text
        assert "line one\nline two" in text
        assert directed_id not in alice_store.message_ids()

        # the wire format is the predecessor's: these keys, in this order, with json.dumps spacing;
        # then the request for a `stored` receipt (an extra field the predecessor ignores)
        msg = wait_for(lambda: sniffer.received("agents/bob/inbox"), 5, what="the raw copy of the message")[0]
        raw = bytes(msg.payload)
        decoded = json.loads(raw)
        assert list(decoded) == [*WIRE_KEYS, "receipts"] and decoded["receipts"] == ["stored"]
        assert raw.startswith(b'{"id": "') and b'"from": "alice", "to": "bob"' in raw
        assert decoded["body"] == "line one\nline two"
        assert decoded["priority"] == "normal" and decoded["reply_to"] is None

        # bob -> broadcast: alice stores it, bob never receives its own broadcast
        sent = swarm.cli("send", "--agent-id", "bob", "--to", "broadcast", "--subject", "standup",
                         "--body", "in 5", "--json", check=True)
        broadcast_id = json.loads(sent.stdout)["id"]
        wait_for(lambda: broadcast_id in alice_store.message_ids(), 10, what="alice to store bob's broadcast")
        # barrier: a message to bob published after the broadcast reached alice; once bob has it,
        # the broker has already routed bob's broadcast (mosquitto routes publishes in order)
        sent = swarm.cli("send", "--agent-id", "alice", "--to", "bob", "--subject", "barrier",
                         "--body", "x", "--json", check=True)
        barrier_id = json.loads(sent.stdout)["id"]
        wait_for(lambda: barrier_id in bob_store.message_ids(), 10, what="bob to store the barrier message")
        assert broadcast_id not in bob_store.message_ids()
        assert bob_store.counters().get("self_echo", 0) == 0  # MQTT 5 no-local: the broker never sent it
        assert bob_store.count_messages() == 2
        assert alice_store.count_messages() == 1
        assert alice.proc.poll() is None and bob.proc.poll() is None


# -- 2. SIGKILL in the middle of a burst ---------------------------------------------------------


def test_sigkill_mid_burst_loses_and_duplicates_nothing(swarm: SwarmEnv, tmp_path: Path) -> None:
    piddir = tmp_path / "pids"
    piddir.mkdir()
    carol = swarm.start_daemon("carol", "--wake-policy", "all", "--invoke", py_command(PID_CHILD, str(piddir)))
    ids = [f"burst-{i:03d}-{uuid.uuid4().hex[:8]}" for i in range(100)]
    payloads = [encode(wire("carol", body=f"message {i}", id=mid)) for i, mid in enumerate(ids)]

    with raw_client(swarm.broker.port) as pub, Store(swarm.store_path("carol")) as store:
        infos: list[mqtt.MQTTMessageInfo] = []
        second_burst = threading.Event()

        def publish_all() -> None:
            # two back-to-back bursts; the second starts the instant before the kill, so the
            # daemon dies while messages are still arriving (however fast it drained the first)
            for i, payload in enumerate(payloads):
                if i == 50:
                    second_burst.wait(15)
                infos.append(pub.publish("agents/carol/inbox", payload, wait=False))

        publisher = threading.Thread(target=publish_all)
        publisher.start()
        try:
            wait_for(lambda: any(piddir.glob("*.pid")), 10, interval=0.001, what="a wake child to be running")
            second_burst.set()
            carol.kill9()
        finally:
            second_burst.set()
            publisher.join(10)
        stored_at_kill = store.count_messages()
        stored_ids_at_kill = set(store.message_ids())
        archived_at_kill = {mid for mid in stored_ids_at_kill
                            if getattr(delivery(store, mid, "archive"), "status", None) == "ok"}
        undispatched_at_kill = {m.id for m in store.undispatched()}
        running_at_kill = {p.name.removesuffix(".pid") for p in piddir.glob("*.pid")}
        assert running_at_kill, "the kill should have interrupted a running wake"
        assert undispatched_at_kill, "the kill should have left messages undispatched"
        assert stored_at_kill < 100, "the kill should have come while messages were still arriving"

        # the wake children have their own session; they die with the daemon (its reaper kills them)
        pids = wait_for(lambda: [int(p.read_text()) for p in piddir.glob("*.pid")], 5, what="wake child pids")
        for pid in pids:
            wait_for(lambda pid=pid: not pid_alive(pid), 5, what=f"wake child {pid} to die with the daemon")

        for info in infos:  # the broker holds all 100 for carol's session
            info.wait_for_publish(5)
            assert info.is_published()

        swarm.start_daemon("carol")  # no waker this time: wakes finish at once
        wait_for(lambda: store.count_messages() == 100 and not store.undispatched(), 30,
                 what=f"all 100 messages stored and dispatched (had {stored_at_kill} at the kill)")

        stored_ids = store.message_ids()
        assert len(stored_ids) == 100
        assert sorted(stored_ids) == sorted(ids)  # each exactly once (id is UNIQUE, and no extras)
        assert store.counters().get("stored") == 100
        assert not store.quarantined()
        text = inbox_text(swarm, "carol")
        for mid in ids:
            archive = delivery(store, mid, "archive")
            assert archive is not None and archive.status == "ok", (mid, archive)
            # finished handlers are not re-run, and an append interrupted before its record is not
            # repeated: the archive is idempotent per message id
            assert text.count(f'"id": "{mid}"') == 1, mid
            if mid in archived_at_kill or mid not in stored_ids_at_kill:
                assert archive.attempts == 1, (mid, archive)
        # what had not finished dispatch before the kill was dispatched again after the restart
        for mid in undispatched_at_kill:
            wake = delivery(store, mid, "wake")
            assert wake is not None and wake.status == "ok", (mid, wake)
            assert wake.detail.startswith("not woken"), wake.detail
        for mid in running_at_kill:  # an interrupted wake is not recorded: it ran again, once
            wake = delivery(store, mid, "wake")
            assert wake is not None and wake.status == "ok" and wake.attempts == 1, (mid, wake)
    # no wake child of the killed daemon outlived it, even one that was still starting at the kill
    for pid_file in piddir.glob("*.pid"):
        pid = int(pid_file.read_text())
        wait_for(lambda pid=pid: not pid_alive(pid), 5, what=f"orphaned wake child {pid} to be gone")


# -- 3. clean stop publishes offline -------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_clean_stop_leaves_presence_offline(swarm: SwarmEnv, sig: int) -> None:
    daemon = swarm.start_daemon("frank")
    _, _, before = presence(swarm.broker.port, "frank")
    assert before["status"] == "online"

    assert daemon.stop(sig) == 0
    retained, raw, record = presence(swarm.broker.port, "frank")
    assert retained
    assert list(record)[:2] == ["agent", "status"] and raw.startswith(b'{"agent": "frank"')
    assert record["agent"] == "frank" and record["status"] == "offline"
    assert record["reason"] == "stopped"  # published by the daemon itself, not the Last Will
    assert swarm.status("frank") is None


# -- 4. crash fires the Last Will ------------------------------------------------------------------


def test_crash_fires_last_will(swarm: SwarmEnv) -> None:
    daemon = swarm.start_daemon("gina")
    topic = "agents/gina/presence"
    with raw_client(swarm.broker.port, topic) as watcher:
        wait_for(lambda: any(json.loads(m.payload)["status"] == "online" for m in watcher.received(topic)),
                 5, what="gina online")
        daemon.kill9()
        wait_for(lambda: json.loads(watcher.received(topic)[-1].payload)["status"] == "offline", 10,
                 what="gina's Last Will")
    retained, _, record = presence(swarm.broker.port, "gina")
    assert retained
    assert record["agent"] == "gina" and record["status"] == "offline"
    assert record["reason"] == "connection lost"


# -- 5. quarantine while serving --------------------------------------------------------------------


def test_quarantine_keeps_serving(swarm: SwarmEnv) -> None:
    daemon = swarm.start_daemon("dave")
    topic = "agents/dave/inbox"
    reused = str(uuid.uuid4())
    first_of_pair = wire("dave", id=reused, body="the first")
    bad: list[tuple[bytes, str]] = [
        (b"this is {not json", "not JSON"),
        (b"\xff\xfe binary \x00", "not UTF-8"),
        (b"[1, 2, 3]", "must be a JSON object"),
        (encode(wire("dave", body="a") | {"body": "a" * 65_537}), "65537 bytes"),
        (encode(wire("dave") | {"body": 42}), "body must be a string"),
        (encode(wire("dave") | {"to": "dave\n"}), "invalid recipient"),
        (encode(wire("dave") | {"from": "system"}), "reserved"),
        (encode(wire("erin")), "addressed to 'erin'"),
        (encode(wire("dave", id=reused, body="the second")), "conflicting duplicate"),
    ]
    twice = encode(wire("dave", body="say it twice"))
    valid = wire("dave", subject="still here", body="after the garbage")

    with raw_client(swarm.broker.port) as pub, Store(swarm.store_path("dave")) as store:
        pub.publish(topic, encode(first_of_pair))
        for payload, _ in bad:
            pub.publish(topic, payload)
        pub.publish(topic, twice)
        pub.publish(topic, twice)
        pub.publish(topic, encode(valid))
        # one publisher, one topic: the broker delivers in order, so the valid one comes last
        wait_for(lambda: valid["id"] in store.message_ids(), 10, what="the valid message to be stored")
        wait_for(lambda: getattr(delivery(store, valid["id"], "archive"), "status", None) == "ok", 10,
                 what="the valid message to be archived")

        assert daemon.proc.poll() is None
        assert daemon.wait_connected()["connected"]
        assert store.message_ids() == [reused, json.loads(twice)["id"], valid["id"]]
        counters = store.counters()
        assert counters.get("stored") == 3
        assert counters.get("duplicates") == 1
        assert counters.get("quarantined") == len(bad)
        text = inbox_text(swarm, "dave")
        assert "after the garbage" in text and "the first" in text and "the second" not in text
        assert text.count("say it twice") == 1
        assert [r.payload for r in store.quarantined()] == [payload for payload, _ in bad]  # byte for byte

    out = swarm.cli("inbox", "--agent-id", "dave", "--quarantined", "--json", check=True)
    listing = json.loads(out.stdout)
    rows = listing["quarantined"]
    assert len(rows) == len(bad)
    for row, (payload, reason) in zip(rows, bad, strict=True):
        assert row["topic"] == topic
        assert reason in row["reason"], (reason, row["reason"])
        assert row["payload"] == payload.decode("utf-8", "backslashreplace")
    assert rows[-1]["message_id"] == reused
    assert listing["counters"]["quarantined"] == len(bad)


# -- 6. slow wakes neither block the archive nor outlive their timeout -----------------------------


def test_wake_timeout_is_isolated_and_kills_the_child(swarm: SwarmEnv, tmp_path: Path) -> None:
    piddir = tmp_path / "pids"
    piddir.mkdir()
    swarm.start_daemon("hank", "--wake-policy", "all", "--invoke", py_command(PID_CHILD, str(piddir)),
                       "--handler-timeout", "1")
    msgs = [wire("hank", subject=f"slow {i}", body=f"body {i}") for i in range(3)]
    with raw_client(swarm.broker.port) as pub, Store(swarm.store_path("hank")) as store:
        for m in msgs:
            pub.publish("agents/hank/inbox", encode(m))

        def all_archived() -> bool:
            text = inbox_text(swarm, "hank")
            return all(m["id"] in text for m in msgs)

        wait_for(all_archived, 10, what="all three messages in inbox.md")
        wakes = [delivery(store, m["id"], "wake") for m in msgs]
        assert all(w is None or w.status == "running" for w in wakes), wakes  # no wake has finished yet

        for m in msgs:
            wait_for(lambda m=m: getattr(delivery(store, m["id"], "wake"), "status", None) == "timeout", 10,
                     what=f"the wake of {m['subject']} to time out")
            wake = delivery(store, m["id"], "wake")
            assert wake.detail == "timed out after 1s"
            assert delivery(store, m["id"], "archive").status == "ok"
        assert store.counters().get("handler_timeout") == 3

    for m in msgs:
        pid_file = piddir / f"{m['id']}.pid"
        assert pid_file.exists(), "the wake child never started"
        pid = int(pid_file.read_text())
        wait_for(lambda pid=pid: not pid_alive(pid), 5, what=f"wake child {pid} to be killed")


# -- 7. the wake child's environment is scrubbed ---------------------------------------------------


def test_wake_child_environment_is_scrubbed(swarm: SwarmEnv, tmp_path: Path) -> None:
    out = tmp_path / "wake"
    out.mkdir()
    dump = ("import json,os,sys; p=os.path.join(sys.argv[1], os.environ['SWARMBUS_ID']);"
            " open(p+'.stdin','w').write(sys.stdin.read()); json.dump(dict(os.environ), open(p+'.env','w'))")
    secrets = {"SWARMBUS_BROKER_PASSWORD": "s3cret", "MQTT_PASSWORD": "s3cret"}
    daemon = swarm.start_daemon("ivy", "--invoke", py_command(dump, str(out)), env=secrets)
    assert b"SWARMBUS_BROKER_PASSWORD=s3cret" in Path(f"/proc/{daemon.proc.pid}/environ").read_bytes()

    with Store(swarm.store_path("ivy")) as store:
        sent = swarm.cli("send", "--agent-id", "judy", "--to", "ivy", "--subject", "urgent thing",
                         "--body", "wake up\nplease", "--priority", "high", "--json", check=True)
        high_id = json.loads(sent.stdout)["id"]
        wait_for(lambda: getattr(delivery(store, high_id, "wake"), "status", None) == "ok", 15,
                 what="the high-priority wake to finish")
        assert delivery(store, high_id, "wake").detail.startswith("woken")

        sent = swarm.cli("send", "--agent-id", "judy", "--to", "ivy", "--subject", "fyi",
                         "--body", "no rush", "--json", check=True)
        normal_id = json.loads(sent.stdout)["id"]
        wait_for(lambda: getattr(delivery(store, normal_id, "wake"), "status", None) == "ok", 15,
                 what="the normal-priority wake decision")
        assert delivery(store, normal_id, "wake").detail.startswith("not woken")

    env = json.loads((out / f"{high_id}.env").read_text())
    assert (out / f"{high_id}.stdin").read_text() == "wake up\nplease"
    assert env["SWARMBUS_FROM"] == "judy"
    assert env["SWARMBUS_SUBJECT"] == "urgent thing"
    assert env["SWARMBUS_ID"] == high_id
    assert env["SWARMBUS_PRIORITY"] == "high"
    leaked = {k: v for k, v in env.items() if "s3cret" in k or "s3cret" in v}
    assert not leaked, f"broker credentials reached the wake child: {sorted(leaked)}"
    assert not (out / f"{normal_id}.env").exists()


# -- 8. broker restart ------------------------------------------------------------------------------


def test_broker_restart_delivers_queued_send(swarm: SwarmEnv) -> None:
    alice = swarm.start_daemon("kate")
    bob = swarm.start_daemon("liam")
    _, _, before = presence(swarm.broker.port, "kate")
    assert before["status"] == "online"

    assert swarm.broker.stop() == 0
    for d in (alice, bob):
        wait_for(lambda d=d: not (swarm.status(d.agent_id) or {}).get("connected", True), 10,
                 what=f"{d.agent_id} to notice the broker is gone")

    sent = swarm.cli("send", "--agent-id", "kate", "--to", "liam", "--subject", "while down",
                     "--body", "spooled", "--wait", "0.5")
    assert sent.returncode == 0, sent.stderr
    assert "Queued for" in sent.stdout
    assert swarm.status("kate")["outbox_pending"] == 1

    restarted_at = time.time()
    swarm.broker.restart()
    alice.wait_connected(20)
    bob.wait_connected(20)
    with Store(swarm.store_path("liam")) as store:
        wait_for(lambda: any(m.subject == "while down" for m in store.recent(10)), 20,
                 what="the queued message to reach liam")
        [message] = [m for m in store.recent(10) if m.subject == "while down"]
        assert message.from_agent == "kate" and message.body == "spooled"
    wait_for(lambda: swarm.status("kate")["outbox_pending"] == 0, 10, what="kate's outbox to drain")

    for agent in ("kate", "liam"):
        _, _, record = presence(swarm.broker.port, agent)
        assert record["status"] == "online"
        assert parse_timestamp(record["ts"]).timestamp() >= restarted_at - 1  # republished after reconnect


# -- 9. one daemon per agent id -------------------------------------------------------------------


def test_second_daemon_for_same_id_is_refused(swarm: SwarmEnv) -> None:
    first = swarm.start_daemon("mona")
    proc = swarm.cli("start", "--agent-id", "mona", timeout=30)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "owned by" in proc.stderr
    assert f"pid {first.proc.pid}" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    # the first daemon is untouched: still running, still answering on its socket
    assert first.proc.poll() is None
    status = first.wait_connected()
    assert status["pid"] == first.proc.pid
