"""The dashboard's ASGI app (Starlette): the page, the JSON API and who may see them.

Routes (GET only):

- ``/``, ``/dashboard.js``, ``/dashboard.css``: the page (:mod:`~swarmbus.dashboard.page`);
- ``/api/state``: :meth:`~swarmbus.dashboard.state.DashboardState.snapshot` as JSON;
- ``/api/events``: Server-Sent Events (``text/event-stream``): first ``event: snapshot`` (the
  same JSON), then one event per change (``event: <kind>``, ``data:`` the view as JSON, ``id:``
  a growing number; kinds in :mod:`~swarmbus.dashboard.state`), and a ``: ping`` comment every
  :data:`PING_INTERVAL` seconds of quiet. A stream that falls too far behind is ended; the
  browser's EventSource reconnects and starts again from a snapshot.

Every response carries a strict Content-Security-Policy, ``nosniff``, ``no-referrer``, no
framing and ``no-store``. JSON is ASCII (``\\uXXXX`` escapes): a peer's text can never break
the stream's framing or the encoding.

Access (:class:`Guard`): with a ``token`` (bound beyond loopback, or ``--token-file``) every
request must carry it, as ``?token=`` or as the cookie the first visit sets (``HttpOnly``,
``SameSite=Strict``; the page is then reloaded without the token in its address), compared in
constant time; otherwise 401. Without a token (loopback) the ``Host`` header must name a
loopback address, so a page elsewhere cannot reach the dashboard through DNS rebinding.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from swarmbus.dashboard.collector import Collector
from swarmbus.dashboard.page import CONTENT_SECURITY_POLICY, asset
from swarmbus.dashboard.state import DashboardState

PING_INTERVAL = 15.0
"""Seconds of quiet after which a stream gets a comment line (so a dead client is noticed)."""
BATCH = 500
"""Events written to a stream in one chunk at most."""

SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def to_json(value: Any) -> str:
    """Compact, ASCII-only JSON (lone surrogates from a peer's text stay escapes)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True)


def sse(seq: int, kind: str, view: Any) -> str:
    """One Server-Sent Event."""
    return f"id: {seq}\nevent: {kind}\ndata: {to_json(view)}\n\n"


def host_of(header: str) -> str:
    """The host name of a ``Host`` header value (``[::1]:8080`` -> ``::1``), lower-cased."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Guard:
    """ASGI middleware: the token (or, without one, a loopback ``Host``) and the security headers."""

    def __init__(self, app: ASGIApp, *, token: str | None, cookie: str, hosts: frozenset[str] | None) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.cookie = cookie
        self.hosts = hosts

    def _matches(self, given: str | None) -> bool:
        return given is not None and self.token is not None and hmac.compare_digest(given.encode(), self.token)

    def _cookie_value(self, header: str) -> str | None:
        for part in header.split(";"):
            name, _, value = part.strip().partition("=")
            if name == self.cookie:
                return value
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.hosts is not None and host_of(headers.get("host", "")) not in self.hosts:
            await _plain(send, 400, "unexpected Host header: open the address swarmbus dashboard printed")
            return
        set_cookie = None
        if self.token is not None:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            by_query = self._matches((query.get("token") or [None])[0])
            if not by_query and not self._matches(self._cookie_value(headers.get("cookie", ""))):
                await _plain(send, 401, "unauthorized: open the address with ?token=... that swarmbus dashboard "
                                        "printed (or the token in its --token-file)")
                return
            if by_query:
                set_cookie = (f"{self.cookie}={self.token.decode()}; Path=/; HttpOnly; SameSite=Strict").encode()
                if scope.get("path") == "/":  # keep the token out of the address bar and the history
                    await _plain(send, 303, "see /", extra=[(b"location", b"/"), (b"set-cookie", set_cookie)])
                    return

        async def guarded(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS,
                                      *([(b"set-cookie", set_cookie)] if set_cookie else [])]
            await send(message)

        await self.app(scope, receive, guarded)


async def _plain(send: Send, status: int, body: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    data = (body + "\n").encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(data)).encode()), *SECURITY_HEADERS, *(extra or [])]})
    await send({"type": "http.response.body", "body": data})


def create_app(collector: Collector, *, token: str | None = None, cookie: str = "swarmbus_dashboard",
               hosts: frozenset[str] | None = LOOPBACK_HOSTS) -> ASGIApp:
    """The app for ``collector``'s state. ``token``: required on every request (None: none);
    ``hosts``: the ``Host`` names accepted (None: any; give None with a token)."""
    state: DashboardState = collector.state

    async def page(request: Request) -> Response:
        body, media_type = asset(request.url.path)
        return Response(body, media_type=media_type)

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)

    async def api_state(request: Request) -> Response:
        return Response(to_json(state.snapshot()), media_type="application/json")

    async def api_events(request: Request) -> Response:
        sub, snapshot = state.subscribe()

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 2000\n\n" + sse(snapshot["seq"], "snapshot", snapshot)
                while True:
                    try:
                        event = await asyncio.wait_for(sub.queue.get(), PING_INTERVAL)
                    except TimeoutError:
                        yield ": ping\n\n"
                        continue
                    if event is None:
                        return
                    chunk = [sse(*event)]
                    while not sub.queue.empty() and len(chunk) < BATCH:
                        more = sub.queue.get_nowait()
                        if more is None:
                            yield "".join(chunk)
                            return
                        chunk.append(sse(*more))
                    yield "".join(chunk)
            finally:
                state.unsubscribe(sub)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"x-accel-buffering": "no"})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await collector.start()
        try:
            yield
        finally:
            await collector.stop()

    routes = [Route(path, page, methods=["GET"]) for path in ("/", "/dashboard.js", "/dashboard.css")]
    routes += [Route("/favicon.ico", favicon, methods=["GET"]),
               Route("/api/state", api_state, methods=["GET"]),
               Route("/api/events", api_events, methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan)
    return Guard(app, token=token, cookie=cookie, hosts=hosts)
