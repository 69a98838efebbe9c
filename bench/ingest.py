"""Scenarios 1 and 2: durable ingest burst (and the memory it leaves behind).

One receiver per run, fresh state and a fresh private broker each time. Readiness is proven
by a probe message, then the receiver is left to settle (its CPU quiet for 1 s) and its idle
RSS is taken. Then a separate publisher process (``mqtt_peer.py pub``, plain paho) publishes
``count`` envelopes with a ``body_bytes`` body at QoS 1 as fast as it can, to the receiver's
inbox topic. Measured per run:

- **ours**: rate to all *committed* = count / (max ``received_at`` - t0) and to all *dispatched*
  = count / (max dispatch time (``dispatches.done_at``) - t0), both from timestamps the daemon wrote in its store
  (t0 = the publisher's wall clock just before its first publish); the store is polled
  read-only every ``poll`` s only to learn when to stop;
- **predecessor** (``--inbox`` only, no ``--invoke``): rate to all *archived* = count / (inbox
  file mtime when the count-th ``## [`` entry is there - t0);
- **floor** (paho subscriber, persistent session): rate to all *received* (its own receipt time
  of the last message);
- **CPU per 1,000 messages** of the receiving process tree (utime+stime+cutime+cstime from
  /proc), the delta from just before the publisher starts to the moment completion is seen;
- **RSS**: idle (before) and after the burst once the receiver is quiet again.

Before each run the page cache is warmed (:func:`harness.warm_page_cache`): on a freshly booted
VM the first touch of guest memory would otherwise be charged to whoever writes most.

Contenders are interleaved: each repetition runs all three, the order rotating.
"""

from __future__ import annotations

import time
from typing import Any

from harness import (
    BenchError,
    FloorSubscriber,
    OurDaemon,
    PredecessorDaemon,
    PresenceWatch,
    Publisher,
    Workspace,
    probe,
    rotated,
    run_peer_publisher,
    settle,
    tree_cpu_seconds,
    tree_rss_bytes,
    wait_for,
    warm_page_cache,
)

AGENT = "bench-recv"
CONTENDERS = ("ours", "predecessor", "floor")


def _deadline(count: int, body_bytes: int) -> float:
    return 120.0 + count / 100 + count * body_bytes / 2e6  # generous: a stuck run fails, a slow one finishes


def one_run(kind: str, count: int, body_bytes: int, poll: float) -> dict[str, Any]:
    """One receiver of ``kind`` ("ours", "predecessor", "floor") takes one burst."""
    with Workspace(f"ingest-{kind}") as ws:
        # twice what the biggest writer writes (ours: the spill file and the archive), on warm pages
        warm_page_cache(ws.root, 4 * count * body_bytes + (64 << 20))
        broker = ws.broker()
        pub = Publisher(broker)
        presence = PresenceWatch(broker) if kind == "predecessor" else None
        try:
            receiver: OurDaemon | PredecessorDaemon | FloorSubscriber
            if kind == "ours":
                receiver = OurDaemon(ws, broker, AGENT, ws.dir("state"))
                receiver.wait_ready()
            elif kind == "predecessor":
                assert presence is not None
                receiver = PredecessorDaemon(ws, broker, AGENT, ws.dir("pred") / "inbox.md")
                receiver.wait_ready(presence)
            else:
                receiver = FloorSubscriber(ws, broker, AGENT, expect=1 + count)
                receiver.wait_ready()
            probe(receiver, pub)
            pub.close()
            settled = settle([receiver.pid])
            base = receiver.received()
            rss_idle = tree_rss_bytes(receiver.pid)
            cpu0 = tree_cpu_seconds(receiver.pid)

            report = run_peer_publisher(broker, AGENT, count, body_bytes, ws, timeout=_deadline(count, body_bytes))
            t0 = report["t0"]
            result: dict[str, Any] = {"kind": kind, "count": count, "body_bytes": body_bytes, "settled": settled,
                                      "publisher_s": report["t_acked"] - t0}
            limit = _deadline(count, body_bytes)
            if isinstance(receiver, OurDaemon):
                store = receiver.store

                def committed() -> bool:
                    return store.since(base)[0] >= count

                wait_for(committed, limit, f"{count} rows committed (quarantined: {store.quarantined()})",
                         interval=poll, check=receiver.check_alive)
                wait_for(lambda: store.since(base)[1] >= count, limit, f"{count} rows dispatched", interval=poll,
                         check=receiver.check_alive)
                cpu1 = tree_cpu_seconds(receiver.pid)
                rows, _, last_received, last_dispatched = store.since(base)
                store.close()
                assert last_received is not None and last_dispatched is not None
                result.update(rows=rows, commit_rate=count / (last_received - t0),
                              dispatch_rate=count / (last_dispatched - t0), done_s=last_dispatched - t0)
            elif isinstance(receiver, PredecessorDaemon):
                inbox = receiver.inbox
                wait_for(lambda: inbox.update() >= base + count, limit, f"{count} entries in the predecessor's inbox",
                         interval=poll, check=receiver.check_alive)
                cpu1 = tree_cpu_seconds(receiver.pid)
                last = inbox.mtime()
                result.update(entries=inbox.count - base, archive_rate=count / (last - t0), done_s=last - t0)
            else:
                done = wait_for(lambda: receiver.find("done"), limit, f"the floor subscriber to receive {count}",
                                interval=poll, check=receiver.check_alive)
                cpu1 = tree_cpu_seconds(receiver.pid)
                last = float(done[1])
                result.update(receive_rate=count / (last - t0), done_s=last - t0)
            result["cpu_s"] = cpu1 - cpu0
            result["cpu_per_1000_ms"] = (cpu1 - cpu0) * 1000 / (count / 1000)
            result["rss_idle"] = rss_idle
            result["settled_after"] = settle([receiver.pid])
            result["rss_after"] = tree_rss_bytes(receiver.pid)
            return result
        finally:
            if presence is not None:
                presence.close()


def run(reps: int, count: int, body_bytes: int, *, poll: float = 0.2, log: Any = print) -> list[dict[str, Any]]:
    """``reps`` interleaved repetitions of all three contenders; one dict per run."""
    results = []
    for rep in range(reps):
        for kind in rotated(CONTENDERS, rep):
            started = time.monotonic()
            try:
                res = one_run(kind, count, body_bytes, poll)
            except BenchError as exc:
                raise BenchError(f"ingest {count}x{body_bytes} B, {kind}, repetition {rep + 1}: {exc}") from exc
            res["rep"] = rep
            results.append(res)
            rate = res.get("dispatch_rate") or res.get("archive_rate") or res.get("receive_rate")
            log(f"  ingest {count}x{body_bytes} B rep {rep + 1}/{reps} {kind:<11} {rate:8.0f} msg/s to done, "
                f"{res['cpu_per_1000_ms']:7.0f} ms CPU/1000 ({time.monotonic() - started:.0f} s)")
    return results
