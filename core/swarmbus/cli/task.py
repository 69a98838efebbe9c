"""``swarmbus task``: placeholder until it is built (issue 13)."""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    """Add this command's description and arguments to p."""
    p.description = "not built yet"


def run(args: argparse.Namespace) -> int:
    """Run the command; returns the exit code."""
    raise SystemExit("swarmbus task: not built yet")
