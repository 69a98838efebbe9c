"""Tests for swarmbus-priority through a fresh plugin manager: no broker, real child processes.

The plugin is registered by hand into ``get_plugin_manager(entry_points=False)`` and its hooks
are driven through ``HookRelay``, as the daemon's ``wake`` handler calls them. Commands are this
interpreter running small scripts that leave marker files; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import swarmbus_priority
from swarmbus import (
    DoctorContext,
    HandlerContext,
    HookRelay,
    Settings,
    StoredMessage,
    WakeDecision,
    WakeOutcome,
    get_plugin_manager,
    new_envelope,
    wake,
)
from swarmbus.testing import pid_alive, wait_for
from swarmbus_priority.config import PrioritySettings, command_for
from swarmbus_priority.runner import child_environment

AGENT = "coder"
PY = sys.executable


@pytest.fixture
def relay() -> HookRelay:
    pm = get_plugin_manager(entry_points=False)
    pm.register(swarmbus_priority, name="priority")
    return HookRelay(pm)


def settings_with(relay: HookRelay, invoke: list[str] | None = None, **section: Any) -> Settings:
    """Settings with ``[plugins.priority]`` validated the way the CLI validates it."""
    settings = Settings()
    for name, model in relay.settings_sections().items():
        settings.plugins[name] = model.model_validate(section if name == "priority" else {})
    settings.wake.command = invoke
    return settings


def stored(subject: str = "hello", *, sender: str = "planner", priority: str = "normal", seq: int = 1,
           body: str = "the body", **fields: Any) -> StoredMessage:
    envelope = new_envelope(sender, AGENT, subject, body, priority=priority, **fields)
    return StoredMessage(seq, envelope, f"agents/{AGENT}/inbox", time.time())


def context_for(relay: HookRelay, settings: Settings) -> HandlerContext:
    async def no_send(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("the priority plugin never sends")

    return HandlerContext(agent_id=AGENT, settings=settings, logger=logging.getLogger("test.priority"),
                          send=no_send, hooks=relay)


def wake_one(relay: HookRelay, settings: Settings, message: StoredMessage) -> WakeOutcome | None:
    return asyncio.run(relay.wake(message, wake("test"), context_for(relay, settings)))


def wake_all(relay: HookRelay, settings: Settings, messages: list[StoredMessage]) -> list[WakeOutcome | None]:
    async def go() -> list[WakeOutcome | None]:
        ctx = context_for(relay, settings)
        return list(await asyncio.gather(*(relay.wake(m, wake("test"), ctx) for m in messages)))

    return asyncio.run(go())


def py(code: str, *args: str) -> list[str]:
    return [PY, "-c", code, *args]


# -- settings ---------------------------------------------------------------------------------
def test_settings_section_defaults_and_validation(relay: HookRelay) -> None:
    model = relay.settings_sections()["priority"]
    assert model is PrioritySettings
    cfg = model()
    assert (cfg.high, cfg.rules, cfg.timeout, cfg.concurrency, cfg.batch) == (None, [], 600.0, 8, False)
    parsed = model.model_validate({"high": "notify-me --urgent 'a b'", "concurrency": {"high": 2},
                                   "rules": [{"sender": "ci-*", "command": ["ci-notify"]}]})
    assert parsed.high == ["notify-me", "--urgent", "a b"]
    assert (parsed.limit("high"), parsed.limit("low")) == (2, 8)
    for bad in ({"high": []}, {"low": ""}, {"timeout": 0}, {"concurrency": 0}, {"concurrency": {"urgent": 2}},
                {"rules": [{"command": ["x"]}]}, {"rules": [{"sender": "a", "command": []}]}, {"colour": "red"},
                {"batch": "maybe"}):
        with pytest.raises(ValueError):
            model.model_validate(bad)


# -- which command ----------------------------------------------------------------------------
def test_rules_then_priority_tables_then_invoke_pick_the_argv(relay: HookRelay) -> None:
    settings = settings_with(
        relay, invoke=["invoked"], high=["notify-me", "--urgent"], low=["quiet"],
        rules=[{"sender": "ci-*", "command": ["ci-notify"]},
               {"subject": "deploy *", "priority": "high", "command": ["page-oncall"]},
               {"subject": "deploy *", "command": ["deploy-log"]}],
    )
    cases = [
        (stored(sender="ci-runner", subject="deploy now", priority="high"), ["ci-notify"]),  # first rule wins
        (stored(subject="deploy now", priority="high"), ["page-oncall"]),
        (stored(subject="deploy now", priority="low"), ["deploy-log"]),
        (stored(subject="Deploy now", priority="high"), ["notify-me", "--urgent"]),  # patterns are case-sensitive
        (stored(priority="low"), ["quiet"]),
        (stored(priority="normal"), ["invoked"]),  # no table entry: wake.command (--invoke)
        (stored(priority="urgent-ish"), ["invoked"]),
    ]
    for message, argv in cases:
        assert command_for(message, settings) == argv, (message.from_agent, message.subject, message.priority)
    assert command_for(stored(priority="normal"), settings_with(relay, high=["x"])) is None


def test_no_command_means_no_opinion(relay: HookRelay) -> None:
    assert wake_one(relay, settings_with(relay), stored()) is None
    # through the core's `wake` handler: nobody woke
    settings = settings_with(relay)
    settings.wake.policy = "all"
    handler = relay.handlers(settings)["wake"].handle
    assert "no waker is configured" in asyncio.run(handler(stored(), context_for(relay, settings)))


def test_invoke_runs_for_every_woken_message_with_body_and_exit_status(relay: HookRelay, tmp_path: Path) -> None:
    out = tmp_path / "stdin"
    code = "import sys; open(sys.argv[1], 'w').write(sys.stdin.read()); print('done here'); sys.exit(0)"
    outcome = wake_one(relay, settings_with(relay, invoke=py(code, str(out))), stored(body="wake up\nplease"))
    assert outcome is not None and outcome.ok and outcome.exit_code == 0
    assert out.read_text() == "wake up\nplease"
    assert outcome.detail.startswith(f"{PY} exited 0 in ") and " ms; output: done here" in outcome.detail


def test_a_failing_command_is_recorded_with_status_duration_and_output(relay: HookRelay) -> None:
    code = "import sys; print('line one', flush=True); print('it broke', file=sys.stderr); sys.exit(3)"
    settings = settings_with(relay, rules=[{"subject": "fail*", "command": py(code)}])
    outcome = wake_one(relay, settings, stored("failing"))
    assert outcome is not None and not outcome.ok and outcome.exit_code == 3
    assert " exited 3 in " in outcome.detail and outcome.detail.endswith("; output: line one / it broke")
    # through the core's `wake` handler: a failed delivery with that detail
    settings.wake.policy = "all"
    handler = relay.handlers(settings)["wake"].handle
    with pytest.raises(Exception, match=r"exited 3 in \d+ ms; output: line one / it broke"):
        asyncio.run(handler(stored("failing"), context_for(relay, settings)))


def test_a_program_that_cannot_start_is_recorded(relay: HookRelay, tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-program")
    outcome = wake_one(relay, settings_with(relay, normal=[missing]), stored())
    assert outcome is not None and not outcome.ok and outcome.exit_code is None
    assert outcome.detail.startswith(f"{missing} could not be started (")


def test_output_tail_is_bounded(relay: HookRelay) -> None:
    code = "print('x' * 100000); print('THE END')"
    outcome = wake_one(relay, settings_with(relay, normal=py(code)), stored())
    assert outcome is not None and outcome.ok
    assert outcome.detail.endswith("THE END") and len(outcome.detail) < 600


# -- timeout ----------------------------------------------------------------------------------
GRANDPARENT = (
    "import os, subprocess, sys, time\n"
    "d = sys.argv[1]\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "open(os.path.join(d, 'pids.tmp'), 'w').write(f'{os.getpid()} {child.pid}')\n"
    "os.rename(os.path.join(d, 'pids.tmp'), os.path.join(d, 'pids'))\n"
    "time.sleep(60)\n"
)


def test_timeout_kills_the_whole_process_group(relay: HookRelay, tmp_path: Path) -> None:
    settings = settings_with(relay, normal=py(GRANDPARENT, str(tmp_path)), timeout=2)
    started = time.monotonic()
    outcome = wake_one(relay, settings, stored())
    assert time.monotonic() - started < 30
    assert outcome is not None and not outcome.ok and outcome.exit_code is None
    assert "timed out after 2 s (process group killed)" in outcome.detail
    assert (tmp_path / "pids").exists(), "the command did not start its grandchild within the timeout"
    child, grandchild = (int(p) for p in (tmp_path / "pids").read_text().split())
    wait_for(lambda: not pid_alive(child) and not pid_alive(grandchild), 10,
             what=f"command {child} and its grandchild {grandchild} to be killed")


# -- concurrency ------------------------------------------------------------------------------
# Each run: under an exclusive lock, count itself in (and record the highest count seen), hold
# its slot for a moment (the work), count itself out.
COUNTER = (
    "import fcntl, os, sys, time\n"
    "d = sys.argv[1]\n"
    "def step(delta):\n"
    "    with open(os.path.join(d, 'lock'), 'a') as lock:\n"
    "        fcntl.flock(lock, fcntl.LOCK_EX)\n"
    "        path = os.path.join(d, 'running')\n"
    "        n = int(open(path).read() or 0) if os.path.exists(path) else 0\n"
    "        n += delta\n"
    "        open(path, 'w').write(str(n))\n"
    "        with open(os.path.join(d, 'seen'), 'a') as seen:\n"
    "            seen.write(f\"{os.environ['SWARMBUS_PRIORITY']} {n}\\n\")\n"
    "step(1)\n"
    "time.sleep(0.3)\n"
    "step(-1)\n"
)


def _counts(tmp_path: Path) -> list[tuple[str, int]]:
    return [(p, int(n)) for p, n in (line.split() for line in (tmp_path / "seen").read_text().splitlines())]


def test_concurrency_limit_per_priority_holds(relay: HookRelay, tmp_path: Path) -> None:
    settings = settings_with(relay, invoke=py(COUNTER, str(tmp_path)), concurrency=2)
    outcomes = wake_all(relay, settings, [stored(seq=i) for i in range(6)])
    assert all(o is not None and o.ok for o in outcomes), outcomes
    counts = [n for _, n in _counts(tmp_path)]
    assert len(counts) == 12  # each run counted itself in and out
    assert max(counts) == 2, counts  # never more than the limit, and the limit was used


def test_each_priority_has_its_own_limit(relay: HookRelay, tmp_path: Path) -> None:
    settings = settings_with(relay, invoke=py(COUNTER, str(tmp_path)), concurrency={"high": 1, "low": 1})
    messages = [stored(seq=i, priority="high" if i % 2 else "low") for i in range(6)]
    outcomes = wake_all(relay, settings, messages)
    assert all(o is not None and o.ok for o in outcomes), outcomes
    # one high and one low may overlap (2 running), never two of one priority
    assert max(n for _, n in _counts(tmp_path)) == 2


# -- batches ----------------------------------------------------------------------------------
BATCH_LOG = (
    "import json, os, sys\n"
    "lines = sys.stdin.read().splitlines()\n"
    "record = {'batch': os.environ['SWARMBUS_BATCH'], 'ids': os.environ['SWARMBUS_IDS'],\n"
    "          'stdin_ids': [json.loads(line)['id'] for line in lines], 'first': os.environ['SWARMBUS_ID']}\n"
    "with open(sys.argv[1], 'a') as f:\n"
    "    f.write(json.dumps(record) + '\\n')\n"
)


def test_batch_runs_each_command_once_for_a_coalesced_wake(relay: HookRelay, tmp_path: Path) -> None:
    """With ``batch = true`` the plugin asks for coalesced wakes; a wake's messages (``message``
    and ``decision.batch``, as the core hands them over) run each distinct command once."""
    normal_log, high_log = tmp_path / "normal.jsonl", tmp_path / "high.jsonl"
    settings = settings_with(relay, normal=py(BATCH_LOG, str(normal_log)), high=py(BATCH_LOG, str(high_log)),
                             batch=True)
    messages = [stored(seq=i, subject=f"m{i}", priority="high" if i == 2 else "normal") for i in range(4)]
    assert all(relay.wake_coalesce(m, settings) for m in messages)
    decision = WakeDecision(True, "test", batch=tuple(messages[1:]))
    outcome = asyncio.run(relay.wake(messages[0], decision, context_for(relay, settings)))
    assert outcome is not None and outcome.ok, outcome
    ids = [m.id for m in messages]
    normal = [json.loads(line) for line in normal_log.read_text().splitlines()]
    high = [json.loads(line) for line in high_log.read_text().splitlines()]
    normal_ids = [ids[0], ids[1], ids[3]]
    assert [r["stdin_ids"] for r in normal] == [normal_ids]  # one run, oldest first
    assert [(r["batch"], r["ids"], r["first"]) for r in normal] == [("3", ",".join(normal_ids), ids[0])]
    assert [(r["batch"], r["stdin_ids"]) for r in high] == [("1", [ids[2]])]
    assert ids[0] in outcome.detail and ids[2] in outcome.detail  # each run's detail names its messages


def test_without_batch_each_message_is_its_own_wake(relay: HookRelay, tmp_path: Path) -> None:
    settings = settings_with(relay, normal=py("pass"))
    assert relay.wake_coalesce(stored(), settings) is False
    assert relay.wake_coalesce(stored(priority="high"), settings) is False  # no command: no opinion
    out = tmp_path / "runs"
    code = "import os, sys; open(sys.argv[1], 'a').write(os.environ['SWARMBUS_ID'] + '\\n')"
    settings = settings_with(relay, normal=py(code, str(out)))
    messages = [stored(seq=i) for i in range(3)]
    decision = WakeDecision(True, "test", batch=tuple(messages[1:]))  # a batch all the same: once per message
    outcome = asyncio.run(relay.wake(messages[0], decision, context_for(relay, settings)))
    assert outcome is not None and outcome.ok, outcome
    assert sorted(out.read_text().split()) == sorted(m.id for m in messages)


def test_without_batch_a_command_runs_once_per_message(relay: HookRelay, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    code = "import os, sys; open(sys.argv[1], 'a').write(os.environ['SWARMBUS_ID'] + '\\n')"
    settings = settings_with(relay, normal=py(code, str(out)), concurrency=1)
    messages = [stored(seq=i) for i in range(4)]
    wake_all(relay, settings, messages)
    assert sorted(out.read_text().split()) == sorted(m.id for m in messages)


# -- environment ------------------------------------------------------------------------------
def test_environment_is_scrubbed_and_carries_the_envelope(relay: HookRelay, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"MY_API_TOKEN": "tok-s3cret", "SWARMBUS_BROKER_PASSWORD": "pw-s3cret",
                        "MQTT_PASSWORD": "pw-s3cret", "SWARMBUS_BROKER_URL": "mqtt://u:pw-s3cret@h"}.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "env.json"
    code = "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w'))"
    message = stored("urgent thing", priority="high", reply_to="planner-bot", in_reply_to="abc")
    outcome = wake_one(relay, settings_with(relay, high=py(code, str(out))), message)
    assert outcome is not None and outcome.ok, outcome
    env = json.loads(out.read_text())
    leaked = {k for k, v in env.items() if "s3cret" in v}
    assert not leaked, f"secrets reached the wake command: {sorted(leaked)}"
    assert {k: env[k] for k in env if k.startswith("SWARMBUS_") and k != "SWARMBUS_CHILD_OF"} == {
        "SWARMBUS_AGENT_ID": AGENT, "SWARMBUS_FROM": "planner", "SWARMBUS_TO": AGENT, "SWARMBUS_ID": message.id,
        "SWARMBUS_SUBJECT": "urgent thing", "SWARMBUS_CONTENT_TYPE": "text/plain", "SWARMBUS_PRIORITY": "high",
        "SWARMBUS_TS": message.envelope.ts, "SWARMBUS_REPLY_TO": "planner-bot", "SWARMBUS_IN_REPLY_TO": "abc",
    }
    assert env["PATH"] == os.environ["PATH"]


def test_child_environment_is_an_allow_list() -> None:
    base = {"PATH": "/bin", "HOME": "/h", "SECRET": "x", "MQTT_USERNAME": "u", "SWARMBUS_BROKER_PASSWORD": "p"}
    env = child_environment(stored(), AGENT, base=base)
    assert {k for k in env if not k.startswith("SWARMBUS_")} == {"PATH", "HOME"}
    assert "SWARMBUS_BROKER_PASSWORD" not in env and "SWARMBUS_REPLY_TO" not in env


# -- doctor -----------------------------------------------------------------------------------
def _check(relay: HookRelay, settings: Settings) -> Any:
    checks = {c.name: c for c in relay.doctor_checks(settings)}
    return checks["wake-command"].run(DoctorContext(settings=settings, agent_id=AGENT, cache={}))


def test_doctor_checks_every_configured_program(relay: HookRelay, tmp_path: Path) -> None:
    assert _check(relay, settings_with(relay)).status == "skip"
    assert _check(relay, settings_with(relay, invoke=[PY], high=[PY])).status == "ok"
    missing = f"no-such-wake-{os.getpid()}"
    result = _check(relay, settings_with(relay, invoke=[PY], rules=[{"sender": "x", "command": [missing]}]))
    assert result.status == "fail" and result.fix
    assert f"plugins.priority.rules[0]: '{missing}' is not found on PATH" in result.summary


def test_imports_only_the_public_api() -> None:
    for path in Path(swarmbus_priority.__file__).parent.glob("*.py"):
        source = path.read_text()
        assert "from swarmbus." not in source and "import swarmbus." not in source, path


def test_invoke_string_is_split_like_a_shell_but_never_run_by_one(relay: HookRelay, tmp_path: Path) -> None:
    marker = tmp_path / "never"
    out = tmp_path / "argv.json"
    code = "import json, sys; json.dump(sys.argv[1:], open(sys.argv[1], 'w'))"
    line = shlex.join([PY, "-c", code, str(out)]) + f" '; touch {marker}' '$(touch {marker})'"
    settings = Settings.model_validate({"wake": {"command": line}})
    outcome = wake_one(relay, settings, stored())
    assert outcome is not None and outcome.ok, outcome
    assert json.loads(out.read_text()) == [str(out), f"; touch {marker}", f"$(touch {marker})"]
    assert not marker.exists()
