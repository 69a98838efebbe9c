"""A loopback mock of the Anthropic Messages API, enough for ``claude -p`` to run offline.

Every ``POST /v1/messages`` is recorded (path and decoded JSON body). The reply text lists
which of the configured marker strings occur anywhere in the request body, as
``markers-seen: A,B`` (or ``markers-seen: none``), so a test can tell from the request log
*and* from the transcript what reached the model. Streaming requests get the SSE event
sequence Claude Code expects (message_start … message_stop); non-streaming ones one JSON
message. ``GET``/``HEAD`` answer 200 with an empty list; ``count_tokens`` answers a count.
Each request is recorded with ``at`` (``time.time()`` when it arrived), for latencies.

A busy session: with ``tool_trigger`` and ``tool_command`` set, a streaming request whose last
message is the user's text containing ``tool_trigger`` is answered with a ``tool_use`` of the
Bash tool running ``tool_command`` (``stop_reason: tool_use``); the request after its result
gets the usual text.

Standard library only; run it in a thread with :func:`start_mock`.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class MockState:
    markers: list[str] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    tool_trigger: str | None = None
    tool_command: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def seen(self, raw: str) -> list[str]:
        return [m for m in self.markers if m in raw]

    def message_requests(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if "/v1/messages" in r["path"] and "count_tokens" not in r["path"]]


def _handler(state: MockState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _send_json(self, payload: Any, status: int = 200) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            self.close_connection = True

        def do_HEAD(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True

        def do_GET(self) -> None:
            self._send_json({"data": [], "has_more": False})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode("utf-8", "replace")
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                body = {}
            with state.lock:
                state.requests.append({"path": self.path, "body": body, "raw": raw, "at": time.time()})
            if "count_tokens" in self.path:
                self._send_json({"input_tokens": max(1, len(raw) // 4)})
                return
            seen = state.seen(raw)
            text = "markers-seen: " + (",".join(seen) if seen else "none")
            model = body.get("model", "claude-mock")
            msg_id = f"msg_{uuid.uuid4().hex[:24]}"
            usage = {"input_tokens": max(1, len(raw) // 4), "output_tokens": 8}
            if not body.get("stream"):
                self._send_json({
                    "id": msg_id, "type": "message", "role": "assistant", "model": model,
                    "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                    "stop_sequence": None, "usage": usage,
                })
                return
            if _wants_tool(state, body):
                self._stream(_tool_events(msg_id, model, usage, str(state.tool_command)))
                return
            events = [
                ("message_start", {"type": "message_start", "message": {
                    "id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [],
                    "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}}),
                ("content_block_start", {"type": "content_block_start", "index": 0,
                                         "content_block": {"type": "text", "text": ""}}),
                ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "text_delta", "text": text}}),
                ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                   "usage": {"output_tokens": 8}}),
                ("message_stop", {"type": "message_stop"}),
            ]
            self._stream(events)

        def _stream(self, events: list[tuple[str, dict[str, Any]]]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            for name, data in events:
                self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()
            self.close_connection = True

    return Handler


def _wants_tool(state: MockState, body: dict[str, Any]) -> bool:
    if not (state.tool_trigger and state.tool_command and body.get("stream")):
        return False
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    content = last.get("content")
    if last.get("role") != "user":
        return False
    if isinstance(content, list):
        if any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content):
            return False
        content = " ".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return state.tool_trigger in str(content)


def _tool_events(msg_id: str, model: str, usage: dict[str, int], command: str) -> list[tuple[str, dict[str, Any]]]:
    tool_id = f"toolu_{uuid.uuid4().hex[:24]}"
    return [
        ("message_start", {"type": "message_start", "message": {
            "id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
            "type": "tool_use", "id": tool_id, "name": "Bash", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
            "type": "input_json_delta", "partial_json": json.dumps({"command": command, "description": "wait"})}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                           "usage": {"output_tokens": 8}}),
        ("message_stop", {"type": "message_stop"}),
    ]


class MockServer:
    def __init__(self, markers: list[str] | None = None) -> None:
        self.state = MockState(markers=list(markers or []))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="messages-mock", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> MockServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> MockServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_mock(markers: list[str] | None = None) -> MockServer:
    return MockServer(markers).start()


if __name__ == "__main__":  # manual use: python messages_mock.py MARKER...
    import sys
    import time

    server = start_mock(sys.argv[1:])
    print(server.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
