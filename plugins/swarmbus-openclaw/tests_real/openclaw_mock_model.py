"""A loopback mock of an OpenAI-compatible chat-completions API, for the real-gateway tests.

OpenClaw's gateway is configured (``api: "openai-completions"``) to use this server as its
only model provider, so an agent turn runs end to end without any real LLM. It answers:

- ``GET /v1/models``: one model, ``mock-1``;
- ``POST /v1/chat/completions``: with ``stream: true`` a ``text/event-stream`` of
  ``chat.completion.chunk`` objects (role chunk, one content chunk per word, a final chunk with
  ``finish_reason: "stop"`` and ``usage``, then ``data: [DONE]``); without it one
  ``chat.completion`` object.

Every request body is recorded (``MockModel.requests``) so a test can assert that the prompt
the gateway built contains the swarmbus message. Standard library only; runs in a thread.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from swarmbus import testing

MODEL_ID = "mock-1"
REPLY = "Noted: the swarmbus message was received by the mock model."


class MockModel:
    """``with MockModel() as model: model.port``; ``model.requests`` holds the parsed bodies."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, reply: str = REPLY) -> None:
        self.reply = reply
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _json(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._json(200, {"object": "list", "data": [{"id": MODEL_ID, "object": "model",
                                                                 "created": 0, "owned_by": "mock"}]})
                else:
                    self._json(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    self._json(400, {"error": {"message": "invalid JSON"}})
                    return
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                with owner._changed:
                    owner.requests.append(body)
                    owner._changed.notify_all()
                if body.get("stream"):
                    self._stream(body)
                else:
                    self._json(200, owner._completion(body))

            def _stream(self, body: dict[str, Any]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                for chunk in owner._chunks(body):
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="mock-model", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _usage(self) -> dict[str, int]:
        return {"prompt_tokens": 10, "completion_tokens": len(self.reply.split()), "total_tokens": 10 + len(self.reply.split())}

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-mock-{len(self.requests)}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", MODEL_ID),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self.reply}, "finish_reason": "stop"}],
            "usage": self._usage(),
        }

    def _chunks(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        base = {"id": f"chatcmpl-mock-{len(self.requests)}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": body.get("model", MODEL_ID)}

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
            return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}

        words = self.reply.split(" ")
        out = [chunk({"role": "assistant", "content": ""})]
        out += [chunk({"content": w if i == 0 else " " + w}) for i, w in enumerate(words)]
        out.append(chunk({}, "stop", usage=self._usage()))
        return out

    def wait_for(self, predicate: Any, timeout: float) -> dict[str, Any] | None:
        """The first recorded request for which ``predicate(body)`` is true, waiting up to
        ``timeout`` seconds for one to arrive (None if none did)."""
        return testing.wait_on(self._changed, lambda: next((b for b in self.requests if predicate(b)), None), timeout)

    def start(self) -> MockModel:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> MockModel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def request_text(body: dict[str, Any]) -> str:
    """All message contents of a chat-completions request as one string (for ``in`` checks)."""
    parts: list[str] = []
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "\n".join(parts)


if __name__ == "__main__":  # manual use: python openclaw_mock_model.py PORT
    import sys

    with MockModel(port=int(sys.argv[1]) if len(sys.argv) > 1 else 18901) as m:
        print(f"mock model on {m.base_url}", flush=True)
        threading.Event().wait()
