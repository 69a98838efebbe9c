"""``swarmbus doctor``: run core and plugin checks; print a fix for each failure."""

from __future__ import annotations

import argparse

from swarmbus.api import CheckResult, DoctorContext
from swarmbus.cli.common import load_settings_for, print_json
from swarmbus.cli.output import paint, pick_marks

MARKS = {"ok": "✓", "warn": "⚠", "fail": "✗", "skip": "·"}
ASCII_MARKS = {"ok": "+", "warn": "!", "fail": "x", "skip": "-"}  # where stdout cannot encode MARKS
COLORS = {"ok": "green", "warn": "yellow", "fail": "red", "skip": None}


def run(args: argparse.Namespace) -> int:
    from swarmbus.plugins import HookRelay, get_plugin_manager

    pm = get_plugin_manager()
    settings = load_settings_for(args, pm=pm)
    context = DoctorContext(settings=settings, agent_id=settings.agent_id, cache={"plugin_infos": pm.infos})
    results: list[tuple[str, CheckResult]] = []
    marks = pick_marks(MARKS, ASCII_MARKS)
    for check in HookRelay(pm).doctor_checks(settings):
        try:
            result = check.run(context)
        except Exception as exc:
            result = CheckResult("fail", f"check crashed: {type(exc).__name__}: {exc}", fix="report this plugin bug")
        results.append((check.name, result))
        if not args.json:
            print(f"[{paint(marks[result.status], COLORS[result.status])}] {check.name}: {result.summary}")
            if result.fix and result.status in ("fail", "warn"):
                print(f"      fix: {result.fix}")
    failed = sum(1 for _, r in results if r.status == "fail")
    warned = sum(1 for _, r in results if r.status == "warn")
    if args.json:
        print_json({
            "ok": failed == 0,
            "checks": [{"name": n, "status": r.status, "summary": r.summary, "fix": r.fix, "details": dict(r.details)}
                       for n, r in results],
        })
    else:
        print(f"{len(results)} checks: {failed} failed, {warned} warnings")
    return 1 if failed else 0
