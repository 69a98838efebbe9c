"""The markdown inbox/outbox archive format (the predecessor's, made injection-proof).

Each entry is, header byte for byte as swarmbus-py 0.2.0 writes it (so file-polling agents and
``grep '^## \\['`` keep working)::

    \\n## [<ts as %Y-%m-%d %H:%M>] From: <from> | <subject>\\n<!-- swarmbus {json} -->\\n<body>\\n

(``To: <to>`` instead of ``From: <from>`` in an outbox). The metadata the predecessor lost (id,
from, to, priority, content_type, and reply_to / in_reply_to when set) goes in the one HTML
comment line right after the header, which markdown renderers hide. Its JSON is ASCII (``\\uXXXX``
escapes) with every ``--`` broken up, so no field can close the comment early.

**No line looks like an entry header unless it is one**, however a reader splits lines: at
``\\n`` only, at ``\\r\\n``/``\\r``/``\\n``, or as ``str.splitlines()`` does (which also splits at
``\\x0b \\x0c \\x1c \\x1d \\x1e \\x85 \\u2028 \\u2029``). A *line start* is the start of the
body or any position right after one of those characters. A body line is *forgeable* when, from
a line start, after any run of ignorable characters (whitespace other than ``\\n``, C0/C1
control characters, invisible format characters such as ZWSP or BOM) and backslashes, it
continues with one or more ``#``, optional ignorable characters and ``[`` (an entry header to a
lenient reader), or with ``<!--`` (a metadata line, or an HTML comment that would hide the
following entries in a renderer). :func:`escape_body` puts one backslash at every forgeable
line start, so the line starts with ``\\`` for every reader; :func:`unescape_body` removes
exactly those backslashes (``unescape_body(escape_body(b)) == b`` for every string).

The subject cannot hold control characters (the envelope refuses them); the line and paragraph
separators ``\\u2028``/``\\u2029`` it may hold become spaces in the header, and the metadata
line then carries the exact subject as ``"subject"``.

Escaping is linear in the body's length whatever its content. It is about lines: a renderer
can still be confused by markdown that spans lines (an unclosed code fence, for one), which the
archive does not rewrite.

:func:`archived_ids` reads the ids of the last entries back from the end of a file, so a
writer can stay idempotent per message id after a crash.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from swarmbus.envelope import Envelope, parse_timestamp

TYPE_CHECKING = False  # not from typing: ``swarmbus send`` imports this module on its fast path

if TYPE_CHECKING:
    from typing import BinaryIO

# every character str.splitlines() ends a line at (split("\n") and "\r\n|\r|\n" use subsets)
LINE_BOUNDARIES = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_SUBJECT_SAFE = str.maketrans(dict.fromkeys(LINE_BOUNDARIES, " "))

# What a lenient reader may skip, or not see, before "#": whitespace other than "\n" (every
# reader splits there), C0/C1 controls (which include the other line boundaries), and invisible
# characters (format controls, zero-width and bidi marks, fillers, variation selectors, tags).
_IGN = (
    r"\x00-\x09\x0b-\x20\x7f-\xa0\xad\u034f\u061c\u115f\u1160\u1680\u180e\u2000-\u200f\u2028-\u202f"
    r"\u205f-\u2064\u2066-\u206f\u3000\u3164\ufe00-\ufe0f\ufeff\uffa0\U000e0000-\U000e0fff"
)
_compiled: list[re.Pattern[str]] = []

_HEADER_PREFIX = b"## ["
_LONG_LINE = 65_536  # bytes; header and metadata lines are at most ~10 KB
_META_LINE = re.compile(rb"<!-- swarmbus (\{[^\n]*\}) -->")


def _patterns() -> list[re.Pattern[str]]:
    """[a run of ignorable characters and backslashes, a trigger], compiled on first use:
    compiling them costs ``swarmbus send`` (which imports this module) a few milliseconds."""
    if not _compiled:
        _compiled[:] = [re.compile(rf"[{_IGN}\\]*+"), re.compile(rf"#++[{_IGN}]*+\[|<!--")]
    return _compiled


def _forgeable(text: str, lines: list[str]) -> list[int]:
    r"""Indices of the forgeable lines in ``lines = text.splitlines(keepends=True)``.

    Every line start of every reader is the start of one of these lines (the position between
    ``\r`` and ``\n`` is one too, but it starts an empty line). A run of ignorable characters
    may cross line boundaries other than ``\n``, so lines are looked at from the last one up:
    a line made only of run characters (its terminator included) is forgeable when the next
    line is; the trigger is matched in ``text`` itself, as ``##\r[`` is one line to a reader
    that splits at ``\n`` only. Linear in ``len(text)``: each run and trigger is scanned once.
    """
    run, trigger = _patterns()
    found: list[int] = []
    next_forgeable = False
    offset = len(text)
    for index in range(len(lines) - 1, -1, -1):
        line = lines[index]
        offset -= len(line)
        first = line[0]
        if first.isascii() and first > " " and first not in "#<\\\x7f":  # the common case
            forgeable = False
        else:
            end = run.match(line).end()  # type: ignore[union-attr]  # "*+" always matches
            # a run that fills the line goes on into the next one; else the trigger decides
            forgeable = next_forgeable if end == len(line) else trigger.match(text, offset + end) is not None
            if forgeable:
                found.append(index)
        next_forgeable = forgeable
    return found


def escape_body(body: str) -> str:
    """Put a backslash at the start of every forgeable line (see the module docstring)."""
    if "#" not in body and ("<" not in body or "<!--" not in body):  # one-character scans are memchr-fast
        return body
    lines = body.splitlines(keepends=True)
    for index in _forgeable(body, lines):
        lines[index] = "\\" + lines[index]
    return "".join(lines)


def unescape_body(text: str) -> str:
    """Inverse of :func:`escape_body`: ``unescape_body(escape_body(b)) == b`` for every ``b``.

    An escaped line is still forgeable (a backslash is a run character), so the same lines are
    found again and lose their first backslash.
    """
    if "#" not in text and ("<" not in text or "<!--" not in text):
        return text
    lines = text.splitlines(keepends=True)
    for index in _forgeable(text, lines):
        if lines[index][0] == "\\":
            lines[index] = lines[index][1:]
    return "".join(lines)


def format_entry(envelope: Envelope, *, direction: str = "in") -> str:
    """One archive entry (a ``str`` starting and ending with ``\\n``). ``direction`` is ``in``
    (``From: <from>``) or ``out`` (``To: <to>``). Never raises for a valid envelope."""
    try:
        when = parse_timestamp(envelope.ts).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        when = envelope.ts[:16].translate(_SUBJECT_SAFE)
    who = f"From: {envelope.from_agent}" if direction == "in" else f"To: {envelope.to}"
    subject = envelope.subject.translate(_SUBJECT_SAFE)
    meta = {
        "id": envelope.id,
        "from": envelope.from_agent,
        "to": envelope.to,
        "priority": envelope.priority,
        "content_type": envelope.content_type,
    }
    if envelope.reply_to:
        meta["reply_to"] = envelope.reply_to
    if envelope.in_reply_to:
        meta["in_reply_to"] = envelope.in_reply_to
    if subject != envelope.subject:
        meta["subject"] = envelope.subject
    meta_line = "<!-- swarmbus " + json.dumps(meta).replace("--", "-\\u002d") + " -->"
    return f"\n## [{when}] {who} | {subject}\n{meta_line}\n{escape_body(envelope.body)}\n"


def append_entry(path: Path, text: str) -> None:
    """Append one entry, in a single ``write()`` unless the kernel writes less (parents
    created, file mode 0600). Raises OSError; an entry torn by a failure part-way is left out
    by :func:`archived_ids`."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    try:
        fd = os.open(path, flags, 0o600)
    except FileNotFoundError:  # the first entry: make the directories (not on every append)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, flags, 0o600)
    try:
        data = memoryview(text.encode("utf-8"))
        while data:  # a short write (a signal, a full disk) leaves the rest: write it too
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


