"""Helpers of the real-codex tests: the isolated Codex home, a running ``codex app-server``, and a
"user session" (a second app-server client that stays connected, as a TUI attached with ``codex
--remote`` would)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarmbus import testing

AGENT = "cx"
MOCK_KEY = "MOCK_KEY"

CODEX_CONFIG = """\
# written by the swarmbus-codex real-codex tests: a loopback mock model, no outside lookups
model_provider = "mock"
model = "mock-1"
approval_policy = "never"
sandbox_mode = "read-only"

[model_providers.mock]
name = "mock"
base_url = "{base_url}"
wire_api = "responses"
env_key = "MOCK_KEY"
request_max_retries = 0
stream_max_retries = 0

[features]
plugins = false
remote_plugin = false
apps = false
in_app_updates = false

[analytics]
enabled = false
"""


@dataclass
class RealBus:
    """A broker, a temporary HOME with ``~/.codex``, the swarmbus env for the daemon and the CLI."""

    root: Path
    home: Path
    env: dict[str, str]
    codex: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def codex_home(self) -> Path:
        return self.home / ".codex"

    @property
    def socket(self) -> Path:
        return self.codex_home / "swarmbus-app-server.sock"

    @property
    def state(self) -> Path:
        return Path(self.env["SWARMBUS_STATE_DIR"]) / "agents" / AGENT

    def config(self, **section: Any) -> None:
        lines = ["[plugins.codex]", f"codex_path = {json.dumps(self.codex)}", f"env_passthrough = [\"{MOCK_KEY}\"]"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in section.items()]
        Path(self.env["SWARMBUS_CONFIG"]).write_text("\n".join(lines) + "\n")

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return testing.run_cli(self.env, *args, timeout=timeout)

    def send(self, body: str, subject: str = "task") -> str:
        proc = self.cli("send", "--agent-id", "planner", "--to", AGENT, "--subject", subject, "--body", body, "--json")
        assert proc.returncode == 0, proc.stderr
        return str(json.loads(proc.stdout)["id"])

    def start_daemon(self) -> None:
        log_path = self.root / "daemon.log"
        proc = testing.start_daemon(self.env, AGENT, log_path=log_path)
        self.procs.append(proc)
        testing.wait_daemon_connected(self.env, AGENT, proc, 30, log_path=log_path)

    def log(self) -> str:
        path = self.root / "daemon.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def deliveries(self) -> list[str]:
        """The wake details in ``swarmbus inbox``, oldest message first."""
        messages = json.loads(self.cli("inbox", "--agent-id", AGENT, "--json").stdout or "{}").get("messages", [])
        return [str(d.get("detail")) for m in sorted(messages, key=lambda m: m.get("seq", 0))
                for d in m.get("deliveries", []) if d.get("handler") == "wake" and d.get("status") == "ok"]

    def start_app_server(self) -> subprocess.Popen[bytes]:
        """``codex app-server --listen unix://~/.codex/swarmbus-app-server.sock`` (the socket the
        plugin discovers), until a handshake works there."""
        log = (self.root / "app-server.log").open("ab")
        work = self.root / "work"
        work.mkdir(exist_ok=True)
        proc = subprocess.Popen([self.codex, "app-server", "--listen", f"unix://{self.socket}"], env=self.env,
                                cwd=work, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        self.procs.append(proc)
        self._wait_answers(self.socket, proc)
        return proc

    def _wait_answers(self, socket: Path, proc: subprocess.Popen[bytes] | None) -> None:
        from swarmbus_codex.appserver import Client, Unreachable

        def answers() -> bool:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"codex app-server exited {proc.returncode}: "
                                     f"{(self.root / 'app-server.log').read_text(errors='replace')[-2000:]}")

            async def hello() -> bool:
                try:
                    client = await Client.connect(socket, timeout=2)
                except Unreachable:
                    return False
                await client.close()
                return True

            return asyncio.run(hello())

        testing.wait_for(answers, 60, f"codex app-server to answer on {socket}", interval=0.1)

    @property
    def managed_socket(self) -> Path:
        return self.codex_home / "app-server-control" / "app-server-control.sock"

    def start_managed_daemon(self) -> None:
        """``codex app-server daemon start``: the app-server Codex's TUI starts for itself (0.171.0),
        on its default socket ``$CODEX_HOME/app-server-control/app-server-control.sock``."""
        work = self.root / "work"
        work.mkdir(exist_ok=True)
        proc = subprocess.run([self.codex, "app-server", "daemon", "start"], env=self.env, cwd=work, timeout=120,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)
        self.managed = True
        assert proc.returncode == 0, proc.stdout + proc.stderr
        self._wait_answers(self.managed_socket, None)

    def _managed_pids(self) -> list[int]:
        """The processes of this test's managed daemon (their argv names its private CODEX_HOME)."""
        mark = f"{self.codex_home}/packages/app-server-daemon".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if mark in (entry / "cmdline").read_bytes():
                        pids.append(int(entry.name))
        return pids

    def stop(self) -> None:
        if getattr(self, "managed", False):
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run([self.codex, "app-server", "daemon", "stop"], env=self.env, timeout=60,
                               capture_output=True, stdin=subprocess.DEVNULL)
            for pid in self._managed_pids():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                testing.kill_process_group(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    testing.kill_process_group(proc.pid)
                    proc.wait(10)


class UserSession:
    """An app-server client that stays connected and keeps reading (notifications included), as
    the user's own client would: it starts the thread and may run turns of its own."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.notifications: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="codex-user-session", daemon=True)
        self._thread.start()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next = 0
        self._ws: Any = None
        self._call(self._open()).result(30)

    def _call(self, coro: Any) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def _open(self) -> None:
        from websockets.asyncio.client import unix_connect

        self._ws = await unix_connect(str(self.socket), uri="ws://localhost/", max_size=None, compression=None)
        self._reader = asyncio.ensure_future(self._read())
        await self._request("initialize", {"clientInfo": {"name": "swarmbus-test-user", "version": "1"},
                                           "capabilities": {"experimentalApi": True}})
        await self._ws.send(json.dumps({"method": "initialized"}))

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for raw in self._ws:
                message = json.loads(raw)
                if "method" in message:
                    self.notifications.append(message)
                    continue
                future = self._pending.pop(message.get("id"), None)
                if future is not None and not future.done():
                    future.set_result(message)

    async def _request(self, method: str, params: dict[str, Any]) -> Any:
        self._next += 1
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending[self._next] = future
        await self._ws.send(json.dumps({"id": self._next, "method": method, "params": params}))
        answer = await asyncio.wait_for(future, 60)
        if "error" in answer:
            raise AssertionError(f"{method}: {answer['error']}")
        return answer["result"]

    def request(self, method: str, params: dict[str, Any]) -> Any:
        return self._call(self._request(method, params)).result(90)

    def turn_completed(self, turn_id: str) -> bool:
        return any(n.get("method") == "turn/completed" and (n.get("params") or {}).get("turn", {}).get("id") == turn_id
                   for n in list(self.notifications))

    def close(self) -> None:
        async def shut() -> None:
            with contextlib.suppress(Exception):
                await self._ws.close()

        with contextlib.suppress(Exception):
            self._call(shut()).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def elapsed_until(request: dict[str, Any], started: float) -> float:
    return float(request["at"]) - started


def now() -> float:
    return time.time()
