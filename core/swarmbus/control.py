"""The daemon's local control socket: a Unix socket speaking JSON lines.

One request per connection: the client writes one JSON object and a newline, the daemon
answers with one JSON object and a newline. Requests (``op``):

- ``status``: ``{"ok": true, "agent_id", "pid", "version", "started_at", "supervisor",
  "connected", "protocol", ...}`` (``supervisor``: systemd, launchd, detached or foreground);
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

- ``step`` with ``id`` (a message id), ``steps`` (delivery steps: ``stored``, ``wake``,
  ``surfaced``, ``acknowledged``, ``replied``) and ``timeout`` (seconds): answers ``{"ok": true,
  "reached": bool, "ladder": [{"step", "by", "at", "detail"}, ...]}`` as soon as one of ``steps``
  is recorded for the message, or at the timeout (``swarmbus send --wait STEP``);
- ``mark`` with ``ids`` (ids of received messages), ``step`` (``surfaced`` or ``acknowledged``)
  and ``detail``: records that step of their delivery ladder (and sends its receipt when the
  sender asked), answers ``{"ok": true, "recorded": n}``. Host plugins call it when they showed
  messages to the model (e.g. a gateway's ``accepted``); ``read`` does it by itself.
- a ``send`` answer also carries ``recipient``: what presence says of a directed message's
  recipient (``receipts``, ``no receipts``, ``never seen``, ``unknown``).

- ``hold`` with ``duration`` (seconds, or null: until released) and ``reason``: the operator's
  hold on every wake of the agent (``swarmbus policy hold``); ``release`` ends it and asks the
  rules again about every message it held (``swarmbus policy release``). Both answer ``{"ok":
  true, "agent_id", "manual_hold": {"since", "until", "reason"} | null, "held": n}``, ``release``
  also ``released`` (how many messages the hold held).

- ``task`` with ``action``: ``post`` (``type``, ``role``, ``capabilities``, ``payload``,
  ``max_attempts``, ``lease``) makes this daemon the task's arbiter and answers ``{"ok": true,
  "task": <state record>}``; ``complete`` / ``fail`` (``task_id``, ``owner``, ``result`` or
  ``error``, ``timeout``) send this agent's outcome of a task it holds and answer with the
  arbiter's verdict (``{"ok": false, "kind": "failure", "error"}`` when refused, e.g. a stale
  fence; ``"pending": true`` when no answer came in time). See :mod:`swarmbus.board`.

- a ``send`` may carry ``deadline`` (Unix seconds): a daemon that takes the request after it
  refuses it without spooling (``{"ok": false, "status": "expired"}``), so a client that gave
  up waiting can say "not sent" and be right (:func:`send_request` sets it).

Errors answer ``{"ok": false, "error": "...", "kind": "usage" | "failure"}``. The socket is
mode 0600 inside a 0700 directory of the agent's user (:mod:`swarmbus.paths`); the daemon
checks each peer's uid and the client checks the daemon's (``SO_PEERCRED`` on Linux; elsewhere
it checks the socket's directory), so a message is never handed to another user's process.

The client half is stdlib-only (``socket`` + ``json``) so ``swarmbus send`` stays fast.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from swarmbus.errors import SwarmbusError

TYPE_CHECKING = False  # typing costs the send fast path ~4 ms
if TYPE_CHECKING:
    from typing import Any


class DaemonUnavailable(Exception):
    """No daemon answers on the socket (not running, or a stale socket)."""


class UnsafeSocket(SwarmbusError):
    """The socket is served by another user's process, or lies in a directory others control:
    nothing was sent to it."""


ANSWER_GRACE = 2.0
"""Seconds a client waits beyond a send's deadline for the daemon's answer."""
TAKE_GRACE = 1.0
"""Seconds beyond ``wait`` within which the daemon must take a send, or refuse it."""


def _check_peer(sock: socket.socket, path: Path) -> None:
    if sys.platform.startswith("linux") and hasattr(socket, "SO_PEERCRED"):
        import struct

        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        uid = struct.unpack("3i", creds)[1]
        if uid != os.geteuid():
            raise UnsafeSocket(f"{path} is served by uid {uid}, not by this user (uid {os.geteuid()}); nothing was sent",
                               hint="another user's process is listening where this agent's daemon should be")


def request(path: Path, payload: dict[str, Any], *, timeout: float = 10.0) -> dict[str, Any]:
    """Send one request and return the decoded answer.

    :raises DaemonUnavailable: nothing listens on ``path``.
    :raises UnsafeSocket: another user's process listens there (nothing was sent).
    :raises TimeoutError: the daemon did not answer within ``timeout`` seconds.
    """
    linux = sys.platform.startswith("linux")
    if not linux:  # no peer credentials to check: the directory must be ours alone
        from swarmbus.paths import private_dir_problem

        problem = private_dir_problem(path.parent)
        if problem is not None and path.parent.exists():
            raise UnsafeSocket(f"not using the control socket {path}: {problem}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError, PermissionError, OSError) as exc:
            raise DaemonUnavailable(str(exc)) from None
        if linux:
            _check_peer(sock, path)
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


def send_request(path: Path, envelope: dict[str, Any], wait: float) -> dict[str, Any]:
    """Hand ``envelope`` (the wire object) to the daemon and return its answer: ``{"ok": true,
    "status": "published" | "queued" | "duplicate", ...}`` or ``{"ok": false, ...}``. The
    daemon must take it within ``wait`` + :data:`TAKE_GRACE` seconds or refuse it unsent, and
    answers within ``wait`` seconds of taking it.

    :raises DaemonUnavailable: no daemon listens (nothing was sent).
    :raises UnsafeSocket: another user's process listens there (nothing was sent).
    :raises TimeoutError: no answer even after the grace: the daemon is stuck; it refuses the
        request if it ever gets to it, so it was not sent.
    """
    deadline = time.time() + wait + TAKE_GRACE
    payload = {"op": "send", "envelope": envelope, "wait": wait, "deadline": deadline}
    return request(path, payload, timeout=wait + TAKE_GRACE + ANSWER_GRACE)


def daemon_status(path: Path, *, timeout: float = 2.0) -> dict[str, Any] | None:
    """The daemon's status, or None when no daemon answers (or only another user's does)."""
    try:
        return request(path, {"op": "status"}, timeout=timeout)
    except (DaemonUnavailable, UnsafeSocket, TimeoutError, ValueError):
        return None
