"""Wake path ``session`` with the real ``claude``: the swarmbus MCP server inside a live session
registers the session's inbox socket with the daemon, and a message sent to the agent starts a
turn in that session (idle), or is read between tool calls (busy); with no live session the
router falls back to a headless resume. Opt-in: ``tox -e real-claude``.

Each test prints ``latency <path>: <seconds>`` (send -> the mock's model request) for
docs/benchmarks.md; ``SWARMBUS_LATENCY_OUT`` names a file they append those lines to.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from cc_real_support import AGENT, RealBus, report  # type: ignore[import-not-found]
from messages_mock import MockServer  # type: ignore[import-not-found]
from test_cc_real_claude import cc_config, requests_with, run_init, write_config  # type: ignore[import-not-found]

from swarmbus import testing
from swarmbus.testing import wait_for


class LiveSession:
    """A long-lived ``claude -p`` stream-json session (as an interactive one keeps running)."""

    def __init__(self, bus: RealBus, *extra: str) -> None:
        work = bus.root / "work"
        work.mkdir(exist_ok=True)
        self.proc = subprocess.Popen([bus.claude, "-p", "--input-format", "stream-json", "--output-format",
                                      "stream-json", "--verbose", *extra], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=work,
                                     env=bus.env)
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                self.events.append(event)

    def say(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"type": "user", "message": {"role": "user", "content": text}}) + "\n")
        self.proc.stdin.flush()

    def results(self) -> list[str]:
        with self.lock:
            return [str(e.get("result")) for e in self.events if e.get("type") == "result"]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def sessions(bus: RealBus) -> list[dict[str, Any]]:
    return list((testing.agent_status(AGENT, bus.env["SWARMBUS_STATE_DIR"]) or {}).get("host_sessions") or [])


def publish_from_peer(bus: RealBus, body: str) -> float:
    """Publish a message from `planner` to the agent as its daemon would (MQTT 5, QoS 1, the
    PUBACK awaited); return when the publish started."""
    import paho.mqtt.client as mqtt

    from swarmbus import new_envelope

    host, port = bus.env["SWARMBUS_BROKER_URL"].removeprefix("mqtt://").rsplit(":", 1)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="real-peer-planner", protocol=mqtt.MQTTv5)
    client.connect(host, int(port))
    client.loop_start()
    try:
        payload = new_envelope("planner", AGENT, "task", body, priority="high").to_wire()
        started = time.time()
        client.publish(f"agents/{AGENT}/inbox", payload, qos=1).wait_for_publish(10)
        return started
    finally:
        client.disconnect()
        client.loop_stop()


def cli_send(bus: RealBus, body: str) -> str:
    """``swarmbus send`` from ``planner`` by the console script a user runs (not ``python -m``);
    returns the message id."""
    script = Path(sys.executable).with_name("swarmbus")
    proc = subprocess.run([str(script), "send", "--agent-id", "planner", "--to", AGENT, "--subject", "task",
                           "--body", body, "--json"], env=bus.env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return str(json.loads(proc.stdout)["id"])


def turn(mock: MockServer, session: LiveSession, marker: str, label: str, started: float, results: int) -> None:
    """Wait for the model request carrying ``marker``, report its latency under ``label``, and
    wait for the turn's result (the session had ``results`` before), so the next message finds the
    session idle again."""
    request = first_request_with(mock, marker, f"the model request with {marker}")
    report(label, request["at"] - started)
    wait_for(lambda: len(session.results()) > results, 60, f"the result of the turn for {marker}")


def sent_at(bus: RealBus, body: str) -> float:
    started = time.time()
    bus.send(body)
    return started


def first_request_with(mock: MockServer, marker: str, what: str, timeout: float = 60) -> dict[str, Any]:
    return wait_for(lambda: next(iter(requests_with(mock, marker)), None), timeout, what)  # type: ignore[no-any-return]


def wake_detail(bus: RealBus) -> str:
    delivery = wait_for(lambda: testing.finished_delivery(bus.env, AGENT), 30, "the wake's outcome")
    return str(delivery["detail"])


def test_a_message_starts_a_turn_in_the_idle_live_session(bus: RealBus, mock: MockServer) -> None:
    cfg = cc_config(bus)  # wake_mode auto: session, rewake, resume
    run_init(bus, **cfg)  # registers `swarmbus mcp-server` with the real `claude mcp add -s user`
    write_config(bus, **cfg)
    mock.state.markers = ["MARKER-IDLE-ONE", "MARKER-SESSION-REAL", "MARKER-SESSION-MQTT", "MARKER-SESSION-DIRECT",
                          "UNTRUSTED DATA"]
    bus.start_daemon()
    session = LiveSession(bus)
    try:
        session.say("MARKER-IDLE-ONE")
        wait_for(lambda: session.results(), 120, "the session's first turn")
        registered = wait_for(lambda: sessions(bus), 60, "the MCP server inside the session to register it")
        assert registered[0]["pid"] == session.proc.pid
        before = len(mock.state.message_requests())
        proved = bus.cli("wake", "test", "--agent-id", AGENT)  # connects to the inbox, posts nothing
        assert proved.returncode == 0 and "would fire now: session" in proved.stdout, proved.stdout
        assert "tested end to end" in proved.stdout

        # the usual case: the sender is an agent too, so its daemon runs and `swarmbus send` hands
        # the message to it over its local socket (the console script, as a user types it)
        bus.start_daemon("planner")
        started = time.time()
        sent = cli_send(bus, "MARKER-SESSION-REAL: the peer needs an answer")
        request = first_request_with(mock, "MARKER-SESSION-REAL", "the session's next model request")
        # the wake test started no turn: the next model request after it is the message's
        assert mock.state.message_requests()[before]["raw"] == request["raw"]
        report("session (idle)", request["at"] - started)
        trace = json.loads(bus.cli("trace", "--agent-id", AGENT, sent, "--json").stdout)
        report("session (idle; stored -> model request)", request["at"] - float(trace["received"]["stored_at"]))
        assert "UNTRUSTED DATA" in request["raw"]  # swarmbus's framing reached the model
        wait_for(lambda: any("MARKER-SESSION-REAL" in r for r in session.results()), 60, "the woken turn's result")
        assert "session: posted 1 message to Claude Code session" in wake_detail(bus)

        # more rounds of each way in, every one awaited to its turn's end: a median, not one sample
        for round_ in range(2):
            results, started = len(session.results()), time.time()
            cli_send(bus, f"MARKER-SESSION-REAL round {round_}")
            turn(mock, session, f"MARKER-SESSION-REAL round {round_}", "session (idle)", started, results)
        for round_ in range(3):
            results = len(session.results())
            started = publish_from_peer(bus, f"MARKER-SESSION-MQTT {round_}: from a running peer")
            turn(mock, session, f"MARKER-SESSION-MQTT {round_}", "session (idle; a peer's publish -> model request)",
                 started, results)
        # a sender with no daemon of its own: `swarmbus send` connects to the broker itself
        bus.stop_daemon("planner")
        for round_ in range(3):
            results, started = len(session.results()), time.time()
            cli_send(bus, f"MARKER-SESSION-DIRECT {round_}: from a one-off sender")
            turn(mock, session, f"MARKER-SESSION-DIRECT {round_}",
                 "session (idle; `swarmbus send` without a sender daemon: direct)", started, results)
        assert not (bus.state / "claude-last-wake.json").exists()  # no headless claude ran
    finally:
        session.close()


def test_a_busy_session_reads_the_message_between_tool_calls(bus: RealBus, mock: MockServer) -> None:
    cfg = cc_config(bus)
    run_init(bus, **cfg)
    write_config(bus, **cfg)
    mock.state.markers = ["MARKER-BUSY-START", "MARKER-BUSY-PEER"]
    mock.state.tool_trigger, mock.state.tool_command = "MARKER-BUSY-START", "sleep 4"
    bus.start_daemon()
    session = LiveSession(bus, "--allowedTools", "Bash")
    try:
        session.say("warm up")
        wait_for(lambda: session.results(), 120, "the session's first turn")
        wait_for(lambda: sessions(bus), 60, "the MCP server inside the session to register it")
        session.say("MARKER-BUSY-START: run the tool")
        first_request_with(mock, "MARKER-BUSY-START", "the turn that runs the tool")  # the model asked for Bash
        started = sent_at(bus, "MARKER-BUSY-PEER: while you work")
        request = first_request_with(mock, "MARKER-BUSY-PEER", "a model request with the peer's message")
        report("session (busy, after the tool call)", request["at"] - started)
        last = request["body"]["messages"][-1]
        blocks = last.get("content") if isinstance(last.get("content"), list) else []
        kinds = [b.get("type") for b in blocks if isinstance(b, dict)]
        # the same turn's next request: the tool's result, with the peer's message beside it
        assert "tool_result" in kinds or any(
            isinstance(m.get("content"), list) and any(b.get("type") == "tool_result" for b in m["content"]
                                                       if isinstance(b, dict))
            for m in request["body"]["messages"][-3:]), request["body"]["messages"][-3:]
        results_before = [r for r in session.results() if "MARKER-BUSY" in r]
        assert not results_before or "MARKER-BUSY-PEER" in results_before[0]  # not a turn of its own after the first
    finally:
        session.close()


def test_with_no_live_session_the_router_falls_back_to_resume(bus: RealBus, mock: MockServer) -> None:
    cfg = cc_config(bus)
    run_init(bus, **cfg)
    write_config(bus, **cfg)
    mock.state.markers = ["MARKER-FALLBACK-REAL"]
    bus.start_daemon()
    session = LiveSession(bus)
    session.say("hello")
    wait_for(lambda: session.results(), 120, "the session's first turn")
    wait_for(lambda: sessions(bus), 60, "the MCP server inside the session to register it")
    session.close()  # the user closes it
    wait_for(lambda: not sessions(bus), 30, "the daemon to notice the session is gone")

    started = sent_at(bus, "MARKER-FALLBACK-REAL: anyone there?")
    request = first_request_with(mock, "MARKER-FALLBACK-REAL", "the headless resume's model request", 120)
    report("resume (headless fallback)", request["at"] - started)
    detail = wake_detail(bus)
    assert ": resume: claude exited 0" in detail and "after session: no live Claude Code session" in detail
    assert not sessions(bus)  # the headless run's own MCP server did not offer itself as a live session
    assert json.loads(Path(bus.state / "claude-last-wake.json").read_text())["exit_code"] == 0
