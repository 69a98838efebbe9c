"""Tests for swarmbus-example: every hook through a fresh plugin manager, no broker needed.

The plugin is registered by hand into ``get_plugin_manager(entry_points=False)`` (so other
installed plugins cannot interfere) and its hooks are driven through ``HookRelay``, the way
the daemon and the CLI call them. The last tests run ``python -m swarmbus`` in a subprocess
to check the installed entry point.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import swarmbus_example
from swarmbus import (
    DoctorContext,
    HandlerContext,
    HookRelay,
    Settings,
    StoredMessage,
    Task,
    TaskHandler,
    get_plugin_manager,
    new_envelope,
)

AGENT = "coder"


@pytest.fixture
def relay() -> HookRelay:
    pm = get_plugin_manager(entry_points=False)
    pm.register(swarmbus_example, name="example")
    return HookRelay(pm)


def settings_with(relay: HookRelay, **section: Any) -> Settings:
    """Settings with ``[plugins.example]`` validated the way the CLI validates it."""
    sections = relay.settings_sections()
    settings = Settings()
    for name, model in sections.items():
        settings.plugins[name] = model.model_validate(section if name == "example" else {})
    return settings


def stored(subject: str = "ping", *, sender: str = "planner", seq: int = 1, **fields: Any) -> StoredMessage:
    envelope = new_envelope(sender, AGENT, subject, "are you there?", **fields)
    return StoredMessage(seq, envelope, f"agents/{AGENT}/inbox", time.time())


@dataclass
class FakeSend:
    """Stands in for the daemon's ``context.send``: records each call, returns a new id."""

    calls: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, to: str, subject: str, body: str, **fields: Any) -> str:
        self.calls.append({"to": to, "subject": subject, "body": body, **fields})
        return f"reply-{len(self.calls)}"


def context_for(relay: HookRelay, settings: Settings, send: FakeSend) -> HandlerContext:
    return HandlerContext(agent_id=AGENT, settings=settings, logger=logging.getLogger("test.example"),
                          send=send, hooks=relay)


# -- settings ---------------------------------------------------------------------------------
def test_settings_section_registered_with_defaults(relay: HookRelay) -> None:
    sections = relay.settings_sections()
    assert sections["example"] is swarmbus_example.ExampleSettings
    assert issubclass(sections["example"], BaseModel)
    cfg = sections["example"]()
    assert cfg.enabled is True
    assert cfg.reply_subject == "pong"


def test_settings_section_validates_values(relay: HookRelay) -> None:
    model = relay.settings_sections()["example"]
    assert model.model_validate({"enabled": False, "reply_subject": "PONG"}).reply_subject == "PONG"
    for bad in ({"enabled": "maybe"}, {"reply_subject": "ping"}, {"reply_subject": " "}, {"colour": "red"}):
        with pytest.raises(ValueError):
            model.model_validate(bad)


def test_config_falls_back_to_defaults_without_a_validated_section() -> None:
    assert swarmbus_example.config(Settings()) == swarmbus_example.ExampleSettings()
    raw = Settings(plugins={"example": {"reply_subject": "hi"}})
    assert swarmbus_example.config(raw).reply_subject == "hi"


# -- handler and routing ----------------------------------------------------------------------
def test_registers_the_pong_handler(relay: HookRelay) -> None:
    handlers = relay.handlers(settings_with(relay))
    assert "example-pong" in handlers
    assert {"archive", "wake"} <= set(handlers)  # the built-ins are still there
    assert handlers["example-pong"].timeout == 30


def test_no_handler_when_disabled(relay: HookRelay) -> None:
    assert "example-pong" not in relay.handlers(settings_with(relay, enabled=False))


def test_routes_only_pings_to_the_handler(relay: HookRelay) -> None:
    settings = settings_with(relay)
    names = frozenset(relay.handlers(settings))
    assert set(relay.route(stored("ping"), names, settings)) == {"archive", "wake", "example-pong"}
    assert set(relay.route(stored("PING"), names, settings)) == {"archive", "wake"}
    assert set(relay.route(stored("ping me"), names, settings)) == {"archive", "wake"}
    # disabled: no handler is registered, so nothing routes to it
    assert "example-pong" not in relay.route(stored("ping"), frozenset({"archive", "wake"}), settings)


