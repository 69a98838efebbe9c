"""Strict JSON for what peers publish outside the envelope (job records and events, the task
board's messages, what the dashboard reads): the standard library's parser with the holes a
hostile peer would use closed.

:func:`strict_loads` accepts UTF-8 of at most ``max_bytes`` bytes and refuses duplicate keys,
``NaN``/``Infinity``, integers of more than ``max_int_digits`` digits and nesting deep enough to
exhaust the stack. It raises :class:`StrictJSONError`, whose message says why in a phrase that
reads after a subject ("is not UTF-8 ...", "has the key 'a' twice (a duplicate key)"), so a
caller can prefix what it was reading. (The envelope has its own, faster decoder on the receive
hot path: :mod:`swarmbus.envelope`.)
"""

from __future__ import annotations

import json
from typing import Any

MAX_INT_DIGITS = 20
"""Digits an integer may have: more than any 64-bit value, far fewer than a denial of service."""


class StrictJSONError(ValueError):
    """The text is not acceptable JSON; the message says why (one line)."""


def _no_constant(name: str) -> Any:
    raise StrictJSONError(f"contains {name}, which is not JSON (only finite numbers are)")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise StrictJSONError(f"has the key {key[:40]!r} twice (a duplicate key)")
            seen.add(key)
    return obj


def _decoder(max_int_digits: int) -> json.JSONDecoder:
    def parse_int(digits: str) -> int:
        if len(digits.lstrip("-")) > max_int_digits:
            raise StrictJSONError(f"has an integer of {len(digits)} characters; at most {max_int_digits} digits")
        return int(digits)

    return json.JSONDecoder(object_pairs_hook=_unique, parse_int=parse_int, parse_constant=_no_constant)


_DEFAULT = _decoder(MAX_INT_DIGITS)


def strict_loads(data: bytes | bytearray | str, *, max_bytes: int, max_int_digits: int = MAX_INT_DIGITS) -> Any:
    """The JSON value in ``data`` (UTF-8 bytes, or text counted as its UTF-8 length).

    :raises StrictJSONError: more than ``max_bytes`` bytes, not UTF-8, not JSON, a duplicate key,
        NaN or Infinity, an integer longer than ``max_int_digits``, or nesting too deep.
    """
    if isinstance(data, bytes | bytearray):
        if len(data) > max_bytes:
            raise StrictJSONError(f"is {len(data)} bytes, too large: the limit is {max_bytes}")
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StrictJSONError(f"is not UTF-8 (invalid byte at offset {exc.start})") from None
    elif isinstance(data, str):
        text = data
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            raise StrictJSONError(f"is {size} bytes, too large: the limit is {max_bytes}")
    else:
        raise StrictJSONError(f"is {type(data).__name__}, not text")
    decoder = _DEFAULT if max_int_digits == MAX_INT_DIGITS else _decoder(max_int_digits)
    try:
        return decoder.decode(text)
    except StrictJSONError:
        raise
    except json.JSONDecodeError as exc:
        raise StrictJSONError(f"is not JSON: {exc.msg} at offset {exc.pos}") from None
    except RecursionError:
        raise StrictJSONError("is nested too deeply") from None
    except ValueError as exc:  # anything else json refuses
        raise StrictJSONError(f"is not acceptable JSON: {str(exc)[:120]}") from None
