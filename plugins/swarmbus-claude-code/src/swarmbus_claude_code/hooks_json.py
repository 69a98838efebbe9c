"""Add and remove swarmbus's entry in a Claude Code settings file's ``hooks`` lists.

``hooks.<Event>`` in ``~/.claude/settings.json`` is a *list* of matcher groups shared with the
user's own hooks, so a plain "set this key path" change cannot own it: setting the whole list
would overwrite the user's hooks, and undoing it would delete them. Instead swarmbus owns
exactly one hook entry per agent and role, recognised by a marker comment at the end of its
shell command: ``# swarmbus-cc agent=<id>`` for the wake hook (Stop or UserPromptSubmit, by wake
mode) and ``# swarmbus-cc-start agent=<id>`` for the SessionStart hook that starts the daemon:

- ``add`` removes every entry carrying the marker (under any event, so switching wake modes
  moves the hook), then appends one group ``{"hooks": [<entry>]}`` under the event. Running it
  twice gives the same file, so nothing is ever duplicated.
- ``remove`` removes the marked entries and the groups, event lists and ``hooks`` object this
  leaves empty; every other key and hook is kept as it was.

Init runs these as commands (``python -m swarmbus_claude_code.hooks_json add|remove ...``)
so that ``swarmbus uninit`` can replay the removal from its undo record. Standard library
only; writes are atomic.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

EVENTS = ("Stop", "UserPromptSubmit", "SessionStart")
ROLES = ("wake", "start")


def marker_for(agent_id: str, role: str = "wake") -> str:
    """The comment that ends our hook's command: ``wake`` (the wake mode's hook) or ``start``
    (the SessionStart hook that starts the daemon)."""
    if role not in ROLES:
        raise ValueError(f"unknown hook role {role!r}")
    return f"# swarmbus-cc agent={agent_id}" if role == "wake" else f"# swarmbus-cc-start agent={agent_id}"


def _is_ours(entry: Any, marker: str) -> bool:
    return isinstance(entry, dict) and str(entry.get("command", "")).rstrip().endswith(marker)


def load(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    data = json.loads(text) if text.strip() else {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(data, indent=2) + "\n")
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ours(data: dict[str, Any], marker: str) -> dict[str, list[dict[str, Any]]]:
    """Our entries by event: ``{event: [entry, ...]}`` (events without any are left out)."""
    found: dict[str, list[dict[str, Any]]] = {}
    hooks = data.get("hooks")
    if not isinstance(hooks, dict):
        return found
    for event, groups in hooks.items():
        if not isinstance(groups, list):
            continue
        for group in groups:
            entries = group.get("hooks") if isinstance(group, dict) else None
            for entry in entries if isinstance(entries, list) else []:
                if _is_ours(entry, marker):
                    found.setdefault(event, []).append(entry)
    return found


def _strip(data: dict[str, Any], marker: str) -> bool:
    """Remove our entries in place; returns whether anything was removed."""
    hooks = data.get("hooks")
    if not isinstance(hooks, dict):
        return False
    removed = False
    for event in list(hooks):
        groups = hooks[event]
        if not isinstance(groups, list):
            continue
        kept_groups = []
        for group in groups:
            entries = group.get("hooks") if isinstance(group, dict) else None
            if not isinstance(entries, list) or not any(_is_ours(e, marker) for e in entries):
                kept_groups.append(group)
                continue
            removed = True
            rest = [e for e in entries if not _is_ours(e, marker)]
            if rest:
                kept_groups.append({**group, "hooks": rest})
        if kept_groups:
            hooks[event] = kept_groups
        else:
            del hooks[event]
    if not hooks:
        del data["hooks"]
    return removed


def is_installed(path: Path, event: str, entry: dict[str, Any], marker: str) -> bool:
    """True when ``entry`` is our only entry, under ``event`` only."""
    try:
        return ours(load(path), marker) == {event: [entry]}
    except (OSError, ValueError):
        return False


def add(path: Path, event: str, entry: dict[str, Any], marker: str) -> bool:
    """Install ``entry`` as our one entry under ``event``. Returns whether the file changed."""
    if not _is_ours(entry, marker):
        raise ValueError("the hook command must end with the marker")
    data = load(path)
    if ours(data, marker) == {event: [entry]}:
        return False
    _strip(data, marker)
    data.setdefault("hooks", {}).setdefault(event, []).append({"hooks": [entry]})
    _write(path, data)
    return True


def remove(path: Path, marker: str) -> bool:
    """Remove our entries. Returns whether the file changed. A file left empty is deleted."""
    if not path.exists():
        return False
    data = load(path)
    if not _strip(data, marker):
        return False
    if data:
        _write(path, data)
    else:
        path.unlink()
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m swarmbus_claude_code.hooks_json",
                                     description="add or remove swarmbus's hook in a Claude Code settings file")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("add")
    p.add_argument("--settings", required=True, type=Path)
    p.add_argument("--agent-id", required=True)
    p.add_argument("--event", required=True, choices=EVENTS)
    p.add_argument("--hook", required=True, help="the hook entry, as JSON")
    p.add_argument("--role", choices=ROLES, default="wake", help="which of our hooks (default wake)")
    p = sub.add_parser("remove")
    p.add_argument("--settings", required=True, type=Path)
    p.add_argument("--agent-id", required=True)
    p.add_argument("--role", choices=ROLES, default="wake", help="which of our hooks (default wake)")
    args = parser.parse_args(argv)
    marker = marker_for(args.agent_id, args.role)
    try:
        if args.action == "add":
            changed = add(args.settings, args.event, json.loads(args.hook), marker)
            print(f"{'installed' if changed else 'kept'} the swarmbus {args.event} hook in {args.settings}")
        else:
            changed = remove(args.settings, marker)
            print(f"{'removed' if changed else 'found no'} swarmbus hook for {args.agent_id} in {args.settings}")
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
