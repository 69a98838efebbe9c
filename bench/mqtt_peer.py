"""Plain paho-mqtt peers that the benchmark runs as separate processes: the burst publisher and
the floor subscriber. Nothing of swarmbus runs here except building envelopes (stdlib only).

    python bench/mqtt_peer.py pub --port P --to ID --count N --body-bytes B
    python bench/mqtt_peer.py sub --port P --agent-id ID (--expect N | --echo | --spawn CMD)

``pub`` builds N valid envelopes (body of B bytes) first, then connects (MQTT 5, clean start,
TCP_NODELAY), publishes them all at QoS 1 as fast as paho allows (its default in-flight window
of 20) and prints one JSON line: ``{"t0": wall time just before the first publish, "t_acked":
wall time when the last PUBACK arrived, "count": N}``.

``sub`` is the raw paho floor: an MQTT 5 persistent session (clean start off, session expiry
1 h), subscribed at QoS 1 to ``agents/<ID>/inbox``, TCP_NODELAY, automatic PUBACK. It prints
``ready`` after the SUBACK. With ``--expect N`` it only counts: it prints ``first <t>`` for the
first message and ``done <t> <count>`` when the N-th arrives (t = wall time of receipt); with
``--echo`` it prints ``msg <t>`` for every message. With ``--spawn CMD`` (a command line, split
like a shell would, no shell run) it is the wake floor: for every message it starts CMD with
``posix_spawn`` straight from paho's callback, stdin /dev/null, storing nothing and deciding
nothing; children are reaped by the kernel (SIGCHLD ignored). It runs until stdin closes or
SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "core"))


def _nodelay(client: Any) -> None:
    sock = client.socket()
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _emit(*fields: object) -> None:
    sys.stdout.write(" ".join(str(f) for f in fields) + "\n")
    sys.stdout.flush()


def publish(opts: argparse.Namespace) -> int:
    from swarmbus.envelope import new_envelope

    body = "x" * opts.body_bytes
    to = opts.to
    topic = "agents/broadcast" if to == "broadcast" else f"agents/{to}/inbox"
    payloads = [new_envelope("bench-pub", to, f"burst {i}", body).to_wire() for i in range(opts.count)]
    connected, all_acked = threading.Event(), threading.Event()
    acked = [0]

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        _nodelay(client)
        connected.set()

    def on_publish(client: Any, userdata: Any, mid: Any, reason: Any, props: Any) -> None:
        acked[0] += 1
        if acked[0] >= opts.count:
            all_acked.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-burst-{time.monotonic_ns()}",
                         protocol=mqtt.MQTTv5)
    client.on_connect, client.on_publish = on_connect, on_publish
    client.connect(opts.host, opts.port)
    client.loop_start()
    if not connected.wait(10):
        raise SystemExit("publisher: could not connect")
    t0 = time.time()
    for payload in payloads:
        client.publish(topic, payload, qos=1)
    if not all_acked.wait(max(60.0, opts.count / 100)):
        raise SystemExit(f"publisher: only {acked[0]}/{opts.count} PUBACKs arrived")
    t_acked = time.time()
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"t0": t0, "t_acked": t_acked, "count": opts.count}))
    return 0


def subscribe(opts: argparse.Namespace) -> int:
    topic = f"agents/{opts.agent_id}/inbox"
    count = [0]

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        _nodelay(client)
        client.subscribe(topic, qos=1)

    def on_subscribe(client: Any, userdata: Any, mid: Any, codes: Any, props: Any) -> None:
        _emit("ready")

    spawn = shlex.split(opts.spawn) if opts.spawn else None
    if spawn:
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the children
        devnull = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        if spawn:
            os.posix_spawn(spawn[0], spawn, os.environ, file_actions=devnull)
            return
        t = time.time()
        count[0] += 1
        if opts.echo:
            _emit("msg", repr(t))
        elif count[0] == 1:
            _emit("first", repr(t))
        if opts.expect and count[0] == opts.expect:
            _emit("done", repr(t), count[0])

    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-floor-{opts.agent_id}",
                         protocol=mqtt.MQTTv5)
    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.connect(opts.host, opts.port, clean_start=False, properties=props)
    client.loop_start()
    sys.stdin.read()  # until the bench closes our stdin (or signals us)
    client.disconnect()
    client.loop_stop()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    pub = sub.add_parser("pub")
    pub.add_argument("--host", default="127.0.0.1")
    pub.add_argument("--port", type=int, required=True)
    pub.add_argument("--to", required=True)
    pub.add_argument("--count", type=int, required=True)
    pub.add_argument("--body-bytes", type=int, default=100)
    s = sub.add_parser("sub")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--agent-id", required=True)
    mode = s.add_mutually_exclusive_group(required=True)
    mode.add_argument("--expect", type=int, default=0)
    mode.add_argument("--echo", action="store_true")
    mode.add_argument("--spawn", default="")
    opts = ap.parse_args()
    return publish(opts) if opts.cmd == "pub" else subscribe(opts)


if __name__ == "__main__":
    raise SystemExit(main())
