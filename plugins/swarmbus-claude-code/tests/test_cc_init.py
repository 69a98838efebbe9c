"""``swarmbus init --host-type cc`` steps in a temporary HOME: the files they write, a second
run with nothing pending, and the undo records (what ``swarmbus uninit`` replays)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

import swarmbus_claude_code
from swarmbus import HookRelay, Settings, get_plugin_manager
from swarmbus.testing import StepResult, run_step, undo
from swarmbus_claude_code import hooks_json
from swarmbus_claude_code.install import hook_entry, mcp_entry, skill_text
from swarmbus_claude_code.settings import CCSettings

AGENT = "coder"


def make_settings(tmp_path: Path, **cc: Any) -> Settings:
    settings = Settings(agent_id=AGENT, host_type="cc", state_dir=tmp_path / "state")
    settings.plugins["cc"] = CCSettings.model_validate(cc)
    return settings


def host_steps(settings: Settings) -> list[Any]:
    pm = get_plugin_manager(entry_points=False)
    pm.register(swarmbus_claude_code, name="cc")
    host = HookRelay(pm).host_types()["cc"]
    return host.init_steps(settings)


def apply(settings: Settings, *, dry_run: bool = False) -> list[StepResult]:
    return [run_step(step.name, step.changes, dry_run=dry_run) for step in host_steps(settings)]


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def uninit(results: list[list[StepResult]]) -> list[str | None]:
    """Replay the undo records like ``swarmbus uninit``: merged across runs, newest last, reversed."""
    records: list[dict[str, Any]] = []
    for run in results:
        for result in run:
            records.extend(r for r in result.undo if r not in records)
    return [undo(record) for record in reversed(records)]


def claude_json(home: Path) -> dict[str, Any]:
    return json.loads((home / ".claude.json").read_text())


def test_host_type_is_declared() -> None:
    pm = get_plugin_manager(entry_points=False)
    pm.register(swarmbus_claude_code, name="cc")
    host = HookRelay(pm).host_types()["cc"]
    assert "Claude Code" in host.description


def test_rewake_init_writes_exactly_the_expected_files(tmp_path: Path, home: Path, fake_claude: Any) -> None:
    settings = make_settings(tmp_path, wake_mode="rewake")
    dry = apply(settings, dry_run=True)
    assert [r.status for r in dry] == ["would-change", "would-change", "would-change", "unchanged"]
    assert files_under(home) == set()  # a dry run changes nothing

    first = apply(settings)
    assert [r.name for r in first] == ["skill", "mcp", "hook", "verify"]
    assert [r.status for r in first] == ["changed", "changed", "changed", "unchanged"], [r.lines for r in first]
    assert "9.9.9 (Claude Code, fake)" in first[3].lines[0]
    assert files_under(home) == {".claude.json", ".claude/skills/swarmbus/SKILL.md", ".claude/settings.json"}

    skill = (home / ".claude/skills/swarmbus/SKILL.md").read_text()
    assert skill == skill_text(AGENT)
    assert skill.startswith("---\nname: swarmbus\ndescription: ")
    description = skill.split("\n")[2].removeprefix("description: ")
    assert len(description) <= 1024 and "untrusted" in description
    assert "untrusted data" in skill and f"--agent-id {AGENT}" in skill

    # registered through `claude mcp add -s user`: top-level mcpServers in ~/.claude.json
    mcp_runs = [r["argv"] for r in fake_claude.records() if r["argv"][:1] == ["mcp"]]
    assert mcp_runs == [["mcp", "add", "-s", "user", "swarmbus", "--", sys.executable, "-m", "swarmbus",
                         "mcp-server", "--agent-id", AGENT]]
    assert claude_json(home)["mcpServers"] == {"swarmbus": {
        "type": "stdio", "command": sys.executable, "args": ["-m", "swarmbus", "mcp-server", "--agent-id", AGENT],
        "env": {}}}

    settings_json = json.loads((home / ".claude/settings.json").read_text())
    (group,) = settings_json["hooks"]["Stop"]
    (entry,) = group["hooks"]
    assert entry == {"type": "command", "command": entry["command"], "timeout": 86400, "asyncRewake": True}
    assert entry["command"] == (f"{sys.executable} -m swarmbus wait --agent-id {AGENT} --consumer rewake --stderr "
                                f"--exit-code 2 --timeout 86400 # swarmbus-cc agent={AGENT}")
    assert list(settings_json) == ["hooks"] and list(settings_json["hooks"]) == ["Stop", "SessionStart"]
    # in every mode, a SessionStart hook makes sure the daemon runs; it prints nothing and never fails
    (start,) = settings_json["hooks"]["SessionStart"][0]["hooks"]
    assert start == hook_entry(AGENT, "SessionStart") and start["timeout"] == 20
    assert start["command"] == (f"{sys.executable} -m swarmbus start --agent-id {AGENT} --detach >/dev/null 2>&1 "
                                f"|| true # swarmbus-cc-start agent={AGENT}")

    # a second run: nothing pending, nothing duplicated, claude not asked to add again
    second = apply(settings)
    assert [r.status for r in second] == ["unchanged"] * 4, [r.lines for r in second]
    assert len([r for r in fake_claude.records() if r["argv"][:2] == ["mcp", "add"]]) == 1
    assert json.loads((home / ".claude/settings.json").read_text()) == settings_json
    assert files_under(home) == {".claude.json", ".claude/skills/swarmbus/SKILL.md", ".claude/settings.json"}

    # uninit: every file init wrote is gone again (claude keeps its own ~/.claude.json)
    lines = uninit([first, second])
    # what the undo command said
    assert any(line and line.startswith('Removed MCP server "swarmbus" from user config') for line in lines), lines
    assert claude_json(home)["mcpServers"] == {}
    assert files_under(home) == {".claude.json"}


def test_user_hooks_and_settings_are_kept(tmp_path: Path, home: Path, fake_claude: Any) -> None:
    user_hook = {"hooks": [{"type": "command", "command": "notify-send done"}]}
    mine = {"model": "opus", "hooks": {"Stop": [user_hook],
                                       "PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "x"}]}]}}
    path = home / ".claude/settings.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(mine))
    (home / ".claude.json").write_text(json.dumps({"numStartups": 3, "mcpServers": {"other": {"command": "o"}}}))

    results = [apply(make_settings(tmp_path, wake_mode="rewake")) for _ in range(2)]
    data = json.loads(path.read_text())
    assert data["model"] == "opus" and data["hooks"]["PreToolUse"] == mine["hooks"]["PreToolUse"]
    assert data["hooks"]["Stop"][0] == user_hook
    assert data["hooks"]["Stop"][1] == {"hooks": [hook_entry(AGENT, "Stop")]}
    assert len(data["hooks"]["Stop"]) == 2
    assert claude_json(home)["numStartups"] == 3 and "other" in claude_json(home)["mcpServers"]

    uninit(results)
    assert json.loads(path.read_text()) == mine
    assert claude_json(home) == {"numStartups": 3, "mcpServers": {"other": {"command": "o"}}}


def test_context_mode_installs_the_user_prompt_submit_hook(tmp_path: Path, home: Path, fake_claude: Any) -> None:
    first = apply(make_settings(tmp_path, wake_mode="context"))
    assert [r.status for r in first] == ["changed", "changed", "changed", "unchanged"]
    data = json.loads((home / ".claude/settings.json").read_text())
    (entry,) = data["hooks"]["UserPromptSubmit"][0]["hooks"]
    assert entry == {"type": "command", "timeout": 30, "command": (
        f"{sys.executable} -m swarmbus cc-context --agent-id {AGENT} || true # swarmbus-cc agent={AGENT}")}
    assert "Stop" not in data["hooks"]


def test_switching_modes_moves_or_removes_the_hook(tmp_path: Path, home: Path, fake_claude: Any) -> None:
    path = home / ".claude/settings.json"
    runs = [apply(make_settings(tmp_path, wake_mode="rewake"))]
    runs.append(apply(make_settings(tmp_path, wake_mode="context")))
    assert runs[-1][2].status == "changed"
    assert sorted(json.loads(path.read_text())["hooks"]) == ["SessionStart", "UserPromptSubmit"]
    runs.append(apply(make_settings(tmp_path, wake_mode="resume")))
    assert runs[-1][2].status == "changed"
    # only the SessionStart hook is left
    assert json.loads(path.read_text()) == {"hooks": {"SessionStart": [{"hooks": [hook_entry(AGENT, "SessionStart")]}]}}
    runs.append(apply(make_settings(tmp_path, wake_mode="resume")))
    assert [r.status for r in runs[-1]] == ["unchanged"] * 4
    runs.append(apply(make_settings(tmp_path, wake_mode="rewake", install_hook=False)))
    assert not path.exists()  # install_hook = false: neither hook; the file held only ours
    uninit(runs)
    assert files_under(home) == {".claude.json"}


def test_resume_mode_installs_only_the_session_start_hook(tmp_path: Path, home: Path, fake_claude: Any) -> None:
    results = apply(make_settings(tmp_path))
    assert [r.status for r in results] == ["changed", "changed", "changed", "unchanged"]
    assert files_under(home) == {".claude.json", ".claude/skills/swarmbus/SKILL.md", ".claude/settings.json"}
    data = json.loads((home / ".claude/settings.json").read_text())
    assert data == {"hooks": {"SessionStart": [{"hooks": [hook_entry(AGENT, "SessionStart")]}]}}
    assert [r.status for r in apply(make_settings(tmp_path))] == ["unchanged"] * 4


def test_a_different_mcp_entry_is_replaced(tmp_path: Path, home: Path, fake_claude: Any) -> None:
    stale = {"type": "stdio", "command": "/old/python", "args": ["-m", "swarmbus", "mcp-server", "--agent-id", "old"],
             "env": {}}
    (home / ".claude.json").write_text(json.dumps({"mcpServers": {"swarmbus": stale}}))
    results = apply(make_settings(tmp_path))
    assert results[1].status == "changed", results[1].lines
    assert claude_json(home)["mcpServers"]["swarmbus"] == mcp_entry(AGENT, {})
    assert [r["argv"][:2] for r in fake_claude.records() if r["argv"][:1] == ["mcp"]] == [["mcp", "remove"],
                                                                                         ["mcp", "add"]]


def test_locators_reach_the_mcp_entry_and_the_hook(tmp_path: Path, home: Path, fake_claude: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "my config.toml"
    monkeypatch.setenv("SWARMBUS_CONFIG", str(config))
    monkeypatch.setenv("SWARMBUS_STATE_DIR", str(tmp_path / "state"))
    apply(make_settings(tmp_path, wake_mode="rewake"))
    entry = claude_json(home)["mcpServers"]["swarmbus"]
    assert entry["env"] == {"SWARMBUS_CONFIG": str(config), "SWARMBUS_STATE_DIR": str(tmp_path / "state")}
    command = json.loads((home / ".claude/settings.json").read_text())["hooks"]["Stop"][0]["hooks"][0]["command"]
    assert command.startswith(f"SWARMBUS_CONFIG='{config}' SWARMBUS_STATE_DIR={tmp_path / 'state'} {sys.executable} ")
    assert [r.status for r in apply(make_settings(tmp_path, wake_mode="rewake"))] == ["unchanged"] * 4


def test_without_the_claude_binary_the_entry_is_written_directly(tmp_path: Path, home: Path, no_claude: None) -> None:
    settings = make_settings(tmp_path, wake_mode="context", claude_path=str(tmp_path / "missing" / "claude"))
    first = apply(settings)
    assert [r.status for r in first] == ["changed", "changed", "changed", "unchanged"], [r.lines for r in first]
    assert "claude not found" in first[3].lines[0]
    assert claude_json(home) == {"mcpServers": {"swarmbus": mcp_entry(AGENT, {})}}
    (record,) = first[1].undo
    assert (record["kind"], record["path"], record["keys"]) == ("json", str(home / ".claude.json"),
                                                                ["mcpServers", "swarmbus"])
    second = apply(settings)
    assert [r.status for r in second] == ["unchanged"] * 4
    uninit([first, second])
    # the key is gone (and the file too when init created it, depending on the core's undo)
    assert not (home / ".claude.json").exists() or claude_json(home) == {"mcpServers": {}}
    assert files_under(home) <= {".claude.json"}


def test_resume_mode_without_claude_fails_verify(tmp_path: Path, home: Path, no_claude: None) -> None:
    results = apply(make_settings(tmp_path, claude_path=str(tmp_path / "missing" / "claude")))
    assert results[-1].status == "failed"
    assert "claude not found" in results[-1].lines[-1] and "npm install" in results[-1].lines[-1]


def test_hooks_json_refuses_a_broken_file(tmp_path: Path, home: Path, fake_claude: Any) -> None:
    path = home / ".claude/settings.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    results = apply(make_settings(tmp_path, wake_mode="rewake"))
    assert results[2].status == "failed"
    assert path.read_text() == "{not json"


def test_hooks_json_module_directly(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    marker = hooks_json.marker_for(AGENT)
    entry = {"type": "command", "command": f"echo hi {marker}"}
    other = {"type": "command", "command": f"echo other {hooks_json.marker_for('other-agent')}"}
    assert hooks_json.add(path, "Stop", other, hooks_json.marker_for("other-agent"))
    assert hooks_json.add(path, "Stop", entry, marker)
    assert not hooks_json.add(path, "Stop", entry, marker)
    assert hooks_json.is_installed(path, "Stop", entry, marker)
    assert hooks_json.ours(hooks_json.load(path), marker) == {"Stop": [entry]}
    with pytest.raises(ValueError, match="marker"):
        hooks_json.add(path, "Stop", {"type": "command", "command": "echo unmarked"}, marker)
    assert hooks_json.remove(path, marker)
    assert not hooks_json.remove(path, marker)
    assert hooks_json.load(path) == {"hooks": {"Stop": [{"hooks": [other]}]}}  # the other agent's hook stays
    assert hooks_json.main(["remove", "--settings", str(path), "--agent-id", "other-agent"]) == 0
    assert not path.exists()
