"""The waker in-process (``swarmbus_wake`` through the plugin manager, as the core's wake handler
calls it) against the fake app-server and the fake ``codex``: which path fires, what each is sent,
and that a headless run never starts beside a live app-server."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from codex_helpers import AGENT, Context, make_settings, run, stored, wake_via_hook
from fake_app_server import FakeAppServer

from swarmbus import HookRelay, Settings
from swarmbus_codex.config import CodexSettings
from swarmbus_codex.paths import wake_paths
from swarmbus_codex.state import THREAD_FILE


def thread_file(settings: Settings) -> dict[str, Any]:
    return json.loads((Path(str(settings.state_dir)) / "agents" / AGENT / THREAD_FILE).read_text())


def waker_methods(server: FakeAppServer) -> list[str]:
    """The methods of the wake's own connection (the last one; the probe's comes before it)."""
    last = max(f.conn for f in server.calls())
    return server.methods(last)


# -- through a running app-server ------------------------------------------------------------------
def test_idle_thread_gets_a_turn_with_the_framed_prompt(tmp_path: Path, app_server: FakeAppServer, fake_codex: Any,
                                                         relay: HookRelay) -> None:
    tid = app_server.add_thread()
    settings = make_settings(tmp_path / "state", thread_id=tid)
    ctx = Context(settings, relay)
    message = stored("build broke", "MARKER-AS please look at ```the``` build")
    outcome = wake_via_hook(relay, [message], ctx)

    assert outcome.ok, outcome.detail
    (start,) = app_server.calls("turn/start")
    turn_id = app_server.threads[tid].turns[-1]
    assert outcome.detail.startswith(f"app-server: codex app-server accepted turn {turn_id} (new turn) on thread {tid}")
    assert waker_methods(app_server) == ["initialize", "initialized", "thread/read", "turn/start"]
    (item,) = start.params["input"]
    assert start.params["threadId"] == tid and item["type"] == "text"
    text = item["text"]
    assert "MARKER-AS" in text and "UNTRUSTED DATA" in text and "- from: planner" in text
    assert "- subject: build broke" in text and f"agent `{AGENT}`" in text
    assert "````text" in text  # the fence is longer than any backtick run in the body
    init = app_server.calls("initialize")[-1].params
    assert init["clientInfo"]["name"] == "swarmbus" and init["capabilities"] == {"experimentalApi": True}
    # the delivery ladder records `surfaced`: the server accepted the turn
    assert ctx.marks == [([message.id], "surfaced", outcome.detail)]
    assert f"codex app-server accepted turn {turn_id}" in ctx.marks[0][2]
    assert fake_codex.runs() == []  # no headless run


def test_no_thread_yet_starts_one_and_keeps_it(tmp_path: Path, app_server: FakeAppServer, fake_codex: Any,
                                               relay: HookRelay) -> None:
    settings = make_settings(tmp_path / "state", model="gpt-test")
    first = wake_via_hook(relay, [stored(body="MARKER-FIRST")], Context(settings, relay))
    assert first.ok and "started the thread" in first.detail, first.detail
    (start,) = app_server.calls("thread/start")
    work = tmp_path / "state" / "agents" / AGENT / "codex-work"
    assert start.params == {"cwd": str(work), "approvalPolicy": "never", "sandbox": "read-only", "model": "gpt-test"}
    assert work.is_dir()
    (tid,) = app_server.threads
    assert thread_file(settings)["thread_id"] == tid and thread_file(settings)["created_by"] == "app-server"

    second = wake_via_hook(relay, [stored(body="MARKER-SECOND", seq=2)], Context(settings, relay))
    assert second.ok and "started the thread" not in second.detail, second.detail
    assert len(app_server.calls("thread/start")) == 1
    assert app_server.texts("turn/start")[1].count("MARKER-SECOND") == 1
    assert list(app_server.threads) == [tid]


def test_thread_not_loaded_is_resumed_before_the_turn(tmp_path: Path, app_server: FakeAppServer, fake_codex: Any,
                                                      relay: HookRelay) -> None:
    tid = app_server.add_thread(loaded=False)  # on disk (made by a headless run, say), not in the server
    outcome = wake_via_hook(relay, [stored()], Context(make_settings(tmp_path / "state", thread_id=tid), relay))
    assert outcome.ok and "resumed the thread" in outcome.detail, outcome.detail
    assert waker_methods(app_server) == ["initialize", "initialized", "thread/read", "thread/resume", "turn/start"]
    resume = app_server.calls("thread/resume")[0].params
    assert resume == {"threadId": tid, "excludeTurns": True, "approvalPolicy": "never", "sandbox": "read-only"}


def test_thread_not_found_on_turn_start_is_resumed_and_retried(tmp_path: Path, app_server: FakeAppServer,
                                                               fake_codex: Any, relay: HookRelay) -> None:
    tid = app_server.add_thread()
    app_server.lose_thread_once()  # the server unloads it between the read and the start
    outcome = wake_via_hook(relay, [stored(body="MARKER-RETRY")], Context(make_settings(tmp_path / "state", thread_id=tid),
                                                                          relay))
    assert outcome.ok, outcome.detail
    assert waker_methods(app_server) == ["initialize", "initialized", "thread/read", "turn/start", "thread/resume",
                                         "turn/start"]
    assert 'after "thread not found"' in outcome.detail
    assert app_server.threads[tid].inputs == [app_server.texts("turn/start")[-1]]


def test_a_running_turn_is_steered(tmp_path: Path, app_server: FakeAppServer, fake_codex: Any,
                                   relay: HookRelay) -> None:
    tid = app_server.add_thread()
    running = app_server.begin_turn(tid)  # the user's TUI is mid-turn
    ctx = Context(make_settings(tmp_path / "state", thread_id=tid), relay)
    outcome = wake_via_hook(relay, [stored(body="MARKER-STEER")], ctx)
    assert outcome.ok, outcome.detail
    assert f"accepted turn {running} (steered into the running turn)" in outcome.detail
    assert waker_methods(app_server) == ["initialize", "initialized", "thread/read", "thread/turns/list", "turn/steer"]
    steer = app_server.calls("turn/steer")[0].params
    assert steer["expectedTurnId"] == running and steer["threadId"] == tid
    assert "MARKER-STEER" in steer["input"][0]["text"]
    assert app_server.calls("turn/start") == []
    assert ctx.marks[0][1] == "surfaced"


def test_a_turn_that_ends_before_the_steer_gets_a_new_turn(tmp_path: Path, app_server: FakeAppServer,
                                                           fake_codex: Any, relay: HookRelay) -> None:
    tid = app_server.add_thread()
    running = app_server.begin_turn(tid)
    app_server.end_turn_after_list()
    outcome = wake_via_hook(relay, [stored()], Context(make_settings(tmp_path / "state", thread_id=tid), relay))
    assert outcome.ok and "(new turn)" in outcome.detail and f"turn {running} ended before the steer" in outcome.detail
    assert waker_methods(app_server)[-3:] == ["thread/turns/list", "turn/steer", "turn/start"]


def test_overloaded_once_is_retried(tmp_path: Path, app_server: FakeAppServer, fake_codex: Any,
                                    relay: HookRelay) -> None:
    tid = app_server.add_thread()
    app_server.overload("turn/start", 1)
    outcome = wake_via_hook(relay, [stored()], Context(make_settings(tmp_path / "state", thread_id=tid), relay))
    assert outcome.ok and "after 1 overloaded answer(s)" in outcome.detail, outcome.detail
    assert len(app_server.calls("turn/start")) == 2 and len(app_server.threads[tid].turns) == 1
    assert fake_codex.runs() == []


def test_overloaded_for_good_fails_and_never_runs_a_second_writer(tmp_path: Path, app_server: FakeAppServer,
                                                                  fake_codex: Any, relay: HookRelay) -> None:
    tid = app_server.add_thread()
    fake_codex.know_threads(tid)
    app_server.overload("turn/start", 1000)
    ctx = Context(make_settings(tmp_path / "state", thread_id=tid), relay)
    started = time.monotonic()
    outcome = wake_via_hook(relay, [stored()], ctx)
    assert time.monotonic() - started < 8  # bounded retries
    assert not outcome.ok
    assert "Server overloaded; retry later." in outcome.detail
    assert "headless: an app-server answers on" in outcome.detail and "second writer" in outcome.detail
    assert len(app_server.calls("turn/start")) == 6  # the first try and 5 retries
    assert fake_codex.runs() == [] and ctx.marks == []


def test_messages_of_one_wake_go_in_one_turn(tmp_path: Path, app_server: FakeAppServer, fake_codex: Any,
                                             relay: HookRelay) -> None:
    tid = app_server.add_thread()
    messages = [stored(body=f"MARKER-BATCH-{i}", seq=i) for i in (1, 2, 3)]
    ctx = Context(make_settings(tmp_path / "state", thread_id=tid), relay)
    assert wake_via_hook(relay, messages, ctx).ok
    (text,) = app_server.texts("turn/start")
    assert [f"MARKER-BATCH-{i}" in text for i in (1, 2, 3)] == [True] * 3
    assert "3 new messages" in text and "### Message 3 of 3" in text
    assert ctx.marks[0][0] == [m.id for m in messages]


def test_configured_socket_is_the_only_one_tried(tmp_path: Path, codex_home: Path, fake_codex: Any,
                                                 relay: HookRelay, tmp_path_factory: pytest.TempPathFactory) -> None:
    elsewhere = tmp_path_factory.mktemp("s") / "as.sock"
    with FakeAppServer(elsewhere) as server, FakeAppServer(codex_home / "swarmbus-app-server.sock") as default:
        tid = server.add_thread()
        outcome = wake_via_hook(relay, [stored()], Context(make_settings(tmp_path / "state", thread_id=tid,
                                                                         app_server=f"unix://{elsewhere}"), relay))
        assert outcome.ok and f"via unix://{elsewhere}" in outcome.detail, outcome.detail
        assert default.calls() == []


# -- headless: no app-server answers ---------------------------------------------------------------
def test_no_app_server_runs_exec_resume_with_the_prompt_on_stdin_and_a_scrubbed_env(
        tmp_path: Path, codex_home: Path, fake_codex: Any, relay: HookRelay, monkeypatch: pytest.MonkeyPatch) -> None:
    tid = "01a21a0a-226a-7c10-a6f8-0547f5c1c388"
    fake_codex.know_threads(tid)
    for name, value in {"MQTT_PASSWORD": "mqtt-secret", "SWARMBUS_BROKER_PASSWORD": "broker-secret",
                        "SECRET_TOKEN": "other-secret", "OPENAI_API_KEY": "sk-passed",
                        "SWARMBUS_CONFIG": str(tmp_path / "sb.toml")}.items():
        monkeypatch.setenv(name, value)
    settings = make_settings(tmp_path / "state", thread_id=tid, env_passthrough=["OPENAI_API_KEY"])
    ctx = Context(settings, relay)
    message = stored(body="MARKER-HEADLESS --not-an-option")
    outcome = wake_via_hook(relay, [message], ctx)

    assert outcome.ok, outcome.detail
    assert outcome.detail.startswith("headless: codex exec exited 0 in ") and f"thread {tid} (resumed)" in outcome.detail
    assert "app-server: no app-server answers: unix://" in outcome.detail  # why the first path did not fire
    (started,) = fake_codex.runs()
    assert started["argv"] == ["exec", "resume", "--json", "--skip-git-repo-check", "-c", 'sandbox_mode="read-only"',
                               "-c", 'approval_policy="never"', tid, "-"]
    assert "MARKER-HEADLESS --not-an-option" in started["stdin"] and "UNTRUSTED DATA" in started["stdin"]
    env = started["env"]
    assert not [k for k in env if k.startswith(("MQTT_", "SWARMBUS_BROKER_"))]
    assert "SECRET_TOKEN" not in env and "secret" not in json.dumps(env)
    assert env["OPENAI_API_KEY"] == "sk-passed" and env["CODEX_HOME"] == str(codex_home)
    assert env["SWARMBUS_AGENT_ID"] == AGENT and env["SWARMBUS_CONFIG"] == str(tmp_path / "sb.toml")
    assert Path(started["cwd"]) == tmp_path / "state" / "agents" / AGENT / "codex-work"
    assert ctx.marks == [([message.id], "surfaced", outcome.detail)]


def test_first_headless_wake_starts_a_thread_and_the_next_resumes_it(tmp_path: Path, codex_home: Path,
                                                                      fake_codex: Any, relay: HookRelay) -> None:
    settings = make_settings(tmp_path / "state", sandbox="workspace-write", approval_policy="untrusted", model="o-mini")
    first = wake_via_hook(relay, [stored(body="MARKER-1")], Context(settings, relay))
    assert first.ok and "(new thread)" in first.detail, first.detail
    run1 = fake_codex.runs()[0]
    assert run1["argv"] == ["exec", "--json", "--skip-git-repo-check", "-c", 'sandbox_mode="workspace-write"', "-c",
                            'approval_policy="untrusted"', "-m", "o-mini", "-"]
    tid = fake_codex.records("finished")[0]["thread_id"]
    assert thread_file(settings) | {"updated_at": 0} == {"thread_id": tid, "created_by": "headless", "updated_at": 0}

    second = wake_via_hook(relay, [stored(body="MARKER-2", seq=2)], Context(settings, relay))
    assert second.ok and f"thread {tid} (resumed)" in second.detail, second.detail
    assert fake_codex.runs()[1]["argv"][:2] == ["exec", "resume"] and fake_codex.runs()[1]["argv"][-2:] == [tid, "-"]


def test_a_kept_thread_codex_lost_is_replaced(tmp_path: Path, codex_home: Path, fake_codex: Any,
                                              relay: HookRelay) -> None:
    settings = make_settings(tmp_path / "state")
    state = tmp_path / "state" / "agents" / AGENT
    state.mkdir(parents=True)
    gone = "11111111-2222-4333-8444-555555555555"
    (state / THREAD_FILE).write_text(json.dumps({"thread_id": gone}))
    outcome = wake_via_hook(relay, [stored()], Context(settings, relay))
    assert outcome.ok and f"(new thread: {gone} was gone)" in outcome.detail, outcome.detail
    runs = fake_codex.runs()
    assert [r["argv"][1] for r in runs] == ["resume", "--json"]  # resume failed, then a new thread
    assert thread_file(settings)["thread_id"] == fake_codex.records("finished")[-1]["thread_id"] != gone


def test_a_configured_thread_codex_lost_fails_and_is_kept(tmp_path: Path, codex_home: Path, fake_codex: Any,
                                                          relay: HookRelay) -> None:
    gone = "11111111-2222-4333-8444-555555555555"
    settings = make_settings(tmp_path / "state", thread_id=gone)
    outcome = wake_via_hook(relay, [stored()], Context(settings, relay))
    assert not outcome.ok
    assert f"codex has no thread {gone} (thread_id in [plugins.codex])" in outcome.detail
    assert "no rollout found" in outcome.detail
    assert len(fake_codex.runs()) == 1 and not (tmp_path / "state" / "agents" / AGENT / THREAD_FILE).exists()


def test_a_failing_run_is_a_failed_wake(tmp_path: Path, codex_home: Path, fake_codex: Any, relay: HookRelay) -> None:
    fake_codex.control(fail=1)
    outcome = wake_via_hook(relay, [stored()], Context(make_settings(tmp_path / "state"), relay))
    assert not outcome.ok and outcome.exit_code == 1
    assert "codex exec exited 1" in outcome.detail and "stream disconnected before completion" in outcome.detail


def test_a_stale_socket_is_not_an_app_server(tmp_path: Path, codex_home: Path, fake_codex: Any,
                                             relay: HookRelay) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(codex_home / "swarmbus-app-server.sock"))  # left behind by an app-server that died
    stale.close()
    (codex_home / "app-server-control").mkdir()
    (codex_home / "app-server-control" / "app-server-control.sock").symlink_to("/nonexistent/codex-daemon/x")
    outcome = wake_via_hook(relay, [stored()], Context(make_settings(tmp_path / "state"), relay))
    assert outcome.ok and outcome.detail.startswith("headless:"), outcome.detail
    assert "Connection refused" in outcome.detail and "no socket" in outcome.detail


def test_a_thread_open_in_another_codex_is_never_written_headless(tmp_path: Path, codex_home: Path, fake_codex: Any,
                                                                  relay: HookRelay) -> None:
    tid = "01a21a0a-226a-7c10-a6f8-0547f5c1c388"
    fake_codex.know_threads(tid)
    locks = codex_home / "thread-writer-locks"
    locks.mkdir()
    fd = os.open(locks / f"{tid}.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a live Codex that has the thread loaded holds it
        outcome = wake_via_hook(relay, [stored()], Context(make_settings(tmp_path / "state", thread_id=tid), relay))
    finally:
        os.close(fd)
    assert not outcome.ok and f"thread {tid} is open in another Codex process" in outcome.detail, outcome.detail
    assert fake_codex.runs() == []
    # once that Codex let go (the lock file stays), the headless run goes ahead
    assert wake_via_hook(relay, [stored()], Context(make_settings(tmp_path / "state", thread_id=tid), relay)).ok


def test_missing_codex_and_no_app_server(tmp_path: Path, codex_home: Path, no_codex: None, relay: HookRelay) -> None:
    outcome = wake_via_hook(relay, [stored()], Context(make_settings(tmp_path / "state"), relay))
    assert not outcome.ok and "headless: codex not found: install it (npm install -g @openai/codex)" in outcome.detail


# -- the hooks ---------------------------------------------------------------------------------------
def test_other_host_types_are_left_alone(tmp_path: Path, relay: HookRelay) -> None:
    settings = make_settings(tmp_path / "state", host_type="cc")
    ctx = Context(settings, relay)
    message = stored()
    from swarmbus import WakeDecision

    assert relay.pm.hook.swarmbus_wake(message=message, decision=WakeDecision(True, "t"), context=ctx.context) is None
    assert relay.pm.hook.swarmbus_wake_coalesce(message=message, settings=settings) is None
    assert relay.pm.hook.swarmbus_wake_paths(settings=settings) is None
    codex = make_settings(tmp_path / "state")
    assert relay.pm.hook.swarmbus_wake_coalesce(message=message, settings=codex) is True
    assert [p.name for p in relay.pm.hook.swarmbus_wake_paths(settings=codex)] == ["app-server", "headless"]


def test_wake_test_handshakes_without_a_turn(tmp_path: Path, app_server: FakeAppServer, relay: HookRelay) -> None:
    tid = app_server.add_thread()
    ctx = Context(make_settings(tmp_path / "state", thread_id=tid), relay).context
    app_path = wake_paths(ctx.settings)[0]
    assert app_path.test is not None
    assert run(app_path.probe(ctx)) is None and run(app_path.test(ctx)) is None
    assert app_server.calls("turn/start") == [] and "thread/read" in app_server.methods()


@pytest.mark.parametrize(("section", "error"), [
    ({"sandbox": "danger-full-access"}, "allow_danger_full_access"),
    ({"app_server": "/tmp/x.sock"}, "unix://PATH"),
    ({"app_server": "unix://"}, "unix://PATH"),
    ({"thread_id": "--last"}, "not a Codex thread id"),
    ({"model": "-x"}, "not a model name"),
    ({"env_passthrough": ["MQTT_PASSWORD"]}, "never passed to Codex"),
    ({"approval_policy": "always"}, "approval_policy"),
    ({"unknown": 1}, "Extra inputs are not permitted"),
])
def test_settings_are_validated(section: dict[str, Any], error: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=error):
        CodexSettings.model_validate(section)
    assert CodexSettings.model_validate({"sandbox": "danger-full-access", "allow_danger_full_access": True})


def test_loading_the_plugin_imports_no_websockets() -> None:
    import subprocess

    script = ("import json, sys\nfrom swarmbus.plugins import HookRelay, get_plugin_manager\n"
              "relay = HookRelay(get_plugin_manager())\nassert 'codex' in relay.settings_sections()\n"
              "relay.host_types()\nprint(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout.splitlines()[-1]))
    assert "swarmbus_codex" in loaded
    assert not {"websockets", "tomlkit", "swarmbus_codex.appserver", "swarmbus_codex.paths"} & loaded


@pytest.mark.parametrize("wait", [True, False])
def test_headless_runs_wait_for_the_registered_mcp_server(tmp_path: Path, codex_home: Path, fake_codex: Any,
                                                          relay: HookRelay, wait: bool) -> None:
    (codex_home / "config.toml").write_text('[mcp_servers.swarmbus]\ncommand = "swarmbus"\nargs = ["mcp-server"]\n')
    outcome = wake_via_hook(relay, [stored()], Context(make_settings(tmp_path / "state", wait_for_mcp=wait), relay))
    assert outcome.ok, outcome.detail
    argv = fake_codex.runs()[0]["argv"]
    assert ("mcp_servers.swarmbus.required=true" in argv) is wait
    assert argv[-1] == "-"
