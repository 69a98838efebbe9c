"""The CLI fallback: when nothing listens at the gateway URL, ``openclaw agent`` runs instead.

A fake ``openclaw`` (a Python script) records its argv, environment and the message file."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

import pytest
from openclaw_helpers import context_for, make_settings, stored

from swarmbus import HookRelay, StoredMessage, WakeOutcome, wake

FAKE_OPENCLAW = '''#!{python}
import json, os, sys
argv = sys.argv[1:]
record = {{"argv": argv, "env": dict(os.environ)}}
if "--message-file" in argv:
    path = argv[argv.index("--message-file") + 1]
    record["message"] = open(path, encoding="utf-8").read()
    record["message_file_mode"] = oct(os.stat(path).st_mode & 0o777)
with open({record!r}, "a") as fh:
    fh.write(json.dumps(record) + "\\n")
if argv[:1] == ["--version"]:
    print("OpenClaw 2026.9.6 (fake)")
    sys.exit(0)
print("[agent] some log line before the JSON")
print(json.dumps({answer}, indent=2))
sys.exit({code})
'''


def fake_openclaw(tmp_path: Path, *, answer: dict[str, object] | None = None, code: int = 0) -> tuple[Path, Path]:
    record = tmp_path / "openclaw-calls.jsonl"
    script = tmp_path / "bin" / "openclaw"
    script.parent.mkdir(exist_ok=True)
    answer = answer or {"runId": "run-from-cli", "status": "ok", "summary": "completed", "result": {"payloads": []}}
    script.write_text(FAKE_OPENCLAW.format(python=sys.executable, record=str(record), answer=answer, code=code))
    script.chmod(0o755)
    return script, record


def calls(record: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed on exit: nothing listens there


def run_wake(relay: HookRelay, settings: object, message: StoredMessage) -> WakeOutcome:
    outcome = asyncio.run(relay.wake(message, wake("test"), context_for(relay, settings)))  # type: ignore[arg-type]
    assert outcome is not None
    return outcome


SECRETS = {"SWARMBUS_BROKER_PASSWORD": "broker-secret", "MQTT_PASSWORD": "mqtt-secret",
           "SWARMBUS_BROKER_URL": "mqtt://user:pw@example:1883", "AWS_SECRET_ACCESS_KEY": "aws"}


def test_cli_fallback_when_nothing_listens(relay: HookRelay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("OPENCLAW_PROFILE", "work")  # the CLI's own settings pass through
    script, record = fake_openclaw(tmp_path)
    settings = make_settings(relay, tmp_path, gateway_url=f"ws://127.0.0.1:{closed_port()}", token="cfg-token",
                             openclaw_path=str(script), timeout_s=90)
    message = stored("cli please", "body for the CLI fallback " + "z" * 20000)
    outcome = run_wake(relay, settings, message)
    assert outcome.ok, outcome
    assert "not reachable" in outcome.detail and "run-from-cli ok" in outcome.detail
    (call,) = calls(record)
    argv = call["argv"]
    assert argv[:1] == ["agent"]
    assert argv[argv.index("--session-key") + 1] == "agent:main:swarmbus-inbox"
    assert "--json" in argv and argv[argv.index("--timeout") + 1] == "90"
    assert "--local" not in argv and "--message" not in argv
    assert "body for the CLI fallback" in call["message"] and "UNTRUSTED" in call["message"]
    assert call["message_file_mode"] == "0o600"
    assert not Path(argv[argv.index("--message-file") + 1]).exists()  # removed afterwards
    env = call["env"]
    assert not set(SECRETS) & set(env)
    assert not [k for k in env if k.startswith("SWARMBUS_")]
    assert env["OPENCLAW_GATEWAY_TOKEN"] == "cfg-token" and env["OPENCLAW_PROFILE"] == "work"
    assert env["PATH"] == os.environ["PATH"]


def test_cli_local_adds_local(relay: HookRelay, tmp_path: Path) -> None:
    script, record = fake_openclaw(tmp_path)
    settings = make_settings(relay, tmp_path, gateway_url=f"ws://127.0.0.1:{closed_port()}",
                             openclaw_path=str(script), cli_local=True)
    assert run_wake(relay, settings, stored()).ok
    assert "--local" in calls(record)[0]["argv"]


def test_cli_error_is_a_failed_wake(relay: HookRelay, tmp_path: Path) -> None:
    script, _ = fake_openclaw(tmp_path, code=1, answer={"ok": False, "error": {
        "type": "cli_error", "message": "No route-compatible authentication source is configured for openai.\nmore"}})
    settings = make_settings(relay, tmp_path, gateway_url=f"ws://127.0.0.1:{closed_port()}",
                             openclaw_path=str(script))
    outcome = run_wake(relay, settings, stored())
    assert not outcome.ok and outcome.exit_code == 1
    assert "exited 1: No route-compatible authentication source" in outcome.detail


def test_no_fallback_when_disabled(relay: HookRelay, tmp_path: Path) -> None:
    script, record = fake_openclaw(tmp_path)
    settings = make_settings(relay, tmp_path, gateway_url=f"ws://127.0.0.1:{closed_port()}",
                             openclaw_path=str(script), use_cli_fallback=False)
    outcome = run_wake(relay, settings, stored())
    assert not outcome.ok and "not reachable" in outcome.detail and "use_cli_fallback" in outcome.detail
    assert calls(record) == []


def test_missing_cli_is_reported(relay: HookRelay, tmp_path: Path) -> None:
    settings = make_settings(relay, tmp_path, gateway_url=f"ws://127.0.0.1:{closed_port()}",
                             openclaw_path=str(tmp_path / "nope" / "openclaw"))
    outcome = run_wake(relay, settings, stored())
    assert not outcome.ok and "CLI fallback unavailable" in outcome.detail


def test_no_fallback_once_the_gateway_was_reached(relay: HookRelay, tmp_path: Path, gateway: object) -> None:
    """The gateway closes (1012) and never comes back: the run may have started, and the CLI
    would use another idempotency key, so the wake fails instead of falling back."""
    script, record = fake_openclaw(tmp_path)
    gateway.close_with_restart(1, go_away=True)  # type: ignore[attr-defined]
    settings = make_settings(relay, tmp_path, gateway_url=gateway.url, token="test-token",  # type: ignore[attr-defined]
                             openclaw_path=str(script), max_attempts=3)
    outcome = run_wake(relay, settings, stored())
    assert not outcome.ok and "went away" in outcome.detail, outcome
    assert calls(record) == []


def test_refusals_do_not_fall_back(relay: HookRelay, tmp_path: Path, gateway: object) -> None:
    """Only an unreachable gateway falls back: a gateway that refused the token would refuse the CLI too."""
    script, record = fake_openclaw(tmp_path)
    settings = make_settings(relay, tmp_path, gateway_url=gateway.url, token="wrong",  # type: ignore[attr-defined]
                             openclaw_path=str(script))
    outcome = run_wake(relay, settings, stored())
    assert not outcome.ok and "AUTH_TOKEN_MISMATCH" in outcome.detail
    assert calls(record) == []
