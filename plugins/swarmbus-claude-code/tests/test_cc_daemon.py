"""End to end with a real daemon, a private mosquitto and the fake ``claude`` on PATH.

Self-contained (the core's ``tests/conftest.py`` fixtures are not visible here): each test
starts its own broker on a free port and ``python -m swarmbus start`` with
``SWARMBUS_HOST_TYPE=cc``, sends with ``python -m swarmbus send``, and waits with a deadline
for what should happen (no sleeps as synchronisation).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swarmbus import testing
from swarmbus.testing import wait_for
from swarmbus_claude_code.install import hook_command

AGENT = "coder"


Bus = testing.DaemonBus


@pytest.fixture
def bus(tmp_path_factory: pytest.TempPathFactory, fake_claude: Any, home: Path) -> Iterator[Bus]:
    with Bus.open(Path(tmp_path_factory.mktemp("ccbus")), AGENT, plugins="cc",
                 overrides={"SWARMBUS_HOST_TYPE": "cc", "SWARMBUS_WAKE_POLICY": "all"}) as b:
        yield b


def test_message_wakes_claude_and_the_session_is_resumed(bus: Bus, fake_claude: Any) -> None:
    bus.start_daemon()
    bus.send("MARKER-ONE please look at the build", subject="first")
    fake_claude.wait_for(lambda: fake_claude.records("finished"), 30, "the first wake")
    first = fake_claude.runs()[0]
    assert "MARKER-ONE" in first["stdin"] and "UNTRUSTED DATA" in first["stdin"] and "planner" in first["stdin"]
    assert "--resume" not in first["argv"]
    assert not [k for k in first["env"] if k.startswith(("SWARMBUS_BROKER", "MQTT_"))]
    assert bus.env["SWARMBUS_BROKER_URL"] not in json.dumps(first["env"])
    sid = fake_claude.records("finished")[0]["session_id"]

    bus.send("MARKER-TWO and the tests", subject="second")
    fake_claude.wait_for(lambda: len(fake_claude.records("finished")) == 2, 30, "the second wake")
    second = fake_claude.runs()[1]
    assert "MARKER-TWO" in second["stdin"] and "MARKER-ONE" not in second["stdin"]
    assert second["argv"][second["argv"].index("--resume") + 1] == sid

    state = Path(bus.env["SWARMBUS_STATE_DIR"]) / "agents" / AGENT

    def last_wake_ok() -> Any:
        path = state / "claude-last-wake.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        return data if data.get("session_id") == sid and len(data.get("message_ids", [])) == 1 and data["resumed"] else None

    wait_for(last_wake_ok, 15, "the last wake record")
    assert json.loads((state / "claude-session.json").read_text())["session_id"] == sid

    def delivered() -> Any:
        proc = bus.cli("inbox", "--agent-id", AGENT, "--json")
        return "resumed" in proc.stdout and proc.stdout

    inbox = wait_for(delivered, 15, "the wake deliveries in the inbox")
    assert "claude exited 0" in inbox
    assert "cc wake ok" in bus.log()


def test_context_hook_command_reads_unread_messages(bus: Bus, fake_claude: Any) -> None:
    bus.config("[plugins.cc]\nwake_mode = \"context\"\n")
    bus.start_daemon()
    bus.send("MARKER-CTX what is the status?")
    command = hook_command(AGENT, "UserPromptSubmit", {"SWARMBUS_CONFIG": bus.env["SWARMBUS_CONFIG"],
                                                       "SWARMBUS_STATE_DIR": bus.env["SWARMBUS_STATE_DIR"]})

    def run_hook() -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in bus.env.items() if k not in ("SWARMBUS_CONFIG", "SWARMBUS_STATE_DIR")}
        return subprocess.run(["sh", "-c", command], input='{"hook_event_name":"UserPromptSubmit","prompt":"hi"}',
                              capture_output=True, text=True, timeout=60, env=env)

    outputs: list[subprocess.CompletedProcess[str]] = []

    def got_context() -> bool:
        outputs.append(run_hook())
        assert outputs[-1].returncode == 0, outputs[-1].stderr
        return bool(outputs[-1].stdout.strip())

    wait_for(got_context, 30, "the context hook to see the message")
    hook = json.loads(outputs[-1].stdout)["hookSpecificOutput"]
    assert hook["hookEventName"] == "UserPromptSubmit"
    assert "MARKER-CTX" in hook["additionalContext"] and "UNTRUSTED DATA" in hook["additionalContext"]
    again = run_hook()  # the cursor moved: nothing new
    assert again.returncode == 0 and again.stdout.strip() == ""
    assert fake_claude.runs() == []  # the daemon never runs claude in this mode

    def recorded() -> Any:
        proc = bus.cli("inbox", "--agent-id", AGENT, "--json")
        return "UserPromptSubmit" in proc.stdout

    wait_for(recorded, 15, "the wake delivery to be recorded")


def test_rewake_stop_hook_command_blocks_until_a_message(bus: Bus, fake_claude: Any) -> None:
    bus.config("[plugins.cc]\nwake_mode = \"rewake\"\n")
    bus.start_daemon()
    command = hook_command(AGENT, "Stop", {"SWARMBUS_CONFIG": bus.env["SWARMBUS_CONFIG"],
                                           "SWARMBUS_STATE_DIR": bus.env["SWARMBUS_STATE_DIR"]})
    command = command.replace("--timeout 86400", "--timeout 60")
    env = {k: v for k, v in bus.env.items() if k not in ("SWARMBUS_CONFIG", "SWARMBUS_STATE_DIR")}
    payload = bus.root / "stop-hook-input.json"
    payload.write_text('{"hook_event_name":"Stop","stop_hook_active":false}')
    with payload.open("rb") as stdin:
        hook = subprocess.Popen(["sh", "-c", command], stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        assert hook.poll() is None  # blocks: nothing arrived yet
        bus.send("MARKER-REWAKE wake up")
        _, err = hook.communicate(timeout=60)
    finally:
        if hook.poll() is None:
            os.killpg(hook.pid, signal.SIGKILL)
            hook.wait(10)
    assert hook.returncode == 2, err  # exit 2 + stderr: Claude Code hands it to the model
    assert "MARKER-REWAKE" in err and "UNTRUSTED DATA" in err
    assert fake_claude.runs() == []


def test_messages_during_a_wake_are_coalesced_by_the_daemon(bus: Bus, fake_claude: Any) -> None:
    release = bus.root / "release"
    fake_claude.control(block_until=str(release))
    bus.start_daemon()
    bus.send("MARKER-FIRST")
    fake_claude.wait_for(lambda: fake_claude.runs(), 30, "the first wake to start")
    for i in (1, 2, 3):
        bus.send(f"MARKER-LATER-{i}")

    def all_waiting() -> bool:
        status = testing.agent_status(AGENT, bus.env["SWARMBUS_STATE_DIR"]) or {}
        return bool(status.get("handlers_running", {}).get("wake") == 4)

    wait_for(all_waiting, 30, "four wake runs in progress (one wake, three waiting to be coalesced)")
    assert len(fake_claude.runs()) == 1
    release.touch()
    fake_claude.wait_for(lambda: len(fake_claude.records("finished")) == 2, 30, "the second wake")
    runs = fake_claude.runs()
    assert len(runs) == 2
    assert "3 new messages" in runs[1]["stdin"]
    assert all(f"MARKER-LATER-{i}" in runs[1]["stdin"] for i in (1, 2, 3))

    def all_ok() -> bool:
        messages = json.loads(bus.cli("inbox", "--agent-id", AGENT, "--json").stdout)["messages"]
        return len(messages) == 4 and all(any(d["handler"] == "wake" and d["status"] == "ok" for d in m["deliveries"])
                                          for m in messages)

    wait_for(all_ok, 30, "every message's wake delivery to be ok")
    assert len(fake_claude.runs()) == 2
