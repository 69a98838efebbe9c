"""Live host sessions registered with the daemon (control op ``session``).

The swarmbus MCP server runs inside a host's session (Claude Code starts it as a child) and
registers that session here, then again every :data:`REFRESH` seconds while it runs, and
unregisters it when it exits. A session is live while its host process (``pid``) runs and its
registration was refreshed within :data:`TTL` seconds, so a crashed session or MCP server drops
out by itself. Wake paths read them through ``HandlerContext.host_sessions``, most recently
registered first (the session the user opened last is the one they are in).

Kept in memory, and written (mode 0600, in the agent's private state dir: an endpoint may hold
a token) to ``host-sessions.json`` whenever a session comes or goes, so that a restarted daemon
knows the sessions that are still alive at once instead of after the next refresh.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from swarmbus.api import HostSession
from swarmbus.ownership import pid_alive

REFRESH = 10.0
"""Seconds between two registrations of one session by the MCP server."""
TTL = 3 * REFRESH
"""Seconds after its last registration when a session counts as gone."""
log = logging.getLogger("swarmbus.daemon")
_NAME = re.compile(r"\A[a-z0-9_-]{1,32}\Z")
_MAX_FIELD = 1024


class SessionError(ValueError):
    """A registration that is not well formed (the control op answers a usage error)."""


def parse_session(data: Any) -> HostSession:
    """A :class:`HostSession` from a control request's ``session`` object.

    :raises SessionError: not an object; ``host`` not 1-32 of ``a-z 0-9 _ -``; ``session_id``
        not 1-1024 printable characters; ``pid`` not a positive integer; ``endpoint`` not an
        object of at most 16 string values of at most 1024 characters.
    """
    if not isinstance(data, Mapping):
        raise SessionError("session must be an object")
    host, session_id, pid, endpoint = data.get("host"), data.get("session_id"), data.get("pid"), data.get("endpoint", {})
    if not isinstance(host, str) or not _NAME.match(host):
        raise SessionError("session.host must be 1-32 of a-z 0-9 _ -")
    if not isinstance(session_id, str) or not 0 < len(session_id) <= _MAX_FIELD or not session_id.isprintable():
        raise SessionError("session.session_id must be 1-1024 printable characters")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise SessionError("session.pid must be a positive integer")
    if (not isinstance(endpoint, Mapping) or len(endpoint) > 16
            or not all(isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= _MAX_FIELD
                       for k, v in endpoint.items())):
        raise SessionError("session.endpoint must be an object of at most 16 short strings")
    return HostSession(host, session_id, pid, dict(endpoint))


class HostSessions:
    """The registry (use from the daemon's event loop). With ``path`` it is loaded from there
    (sessions whose process still runs count as just refreshed) and saved on every change."""

    def __init__(self, path: Path | None = None) -> None:
        self._sessions: dict[tuple[str, str], HostSession] = {}
        self.path = path
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignored the saved host sessions in %s: %s", path, exc)
            return
        now = time.time()
        for row in rows if isinstance(rows, list) else []:
            try:
                session = parse_session(row)
            except SessionError:
                continue
            registered = row.get("registered_at") if isinstance(row.get("registered_at"), int | float) else now
            if pid_alive(session.pid):
                self._sessions[(session.host, session.session_id)] = HostSession(
                    session.host, session.session_id, session.pid, dict(session.endpoint), float(registered), now)

    def _save(self) -> None:
        if self.path is None:
            return
        rows = [{"host": s.host, "session_id": s.session_id, "pid": s.pid, "endpoint": dict(s.endpoint),
                 "registered_at": s.registered_at} for s in self._sessions.values()]
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(rows, fh)
            os.replace(tmp, self.path)
        except OSError as exc:  # a full disk costs the restart shortcut, never a wake
            log.warning("could not save the host sessions to %s: %s", self.path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()

    def register(self, session: HostSession, now: float | None = None) -> bool:
        """Add or refresh ``session``; True when it is new (or came back after it was gone)."""
        now = time.time() if now is None else now
        key = (session.host, session.session_id)
        old = self._sessions.get(key)
        fresh = old is None or not self._live(old, now) or old.pid != session.pid
        registered = now if fresh else old.registered_at  # type: ignore[union-attr]
        self._sessions[key] = HostSession(session.host, session.session_id, session.pid, dict(session.endpoint),
                                          registered, now)
        if fresh:
            self._save()
        return fresh

    def unregister(self, host: str, session_id: str) -> bool:
        removed = self._sessions.pop((host, session_id), None) is not None
        if removed:
            self._save()
        return removed

    def live(self, host: str, now: float | None = None) -> list[HostSession]:
        """The live sessions of ``host``, most recently registered first; gone ones are dropped."""
        now = time.time() if now is None else now
        gone = [key for key, session in self._sessions.items() if not self._live(session, now)]
        for key in gone:
            del self._sessions[key]
        if gone:
            self._save()
        return sorted((s for s in self._sessions.values() if s.host == host),
                      key=lambda s: s.registered_at, reverse=True)

    def summary(self) -> list[dict[str, Any]]:
        """For ``status``: each live session without its endpoint (which may hold a token)."""
        now = time.time()
        return [{"host": s.host, "session_id": s.session_id, "pid": s.pid, "registered_at": s.registered_at,
                 "refreshed_at": s.refreshed_at}
                for host in sorted({s.host for s in self._sessions.values()}) for s in self.live(host, now)]

    @staticmethod
    def _live(session: HostSession, now: float) -> bool:
        return now - session.refreshed_at <= TTL and pid_alive(session.pid)
