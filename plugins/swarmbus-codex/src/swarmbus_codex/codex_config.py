"""Register (and unregister) an MCP server in Codex's ``config.toml``, keeping the user's file.

Codex reads MCP servers from ``[mcp_servers.<name>]`` tables (``command``, ``args``, ``env``) in
``$CODEX_HOME/config.toml``. ``swarmbus init`` adds ours through :func:`add`, and ``swarmbus
uninit`` takes it out through :func:`remove`; both run as ``python -m swarmbus_codex.codex_config
add|remove ...`` (a ``swarmbus.RunCommand`` and its undo argv, the only undoable change of the
public API that can edit a TOML file this way).

- A new entry is appended at the end of the file, as the text ``codex mcp add`` writes (a
  ``[mcp_servers.<name>]`` table and its ``[mcp_servers.<name>.env]``), after one blank line.
  Nothing else in the file is touched: comments, order and layout stay byte for byte.
- An entry that exists (another agent id, another Python) is edited in place with tomlkit: only
  ``command``, ``args`` and our ``env`` keys change; keys the user added (``startup_timeout_sec``,
  ``enabled``, other ``env`` variables) stay.
- :func:`remove` undoes exactly that: when the file still ends with the block it appended, the
  block (and the blank line before it) is cut off, so the file is what it was, byte for byte (and
  a file init created is removed again). When the user edited the file since, only our keys are
  taken out (or put back to their earlier values), and only where they still hold what init
  wrote; a table left empty goes too.

The user's text is never copied anywhere (not into argv, not into swarmbus' init manifest):
Codex's config can hold other MCP servers' tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

TABLE = "mcp_servers"


class ConfigError(Exception):
    """Codex's config.toml cannot be read or edited; the message says why (one line)."""


# -- reading ---------------------------------------------------------------------------------------
def read_text(path: Path) -> str | None:
    """The file's text, or None when it does not exist."""
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read {path}: not UTF-8 text") from None


def parse(path: Path, text: str | None) -> dict[str, Any]:
    try:
        return tomllib.loads(text) if text is not None else {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); fix it, then re-run") from None


def current_entry(path: Path, name: str) -> dict[str, Any] | None:
    """``[mcp_servers.<name>]`` as plain data, or None (no file, no entry, or unreadable)."""
    try:
        data = parse(path, read_text(path))
    except ConfigError:
        return None
    servers = data.get(TABLE)
    entry = servers.get(name) if isinstance(servers, dict) else None
    return entry if isinstance(entry, dict) else None


def flat(entry: dict[str, Any]) -> dict[str, Any]:
    """Our keys of an entry: ``command``, ``args`` and ``env.<VAR>``."""
    out: dict[str, Any] = {k: entry[k] for k in ("command", "args") if k in entry}
    env = entry.get("env")
    if isinstance(env, dict):
        out.update({f"env.{k}": v for k, v in env.items()})
    return out


def matches(path: Path, name: str, entry: dict[str, Any]) -> bool:
    """Whether the registered entry has every key of ``entry`` with the same value."""
    found = current_entry(path, name)
    if found is None:
        return False
    have = flat(found)
    return all(have.get(k, _MISSING) == v for k, v in flat(entry).items())


_MISSING = object()


# -- rendering -------------------------------------------------------------------------------------
def table_text(name: str, entry: dict[str, Any]) -> str:
    """The TOML of a new entry, as ``codex mcp add`` writes it."""
    import tomlkit

    doc = tomlkit.document()
    servers = tomlkit.table(is_super_table=True)
    table = tomlkit.table()
    table.add("command", entry["command"])
    table.add("args", list(entry.get("args", [])))
    if entry.get("env"):
        env = tomlkit.table()
        for key, value in entry["env"].items():
            env.add(key, value)
        table.add("env", env)
    servers.add(name, table)
    doc.add(TABLE, servers)
    return tomlkit.dumps(doc).lstrip("\n")


def separator(text: str | None) -> str:
    """What goes between the existing text and an appended table: nothing for an empty file,
    else enough newlines for the text to end with one blank line."""
    if text is None or not text.strip():
        return ""
    if text.endswith("\n\n"):
        return ""
    return "\n" if text.endswith("\n") else "\n\n"


def render(path: Path, text: str | None, name: str, entry: dict[str, Any]) -> str:
    """``text`` with ``entry`` registered as ``[mcp_servers.<name>]``.

    :raises ConfigError: ``text`` is not valid TOML, or ``mcp_servers`` is not a table there.
    """
    data = parse(path, text)
    servers = data.get(TABLE)
    if servers is not None and not isinstance(servers, dict):
        raise ConfigError(f"{TABLE} in {path} is not a table; fix it, then re-run")
    if servers is None or name not in servers:
        new = (text or "") + separator(text) + table_text(name, entry)
    else:
        new = _merge(text or "", name, entry)
    try:
        check = tomllib.loads(new).get(TABLE, {}).get(name)
    except tomllib.TOMLDecodeError:
        check = None
    if not isinstance(check, dict) or any(flat(check).get(k, _MISSING) != v for k, v in flat(entry).items()):
        raise ConfigError(f"cannot add [{TABLE}.{name}] to {path} as a table (is {TABLE} written as an inline "
                          f"table or with dotted keys there?); add it by hand or with `codex mcp add {name}`")
    return new


