"""``swarmbus doctor`` checks of host type ``codex``: in-process through the plugin manager, and
once through the CLI (``swarmbus doctor --json``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from codex_helpers import AGENT, Context, make_settings, stored, wake_via_hook
from fake_app_server import FakeAppServer

from swarmbus import CheckResult, DoctorCheck, DoctorContext, HookRelay, Settings, testing
from swarmbus.testing import run_step


def doctor(relay: HookRelay, settings: Settings) -> dict[str, CheckResult]:
    """This plugin's checks only (the core's built-in ones would look for a broker and a daemon)."""
    checks: list[DoctorCheck] = []
    relay.pm.hook.swarmbus_doctor_checks(register=checks.append, settings=settings)
    checks = [c for c in checks if c.name.startswith("codex: ")]
    ctx = DoctorContext(settings, settings.agent_id, {})
    return {c.name: c.run(ctx) for c in sorted(checks, key=lambda c: (c.order, c.name))}


def init(relay: HookRelay, settings: Settings) -> None:
    for step in relay.host_types()["codex"].init_steps(settings):
        assert run_step(step.name, step.changes, dry_run=False).status != "failed"


def test_only_for_host_type_codex(tmp_path: Path, relay: HookRelay) -> None:
    assert doctor(relay, make_settings(tmp_path, host_type="cc")) == {}
    assert list(doctor(relay, make_settings(tmp_path, host_type="codex"))) == [
        "codex: codex", "codex: mcp", "codex: skill", "codex: app-server", "codex: last wake"]


def test_before_init_and_without_codex(tmp_path: Path, codex_home: Path, no_codex: None, relay: HookRelay) -> None:
    results = doctor(relay, make_settings(tmp_path / "state"))
    assert results["codex: codex"].status == "fail" and "npm install -g @openai/codex" in str(results["codex: codex"].fix)
    assert results["codex: mcp"].status == "warn" and "not registered" in results["codex: mcp"].summary
    assert f"swarmbus init --agent-id {AGENT} --host-type codex" in str(results["codex: mcp"].fix)
    assert results["codex: skill"].status == "warn"
    app = results["codex: app-server"]
    assert app.status == "skip" and app.summary == "none running: wakes use headless `codex exec resume`"
    last = results["codex: last wake"]
    assert last.status == "ok" and last.summary == "no wake yet; no thread yet (the first wake starts one)"


def test_after_init_with_an_app_server_and_a_wake(tmp_path: Path, codex_home: Path, fake_codex: Any,
                                                  app_server: FakeAppServer, relay: HookRelay) -> None:
    tid = app_server.add_thread()
    settings = make_settings(tmp_path / "state", thread_id=tid)
    init(relay, settings)
    assert wake_via_hook(relay, [stored()], Context(settings, relay)).ok
    results = doctor(relay, settings)
    assert {name: r.status for name, r in results.items()} == dict.fromkeys(results, "ok"), results
    assert results["codex: codex"].summary.startswith("codex-cli 9.9.9-fake at ")
    assert results["codex: app-server"].summary.startswith(
        f"an app-server answers on unix://{codex_home / 'swarmbus-app-server.sock'}: wakes start turns there")
    last = results["codex: last wake"].summary
    assert last.startswith("last wake ok (0 min ago): app-server: codex app-server accepted turn ")
    assert last.endswith(f"thread {tid} (thread_id in [plugins.codex])")


def test_problems_are_named(tmp_path: Path, codex_home: Path, fake_codex: Any, relay: HookRelay) -> None:
    settings = make_settings(tmp_path / "state", app_server=f"unix://{codex_home}/gone.sock")
    init(relay, settings)
    config = codex_home / "config.toml"
    config.write_text(config.read_text().replace('"--agent-id", "cx"', '"--agent-id", "other"'))
    (codex_home / "skills" / "swarmbus" / "SKILL.md").write_text("edited\n")
    fake_codex.control(fail=1)
    assert not wake_via_hook(relay, [stored()], Context(settings, relay)).ok
    results = doctor(relay, settings)
    assert results["codex: mcp"].status == "warn" and "differs from this agent's" in results["codex: mcp"].summary
    assert results["codex: skill"].status == "warn" and "differs" in results["codex: skill"].summary
    app = results["codex: app-server"]
    assert app.status == "warn" and "does not answer" in app.summary
    assert app.fix == f"start it: codex app-server --listen unix://{codex_home}/gone.sock"
    last = results["codex: last wake"]
    assert last.status == "warn" and "codex exec exited 1" in last.summary
    config.write_text("[mcp_servers\n")
    assert doctor(relay, settings)["codex: mcp"].status == "fail"


def test_doctor_through_the_cli(tmp_path: Path, codex_home: Path, fake_codex: Any, app_server: FakeAppServer) -> None:
    env = testing.isolated_env(tmp_path, "mqtt://127.0.0.1:9", base=dict(os.environ), plugins="codex",
                               SWARMBUS_HOST_TYPE="codex")
    (tmp_path / "config.toml").write_text("")
    proc = testing.run_cli(env, "doctor", "--agent-id", AGENT, "--json")
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["codex: codex"]["status"] == "ok" and "9.9.9-fake" in checks["codex: codex"]["summary"]
    assert checks["codex: app-server"]["status"] == "ok"
    assert checks["codex: mcp"]["status"] == "warn"
