"""A loopback mock of the Telegram Bot API for the tests: a real HTTP server on 127.0.0.1 (a free
port) that records every request and answers like https://core.telegram.org/bots/api does for
``getMe``, ``getChat``, ``sendMessage`` and ``getUpdates`` (long polling, offsets), with the
checks Telegram makes that matter here: the token, a text of 1-4096 characters, and HTML that
Telegram's parser accepts (known tags, balanced, valid entities).

Scriptable: :meth:`MockBot.script` queues answers for a method (``429`` with ``retry_after``,
``500``, ``401``, or ``drop``: the connection closed without an answer); :attr:`MockBot.outage`
fails every request (``"drop"`` or an HTTP status) until it is set back to None.
"""

from __future__ import annotations

import html
import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "code", "pre", "a", "blockquote",
        "tg-spoiler", "span", "tg-emoji"}
_PIECE = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)((?:\s[^<>]*)?)>|&(#\d+|#x[0-9a-fA-F]+|lt|gt|amp|quot);|[<>&]")


def html_problem(text: str) -> str | None:
    """Why Telegram's HTML parse mode would refuse ``text`` ("can't parse entities"), or None."""
    stack: list[str] = []
    for m in _PIECE.finditer(text):
        if m.group(0) in ("<", ">", "&"):
            return f"unexpected {m.group(0)!r} at {m.start()}"
        if m.group(2) is None:
            continue
        name = m.group(2).lower()
        if name not in TAGS:
            return f"unsupported start tag {name!r}"
        if m.group(1):
            if not stack or stack[-1] != name:
                return f"unmatched end tag {name!r}"
            stack.pop()
        else:
            stack.append(name)
    if stack:
        return f"unclosed tag {stack[-1]!r}"
    return None


def visible(text: str) -> str:
    return html.unescape(re.sub(r"<[^<>]*>", "", text))


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@dataclass
class Request:
    method: str
    token: str
    params: dict[str, Any]
    at: float
    answered: int = 0  # the HTTP status answered (0: dropped)


@dataclass
class Sent:
    """A message the bot sent (accepted by the mock)."""

    message_id: int
    chat_id: Any
    text: str
    params: dict[str, Any]
    at: float


@dataclass
class MockBot:
    token: str
    chat_id: int = 4242
    requests: list[Request] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    outage: str | int | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Condition()
        self._scripts: dict[str, deque[tuple[Any, ...]]] = {}
        self._updates: list[dict[str, Any]] = []
        self._next_update = 1000
        self._next_message = 1
        self.confirmed_upto = 0  # the highest offset a getUpdates asked for
        bot = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

            def do_POST(self) -> None:
                bot._serve(self)

            do_GET = do_POST

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:  # a dropped connection
                return

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        with self._lock:
            self._lock.notify_all()
        self._server.shutdown()
        self._server.server_close()

    # -- scripting -------------------------------------------------------------------------------
    def script(self, method: str, *answers: tuple[Any, ...]) -> None:
        """Queue answers for ``method``: ``("status", code, body_dict)`` or ``("drop",)``; each is
        used once, before the normal behaviour."""
        with self._lock:
            self._scripts.setdefault(method, deque()).extend(answers)

    @staticmethod
    def too_many(retry_after: int) -> tuple[Any, ...]:
        return ("status", 429, {"ok": False, "error_code": 429,
                                "description": f"Too Many Requests: retry after {retry_after}",
                                "parameters": {"retry_after": retry_after}})

    def push(self, text: str, *, chat_id: int | None = None, user_id: int | None = None,
             reply_to: int | None = None, is_bot: bool = False) -> int:
        """An update: a text message from ``user_id`` (default: the chat's own id, a private
        chat) in ``chat_id``; ``reply_to`` the bot message it answers. Returns its update id."""
        chat = self.chat_id if chat_id is None else chat_id
        user = chat if user_id is None else user_id
        with self._lock:
            self._next_update += 1
            self._next_message += 1
            message: dict[str, Any] = {"message_id": self._next_message, "date": int(time.time()), "text": text,
                                       "chat": {"id": chat, "type": "private"},
                                       "from": {"id": user, "is_bot": is_bot, "first_name": "Op"}}
            if reply_to is not None:
                message["reply_to_message"] = {"message_id": reply_to, "chat": {"id": chat}, "text": "..."}
            self._updates.append({"update_id": self._next_update, "message": message})
            self._lock.notify_all()
            return self._next_update

    # -- reading back --------------------------------------------------------------------------------
    def sent_to(self, chat_id: Any = None) -> list[Sent]:
        with self._lock:
            return [s for s in self.sent if chat_id is None or str(s.chat_id) == str(chat_id)]

    def calls(self, method: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.method == method]

    def answers_to(self, message_id: int) -> list[Sent]:
        """Messages sent as replies to the chat message ``message_id``."""
        return [s for s in self.sent_to() if (s.params.get("reply_parameters") or {}).get("message_id") == message_id]

    # -- serving -------------------------------------------------------------------------------------
    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            params = json.loads(raw) if raw else {}
        except ValueError:
            params = {}
        match = re.fullmatch(r"/bot([^/]*)/(\w+)", h.path)
        token, method = (match.group(1), match.group(2)) if match else ("", "")
        request = Request(method, token, params, time.time())
        with self._lock:
            self.requests.append(request)
            scripted = self._scripts.get(method)
            action = scripted.popleft() if scripted else None
            outage = self.outage
        if action is None and outage is not None:
            action = ("drop",) if outage == "drop" else ("status", int(outage), {"ok": False, "error_code": int(outage),
                                                                                  "description": "Bad Gateway"})
        if action is not None and action[0] == "drop":
            h.close_connection = True
            h.connection.close()
            return
        if action is not None:
            self._answer(h, request, action[1], action[2])
            return
        if token != self.token:
            self._answer(h, request, 401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
            return
        status, body = self._method(method, params)
        self._answer(h, request, status, body)

    def _answer(self, h: BaseHTTPRequestHandler, request: Request, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        request.answered = status
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _method(self, method: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if method == "getMe":
            return 200, {"ok": True, "result": {"id": 1, "is_bot": True, "first_name": "swarm",
                                                "username": "swarmbus_test_bot"}}
        if method == "getChat":
            if str(params.get("chat_id")) != str(self.chat_id):
                return 400, {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}
            return 200, {"ok": True, "result": {"id": self.chat_id, "type": "private", "first_name": "Op"}}
        if method == "sendMessage":
            return self._send(params)
        if method == "getUpdates":
            return 200, {"ok": True, "result": self._get_updates(params)}
        return 404, {"ok": False, "error_code": 404, "description": "Not Found"}

    def _send(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        text = params.get("text")
        if not isinstance(text, str):
            return 400, {"ok": False, "error_code": 400, "description": "Bad Request: message text is empty"}
        if params.get("parse_mode") == "HTML":
            problem = html_problem(text)
            if problem is not None:
                return 400, {"ok": False, "error_code": 400,
                             "description": f"Bad Request: can't parse entities: {problem}"}
            shown = visible(text)
        else:
            shown = text
        if not shown.strip():
            return 400, {"ok": False, "error_code": 400, "description": "Bad Request: message text is empty"}
        if utf16_len(shown) > 4096 or utf16_len(text) > 4096 * 4:
            return 400, {"ok": False, "error_code": 400, "description": "Bad Request: message is too long"}
        with self._lock:
            self._next_message += 1
            sent = Sent(self._next_message, params.get("chat_id"), text, params, time.time())
            self.sent.append(sent)
            self._lock.notify_all()
        return 200, {"ok": True, "result": {"message_id": sent.message_id, "chat": {"id": params.get("chat_id")},
                                            "text": shown, "date": int(time.time())}}

    def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = params.get("offset")
        timeout = min(float(params.get("timeout") or 0), 5.0)
        deadline = time.monotonic() + timeout
        with self._lock:
            if isinstance(offset, int):
                self.confirmed_upto = max(self.confirmed_upto, offset)
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
            while not self._updates and time.monotonic() < deadline:
                self._lock.wait(max(0.0, deadline - time.monotonic()))
            return list(self._updates)
