"""Scenario 6: one broadcast fanned out to a fleet of daemons (100 by default).

A fleet of ``n`` of our daemons, then (separately, on a fresh broker) ``n`` predecessors
(``--inbox`` only), all started in parallel and awaited with a deadline (ours: control socket
reports ``connected``; predecessor: live ``online`` presence). A warm-up broadcast must reach
every member (re-broadcast every 5 s until the deadline), which proves every subscription is in
place; the fleet is then left to settle (CPU quiet for 1 s, at most 30 s) and its RSS taken.
Then ``broadcasts`` measured broadcasts, one at a time, from the bench's paho client:

- ours: max over the n stores of the new row's ``received_at`` - publish time;
- predecessor: max over the n inbox files of st_mtime_ns - publish time (file timestamps are
  kernel-tick coarse, up to ~4 ms early, which can only flatter the predecessor).

Stores and files are polled every 100 ms only to learn when everyone has it. After each
broadcast the bench waits until our fleet has dispatched it, then pauses 1 s (pacing) so one
broadcast's work does not overlap the next. Also recorded: time from spawn to all ready, and
the fleet's total RSS once settled.

With ``engine="nats-cluster"`` only our fleet runs, the same way, on a private 3-node NATS
cluster (``harness.NatsCluster``): every daemon gets all three nodes, in the same order, through
``SWARMBUS_BROKER_HOSTS``, and the bench publishes at MQTT 3.1.1 to node n1. The predecessor
cannot run there (MQTT 5 only, which NATS refuses). Also recorded: the node and MQTT version each
daemon reports once ready, and the MQTT streams' leaders.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from harness import (
    BenchError,
    NatsCluster,
    OurDaemon,
    PredecessorDaemon,
    PresenceWatch,
    Publisher,
    Workspace,
    settle,
    summary,
    tree_rss_bytes,
    wait_for,
)

PACING = 1.0
POLL = 0.1


def _fleet_ours(ws: Workspace, n: int, broadcasts: int, deadline: float, engine: str = "mosquitto") -> dict[str, Any]:
    broker = ws.nats_cluster() if engine == "nats-cluster" else ws.broker("broker-ours")
    state = ws.dir("state")
    t_spawn = time.monotonic()
    fleet = [OurDaemon(ws, broker, f"fan-{i:03d}", state) for i in range(n)]
    pending = set(range(n))

    def all_ready() -> bool:
        for i in list(pending):
            if fleet[i].is_ready():
                pending.discard(i)
        return not pending

    wait_for(all_ready, deadline, f"{n} of our daemons to connect ({len(pending)} still not)", interval=0.2)
    ready_s = time.monotonic() - t_spawn
    links = Counter(d.link() for d in fleet) if isinstance(broker, NatsCluster) else None
    pub = Publisher(broker)
    try:
        def everyone_has_new(bases: list[int]) -> bool:
            return all(d.store.since(b)[0] >= 1 for d, b in zip(fleet, bases, strict=True))

        bases = [d.received() for d in fleet]
        _warm_up(pub, lambda: everyone_has_new(bases), deadline, "ours")
        settled = settle([d.pid for d in fleet], quiet_cpu=0.002, timeout=30)
        rss = tree_rss_bytes([d.pid for d in fleet])
        samples = []
        for i in range(broadcasts):
            for d in fleet:  # the previous broadcast is dispatched everywhere (archived) first
                wait_for(lambda d=d: d.store.since(0)[0] == d.store.since(0)[1], 60, "our fleet to dispatch",
                         interval=POLL)
            time.sleep(PACING)
            bases = [d.store.last_seq() for d in fleet]
            t_pub = pub.send("broadcast", f"fan {i}")
            wait_for(lambda b=bases: everyone_has_new(b), 60, f"broadcast {i} to reach all {n} of ours",  # type: ignore[misc]
                     interval=POLL)
            last = max(d.store.since(b)[2] or 0.0 for d, b in zip(fleet, bases, strict=True))
            samples.append((last - t_pub) * 1000)
        if isinstance(broker, NatsCluster) and links is not None:
            return {"samples_ms": samples, "ready_s": ready_s, "fleet_rss_bytes": rss, "settled": settled,
                    "engine": engine, "cluster": broker.describe(),
                    "links": [{"node": node, "protocol": proto, "daemons": k} for (node, proto), k in links.items()]}
        return {"samples_ms": samples, "ready_s": ready_s, "fleet_rss_bytes": rss, "settled": settled}
    finally:
        pub.close()
        for d in fleet:
            d.store.close()
        ws.stop(d.proc for d in fleet)


def _fleet_pred(ws: Workspace, n: int, broadcasts: int, deadline: float) -> dict[str, Any]:
    broker = ws.broker("broker-pred")
    presence = PresenceWatch(broker)
    inboxes = ws.dir("pred")
    t_spawn = time.monotonic()
    fleet = [PredecessorDaemon(ws, broker, f"fan-{i:03d}", inboxes / f"fan-{i:03d}.md") for i in range(n)]
    try:
        def all_ready() -> bool:
            for d in fleet:
                d.check_alive()
            return all(presence.has(d.agent_id) for d in fleet)

        wait_for(all_ready, deadline, f"{n} predecessors to come online", interval=0.2)
        ready_s = time.monotonic() - t_spawn
    finally:
        presence.close()
    pub = Publisher(broker)
    try:
        def everyone_has_new(bases: list[int]) -> bool:
            return all(d.inbox.update() > b for d, b in zip(fleet, bases, strict=True))

        bases = [d.received() for d in fleet]
        _warm_up(pub, lambda: everyone_has_new(bases), deadline, "predecessor")
        settled = settle([d.pid for d in fleet], quiet_cpu=0.002, timeout=30)
        rss = tree_rss_bytes([d.pid for d in fleet])
        samples = []
        for i in range(broadcasts):
            time.sleep(PACING)
            bases = [d.inbox.update() for d in fleet]
            t_pub = pub.send("broadcast", f"fan {i}")
            wait_for(lambda b=bases: everyone_has_new(b), 60, f"broadcast {i} to reach all {n} predecessors",  # type: ignore[misc]
                     interval=POLL)
            samples.append((max(d.inbox.mtime() for d in fleet) - t_pub) * 1000)
        return {"samples_ms": samples, "ready_s": ready_s, "fleet_rss_bytes": rss, "settled": settled}
    finally:
        pub.close()
        ws.stop(d.proc for d in fleet)


def _warm_up(pub: Publisher, arrived: Any, deadline: float, who: str) -> None:
    end = time.monotonic() + deadline
    while True:
        pub.send("broadcast", "warm-up")
        try:
            wait_for(arrived, min(5.0, max(0.1, end - time.monotonic())), f"the warm-up broadcast to reach all of {who}",
                     interval=POLL)
            return
        except BenchError:
            if time.monotonic() >= end:
                raise


def run(n: int, broadcasts: int, *, deadline: float = 240.0, log: Any = print,
        engine: str = "mosquitto") -> dict[str, Any]:
    out = {}
    if engine == "nats-cluster":  # ours only: the predecessor cannot speak MQTT 3.1.1
        with Workspace("fanout-ours-nats") as ws:
            started = time.monotonic()
            out["ours"] = _fleet_ours(ws, n, broadcasts, deadline, engine)
            log(f"  fan-out to {n} ours on NATS: p50 {summary(out['ours']['samples_ms'])['median']:.1f} ms, ready in "
                f"{out['ours']['ready_s']:.1f} s, fleet RSS {out['ours']['fleet_rss_bytes'] / 2**20:.0f} MiB "
                f"({time.monotonic() - started:.0f} s)")
        return out
    for kind, fleet in (("ours", _fleet_ours), ("predecessor", _fleet_pred)):
        with Workspace(f"fanout-{kind}") as ws:
            started = time.monotonic()
            out[kind] = fleet(ws, n, broadcasts, deadline)
            log(f"  fan-out to {n} {kind:<11}: p50 {summary(out[kind]['samples_ms'])['median']:.1f} ms, ready in "
                f"{out[kind]['ready_s']:.1f} s, fleet RSS {out[kind]['fleet_rss_bytes'] / 2**20:.0f} MiB "
                f"({time.monotonic() - started:.0f} s)")
    return out
