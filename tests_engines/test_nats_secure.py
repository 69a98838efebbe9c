"""The least-privilege set-up of `swarmbus broker acl` on NATS: `swarmbus broker --engine nats
--secure DIR` runs nats-server with its users and per-subject permissions, honest agents in
verified-sender mode exchange messages, and what the permissions deny never reaches anyone
(NATS drops it: MQTT 3.1.1 cannot refuse a publish)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from engines import RawClient, require_nats, wait_for
from swarmbus import testing
from swarmbus.dev_broker import free_port
from swarmbus.envelope import new_envelope
from swarmbus.store import Store


@pytest.fixture
def secure_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, Path]]:
    """``(root, url, acl dir)``: a detached secure NATS started by the CLI, stopped afterwards."""
    require_nats()
    root = Path(tmp_path_factory.mktemp("sn"))
    acl_dir = root / "auth"
    env = testing.isolated_env(root, "")
    made = testing.run_cli(env, "broker", "acl", "alice", "bob", "--observer", "dash", "--dir", str(acl_dir))
    assert made.returncode == 0, testing.describe_run(made)
    port = free_port()
    started = testing.run_cli(env, "broker", "--engine", "nats", "--secure", str(acl_dir), "--port", str(port),
                              "--detach", timeout=90)
    assert started.returncode == 0, testing.describe_run(started)
    try:
        yield root, f"mqtt://127.0.0.1:{port}", acl_dir
    finally:
        stopped = testing.run_cli(env, "broker", "--engine", "nats", "--secure", str(acl_dir), "--port", str(port),
                                  "--stop")
        assert stopped.returncode == 0, testing.describe_run(stopped)


def test_verified_agents_on_secure_nats(secure_nats: tuple[Path, str, Path]) -> None:
    root, url, acl_dir = secure_nats

    def env(principal: str) -> dict[str, str]:
        return testing.isolated_env(root, url, heartbeat=1, reconnect=(0.1, 0.5),
                                    SWARMBUS_CONFIG=str(acl_dir / "agents" / principal / "swarmbus.toml"))

    def password(principal: str) -> str:
        return (acl_dir / "agents" / principal / "password").read_text().strip()

    anonymous = testing.run_cli(testing.isolated_env(root, url), "list")
    assert anonymous.returncode != 0  # no credentials: refused

    procs = []
    for agent in ("alice", "bob"):
        log = root / f"{agent}.log"
        proc = testing.start_daemon(env(agent), agent, log_path=log)
        procs.append(proc)
        testing.wait_daemon_connected(env(agent), agent, proc, 60, log_path=log)
    try:
        sent = testing.run_cli(env("alice"), "send", "--to", "bob", "--subject", "hi", "--body", "honest",
                               "--wait", "stored", "--timeout", "30", "--json")
        assert sent.returncode == 0, testing.describe_run(sent)
        assert json.loads(sent.stdout)["reached"] == "stored"  # the receipt came on agents/alice/receipts/bob

        spoof = new_envelope("carol", "bob", "spoof", "from carol, honestly")
        forged = json.dumps({"agent": "bob", "status": "offline", "reason": "stopped"}).encode()
        marker = new_envelope("alice", "bob", "marker", "after the spoofs")
        raw = RawClient(url, username="alice", password=password("alice"))
        try:
            for topic, payload, retain in (("agents/bob/inbox/carol", spoof.to_wire(), False),
                                           ("agents/bob/inbox", spoof.to_wire(), False),
                                           ("agents/bob/presence", forged, True),
                                           ("agents/bob/inbox/alice", marker.to_wire(), False)):
                raw.publish(topic, payload, retain=retain).wait_for_publish(10)
        finally:
            raw.close()
        with Store(root / "state" / "agents" / "bob" / "store.sqlite3") as bob:
            wait_for(lambda: marker.id in bob.message_ids(), 30, "bob to store the marker sent after the spoofs")
            assert spoof.id not in bob.message_ids()
            assert not bob.quarantined()  # dropped by NATS: it never reached bob at all

        listed = testing.run_cli(env("dash"), "list", "--json", timeout=90)
        assert listed.returncode == 0, testing.describe_run(listed)
        assert {row["agent"]: row["status"] for row in json.loads(listed.stdout)} == {"alice": "online", "bob": "online"}
    finally:
        for proc in procs:
            testing.stop_daemon(proc)
