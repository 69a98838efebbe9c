"""A small Python client of the OpenClaw gateway WebSocket protocol, version 4.

Frames are JSON text messages::

    request   {type: "req", id, method, params?}
    response  {type: "res", id, ok, payload?, error?}        error: {code, message, details?, retryable?, retryAfterMs?}
    event     {type: "event", event, payload?, seq?, stateVersion?}

The handshake: the server sends the ``connect.challenge`` event (a nonce and its clock in ms);
the client's first frame must be the ``connect`` request (protocol 4..4, a client id and mode
from the gateway's closed enums, role ``operator``, the scopes it wants, the shared token, and
optionally a ``device`` signed over the challenge, see :mod:`swarmbus_openclaw.identity`); the
server answers ``hello-ok`` with the granted role and scopes.

Responses are matched to requests by id and may arrive in any order. The ``agent`` method is
special: it answers twice on the same id, first ``{status: "accepted", runId}``, then the final
result; a replayed ``idempotencyKey`` gets the cached final result as a single frame.

Events are ignored except ``connect.challenge``. One :class:`GatewayClient` is one connection;
:func:`run_agent` adds the retry policy (``UNAVAILABLE`` with ``retryAfterMs``, close code 1012
on a gateway restart) around a fresh connection per attempt, always with the same
``idempotencyKey``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from swarmbus_openclaw.identity import DeviceIdentity
from swarmbus_openclaw.protocol import CLIENT_IDS, CLIENT_MODES, PROTOCOL_VERSION

DEFAULT_SCOPES = ("operator.read", "operator.write")
MAX_FRAME = 64 * 1024 * 1024  # hello-ok is large; the gateway's own policy caps payloads at 25 MiB
FINAL_STATUSES = frozenset({"ok", "error", "timeout", "aborted", "cancelled", "canceled", "failed"})
CLOSE_SERVICE_RESTART = 1012

log = logging.getLogger("swarmbus.openclaw.gateway")


class GatewayError(Exception):
    """An error from the gateway (a ``res`` with ``ok: false``) or about talking to it.

    ``code`` is the gateway's code (``INVALID_REQUEST``, ``UNAVAILABLE``, ``FORBIDDEN``,
    ``PAIRING_REQUIRED``, ...) or one of this client's: ``UNREACHABLE`` (nothing accepted the
    connection), ``CLOSED`` (the connection dropped), ``TIMEOUT``, ``PROTOCOL`` (an unexpected
    frame), ``HANDSHAKE`` (the WebSocket upgrade failed). ``details`` is the gateway's
    ``details`` object (``details["code"]`` is for example ``AUTH_TOKEN_MISMATCH``).
    """

    def __init__(self, code: str, message: str, *, retryable: bool | None = None,
                 retry_after_ms: int | None = None, details: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable
        self.retry_after_ms = retry_after_ms
        self.details = details

    @classmethod
    def from_shape(cls, shape: Any) -> GatewayError:
        if not isinstance(shape, Mapping):
            return cls("PROTOCOL", f"error response without an error object: {shape!r}"[:300])
        retry_after = shape.get("retryAfterMs")
        retryable = shape.get("retryable")
        return cls(str(shape.get("code") or "UNKNOWN"), str(shape.get("message") or ""),
                   retryable=retryable if isinstance(retryable, bool) else None,
                   retry_after_ms=int(retry_after) if isinstance(retry_after, int | float) else None,
                   details=shape.get("details"))

    @property
    def detail_code(self) -> str | None:
        """``details.code`` when the gateway gave one (e.g. ``AUTH_TOKEN_MISMATCH``)."""
        if isinstance(self.details, Mapping) and isinstance(self.details.get("code"), str):
            return str(self.details["code"])
        return None

    def describe(self) -> str:
        """One line for logs and outcomes: code, details.code, message."""
        extra = f" ({self.detail_code})" if self.detail_code else ""
        return f"{self.code}{extra}: {self.message}"


class GatewayUnreachable(GatewayError):
    """Nothing accepted the TCP connection (refused, no route, DNS, open timeout)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__("UNREACHABLE", f"gateway {url} not reachable ({reason})")
        self.url = url


