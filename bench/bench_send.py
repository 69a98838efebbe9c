"""Send-path and throughput benchmark, every figure measured side by side in one run.

    .venv/bin/python bench/bench_send.py [--runs 20] [--burst 2000] [--predecessor]

Starts a private mosquitto (swarmbus.dev_broker's generated config) on a free port and two
swarmbus daemons, then measures:

- wall time of a whole CLI process: `python -c pass` (interpreter floor), `mosquitto_pub -q 1`
  (network floor), `swarmbus send` through the local daemon, `swarmbus send --direct`, and with
  --predecessor the predecessor's `swarmbus send` (swarmbus-py 0.2.0, installed into
  bench/.venv-predecessor from PyPI; it cannot share a venv with us: same import name);
- CLI send -> message committed in the receiving daemon's store (end-to-end latency);
- a burst of QoS 1 publishes from one paho client -> all committed by the receiving daemon.

Figures are medians with min-max over --runs runs. Bytecode caching is on (as for users).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "core"))

from swarmbus.dev_broker import BrokerConfig, free_port, start_broker  # noqa: E402


def timed(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        proc = subprocess.run(argv, env=env, capture_output=True)
        out.append((time.perf_counter() - t) * 1000)
        if proc.returncode != 0:
            raise SystemExit(f"{argv[:3]} failed: {proc.stderr.decode()[-400:]}")
    return out


def row(name: str, values: list[float], unit: str = "ms") -> str:
    return (f"| {name} | {statistics.median(values):.1f} {unit} | {min(values):.1f}-{max(values):.1f} | "
            f"{len(values)} |")


def wait(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("benchmark condition not reached in time")
        time.sleep(0.001)


def predecessor_python() -> Path:
    venv = REPO / "bench" / ".venv-predecessor"
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "swarmbus-py==0.2.0"], check=True)
    return venv / "bin" / "swarmbus"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--burst", type=int, default=2000)
    ap.add_argument("--predecessor", action="store_true", help="also time swarmbus-py 0.2.0's send")
    opts = ap.parse_args()

    from swarmbus.control import daemon_status
    from swarmbus.paths import AgentPaths
    from swarmbus.store import Store

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "core")], check=True)
    tmp = Path(tempfile.mkdtemp(prefix="swarmbus-bench-"))
    broker = start_broker(BrokerConfig(state_dir=tmp / "broker", port=free_port()))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWARMBUS_", "MQTT_", "PYTHONDONTWRITE"))}
    env.update(SWARMBUS_STATE_DIR=str(tmp / "state"), SWARMBUS_CONFIG=str(tmp / "none.toml"),
               SWARMBUS_BROKER_URL=broker.url, SWARMBUS_LOAD_PLUGINS="")
    (tmp / "none.toml").write_text("")
    swarmbus = [str(Path(sys.executable).parent / "swarmbus")]
    daemons = []
    try:
        for agent in ("bench-a", "bench-b"):
            daemons.append(subprocess.Popen([*swarmbus, "start", "--agent-id", agent, "--log-level", "warning"],
                                            env=env, stderr=subprocess.DEVNULL))
            sock = AgentPaths.for_agent(agent, tmp / "state").socket
            wait(lambda s=sock: (daemon_status(s) or {}).get("connected"))
        send = [*swarmbus, "send", "--agent-id", "bench-a", "--to", "bench-b", "--subject", "s", "--body", "b"]
        timed(send, env, 3)  # warm caches
        rows = [
            row("`python -c pass` (interpreter floor)", timed([sys.executable, "-c", "pass"], env, opts.runs)),
            row("`mosquitto_pub -q 1` (network floor)",
                timed(["mosquitto_pub", "-p", str(broker.port), "-q", "1", "-t", "bench/x", "-m", "x"], env, opts.runs)),
            row("`swarmbus send` via the local daemon", timed(send, env, opts.runs)),
            row("`swarmbus send --direct` (no daemon)", timed([*send, "--direct"], env, opts.runs)),
        ]
        if opts.predecessor:
            pred = predecessor_python()
            pred_send = [str(pred), "send", "--agent-id", "bench-a", "--to", "bench-b", "--subject", "s",
                         "--body", "b", "--broker", "127.0.0.1", "--port", str(broker.port)]
            rows.append(row("predecessor swarmbus-py 0.2.0 `swarmbus send`", timed(pred_send, env, opts.runs)))

        store_b = Store(AgentPaths.for_agent("bench-b", tmp / "state").store)
        latencies = []
        for _ in range(opts.runs):
            before = store_b.last_seq()
            t = time.perf_counter()
            subprocess.run(send, env=env, capture_output=True, check=True)
            wait(lambda b=before: store_b.last_seq() > b)
            latencies.append((time.perf_counter() - t) * 1000)
        rows.append(row("CLI `send` -> committed in the receiver's store", latencies))

        import paho.mqtt.client as mqtt

        from swarmbus.envelope import new_envelope

        client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        payloads = [new_envelope("bench-a", "bench-b", f"burst {i}", "x" * 200).to_wire() for i in range(opts.burst)]
        before = store_b.count_messages()
        t = time.perf_counter()
        infos = [client.publish("agents/bench-b/inbox", p, qos=1) for p in payloads]
        for info in infos:
            info.wait_for_publish(30)
        wait(lambda: store_b.count_messages() >= before + opts.burst, timeout=120)
        elapsed = time.perf_counter() - t
        client.loop_stop()
        client.disconnect()
        stored = store_b.count_messages() - before
        burst_line = (f"| burst of {opts.burst} QoS 1 publishes -> all committed by the daemon | "
                      f"{opts.burst / elapsed:.0f} msg/s | {elapsed:.2f} s total, {stored}/{opts.burst} stored | 1 |")
        store_b.close()
    finally:
        for d in daemons:
            d.terminate()
            d.wait(15)
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nswarmbus bench, {time.strftime('%Y-%m-%d %H:%M')}, Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs, mosquitto private broker\n")
    print("| what | median | range | n |\n|---|---|---|---|")
    print("\n".join(rows))
    print(burst_line)
    print(json.dumps({"runs": opts.runs, "burst": opts.burst}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
