"""A 3-node NATS cluster loses, by SIGKILL, the node an agent's daemon is connected to, while a
burst of 100 messages is on its way to that agent.

- carol's daemon is given every node (SWARMBUS_BROKER_HOSTS): it moves to another node by itself,
  its session (replicated by JetStream) comes along, and each of the 100 messages is stored
  exactly once.
- dora's daemon knows only the node that dies: `swarmbus list` shows dora stale (no heartbeat for
  three intervals; its Last Will died with the node), then online again once the node is back and
  the daemon reconnected by itself.
- ghost's daemon dies with the node: `list` never shows it online again.

Throughout, `swarmbus list` runs over and over and must answer every time.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engines import Bus, Engine, RawClient, wait_for
from swarmbus import testing
from swarmbus.dev_nats import RunningNats
from swarmbus.envelope import new_envelope, parse_timestamp
from swarmbus.store import Store

HEARTBEAT = 1.0
STALE_AFTER = 3 * HEARTBEAT + 0.5
"""Seconds after its last heartbeat an agent must be listed stale (three intervals, and a margin)."""


@pytest.fixture
def cluster_bus(tmp_path_factory: pytest.TempPathFactory, nats_cluster: RunningNats) -> Iterator[Bus]:
    """Agents given every node, the first in their list being the node that leads the MQTT
    session stream: killing it is the hard case (the sessions' stream elects a new leader while
    the daemons reconnect, so they are gone for seconds)."""
    root = Path(tmp_path_factory.mktemp("fo"))
    leader = wait_for(lambda: nats_cluster.stream_leaders().get("$MQTT_sess"), 30, "a leader of $MQTT_sess")
    first = nats_cluster.index_of(leader)
    order = [first, *(i for i in range(3) if i != first)]
    hosts = ",".join(nats_cluster.hosts[i] for i in order)
    engine = Engine("nats-cluster", [nats_cluster.urls[i] for i in order], {"SWARMBUS_BROKER_HOSTS": hosts},
                    nats_cluster)
    env = testing.isolated_env(root, engine.urls[0], heartbeat=HEARTBEAT, reconnect=(0.1, 0.5), **engine.env)
    (root / "config.toml").write_text("# failover test\n")
    bus = Bus(root, engine, env)
    try:
        yield bus
    finally:
        for _, proc, _ in bus.procs:
            if proc.poll() is None:
                testing.kill_process_group(proc.pid)
                proc.wait(10)


def _ts(value: str | None) -> float:
    return parse_timestamp(value).timestamp() if value else 0.0


@dataclass(frozen=True)
class Seen:
    """One ``swarmbus list`` row: when that run started and ended, and whether carol's daemon said
    it was connected just before and just after the run."""

    started: float
    ended: float
    carol_before: bool
    carol_after: bool
    row: dict[str, Any]


class Lister:
    """Runs ``swarmbus list --json`` over and over in a thread: :attr:`seen` holds every row
    listed, :attr:`failures` each failed run."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.seen: list[Seen] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _carol(self) -> bool:
        return bool(self.bus.status("carol").get("connected"))

    def _run(self) -> None:
        while not self._stop.is_set():
            before, started = self._carol(), time.time()
            proc = self.bus.cli("list", "--json")
            ended, after = time.time(), self._carol()
            if proc.returncode != 0:
                self.failures.append(f"exit {proc.returncode} after {ended - started:.1f}s: {proc.stderr.strip()}")
                continue
            try:
                self.seen.extend(Seen(started, ended, before, after, row) for row in json.loads(proc.stdout))
            except (ValueError, AttributeError) as exc:
                self.failures.append(f"unreadable output ({exc}): {proc.stdout!r}")

    def rows(self, agent: str, since: float = 0.0) -> list[Seen]:
        return [s for s in list(self.seen) if s.row.get("agent") == agent and s.started >= since]

    def wait(self, predicate: Any, what: str, timeout: float = 60) -> None:
        """Wait until ``predicate()`` holds or a list run failed."""
        wait_for(lambda: self.failures or predicate(), timeout, what)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)


