"""Declarative changes for ``swarmbus init`` and their undo records for ``swarmbus uninit``.

A setup step is a list of *changes*. Each change can say what it would do (``describe``, for
``--dry-run``), whether anything is left to do (``pending``: False means the machine is already
in the wanted state, which is how a second ``init`` changes nothing and says so), do it
(``apply``, raising :class:`ProvisionError` with the reason on failure), and leave an undo
record (plain JSON) that ``uninit`` replays without needing the plugin that planned it.

Kinds: :class:`WriteFile` (atomic write, parents created), :class:`JsonEntry` (set one key path
in a JSON file, keeping the rest), :class:`TomlEntries` (merge keys into a TOML file),
:class:`RunCommand` (argv, never a shell), :class:`Verify` (a check that must pass).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ProvisionError(Exception):
    """A change could not be applied; the message says why (one line)."""


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _home_relative(path: Path) -> str:
    home = Path.home()
    try:
        return "~/" + str(path.relative_to(home))
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class WriteFile:
    """Write ``content`` to ``path`` (mode ``mode``). Undo removes the file if it still holds
    what we wrote; a file the user changed since is left in place, and uninit says so."""

    path: Path
    content: str
    mode: int = 0o644

    def describe(self) -> str:
        return f"write {_home_relative(self.path)} ({len(self.content.encode())} bytes)"

    def pending(self) -> bool:
        try:
            return self.path.read_bytes() != self.content.encode()
        except OSError:
            return True

    def apply(self) -> str:
        try:
            _atomic_write(self.path, self.content.encode(), self.mode)
        except OSError as exc:
            raise ProvisionError(f"cannot write {self.path}: {exc.strerror}") from None
        return f"wrote {_home_relative(self.path)}"

    def undo_record(self) -> dict[str, Any]:
        return {"kind": "file", "path": str(self.path), "sha256": _sha(self.content.encode())}


def _load_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ProvisionError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise ProvisionError(f"{path} is not valid JSON ({exc}); fix or move it, then re-run") from None
    if not isinstance(data, dict):
        raise ProvisionError(f"{path} does not hold a JSON object")
    return data


@dataclass(frozen=True)
class JsonEntry:
    """Set ``keys`` (a path of object keys) to ``value`` in the JSON file ``path``, keeping
    every other key. Undo puts back the value the key had before (or removes the key, and the
    objects and file init created for it once they are empty), unless it was changed since."""

    path: Path
    keys: tuple[str, ...]
    value: Any
    mode: int = 0o600

    def describe(self) -> str:
        return f"set {'.'.join(self.keys)} in {_home_relative(self.path)}"

    def _current(self) -> Any:
        node: Any = _load_json(self.path)
        for key in self.keys:
            if not isinstance(node, dict) or key not in node:
                return _MISSING
            node = node[key]
        return node

    def pending(self) -> bool:
        return bool(self._current() != self.value)

    def apply(self) -> str:
        data = _load_json(self.path)
        node = data
        for key in self.keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        node[self.keys[-1]] = self.value
        try:
            mode = self.path.stat().st_mode & 0o777 if self.path.exists() else self.mode
            _atomic_write(self.path, (json.dumps(data, indent=2) + "\n").encode(), mode)
        except OSError as exc:
            raise ProvisionError(f"cannot write {self.path}: {exc.strerror}") from None
        return f"set {'.'.join(self.keys)} in {_home_relative(self.path)}"

    def undo_record(self) -> dict[str, Any]:
        """Called just before :meth:`apply`: records what was there, to put it back."""
        record: dict[str, Any] = {"kind": "json", "path": str(self.path), "keys": list(self.keys), "value": self.value}
        node: Any = _load_json(self.path)
        if not self.path.exists():
            record["created"] = True
        for depth, key in enumerate(self.keys):
            if not isinstance(node, dict) or key not in node:
                if depth < len(self.keys) - 1:
                    record["new_parents"] = depth  # keys[depth:-1] are objects init creates
                break
            node = node[key]
        else:
            if _jsonable(node):
                record["previous"] = node
        return record


_MISSING = object()


@dataclass(frozen=True)
class TomlEntries:
    """Merge ``values`` (nested dicts) into the TOML file ``path``. The file is edited with
    tomlkit, so the user's comments, key order and layout stay as they were; a new file starts
    with a one-line header comment.

    Undo (see :func:`undo`): when the file still holds exactly what init wrote (its sha256 is in
    the record), it is put back byte for byte as it was before (or removed, when init created
    it). When the user edited it since, only the keys init changed are undone (their earlier
    value, or none; tables init created and left empty go too, unless the user wrote a comment
    in one), and keys changed since are left as the user set them."""

    path: Path
    values: dict[str, Any]
    mode: int = 0o600

    def describe(self) -> str:
        return f"set {', '.join(sorted(_flat(self.values)))} in {_home_relative(self.path)}"

    def _text(self) -> str | None:
        """The file's text, or None when it does not exist."""
        try:
            return self.path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ProvisionError(f"cannot read {self.path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ProvisionError(f"cannot read {self.path}: not UTF-8 text") from None

    def _load(self) -> dict[str, Any]:
        import tomllib

        text = self._text()
        try:
            return tomllib.loads(text) if text is not None else {}
        except tomllib.TOMLDecodeError as exc:
            raise ProvisionError(f"cannot read {self.path}: {exc}") from None

    def render(self, text: str | None) -> str:
        """``text`` (None: a new file) with ``values`` merged in, comments and layout kept.

        :raises ProvisionError: ``text`` is not valid TOML, or a key on the way is not a table.
        """
        import tomlkit
        from tomlkit.exceptions import TOMLKitError

        try:
            doc = tomlkit.parse(text) if text is not None else tomlkit.document()
        except TOMLKitError as exc:
            raise ProvisionError(f"cannot read {self.path}: {exc}") from None
        if text is None:
            doc.add(tomlkit.comment(TOML_HEADER.removeprefix("# ").rstrip("\n")))
        for dotted, value in _flat(self.values).items():
            node: Any = doc
            *parents, leaf = dotted.split(".")
            for depth, parent in enumerate(parents):
                if parent not in node:
                    node[parent] = tomlkit.table()
                node = node[parent]
                if not isinstance(node, dict):
                    where = ".".join(parents[: depth + 1])
                    raise ProvisionError(f"{where} in {self.path} is not a table; fix or move it, then re-run")
            node[leaf] = value
        return tomlkit.dumps(doc)

    def pending(self) -> bool:
        current = _flat(self._load())
        return any(current.get(k, _MISSING) != v for k, v in _flat(self.values).items())

    def apply(self) -> str:
        text = self._text()
        try:
            mode = self.path.stat().st_mode & 0o777 if text is not None else self.mode
            _atomic_write(self.path, self.render(text).encode(), mode)
        except OSError as exc:
            raise ProvisionError(f"cannot write {self.path}: {exc.strerror}") from None
        return f"updated {_home_relative(self.path)}"

    def undo_record(self) -> dict[str, Any]:
        """Called just before :meth:`apply`: records the keys it changes and what they were, the
        tables it creates, the file as it was and the sha256 of what it will write."""
        text = self._text()
        data = self._load()
        current = _flat(data)
        changed = {k: v for k, v in _flat(self.values).items() if current.get(k, _MISSING) != v}
        record: dict[str, Any] = {"kind": "toml", "path": str(self.path), "keys": sorted(changed), "values": changed,
                                  "sha256": _sha(self.render(text).encode())}
        previous = {k: current[k] for k in changed if k in current and _jsonable(current[k])}
        if previous:
            record["previous"] = previous
        tables = sorted({".".join(k.split(".")[:n]) for k in changed for n in range(1, k.count(".") + 1)}
                        - _tables(data))
        if tables:
            record["new_tables"] = tables
        if text is None:
            record["created"] = True
        else:
            record["original"] = text
        return record


TOML_HEADER = "# swarmbus configuration (swarmbus config show explains each value)\n"


def _tables(data: dict[str, Any], prefix: str = "") -> set[str]:
    """The dotted names of every table in ``data``."""
    out: set[str] = set()
    for key, value in data.items():
        if isinstance(value, dict):
            out.add(prefix + key)
            out |= _tables(value, f"{prefix}{key}.")
    return out


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@dataclass(frozen=True)
class RunCommand:
    """Run ``argv`` (never through a shell). ``done`` (optional) tells whether it is needed;
    ``undo`` is the argv uninit runs. A non-zero exit fails the step with its stderr."""

    argv: tuple[str, ...]
    done: Callable[[], bool] | None = None
    undo: tuple[str, ...] | None = None
    timeout: float = 120.0
    env: dict[str, str] | None = None

    def describe(self) -> str:
        return "run " + shlex.join(self.argv)

    def pending(self) -> bool:
        return not (self.done is not None and self.done())

    def apply(self) -> str:
        try:
            proc = subprocess.run(list(self.argv), capture_output=True, text=True, timeout=self.timeout,
                                  env=self.env)
        except FileNotFoundError:
            raise ProvisionError(f"{self.argv[0]} not found") from None
        except subprocess.TimeoutExpired:
            raise ProvisionError(f"{shlex.join(self.argv)} did not finish within {self.timeout:.0f}s") from None
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise ProvisionError(f"{shlex.join(self.argv)} exited {proc.returncode}: {detail[-1] if detail else ''}")
        return "ran " + shlex.join(self.argv)

    def undo_record(self) -> dict[str, Any] | None:
        return {"kind": "command", "argv": list(self.undo)} if self.undo else None


def program_version(program: str, timeout: float = 30.0) -> str:
    """The first line ``PROGRAM --version`` prints (stdin closed), e.g. ``2.1.224 (Claude Code)``:
    what a host type's ``Verify`` step and doctor check show.

    :raises ProvisionError: it cannot run, takes more than ``timeout`` seconds, exits non-zero or
        prints nothing (the message ends with the last line it said).
    """
    try:
        proc = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProvisionError(f"{program} --version failed: {exc}") from None
    lines = [line.strip() for line in (proc.stdout or proc.stderr).splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        said = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        raise ProvisionError(f"{program} --version exited {proc.returncode}: {said[-1].strip() if said else 'no output'}")
    return lines[0]


@dataclass(frozen=True)
class Verify:
    """A check that must pass: ``check()`` returns a one-line result or raises ProvisionError.
    It always runs (it changes nothing, so it never counts as a change)."""

    label: str
    check: Callable[[], str]

    def describe(self) -> str:
        return f"check {self.label}"

    def pending(self) -> bool:
        return False

    def apply(self) -> str:
        return self.check()

    def undo_record(self) -> None:
        return None


Change = WriteFile | JsonEntry | TomlEntries | RunCommand | Verify


@dataclass(frozen=True)
class StepResult:
    name: str
    status: str  # changed | unchanged | would-change | failed
    lines: list[str] = field(default_factory=list)
    undo: list[dict[str, Any]] = field(default_factory=list)


def run_step(name: str, changes: Sequence[Change], *, dry_run: bool,
             on_undo: Callable[[dict[str, Any]], None] | None = None) -> StepResult:
    """Apply (or with ``dry_run`` only describe) one step's changes, in order. Verifies run
    even when nothing else is pending, so a second init still proves the setup works.

    ``on_undo`` is called with each undo record just before its change is applied (so that a
    caller can save it durably first: an init killed half-way can still be undone)."""
    lines: list[str] = []
    undo: list[dict[str, Any]] = []
    changed = False
    for change in changes:
        if isinstance(change, Verify):
            if dry_run:
                lines.append(f"would {change.describe()}")
                continue
            try:
                lines.append(change.apply())
            except ProvisionError as exc:
                return StepResult(name, "failed", [*lines, str(exc)], undo)
            continue
        try:
            pending = change.pending()
        except ProvisionError as exc:
            return StepResult(name, "failed", [*lines, str(exc)], undo)
        if not pending:
            continue  # already as wanted: not init's doing, so nothing for uninit to undo
        if dry_run:
            lines.append(f"would {change.describe()}")
            changed = True
            continue
        try:
            # recorded before applying, so a change that fails half-way is still undone
            record = change.undo_record()
            if record is not None:
                undo.append(record)
                if on_undo is not None:
                    on_undo(record)
            lines.append(change.apply())
        except ProvisionError as exc:
            return StepResult(name, "failed", [*lines, str(exc)], undo)
        changed = True
    if dry_run:
        return StepResult(name, "would-change" if changed else "unchanged", lines, undo)
    return StepResult(name, "changed" if changed else "unchanged", lines, undo)


def undo(record: dict[str, Any]) -> str | None:
    """Replay one undo record. Returns a one-line result, or None when nothing was left. For a
    command that is the last line it printed (e.g. ``removed [mcp_servers.swarmbus] from ...``),
    else ``ran ARGV``; a failing one says ``exit N from ARGV: <its last stderr line>``."""
    kind = record.get("kind")
    path = Path(record.get("path", ""))
    if kind == "file":
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            return None
        if _sha(content) != record.get("sha256"):
            return f"left {_home_relative(path)} in place: it was changed after init wrote it"
        path.unlink()
        return f"removed {_home_relative(path)}"
    if kind == "json":
        return _undo_json(record, path)
    if kind == "toml":
        return _undo_toml(record, path)
    if kind == "command":
        argv = record["argv"]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if proc.returncode == 0:
            return _said(proc.stdout) or f"ran {shlex.join(argv)}"
        said = _said(proc.stderr or proc.stdout, last=True)
        return f"exit {proc.returncode} from {shlex.join(argv)}" + (f": {said}" if said else "")
    return None


def _said(text: str, *, last: bool = False, limit: int = 300) -> str:
    """What a command printed, as one line (its non-blank lines joined by "; ", or with ``last``
    only the last one), at most ``limit`` characters; "" when it printed nothing."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    said = (lines[-1] if last else "; ".join(lines)) if lines else ""
    return said if len(said) <= limit else said[: limit - 3] + "..."


def _undo_json(record: dict[str, Any], path: Path) -> str | None:
    if not path.exists():
        return None
    data = _load_json(path)
    keys = record["keys"]
    where = f"{'.'.join(keys)} in {_home_relative(path)}"
    chain: list[dict[str, Any]] = [data]
    for key in keys[:-1]:
        child = chain[-1].get(key)
        if not isinstance(child, dict):
            return None
        chain.append(child)
    node = chain[-1]
    if keys[-1] not in node:
        return None
    if "value" in record and node[keys[-1]] != record["value"]:
        return f"left {where} in place: it was changed after init wrote it"
    if "previous" in record:
        node[keys[-1]] = record["previous"]
        line = f"restored {where}"
    else:
        del node[keys[-1]]
        line = f"removed {where}"
        # objects init created for this key go too, once empty
        for depth in range(len(keys) - 1, record.get("new_parents", len(keys)), -1):
            if chain[depth]:
                break
            del chain[depth - 1][keys[depth - 1]]
    if record.get("created") and not data:
        path.unlink()
        return f"removed {_home_relative(path)}"
    _atomic_write(path, (json.dumps(data, indent=2) + "\n").encode(), path.stat().st_mode & 0o777)
    return line


def _holds_comments(table: Any) -> bool:
    """Whether a tomlkit table's body has a comment line (which deleting the table would delete)."""
    from tomlkit.items import Comment

    body = getattr(getattr(table, "value", None), "body", [])
    return any(isinstance(item, Comment) for _, item in body)


def _undo_toml(record: dict[str, Any], path: Path) -> str | None:
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        return None
    if record.get("sha256") == _sha(content):  # nobody edited it since: put it back as it was
        if record.get("created"):
            path.unlink()
            return f"removed {_home_relative(path)}"
        if "original" in record:
            _atomic_write(path, str(record["original"]).encode(), path.stat().st_mode & 0o777)
            return f"restored {_home_relative(path)} as it was before init"
    import tomllib

    import tomlkit

    text = content.decode("utf-8")
    data, doc = tomllib.loads(text), tomlkit.parse(text)
    written, previous = record.get("values", {}), record.get("previous", {})
    undone, kept = [], []
    for dotted in record["keys"]:
        *parents, leaf = dotted.split(".")
        plain: Any = data
        node: Any = doc
        for parent in parents:
            plain = plain.get(parent) if isinstance(plain, dict) else None
            node = node.get(parent) if isinstance(node, dict) else None
        if not isinstance(plain, dict) or not isinstance(node, dict) or leaf not in plain:
            continue
        if dotted in written and plain[leaf] != written[dotted]:
            kept.append(dotted)
        elif dotted in previous:
            node[leaf] = previous[dotted]
            undone.append(dotted)
        else:
            del node[leaf]
            undone.append(dotted)
    lines = []
    if undone:
        for table in sorted(record.get("new_tables", []), key=lambda t: -t.count(".")):  # innermost first
            *parents, leaf = table.split(".")
            node = doc
            for parent in parents:
                node = node.get(parent) if isinstance(node, dict) else None
            table = node.get(leaf) if isinstance(node, dict) else None
            if isinstance(table, dict) and not table and not _holds_comments(table):
                del node[leaf]  # (a comment the user wrote in it keeps the empty table, so it is not lost)
        new_text = tomlkit.dumps(doc)
        if record.get("created") and not new_text.replace(TOML_HEADER, "", 1).strip():
            path.unlink()
            lines.append(f"removed {_home_relative(path)}")
        else:
            _atomic_write(path, new_text.encode(), path.stat().st_mode & 0o777)
            lines.append(f"undid {', '.join(undone)} in {_home_relative(path)}")
    if kept:
        lines.append(f"left {', '.join(kept)} in {_home_relative(path)} in place: changed after init wrote them")
    return "; ".join(lines) or None
