"""Can the registered MCP server start? Which Python runs it, and can that Python import the
packages ``swarmbus mcp-server`` needs (``swarmbus`` and the ``mcp`` SDK, the ``swarmbus[mcp]``
extra)?

The entry ``init`` registers runs ``<python> -m swarmbus mcp-server``; one added by hand may run
the ``swarmbus`` console script instead, whose interpreter is on its ``#!`` line. The check only
looks the packages up (``importlib.util.find_spec``): it never imports the SDK, which is slow.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

NEEDED = ("swarmbus", "mcp")
_PROBE = f"import importlib.util as u; print(' '.join(m for m in {NEEDED!r} if u.find_spec(m) is None))"


def interpreter(entry: Any) -> str | None:
    """The Python that runs the MCP server of ``entry`` (an ``mcpServers`` item), or None when
    that cannot be told (not a Python command, or a script without a usable ``#!`` line)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("command"), str):
        return None
    command: str = entry["command"]
    args = entry.get("args")
    if isinstance(args, list) and args[:2] == ["-m", "swarmbus"]:
        return command
    if Path(command).name != "swarmbus":
        return None
    script = shutil.which(command)
    return None if script is None else _shebang_interpreter(Path(script))


def _shebang_interpreter(script: Path) -> str | None:
    try:
        with script.open("rb") as f:
            first = f.readline(1024)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    if words and Path(words[0]).name == "env":  # #!/usr/bin/env [-S] python3
        words = [w for w in words[1:] if not w.startswith("-")]
        return shutil.which(words[0]) if words else None
    return words[0] if words else None


def missing_packages(python: str) -> list[str]:
    """The packages in :data:`NEEDED` that ``python`` cannot import.

    :raises OSError: ``python`` cannot be run (absent, not executable) or did not answer.
    """
    if os.path.abspath(python) == os.path.abspath(sys.executable):  # not realpath: a venv's python is a symlink
        return [m for m in NEEDED if importlib.util.find_spec(m) is None]
    try:
        proc = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise OSError(f"{python} did not answer within 30 s") from exc
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise OSError(f"{python} failed (exit {proc.returncode}): {last}")
    return proc.stdout.split()