def test_handler_replies_pong_with_the_ping_id(relay: HookRelay) -> None:
    settings = settings_with(relay)
    send = FakeSend()
    ping = stored("ping")
    handler = relay.handlers(settings)["example-pong"]
    detail = asyncio.run(handler.handle(ping, context_for(relay, settings, send)))
    assert send.calls == [{"to": "planner", "subject": "pong", "body": ping.id, "in_reply_to": ping.id}]
    assert detail == "answered pong reply-1 to planner"


def test_handler_uses_reply_to_and_the_configured_subject(relay: HookRelay) -> None:
    settings = settings_with(relay, reply_subject="PONG!")
    send = FakeSend()
    ping = stored("ping", reply_to="planner-bot")
    asyncio.run(relay.handlers(settings)["example-pong"].handle(ping, context_for(relay, settings, send)))
    assert send.calls == [{"to": "planner-bot", "subject": "PONG!", "body": ping.id, "in_reply_to": ping.id}]


def test_handler_ignores_own_and_expired_pings(relay: HookRelay) -> None:
    settings = settings_with(relay)
    send = FakeSend()
    handle = relay.handlers(settings)["example-pong"].handle
    ctx = context_for(relay, settings, send)
    assert asyncio.run(handle(stored("ping", sender=AGENT), ctx)) == "not answered: own message"
    expired = stored("ping", expires_at="2000-01-01T00:00:00+00:00")
    assert asyncio.run(handle(expired, ctx)) == "not answered: expired"
    assert send.calls == []


def test_pings_do_not_wake_the_host(relay: HookRelay) -> None:
    settings = settings_with(relay)
    settings.wake.policy = "all"
    decision = relay.wake_decision(stored("ping"), settings)
    assert not decision.wake
    assert "example plugin" in decision.reason
    # anything else is left to the built-in policy
    assert relay.wake_decision(stored("hello"), settings).wake
    # disabled: no opinion, so the policy decides (and wakes under policy `all`)
    disabled = settings_with(relay, enabled=False)
    disabled.wake.policy = "all"
    assert relay.wake_decision(stored("ping"), disabled).wake


# -- tasks ------------------------------------------------------------------------------------
def task_handlers(relay: HookRelay, settings: Settings) -> list[TaskHandler]:
    found: list[TaskHandler] = []
    relay.hook.swarmbus_task_handlers(register=found.append, settings=settings)
    return found


def test_runs_echo_tasks(relay: HookRelay) -> None:
    settings = settings_with(relay)
    [handler] = task_handlers(relay, settings)
    assert handler.type == swarmbus_example.ECHO == "example.echo"
    task = Task("t-1", "example.echo", "planner", {"text": "hi"}, attempt=2, fence=2, max_attempts=3)
    result = asyncio.run(handler.run(task, context_for(relay, settings, FakeSend())))
    assert result == {"echo": {"text": "hi"}, "by": AGENT, "attempt": 2}
    assert json.loads(json.dumps(result)) == result  # a result is a JSON value


def test_no_task_handler_when_disabled(relay: HookRelay) -> None:
    assert task_handlers(relay, settings_with(relay, enabled=False)) == []


def test_a_daemon_completes_an_echo_task_it_posted(tmp_path: Path) -> None:
    """End to end on a private broker: the agent posts a task (its daemon is the arbiter), is
    offered it (it runs ``example.echo``), claims it, runs it and completes it."""
    from swarmbus.testing import DaemonBus

    with DaemonBus.open(tmp_path, "solo", plugins="example") as bus:
        bus.start_daemon()
        posted = bus.cli("task", "post", "example.echo", "--agent-id", "solo", "--payload", '{"text": "hi"}')
        assert posted.returncode == 0, posted.stderr
        waited = bus.cli("task", "wait", posted.stdout.strip(), "--agent-id", "solo", "--timeout", "30", "--json")
        assert waited.returncode == 0, (waited.stdout, waited.stderr)
        record = json.loads(waited.stdout.splitlines()[-1])
        assert (record["state"], record["claimer"], record["fence"]) == ("completed", "solo", 1)
        assert record["result"] == {"echo": {"text": "hi"}, "by": "solo", "attempt": 1}


