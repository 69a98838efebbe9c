"""Turn the scenarios' raw results into rows: medians with min-max and n, ratios, targets.

Each :class:`Row` holds the raw samples of ours, the predecessor and the floor for one metric.
Ratios are ratios of medians (ours / predecessor, ours / floor). A target compares ours' median
with ``factor`` x the median of a reference: the predecessor, the floor, or (for memory after the
burst) the same daemons' idle RSS before it. :func:`markdown` renders the table printed at the
end of a run and pasted into docs/benchmarks.md; :func:`to_json` is what bench/results/ keeps.

``--engine nats-cluster``/``both`` add a second table (:func:`nats_rows`, :func:`nats_markdown`):
ours on a 3-node NATS cluster against ours on mosquitto from the same run (the row's
``reference``), with the NATS floor where there is one; no predecessor (it cannot speak MQTT 3.1.1).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from harness import summary

MIB = 2**20


@dataclass
class Row:
    key: str
    what: str
    ours: list[float]
    predecessor: list[float] | None = None
    floor: list[float] | None = None
    digits: int = 1
    target: tuple[str, str, float] | None = None  # (reference, "<=" or ">=", factor)
    reference: list[float] | None = None  # the values for reference "idle" (or "mosquitto": nats_rows)
    note: str = ""
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def _ref(self, name: str) -> list[float] | None:
        return {"predecessor": self.predecessor, "floor": self.floor, "idle": self.reference,
                "mosquitto": self.reference}[name]

    def ratio(self, name: str) -> float | None:
        ref = self._ref(name)
        if not self.ours or not ref:
            return None
        base = statistics.median(ref)
        return statistics.median(self.ours) / base if base else None

    def target_text(self) -> str:
        if self.target is None:
            return ""
        name, op, factor = self.target
        sign = "≤" if op == "<=" else "≥"
        return f"{sign} {factor:g}x {name}"

    def met(self) -> bool | None:
        if self.target is None:
            return None
        name, op, factor = self.target
        r = self.ratio(name)
        if r is None:
            return None
        return r <= factor if op == "<=" else r >= factor


def _cell(values: list[float] | None, digits: int) -> str:
    if not values:
        return ""
    s = summary(values)
    if s["n"] == 1:
        return f"{s['median']:,.{digits}f} (n=1)"
    return f"{s['median']:,.{digits}f} ({s['min']:,.{digits}f}-{s['max']:,.{digits}f}, n={s['n']})"


def _ratios(row: Row) -> str:
    parts = []
    for name, label in (("predecessor", "÷pred"), ("floor", "÷floor"), ("idle", "÷idle")):
        r = row.ratio(name)
        if r is not None:
            parts.append(f"{label} {r:.2f}x")
    return ", ".join(parts)


def markdown(rows: list[Row]) -> str:
    out = ["| what | ours | predecessor | floor | ratio | target | met? |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        if row.error:
            error = row.error.replace("|", "/")
            out.append(f"| {row.what} | failed: {error} | | | | {row.target_text()} | n/a |")
            continue
        met = row.met()
        verdict = "" if row.target is None else ("n/a" if met is None else ("yes" if met else "**no**"))
        what = row.what + (f" ({row.note})" if row.note else "")  # what and note never hold parentheses
        out.append(f"| {what} | {_cell(row.ours, row.digits)} | {_cell(row.predecessor, row.digits)} | "
                   f"{_cell(row.floor, row.digits)} | {_ratios(row)} | {row.target_text()} | {verdict} |")
    return "\n".join(out)


def to_json(rows: list[Row]) -> list[dict[str, Any]]:
    def block(values: list[float] | None) -> dict[str, Any] | None:
        return None if values is None else {**summary(values), "samples": values}

    return [{"key": r.key, "what": r.what, "note": r.note, "error": r.error or None,
             "ours": block(r.ours), "predecessor": block(r.predecessor), "floor": block(r.floor),
             "reference": block(r.reference), "ratio_predecessor": r.ratio("predecessor"),
             "ratio_floor": r.ratio("floor"), "ratio_idle": r.ratio("idle"),
             "target": r.target_text() or None, "met": r.met(), **r.extra} for r in rows]


# -- rows per scenario -----------------------------------------------------------------------------


def _pick(runs: list[dict[str, Any]], kind: str, key: str, scale: float = 1.0) -> list[float]:
    return [r[key] * scale for r in runs if r["kind"] == kind and key in r]


def ingest_rows(runs: list[dict[str, Any]], count: int, body: str, *, small: bool) -> list[Row]:
    tag = f"{count:,} x {body}"
    rows = [
        Row(f"ingest_{body}_commit_rate", f"Ingest {tag}: msg/s to all committed",
            _pick(runs, "ours", "commit_rate"), _pick(runs, "predecessor", "archive_rate"),
            _pick(runs, "floor", "receive_rate"), digits=0, target=("predecessor", ">=", 1.5) if small else None,
            note="predecessor: archived; floor: received"),
        Row(f"ingest_{body}_dispatch_rate", f"Ingest {tag}: msg/s to all dispatched",
            _pick(runs, "ours", "dispatch_rate"), _pick(runs, "predecessor", "archive_rate"),
            _pick(runs, "floor", "receive_rate"), digits=0, target=("predecessor", ">=", 1.5) if small else None,
            note="handlers done, inbox archived; predecessor: archived; floor: received"),
        Row(f"ingest_{body}_cpu", f"Ingest {tag}: CPU ms per 1,000 msgs",
            _pick(runs, "ours", "cpu_per_1000_ms"), _pick(runs, "predecessor", "cpu_per_1000_ms"),
            _pick(runs, "floor", "cpu_per_1000_ms"), digits=0,
            target=("predecessor", "<=", 1.0) if small else ("floor", "<=", 2.0), note="receiving process tree"),
    ]
    if small:
        ours_after = _pick(runs, "ours", "rss_after", 1 / MIB)
        ours_idle = _pick(runs, "ours", "rss_idle", 1 / MIB)
        rows.append(Row("rss_after_burst", f"RSS after the {tag} burst, MiB", ours_after,
                        _pick(runs, "predecessor", "rss_after", 1 / MIB), _pick(runs, "floor", "rss_after", 1 / MIB),
                        target=("idle", "<=", 1.5), reference=ours_idle,
                        note="settled; ÷idle: the same daemon before its burst"))
    return rows


def rows_for(results: dict[str, Any], errors: dict[str, str], profile: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    p = profile

    def failed(key: str, what: str, target: tuple[str, str, float] | None = None) -> None:
        rows.append(Row(key, what, [], target=target, error=errors[key]))

    if "ingest" in results:
        rows += ingest_rows(results["ingest"], p["ingest_count"], "100 B", small=True)
    elif "ingest" in errors:
        failed("ingest", f"Ingest {p['ingest_count']:,} x 100 B", ("predecessor", ">=", 1.5))
    if "ingest64k" in results:
        rows += ingest_rows(results["ingest64k"], p["ingest64k_count"], "64 KiB", small=False)
    elif "ingest64k" in errors:
        failed("ingest64k", f"Ingest {p['ingest64k_count']:,} x 64 KiB", ("floor", "<=", 2.0))
    if "wake" in results:
        s = results["wake"]["samples_ms"]
        rows.append(Row("wake_p50", "Publish → wake command started, p50 ms (floor: paho callback → posix_spawn)",
                        s["ours"], s["predecessor"], s.get("floor"), digits=2,
                        target=("predecessor", "<=", 0.5),
                        note="one at a time, priority high" +
                             ("" if results["wake"]["helper"] == "compiled" else "; touch + mtime")))
    elif "wake" in errors:
        failed("wake", "Publish → wake command started", ("predecessor", "<=", 0.5))
    if "latency" in results:
        s = results["latency"]["samples_ms"]
        rows.append(Row("commit_p50", "Publish → committed, p50 ms", s["ours"], s["predecessor"],
                        s["floor"], digits=2, target=("floor", "<=", 2.0), note="floor: paho delivery; predecessor: archived"))
    elif "latency" in errors:
        failed("latency", "Publish → committed", ("floor", "<=", 2.0))
    if "idle" in results:
        r = results["idle"]
        rows.append(Row("idle_rss", "Idle RSS per daemon, MiB", [v / MIB for v in r["rss_bytes"]["ours"]],
                        [v / MIB for v in r["rss_bytes"]["predecessor"]], target=("predecessor", "<=", 1.0)))
        rows.append(Row("idle_cpu", "Idle CPU per daemon, ms per minute",
                        r["cpu_ms_per_min"]["ours"], r["cpu_ms_per_min"]["predecessor"],
                        target=("predecessor", "<=", 1.0), note=f"{r['window_s']:.0f} s window"))
    elif "idle" in errors:
        failed("idle", "Idle RSS and CPU", ("predecessor", "<=", 1.0))
    if "fanout" in results:
        r, n = results["fanout"], p["fanout_n"]
        rows.append(Row("fanout_p50", f"Broadcast → in all {n} daemons, p50 ms", r["ours"]["samples_ms"],
                        r["predecessor"]["samples_ms"], target=("predecessor", "<=", 1.0),
                        note="predecessor: inbox mtime"))
        rows.append(Row("fanout_ready", f"{n} daemons spawned → all ready, s", [r["ours"]["ready_s"]],
                        [r["predecessor"]["ready_s"]], digits=1))
        rows.append(Row("fanout_rss", f"{n} daemons: total RSS, MiB", [r["ours"]["fleet_rss_bytes"] / MIB],
                        [r["predecessor"]["fleet_rss_bytes"] / MIB], digits=0))
    elif "fanout" in errors:
        failed("fanout", "Broadcast fan-out", ("predecessor", "<=", 1.0))
    if "cli" in results:
        w, e = results["cli"]["wall_ms"], results["cli"]["e2e_ms"]
        rows.append(Row("cli_python", "`python -c pass`, wall ms", [], floor=w["python"], note="interpreter floor"))
        rows.append(Row("cli_send", "`swarmbus send` via the local daemon, wall ms", w["ours_send"], w["pred_send"],
                        w["mosquitto_pub"], target=("predecessor", "<=", 0.2), note="floor: mosquitto_pub -q 1"))
        rows.append(Row("cli_send_direct", "`swarmbus send --direct`, wall ms", w["ours_direct"], w["pred_send"],
                        w["mosquitto_pub"], target=("predecessor", "<=", 0.5), note="floor: mosquitto_pub -q 1"))
        rows.append(Row("cli_send_e2e", "`swarmbus send` spawn → received, p50 ms", e["ours_send"], e["pred_send"],
                        note="ours: committed by the receiver; predecessor: archived"))
        rows.append(Row("cli_direct_e2e", "`swarmbus send --direct` spawn → received, p50 ms", e["ours_direct"],
                        e["pred_send"], note="ours: committed by the receiver; predecessor: archived"))
    elif "cli" in errors:
        failed("cli", "CLI send", ("predecessor", "<=", 0.5))
    return rows


# -- ours on a 3-node NATS cluster against ours on mosquitto (--engine nats-cluster / both) ---------------


def nats_rows(results: dict[str, Any], errors: dict[str, str], profile: dict[str, Any],
              suffix: str = "@nats-cluster") -> list[Row]:
    """Rows for the NATS runs (results keyed ``cli@nats-cluster``, ``fanout@nats-cluster``): ``ours``
    is ours on NATS, ``reference`` ours on mosquitto in the same run (when it ran), ``floor`` the
    NATS floor (``mosquitto_pub -q 1`` to node n1) for the wall-time rows."""
    rows: list[Row] = []
    cli, fan = results.get("cli" + suffix), results.get("fanout" + suffix)
    if cli is not None:
        w, e = cli["wall_ms"], cli["e2e_ms"]
        # the reference: ours on mosquitto, when the mosquitto cli scenario ran in the same invocation
        mw, me = (results["cli"]["wall_ms"], results["cli"]["e2e_ms"]) if "cli" in results else ({}, {})
        rows.append(Row("nats_cli_send_e2e", "`swarmbus send` via the local daemon, spawn → stored, p50 ms",
                        e["ours_send"], reference=me.get("ours_send"), note="committed by the receiver"))
        rows.append(Row("nats_cli_direct_e2e", "`swarmbus send --direct`, spawn → stored, p50 ms",
                        e["ours_direct"], reference=me.get("ours_direct"), note="committed by the receiver"))
        rows.append(Row("nats_cli_send", "`swarmbus send` via the local daemon, wall ms", w["ours_send"],
                        floor=w["mosquitto_pub"], reference=mw.get("ours_send"), note="floor: mosquitto_pub -q 1"))
        rows.append(Row("nats_cli_send_direct", "`swarmbus send --direct`, wall ms", w["ours_direct"],
                        floor=w["mosquitto_pub"], reference=mw.get("ours_direct"), note="floor: mosquitto_pub -q 1"))
        rows.append(Row("nats_cli_mosquitto_pub", "`mosquitto_pub -q 1`, wall ms", w["mosquitto_pub"],
                        reference=mw.get("mosquitto_pub"), note="the network floor itself; MQTT 3.1.1 on both"))
    elif "cli" + suffix in errors:
        rows.append(Row("nats_cli", "CLI send on NATS", [], error=errors["cli" + suffix]))
    if fan is not None:
        n, mine = profile["fanout_n"], results.get("fanout", {}).get("ours")
        rows.append(Row("nats_fanout_p50", f"Broadcast → in all {n} daemons, p50 ms", fan["ours"]["samples_ms"],
                        reference=mine["samples_ms"] if mine else None, note="last received_at"))
        rows.append(Row("nats_fanout_ready", f"{n} daemons spawned → all ready, s", [fan["ours"]["ready_s"]],
                        reference=[mine["ready_s"]] if mine else None, digits=1))
        rows.append(Row("nats_fanout_rss", f"{n} daemons: total RSS, MiB", [fan["ours"]["fleet_rss_bytes"] / MIB],
                        reference=[mine["fleet_rss_bytes"] / MIB] if mine else None, digits=0, note="daemons only"))
    elif "fanout" + suffix in errors:
        rows.append(Row("nats_fanout", "Broadcast fan-out on NATS", [], error=errors["fanout" + suffix]))
    for row in rows:
        row.extra["ratio_mosquitto"] = row.ratio("mosquitto")
    return rows


def nats_markdown(rows: list[Row]) -> str:
    out = ["| what | ours on 3-node NATS | ours on mosquitto (same run) | floor on NATS | ratio |",
           "|---|---|---|---|---|"]
    for row in rows:
        if row.error:
            out.append(f"| {row.what} | failed: {row.error.replace('|', '/')} | | | |")
            continue
        parts = [f"{label} {r:.2f}x" for name, label in (("mosquitto", "÷mosquitto"), ("floor", "÷floor"))
                 if (r := row.ratio(name)) is not None]
        what = row.what + (f" ({row.note})" if row.note else "")
        out.append(f"| {what} | {_cell(row.ours, row.digits)} | {_cell(row.reference, row.digits)} | "
                   f"{_cell(row.floor, row.digits)} | {', '.join(parts)} |")
    return "\n".join(out)
