"""Scenario 5 (idle part): resident memory and CPU of connected, idle daemons.

``k`` of our daemons and ``k`` predecessors (``--inbox`` only) start together on one private
broker (start order interleaved), are proven ready by a probe message each, and are left to
settle (CPU quiet for 1 s). Then, per daemon process tree (children included, from /proc):

- idle RSS (VmRSS) at the start of the window;
- idle CPU over a ``window``-second measurement window, reported as CPU milliseconds per
  minute. It is read from the scheduler's per-thread ns counters (/proc/<pid>/task/*/schedstat)
  because utime+stime tick in 10 ms steps, too coarse for an idle daemon; an idle daemon has
  no children, and a check that the process trees did not change backs that up.

Both sets run during the same window on the same broker, so background noise hits both. The
RSS after the scenario-1 burst comes from ``ingest.py`` (same daemons as that burst).
"""

from __future__ import annotations

import time
from typing import Any

from harness import (
    OurDaemon,
    PredecessorDaemon,
    PresenceWatch,
    Publisher,
    Workspace,
    probe,
    process_tree,
    settle,
    summary,
    tree_cpu_seconds_fine,
    tree_rss_bytes,
)


def run(k: int, window: float, *, log: Any = print) -> dict[str, Any]:
    with Workspace("idle") as ws:
        broker = ws.broker()
        presence = PresenceWatch(broker)
        pub = Publisher(broker)
        try:
            ours: list[OurDaemon] = []
            preds: list[PredecessorDaemon] = []
            for i in range(k):
                ours.append(OurDaemon(ws, broker, f"bench-idle-ours-{i}", ws.dir("state")))
                preds.append(PredecessorDaemon(ws, broker, f"bench-idle-pred-{i}", ws.dir("pred") / f"inbox-{i}.md"))
            for d in ours:
                d.wait_ready()
            for p in preds:
                p.wait_ready(presence)
            for contender in [*ours, *preds]:
                probe(contender, pub)
            pub.close()
            presence.close()
            everyone = [d.pid for d in [*ours, *preds]]
            settled = settle(everyone)
            rss = {"ours": [tree_rss_bytes(d.pid) for d in ours], "predecessor": [tree_rss_bytes(p.pid) for p in preds]}
            trees = {pid: process_tree(pid) for pid in everyone}
            cpu0 = {pid: tree_cpu_seconds_fine(pid) for pid in everyone}
            t0 = time.monotonic()
            time.sleep(window)  # the measurement window itself
            elapsed = time.monotonic() - t0
            cpu = {kind: [(tree_cpu_seconds_fine(d.pid) - cpu0[d.pid]) * 1000 * 60 / elapsed for d in group]
                   for kind, group in (("ours", ours), ("predecessor", preds))}
            for d in [*ours, *preds]:
                d.check_alive()
            changed = [pid for pid in everyone if process_tree(pid) != trees[pid]]
            log(f"  idle: RSS ours {summary(rss['ours'])['median'] / 2**20:.1f} MiB, predecessor "
                f"{summary(rss['predecessor'])['median'] / 2**20:.1f} MiB; CPU ours "
                f"{summary(cpu['ours'])['median']:.0f} ms/min, predecessor {summary(cpu['predecessor'])['median']:.0f} "
                f"ms/min ({window:.0f} s window, {k} each)")
            return {"rss_bytes": rss, "cpu_ms_per_min": cpu, "window_s": elapsed, "settled": settled,
                    "trees_changed": len(changed)}
        finally:
            pub.close()
            presence.close()
