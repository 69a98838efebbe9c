"""``swarmbus init --host-type codex`` steps in a temporary HOME (applied with the core's
``run_step``, undone with its ``undo`` as ``swarmbus uninit`` does): the skill, the MCP server in
Codex's config.toml (the user's comments and tables kept byte for byte), a second run with
nothing pending, and uninit putting everything back."""

from __future__ import annotations

import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from codex_helpers import AGENT, make_settings

from swarmbus import HookRelay, Settings
from swarmbus.testing import StepResult, run_step, undo
from swarmbus_codex import codex_config
from swarmbus_codex.install import SKILL_DESCRIPTION, mcp_entry, skill_text

USER_CONFIG = """\
# my Codex setup -- keep this comment
model = "gpt-5.1-codex"   # the default model
approval_policy = "on-request"

[profiles.fast]
model = "gpt-5.1-codex-mini"

[mcp_servers.github]
command = "github-mcp"
args = ["--stdio"]

[mcp_servers.github.env]
GITHUB_TOKEN = "ghp_user_secret"

# a trailing comment
"""


def apply(relay: HookRelay, settings: Settings, *, dry_run: bool = False) -> list[StepResult]:
    host = relay.host_types()["codex"]
    return [run_step(step.name, step.changes, dry_run=dry_run) for step in host.init_steps(settings)]


def uninit(*runs: list[StepResult]) -> list[str | None]:
    """Replay the undo records like ``swarmbus uninit``: merged across runs, newest last, reversed."""
    records: list[dict[str, Any]] = []
    for results in runs:
        for result in results:
            records.extend(r for r in result.undo if r not in records)
    return [undo(record) for record in reversed(records)]


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def registered(config: Path) -> Any:
    return tomllib.loads(config.read_text())["mcp_servers"]["swarmbus"]


def test_host_type_and_section_are_declared(relay: HookRelay) -> None:
    assert "Codex" in relay.host_types()["codex"].description
    assert "codex" in relay.settings_sections()


