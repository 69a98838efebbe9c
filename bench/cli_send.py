"""Scenario 7: the CLI send, as whole processes (spawn to exit), plus send -> received.

One private broker; our daemon for the sender ``bench-a`` (so ``swarmbus send`` can go through
its control socket), our receiving daemon ``bench-b`` and a predecessor receiver ``pred-b``
(``--inbox``). Each round runs these commands once, in an order that rotates per round, and
measures wall time from spawn to exit (``subprocess.run``, output captured, bytecode caches
warm after two unrecorded warm-up rounds):

- ``python -c pass``: interpreter start-up floor (our venv's python);
- ``mosquitto_pub -q 1``: network floor (C client, QoS 1, to a topic nobody reads);
- ``swarmbus send`` (ours) via the local daemon, to bench-b;
- ``swarmbus send --direct`` (ours), its own MQTT connection, to bench-b;
- the predecessor's ``swarmbus send`` (swarmbus-py 0.2.0), to pred-b.

For the three real sends it also records spawn -> received: ours = bench-b's ``received_at`` of
the new row - the wall clock at spawn; predecessor = when inotify saw pred-b's inbox write -
the wall clock at spawn. The next command starts only once the message has arrived.

With ``engine="nats-cluster"`` the same rounds run on a private 3-node NATS cluster
(``harness.NatsCluster``) instead of mosquitto: both daemons get all three nodes through
``SWARMBUS_BROKER_HOSTS``, ``mosquitto_pub`` (MQTT 3.1.1, its default) publishes to node n1, and
there is no predecessor (swarmbus-py 0.2.0 speaks MQTT 5 only, which NATS refuses), so the
commands are ``python``, ``mosquitto_pub``, ``ours_send`` and ``ours_direct``.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Any

from harness import (
    OUR_BIN,
    OUR_PYTHON,
    PRED_BIN,
    BenchError,
    FileWatch,
    NatsCluster,
    OurDaemon,
    PredecessorDaemon,
    PresenceWatch,
    Publisher,
    Workspace,
    our_env,
    pred_env,
    probe,
    rotated,
    summary,
    wait_for,
)

COMMANDS = ("python", "mosquitto_pub", "ours_send", "ours_direct", "pred_send")
NATS_COMMANDS = ("python", "mosquitto_pub", "ours_send", "ours_direct")


def run(n: int, *, warmup: int = 2, log: Any = print, engine: str = "mosquitto") -> dict[str, Any]:
    mosquitto_pub = shutil.which("mosquitto_pub")
    if mosquitto_pub is None:
        raise BenchError("mosquitto_pub is not installed (Debian/Ubuntu: apt-get install mosquitto-clients)")
    nats = engine == "nats-cluster"
    with Workspace("cli-nats" if nats else "cli") as ws:
        broker = ws.nats_cluster() if nats else ws.broker()
        presence = None if nats else PresenceWatch(broker)
        pub = Publisher(broker)
        files = FileWatch(ws.dir("pred"))
        try:
            state = ws.dir("state")
            sender = OurDaemon(ws, broker, "bench-a", state)
            receiver = OurDaemon(ws, broker, "bench-b", state)
            pred = None if presence is None else PredecessorDaemon(ws, broker, "pred-b", ws.dir("pred") / "inbox.md")
            sender.wait_ready()
            receiver.wait_ready()
            if pred is not None and presence is not None:
                pred.wait_ready(presence)
            probe(receiver, pub)
            if pred is not None:
                probe(pred, pub)
            commands = COMMANDS if pred is not None else NATS_COMMANDS
            env = our_env(ws, state, broker)
            ours = [OUR_BIN / "swarmbus", "send", "--agent-id", "bench-a", "--to", "bench-b", "--subject", "bench",
                    "--body", "hello"]
            argvs: dict[str, tuple[list[Any], dict[str, str]]] = {
                "python": ([OUR_PYTHON, "-c", "pass"], env),
                "mosquitto_pub": ([mosquitto_pub, "-h", broker.host, "-p", str(broker.port), "-q", "1",
                                   "-t", "agents/bench-nobody/inbox", "-m", "hello"], env),
                "ours_send": (ours, env),
                "ours_direct": ([*ours, "--direct"], env),
                "pred_send": ([PRED_BIN / "swarmbus", "send", "--agent-id", "bench-a", "--to", "pred-b", "--subject",
                               "bench", "--body", "hello", "--broker", broker.host, "--port", str(broker.port)],
                              pred_env()),
            }
            wall: dict[str, list[float]] = {k: [] for k in commands}
            e2e: dict[str, list[float]] = {k: [] for k in ("ours_send", "ours_direct", "pred_send") if k in commands}
            for i in range(warmup + n):
                for name in rotated(commands, i):
                    argv, cmd_env = argvs[name]
                    seq, mark = receiver.store.last_seq(), files.mark()
                    t_wall = time.time()
                    t = time.perf_counter()
                    done = subprocess.run([str(a) for a in argv], env=cmd_env, capture_output=True)
                    elapsed = (time.perf_counter() - t) * 1000
                    if done.returncode != 0:
                        raise BenchError(f"{name} exited {done.returncode}: {done.stderr.decode()[-600:]}")
                    if name in ("ours_send", "ours_direct"):
                        wait_for(lambda s=seq: receiver.store.since(s)[0] >= 1, 30, f"{name} to reach bench-b",  # type: ignore[misc]
                                 interval=0.005, check=receiver.check_alive)
                        arrived = receiver.store.since(seq)[2]
                    elif name == "pred_send":
                        assert pred is not None
                        arrived = wait_for(lambda m=mark: files.modified_after(m, "inbox.md"), 30,  # type: ignore[misc]
                                           "the predecessor's send to reach pred-b", interval=0.005,
                                           check=pred.check_alive)
                    else:
                        arrived = None
                    if i < warmup:
                        continue
                    wall[name].append(elapsed)
                    if arrived is not None:
                        e2e[name].append((arrived - t_wall) * 1000)
            log("  CLI wall p50: " + ", ".join(f"{k} {summary(v)['median']:.1f} ms" for k, v in wall.items())
                + f" (n={n})")
            if isinstance(broker, NatsCluster):
                log("  CLI spawn -> stored p50 on NATS: "
                    + ", ".join(f"{k} {summary(v)['median']:.1f} ms" for k, v in e2e.items()))
                return {"wall_ms": wall, "e2e_ms": e2e, "engine": engine, "cluster": broker.describe(),
                        "links": {d.agent_id: d.link() for d in (sender, receiver)}}
            return {"wall_ms": wall, "e2e_ms": e2e}
        finally:
            pub.close()
            if presence is not None:
                presence.close()
            files.close()
