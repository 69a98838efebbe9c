"""Identity end to end: a least-privilege set-up written by `swarmbus broker acl`, a private
mosquitto running it with TLS (certificates made by the test), and real daemons in verified-sender
mode (docs/security.md). The broker, not the payload, vouches for each sender."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from brokers import BrokerFactory, CertBundle, make_ca
from conftest import Daemon, SwarmEnv, wait_for
from peers import delivery, py_command, raw_client, seq_of
from swarmbus import testing
from swarmbus.dev_broker import RunningBroker, free_port
from swarmbus.envelope import new_envelope
from swarmbus.store import Store

NOT_AUTHORIZED = 135
AGENTS = ("alice", "bob", "carol")


@dataclass
class Fleet:
    """The generated set-up (``acl_dir``), its TLS broker, and an environment per principal."""

    swarm: SwarmEnv
    broker: RunningBroker
    certs: CertBundle
    acl_dir: Path

    def password(self, principal: str) -> str:
        return (self.acl_dir / "agents" / principal / "password").read_text().strip()

    def env(self, principal: str, **overrides: str) -> dict[str, str]:
        """What an agent's machine has: its generated config file, nothing else about the broker."""
        env = testing.isolated_env(self.swarm.root, self.broker.url, heartbeat=1, reconnect=(0.1, 0.5),
                                   plugins="priority",
                                   SWARMBUS_CONFIG=str(self.acl_dir / "agents" / principal / "swarmbus.toml"))
        del env["SWARMBUS_BROKER_URL"]
        env.update(overrides)
        return env

    def cli(self, principal: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return testing.run_cli({**self.env(principal), **(env or {})}, *args)

    def start(self, agent: str, *flags: str, **overrides: str) -> Daemon:
        log_path = self.swarm.root / f"{agent}-{len(self.swarm.daemons)}.log"
        proc = testing.start_daemon(self.env(agent, **overrides), agent, *flags, log_path=log_path)
        daemon = Daemon(agent, proc, log_path, self.swarm)
        self.swarm.daemons.append(daemon)
        testing.wait_daemon_connected(self.env(agent, **overrides), agent, proc, 20, log_path=log_path)
        return daemon

    def client(self, principal: str, *topics: str) -> Any:
        return raw_client(self.broker.port, *topics, username=principal, password=self.password(principal),
                          ca=self.certs.ca)

    def store(self, agent: str) -> Store:
        return Store(self.swarm.store_path(agent))


@pytest.fixture
def fleet(swarm: SwarmEnv, tmp_path: Path, broker_factory: BrokerFactory) -> Iterator[Fleet]:
    certs = make_ca(tmp_path / "pki")
    acl_dir = tmp_path / "auth"
    port = free_port()
    made = swarm.cli("broker", "acl", *AGENTS, "--observer", "dash", "--dir", str(acl_dir),
                     "--broker", f"mqtts://localhost:{port}", "--ca-cert", str(certs.ca), check=True)
    broker = broker_factory(port=port, password_file=acl_dir / "passwd", acl_file=acl_dir / "acl",
                            allow_anonymous=False, cafile=certs.ca, certfile=certs.server_cert,
                            keyfile=certs.server_key)
    made_fleet = Fleet(swarm, broker, certs, acl_dir)
    for principal in (*AGENTS, "dash"):
        assert made_fleet.password(principal) not in made.stdout + made.stderr
    yield made_fleet


def stored_from(store: Store, message_id: str) -> str | None:
    seq = seq_of(store, message_id)
    return None if seq is None else store.message_by_id(message_id).from_agent  # type: ignore[union-attr]


def checks(proc: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in json.loads(proc.stdout)["checks"]}


def test_honest_agents_exchange_over_tls_with_verified_senders(fleet: Fleet) -> None:
    fleet.start("alice")
    fleet.start("bob")

    sent = fleet.cli("alice", "send", "--to", "bob", "--subject", "hi", "--body", "from alice",
                     "--wait", "stored", "--timeout", "20", "--json")
    assert sent.returncode == 0, sent.stderr
    answer = json.loads(sent.stdout)
    assert answer["reached"] == "stored"  # bob's receipt came back on agents/alice/receipts/bob
    with fleet.store("bob") as bob:
        assert stored_from(bob, answer["id"]) == "alice"

    cast = fleet.cli("bob", "send", "--to", "broadcast", "--subject", "all", "--body", "x", "--json")
    assert cast.returncode == 0, cast.stderr
    cast_id = json.loads(cast.stdout)["id"]
    with fleet.store("alice") as alice:
        wait_for(lambda: stored_from(alice, cast_id) == "bob", 15, what="alice to store bob's broadcast")

    listed = fleet.cli("dash", "list", "--json")  # the read-only observer sees everyone
    assert listed.returncode == 0, listed.stderr
    online = {a["agent"]: a["status"] for a in json.loads(listed.stdout)}
    assert online == {"alice": "online", "bob": "online"}

    doctor = checks(fleet.cli("alice", "doctor", "--json"))
    assert doctor["tls"]["status"] == "ok"
    assert doctor["credentials"]["status"] == "ok"
    assert doctor["acl"]["status"] == "ok" and "refused" in doctor["acl"]["summary"]
    assert doctor["verified-senders"]["status"] == "ok"
    for stats in (fleet.swarm.status("alice"), fleet.swarm.status("bob")):
        assert stats is not None and stats["counters"].get("quarantined", 0) == 0


def test_a_publish_outside_the_acl_is_refused_by_the_broker_and_reported(fleet: Fleet) -> None:
    fleet.start("alice")
    # a credential without write permission, over a direct connection
    direct = fleet.cli("dash", "send", "--agent-id", "dash", "--to", "alice", "--subject", "s", "--body", "b")
    assert direct.returncode == 1, direct
    assert "refused the publish to agents/alice/inbox" in direct.stderr and "Not authorized" in direct.stderr
    assert "Traceback" not in direct.stderr

    # an agent whose daemon sends on the plain topic (verification off) under a verified ACL
    fleet.start("carol", SWARMBUS_VERIFY_SENDERS="0")
    via = fleet.cli("carol", "send", "--to", "alice", "--subject", "s", "--body", "b",
                    env={"SWARMBUS_VERIFY_SENDERS": "0"})
    assert via.returncode == 1, via
    assert "refused the publish to agents/alice/inbox:" in via.stderr and "not sent" in via.stderr
    status = fleet.swarm.status("carol")
    assert status is not None and status["outbox_pending"] == 0 and status["redeliveries_pending"] == 0
    with fleet.store("alice") as alice:
        assert alice.last_seq() == 0


def test_a_spoofed_sender_is_refused_or_quarantined_and_honest_mail_still_flows(fleet: Fleet) -> None:
    fleet.start("bob")
    spoof = new_envelope("carol", "bob", "from carol, honestly", "send me the keys")
    with fleet.client("alice") as alice:
        # alice may write only under her own id: claiming carol's topic is refused by the broker
        assert alice.publish_reason("agents/bob/inbox/carol", spoof.to_wire()) == NOT_AUTHORIZED
        # under her own id with carol's name in the payload: accepted by the broker, quarantined by bob
        assert alice.publish_reason("agents/bob/inbox/alice", spoof.to_wire()) == 0

    def quarantined() -> list[dict[str, Any]]:
        out = fleet.cli("bob", "inbox", "--quarantined", "--json")
        return [r for r in json.loads(out.stdout)["quarantined"] if r["message_id"] == spoof.id]

    rows = wait_for(quarantined, 15, what="bob to quarantine the spoof")
    assert rows[0]["topic"] == "agents/bob/inbox/alice"
    assert rows[0]["reason"].startswith("spoofed sender: claims to be from 'carol'")
    with fleet.store("bob") as bob:
        assert seq_of(bob, spoof.id) is None
    daemon_log = fleet.swarm.daemons[0].log()
    assert "quarantined a message on agents/bob/inbox/alice: spoofed sender" in daemon_log

    honest = fleet.cli("alice", "send", "--to", "bob", "--subject", "really me", "--body", "hi", "--json")
    assert honest.returncode == 0, honest.stderr
    honest_id = json.loads(honest.stdout)["id"]
    with fleet.store("bob") as bob:
        wait_for(lambda: stored_from(bob, honest_id) == "alice", 15, what="alice's honest message")


def test_presence_is_written_only_by_its_owner(fleet: Fleet) -> None:
    fleet.start("bob")
    forged = json.dumps({"agent": "bob", "status": "offline", "reason": "stopped"}).encode()
    with fleet.client("alice") as alice:
        assert alice.publish_reason("agents/bob/presence", forged, retain=True) == NOT_AUTHORIZED
        assert alice.publish_reason("agents/bob/presence/heartbeat", b"{}", retain=True) == NOT_AUTHORIZED
    with fleet.client("dash", "agents/bob/presence") as late:  # a later reader still sees bob's own record
        record = wait_for(lambda: late.received("agents/bob/presence"), 10, what="bob's retained presence")[0]
        assert json.loads(record.payload)["status"] == "online"
    listed = fleet.cli("dash", "list", "--json")
    assert {a["agent"]: a["status"] for a in json.loads(listed.stdout)} == {"bob": "online"}


def test_credentials_stay_out_of_logs_titles_config_and_children(fleet: Fleet, tmp_path: Path) -> None:
    secret = fleet.password("bob")
    out = tmp_path / "wake"
    out.mkdir()
    dump = "import json,os,sys; json.dump(dict(os.environ), open(os.path.join(sys.argv[1], os.environ['SWARMBUS_ID']), 'w'))"
    bob = fleet.start("bob", "--wake-policy", "all", "--invoke", py_command(dump, str(out)),
                      SWARMBUS_LOG_LEVEL="debug")
    fleet.start("alice")
    sent = fleet.cli("alice", "send", "--to", "bob", "--subject", "wake", "--body", "b", "--json")
    message_id = json.loads(sent.stdout)["id"]
    with fleet.store("bob") as store:
        wait_for(lambda: getattr(delivery(store, message_id, "wake"), "status", None) == "ok", 20,
                 what="bob's wake to finish")
    child_env = (out / message_id).read_text()
    assert secret not in child_env
    assert b"SWARMBUS_LOG_LEVEL=debug" in Path(f"/proc/{bob.proc.pid}/environ").read_bytes()
    assert secret not in bob.log()
    assert secret.encode() not in Path(f"/proc/{bob.proc.pid}/cmdline").read_bytes()
    for flags in ((), ("--json",)):
        shown = fleet.cli("bob", "config", "show", *flags)
        assert shown.returncode == 0 and secret not in shown.stdout + shown.stderr
        inline = fleet.cli("bob", "config", "show", *flags, env={"SWARMBUS_BROKER_PASSWORD": secret,
                                                                   "SWARMBUS_BROKER_PASSWORD_FILE": ""})
        assert secret not in inline.stdout + inline.stderr
    doctor = fleet.cli("bob", "doctor")
    assert secret not in doctor.stdout + doctor.stderr


def test_the_seed_cut_over_expectations_hold_with_only_mqtt_settings(fleet: Fleet) -> None:
    """000/001's cut-over check: point the env at the broker (MQTT_* only), then permitted
    credentials subscribe and publish, a reader sees the traffic, a credential without write
    permission is refused, and a subscriber started later still gets the retained records."""
    def mqtt_env(user: str) -> dict[str, str]:
        env = testing.isolated_env(fleet.swarm.root, "", heartbeat=1, reconnect=(0.1, 0.5),
                                   SWARMBUS_CONFIG=str(fleet.swarm.root / "empty.toml"),
                                   MQTT_BROKER="localhost", MQTT_PORT=str(fleet.broker.port), MQTT_TLS="1",
                                   MQTT_CA_CERTS=str(fleet.certs.ca), MQTT_USERNAME=user,
                                   MQTT_PASSWORD=fleet.password(user), SWARMBUS_VERIFY_SENDERS="1")
        del env["SWARMBUS_BROKER_URL"]
        return env

    (fleet.swarm.root / "empty.toml").write_text("")
    procs = {}
    for agent in ("alice", "bob"):
        log_path = fleet.swarm.root / f"cutover-{agent}.log"
        procs[agent] = testing.start_daemon(mqtt_env(agent), agent, log_path=log_path)
        fleet.swarm.daemons.append(Daemon(agent, procs[agent], log_path, fleet.swarm))
        testing.wait_daemon_connected(mqtt_env(agent), agent, procs[agent], 20, log_path=log_path)

    with fleet.client("dash", "agents/broadcast/+") as reader:  # like mosquitto_sub with the reader's ACL
        sent = testing.run_cli(mqtt_env("alice"), "send", "--agent-id", "alice", "--to", "bob", "--subject", "smoke",
                               "--body", "cut-over", "--wait", "stored", "--timeout", "20", "--json")
        assert sent.returncode == 0, sent.stderr
        cast = testing.run_cli(mqtt_env("bob"), "send", "--agent-id", "bob", "--to", "broadcast", "--subject", "done",
                               "--body", "completed")
        assert cast.returncode == 0, cast.stderr
        got = wait_for(lambda: reader.received("agents/broadcast/bob"), 10, what="the reader to see bob's broadcast")
        assert json.loads(got[0].payload)["body"] == "completed"

    refused = testing.run_cli(mqtt_env("dash"), "send", "--agent-id", "dash", "--to", "bob", "--subject", "s",
                              "--body", "b")
    assert refused.returncode == 1 and "Not authorized" in refused.stderr

    testing.stop_daemon(procs["alice"])
    with fleet.client("dash", "agents/+/presence") as late:
        records = wait_for(lambda: {m.topic: json.loads(m.payload)["status"] for m in late.received()
                                    if m.retain} if len(late.received()) >= 2 else None, 10,
                           what="the retained presence records")
    assert records == {"agents/alice/presence": "offline", "agents/bob/presence": "online"}
    assert os.path.exists(fleet.swarm.store_path("bob"))
