"""The two-daemon exchange of tests/test_daemon.py, unchanged swarmbus settings, on each engine:
NATS (one node), a 3-node NATS cluster (the daemons given every node) and RabbitMQ's MQTT plugin.
None speaks MQTT 5 here (NATS 2.9 refuses it, RabbitMQ 3.10 closes the socket), so every client
falls back to MQTT 3.1.1 by itself, and a daemon drops its own broadcasts (no no-local)."""

from __future__ import annotations

import json

from engines import Bus, wait_for
from swarmbus.store import Store


def _inbox(bus: Bus, agent: str) -> str:
    path = bus.state_dir / "agents" / agent / "inbox.md"
    return path.read_text(encoding="utf-8") if path.exists() else ""


def test_two_daemons_exchange_directed_broadcast_list_and_doctor(bus: Bus) -> None:
    bus.start("alice")
    bus.start("bob")
    for agent in ("alice", "bob"):
        status = bus.status(agent)
        assert status["protocol"] == "3.1.1", (bus.engine.name, status)
        assert len(status["brokers"]) == len(bus.engine.urls), status
        assert status["broker"] in bus.engine.urls, status

    with Store(bus.store_path("alice")) as alice_store, Store(bus.store_path("bob")) as bob_store:
        # alice -> bob, directed, through alice's daemon
        sent = bus.cli("send", "--agent-id", "alice", "--to", "bob", "--subject", "plan review",
                       "--body", "line one\nline two", "--json", check=True)
        directed_id = json.loads(sent.stdout)["id"]
        wait_for(lambda: directed_id in bob_store.message_ids(), 20, "bob to store alice's message")
        wait_for(lambda: directed_id in _inbox(bus, "bob"), 10, "bob's inbox.md entry")
        text = _inbox(bus, "bob")
        assert "From: alice | plan review" in text and "line one\nline two" in text
        assert directed_id not in alice_store.message_ids()

        # bob -> broadcast: alice stores it; the broker echoes it to bob (MQTT 3.1.1 has no
        # no-local), and bob's daemon drops its own broadcast
        sent = bus.cli("send", "--agent-id", "bob", "--to", "broadcast", "--subject", "standup",
                       "--body", "in 5", "--json", check=True)
        broadcast_id = json.loads(sent.stdout)["id"]
        wait_for(lambda: broadcast_id in alice_store.message_ids(), 20, "alice to store bob's broadcast")
        wait_for(lambda: bob_store.counters().get("self_echo", 0) == 1, 20, "bob to drop its own broadcast")
        assert broadcast_id not in bob_store.message_ids()
        assert bob_store.count_messages() == 1 and alice_store.count_messages() == 1
        assert not alice_store.quarantined() and not bob_store.quarantined()

    # list: both online (on RabbitMQ 3.10 by exact-topic lookups: it sends no retained record to
    # the wildcard subscription)
    listed = wait_for(lambda: (lambda rows: rows if {"alice", "bob"} <= set(rows) else None)(bus.list_agents()),
                      20, "list to show alice and bob")
    assert listed["alice"]["status"] == "online" and listed["bob"]["status"] == "online", listed

    for agent in ("alice", "bob"):
        doctor = bus.cli("doctor", "--agent-id", agent)
        assert doctor.returncode == 0, f"{bus.engine.name}: doctor --agent-id {agent}\n{doctor.stdout}\n{doctor.stderr}"

    # a clean stop: bob is offline, and list says so
    bus.stop_all()
    listed = bus.list_agents("--all")
    assert listed["bob"]["status"] == "offline" and listed["bob"]["reason"] == "stopped", listed
    assert "alice" not in bus.list_agents(), "a stopped agent is not listed without --all"
