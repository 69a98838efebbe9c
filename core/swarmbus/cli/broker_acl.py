"""``swarmbus broker acl``: flags -> :func:`swarmbus.broker_acl.apply` -> a summary (or ``--json``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from swarmbus.broker_acl import Outcome, Request, apply
from swarmbus.cli.common import print_json


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def request_from(args: argparse.Namespace) -> Request:
    """The :class:`~swarmbus.broker_acl.Request` the flags ask for."""
    return Request(
        agents=tuple(args.agents or ()),
        observers=tuple(args.observer or ()),
        rotate=tuple(args.rotate or ()),
        remove=tuple(args.remove or ()),
        verified=args.verified,
        broker_url=args.broker_url,
        ca_cert=_path(args.ca_cert),
        server_cert=_path(args.server_cert),
        server_key=_path(args.server_key),
        server_ca=_path(args.server_ca),
    )


def _relative(outcome: Outcome, path: Path) -> str:
    try:
        return str(path.relative_to(outcome.directory))
    except ValueError:
        return str(path)


def summary(outcome: Outcome) -> list[str]:
    """The lines printed for a person (never a password)."""
    if not outcome.changed:
        lines = [f"{outcome.directory}: nothing to change"]
        if outcome.unchanged:
            lines.append(f"  unchanged: {', '.join(outcome.unchanged)}")
        if outcome.absent:
            lines.append(f"  not there (nothing to remove): {', '.join(outcome.absent)}")
        return lines
    lines = [f"{outcome.directory}:"]
    if outcome.added:
        lines.append("  added:     " + ", ".join(f"{pid} ({role})" for pid, role in outcome.added.items()))
    if outcome.rotated:
        lines.append("  rotated:   " + ", ".join(pid if why == "asked" else f"{pid} ({why}: new password)"
                                                 for pid, why in outcome.rotated.items()))
    if outcome.removed:
        lines.append(f"  removed:   {', '.join(outcome.removed)}")
    if outcome.absent:
        lines.append(f"  not there (nothing to remove): {', '.join(outcome.absent)}")
    if outcome.unchanged:
        lines.append(f"  unchanged: {', '.join(outcome.unchanged)}")
    lines.append(f"  wrote:     {', '.join(_relative(outcome, p) for p in outcome.written)}")
    if outcome.added or outcome.rotated:
        lines.append("  give each new or rotated principal its agents/<id>/password and agents/<id>/swarmbus.toml "
                     "(adjust password_file there)")
    if outcome.reload:
        lines.append("  reload the broker: kill -HUP <mosquitto pid> (it rereads password_file and acl_file), "
                     f"or restart `swarmbus broker --secure {outcome.directory}`")
    return lines


def run(args: argparse.Namespace) -> int:
    outcome = apply(Path(args.dir), request_from(args))
    if args.json:
        print_json(outcome.to_json())
    else:
        print("\n".join(summary(outcome)))
    return 0