class GatewayClosed(GatewayError):
    """The connection closed before the answer came. ``close_code`` 1012 is a gateway restart."""

    def __init__(self, close_code: int | None, reason: str = "") -> None:
        text = f"connection closed (code {close_code}{', ' + reason if reason else ''})"
        super().__init__("CLOSED", text, retryable=True)
        self.close_code = close_code


@dataclass(frozen=True)
class Hello:
    """The parts of ``hello-ok`` a client needs."""

    protocol: int
    server_version: str
    conn_id: str
    role: str
    scopes: tuple[str, ...]
    methods: frozenset[str]
    auth_method: str | None
    device_token: str | None = field(repr=False, default=None)

    @property
    def can_write(self) -> bool:
        return "operator.write" in self.scopes or "operator.admin" in self.scopes

    @classmethod
    def from_payload(cls, payload: Any) -> Hello:
        if not isinstance(payload, Mapping) or payload.get("type") != "hello-ok":
            raise GatewayError("PROTOCOL", f"connect answered without hello-ok: {str(payload)[:200]}")
        server, auth, features = _obj(payload.get("server")), _obj(payload.get("auth")), _obj(payload.get("features"))
        return cls(
            protocol=int(payload.get("protocol") or 0),
            server_version=str(server.get("version", "?")),
            conn_id=str(server.get("connId", "")),
            role=str(auth.get("role", "")),
            scopes=tuple(str(s) for s in auth.get("scopes") or ()),
            methods=frozenset(str(m) for m in features.get("methods") or ()),
            auth_method=auth.get("method") if isinstance(auth.get("method"), str) else None,
            device_token=auth.get("deviceToken") if isinstance(auth.get("deviceToken"), str) else None,
        )


@dataclass(frozen=True)
class AgentRun:
    """What the ``agent`` method said. ``accepted`` is the first payload (None for a replayed
    final result), ``final`` the final payload (None unless waited for or replayed), ``error``
    the final error when the run failed."""

    run_id: str
    status: str
    accepted: Mapping[str, Any] | None = None
    final: Mapping[str, Any] | None = None
    error: GatewayError | None = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None and (self.status == "ok" or self.status not in FINAL_STATUSES)

    @property
    def summary(self) -> str:
        final = self.final or {}
        return str(final.get("summary") or "")


@dataclass(frozen=True)
class ConnectOptions:
    """Everything needed to open and authenticate one connection."""

    url: str
    token: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    client_id: str = "gateway-client"
    client_mode: str = "backend"
    client_version: str = "0.1.0"
    display_name: str | None = None
    platform: str = sys.platform
    role: str = "operator"
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    identity: DeviceIdentity | None = field(default=None, repr=False)
    connect_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.client_id not in CLIENT_IDS:
            raise ValueError(f"client id {self.client_id!r} is not one the gateway accepts: {', '.join(CLIENT_IDS)}")
        if self.client_mode not in CLIENT_MODES:
            raise ValueError(f"client mode {self.client_mode!r} is not one of {', '.join(CLIENT_MODES)}")


def _ws_connect_kwargs(connect: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"max_size": MAX_FRAME, "compression": None,
                              "user_agent_header": "swarmbus-openclaw"}
    with contextlib.suppress(TypeError, ValueError):
        if "proxy" in inspect.signature(connect).parameters:
            kwargs["proxy"] = None  # never route a gateway connection through an environment proxy
    return kwargs


