"""End to end with a real daemon on a private mosquitto: ``python -m swarmbus start`` with
``SWARMBUS_HOST_TYPE=codex``, ``python -m swarmbus send``, and the fake app-server or the fake
``codex`` on PATH receiving the wake. Waits are conditions with a deadline, never sleeps."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from codex_helpers import AGENT
from fake_app_server import FakeAppServer

from swarmbus import testing
from swarmbus.testing import wait_for

Bus = testing.DaemonBus


@pytest.fixture
def bus(tmp_path_factory: pytest.TempPathFactory, home: Path, fake_codex: Any) -> Iterator[Bus]:
    """The daemon's environment is built here: HOME and PATH (with the fake codex) as set by then."""
    with Bus.open(Path(tmp_path_factory.mktemp("cxbus")), AGENT, plugins="codex",
                 overrides={"SWARMBUS_HOST_TYPE": "codex", "SWARMBUS_WAKE_POLICY": "all"}) as b:
        yield b


def test_a_message_reaches_the_app_server_as_a_turn(bus: Bus, app_server: FakeAppServer, fake_codex: Any) -> None:
    tid = app_server.add_thread()
    bus.config(f'[plugins.codex]\nthread_id = "{tid}"\n')
    bus.start_daemon()
    message_id = bus.send("MARKER-DAEMON-AS please look at the build", subject="build")
    # the thread's inputs are what the fake accepted (the request frame is recorded before it answers)
    text = app_server.wait_for(lambda s: next((t for t in s.threads[tid].inputs if "MARKER-DAEMON-AS" in t), None), 30)
    assert "UNTRUSTED DATA" in text and "- from: planner" in text and f"- id: {message_id}" in text
    (turn,) = app_server.threads[tid].turns

    delivery = wait_for(lambda: testing.finished_delivery(bus.env, AGENT), 20, "the wake outcome in the inbox")
    assert delivery["status"] == "ok", delivery
    assert f"app-server: codex app-server accepted turn {turn} (new turn) on thread {tid}" in delivery["detail"]
    trace = bus.cli("trace", "--agent-id", AGENT, message_id, "--json")
    assert trace.returncode == 0, trace.stderr
    surfaced = [s for s in json.loads(trace.stdout)["steps"] if s["step"] == "surfaced"]
    assert len(surfaced) == 1 and surfaced[0]["by"] == AGENT, trace.stdout
    assert f"codex app-server accepted turn {turn}" in surfaced[0]["detail"]
    assert fake_codex.runs() == []
    assert "codex wake ok" in bus.log()

    # `swarmbus wake test`: the app-server path is ready and tested (a handshake, no turn)
    proc = bus.cli("wake", "test", "--agent-id", AGENT, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)["paths"]}
    assert rows["app-server"]["ready"] and rows["app-server"]["detail"] == "tested end to end"
    assert not rows["headless"]["ready"] and "second writer" in rows["headless"]["detail"]
    assert len(app_server.calls("turn/start")) == 1


def test_without_an_app_server_the_daemon_runs_codex_exec_resume(bus: Bus, codex_home: Path, fake_codex: Any) -> None:
    tid = "01a21a0a-226a-7c10-a6f8-0547f5c1c388"
    fake_codex.know_threads(tid)
    bus.config(f'[plugins.codex]\nthread_id = "{tid}"\nenv_passthrough = ["OPENAI_API_KEY"]\n')
    bus.start_daemon(MQTT_CLIENT_ID_PREFIX="sbtest", OPENAI_API_KEY="sk-passed", UNRELATED_SECRET="do-not-pass")
    bus.send("MARKER-DAEMON-HEADLESS and the tests")
    fake_codex.wait_for(lambda: fake_codex.records("finished"), 30, "the headless run")
    (run,) = fake_codex.runs()
    assert run["argv"][:2] == ["exec", "resume"] and run["argv"][-2:] == [tid, "-"]
    assert "MARKER-DAEMON-HEADLESS" in run["stdin"] and "UNTRUSTED DATA" in run["stdin"]
    env = run["env"]
    assert not [k for k in env if k.startswith(("SWARMBUS_BROKER", "MQTT_"))], sorted(env)
    assert bus.env["SWARMBUS_BROKER_URL"] not in json.dumps(env) and "do-not-pass" not in json.dumps(env)
    assert env["OPENAI_API_KEY"] == "sk-passed" and env["CODEX_HOME"] == str(codex_home)
    assert env["SWARMBUS_AGENT_ID"] == AGENT and env["SWARMBUS_STATE_DIR"] == bus.env["SWARMBUS_STATE_DIR"]
    delivery = wait_for(lambda: testing.finished_delivery(bus.env, AGENT), 20, "the wake outcome in the inbox")
    assert delivery["status"] == "ok" and "headless: codex exec exited 0" in delivery["detail"], delivery
    assert f"thread {tid} (resumed)" in delivery["detail"]


def test_messages_during_a_wake_are_coalesced_into_the_next(bus: Bus, codex_home: Path, fake_codex: Any) -> None:
    release = bus.root / "release"
    fake_codex.control(block_until=str(release))
    bus.start_daemon()
    bus.send("MARKER-FIRST")
    fake_codex.wait_for(lambda: fake_codex.runs(), 30, "the first wake to start")
    for i in (1, 2, 3):
        bus.send(f"MARKER-LATER-{i}")

    def all_waiting() -> bool:
        status = testing.agent_status(AGENT, bus.env["SWARMBUS_STATE_DIR"]) or {}
        return bool(status.get("handlers_running", {}).get("wake") == 4)

    wait_for(all_waiting, 30, "four wake runs in progress (one wake, three waiting to be coalesced)")
    assert len(fake_codex.runs()) == 1
    release.touch()
    fake_codex.wait_for(lambda: len(fake_codex.records("finished")) == 2, 30, "the second wake")
    first, second = fake_codex.runs()
    assert "MARKER-FIRST" in first["stdin"] and first["argv"][1] == "--json"  # a new thread
    assert "3 new messages" in second["stdin"] and all(f"MARKER-LATER-{i}" in second["stdin"] for i in (1, 2, 3))
    tid = fake_codex.records("finished")[0]["thread_id"]
    assert second["argv"][:2] == ["exec", "resume"] and second["argv"][-2] == tid  # the thread the first one made

    def all_ok() -> bool:
        messages = bus.messages()
        return len(messages) == 4 and all(any(d["handler"] == "wake" and d["status"] == "ok" for d in m["deliveries"])
                                          for m in messages)

    wait_for(all_ok, 30, "every message's wake delivery to be ok")
    assert len(fake_codex.runs()) == 2
