"""The Claude Code plugin against the real ``claude`` binary and a loopback Messages API mock.

Opt-in: ``tox -e real-claude`` (see docs/hosts.md). Each test has its own broker, HOME,
daemon and mock; the mock answers every request with the marker strings it found in it, so
the tests can tell exactly what reached the model.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from cc_real_support import AGENT, PASSTHROUGH, RealBus, report  # type: ignore[import-not-found]
from messages_mock import MockServer  # type: ignore[import-not-found]

from swarmbus import Settings
from swarmbus.testing import run_step, wait_for
from swarmbus_claude_code.install import SKILL_DESCRIPTION, init_steps
from swarmbus_claude_code.settings import CCSettings


def cc_config(bus: RealBus, **extra: Any) -> dict[str, Any]:
    return {"claude_path": bus.claude, "env_passthrough": PASSTHROUGH, **extra}


def write_config(bus: RealBus, **cc: Any) -> None:
    lines = ["[plugins.cc]"] + [f"{k} = {json.dumps(v)}" for k, v in cc.items()]
    bus.config("\n".join(lines) + "\n")


def run_init(bus: RealBus, **cc: Any) -> list[Any]:
    settings = Settings(agent_id=AGENT, host_type="cc", state_dir=Path(bus.env["SWARMBUS_STATE_DIR"]))
    settings.plugins["cc"] = CCSettings.model_validate(cc)
    results = [run_step(step.name, step.changes, dry_run=False) for step in init_steps(settings)]
    assert all(r.status != "failed" for r in results), [(r.name, r.lines) for r in results]
    return results


def requests_with(mock: MockServer, marker: str) -> list[dict[str, Any]]:
    return [r for r in mock.state.message_requests() if marker in r["raw"]]


def last_wake(bus: RealBus) -> dict[str, Any]:
    path = bus.state / "claude-last-wake.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_message_wakes_real_claude_and_the_session_is_resumed(bus: RealBus, mock: MockServer) -> None:
    cfg = cc_config(bus)
    results = run_init(bus, **cfg)
    assert "(Claude Code)" in results[-1].lines[0]  # verify: the real `claude --version`
    registered = json.loads((bus.home / ".claude.json").read_text())["mcpServers"]["swarmbus"]
    assert registered["args"][-2:] == ["--agent-id", AGENT]  # written by the real `claude mcp add -s user`
    write_config(bus, **cfg)
    mock.state.markers = ["MARKER-REAL-ONE", "MARKER-REAL-TWO", "UNTRUSTED DATA", SKILL_DESCRIPTION[:60]]
    bus.start_daemon()

    bus.send("MARKER-REAL-ONE: please summarise the build log", subject="first")
    first = wait_for(lambda: last_wake(bus).get("ok") is not None and last_wake(bus), 90, "the first wake")
    assert first["ok"], (first, bus.log())
    sid = first["session_id"]
    assert sid and first["resumed"] is False
    (request,) = requests_with(mock, "MARKER-REAL-ONE")
    # the prompt reached the model, framed as untrusted data; the skill is listed for the model
    assert "UNTRUSTED DATA" in request["raw"]
    assert SKILL_DESCRIPTION[:60] in request["raw"]
    # the MCP server registered by init (real `claude mcp add -s user`) started in the wake and offers its tools
    assert "mcp__swarmbus__send_message" in request["raw"]
    assert "markers-seen: MARKER-REAL-ONE" in first["output_tail"]
    transcript = bus.home / ".claude" / "projects" / str(bus.state).replace("/", "-") / f"{sid}.jsonl"
    assert transcript.exists()

    bus.send("MARKER-REAL-TWO: and now the tests", subject="second")
    second = wait_for(lambda: last_wake(bus).get("message_ids") != first["message_ids"] and last_wake(bus), 90,
                      "the second wake")
    assert second["ok"], (second, bus.log())
    assert second["session_id"] == sid and second["resumed"] is True
    # the resumed conversation: the second request carries the first turn too
    (resumed,) = requests_with(mock, "MARKER-REAL-TWO")
    assert "MARKER-REAL-ONE" in resumed["raw"]
    assert json.loads((bus.state / "claude-session.json").read_text())["session_id"] == sid


def test_lost_session_is_recreated_with_real_claude(bus: RealBus, mock: MockServer) -> None:
    cfg = cc_config(bus)
    write_config(bus, **cfg)
    bus.state.mkdir(parents=True, exist_ok=True)
    gone = "11111111-2222-4333-8444-555555555555"
    (bus.state / "claude-session.json").write_text(json.dumps({"session_id": gone, "cwd": str(bus.state)}))
    mock.state.markers = ["MARKER-LOST"]
    bus.start_daemon()
    bus.send("MARKER-LOST hello")
    wake = wait_for(lambda: last_wake(bus).get("ok") is not None and last_wake(bus), 90, "the wake")
    assert wake["ok"], (wake, bus.log())
    assert wake["session_recreated"] is True and wake["session_id"] != gone
    assert len(requests_with(mock, "MARKER-LOST")) == 1


def test_context_hook_adds_messages_to_the_next_prompt(bus: RealBus, mock: MockServer) -> None:
    cfg = cc_config(bus, wake_mode="context")
    run_init(bus, **cfg)
    write_config(bus, **cfg)
    mock.state.markers = ["MARKER-CTX-REAL"]
    bus.start_daemon()
    bus.send("MARKER-CTX-REAL: the deploy is blocked")

    def stored() -> bool:
        proc = bus.cli("inbox", "--agent-id", AGENT, "--json")
        return proc.returncode == 0 and "MARKER-CTX-REAL" in proc.stdout

    wait_for(stored, 30, "the message to be stored")
    work = bus.root / "work"
    work.mkdir()
    # a user's own prompt in a session: the UserPromptSubmit hook adds the unread message
    proc = subprocess.run([bus.claude, "-p", "--output-format", "json"], input="what is new?", capture_output=True,
                          text=True, timeout=120, cwd=work, env=bus.env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["result"] == "markers-seen: MARKER-CTX-REAL"
    (request,) = requests_with(mock, "MARKER-CTX-REAL")
    assert "UNTRUSTED DATA" in request["raw"]
    # the cursor moved: the next prompt gets nothing more
    proc = subprocess.run([bus.claude, "-p", "--output-format", "json"], input="anything else?",
                          capture_output=True, text=True, timeout=120, cwd=work, env=bus.env)
    assert json.loads(proc.stdout)["result"] == "markers-seen: none"


def test_rewake_stop_hook_wakes_an_idle_session(bus: RealBus, mock: MockServer) -> None:
    cfg = cc_config(bus, wake_mode="rewake")
    run_init(bus, **cfg)
    write_config(bus, **cfg)
    mock.state.markers = ["MARKER-TURN-ONE", "MARKER-REWAKE-REAL"]
    bus.start_daemon()
    work = bus.root / "work"
    work.mkdir()
    # a long-lived session (as an interactive one): one user line on stdin, then idle
    proc = subprocess.Popen([bus.claude, "-p", "--input-format", "stream-json", "--output-format", "stream-json",
                             "--verbose"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=work, env=bus.env)
    assert proc.stdin is not None and proc.stdout is not None
    results: list[dict[str, Any]] = []
    watchdog = threading.Timer(180, proc.kill)  # never hang the suite if no result line comes
    watchdog.start()
    try:
        proc.stdin.write(json.dumps({"type": "user", "message": {"role": "user", "content": "MARKER-TURN-ONE"}}) + "\n")
        proc.stdin.flush()
        for line in proc.stdout:
            event = json.loads(line)
            if event.get("type") == "result":
                results.append(event)
                if len(results) == 1:
                    # turn 1 is over and the Stop hook now waits: a message wakes the model
                    started = time.time()
                    bus.send("MARKER-REWAKE-REAL: the peer needs an answer")
                elif "MARKER-REWAKE-REAL" in str(event.get("result")):
                    break
            if len(results) > 5:
                break
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait(10)
    assert results[0]["result"] == "markers-seen: MARKER-TURN-ONE"
    assert any("MARKER-REWAKE-REAL" in str(r.get("result")) for r in results[1:]), results
    request = requests_with(mock, "MARKER-REWAKE-REAL")[0]
    report("rewake (Stop hook)", request["at"] - started)


def test_session_start_hook_starts_the_daemon_with_real_claude(bus: RealBus, mock: MockServer) -> None:
    cfg = cc_config(bus)
    run_init(bus, **cfg)  # installs the SessionStart hook (install_hook defaults to true)
    write_config(bus, **cfg)
    mock.state.markers = ["MARKER-SESSION-START"]
    assert bus.cli("status", "--agent-id", AGENT).returncode == 1  # no daemon yet
    work = bus.root / "work"
    work.mkdir()
    try:
        # a session starts: the real claude runs the hook, which starts the daemon detached
        proc = subprocess.run([bus.claude, "-p", "--output-format", "json"], input="MARKER-SESSION-START",
                              capture_output=True, text=True, timeout=120, cwd=work, env=bus.env)
        assert proc.returncode == 0, proc.stderr
        # the hook printed nothing that reached the model: only the user's prompt is in the request
        assert json.loads(proc.stdout)["result"] == "markers-seen: MARKER-SESSION-START"
        status = wait_for(lambda: (p := bus.cli("status", "--agent-id", AGENT, "--json")).returncode == 0 and p, 30,
                          "the daemon the SessionStart hook started")
        assert json.loads(status.stdout)["supervisor"] == "detached"
        # a second session finds it running and leaves it alone
        pid = json.loads(status.stdout)["pid"]
        proc = subprocess.run([bus.claude, "-p", "--output-format", "json"], input="again", capture_output=True,
                              text=True, timeout=120, cwd=work, env=bus.env)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(bus.cli("status", "--agent-id", AGENT, "--json").stdout)["pid"] == pid
    finally:
        bus.cli("stop", "--agent-id", AGENT)