class GatewayClient:
    """One authenticated connection. ``async with GatewayClient(options) as client:`` connects
    and completes the handshake (``client.hello``); leaving the block closes it."""

    def __init__(self, options: ConnectOptions) -> None:
        self.options = options
        self.hello: Hello | None = None
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Queue[Mapping[str, Any] | GatewayError]] = {}
        self._challenge: asyncio.Future[Mapping[str, Any]] | None = None
        self._closed: GatewayClosed | None = None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> GatewayClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- connection -------------------------------------------------------------------------
    async def connect(self) -> Hello:
        """Open the socket, wait for the challenge, send ``connect``, return the hello."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidHandshake, InvalidURI

        opts = self.options
        loop = asyncio.get_running_loop()
        self._challenge = loop.create_future()
        try:
            self._ws = await connect(opts.url, open_timeout=opts.connect_timeout, **_ws_connect_kwargs(connect))
        except InvalidURI as exc:
            raise GatewayError("INVALID_URL", f"{opts.url!r} is not a ws:// or wss:// URL ({exc})") from None
        except InvalidHandshake as exc:
            raise GatewayError("HANDSHAKE", f"WebSocket upgrade to {opts.url} failed: {exc}") from None
        except (OSError, TimeoutError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or type(exc).__name__)
            raise GatewayUnreachable(opts.url, reason) from None
        self._reader = asyncio.create_task(self._read_loop(), name="openclaw-gateway-reader")
        try:
            try:
                challenge = await asyncio.wait_for(asyncio.shield(self._challenge), opts.connect_timeout)
            except TimeoutError:
                raise GatewayError("TIMEOUT", f"no connect.challenge from {opts.url} within "
                                   f"{opts.connect_timeout:g}s") from None
            nonce = challenge.get("nonce")
            if not isinstance(nonce, str) or not nonce:
                raise GatewayError("PROTOCOL", "connect.challenge without a nonce")
            params = self.connect_params(nonce, challenge.get("ts"))
            payload = await self.request("connect", params, timeout=opts.connect_timeout)
            self.hello = Hello.from_payload(payload)
            return self.hello
        except BaseException:
            await self.close()
            raise

    def connect_params(self, nonce: str, challenge_ts: Any) -> dict[str, Any]:
        opts = self.options
        client: dict[str, Any] = {"id": opts.client_id, "version": opts.client_version, "platform": opts.platform,
                                  "mode": opts.client_mode}
        if opts.display_name:
            client["displayName"] = opts.display_name
        params: dict[str, Any] = {"minProtocol": PROTOCOL_VERSION, "maxProtocol": PROTOCOL_VERSION, "client": client,
                                  "role": opts.role, "scopes": list(opts.scopes), "caps": [],
                                  "userAgent": f"swarmbus-openclaw/{opts.client_version}"}
        auth: dict[str, str] = {}
        if opts.token:
            auth["token"] = opts.token
        if opts.password:
            auth["password"] = opts.password
        if auth:
            params["auth"] = auth
        if opts.identity is not None:
            signed_at = int(challenge_ts) if isinstance(challenge_ts, int | float) and challenge_ts > 0 \
                else int(time.time() * 1000)
            params["device"] = opts.identity.device_params(
                client_id=opts.client_id, client_mode=opts.client_mode, role=opts.role, scopes=opts.scopes,
                token=opts.token, nonce=nonce, signed_at_ms=signed_at, platform=opts.platform)
        return params

    async def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2.0)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None

    async def _read_loop(self) -> None:
        from websockets.exceptions import ConnectionClosed

        ws = self._ws
        closed = GatewayClosed(None, "reader stopped")
        try:
            async for raw in ws:
                try:
                    frame = json.loads(raw)
                except ValueError:
                    log.debug("ignoring a non-JSON frame from the gateway")
                    continue
                if not isinstance(frame, dict):
                    continue
                kind = frame.get("type")
                if kind == "res":
                    queue = self._pending.get(str(frame.get("id")))
                    if queue is not None:
                        queue.put_nowait(frame)
                elif kind == "event" and frame.get("event") == "connect.challenge":
                    payload = frame.get("payload")
                    if self._challenge is not None and not self._challenge.done() and isinstance(payload, dict):
                        self._challenge.set_result(payload)
            closed = GatewayClosed(getattr(ws, "close_code", None), getattr(ws, "close_reason", "") or "")
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            closed = GatewayClosed(rcvd.code if rcvd else None, rcvd.reason if rcvd else "")
        except asyncio.CancelledError:
            closed = GatewayClosed(None, "closed by client")
            raise
        finally:
            self._closed = closed
            if self._challenge is not None and not self._challenge.done():
                self._challenge.set_exception(closed)
                self._challenge.exception()  # mark retrieved: nobody may be waiting any more
            for queue in self._pending.values():
                queue.put_nowait(closed)

    # -- requests ---------------------------------------------------------------------------
    async def _send_request(self, method: str, params: Mapping[str, Any] | None) -> tuple[
            str, asyncio.Queue[Mapping[str, Any] | GatewayError]]:
        if self._ws is None:
            raise self._closed or GatewayClosed(None, "not connected")
        request_id = f"sb{next(self._ids)}"
        queue: asyncio.Queue[Mapping[str, Any] | GatewayError] = asyncio.Queue()
        self._pending[request_id] = queue
        frame: dict[str, Any] = {"type": "req", "id": request_id, "method": method}
        if params is not None:
            frame["params"] = params
        if self._closed is not None:
            raise self._closed
        try:
            await self._ws.send(json.dumps(frame))
        except Exception as exc:
            self._pending.pop(request_id, None)
            raise self._closed or GatewayClosed(None, f"send failed: {exc}") from None
        return request_id, queue

    async def _next(self, queue: asyncio.Queue[Mapping[str, Any] | GatewayError], timeout: float | None,
                    what: str) -> Mapping[str, Any]:
        try:
            item = await asyncio.wait_for(queue.get(), timeout)
        except TimeoutError:
            raise GatewayError("TIMEOUT", f"no answer to {what} within {timeout:g}s") from None
        if isinstance(item, GatewayError):
            raise item
        return item

    async def request(self, method: str, params: Mapping[str, Any] | None = None, *,
                      timeout: float | None = 30.0) -> Any:
        """One request, one response: its payload, or GatewayError."""
        request_id, queue = await self._send_request(method, params)
        try:
            frame = await self._next(queue, timeout, method)
        finally:
            self._pending.pop(request_id, None)
        if not frame.get("ok"):
            raise GatewayError.from_shape(frame.get("error"))
        return frame.get("payload")

    async def agent(self, params: Mapping[str, Any], *, wait_final: bool = False,
                    accept_timeout: float = 30.0, final_timeout: float | None = 600.0) -> AgentRun:
        """Run ``agent``; return once it is accepted, or when it finished if ``wait_final``.

        Raises GatewayError when the gateway refused the request (nothing ran). A run that
        was accepted and then failed is returned with ``error`` set, not raised."""
        request_id, queue = await self._send_request("agent", params)
        try:
            first = await self._next(queue, accept_timeout, "agent")
            payload = _obj(first.get("payload"))
            run_id = str(payload.get("runId") or params.get("idempotencyKey") or "")
            status = str(payload.get("status") or "")
            if not first.get("ok"):
                refused = GatewayError.from_shape(first.get("error"))
                if payload.get("runId") and status in FINAL_STATUSES:
                    return AgentRun(run_id, status, final=payload, error=refused)  # a finished (failed) run
                raise refused
            if status in FINAL_STATUSES:  # a replayed idempotencyKey: the cached final result, one frame
                return AgentRun(run_id, status, final=payload, error=_run_error(status, payload))
            if not wait_final:
                return AgentRun(run_id, status or "accepted", accepted=payload)
            if status != "accepted":
                # A replayed key whose run is still going ("in_flight") gets one frame and no
                # final one on this request: wait for the run by id instead.
                return await self._wait_run(run_id, payload, final_timeout)
            second = await self._next(queue, final_timeout, "agent (final result)")
            final = _obj(second.get("payload"))
            final_status = str(final.get("status") or ("ok" if second.get("ok") else "error"))
            error = _run_error(final_status, final) if second.get("ok") else GatewayError.from_shape(second.get("error"))
            return AgentRun(run_id, final_status, accepted=payload, final=final, error=error)
        finally:
            self._pending.pop(request_id, None)

    async def _wait_run(self, run_id: str, accepted: Mapping[str, Any], timeout: float | None) -> AgentRun:
        params: dict[str, Any] = {"runId": run_id}
        if timeout is not None:
            params["timeoutMs"] = int(timeout * 1000)
        result = await self.request("agent.wait", params, timeout=None if timeout is None else timeout + 10)
        result = _obj(result)
        status = str(result.get("status") or "unknown")
        return AgentRun(run_id, status, accepted=accepted, final=result, error=_run_error(status, result))


def _obj(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a JSON object, else an empty one."""
    return value if isinstance(value, Mapping) else {}


