"""How the CLI prints for a person: marks that degrade to ASCII, and colour only when wanted.

- Marks such as ``✓`` and ``✗`` are printed only when the stream's encoding can encode them;
  under ``PYTHONIOENCODING=ascii`` or a Latin-1 locale their ASCII fallbacks are printed instead.
- Colour (ANSI escape codes) only on a terminal, never when ``NO_COLOR`` is set to a non-empty
  value (https://no-color.org) or ``TERM=dumb``: output to a pipe or a file has no escape codes.

Machine-readable output (``--json``) never goes through here.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not from typing: importing typing costs ~4 ms
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import TextIO

_SGR = {"bold": "1", "red": "31", "green": "32", "yellow": "33"}


def can_encode(text: str, stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default: stdout) can write ``text`` without an encoding error."""
    stream = sys.stdout if stream is None else stream
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def pick_marks(fancy: Mapping[str, str], plain: Mapping[str, str], stream: TextIO | None = None) -> Mapping[str, str]:
    """``fancy`` when ``stream`` (default: stdout) can encode every one of its marks, else
    ``plain`` (the ASCII fallbacks, same keys)."""
    return fancy if can_encode("".join(fancy.values()), stream) else plain


def color_enabled(stream: TextIO | None = None) -> bool:
    """Whether to colour what goes to ``stream`` (default: stdout): a terminal, ``NO_COLOR``
    unset or empty, and ``TERM`` not ``dumb``."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def paint(text: str, color: str | None, stream: TextIO | None = None) -> str:
    """``text`` in ``color`` (bold, red, green, yellow) when :func:`color_enabled`, else as is."""
    if color is None or not color_enabled(stream):
        return text
    return f"\033[{_SGR[color]}m{text}\033[0m"