# -- doctor -----------------------------------------------------------------------------------
def _run_check(relay: HookRelay, settings: Settings) -> Any:
    checks = {c.name: c for c in relay.doctor_checks(settings)}
    assert "plugins" in checks  # the core checks are still there
    return checks["example"].run(DoctorContext(settings=settings, agent_id=AGENT, cache={}))


def test_doctor_check_ok_when_enabled(relay: HookRelay) -> None:
    result = _run_check(relay, settings_with(relay, reply_subject="PONG"))
    assert result.status == "ok"
    assert "PONG" in result.summary


def test_doctor_check_warns_with_a_fix_when_disabled(relay: HookRelay) -> None:
    result = _run_check(relay, settings_with(relay, enabled=False))
    assert result.status == "warn"
    assert result.fix and "[plugins.example]" in result.fix


# -- CLI command ------------------------------------------------------------------------------
def test_command_prints_a_greeting_with_the_reply_subject(relay: HookRelay, capsys: pytest.CaptureFixture[str]) -> None:
    from swarmbus.cli.main import CORE_COMMANDS, build_parser

    commands = relay.commands(frozenset(CORE_COMMANDS))
    assert set(commands) == {"example-hello"}
    args = build_parser(commands).parse_args(["example-hello", "--name", "tester"])
    assert commands["example-hello"].run(args, settings_with(relay, reply_subject="PONG")) == 0
    assert capsys.readouterr().out.strip() == "hello, tester! the example plugin answers `ping` with `PONG`"


def test_imports_only_the_public_api() -> None:
    source = Path(swarmbus_example.__file__).read_text()
    assert "from swarmbus." not in source
    assert "import swarmbus." not in source


# -- installed entry point (subprocess) -------------------------------------------------------
def _cli(*args: str, tmp_path: Path, config: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    config_file = tmp_path / "config.toml"
    config_file.write_text(config)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SWARMBUS_", "MQTT_"))}
    clean.update(SWARMBUS_CONFIG=str(config_file), SWARMBUS_STATE_DIR=str(tmp_path / "state"), **env)
    return subprocess.run([sys.executable, "-m", "swarmbus", *args], capture_output=True, text=True,
                          timeout=60, env=clean)


def test_entry_point_loads_the_plugin(tmp_path: Path) -> None:
    proc = _cli("plugins", "--json", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    infos = {i["name"]: i for i in json.loads(proc.stdout)}
    assert "example" in infos, "swarmbus-example is not installed: pip install -e . -e plugins/swarmbus-example"
    info = infos["example"]
    assert info["status"] == "loaded"
    assert info["distribution"] == "swarmbus-example"
    assert info["version"] == swarmbus_example.__version__ == "0.1.0"
    assert info["builtin"] is False
    assert info["hooks"] == sorted([
        "swarmbus_commands", "swarmbus_doctor_checks", "swarmbus_register_handlers",
        "swarmbus_route", "swarmbus_settings_sections", "swarmbus_task_handlers", "swarmbus_wake_decision",
    ])


def test_cli_command_reads_the_config_section(tmp_path: Path) -> None:
    proc = _cli("example-hello", tmp_path=tmp_path, config='[plugins.example]\nreply_subject = "hi-back"\n')
    assert proc.returncode == 0, proc.stderr
    assert "`hi-back`" in proc.stdout


def test_cli_reports_a_bad_config_value_by_key(tmp_path: Path) -> None:
    proc = _cli("example-hello", tmp_path=tmp_path, config='[plugins.example]\nenabled = "maybe"\n')
    assert proc.returncode == 2
    assert "plugins.example.enabled" in proc.stderr
    assert "Traceback" not in proc.stderr