def archived_ids(path: Path | str, max_entries: int, *, chunk_size: int = 65_536) -> set[str]:
    """The message ids of the last ``max_entries`` entries of the archive at ``path``.

    Reads backwards from the end in ``chunk_size``-byte chunks and stops once it has seen
    ``max_entries`` entry headers, so the cost depends on those entries, not on the file's size.
    An entry is a ``## [`` header line; its id comes from the metadata line right after it
    (entries without one, such as the predecessor's, count but add no id; a line over 64 KiB is
    never a header). A missing file gives
    an empty set. A torn write at the end (the file does not end with ``\\n``, as every entry
    does) leaves its entry out: it neither counts nor adds its id, so it is appended again. (A
    write torn right after a ``\\n`` cannot be told from a complete entry: its entry counts, and
    has an id when its metadata line is complete.) Raises OSError when the file exists but
    cannot be read.
    """
    if max_entries <= 0:
        return set()
    try:
        with open(path, "rb") as fh:
            return _scan_back(fh, max_entries, max(1, chunk_size))
    except FileNotFoundError:
        return set()


def _scan_back(fh: BinaryIO, max_entries: int, chunk_size: int) -> set[str]:
    ids: set[str] = set()
    pos = fh.seek(0, os.SEEK_END)
    if pos == 0:
        return ids
    fh.seek(pos - 1)
    torn = fh.read(1) != b"\n"  # the last entry's write did not finish: skip its header
    entries = 0
    pending: str | None = None  # the id on the line after the one being looked at
    carry = b""  # the end of a line whose start lies before the next chunk
    carry_long = False  # that line is over _LONG_LINE bytes (so, text): its bytes were dropped
    first_line = True  # the next line looked at is the file's last one
    while True:
        step = min(chunk_size, pos)
        pos -= step
        fh.seek(pos)
        parts = (fh.read(step) + carry).split(b"\n")
        if len(parts) == 1 and pos > 0:  # still inside the same line
            carry = parts[0]
            if len(carry) > _LONG_LINE:
                carry, carry_long = b"", True
            continue
        complete = parts if pos == 0 else parts[1:]  # the last one ends where carry ended
        last = len(complete) - 1
        for index in range(last, -1, -1):
            line = complete[index]
            if (index == last and carry_long) or len(line) > _LONG_LINE:
                pending = None  # too long for a header or a metadata line: text
            elif torn and first_line:  # the unfinished last line of a torn write
                if line.startswith(_HEADER_PREFIX) or _HEADER_PREFIX.startswith(line):
                    torn = False  # torn inside its header: the entry never had one, skip nothing
                pending = None
            elif line.startswith(_HEADER_PREFIX):
                if torn:
                    torn = False
                else:
                    entries += 1
                    if pending is not None:
                        ids.add(pending)
                    if entries >= max_entries:
                        return ids
                pending = None
            else:
                pending = _meta_id(line)
            first_line = False
        if pos == 0:
            return ids
        carry, carry_long = parts[0], False
        if len(carry) > _LONG_LINE:
            carry, carry_long = b"", True


def _meta_id(line: bytes) -> str | None:
    match = _META_LINE.fullmatch(line)
    if match is None:
        return None
    try:
        meta = json.loads(match.group(1))
    except (ValueError, RecursionError):  # not one we wrote: no id
        return None
    value = meta.get("id") if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


def outbox_path(agent_id: str, flag: str | None, env: dict[str, str] | os._Environ[str], configured: str | None) -> Path | None:
    """Resolve the outbox archive path: ``--outbox`` > ``SWARMBUS_OUTBOX_<UPPER_ID>`` >
    ``SWARMBUS_OUTBOX`` > the config file's ``outbox`` > none. ``{agent_id}`` is expanded;
    ``-`` in the id becomes ``_`` in the variable name (``coder-beta`` ->
    ``SWARMBUS_OUTBOX_CODER_BETA``)."""
    per_agent = env.get("SWARMBUS_OUTBOX_" + agent_id.upper().replace("-", "_"))
    value = flag or per_agent or env.get("SWARMBUS_OUTBOX") or configured
    if not value:
        return None
    return Path(value.replace("{agent_id}", agent_id)).expanduser()
