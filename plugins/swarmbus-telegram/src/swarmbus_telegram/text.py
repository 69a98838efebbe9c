"""Text for Telegram's HTML parse mode: escaping peer-supplied fields, cutting them to fit, and
splitting a long text into messages Telegram accepts.

Telegram's HTML style (https://core.telegram.org/bots/api#html-style) knows a few tags
(``<b>``, ``<i>``, ``<code>``, ``<pre>``, ``<blockquote>``, ...) and needs every ``<``, ``>``
and ``&`` that is not markup written as ``&lt;``, ``&gt;``, ``&amp;``. A ``sendMessage`` text is
1-4096 characters after entities parsing (https://core.telegram.org/bots/api#sendmessage);
:func:`split_html` keeps each part's *markup* within :data:`LIMIT` UTF-16 code units, which is
never less than what Telegram counts.

Every field a peer controls (agent ids, subject, body, reasons, details) goes through
:func:`esc` and is shown inside ``<code>`` or ``<pre>``: nothing a peer writes becomes markup, a
link, a mention or a tappable ``/command`` in the chat.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterable

LIMIT = 4096
"""The most characters of one ``sendMessage`` text (https://core.telegram.org/bots/api#sendmessage)."""
ELLIPSIS = "…"

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_TOKEN = re.compile(r"<[^<>]*>|&#?[A-Za-z0-9]+;|[^<&]+|[<&]")
_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)[^<>]*>")


def ulen(text: str) -> int:
    """The length of ``text`` in UTF-16 code units (how Telegram measures; >= ``len(text)``)."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def clean(text: str) -> str:
    """``text`` without what must not reach a chat: lone surrogates (not UTF-8), control
    characters other than newline and tab, and bidirectional overrides (which can make text read
    differently from what it is); ``\\r\\n`` becomes ``\\n``."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    return _CONTROL.sub("\ufffd", text.replace("\r\n", "\n").replace("\r", "\n"))


def cut(text: str, limit: int) -> str:
    """``text`` cleaned (:func:`clean`) and cut to at most ``limit`` characters, ending with
    ``…`` when it was longer."""
    text = clean(text)
    if len(text) <= limit:
        return text
    return text[: max(0, limit - 1)] + ELLIPSIS if limit > 0 else ""


def esc(text: object, limit: int | None = None) -> str:
    """``text`` (any value, as ``str``) cleaned, cut to ``limit`` characters first when given,
    then HTML-escaped (``<``, ``>``, ``&``, quotes) for Telegram's HTML parse mode."""
    value = str(text)
    value = cut(value, limit) if limit is not None else clean(value)
    return html.escape(value, quote=True)


def code(text: object, limit: int | None = None) -> str:
    """A peer-supplied field, escaped, in ``<code>`` (never a link, mention or command)."""
    return f"<code>{esc(text, limit)}</code>"


def strip_tags(markup: str) -> str:
    """The visible text of ``markup``: tags removed, entities decoded."""
    return html.unescape(re.sub(r"<[^<>]*>", "", markup))


def _visible(markup: str) -> bool:
    return bool(strip_tags(markup).strip())


def split_html(markup: str, limit: int = LIMIT) -> list[str]:
    """Split ``markup`` into parts of at most ``limit`` UTF-16 code units, each valid on its own.

    A part ends at a newline when one fits, else at a space, else anywhere between two
    characters; never inside a tag or an entity. Tags open at a split are closed at the end of
    the part and opened again at the start of the next. Parts with no visible text are left out
    (Telegram refuses an empty message). ``markup`` of at most ``limit`` comes back as it is.
    """
    if ulen(markup) <= limit:
        return [markup] if _visible(markup) else []
    parts: list[str] = []
    stack: list[tuple[str, str]] = []  # (name, opening tag) of the tags open at this point
    current = ""

    def closing() -> str:
        return "".join(f"</{name}>" for name, _ in reversed(stack))

    def flush() -> None:
        nonlocal current
        part = current + closing()
        if _visible(part):
            parts.append(part)
        current = "".join(tag for _, tag in stack)

    for token in _TOKEN.findall(markup):
        tag = _TAG.fullmatch(token)
        if tag is not None or (token.startswith("&") and token.endswith(";")):
            after = list(stack)
            if tag is not None:
                name = tag.group(2).lower()
                if tag.group(1):
                    for i in range(len(after) - 1, -1, -1):
                        if after[i][0] == name:
                            del after[i:]
                            break
                else:
                    after.append((name, token))
            closed = "".join(f"</{n}>" for n, _ in reversed(after))
            if ulen(current) + ulen(token) + ulen(closed) > limit and _visible(current):
                flush()
            current += token
            stack[:] = after
            continue
        run = token
        while run:
            room = limit - ulen(current) - ulen(closing())
            if ulen(run) <= room:
                current += run
                break
            fit = _fit(run, room) if room > 0 else 0
            if fit == 0:
                if not _visible(current):
                    raise ValueError("markup nests tags too deep to split")  # never with our templates
                flush()
                continue
            cut_at = _boundary(run[:fit])
            current += run[:cut_at]
            run = run[cut_at:]
            flush()
    if current and _visible(current + closing()):
        parts.append(current + closing())
    return parts


def _fit(run: str, room: int) -> int:
    """How many characters of ``run`` fit in ``room`` UTF-16 code units."""
    used = 0
    for i, ch in enumerate(run):
        used += 2 if ord(ch) > 0xFFFF else 1
        if used > room:
            return i
    return len(run)


def _boundary(prefix: str) -> int:
    """Where to end a part within ``prefix``: after its last newline, else its last space (when
    that keeps at least half of it), else all of it."""
    for sep in ("\n", " "):
        at = prefix.rfind(sep)
        if at >= 0 and (sep == "\n" or at >= len(prefix) // 2):
            return at + 1
    return len(prefix)


def plain(markup: str) -> str:
    """The visible text of ``markup`` (for sending without a parse mode after Telegram refused
    the markup)."""
    return strip_tags(markup)


def clock(ts: float | None, now: float | None = None) -> str:
    """``ts`` (Unix seconds) as local ``HH:MM``, with the date when it is not today; ``?`` for None."""
    if ts is None:
        return "?"
    now = time.time() if now is None else now
    local = time.localtime(ts)
    same_day = time.strftime("%Y-%m-%d", local) == time.strftime("%Y-%m-%d", time.localtime(now))
    return time.strftime("%H:%M" if same_day else "%Y-%m-%d %H:%M", local)


def listing(items: Iterable[str], limit: int, more: str = "and {n} more") -> list[str]:
    """At most ``limit`` of ``items``, then a line saying how many were left out."""
    items = list(items)
    shown = items[:limit]
    if len(items) > limit:
        shown.append(more.format(n=len(items) - limit))
    return shown
