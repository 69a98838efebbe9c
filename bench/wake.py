"""Scenario 3: publish -> wake command started.

Our daemon (``--invoke HELPER --wake-policy high``) and the predecessor (``--inbox FILE
--invoke HELPER``, as its systemd unit runs it; it invokes for every message) run side by side
on one private broker. The bench publishes one priority-high message at a time from its own
paho client (MQTT 5, TCP_NODELAY), alternating between the two daemons (who goes first rotates),
and waits for that wake before the next message.

The **floor** is a plain paho subscriber (``mqtt_peer.py sub --spawn``) on the same broker that
starts the same command with ``posix_spawn`` from its message callback: no store, no policy, no
prompt on stdin. It is the least any wake can cost here (broker delivery + a spawn + the exec),
and it is interleaved with the other two.

The wake command is the same for all three: a tiny C program the bench compiles with the machine's
compiler (``harness.build_wake_helper``) that appends ``CLOCK_REALTIME`` to a marker file as its
first act, then drains stdin; without a compiler it is ``touch MARKER`` and the marker's
st_mtime_ns. Latency = the helper's own start time - the publish time (wall clock, taken just
before the publish call). The marker is polled every 5 ms only to learn when to go on; a
50 ms pause between messages (pacing) lets the previous dispatch finish.
"""

from __future__ import annotations

import time
from typing import Any

from harness import (
    FloorSubscriber,
    OurDaemon,
    PredecessorDaemon,
    PresenceWatch,
    Publisher,
    WakeMarker,
    Workspace,
    build_wake_helper,
    probe,
    rotated,
    summary,
    wait_for,
)

PACING = 0.05


def run(n: int, *, log: Any = print) -> dict[str, Any]:
    with Workspace("wake") as ws:
        helper = build_wake_helper(ws)
        broker = ws.broker()
        presence = PresenceWatch(broker)
        pub = Publisher(broker)
        try:
            ours_marker = WakeMarker(ws.root / "ours.wakes", helper)
            pred_marker = WakeMarker(ws.root / "pred.wakes", helper)
            floor_marker = WakeMarker(ws.root / "floor.wakes", helper)
            floor = FloorSubscriber(ws, broker, "bench-wake-floor", spawn=floor_marker.command)
            ours = OurDaemon(ws, broker, "bench-wake-ours", ws.dir("state"),
                             ["--invoke", ours_marker.command, "--wake-policy", "high"])
            pred = PredecessorDaemon(ws, broker, "bench-wake-pred", ws.dir("pred") / "inbox.md",
                                     invoke=pred_marker.command)
            ours.wait_ready()
            pred.wait_ready(presence)
            floor.wait_ready()
            for contender in (ours, pred):
                probe(contender, pub)  # normal priority: wakes the predecessor only
            wait_for(lambda: pred_marker.token() >= 1, 10, "the predecessor's probe wake", check=pred.check_alive)

            samples: dict[str, list[float]] = {"ours": [], "predecessor": [], "floor": []}
            contenders: dict[str, tuple[Any, WakeMarker]] = {
                "ours": (ours, ours_marker), "predecessor": (pred, pred_marker), "floor": (floor, floor_marker)}
            for i in range(n):
                for kind in rotated(tuple(contenders), i):
                    daemon, marker = contenders[kind]
                    token = marker.token()
                    t_pub = pub.send(daemon.agent_id, f"wake {i}", priority="high")
                    t_wake = wait_for(lambda m=marker, t=token: m.started_after(t), 30,  # type: ignore[misc]
                                      f"{kind}'s wake command", interval=0.005, check=daemon.check_alive)
                    samples[kind].append((t_wake - t_pub) * 1000)
                    time.sleep(PACING)
            log(f"  wake p50: ours {summary(samples['ours'])['median']:.2f} ms, predecessor "
                f"{summary(samples['predecessor'])['median']:.2f} ms, floor "
                f"{summary(samples['floor'])['median']:.2f} ms (n={n})")
            return {"samples_ms": samples, "helper": "compiled" if helper else "touch"}
        finally:
            pub.close()
            presence.close()
