"""Small JSON state files a plugin keeps in an agent's state dir (its last wake, its thread).

- :func:`write_json_file`: write a JSON object atomically (a temporary file in the same
  directory, then ``os.replace``), mode 0600, parents created mode 0700. A reader never sees a
  half-written file, and another user never reads it.
- :func:`read_json_file`: the object back, or None when the file is absent, unreadable, not
  JSON, or not an object: a state file is a cache of what a plugin learnt, never a reason to fail.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any


def write_json_file(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON to ``path`` (mode 0600), atomically.

    :raises OSError: the directory cannot be made or the file written (a full disk, say); the
        old file, if any, is then left as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def read_json_file(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None (absent, unreadable, not JSON, not an object)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
