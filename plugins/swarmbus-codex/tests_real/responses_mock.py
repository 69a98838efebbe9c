"""A loopback mock of the OpenAI Responses API, enough for ``codex`` to run offline.

Every ``POST .../responses`` is recorded (path, raw body, decoded JSON, ``at`` = ``time.time()``
when it arrived, for latencies) and answered with the SSE events Codex reads (observed with
codex-cli 0.171.0): ``response.created``, ``response.output_item.added``,
``response.output_text.delta``, ``response.output_item.done``, ``response.completed``. The reply
text is ``mock reply``. ``GET`` answers an empty model list.

``hold(marker)``: the next request whose last input mentions ``marker`` is answered only up to
``response.created`` until :meth:`release` (a turn in flight, for steering).

Standard library only; it runs in a thread.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from swarmbus import testing


class ResponsesMock:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Condition()
        self._hold_marker: str | None = None
        self._released = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="responses-mock", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def start(self) -> ResponsesMock:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._released.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> ResponsesMock:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def hold(self, marker: str) -> None:
        self._hold_marker = marker
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def with_marker(self, marker: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if marker in r["raw"]]

    def wait_for_marker(self, marker: str, timeout: float = 60.0, count: int = 1) -> list[dict[str, Any]]:
        def found() -> list[dict[str, Any]] | None:
            hits = [r for r in self.requests if marker in r["raw"]]
            return hits if len(hits) >= count else None

        return testing.wait_on(self.lock, found, timeout,
                               lambda: f"no model request with {marker!r} ({len(self.requests)} requests)") or []

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        mock = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def handle(self) -> None:
                # Codex drops a model request in flight (a steer does that): nothing to answer then
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    super().handle()

            def do_GET(self) -> None:
                data = json.dumps({"object": "list", "data": [], "models": []}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                at = time.time()
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode("utf-8", "replace")
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {}
                with mock.lock:
                    mock.requests.append({"path": self.path, "raw": raw, "body": body, "at": at})
                    mock.lock.notify_all()
                rid, mid = f"resp_{uuid.uuid4().hex[:16]}", f"msg_{uuid.uuid4().hex[:16]}"
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                self._event("response.created", {"type": "response.created", "response": {"id": rid}})
                marker = mock._hold_marker
                if marker and marker in _last_input(body):
                    mock._hold_marker = None
                    mock._released.wait(60)
                self._event("response.output_item.added", {"type": "response.output_item.added", "output_index": 0,
                                                           "item": {"type": "message", "role": "assistant", "id": mid,
                                                                    "content": []}})
                self._event("response.output_text.delta", {"type": "response.output_text.delta", "item_id": mid,
                                                           "output_index": 0, "content_index": 0,
                                                           "delta": "mock reply"})
                self._event("response.output_item.done", {"type": "response.output_item.done", "output_index": 0,
                                                          "item": {"type": "message", "role": "assistant", "id": mid,
                                                                   "content": [{"type": "output_text",
                                                                                "text": "mock reply"}]}})
                self._event("response.completed", {"type": "response.completed", "response": {
                    "id": rid, "usage": {"input_tokens": 10, "output_tokens": 2, "total_tokens": 12}}})
                self.close_connection = True

            def _event(self, name: str, data: dict[str, Any]) -> None:
                self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
                self.wfile.flush()

        return Handler


def _last_input(body: dict[str, Any]) -> str:
    items = body.get("input") or []
    return json.dumps(items[-1]) if items else ""
