"""The delivery ladder: receipts on the wire, their parser, redelivery until ``stored``,
``send --wait STEP``, ``swarmbus trace``, and the predecessor in a mixed fleet.

Integration tests run real daemons on a private mosquitto; nothing sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, SwarmEnv, wait_for
from peers import encode, raw_client, wire
from swarmbus.control import request
from swarmbus.daemon.peers import Peers
from swarmbus.envelope import new_envelope
from swarmbus.paths import AgentPaths
from swarmbus.presence_records import presence_payload
from swarmbus.receipts import (
    MAX_RECEIPT_BYTES,
    Receipt,
    ReceiptError,
    parse_receipt,
    requested_steps,
    with_request,
)
from swarmbus.store import Store

FAST = {"SWARMBUS_REDELIVER_MIN": "0.2", "SWARMBUS_REDELIVER_MAX": "1"}
PRED_SWARMBUS = REPO / "bench" / ".venv-predecessor" / "bin" / "swarmbus"


def send(swarm: SwarmEnv, sender: str, to: str, *extra: str, body: str = "hello") -> subprocess.CompletedProcess[str]:
    return swarm.cli("send", "--agent-id", sender, "--to", to, "--subject", "s", "--body", body, "--json", *extra)


def trace(swarm: SwarmEnv, agent: str, message_id: str) -> dict[str, Any]:
    done = swarm.cli("trace", "--agent-id", agent, message_id, "--json", check=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def steps(store: Store, message_id: str) -> set[tuple[str, str]]:
    return {(s.step, s.by) for s in store.ladder(message_id)}


# -- the wire format ------------------------------------------------------------------------------


def test_receipt_round_trip_and_request_field() -> None:
    receipt = Receipt("25a7e691-8322", "stored", "bob", 1_700_000_000.5, "fine")
    assert parse_receipt(receipt.to_wire()) == receipt
    long = Receipt("x", "wake", "bob", 0.0, "\x00" + "é" * 5000).to_wire()
    assert len(long) <= MAX_RECEIPT_BYTES and "\\u0000" not in long.decode()
    envelope = new_envelope("alice", "bob", "s", "b")
    assert requested_steps(envelope) == frozenset()
    asked = with_request(envelope, ["replied", "surfaced", "stored", "bogus"])
    assert asked.extra["receipts"] == ["stored", "surfaced", "replied"] and asked.id == envelope.id
    assert requested_steps(asked) == {"stored", "surfaced", "replied"}
    assert with_request(asked, ["stored"]) is asked
    assert requested_steps(new_envelope("a", "b", "s", "b").__class__.from_dict(
        {**envelope.to_dict(), "receipts": "surfaced"})) == frozenset()


@pytest.mark.parametrize("payload", [
    b"", b"{", b"[]", b"null", b'"x"', b"\xff\xfe", b"{}" + b" " * MAX_RECEIPT_BYTES,
    b'{"receipt": 1, "id": "m", "step": "stored", "by": "bob", "at": "2026-01-01T00:00:00", "receipt": 1}',
    b'{"receipt": 2, "id": "m", "step": "stored", "by": "bob", "at": "2026-01-01T00:00:00"}',
    b'{"receipt": true, "id": "m", "step": "stored", "by": "bob", "at": "2026-01-01T00:00:00"}',
    b'{"receipt": 1, "id": "", "step": "stored", "by": "bob", "at": "2026-01-01T00:00:00"}',
    b'{"receipt": 1, "id": "a\\u0000", "step": "stored", "by": "bob", "at": "2026-01-01T00:00:00"}',
    b'{"receipt": 1, "id": "\\ud800", "step": "stored", "by": "bob", "at": "2026-01-01T00:00:00"}',
    b'{"receipt": 1, "id": "m", "step": "published", "by": "bob", "at": "2026-01-01T00:00:00"}',
    b'{"receipt": 1, "id": "m", "step": "stored", "by": "Bob!", "at": "2026-01-01T00:00:00"}',
    b'{"receipt": 1, "id": "m", "step": "stored", "by": "bob", "at": "yesterday"}',
    b'{"receipt": 1, "id": "m", "step": "stored", "by": "bob", "at": 5}',
    b'{"receipt": 1, "id": "m", "step": "stored", "by": "bob", "at": "2026-01-01T00:00:00", "detail": 3}',
    b'{"receipt": NaN}', b"[" * 100_000, b'{"receipt": 1e999}',
])
def test_parse_receipt_rejects_cleanly(payload: bytes) -> None:
    with pytest.raises(ReceiptError):
        parse_receipt(payload)


def test_parse_receipt_total_on_random_bytes() -> None:
    for i in range(2000):
        data = os.urandom(i % 300)
        with contextlib.suppress(ReceiptError):
            parse_receipt(data)


def test_presence_recognises_receipt_capable_and_predecessor_peers() -> None:
    subscribed: list[str] = []
    sentinels: list[bytes] = []
    peers = Peers("alice", subscribe=lambda subs: subscribed.extend(s.topic for s in subs),
                  send_sentinel=lambda payload: bool(sentinels.append(payload)))
    peers.on_connected()
    assert peers.capability("bob") == "unknown"  # not watched
    for agent in ("bob", "old", "new", "bad", "bob", "alice", "broadcast"):
        peers.watch(agent)
    assert subscribed == ["agents/bob/presence", "agents/old/presence", "agents/new/presence",
                          "agents/bad/presence"]  # once each; never our own id or broadcast
    assert peers.capability("bob") == "unknown"  # watched, but the broker has not answered yet
    peers.on_synced()  # the connection's first sentinel proves nothing about later watches
    assert peers.capability("bob") == "unknown"
    # the predecessor's record: {"agent", "status"} only
    peers.on_message("agents/old/presence", json.dumps({"agent": "old", "status": "online"}).encode())
    peers.on_message("agents/new/presence", presence_payload("new", "online", receipts=1))
    peers.on_message("agents/bad/presence", b"\xff garbage")
    peers.on_message("agents/stranger/presence", presence_payload("stranger", "online", receipts=1))
    for payload in sentinels:
        assert peers.on_sentinel(payload)
    assert not peers.on_sentinel(b"sync")
    assert peers.capability("old") == "no receipts"
    assert peers.capability("new") == "receipts"
    assert peers.capability("bad") == "never seen"
    assert peers.capability("bob") == "never seen"
    assert peers.record("stranger") is None  # not watched: not kept


def test_presence_watch_made_before_the_connect_is_synced_by_its_first_sentinel() -> None:
    online: list[str] = []
    peers = Peers("alice", on_online=online.append)
    peers.watch("bob")  # e.g. a redelivery left from before a restart
    peers.on_connected()
    peers.on_message("agents/bob/presence", presence_payload("bob", "offline", receipts=1))
    peers.on_synced()
    assert peers.capability("bob") == "receipts" and online == []
    peers.on_message("agents/bob/presence", presence_payload("bob", "online", receipts=1))
    assert online == ["bob"]
    peers.on_connected()  # a reconnect: a sentinel from before it proves nothing now
    peers.watch("carol")
    assert peers.on_sentinel(b"peers 2") and peers.capability("carol") == "unknown"
    peers.on_synced()  # published before carol's subscription: covers bob, not carol
    assert peers.capability("carol") == "unknown"
    assert peers.on_sentinel(b"peers 2") and peers.capability("carol") == "never seen"


def test_stored_receipts_go_only_to_envelopes_that_ask(tmp_path: Path) -> None:
    """A plain publisher, the predecessor or a `send --direct` asks for no receipt and gets none
    (a burst must not make thousands of publishes nobody reads); an envelope that asks for any
    step gets ``stored`` at QoS 0, and again for a duplicate."""
    from swarmbus.api import StoredMessage
    from swarmbus.daemon.receipts import Ladder
    from swarmbus.plugins import HookRelay, get_plugin_manager
    from swarmbus.receipts import STORED, requested_steps, with_request

    published: list[tuple[str, int]] = []

    class Link:
        def publish(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1) -> None:
            published.append((topic, qos))

    store = Store(tmp_path / "store.sqlite3")
    ladder = Ladder(store, "bob", Link(), HookRelay(get_plugin_manager()))  # type: ignore[arg-type]
    asking = with_request(new_envelope("plainpub", "bob", "s", "b"), ["surfaced"])
    daemon_send = with_request(new_envelope("alice", "bob", "s", "b"), [STORED])
    assert requested_steps(asking) == {"stored", "surfaced"} and requested_steps(daemon_send) == {"stored"}
    messages = [StoredMessage(i, env, "agents/bob/inbox", 1.0) for i, env in enumerate(
        [daemon_send, new_envelope("plainpub", "bob", "s", "b"), asking], 1)]
    ladder.stored(messages)
    ladder.duplicates([messages[1].envelope, messages[0].envelope])
    assert published == [("agents/alice/receipts", 0), ("agents/plainpub/receipts", 0), ("agents/alice/receipts", 0)]
    store.close()


# -- between daemons ---------------------------------------------------------------------------------


def test_stored_receipt_trace_and_send_wait_stored(swarm: SwarmEnv) -> None:
    swarm.start_daemon("alice")
    swarm.start_daemon("bob")
    done = send(swarm, "alice", "bob", "--wait", "stored", "--timeout", "20")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["reached"] in ("stored", "wake") and "never seen" not in done.stderr
    with Store(swarm.store_path("alice")) as alice:
        assert ("stored", "bob") in steps(alice, out["id"])
        assert alice.redelivery(out["id"]).ended == "stored"  # type: ignore[union-attr]
    ladder = trace(swarm, "alice", out["id"])
    assert ladder["sent"]["to"] == "bob" and [s["step"] for s in ladder["steps"]][:2] == ["published", "stored"]
    assert trace(swarm, "bob", out["id"])["received"]["from"] == "alice"
    text = swarm.cli("trace", "--agent-id", "alice", out["id"], check=True).stdout
    assert "stored" in text and "by bob" in text
    assert swarm.cli("trace", "--agent-id", "alice", "no-such-id").returncode == 1


def test_receipts_are_hostile_input(swarm: SwarmEnv) -> None:
    alice = swarm.start_daemon("alice")
    swarm.start_daemon("bob")
    sent = json.loads(send(swarm, "alice", "bob", "--wait", "stored", "--timeout", "20").stdout)
    with raw_client(swarm.broker.port) as mallory:  # type: ignore[attr-defined]
        for payload in (b"\xff", b"{}", b"[" * 5000, Receipt("not-sent-by-alice", "stored", "bob", 0).to_wire(),
                        Receipt(sent["id"], "replied", "carol", 0).to_wire()):  # carol was not the recipient
            mallory.publish("agents/alice/receipts", payload)
    status = wait_for(lambda: (s := swarm.status("alice")) and s["receipts_rejected"] >= 5 and s, 10,
                      what="alice to reject the forged receipts")
    assert status["connected"] and alice.proc.poll() is None
    with Store(swarm.store_path("alice")) as store:
        assert steps(store, "not-sent-by-alice") == set()
        assert ("replied", "carol") not in steps(store, sent["id"])


def test_send_to_an_agent_that_starts_later_arrives_and_wait_returns(swarm: SwarmEnv) -> None:
    swarm.start_daemon("alice", env=FAST)
    proc = subprocess.Popen(  # send --wait stored while bob has never run: no session, no subscriber
        [os.sys.executable, "-m", "swarmbus", "send", "--agent-id", "alice", "--to", "bob", "--subject", "s",  # type: ignore[attr-defined]
         "--body", "early", "--json", "--wait", "stored", "--timeout", "60"],
        env=swarm.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with Store(swarm.store_path("alice")) as alice:
            first = wait_for(lambda: alice.redeliveries_due(1e12), 20, what="alice to spool the send")[0]
            wait_for(lambda: (r := alice.redelivery(first.message_id)) and r.attempts >= 2, 20,
                     what="alice to republish while bob is not running")
            assert proc.poll() is None  # still waiting: nobody has stored it
            swarm.start_daemon("bob")
            out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "has never been seen" in err
        message_id = json.loads(out)["id"]
        assert message_id == first.message_id
        with Store(swarm.store_path("bob")) as bob:
            assert bob.message_ids() == [message_id]
            assert bob.message_by_id(message_id).body == "early"  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_redelivery_and_receipts_survive_a_sender_sigkill(swarm: SwarmEnv) -> None:
    alice = swarm.start_daemon("alice", env=FAST)
    done = send(swarm, "alice", "bob", body="before the kill")
    assert done.returncode == 0, done.stderr
    message_id = json.loads(done.stdout)["id"]
    with Store(swarm.store_path("alice")) as store:
        wait_for(lambda: (r := store.redelivery(message_id)) and r.attempts >= 1, 20, what="a first republish")
    alice.kill9()
    bob = swarm.start_daemon("bob")  # alice is down: her persisted redelivery must bring it here
    swarm.start_daemon("alice", env=FAST)
    with Store(swarm.store_path("bob")) as bob_store, Store(swarm.store_path("alice")) as store:
        wait_for(lambda: message_id in bob_store.message_ids(), 30, what="bob to store the message after alice's restart")
        wait_for(lambda: ("stored", "bob") in steps(store, message_id), 30, what="alice to get bob's stored receipt")
        assert store.redelivery(message_id).ended == "stored"  # type: ignore[union-attr]
        # the receiver dies before the sender gets the receipt: after its restart, the duplicate
        # republish gets the receipt again, and bob still holds one copy
        second = json.loads(send(swarm, "alice", "bob", "--wait", "stored", "--timeout", "20").stdout)
        bob.kill9()
        swarm.start_daemon("bob")
        third = send(swarm, "alice", "bob", "--wait", "stored", "--timeout", "20")
        assert third.returncode == 0, third.stderr
        assert sorted(bob_store.message_ids()) == sorted([message_id, second["id"], json.loads(third.stdout)["id"]])


def test_send_wait_times_out_saying_which_step(swarm: SwarmEnv) -> None:
    swarm.start_daemon("alice", env=FAST)
    swarm.start_daemon("bob")
    done = send(swarm, "alice", "bob", "--wait", "surfaced", "--timeout", "1")
    assert done.returncode == 1
    assert "waiting for surfaced" in done.stderr and ("reached stored" in done.stderr or "reached wake" in done.stderr)
    assert send(swarm, "alice", "bob", "--wait", "stored", "--direct").returncode == 2


def test_later_steps_surfaced_acknowledged_replied(swarm: SwarmEnv) -> None:
    swarm.start_daemon("alice")
    swarm.start_daemon("bob")
    sent = json.loads(send(swarm, "alice", "bob", "--wait", "stored", "--timeout", "20").stdout)
    original = sent["id"]
    # ask bob's daemon for the message as read_inbox does: it is surfaced, then acknowledged
    socket = AgentPaths.for_agent("bob", swarm.state_dir).socket
    answer = request(socket, {"op": "read", "consumer": "mcp", "max": 10})
    assert [m["id"] for m in answer["messages"]] == [original]
    request(socket, {"op": "read", "consumer": "mcp", "ack_ids": [original], "max": 0})
    reply = swarm.cli("send", "--agent-id", "bob", "--to", "alice", "--subject", "re", "--body", "ok",
                      "--in-reply-to", original, "--json", check=True)
    reply_id = json.loads(reply.stdout)["id"]
    with Store(swarm.store_path("bob")) as bob, Store(swarm.store_path("alice")) as alice:
        assert {"surfaced", "acknowledged", "replied"} <= {s for s, _ in steps(bob, original)}
        wait_for(lambda: ("replied", "bob") in steps(alice, original), 10, what="alice to see bob's reply")
        wait_for(lambda: reply_id in alice.message_ids(), 10, what="alice to store the reply")
    # alice asked for surfaced: the receipt comes back; with no reader it times out at `stored`
    asked = send(swarm, "alice", "bob", "--wait", "surfaced", "--timeout", "30")
    assert asked.returncode == 1  # nobody reads bob's inbox in this test
    wire_id = json.loads(asked.stdout)["id"]
    with Store(swarm.store_path("bob")) as bob:
        assert bob.message_by_id(wire_id).envelope.extra["receipts"] == ["stored", "surfaced"]  # type: ignore[union-attr]


# -- the predecessor in a mixed fleet -------------------------------------------------------------------


def _predecessor() -> Path | None:
    if PRED_SWARMBUS.exists():
        return PRED_SWARMBUS
    try:  # the bench installs it the same way (pip install swarmbus-py==0.2.0)
        import sys

        sys.path.insert(0, str(REPO / "bench"))
        from harness import ensure_predecessor

        return ensure_predecessor()  # type: ignore[no-any-return]
    except Exception:
        return None


def test_predecessor_receiver_gets_exactly_one_copy(swarm: SwarmEnv, tmp_path: Path) -> None:
    exe = _predecessor()
    if exe is None:
        pytest.skip("swarmbus-py 0.2.0 cannot be installed here (bench/.venv-predecessor is missing and pip "
                    "could not install it); test_presence_recognises_receipt_capable_and_predecessor_peers "
                    "still checks the recognition")
    port = swarm.broker.port  # type: ignore[attr-defined]
    inbox = tmp_path / "old-inbox.md"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWARMBUS_", "MQTT_"))}
    log = open(tmp_path / "pred.log", "wb")  # noqa: SIM115 - closed below
    pred = subprocess.Popen([str(exe), "start", "--agent-id", "old", "--broker", "127.0.0.1", "--port", str(port),
                             "--inbox", str(inbox)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        with raw_client(port, "agents/old/presence", "agents/old/inbox") as sniffer:
            wait_for(lambda: any(json.loads(m.payload or b"{}").get("status") == "online"
                                 for m in sniffer.received("agents/old/presence")), 30, what="the predecessor online")
            swarm.start_daemon("alice", env=FAST)
            done = send(swarm, "alice", "old", body="to the old one")
            assert done.returncode == 0, done.stderr
            message_id = json.loads(done.stdout)["id"]
            assert "never been seen" not in done.stderr
            with Store(swarm.store_path("alice")) as alice:
                # the first send to `old` watches its presence: recognised (no receipts), so no retries
                wait_for(lambda: getattr(alice.redelivery(message_id), "ended", None) == "no receipts", 10,
                         what="alice to see the predecessor sends no receipts")
                assert alice.redelivery(message_id).attempts == 0  # type: ignore[union-attr]
            wait_for(lambda: "to the old one" in (inbox.read_text() if inbox.exists() else ""), 20,
                     what="the predecessor to archive the message")
            # a barrier: once a later message is in, every copy of the first would have been too
            barrier = json.loads(send(swarm, "alice", "old", body="barrier").stdout)["id"]
            wait_for(lambda: "barrier" in inbox.read_text(), 20, what="the barrier message")
            copies = [m for m in sniffer.received("agents/old/inbox") if json.loads(m.payload)["id"] == message_id]
            assert len(copies) == 1
            assert inbox.read_text().count("to the old one") == 1
            assert barrier
            with raw_client(port) as pub:  # the predecessor ignores receipts and stays up
                pub.publish("agents/old/receipts", encode(wire("old")))
            assert pred.poll() is None
    finally:
        os.killpg(pred.pid, 9)
        pred.wait(10)
        log.close()
