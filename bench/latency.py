"""Scenario 4: publish -> committed (ours) vs raw paho delivery (floor), one message at a time.

Three receivers share one private broker: our daemon, the raw paho floor subscriber
(``mqtt_peer.py sub --echo``: MQTT 5 persistent session, QoS 1, TCP_NODELAY, prints its receipt
time per message) and, for context, the predecessor (``--inbox`` only). The bench publishes one
normal-priority message at a time from its own paho client and waits until it has arrived before
the next; the receiver order rotates per round.

- ours: ``received_at`` of the new row (the daemon's wall clock when it committed the message,
  before its PUBACK) - publish time;
- floor: the subscriber's own receipt time - publish time;
- predecessor: when inotify reported the write of its new inbox entry - publish time (archived,
  the predecessor's only record of a message; file mtimes are too coarse for this).

Publish time is the bench's wall clock just before the publish call. Stores and files are polled
every 5 ms only to learn when to go on; a 20 ms pause between messages is pacing.
"""

from __future__ import annotations

import time
from typing import Any

from harness import (
    FileWatch,
    FloorSubscriber,
    OurDaemon,
    PredecessorDaemon,
    PresenceWatch,
    Publisher,
    Workspace,
    probe,
    rotated,
    summary,
    wait_for,
)

PACING = 0.02


def run(n: int, *, log: Any = print) -> dict[str, Any]:
    with Workspace("latency") as ws:
        broker = ws.broker()
        presence = PresenceWatch(broker)
        pub = Publisher(broker)
        files = FileWatch(ws.dir("pred"))
        try:
            ours = OurDaemon(ws, broker, "bench-lat-ours", ws.dir("state"))
            pred = PredecessorDaemon(ws, broker, "bench-lat-pred", ws.dir("pred") / "inbox.md")
            floor = FloorSubscriber(ws, broker, "bench-lat-floor")
            ours.wait_ready()
            pred.wait_ready(presence)
            floor.wait_ready()
            for contender in (ours, pred, floor):
                probe(contender, pub)

            samples: dict[str, list[float]] = {"ours": [], "predecessor": [], "floor": []}
            for i in range(n):
                for kind in rotated(("ours", "floor", "predecessor"), i):
                    if kind == "ours":
                        seq = ours.store.last_seq()
                        t_pub = pub.send(ours.agent_id, f"lat {i}")
                        wait_for(lambda s=seq: ours.store.since(s)[0] >= 1, 30, "ours to commit",  # type: ignore[misc]
                                 interval=0.005, check=ours.check_alive)
                        t_done = ours.store.since(seq)[2]
                    elif kind == "floor":
                        before = floor.received()
                        t_pub = pub.send(floor.agent_id, f"lat {i}")
                        wait_for(lambda b=before: floor.received() > b, 30, "the floor subscriber",  # type: ignore[misc]
                                 interval=0.005, check=floor.check_alive)
                        t_done = floor.times()[before]
                    else:
                        mark = files.mark()
                        t_pub = pub.send(pred.agent_id, f"lat {i}")
                        t_done = wait_for(lambda m=mark: files.modified_after(m, "inbox.md"), 30,  # type: ignore[misc]
                                          "the predecessor's archive", interval=0.005, check=pred.check_alive)
                    assert t_done is not None
                    samples[kind].append((t_done - t_pub) * 1000)
                    time.sleep(PACING)
            log("  latency p50: " + ", ".join(f"{k} {summary(v)['median']:.2f} ms" for k, v in samples.items())
                + f" (n={n})")
            return {"samples_ms": samples}
        finally:
            pub.close()
            presence.close()
            files.close()
