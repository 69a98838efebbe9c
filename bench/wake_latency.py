"""Host wake latency, side by side in one run: send -> the first model request for Claude Code's
``session``, ``rewake`` and ``resume`` paths (the real ``claude``), and send -> ``accepted`` for the
OpenClaw gateway (the real gateway) and Codex (the real ``codex``), each against its loopback model
mock.

    .venv/bin/python bench/wake_latency.py               # every host, 3 rounds (about 5 minutes)
    .venv/bin/python bench/wake_latency.py --rounds 5 --hosts claude,openclaw

Each round runs the host's opt-in real-peer tox environment (``real-claude``, ``real-openclaw``,
``real-codex``; they install the hosts from npm on first use), whose tests append ``latency
<path>: <seconds>`` lines to ``$SWARMBUS_LATENCY_OUT``; this script collects them and prints a
markdown table of medians with min-max and n, and the ratio of ``resume`` to ``session``. The
goal (issue 12): ``session`` at most 0.1 s here, ten times faster than ``resume``. The times
include ``swarmbus send`` itself (a CLI process). Benchmarks are not tests: nothing here
asserts. Exit 0 when every environment ran, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENVS = {"claude": "real-claude", "openclaw": "real-openclaw", "codex": "real-codex"}
LINE = re.compile(r"\Alatency (?P<path>.+): (?P<seconds>[0-9.]+)\Z")


def run_env(env: str, out: Path) -> bool:
    """Run one real-peer tox env with the latency file; True when it passed."""
    tox = ROOT / ".venv" / "bin" / "tox"
    proc = subprocess.run([str(tox), "-e", env, "--", "-q"], cwd=ROOT, env={**os.environ, "SWARMBUS_LATENCY_OUT": str(out)},
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(f"{env} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}\n")
    return proc.returncode == 0


def collect(path: Path) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {}
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        match = LINE.match(line.strip())
        if match:
            samples.setdefault(match["path"], []).append(float(match["seconds"]))
    return samples


def table(samples: dict[str, list[float]]) -> str:
    rows = ["| path | median | min-max | n |", "|---|---|---|---|"]
    for path, values in sorted(samples.items()):
        rows.append(f"| {path} | {statistics.median(values) * 1000:.0f} ms | "
                    f"{min(values) * 1000:.0f}-{max(values) * 1000:.0f} ms | {len(values)} |")
    session = samples.get("session (idle)")
    resume = samples.get("resume (headless fallback)")
    if session and resume:
        rows.append("")
        rows.append(f"resume / session (idle): {statistics.median(resume) / statistics.median(session):.1f}x")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs of each environment (default 3)")
    parser.add_argument("--hosts", default=",".join(ENVS), help=f"comma-separated, of {', '.join(ENVS)}")
    args = parser.parse_args(argv)
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    unknown = [h for h in hosts if h not in ENVS]
    if unknown or args.rounds < 1:
        parser.error(f"unknown hosts {unknown}" if unknown else "--rounds must be 1 or more")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "latency.txt"
        for _ in range(args.rounds):
            for host in hosts:  # interleaved, so a slow minute touches every host alike
                ok = run_env(ENVS[host], out) and ok
        print(table(collect(out)))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
