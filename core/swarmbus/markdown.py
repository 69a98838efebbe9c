"""The markdown inbox/outbox archive format (the predecessor's, made injection-proof).

Each entry is, byte for byte as swarmbus-py 0.2.0 writes it (so file-polling agents and
``grep '^## \\['`` keep working)::

    \\n## [<ts as %Y-%m-%d %H:%M>] From: <from> | <subject>\\n<body>\\n

followed, in our version, by nothing else: the metadata the predecessor lost (id, priority,
reply_to, in_reply_to, content_type) goes in one HTML comment line right after the header,
which markdown renderers hide. Bodies are escaped so that no body line can forge a header:
a line that starts with ``## [`` or ``<!-- swarmbus`` (after any backslashes) gets one more
leading backslash. Subjects cannot contain newlines (the envelope refuses control characters).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from swarmbus.envelope import Envelope, parse_timestamp

# a "line start" is after \n or after a lone \r (which some editors also show as a line break)
_FORGEABLE = re.compile(r"(?:^|(?<=\r))(\\*)(## \[|<!-- swarmbus)", re.MULTILINE)


def escape_body(body: str) -> str:
    """Escape every line that could be read as an entry header or metadata line."""
    return _FORGEABLE.sub(lambda m: "\\" + m.group(1) + m.group(2), body)


def unescape_body(text: str) -> str:
    """Inverse of :func:`escape_body`."""
    return re.sub(r"(?:^|(?<=\r))\\(\\*)(## \[|<!-- swarmbus)", r"\1\2", text, flags=re.MULTILINE)


def format_entry(envelope: Envelope, *, direction: str = "in") -> str:
    """One archive entry. ``direction`` is ``in`` (``From: <from>``) or ``out`` (``To: <to>``)."""
    try:
        when = parse_timestamp(envelope.ts).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        when = envelope.ts[:16]
    who = f"From: {envelope.from_agent}" if direction == "in" else f"To: {envelope.to}"
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
    meta_line = "<!-- swarmbus " + json.dumps(meta).replace("--", "-\\u002d") + " -->"
    return f"\n## [{when}] {who} | {envelope.subject}\n{meta_line}\n{escape_body(envelope.body)}\n"


def append_entry(path: Path, text: str) -> None:
    """Append one entry with a single ``write()`` (parents created, file mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


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
