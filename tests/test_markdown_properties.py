"""Property-based tests of the markdown archive: however a reader splits lines, only real entry
headers and metadata lines look like them; bodies round-trip; ``archived_ids`` finds exactly
the ids of the last entries, torn or not.

Deterministic (``derandomize=True``, no example database) and sized to run in a few seconds.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from swarmbus.envelope import Envelope
from swarmbus.markdown import append_entry, archived_ids, escape_body, format_entry, unescape_body

PROPS = settings(
    derandomize=True, database=None, deadline=None, max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
FILE_PROPS = settings(PROPS, max_examples=60)  # these write files
CHUNK_SIZES = st.sampled_from([1, 3, 16, 100, 65_536])  # archived_ids reads backwards in chunks

# Three ways readers split lines, and what a lenient reader skips before "#" or "<!--":
# whitespace, control characters, invisible format characters.
SPLITTERS: dict[str, Callable[[str], list[str]]] = {
    "splitlines": str.splitlines,
    "split-lf": lambda text: text.split("\n"),
    "split-crlf": lambda text: re.split(r"\r\n|\r|\n", text),
}
SKIP = r"[\s\x00-\x1f\x7f-\x9f\xad\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\u3164]"
HEADER_LIKE = re.compile(rf"{SKIP}*#+{SKIP}*\[")
META_LIKE = re.compile(rf"{SKIP}*<!--")
STRICT_HEADER = re.compile(r"^## \[", re.M)  # the predecessor's grep

TOKENS = ["## [", "##", "#", "[", " [", "<!--", "<!-- swarmbus", "-->", "\\", "\\\\", " ", "   ", "\t", "\n", "\r",
          "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\u2028", "\u2029", "\u200b", "\ufeff",
          "\xa0", "\u3000", "\x00", "\x1b", "x", "text"]
hostile_text = st.lists(st.sampled_from(TOKENS) | st.characters(blacklist_categories=("Cs",)), max_size=40).map("".join)
subjects = st.lists(st.sampled_from(["## [", "<!--", "\u2028", "\u2029", " ", "x", "|", "]"])
                    | st.characters(blacklist_categories=("Cs", "Cc")), max_size=20).map("".join)
ids = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30)


def envelope(id: str = "m-1", body: str = "", subject: str = "s", **over: Any) -> Envelope:
    data: dict[str, Any] = {"id": id, "from": "planner", "to": "coder", "ts": "2026-11-22T01:19:34+00:00",
                            "subject": subject, "body": body}
    data.update(over)
    return Envelope.from_dict(data)


def looks_like(lines: list[str]) -> tuple[list[int], list[int]]:
    headers = [i for i, line in enumerate(lines) if HEADER_LIKE.match(line)]
    metas = [i for i, line in enumerate(lines) if META_LIKE.match(line)]
    return headers, metas


@PROPS
@given(st.text() | hostile_text)
def test_escape_round_trips(body: str) -> None:
    assert unescape_body(escape_body(body)) == body


@PROPS
@given(hostile_text)
def test_no_escaped_line_looks_like_a_header(body: str) -> None:
    escaped = escape_body(body)
    for name, split in SPLITTERS.items():
        for text in (escaped, "\n" + escaped + "\n"):
            assert looks_like(split(text)) == ([], []), name


@PROPS
@given(hostile_text, subjects, ids, st.sampled_from(["in", "out"]))
def test_entry_has_one_header_and_one_metadata_line(body: str, subject: str, id: str, direction: str) -> None:
    env = envelope(id=id, body=body, subject=subject, reply_to="planner", in_reply_to=id)
    entry = format_entry(env, direction=direction)
    for name, split in SPLITTERS.items():
        lines = split(entry)
        assert looks_like(lines) == ([1], [2]), name
        assert lines[0] == ""
    assert len(STRICT_HEADER.findall(entry)) == 1
    header, meta_line, rest = entry[1:].split("\n", 2)
    assert header.startswith("## [2026-11-22 01:19] " + ("From: planner | " if direction == "in" else "To: coder | "))
    assert meta_line.startswith("<!-- swarmbus ") and meta_line.endswith(" -->") and "--" not in meta_line[4:-3]
    meta = json.loads(meta_line[len("<!-- swarmbus "):-len(" -->")])
    assert meta["id"] == id and meta["in_reply_to"] == id
    assert meta.get("subject", header.split(" | ", 1)[1]) == subject
    assert rest.endswith("\n") and unescape_body(rest[:-1]) == body


@FILE_PROPS
@given(st.lists(hostile_text, min_size=1, max_size=6))
def test_file_of_entries_has_exactly_their_headers(bodies: list[str]) -> None:
    text = "".join(format_entry(envelope(id=f"m-{i}", body=body)) for i, body in enumerate(bodies))
    for name, split in SPLITTERS.items():
        headers, metas = looks_like(split(text))
        assert len(headers) == len(bodies) and len(metas) == len(bodies), name
    assert len(STRICT_HEADER.findall(text)) == len(bodies)


@FILE_PROPS
@given(st.lists(st.tuples(ids, hostile_text), max_size=10), CHUNK_SIZES)
def test_archived_ids_are_the_last_entries(entries: list[tuple[str, str]], chunk_size: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "inbox.md"
        for id, body in entries:
            append_entry(path, format_entry(envelope(id=id, body=body)))
        all_ids = [id for id, _ in entries]
        for n in range(len(entries) + 2):
            expected = set(all_ids[max(0, len(all_ids) - n):]) if n else set()
            assert archived_ids(path, n, chunk_size=chunk_size) == expected, n
        assert archived_ids(path, 1000) == set(all_ids)


@FILE_PROPS
@given(st.lists(st.tuples(ids, hostile_text), min_size=1, max_size=6), CHUNK_SIZES, st.data())
def test_archived_ids_skip_a_torn_last_entry(entries: list[tuple[str, str]], chunk_size: int, data: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "inbox.md"
        for id, body in entries[:-1]:
            append_entry(path, format_entry(envelope(id=id, body=body)))
        last = format_entry(envelope(id=entries[-1][0], body=entries[-1][1])).encode()
        cut = data.draw(st.integers(1, len(last) - 1))
        torn = last[:cut]
        assume(not torn.endswith(b"\n"))  # a tear right after a newline is indistinguishable
        tail = torn.rsplit(b"\n", 1)[-1]
        header_done = torn.count(b"\n") >= 2
        # a body line torn to "#", "##" or "## " reads as a torn header: covered by unit tests
        assume(not (header_done and b"## [".startswith(tail)))
        with path.open("ab") as fh:
            fh.write(torn)
        complete = [id for id, _ in entries[:-1]]
        for n in range(len(entries) + 1):
            expected = set(complete[max(0, len(complete) - n):]) if n else set()
            assert archived_ids(path, n, chunk_size=chunk_size) == expected, (n, torn)
