"""``swarmbus doctor`` checks against the fake gateway, the plugin's public-API discipline, and
the installed entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from openclaw_fake_gateway import FakeGateway
from openclaw_helpers import AGENT, TOKEN, make_settings

import swarmbus_openclaw
from swarmbus import CheckResult, DoctorContext, HookRelay, Settings

CHECKS = ("openclaw-gateway", "openclaw-protocol", "openclaw-scopes", "openclaw-cli")


def run_checks(relay: HookRelay, settings: Settings) -> dict[str, CheckResult]:
    checks = [c for c in relay.doctor_checks(settings) if c.name.startswith("openclaw-")]
    assert [c.name for c in checks] == list(CHECKS)
    context = DoctorContext(settings=settings, agent_id=AGENT, cache={})
    return {c.name: c.run(context) for c in checks}


def fake_cli(tmp_path: Path) -> str:
    script = tmp_path / "openclaw"
    script.write_text(f"#!{sys.executable}\nprint('OpenClaw 2026.9.6 (fake)')\n")
    script.chmod(0o755)
    return str(script)


def test_all_ok_against_the_gateway(relay: HookRelay, tmp_path: Path, gateway: FakeGateway) -> None:
    settings = make_settings(relay, tmp_path, gateway_url=gateway.url, token=TOKEN, openclaw_path=fake_cli(tmp_path))
    results = run_checks(relay, settings)
    assert {n: r.status for n, r in results.items()} == dict.fromkeys(CHECKS, "ok"), results
    assert "handshake OK" in results["openclaw-gateway"].summary
    assert results["openclaw-protocol"].summary == "gateway protocol 4"
    assert "operator.write" in results["openclaw-scopes"].summary
    assert "OpenClaw 2026.9.6 (fake)" in results["openclaw-cli"].summary
    assert len(gateway.requests("connect")) == 1  # one handshake shared by the checks
    assert gateway.requests("agent") == []  # doctor never starts a run


def test_token_mismatch_fails_with_the_gateway_code(relay: HookRelay, tmp_path: Path, gateway: FakeGateway) -> None:
    settings = make_settings(relay, tmp_path, gateway_url=gateway.url, token="wrong-token")
    results = run_checks(relay, settings)
    gw = results["openclaw-gateway"]
    assert gw.status == "fail" and "AUTH_TOKEN_MISMATCH" in gw.summary and gw.fix
    assert gw.details["details_code"] == "AUTH_TOKEN_MISMATCH"
    assert "wrong-token" not in gw.summary + (gw.fix or "")
    assert results["openclaw-protocol"].status == results["openclaw-scopes"].status == "skip"


def test_unreachable_gateway_fails_with_a_fix(relay: HookRelay, tmp_path: Path) -> None:
    settings = make_settings(relay, tmp_path, gateway_url="ws://127.0.0.1:1", token=TOKEN,
                             openclaw_path=str(tmp_path / "missing"))
    results = run_checks(relay, settings)
    assert results["openclaw-gateway"].status == "fail"
    assert "not reachable" in results["openclaw-gateway"].summary
    assert "openclaw gateway run" in (results["openclaw-gateway"].fix or "")
    assert results["openclaw-cli"].status == "warn" and results["openclaw-cli"].fix


def test_missing_write_scope_and_wrong_protocol(relay: HookRelay, tmp_path: Path) -> None:
    with FakeGateway(token=TOKEN, grant_scopes=("operator.read",)) as fake:
        results = run_checks(relay, make_settings(relay, tmp_path, gateway_url=fake.url, token=TOKEN))
    assert results["openclaw-scopes"].status == "fail" and results["openclaw-scopes"].fix
    # a gateway that only speaks protocol 5 refuses our 4..4 range in the handshake
    with FakeGateway(token=TOKEN, protocol=5) as fake:
        results = run_checks(relay, make_settings(relay, tmp_path, gateway_url=fake.url, token=TOKEN))
    assert results["openclaw-gateway"].status == "fail" and "protocol mismatch" in results["openclaw-gateway"].summary


def test_cli_check_skipped_when_fallback_disabled(relay: HookRelay, tmp_path: Path, gateway: FakeGateway) -> None:
    settings = make_settings(relay, tmp_path, gateway_url=gateway.url, token=TOKEN, use_cli_fallback=False)
    assert run_checks(relay, settings)["openclaw-cli"].status == "skip"


@pytest.mark.parametrize("host_type", [None, "claude-code"])
def test_skipped_for_other_host_types(relay: HookRelay, tmp_path: Path, host_type: str | None) -> None:
    results = run_checks(relay, make_settings(relay, tmp_path, host_type=host_type, gateway_url="ws://127.0.0.1:1"))
    assert {r.status for r in results.values()} == {"skip"}


def test_imports_only_the_public_api() -> None:
    package = Path(swarmbus_openclaw.__file__).parent
    for source in package.glob("*.py"):
        text = source.read_text()
        assert "from swarmbus." not in text and "import swarmbus." not in text, source.name


def _cli(*args: str, tmp_path: Path, config: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    config_file = tmp_path / "config.toml"
    config_file.write_text(config)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SWARMBUS_", "MQTT_", "OPENCLAW_"))}
    clean.update(SWARMBUS_CONFIG=str(config_file), SWARMBUS_STATE_DIR=str(tmp_path / "state"), **env)
    return subprocess.run([sys.executable, "-m", "swarmbus", *args], capture_output=True, text=True, timeout=60,
                          env=clean)


def test_entry_point_loads_the_plugin(tmp_path: Path) -> None:
    proc = _cli("plugins", "--json", tmp_path=tmp_path, SWARMBUS_LOAD_PLUGINS="openclaw")
    assert proc.returncode == 0, proc.stderr
    infos: dict[str, Any] = {i["name"]: i for i in json.loads(proc.stdout)}
    assert "openclaw" in infos, "pip install -e . -e plugins/swarmbus-openclaw"
    info = infos["openclaw"]
    assert (info["status"], info["distribution"], info["version"]) == ("loaded", "swarmbus-openclaw", "0.1.0")
    assert info["hooks"] == ["swarmbus_doctor_checks", "swarmbus_host_types", "swarmbus_settings_sections",
                             "swarmbus_wake", "swarmbus_wake_coalesce", "swarmbus_wake_paths"]


def test_bad_config_value_is_reported_by_key(tmp_path: Path) -> None:
    proc = _cli("config", "check", tmp_path=tmp_path, config='[plugins.openclaw]\nclient_id = "swarmbus"\n',
                SWARMBUS_LOAD_PLUGINS="openclaw")
    assert proc.returncode == 2 and "plugins.openclaw.client_id" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_show_hides_the_token(tmp_path: Path) -> None:
    proc = _cli("config", "show", tmp_path=tmp_path, config='[plugins.openclaw]\ntoken = "very-secret-token"\n',
                SWARMBUS_LOAD_PLUGINS="openclaw")
    assert proc.returncode == 0, proc.stderr
    assert "plugins.openclaw.token" in proc.stdout
    assert "very-secret-token" not in proc.stdout + proc.stderr