def test_init_keeps_the_users_config_and_uninit_restores_it(tmp_path: Path, codex_home: Path, fake_codex: Any,
                                                            relay: HookRelay, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWARMBUS_CONFIG", str(tmp_path / "sb.toml"))
    monkeypatch.setenv("SWARMBUS_STATE_DIR", str(tmp_path / "state"))
    config = codex_home / "config.toml"
    config.write_text(USER_CONFIG)
    config.chmod(0o640)
    settings = make_settings(tmp_path / "state")

    dry = apply(relay, settings, dry_run=True)
    assert [r.status for r in dry] == ["would-change", "would-change", "unchanged"]
    assert config.read_text() == USER_CONFIG and files_under(codex_home) == {"config.toml"}

    first = apply(relay, settings)
    assert [r.name for r in first] == ["skill", "mcp", "verify"]
    assert [r.status for r in first] == ["changed", "changed", "unchanged"], [r.lines for r in first]
    assert first[2].lines[0].startswith("codex-cli 9.9.9-fake at ")
    text = config.read_text()
    assert text.startswith(USER_CONFIG + "\n[mcp_servers.swarmbus]\n")  # appended; the rest byte for byte
    assert config.stat().st_mode & 0o777 == 0o640
    data = tomllib.loads(text)
    assert data["mcp_servers"]["github"] == {"command": "github-mcp", "args": ["--stdio"],
                                             "env": {"GITHUB_TOKEN": "ghp_user_secret"}}
    swarmbus = Path(sys.executable).parent / "swarmbus"
    assert registered(config) == {"command": str(swarmbus), "args": ["mcp-server", "--agent-id", AGENT],
                                  "env": {"SWARMBUS_CONFIG": str(tmp_path / "sb.toml"),
                                          "SWARMBUS_STATE_DIR": str(tmp_path / "state")}}
    skill = (codex_home / "skills" / "swarmbus" / "SKILL.md").read_text()
    assert skill == skill_text(AGENT) and skill.startswith(f"---\nname: swarmbus\ndescription: {SKILL_DESCRIPTION}\n")
    assert "untrusted data" in skill and f"--agent-id {AGENT}" in skill and "mcp__swarmbus" in skill
    # the user's text never goes into the undo records (its tokens stay in the file only)
    assert "ghp_user_secret" not in json.dumps([r.undo for r in first])

    second = apply(relay, settings)
    assert [r.status for r in second] == ["unchanged"] * 3, [r.lines for r in second]
    assert config.read_text() == text

    lines = uninit(first, second)
    assert any(line and line.startswith("removed [mcp_servers.swarmbus] from ") for line in lines), lines
    assert config.read_text() == USER_CONFIG and config.stat().st_mode & 0o777 == 0o640
    assert files_under(codex_home) == {"config.toml"}


def test_a_new_config_file_is_created_and_removed_again(tmp_path: Path, codex_home: Path, fake_codex: Any,
                                                        relay: HookRelay) -> None:
    settings = make_settings(tmp_path / "state")
    first = apply(relay, settings)
    config = codex_home / "config.toml"
    assert config.read_text().startswith("[mcp_servers.swarmbus]\ncommand = ")
    assert config.stat().st_mode & 0o777 == 0o600
    uninit(first)
    assert not config.exists() and files_under(codex_home) == set()


def test_edits_after_init_are_kept_by_uninit(tmp_path: Path, codex_home: Path, fake_codex: Any,
                                             relay: HookRelay) -> None:
    config = codex_home / "config.toml"
    config.write_text(USER_CONFIG)
    first = apply(relay, make_settings(tmp_path / "state"))
    # the user edits the file after init: a new table after ours, a key in ours
    config.write_text(config.read_text() + "\n[profiles.deep]\nmodel = \"o3\"\n")
    edited = config.read_text().replace('[mcp_servers.swarmbus]\n', '[mcp_servers.swarmbus]\nstartup_timeout_sec = 30\n')
    config.write_text(edited)
    uninit(first)
    data = tomllib.loads(config.read_text())
    assert data["profiles"]["deep"] == {"model": "o3"}
    assert data["mcp_servers"]["swarmbus"] == {"startup_timeout_sec": 30}  # the user's key stays
    assert data["mcp_servers"]["github"]["env"] == {"GITHUB_TOKEN": "ghp_user_secret"}
    assert config.read_text().startswith(USER_CONFIG)


def test_an_entry_changed_after_init_is_left_in_place(tmp_path: Path, codex_home: Path, fake_codex: Any,
                                                      relay: HookRelay) -> None:
    config = codex_home / "config.toml"
    first = apply(relay, make_settings(tmp_path / "state"))
    config.write_text(config.read_text().replace('"--agent-id", "cx"', '"--agent-id", "mine"'))
    uninit(first)
    assert registered(config)["args"] == ["mcp-server", "--agent-id", "mine"]
    assert "command" not in registered(config)  # what init wrote and nobody changed is undone


def test_another_agents_entry_is_replaced_in_place_and_restored(tmp_path: Path, codex_home: Path, fake_codex: Any,
                                                                relay: HookRelay) -> None:
    before = ('[mcp_servers.swarmbus]  # mine\ncommand = "/old/swarmbus"\nargs = ["mcp-server", "--agent-id", "old"]\n'
              'tool_timeout_sec = 120\n\n[mcp_servers.swarmbus.env]\nSWARMBUS_DEBUG = "1"\n\n[other]\nx = 1\n')
    config = codex_home / "config.toml"
    config.write_text(before)
    first = apply(relay, make_settings(tmp_path / "state"))
    entry = registered(config)
    assert entry["args"] == ["mcp-server", "--agent-id", AGENT] and entry["tool_timeout_sec"] == 120
    assert entry["env"] == {"SWARMBUS_DEBUG": "1"}  # no locators set in this environment
    assert "[mcp_servers.swarmbus]  # mine" in config.read_text() and tomllib.loads(config.read_text())["other"]
    uninit(first)
    assert tomllib.loads(config.read_text()) == tomllib.loads(before)
    assert "[mcp_servers.swarmbus]  # mine" in config.read_text()


def test_codex_home_setting_and_variable_are_honoured(tmp_path: Path, home: Path, fake_codex: Any, relay: HookRelay,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    custom = tmp_path / "custom-codex"
    apply(relay, make_settings(tmp_path / "state", codex_home=str(custom)))
    assert (custom / "config.toml").exists() and (custom / "skills" / "swarmbus" / "SKILL.md").exists()
    env_home = tmp_path / "env-codex"
    monkeypatch.setenv("CODEX_HOME", str(env_home))
    apply(relay, make_settings(tmp_path / "state"))
    assert (env_home / "config.toml").exists() and not (home / ".codex").exists()


def test_config_toml_through_a_symlink_stays_a_symlink(tmp_path: Path, codex_home: Path, fake_codex: Any,
                                                       relay: HookRelay) -> None:
    dotfiles = tmp_path / "dotfiles" / "codex.toml"
    dotfiles.parent.mkdir()
    dotfiles.write_text(USER_CONFIG)
    (codex_home / "config.toml").symlink_to(dotfiles)
    first = apply(relay, make_settings(tmp_path / "state"))
    assert (codex_home / "config.toml").is_symlink() and "[mcp_servers.swarmbus]" in dotfiles.read_text()
    uninit(first)
    assert dotfiles.read_text() == USER_CONFIG and (codex_home / "config.toml").is_symlink()


def test_an_unreadable_config_fails_the_step_and_changes_nothing(tmp_path: Path, codex_home: Path, fake_codex: Any,
                                                                 relay: HookRelay) -> None:
    config = codex_home / "config.toml"
    config.write_text("model = \n")
    results = apply(relay, make_settings(tmp_path / "state"))
    assert results[1].status == "failed" and "is not valid TOML" in results[1].lines[-1], results[1].lines
    assert config.read_text() == "model = \n"


def test_inline_mcp_servers_table_is_refused(tmp_path: Path, codex_home: Path) -> None:
    config = codex_home / "config.toml"
    config.write_text('mcp_servers = { other = { command = "o" } }\n')
    with pytest.raises(codex_config.ConfigError, match="inline"):
        codex_config.add(config, "swarmbus", mcp_entry(AGENT, env={}))
    assert config.read_text() == 'mcp_servers = { other = { command = "o" } }\n'


def test_missing_codex_fails_verify_with_the_install_hint(tmp_path: Path, codex_home: Path, no_codex: None,
                                                          relay: HookRelay) -> None:
    results = apply(relay, make_settings(tmp_path / "state"))
    assert [r.status for r in results] == ["changed", "changed", "failed"]
    assert "codex not found" in results[2].lines[-1] and "npm install -g @openai/codex" in results[2].lines[-1]


def test_codex_path_setting_is_used(tmp_path: Path, codex_home: Path, fake_codex: Any, relay: HookRelay,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    results = apply(relay, make_settings(tmp_path / "state", codex_path=str(fake_codex.path)))
    assert results[2].lines[0] == f"codex-cli 9.9.9-fake at {fake_codex.path}"


def test_the_entry_falls_back_to_python_m_swarmbus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python3"))
    assert mcp_entry(AGENT, env={}) == {"command": str(tmp_path / "bin" / "python3"),
                                        "args": ["-m", "swarmbus", "mcp-server", "--agent-id", AGENT]}
    assert os.sep in mcp_entry(AGENT, env={})["command"]


def test_the_config_command_says_what_it_did(codex_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = codex_home / "config.toml"
    config.write_text(USER_CONFIG)
    entry = mcp_entry(AGENT, env={})
    base = ["--config", str(config), "--name", "swarmbus", "--entry", json.dumps(entry)]
    undo_args = codex_config.undo_args(config, "swarmbus", entry)
    assert undo_args[-2:] == ["--appended", "1"]
    assert codex_config.main(["add", *base]) == 0
    assert capsys.readouterr().out == f"registered MCP server 'swarmbus' in {config}\n"
    assert codex_config.main(["remove", "--config", str(config), "--name", "swarmbus", *undo_args]) == 0
    assert "the file is as it was before init" in capsys.readouterr().out and config.read_text() == USER_CONFIG
    codex_config.main(["add", *base])
    config.write_text(config.read_text().replace('"--agent-id", "cx"', '"--agent-id", "mine"'))
    codex_config.main(["remove", "--config", str(config), "--name", "swarmbus", *undo_args])
    out = capsys.readouterr().out
    assert "undid command" in out and "left args in place: changed after init wrote them" in out
    config.write_text("model = \n")
    assert codex_config.main(["add", *base]) == 1
    assert "is not valid TOML" in capsys.readouterr().err