def _run_error(status: str, payload: Mapping[str, Any]) -> GatewayError | None:
    if status == "ok":
        return None
    return GatewayError("RUN_" + status.upper(), str(payload.get("summary") or f"run ended with status {status}"))


# -- retry policy ---------------------------------------------------------------------------
def should_retry(exc: GatewayError) -> bool:
    """Retry a refused or interrupted ``agent`` call? (It is idempotent by ``idempotencyKey``.)"""
    if isinstance(exc, GatewayClosed):
        return True
    if exc.code == "UNAVAILABLE":
        return exc.retryable is not False
    return exc.retryable is True and exc.code not in ("INVALID_REQUEST", "FORBIDDEN", "PAIRING_REQUIRED")


def retry_delay(exc: GatewayError, attempt: int) -> float:
    """Seconds to wait before attempt ``attempt + 1``: the gateway's ``retryAfterMs`` when it
    gave one (never less), else exponential backoff with jitter (0.25 s, 0.5 s, 1 s, ... 8 s)."""
    if exc.retry_after_ms is not None:
        return exc.retry_after_ms / 1000.0
    base = min(8.0, 0.25 * 2.0 ** (attempt - 1))
    return float(base * (1 + random.random() * 0.25))


async def run_agent(
    options: ConnectOptions,
    params: Mapping[str, Any],
    *,
    wait_final: bool = False,
    timeout: float = 600.0,
    max_attempts: int = 5,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_retry: Callable[[int, GatewayError, float], None] | None = None,
) -> tuple[AgentRun, Hello]:
    """Connect, run ``agent`` with ``params`` and return (run, hello), retrying with a new
    connection and the same params (so the same ``idempotencyKey``) while the gateway says
    ``UNAVAILABLE`` or the connection drops (close code 1012 on a restart), up to
    ``max_attempts`` attempts and within ``timeout`` seconds overall.

    :class:`GatewayUnreachable` on the first attempt is raised at once (the caller may fall
    back to the CLI); after the gateway was reached once it is retried like a dropped
    connection (the gateway is probably restarting), and giving up then raises a ``CLOSED``
    GatewayError instead, so that the caller does not fall back and risk a second run."""
    deadline = time.monotonic() + timeout
    reached = False
    attempt = 0
    while True:
        attempt += 1
        try:
            async with GatewayClient(options) as client:
                reached = True
                assert client.hello is not None
                remaining = max(1.0, deadline - time.monotonic())
                run = await client.agent(params, wait_final=wait_final, accept_timeout=min(60.0, remaining),
                                         final_timeout=remaining)
                return _with_attempts(run, attempt), client.hello
        except GatewayError as exc:
            if isinstance(exc, GatewayUnreachable):
                retry = reached  # the gateway answered before: it is probably restarting
            else:
                reached = True
                retry = should_retry(exc)
            delay = retry_delay(exc, attempt)
            if not retry or attempt >= max_attempts or time.monotonic() + delay > deadline:
                if isinstance(exc, GatewayUnreachable) and reached:
                    # Not "unreachable" for the caller: the gateway may have accepted the run before
                    # it went away, and a CLI fallback (another idempotency key) could run it twice.
                    raise GatewayError("CLOSED", f"gateway went away during the wake ({exc.message})") from None
                raise
            if on_retry:
                on_retry(attempt, exc, delay)
            await sleep(delay)


def _with_attempts(run: AgentRun, attempts: int) -> AgentRun:
    from dataclasses import replace

    return replace(run, attempts=attempts)


async def probe(options: ConnectOptions) -> Hello:
    """Connect, complete the handshake and close: the hello (raises GatewayError)."""
    async with GatewayClient(options) as client:
        assert client.hello is not None
        return client.hello


def scopes_text(scopes: Sequence[str]) -> str:
    return ", ".join(scopes) if scopes else "none"