def _merge(text: str, name: str, entry: dict[str, Any]) -> str:
    import tomlkit

    doc = tomlkit.parse(text)
    table: Any = doc[TABLE][name]
    table["command"] = entry["command"]
    table["args"] = list(entry.get("args", []))
    if entry.get("env"):
        if "env" not in table:
            table["env"] = tomlkit.table()
        for key, value in entry["env"].items():
            table["env"][key] = value
    return tomlkit.dumps(doc)


# -- writing ---------------------------------------------------------------------------------------
def _write(path: Path, text: str, *, new_mode: int = 0o600) -> None:
    """Atomic write; through a symlink (a dotfiles checkout) to its target; keeps the mode."""
    target = path.resolve() if path.is_symlink() else path
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = target.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = new_mode
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add(path: Path, name: str, entry: dict[str, Any]) -> str:
    text = read_text(path)
    try:
        _write(path, render(path, text, name, entry))
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    return f"registered MCP server {name!r} in {path}"


def remove(path: Path, name: str, entry: dict[str, Any], *, appended: int | None = None, created: bool = False,
           previous: dict[str, Any] | None = None) -> str:
    """Undo :func:`add` (see the module docstring). ``appended``: the newlines put before an
    appended table (None: it was not appended); ``created``: the file did not exist;
    ``previous``: the entry that was there before (its values are put back)."""
    text = read_text(path)
    if text is None:
        return f"{path} is gone: nothing to undo"
    block = table_text(name, entry)
    if appended is not None and text.endswith(block) and text[: len(text) - len(block)].endswith("\n" * appended):
        head = text[: len(text) - len(block) - appended]
        if created and not head:
            path.unlink()
            return f"removed {path} (init created it)"
        _write(path, head)
        return f"removed [{TABLE}.{name}] from {path}: the file is as it was before init"
    return _remove_keys(path, text, name, entry, previous)


def _remove_keys(path: Path, text: str, name: str, entry: dict[str, Any], previous: dict[str, Any] | None) -> str:
    import tomlkit

    try:
        doc = tomlkit.parse(text)
    except Exception as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); [{TABLE}.{name}] left in place") from None
    servers: Any = doc.get(TABLE)
    table: Any = servers.get(name) if isinstance(servers, dict) else None
    if not isinstance(table, dict):
        return f"[{TABLE}.{name}] is no longer in {path}: nothing to undo"
    have = flat(tomllib.loads(text)[TABLE][name])
    before = flat(previous or {})
    undone, kept = [], []
    for key, value in flat(entry).items():
        if key not in have:
            continue
        if have[key] != value:
            kept.append(key)
            continue
        node, leaf = (table["env"], key[4:]) if key.startswith("env.") else (table, key)
        if key in before:
            node[leaf] = before[key]
        else:
            del node[leaf]
        undone.append(key)
    if "env" in table and not table["env"] and "env" not in (previous or {}):
        del table["env"]
    if not table and previous is None:
        del servers[name]
    if not servers:
        del doc[TABLE]
    if undone:
        new = tomlkit.dumps(doc)
        _write(path, new.rstrip("\n") + "\n" if new.strip() else "")
    line = f"undid {', '.join(undone)} of [{TABLE}.{name}] in {path}" if undone else ""
    if kept:
        line += ("; " if line else "") + f"left {', '.join(kept)} in place: changed after init wrote them"
    return line or f"[{TABLE}.{name}] in {path}: nothing to undo"


# -- planning (in the init process) ----------------------------------------------------------------
def undo_args(path: Path, name: str, entry: dict[str, Any]) -> list[str]:
    """The ``remove`` arguments that undo ``add`` of ``entry`` to the file as it is now."""
    args = ["--entry", json.dumps(entry, sort_keys=True)]
    try:
        text = read_text(path)
        data = parse(path, text)
    except ConfigError:
        return args  # the add fails with the reason; nothing was written to undo
    servers = data.get(TABLE)
    existing = servers.get(name) if isinstance(servers, dict) else None
    if isinstance(existing, dict):
        return [*args, "--previous", json.dumps({k: v for k, v in existing.items() if k in ("command", "args", "env")},
                                                sort_keys=True)]
    args += ["--appended", str(len(separator(text)))]
    if text is None:
        args.append("--created")
    return args


# -- the command line (run by RunCommand) ----------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m swarmbus_codex.codex_config",
                                     description="add or remove an MCP server entry in Codex's config.toml")
    parser.add_argument("action", choices=("add", "remove"))
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--entry", required=True, help="the entry as JSON: command, args, env")
    parser.add_argument("--appended", type=int, help="remove: newlines added before the appended table")
    parser.add_argument("--created", action="store_true", help="remove: init created the file")
    parser.add_argument("--previous", help="remove: the entry before init, as JSON")
    args = parser.parse_args(argv)
    entry = json.loads(args.entry)
    try:
        if args.action == "add":
            print(add(args.config, args.name, entry))
        else:
            previous = json.loads(args.previous) if args.previous else None
            print(remove(args.config, args.name, entry, appended=args.appended, created=args.created,
                         previous=previous))
    except ConfigError as exc:
        print(f"swarmbus-codex: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
