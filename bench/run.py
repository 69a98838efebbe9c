"""swarmbus benchmark: ours vs the predecessor (swarmbus-py 0.2.0) vs the raw paho-mqtt floor.

    .venv/bin/python bench/run.py            # the full run (about 10 minutes on 2 vCPUs)
    .venv/bin/python bench/run.py --quick    # a smoke run with small counts (about 1 minute)
    .venv/bin/python bench/run.py --only cli,latency --ours-rev HEAD
    .venv/bin/python bench/run.py --only cli,fanout --engine both   # also on a 3-node NATS cluster

Everything runs in one process, side by side, on private mosquitto brokers started with
swarmbus.dev_broker on free ports (never the machine's own broker); contenders are interleaved
within each scenario. The predecessor is installed on first use into bench/.venv-predecessor
(pip install swarmbus-py==0.2.0; it cannot share a venv with swarmbus: same import package).

Scenarios (one module each; see their docstrings for exactly what is measured and how):

    cli        cli_send.py  CLI send wall time and send -> received (scenario 7)
    wake       wake.py      publish -> wake command started (scenario 3)
    latency    latency.py   publish -> committed vs raw paho delivery (scenario 4)
    idle       idle.py      idle RSS and CPU per daemon (scenario 5)
    ingest     ingest.py    burst of 100-byte messages: rate, CPU, RSS after (scenarios 1, 5)
    ingest64k  ingest.py    burst of 64 KiB messages: CPU vs the floor (scenario 2)
    fanout     fanout.py    one broadcast to a fleet of daemons (scenario 6)

--engine nats-cluster runs the cli and fanout scenarios with our daemons on a private 3-node NATS
cluster instead (swarmbus.dev_nats on free ports, JetStream, MQTT 3.1.1; the daemons get all three
nodes through SWARMBUS_BROKER_HOSTS); the predecessor cannot speak MQTT 3.1.1, so there it is ours
only. --engine both runs each chosen scenario on mosquitto (as by default) and then, for cli and
fanout, on NATS, and compares ours on NATS with ours on mosquitto from the same run. The default,
--engine mosquitto, is the run described above.

Output: a markdown table on stdout (what, ours, predecessor, floor, ratio, target, met?) and
the raw samples as JSON in bench/results/<timestamp>.json (git-ignored). Figures are medians
with min-max and n; ratios are ratios of medians. Benchmarks are not tests: nothing here asserts.
A scenario that fails is retried once (--retries). Exit code 0 when every scenario ran (targets
met or not), 1 when one failed on every attempt, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cli_send
import fanout
import harness
import idle
import ingest
import latency
import report
import wake

from swarmbus.dev_broker import MosquittoNotFound, find_mosquitto
from swarmbus.dev_nats import NatsServerNotFound, find_nats_server

SCENARIOS = ("cli", "wake", "latency", "idle", "ingest", "ingest64k", "fanout")
ENGINES = ("mosquitto", "nats-cluster", "both")
NATS_SCENARIOS = ("cli", "fanout")  # those that also run on a 3-node NATS cluster
NATS_KEY = "@nats-cluster"  # a NATS run's results and errors are kept under "<scenario>@nats-cluster"
PROFILES: dict[str, dict[str, Any]] = {
    "full": {"cli_n": 30, "wake_n": 50, "latency_n": 200, "idle_k": 3, "idle_window": 30.0,
             "ingest_reps": 5, "ingest_count": 20_000, "ingest64k_reps": 5, "ingest64k_count": 2_000,
             "fanout_n": 100, "fanout_broadcasts": 20},
    "quick": {"cli_n": 5, "wake_n": 5, "latency_n": 20, "idle_k": 2, "idle_window": 5.0,
              "ingest_reps": 1, "ingest_count": 2_000, "ingest64k_reps": 1, "ingest64k_count": 200,
              "fanout_n": 10, "fanout_broadcasts": 3},
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def scenario(name: str, p: dict[str, Any], engine: str = "mosquitto") -> Any:
    if name == "cli":
        return cli_send.run(p["cli_n"], log=log, engine=engine)
    if name == "wake":
        return wake.run(p["wake_n"], log=log)
    if name == "latency":
        return latency.run(p["latency_n"], log=log)
    if name == "idle":
        return idle.run(p["idle_k"], p["idle_window"], log=log)
    if name == "ingest":
        return ingest.run(p["ingest_reps"], p["ingest_count"], 100, log=log)
    if name == "ingest64k":
        return ingest.run(p["ingest64k_reps"], p["ingest64k_count"], 65_536, log=log)
    if name == "fanout":
        return fanout.run(p["fanout_n"], p["fanout_broadcasts"], log=log, engine=engine)
    raise AssertionError(name)


def preflight(engine: str = "mosquitto") -> None:
    if not Path("/proc/self/stat").exists():
        raise harness.BenchError("this benchmark reads CPU and memory from /proc: it runs on Linux only")
    if engine != "nats-cluster" and find_mosquitto() is None:
        raise MosquittoNotFound()
    if shutil.which("mosquitto_pub") is None:
        raise harness.BenchError("mosquitto_pub is not installed (Debian/Ubuntu: apt-get install mosquitto-clients)")
    if engine != "mosquitto" and find_nats_server() is None:
        raise NatsServerNotFound()
    if engine != "nats-cluster":
        harness.ensure_predecessor()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small counts: a smoke run in under 3 minutes")
    ap.add_argument("--only", default="", help=f"comma-separated scenarios to run (default all: {','.join(SCENARIOS)})")
    ap.add_argument("--ours-rev", metavar="REV",
                    help="run ours from `git archive REV core` instead of the working tree (e.g. HEAD)")
    ap.add_argument("--out", type=Path, default=harness.BENCH / "results", help="directory for the JSON results")
    ap.add_argument("--retries", type=int, default=1,
                    help="re-run a scenario that failed this many times (default 1: on a shared machine a "
                         "stray signal can kill a daemon); every failure is logged and kept in the JSON")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=N",
                    help="override a profile value, e.g. --set fanout_n=50 (see PROFILES in run.py)")
    ap.add_argument("--engine", choices=ENGINES, default="mosquitto",
                    help="mosquitto (default); nats-cluster: cli and fanout with our daemons on a private "
                         "3-node NATS cluster, ours only; both: mosquitto, then cli and fanout on NATS too, "
                         "compared with ours on mosquitto from the same run")
    opts = ap.parse_args()
    nats_only = opts.engine == "nats-cluster"
    chosen = [s.strip() for s in opts.only.split(",") if s.strip()] or list(NATS_SCENARIOS if nats_only else SCENARIOS)
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    if nats_only and any(s not in NATS_SCENARIOS for s in chosen):
        ap.error(f"--engine nats-cluster runs {','.join(NATS_SCENARIOS)} only; "
                 f"not {', '.join(s for s in chosen if s not in NATS_SCENARIOS)}")
    # (scenario, engine) in order: on mosquitto, then (cli, fanout) on NATS right after, so the two compare
    jobs = [(name, engine) for name in chosen for engine in ("mosquitto", "nats-cluster")
            if (engine == "mosquitto" and not nats_only)
            or (engine == "nats-cluster" and opts.engine != "mosquitto" and name in NATS_SCENARIOS)]
    profile = dict(PROFILES["quick" if opts.quick else "full"])
    for item in opts.set:
        key, _, value = item.partition("=")
        if key not in profile or not value:
            ap.error(f"--set {item}: expected KEY=N with KEY one of {', '.join(profile)}")
        profile[key] = type(profile[key])(value)

    # SIGTERM/SIGHUP unwind like Ctrl-C, so every finally block stops its processes and removes its files
    def unwind(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, unwind)
    signal.signal(signal.SIGHUP, unwind)

    export = Path(tempfile.mkdtemp(prefix="swarmbus-bench-ours-"))
    try:
        try:
            preflight(opts.engine)
            if opts.ours_rev:
                ours_source = f"git revision {opts.ours_rev} ({harness.use_ours_revision(opts.ours_rev, export)})"
                subprocess.run([sys.executable, "-m", "compileall", "-q", str(export / "core")], check=True)
            else:
                info = harness.machine_info()
                ours_source = f"working tree (HEAD {info['git_head']}" + (
                    ", with uncommitted changes in core/)" if info["worktree_core_modified"] else ")")
        except (harness.BenchError, MosquittoNotFound, NatsServerNotFound) as exc:
            log(f"bench: error: {exc}")
            return 1
        started = time.time()
        machine = harness.machine_info()
        if opts.engine != "mosquitto":
            machine["nats_server"] = harness.nats_server_version()
        log(f"swarmbus bench ({'quick' if opts.quick else 'full'}): ours = {ours_source}; "
            f"{machine['cpus']} CPUs, Python {machine['python']}, {machine['mosquitto']}"
            + (f", {machine['nats_server']} (3-node cluster)" if "nats_server" in machine else ""))
        results: dict[str, Any] = {}
        errors: dict[str, str] = {}
        timings: dict[str, float] = {}
        failures: list[dict[str, Any]] = []
        for name, engine in jobs:
            key = name if engine == "mosquitto" else name + NATS_KEY
            t = time.monotonic()
            log(f"[{name}]" if engine == "mosquitto" else f"[{name} on a 3-node NATS cluster]")
            for attempt in range(1 + opts.retries):
                try:
                    results[key] = scenario(name, profile, engine)
                    errors.pop(key, None)
                    break
                except (KeyboardInterrupt, SystemExit):
                    log(f"bench: interrupted during {key}; its processes and files are cleaned up, no report")
                    raise
                except Exception as exc:  # one broken scenario must not hide the others' figures
                    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
                    errors[key] = f"{type(exc).__name__}: " + " / ".join(lines[:1] + lines[1:][-1:])[:300]
                    failures.append({"scenario": key, "attempt": attempt + 1, "error": str(exc)})
                    log(f"  FAILED (attempt {attempt + 1}): {exc}")
                    if not isinstance(exc, harness.BenchError):
                        log(traceback.format_exc())
            timings[key] = time.monotonic() - t
            log(f"  ({timings[key]:.0f} s)")
    finally:
        shutil.rmtree(export, ignore_errors=True)

    rows = report.rows_for(results, errors, profile)
    table = report.markdown(rows)
    nats_rows = report.nats_rows(results, errors, profile) if opts.engine != "mosquitto" else []
    command = shlex.join([".venv/bin/python", "bench/run.py", *sys.argv[1:]])
    machine["loadavg_end"] = os.getloadavg()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    header = (f"swarmbus bench, {time.strftime('%Y-%m-%d %H:%M %Z', time.localtime(started))}: `{command}`\n"
              f"ours: {ours_source}; " + ("" if nats_only else f"predecessor: {harness.PRED_REQUIREMENT}; ")
              + f"{machine['cpus']} CPUs "
              f"({machine['cpu_model']}), Python {machine['python']}, paho-mqtt {machine['paho_mqtt']}, "
              f"{machine['mosquitto']}"
              + (f", {machine['nats_server']} (3 nodes)" if "nats_server" in machine else "")
              + f", load average {machine['loadavg_start'][0]:.2f} at start, "
              f"{machine['loadavg_end'][0]:.2f} at end; {time.time() - started:.0f} s in all")
    if nats_only:
        print(f"\n{header}\n")
    else:
        print(f"\n{header}\n\n{table}\n")
    if opts.engine != "mosquitto":
        print("Ours on a private 3-node NATS cluster (MQTT 3.1.1, JetStream; no predecessor: it cannot speak "
              "MQTT 3.1.1). Ratio ÷mosquitto: ours on NATS / ours on mosquitto"
              + (" measured in this run" if not nats_only else "; --engine both measures both") + ".\n\n"
              + report.nats_markdown(nats_rows) + "\n")
    opts.out.mkdir(parents=True, exist_ok=True)
    path = opts.out / f"{stamp}{'-quick' if opts.quick else ''}.json"
    with contextlib.suppress(ValueError):
        path = path.relative_to(Path.cwd())
    payload = {"started": started, "command": command, "ours": ours_source, "predecessor": harness.PRED_REQUIREMENT,
               "machine": machine, "profile": profile, "scenarios": chosen, "seconds": timings, "errors": errors,
               "failed_attempts": failures,
               "rows": report.to_json(rows), "raw": results}
    if opts.engine != "mosquitto":
        payload["engine"] = opts.engine
        payload["nats_rows"] = report.to_json(nats_rows)
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    log(f"raw results: {path}")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
