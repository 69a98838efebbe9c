"""The Codex plugin against the real ``codex`` binary and a loopback Responses API mock.

Opt-in: ``tox -e real-codex``. Each test has its own broker, HOME (``~/.codex`` with the mock as
the model provider), daemon and mock. Init runs the plugin's real steps (the real
``codex --version``; the MCP server registered in config.toml, which the real Codex then starts).
Each test prints ``latency <path>: <seconds>`` from ``swarmbus send`` (a CLI process, included)
to the mock's model request carrying the message (bench/wake_latency.py collects them).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from codex_real_support import AGENT, RealBus, UserSession  # type: ignore[import-not-found]
from responses_mock import ResponsesMock  # type: ignore[import-not-found]

from swarmbus import Settings
from swarmbus.testing import StepResult, report_latency, run_step, wait_for
from swarmbus_codex.config import CodexSettings
from swarmbus_codex.install import init_steps


def run_init(bus: RealBus) -> list[StepResult]:
    settings = Settings(agent_id=AGENT, host_type="codex", state_dir=Path(bus.env["SWARMBUS_STATE_DIR"]))
    settings.plugins["codex"] = CodexSettings(codex_path=bus.codex)
    results = [run_step(step.name, step.changes, dry_run=False) for step in init_steps(settings)]
    assert [r.status for r in results] == ["changed", "changed", "unchanged"], [(r.name, r.lines) for r in results]
    assert results[-1].lines[0].startswith("codex-cli ")  # the real `codex --version`
    return results


def tools(request: dict[str, Any]) -> list[str]:
    return [str(t.get("name")) for t in request["body"].get("tools", [])]


def text(turn_input: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": turn_input}]


def nth_wake(bus: RealBus, n: int) -> str:
    """The detail of the ``n``-th ok wake (1-based), once there is one."""
    details = wait_for(lambda: len(bus.deliveries()) >= n and bus.deliveries(), 60, f"wake {n} in the inbox")
    return details[n - 1]


def wake_test(bus: RealBus) -> dict[str, dict[str, Any]]:
    proc = bus.cli("wake", "test", "--agent-id", AGENT, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {row["name"]: row for row in json.loads(proc.stdout)["paths"]}


def test_messages_reach_the_model_through_a_running_app_server(bus: RealBus, mock: ResponsesMock) -> None:
    run_init(bus)
    bus.start_app_server()
    user = UserSession(bus.socket)  # the user's own client on the same app-server
    try:
        thread = user.request("thread/start", {"cwd": str(bus.root / "work")})["thread"]["id"]
        warmup = user.request("turn/start", {"threadId": thread, "input": text("MARKER-USER-WARMUP")})["turn"]["id"]
        mock.wait_for_marker("MARKER-USER-WARMUP")
        wait_for(lambda: user.turn_completed(warmup), 60, "the user's first turn to complete")
        bus.config(thread_id=thread)
        bus.start_daemon()

        # -- an idle thread: the message starts a turn -------------------------------------------
        marker = f"MARKER-AS-IDLE-{time.time_ns()}"
        started = time.time()
        bus.send(f"{marker}: please look at the build", subject="build")
        (request,) = mock.wait_for_marker(marker)
        report_latency("codex app-server (idle thread)", request["at"] - started)
        assert "UNTRUSTED DATA" in request["raw"] and "MARKER-USER-WARMUP" in request["raw"]  # the user's thread
        assert "mcp__swarmbus" in tools(request)  # the MCP server init registered, started by the real Codex
        detail = nth_wake(bus, 1)
        assert "app-server: codex app-server accepted turn " in detail and "(new turn)" in detail, detail
        assert f"on thread {thread}" in detail
        # the user's client follows that turn (its notifications go to the thread's subscribers)
        wait_for(lambda: any(marker in json.dumps(n) for n in user.notifications), 30, "the user to see the turn")

        # -- the user's turn is in flight: the message is steered into it ------------------------
        slow = "MARKER-USER-SLOW"
        mock.hold(slow)
        running = user.request("turn/start", {"threadId": thread, "input": text(slow)})["turn"]["id"]
        mock.wait_for_marker(slow)
        steer = f"MARKER-AS-STEER-{time.time_ns()}"
        started = time.time()
        bus.send(steer, subject="while you work")
        try:
            # Codex drops the model request in flight and asks again with the steered text (0.171.0)
            (follow,) = mock.wait_for_marker(steer)
        finally:
            mock.release()
        report_latency("codex app-server (steered into a running turn)", follow["at"] - started)
        assert slow in follow["raw"] and "UNTRUSTED DATA" in follow["raw"]  # the same turn, the framed message
        detail = nth_wake(bus, 2)
        assert f"accepted turn {running} (steered into the running turn)" in detail, detail
        wait_for(lambda: user.turn_completed(running), 60, "the steered turn to complete")

        # -- `swarmbus wake test`: the app-server is ready; a headless run would be a second writer
        rows = wake_test(bus)
        assert rows["app-server"]["ready"] and rows["app-server"]["detail"] == "tested end to end"
        assert not rows["headless"]["ready"] and "second writer" in rows["headless"]["detail"]
    finally:
        user.close()
    print(bus.log()[-3000:])


def test_headless_wakes_then_an_app_server_resumes_the_thread(bus: RealBus, mock: ResponsesMock) -> None:
    run_init(bus)
    bus.start_daemon()

    # -- no app-server: `codex exec` starts the agent's thread ----------------------------------
    first = f"MARKER-HL-NEW-{time.time_ns()}"
    started = time.time()
    bus.send(first)
    (request,) = mock.wait_for_marker(first, 120)
    report_latency("codex headless exec (new thread)", request["at"] - started)
    assert "UNTRUSTED DATA" in request["raw"]
    assert "mcp__swarmbus" in tools(request), (tools(request), bus.log()[-3000:])
    detail = nth_wake(bus, 1)
    assert "headless: codex exec exited 0" in detail and "(new thread)" in detail, detail
    thread = json.loads((bus.state / "codex-thread.json").read_text())["thread_id"]
    assert f"thread {thread} (new thread)" in detail

    # -- `codex exec resume` continues it --------------------------------------------------------
    second = f"MARKER-HL-RESUME-{time.time_ns()}"
    started = time.time()
    bus.send(second)
    (request,) = mock.wait_for_marker(second, 120)
    report_latency("codex headless exec resume", request["at"] - started)
    assert first in request["raw"]  # the same conversation
    assert "mcp__swarmbus" in tools(request)  # -c mcp_servers.swarmbus.required=true: Codex waited for it
    detail = nth_wake(bus, 2)
    assert f"thread {thread} (resumed)" in detail, detail

    # -- an app-server starts: the thread is on disk but not loaded there -> thread/resume, turn/start
    bus.start_app_server()
    third = f"MARKER-AS-RESUME-{time.time_ns()}"
    started = time.time()
    bus.send(third)
    (request,) = mock.wait_for_marker(third, 120)
    report_latency("codex app-server (thread not loaded: resume)", request["at"] - started)
    assert first in request["raw"] and second in request["raw"]
    detail = nth_wake(bus, 3)
    assert "app-server: codex app-server accepted turn " in detail and "resumed the thread" in detail, detail
    assert f"on thread {thread}" in detail

    # -- and now it is loaded: the next message is a plain turn/start ------------------------------
    fourth = f"MARKER-AS-LOADED-{time.time_ns()}"
    wait_for(lambda: len(mock.requests) >= 3 and not _turn_running(bus, thread), 60, "the resumed turn to end")
    started = time.time()
    bus.send(fourth)
    (request,) = mock.wait_for_marker(fourth, 120)
    report_latency("codex app-server (loaded thread, no client attached)", request["at"] - started)
    detail = nth_wake(bus, 4)
    assert "(new turn)" in detail and "resumed" not in detail, detail
    rows = wake_test(bus)
    assert not rows["headless"]["ready"] and "second writer" in rows["headless"]["detail"]
    print(bus.log()[-3000:])


def test_the_app_server_codex_starts_for_its_tui_is_discovered(bus: RealBus, mock: ResponsesMock) -> None:
    """Codex's TUI (0.171.0) runs its threads in a managed app-server daemon on Codex's default
    socket; ``codex app-server daemon start`` starts the same one. The waker finds it there."""
    run_init(bus)
    bus.start_managed_daemon()
    bus.start_daemon()
    first = f"MARKER-MANAGED-NEW-{time.time_ns()}"
    started = time.time()
    bus.send(first)
    (request,) = mock.wait_for_marker(first, 120)
    report_latency("codex managed app-server daemon (new thread)", request["at"] - started)
    detail = nth_wake(bus, 1)
    assert "app-server: codex app-server accepted turn " in detail and "started the thread" in detail, detail
    assert f"via unix://{bus.managed_socket}" in detail
    thread = json.loads((bus.state / "codex-thread.json").read_text())["thread_id"]

    second = f"MARKER-MANAGED-IDLE-{time.time_ns()}"
    wait_for(lambda: not _turn_running(bus, thread, bus.managed_socket), 60, "the first turn to end")
    started = time.time()
    bus.send(second)
    (request,) = mock.wait_for_marker(second, 120)
    report_latency("codex managed app-server daemon (idle thread)", request["at"] - started)
    assert first in request["raw"] and "mcp__swarmbus" in tools(request)
    detail = nth_wake(bus, 2)
    assert f"(new turn) on thread {thread}" in detail and "started the thread" not in detail, detail


def _turn_running(bus: RealBus, thread: str, socket: Path | None = None) -> bool:
    import asyncio

    from swarmbus_codex import appserver

    async def status() -> str:
        client = await appserver.Client.connect(socket or bus.socket, timeout=5)
        try:
            return await appserver.thread_status(client, thread)
        finally:
            await client.close()

    return asyncio.run(status()) == "active"
