"""A fake OpenClaw gateway (protocol v4) that validates what it is given and records it.

It runs a ``websockets`` asyncio server on 127.0.0.1 (a free port) in a background thread, so
synchronous tests, the plugin's own asyncio code and a daemon in another process can all talk
to it. Like the real gateway it:

- sends ``connect.challenge`` ({nonce, ts}) first and requires ``connect`` as the first frame;
- validates ``connect`` params strictly: closed objects (unknown keys are rejected), the closed
  enums for ``client.id`` and ``client.mode``, protocol range covering 4, the shared token
  (a mismatch is ``INVALID_REQUEST`` with ``details.code = AUTH_TOKEN_MISMATCH``), and a
  ``device`` when one is given: the nonce, ``id == sha256(raw public key)`` and the Ed25519
  signature over the v3 payload;
- answers ``hello-ok`` with the requested scopes that it grants;
- answers ``agent`` with two ``res`` frames (``accepted``, then the final result), replays the
  cached final result as one frame for a repeated ``idempotencyKey``, and answers
  ``agent.wait``;
- can be told to answer ``UNAVAILABLE`` with ``retryAfterMs`` the next N times, or to close the
  connection with code 1012 (restart) on the next N ``agent`` requests.

Every frame in and out is recorded with a ``time.monotonic()`` timestamp.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from websockets.asyncio.server import ServerConnection, serve

from swarmbus import testing

CLIENT_IDS = {
    "webchat-ui", "openclaw-control-ui", "openclaw-browser-copilot", "openclaw-tui", "webchat", "cli",
    "gateway-client", "openclaw-macos", "openclaw-linux", "openclaw-ios", "openclaw-watchos", "openclaw-android",
    "node-host", "openclaw-worker", "test", "fingerprint", "openclaw-probe",
}
CLIENT_MODES = {"webchat", "cli", "ui", "backend", "node", "worker", "probe", "test"}
CONNECT_KEYS = {"minProtocol", "maxProtocol", "client", "caps", "commands", "permissions", "pathEnv", "role",
                "scopes", "device", "auth", "locale", "userAgent"}
CLIENT_KEYS = {"id", "displayName", "version", "platform", "deviceFamily", "modelIdentifier", "mode", "instanceId",
               "buildId", "timeZone"}
AUTH_KEYS = {"token", "bootstrapToken", "deviceToken", "password", "approvalRuntimeToken", "agentRuntimeIdentityToken"}
DEVICE_KEYS = {"id", "publicKey", "signature", "signedAt", "nonce"}
AGENT_KEYS = {
    "message", "agentId", "provider", "model", "to", "replyTo", "sessionId", "sessionKey", "thinking", "deliver",
    "attachments", "channel", "replyChannel", "accountId", "replyAccountId", "threadId", "groupId", "groupChannel",
    "groupSpace", "timeout", "bestEffortDeliver", "lane", "promptMode", "extraSystemPrompt", "inputProvenance",
    "idempotencyKey", "label", "voiceWakeTrigger",
}


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _norm(value: Any) -> str:
    if not isinstance(value, str):
        return ""
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in value.strip())


class Reject(Exception):
    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.shape: dict[str, Any] = {"code": code, "message": message, **extra}
        if details is not None:
            self.shape["details"] = details


@dataclass
class Recorded:
    t: float
    direction: str  # "in" (client -> gateway) or "out"
    conn: int
    frame: dict[str, Any]


@dataclass
class FakeGateway:
    token: str | None = "test-token"
    grant_scopes: tuple[str, ...] = ("operator.read", "operator.write", "operator.admin")
    protocol: int = 4
    final_delay: float = 0.0
    hold: threading.Event | None = None  # when set to an Event, runs finish only once it is set
    frames: list[Recorded] = field(default_factory=list)
    connects: list[dict[str, Any]] = field(default_factory=list)
    verified_devices: list[str] = field(default_factory=list)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._unavailable: list[int] = []  # remaining count, retryAfterMs
        self._unavailable_on = "agent"
        self._close_1012 = 0
        self._go_away = False
        self._lock = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._conn_ids = iter(range(1, 1_000_000))
        self._inflight: dict[str, asyncio.Event] = {}
        self._runs_tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    # -- control ----------------------------------------------------------------------------
    def unavailable(self, times: int, retry_after_ms: int, *, on: str = "agent") -> None:
        """Answer the next ``times`` ``agent`` (or ``connect``) requests with UNAVAILABLE."""
        self._unavailable = [times, retry_after_ms]
        self._unavailable_on = on

    def close_with_restart(self, times: int, *, go_away: bool = False) -> None:
        """Close the connection with code 1012 on the next ``times`` ``agent`` requests; with
        ``go_away`` also stop listening (as if the restart never came back)."""
        self._close_1012 = times
        self._go_away = go_away

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def requests(self, method: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.frames if r.direction == "in" and r.frame.get("method") == method]

    def agent_params(self) -> list[dict[str, Any]]:
        return [r.frame.get("params") or {} for r in self.requests("agent")]

    def wait_for(self, predicate: Callable[[FakeGateway], Any], timeout: float = 20.0) -> Any:
        """Block until ``predicate(self)`` is truthy (re-checked on every recorded frame)."""
        return testing.wait_on(self._lock, lambda: predicate(self), timeout,
                               lambda: f"fake gateway: {len(self.frames)} frames recorded")

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> FakeGateway:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)

            async def main() -> None:
                self._server = await serve(self._handle, "127.0.0.1", 0, max_size=64 * 1024 * 1024,
                                           compression=None)
                self.port = self._server.sockets[0].getsockname()[1]
                ready.set()
                await self._server.wait_closed()

            loop.run_until_complete(main())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-openclaw-gateway", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake gateway did not start")
        return self

    def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()  # never leave a held run blocking an executor thread
        if self._loop is not None and self._server is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile: nothing to close
                self._loop.call_soon_threadsafe(self._server.close)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FakeGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- protocol ---------------------------------------------------------------------------
    def _record(self, direction: str, conn: int, frame: dict[str, Any]) -> None:
        with self._lock:
            self.frames.append(Recorded(time.monotonic(), direction, conn, frame))
            self._lock.notify_all()

    async def _send(self, ws: ServerConnection, conn: int, frame: dict[str, Any]) -> None:
        self._record("out", conn, frame)
        await ws.send(json.dumps(frame))

    async def _handle(self, ws: ServerConnection) -> None:
        conn = next(self._conn_ids)
        nonce = str(uuid.uuid4())
        await self._send(ws, conn, {"type": "event", "event": "connect.challenge",
                                    "payload": {"nonce": nonce, "ts": int(time.time() * 1000)}})
        tasks: set[asyncio.Task[None]] = set()
        hello = False
        try:
            async for raw in ws:
                frame = json.loads(raw)
                self._record("in", conn, frame)
                if frame.get("type") != "req" or not frame.get("id") or not frame.get("method"):
                    await ws.close(1008, "invalid frame")
                    return
                if not hello:
                    if frame["method"] != "connect":
                        await ws.close(1008, "first request must be connect")
                        return
                    try:
                        payload = self._connect(frame.get("params"), nonce)
                    except Reject as exc:
                        await self._send(ws, conn, {"type": "res", "id": frame["id"], "ok": False, "error": exc.shape})
                        if exc.shape["code"] != "UNAVAILABLE":
                            await ws.close(1008, exc.shape["message"][:100])
                        return
                    hello = True
                    await self._send(ws, conn, {"type": "res", "id": frame["id"], "ok": True, "payload": payload})
                    continue
                if frame["method"] == "agent":
                    if self._close_1012 > 0:
                        self._close_1012 -= 1
                        await ws.close(1012, "service restart")
                        if self._go_away:
                            self._server.close()
                        return
                    # like the real gateway, a run goes on when its client disconnects
                    run = asyncio.create_task(self._agent(ws, conn, frame))
                    self._runs_tasks.add(run)
                    run.add_done_callback(self._runs_tasks.discard)
                elif frame["method"] == "agent.wait":
                    task = asyncio.create_task(self._agent_wait(ws, conn, frame))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                else:
                    await self._send(ws, conn, {"type": "res", "id": frame["id"], "ok": False, "error": {
                        "code": "INVALID_REQUEST", "message": f"unknown method: {frame['method']}"}})
        except Exception:  # noqa: S110 - a dropped client is not the fake's problem
            pass
        finally:
            for task in tasks:
                task.cancel()

    def _take_unavailable(self, on: str) -> Reject | None:
        if self._unavailable and self._unavailable[0] > 0 and self._unavailable_on == on:
            self._unavailable[0] -= 1
            return Reject("UNAVAILABLE", "gateway starting", {"reason": "startup-sidecars"}, retryable=True,
                          retryAfterMs=self._unavailable[1])
        return None

    def _connect(self, params: Any, nonce: str) -> dict[str, Any]:
        def invalid(msg: str) -> Reject:
            return Reject("INVALID_REQUEST", f"invalid connect params: {msg}")

        if not isinstance(params, dict):
            raise invalid("at root: must be object")
        extra = set(params) - CONNECT_KEYS
        if extra:
            raise invalid(f"at root: unexpected property '{sorted(extra)[0]}'")
        for key in ("minProtocol", "maxProtocol"):
            if not isinstance(params.get(key), int) or params[key] < 1:
                raise invalid(f"at /{key}: must be integer >= 1")
        if not params["minProtocol"] <= self.protocol <= params["maxProtocol"]:
            raise Reject("INVALID_REQUEST", "protocol mismatch", {"expectedProtocol": self.protocol})
        client = params.get("client")
        if not isinstance(client, dict):
            raise invalid("at /client: must be object")
        extra = set(client) - CLIENT_KEYS
        if extra:
            raise invalid(f"at /client: unexpected property '{sorted(extra)[0]}'")
        if client.get("id") not in CLIENT_IDS:
            raise invalid("at /client/id: must be equal to one of the allowed values")
        if client.get("mode") not in CLIENT_MODES:
            raise invalid("at /client/mode: must be equal to one of the allowed values")
        for key in ("version", "platform"):
            if not isinstance(client.get(key), str) or not client[key]:
                raise invalid(f"at /client/{key}: must NOT have fewer than 1 characters")
        if "displayName" in client and (not isinstance(client["displayName"], str) or not client["displayName"]):
            raise invalid("at /client/displayName: must NOT have fewer than 1 characters")
        scopes = params.get("scopes", [])
        if not isinstance(scopes, list) or not all(isinstance(s, str) and s for s in scopes):
            raise invalid("at /scopes: must be array of non-empty strings")
        auth = params.get("auth") or {}
        if not isinstance(auth, dict) or set(auth) - AUTH_KEYS:
            raise invalid("at /auth: unexpected property")
        rejected = self._take_unavailable("connect")
        if rejected:
            raise rejected
        if self.token is not None and auth.get("token") != self.token:
            reason = "token_missing" if not auth.get("token") else "token_mismatch"
            raise Reject("INVALID_REQUEST", "unauthorized: gateway token mismatch (provide gateway auth token)"
                         if reason == "token_mismatch" else "unauthorized: gateway token missing",
                         {"code": "AUTH_TOKEN_MISMATCH" if reason == "token_mismatch" else "AUTH_TOKEN_MISSING",
                          "authReason": reason, "canRetryWithDeviceToken": False,
                          "recommendedNextStep": "update_auth_credentials"})
        role = params.get("role") or "operator"
        if "device" in params:
            self._verify_device(params, client, role, scopes, auth, nonce)
        self.connects.append(params)
        granted = [s for s in scopes if s in self.grant_scopes]
        return {"type": "hello-ok", "protocol": self.protocol,
                "server": {"version": "fake-2026.9.6", "connId": str(uuid.uuid4())},
                "features": {"methods": ["agent", "agent.wait", "health"], "events": ["tick", "agent", "chat"]},
                "snapshot": {}, "auth": {"method": "token", "role": role, "scopes": granted},
                "policy": {"maxPayload": 26214400, "maxBufferedBytes": 52428800, "tickIntervalMs": 30000}}

    def _verify_device(self, params: dict[str, Any], client: dict[str, Any], role: str, scopes: list[str],
                       auth: dict[str, Any], nonce: str) -> None:
        device = params["device"]
        if not isinstance(device, dict) or set(device) != DEVICE_KEYS:
            raise Reject("INVALID_REQUEST", "invalid connect params: at /device: must have id, publicKey, "
                         "signature, signedAt, nonce and nothing else")
        if device["nonce"] != nonce:
            raise Reject("INVALID_REQUEST", "device nonce mismatch", {"code": "DEVICE_AUTH_NONCE_MISMATCH"})
        if not isinstance(device["signedAt"], int) or abs(device["signedAt"] - time.time() * 1000) > 120_000:
            raise Reject("INVALID_REQUEST", "device signature expired", {"code": "DEVICE_AUTH_SIGNATURE_EXPIRED"})
        raw = _b64url_decode(device["publicKey"])
        if len(raw) != 32 or hashlib.sha256(raw).hexdigest() != device["id"]:
            raise Reject("INVALID_REQUEST", "device id does not match its public key",
                         {"code": "DEVICE_AUTH_DEVICE_ID_MISMATCH"})
        token = auth.get("token") or auth.get("deviceToken") or auth.get("bootstrapToken") or ""
        payload = "|".join(["v3", device["id"], client["id"], client["mode"], role, ",".join(scopes),
                            str(device["signedAt"]), token, nonce, _norm(client.get("platform")),
                            _norm(client.get("deviceFamily"))])
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(_b64url_decode(device["signature"]), payload.encode())
        except (InvalidSignature, ValueError):
            raise Reject("INVALID_REQUEST", "device signature invalid",
                         {"code": "DEVICE_AUTH_SIGNATURE_INVALID", "reason": "device-signature"}) from None
        self.verified_devices.append(device["id"])

    async def _agent_wait(self, ws: ServerConnection, conn: int, frame: dict[str, Any]) -> None:
        params = frame.get("params") or {}
        run_id = params.get("runId", "")
        done = self._inflight.get(run_id)
        if done is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), params.get("timeoutMs", 30000) / 1000)
        payload = self.runs.get(run_id) or {"runId": run_id, "status": "timeout"}
        await self._send(ws, conn, {"type": "res", "id": frame["id"], "ok": True, "payload": payload})

    async def _agent(self, ws: ServerConnection, conn: int, frame: dict[str, Any]) -> None:
        rid = frame["id"]
        params = frame.get("params")
        try:
            if not isinstance(params, dict):
                raise Reject("INVALID_REQUEST", "invalid agent params: at root: must be object")
            extra = set(params) - AGENT_KEYS
            if extra:
                raise Reject("INVALID_REQUEST", f"invalid agent params: at root: unexpected property '{sorted(extra)[0]}'")
            for key in ("message", "idempotencyKey"):
                if not isinstance(params.get(key), str) or not params[key]:
                    raise Reject("INVALID_REQUEST", f"invalid agent params: at /{key}: must NOT have fewer than 1 characters")
            if "label" in params and not (isinstance(params["label"], str) and 1 <= len(params["label"]) <= 512):
                raise Reject("INVALID_REQUEST", "invalid agent params: at /label")
            if "timeout" in params and not (isinstance(params["timeout"], int) and params["timeout"] >= 0):
                raise Reject("INVALID_REQUEST", "invalid agent params: at /timeout: must be integer")
            if "deliver" in params and not isinstance(params["deliver"], bool):
                raise Reject("INVALID_REQUEST", "invalid agent params: at /deliver: must be boolean")
            rejected = self._take_unavailable("agent")
            if rejected:
                raise rejected
        except Reject as exc:
            await self._send(ws, conn, {"type": "res", "id": rid, "ok": False, "error": exc.shape})
            return
        key = params["idempotencyKey"]
        cached = self.runs.get(key)
        if cached is not None:
            await self._send(ws, conn, {"type": "res", "id": rid, "ok": True, "payload": cached})
            return
        if key in self._inflight:  # a repeated key while its run is going: one frame, no final
            await self._send(ws, conn, {"type": "res", "id": rid, "ok": True, "payload": {
                "runId": key, "status": "in_flight", "sessionKey": params.get("sessionKey"),
                "agentId": params.get("agentId") or "main"}})
            return
        self._inflight[key] = asyncio.Event()
        session_key = params.get("sessionKey") or "agent:main:main"
        agent_id = params.get("agentId") or "main"
        with contextlib.suppress(Exception):
            await self._send(ws, conn, {"type": "res", "id": rid, "ok": True, "payload": {
                "runId": key, "sessionKey": session_key, "agentId": agent_id, "status": "accepted",
                "acceptedAt": int(time.time() * 1000)}})
            await self._send(ws, conn, {"type": "event", "event": "agent", "payload": {
                "runId": key, "seq": 1, "stream": "lifecycle", "ts": int(time.time() * 1000),
                "data": {"phase": "start"}}})
        if self.final_delay:
            await asyncio.sleep(self.final_delay)
        if self.hold is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.hold.wait)
        final = {"runId": key, "status": "ok", "summary": "completed",
                 "result": {"payloads": [{"text": "fake reply", "mediaUrl": None}], "meta": {"durationMs": 1}}}
        self.runs[key] = final
        self._inflight.pop(key).set()
        with contextlib.suppress(Exception):  # the client may have gone: the run still finished
            await self._send(ws, conn, {"type": "res", "id": rid, "ok": True, "payload": final})