def test_killing_the_daemons_node_mid_burst_moves_it_and_loses_nothing(cluster_bus: Bus,
                                                                      nats_cluster: RunningNats) -> None:
    bus = cluster_bus
    urls = bus.engine.urls  # the daemons' order: the node that dies first
    doomed = nats_cluster.urls.index(urls[0])
    carol = bus.start("carol")
    ghost = bus.start("ghost")
    bus.start("dora", env={"SWARMBUS_BROKER_HOSTS": nats_cluster.hosts[doomed]})
    for agent in ("carol", "ghost", "dora"):
        assert bus.status(agent)["broker"] == urls[0], agent  # the first node, tried first
    listed = wait_for(lambda: (lambda r: r if {"carol", "ghost", "dora"} <= set(r) else None)(bus.list_agents()),
                      30, "list to show carol, ghost and dora")
    assert all(listed[a]["status"] == "online" for a in ("carol", "ghost", "dora")), listed

    ids = [f"burst-{i:03d}-{uuid.uuid4().hex[:8]}" for i in range(100)]
    payloads = [json.dumps(new_envelope("zed", "carol", "burst", f"message {i}", id=mid).to_dict()).encode()
                for i, mid in enumerate(ids)]
    pub = RawClient(urls[2])  # the sender is on a node that stays up
    lister = Lister(bus)
    with Store(bus.store_path("carol")) as store:
        infos = []
        second_half = threading.Event()

        def publish_all() -> None:
            for i, payload in enumerate(payloads):
                if i == 50:
                    second_half.wait(30)
                infos.append(pub.publish("agents/carol/inbox", payload))

        publisher = threading.Thread(target=publish_all)
        publisher.start()
        try:
            wait_for(lambda: store.count_messages() >= 1, 30, "carol to store the first of the burst", interval=0.005)
            # ghost's daemon dies with the node: frozen first, so that its connection cannot send
            # its Last Will before the node is gone, and killed after
            ghost.send_signal(signal.SIGSTOP)
            second_half.set()
            killed_at = time.time()
            nats_cluster.kill(doomed)
            testing.kill_process_group(ghost.pid)
            ghost.wait(10)
            lister.start()  # `swarmbus list`, again and again, from now on
        finally:
            second_half.set()
            publisher.join(60)
        stored_at_kill = store.count_messages()

        try:
            # carol's daemon moves to another node by itself, and stores each message once
            wait_for(lambda: bus.status("carol").get("connected") and bus.status("carol").get("broker") in urls[1:],
                     60, "carol's daemon to reconnect to another node")
            for info in infos:  # the publisher's node kept every message (PUBACK)
                info.wait_for_publish(30)
                assert info.is_published()
            wait_for(lambda: store.count_messages() == 100, 60, f"all 100 stored (had {stored_at_kill} at the kill)")
            stored = store.message_ids()
            assert sorted(stored) == sorted(ids), "each of the 100 exactly once, and nothing else"
            assert store.counters().get("stored") == 100
            assert not store.quarantined()

            # list: carol online again with a heartbeat from after the move; dora stale, its node
            # being down; ghost listed after its last heartbeat aged
            lister.wait(lambda: any(s.row["status"] == "online" and _ts(s.row.get("last_seen")) > killed_at + 1
                                    for s in lister.rows("carol")), "list to show carol online again")
            lister.wait(lambda: any(s.row["status"] == "stale" for s in lister.rows("dora")),
                        "list to show dora stale while its node is down")
            lister.wait(lambda: lister.rows("ghost", since=killed_at + STALE_AFTER), "list to show ghost after its death")

            # the node comes back: dora's daemon reconnects by itself and is listed online again
            restarting_at = time.time()
            nats_cluster.restart(doomed)
            restarted_at = time.time()
            lister.wait(lambda: any(s.row["status"] == "online" and _ts(s.row.get("last_seen")) > restarted_at
                                    for s in lister.rows("dora")), "list to show dora online again")
            lister.wait(lambda: lister.rows("ghost", since=restarted_at), "list to run once more with the node back")
        finally:
            lister.stop()
    pub.close()
    assert carol.poll() is None

    assert not lister.failures, "swarmbus list failed while the cluster recovered:\n" + "\n".join(lister.failures)

    def story(agent: str) -> list[tuple[float, str]]:
        return [(round(s.started - killed_at, 1), s.row["status"]) for s in lister.rows(agent)]

    # carol never went offline (it never stopped), and was not listed online while its daemon was
    # away (disconnected before and after that list run) once its last heartbeat had aged
    carol_rows = lister.rows("carol")
    assert all(s.row["status"] != "offline" for s in carol_rows), story("carol")
    away = [s for s in carol_rows if not s.carol_before and not s.carol_after and s.started > killed_at + STALE_AFTER]
    assert all(s.row["status"] == "stale" for s in away), f"carol listed online while away: {story('carol')}"
    assert carol_rows[-1].row["status"] == "online", story("carol")

    # dora: online, then stale (its node died, and its Last Will with it), then online again
    dora = [s.row["status"] for s in lister.rows("dora")]
    assert "offline" not in dora and "stale" in dora and dora[-1] == "online", story("dora")
    down = [s for s in lister.rows("dora", since=killed_at + STALE_AFTER) if s.ended < restarting_at]
    assert down and all(s.row["status"] == "stale" for s in down), f"dora listed online while down: {story('dora')}"

    # ghost: never online once its last heartbeat aged, the node back or not
    late = lister.rows("ghost", since=killed_at + STALE_AFTER)
    assert late and all(s.row["status"] != "online" for s in late), f"a dead agent listed online: {story('ghost')}"
