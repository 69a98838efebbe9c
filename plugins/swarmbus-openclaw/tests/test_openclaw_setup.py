"""``swarmbus init --host-type openclaw`` in a temporary HOME: the skill file, the gateway check,
idempotence and undo (run with the same functions ``swarmbus init``/``uninit`` use), the
OpenClaw config file reader, and the host type as the CLI lists it (``--dry-run``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from openclaw_fake_gateway import FakeGateway
from openclaw_helpers import AGENT, TOKEN, make_settings

from swarmbus import HookRelay, Settings, Verify, WriteFile
from swarmbus.testing import run_step, undo
from swarmbus_openclaw.config import (
    OpenClawSettings,
    json5_to_json,
    parse_openclaw_config,
    read_openclaw_config,
    resolve_target,
)
from swarmbus_openclaw.setup import SKILL_DESCRIPTION, render_skill

# The config from the OpenClaw reference (JSON5: comments, bare keys, trailing commas).
SAMPLE_CONFIG = """// OpenClaw config, written by hand
{
  gateway: {
    mode: "local", port: %(port)d, bind: "loopback",
    auth: { mode: "token", token: '%(token)s' },   /* the shared secret */
    tailscale: { mode: "off" },
  },
  discovery: { mdns: { mode: "off" } },
  hooks: { enabled: true, token: "swarmbus-hook-token", path: "/hooks", allowedSessionKeyPrefixes: ["hook:", "swarmbus:"], },
  agents: { defaults: { model: { primary: "mock/mock-1" } } },
}
"""


def write_openclaw_config(home: Path, port: int, token: str = TOKEN) -> Path:
    path = home / ".openclaw" / "openclaw.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SAMPLE_CONFIG % {"port": port, "token": token})
    return path


def steps(relay: HookRelay, settings: Settings) -> dict[str, list[object]]:
    host = relay.host_types()["openclaw"]
    return {step.name: list(step.changes) for step in host.init_steps(settings)}


def skill_file(home: Path) -> Path:
    return home / ".openclaw" / "skills" / "swarmbus" / "SKILL.md"


def test_host_type_is_registered(relay: HookRelay) -> None:
    host = relay.host_types()["openclaw"]
    assert "OpenClaw" in host.description


def test_init_writes_the_skill_is_idempotent_and_undoes(
        relay: HookRelay, tmp_path: Path, isolated_home: Path, gateway: FakeGateway) -> None:
    write_openclaw_config(isolated_home, gateway.port)
    settings = make_settings(relay, tmp_path)  # no URL or token in swarmbus' config: read from OpenClaw's
    planned = steps(relay, settings)
    assert list(planned) == ["skill", "gateway"]
    (write,) = planned["skill"]
    assert isinstance(write, WriteFile) and write.path == skill_file(isolated_home)
    assert isinstance(planned["gateway"][0], Verify)

    before = set(isolated_home.rglob("*"))
    first = {name: run_step(name, changes, dry_run=False) for name, changes in planned.items()}
    assert first["skill"].status == "changed", first["skill"]
    assert first["gateway"].status == "unchanged" and first["gateway"].lines
    gateway_line = first["gateway"].lines[0]
    assert f"ws://127.0.0.1:{gateway.port}" in gateway_line and "protocol 4" in gateway_line
    assert "operator.write granted" in gateway_line and "nothing was copied" in gateway_line
    assert TOKEN not in gateway_line
    # the only file init wrote is the skill (plus its directories)
    written = {p for p in set(isolated_home.rglob("*")) - before if p.is_file()}
    assert written == {skill_file(isolated_home)}
    assert oct(skill_file(isolated_home).stat().st_mode & 0o777) == "0o644"

    # a second init changes nothing (and still checks the gateway)
    again = {name: run_step(name, changes, dry_run=False) for name, changes in steps(relay, settings).items()}
    assert [r.status for r in again.values()] == ["unchanged", "unchanged"]
    assert not write.pending()
    dry = run_step("skill", steps(relay, settings)["skill"], dry_run=True)
    assert dry.status == "unchanged" and dry.lines == []

    # uninit replays the undo records: the skill goes, the directories OpenClaw owns stay
    records = first["skill"].undo + first["gateway"].undo
    assert records == [write.undo_record()]
    assert [undo(r) for r in records] == ["removed ~/.openclaw/skills/swarmbus/SKILL.md"]
    assert not skill_file(isolated_home).exists()
    assert [undo(r) for r in records] == [None]  # nothing left to undo


def test_undo_keeps_a_skill_the_user_edited(relay: HookRelay, tmp_path: Path, isolated_home: Path) -> None:
    settings = make_settings(relay, tmp_path)
    result = run_step("skill", steps(relay, settings)["skill"], dry_run=False)
    skill_file(isolated_home).write_text("my own notes\n")
    assert "left" in (undo(result.undo[0]) or "")
    assert skill_file(isolated_home).read_text() == "my own notes\n"


def test_skill_content(relay: HookRelay, tmp_path: Path, isolated_home: Path) -> None:
    settings = make_settings(relay, tmp_path)
    (write,) = steps(relay, settings)["skill"]
    text = write.content  # type: ignore[attr-defined]
    assert text.startswith("---\nname: swarmbus\ndescription: ")
    front = text.split("---")[1]
    description = next(line for line in front.splitlines() if line.startswith("description: "))
    assert len(description.removeprefix("description: ")) < 160 and ": " not in description.removeprefix("description: ")
    for needle in (f"--agent-id {AGENT}", " send ", "--in-reply-to", " read ", " inbox ", "untrusted data",
                   "agent:main:swarmbus-inbox"):
        assert needle in text, needle


def test_skill_gates_on_the_binary_only_when_it_is_on_path() -> None:
    gated = render_skill("oc", command="swarmbus", gate_on_bin=True)
    assert '"requires": {"bins": ["swarmbus"]}' in gated
    ungated = render_skill("oc", command="/opt/venv/bin/swarmbus", gate_on_bin=False)
    assert "requires" not in ungated and "/opt/venv/bin/swarmbus send --agent-id oc" in ungated
    assert len(SKILL_DESCRIPTION) < 160


def test_gateway_step_fails_loudly_when_unreachable(relay: HookRelay, tmp_path: Path, isolated_home: Path) -> None:
    write_openclaw_config(isolated_home, 1)  # nothing listens on port 1
    result = run_step("gateway", steps(relay, make_settings(relay, tmp_path))["gateway"], dry_run=False)
    assert result.status == "failed"
    assert "ws://127.0.0.1:1 not reachable" in result.lines[-1] and "gateway.port in" in result.lines[-1]
    assert "openclaw gateway run" in result.lines[-1]


def test_gateway_step_fails_on_a_wrong_token(relay: HookRelay, tmp_path: Path, isolated_home: Path,
                                            gateway: FakeGateway) -> None:
    write_openclaw_config(isolated_home, gateway.port, token="stale-token")
    result = run_step("gateway", steps(relay, make_settings(relay, tmp_path))["gateway"], dry_run=False)
    assert result.status == "failed" and "AUTH_TOKEN_MISMATCH" in result.lines[-1]
    assert "stale-token" not in result.lines[-1]


def test_gateway_step_fails_without_operator_write(relay: HookRelay, tmp_path: Path) -> None:
    with FakeGateway(token=TOKEN, grant_scopes=("operator.read",)) as fake:
        settings = make_settings(relay, tmp_path, gateway_url=fake.url, token=TOKEN)
        result = run_step("gateway", steps(relay, settings)["gateway"], dry_run=False)
    assert result.status == "failed" and "without operator.write" in result.lines[-1]


# -- OpenClaw's config ----------------------------------------------------------------------------
def test_port_and_token_come_from_openclaw_config(isolated_home: Path) -> None:
    path = write_openclaw_config(isolated_home, 18799, token="swarmbus-test-token")
    oc = read_openclaw_config(path)
    assert (oc.exists, oc.port, oc.auth_mode, oc.token, oc.bind, oc.error) == (
        True, 18799, "token", "swarmbus-test-token", "loopback", None)
    target = resolve_target(OpenClawSettings())
    assert target.url == "ws://127.0.0.1:18799" and target.url_source == f"gateway.port in {path}"
    assert target.token == "swarmbus-test-token" and target.token_source == f"gateway.auth.token in {path}"
    assert target.sign is False and "swarmbus-test-token" not in repr(target)


def test_precedence_settings_env_config_default(isolated_home: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    write_openclaw_config(isolated_home, 18799, token="from-config")
    monkeypatch.setenv("OPENCLAW_GATEWAY_TOKEN", "from-env")
    monkeypatch.setenv("OPENCLAW_GATEWAY_PORT", "18800")
    target = resolve_target(OpenClawSettings())
    assert (target.url, target.token) == ("ws://127.0.0.1:18800", "from-env")
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    target = resolve_target(OpenClawSettings(gateway_url="ws://10.0.0.5:1234", token_file=token_file))
    assert (target.url, target.token, target.sign) == ("ws://10.0.0.5:1234", "from-file", True)  # non-loopback signs
    target = resolve_target(OpenClawSettings(token="from-settings"))  # type: ignore[arg-type]
    assert target.token == "from-settings"
    monkeypatch.delenv("OPENCLAW_GATEWAY_TOKEN")
    monkeypatch.delenv("OPENCLAW_GATEWAY_PORT")
    (isolated_home / ".openclaw" / "openclaw.json").unlink()
    target = resolve_target(OpenClawSettings())
    assert (target.url, target.token, target.token_source) == ("ws://127.0.0.1:18789", None, "none")


def test_config_path_env_password_mode_and_env_secret_refs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "custom.json"
    path.write_text('{"gateway": {"port": 19000, "auth": {"mode": "password", "password": '
                    '{"source": "env", "provider": "default", "id": "OC_PW"}}}}')
    monkeypatch.setenv("OPENCLAW_CONFIG_PATH", str(path))
    monkeypatch.setenv("OC_PW", "pw-from-env")
    target = resolve_target(OpenClawSettings())
    assert (target.url, target.token, target.password) == ("ws://127.0.0.1:19000", None, "pw-from-env")


def test_loopback_detection() -> None:
    for url, sign in (("ws://127.0.0.1:1", False), ("ws://localhost:1", False), ("ws://[::1]:1", False),
                      ("ws://127.8.0.1:1", False), ("wss://gateway.example.com", True), ("ws://192.168.1.2:1", True)):
        assert resolve_target(OpenClawSettings(gateway_url=url)).sign is sign, url
    assert resolve_target(OpenClawSettings(gateway_url="ws://gw.example", device_identity="never")).sign is False


def test_json5_subset_reader() -> None:
    text = """{
      // comment with "quotes" and a url http://x
      a: 1, 'b': 'it\\'s "x"', "c": [1, 2, ], /* block
      comment */ d: {e: true, f: null,}, g: "http://keep//this", h: -1.5e3,
    }"""
    assert json5_to_json(text)
    assert parse_openclaw_config(text) == {"a": 1, "b": 'it\'s "x"', "c": [1, 2], "d": {"e": True, "f": None},
                                           "g": "http://keep//this", "h": -1500.0}
    with pytest.raises(ValueError):
        parse_openclaw_config("{a: }")
    assert parse_openclaw_config("") == {}


def test_unparseable_config_is_reported_not_raised(isolated_home: Path) -> None:
    path = isolated_home / ".openclaw" / "openclaw.json"
    path.parent.mkdir(parents=True)
    path.write_text("{gateway: {port: }")
    oc = read_openclaw_config(path)
    assert oc.exists and oc.error and "cannot parse" in oc.error and oc.port is None


# -- the CLI ---------------------------------------------------------------------------------------
def test_init_dry_run_lists_the_openclaw_steps(tmp_path: Path, isolated_home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWARMBUS_", "MQTT_", "OPENCLAW_"))}
    env.update(HOME=str(isolated_home), SWARMBUS_LOAD_PLUGINS="openclaw", SWARMBUS_STATE_DIR=str(tmp_path / "state"),
               SWARMBUS_CONFIG=str(tmp_path / "config.toml"))
    proc = subprocess.run([sys.executable, "-m", "swarmbus", "init", "--agent-id", AGENT, "--host-type", "openclaw",
                           "--dry-run", "--broker", "mqtt://127.0.0.1:1"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "openclaw: skill: would-change" in proc.stdout
    assert "would write ~/.openclaw/skills/swarmbus/SKILL.md" in proc.stdout
    assert "would check the OpenClaw gateway" in proc.stdout
    assert not (isolated_home / ".openclaw").exists()
