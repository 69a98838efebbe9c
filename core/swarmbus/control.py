"""The daemon's local control socket: a Unix socket speaking JSON lines.

One request per connection: the client writes one JSON object and a newline, the daemon
answers with one JSON object and a newline. Requests (``op``):

- ``status``: ``{"ok": true, "agent_id", "pid", "version", "connected", "protocol", ...}``;
- ``send`` with ``envelope`` (the wire object) and ``wait`` (seconds to wait for the PUBACK):
  spools it in the durable outbox, publishes it, answers ``{"ok": true, "id", "status":
  "published" | "queued"}``;
- ``wait`` with ``after`` (a store seq) and ``timeout``: answers ``{"ok": true, "last_seq"}``
  as soon as a message newer than ``after`` is stored, or at the timeout;
- ``read`` with ``consumer``, ``ack_ids`` (message ids), ``max`` and ``wait`` (seconds): a
  non-destructive read (used by the MCP server). It first acknowledges ``ack_ids`` for that
  consumer, then answers ``{"ok": true, "acked": n, "messages": [...]}`` with up to ``max``
  messages the consumer has not acknowledged (the same ones again until it does), waiting up
  to ``wait`` seconds for one when there are none. ``max`` 0 only acknowledges.

Errors answer ``{"ok": false, "error": "...", "kind": "usage" | "failure"}``. The socket is
mode 0600 inside a 0700 directory: only the agent's own user can talk to it.

The client half is stdlib-only (``socket`` + ``json``) so ``swarmbus send`` stays fast.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

TYPE_CHECKING = False  # typing costs the send fast path ~4 ms
if TYPE_CHECKING:
    from typing import Any


class DaemonUnavailable(Exception):
    """No daemon answers on the socket (not running, stale socket, or wrong user)."""


def request(path: Path, payload: dict[str, Any], *, timeout: float = 10.0) -> dict[str, Any]:
    """Send one request and return the decoded answer.

    :raises DaemonUnavailable: nothing listens on ``path``.
    :raises TimeoutError: the daemon did not answer within ``timeout`` seconds.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError, PermissionError, OSError) as exc:
            raise DaemonUnavailable(str(exc)) from None
        try:
            sock.sendall(json.dumps(payload).encode("utf-8") + b"\n")
        except ConnectionError as exc:  # the listener went away between connect and send
            raise DaemonUnavailable(str(exc)) from None
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise TimeoutError(f"daemon did not answer within {timeout:.0f}s") from None
            except ConnectionError as exc:  # reset: the socket's last holder (a dead daemon's) closed
                raise DaemonUnavailable(f"the daemon closed the connection: {exc}") from None
            if not chunk:
                break
            chunks.append(chunk)
            if chunk.endswith(b"\n"):
                break
    finally:
        sock.close()
    data = b"".join(chunks)
    if not data:
        raise DaemonUnavailable("daemon closed the connection without answering")
    answer: dict[str, Any] = json.loads(data)
    return answer


def daemon_status(path: Path, *, timeout: float = 2.0) -> dict[str, Any] | None:
    """The daemon's status, or None when no daemon answers."""
    try:
        return request(path, {"op": "status"}, timeout=timeout)
    except (DaemonUnavailable, TimeoutError, ValueError):
        return None
