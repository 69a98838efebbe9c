"""The MCP server that init registers must be able to start: the plugin depends on
``swarmbus[mcp]``, and doctor's ``cc: mcp`` check fails (with a fix) when the Python that runs the
registered server cannot import the ``mcp`` package."""

from __future__ import annotations

import importlib.util
import json
import sys
import tomllib
import venv
from pathlib import Path
from typing import Any

import pytest

import swarmbus
from swarmbus import CheckResult, DoctorContext, HookRelay, Settings
from swarmbus_claude_code import mcp_probe
from swarmbus_claude_code.install import mcp_entry

AGENT = "coder"
PLUGIN = Path(__file__).resolve().parents[1]


def mcp_check(relay: HookRelay, tmp_path: Path) -> CheckResult:
    settings = Settings(agent_id=AGENT, host_type="cc", state_dir=tmp_path / "state")
    context = DoctorContext(settings=settings, agent_id=AGENT, cache={})
    (check,) = [c for c in relay.doctor_checks(settings) if c.name == "cc: mcp"]
    return check.run(context)


def register(home: Path, command: str) -> dict[str, Any]:
    """Write the entry init writes to ~/.claude.json, with ``command`` as the interpreter."""
    entry = {**mcp_entry(AGENT), "command": command}
    (home / ".claude.json").write_text(json.dumps({"mcpServers": {"swarmbus": entry}}))
    return entry


def python_with(tmp_path: Path, *, mcp: bool) -> str:
    """A new virtualenv's python that can import swarmbus, and ``mcp`` only when asked."""
    root = tmp_path / ("with-mcp" if mcp else "without-mcp")
    venv.create(root, with_pip=False)
    (site,) = root.glob("lib/python*/site-packages")
    (site / "swarmbus").symlink_to(Path(swarmbus.__file__).parent)
    if mcp:
        (site / "mcp").mkdir()
        (site / "mcp" / "__init__.py").write_text("")
    return str(root / "bin" / "python")


def test_the_plugin_depends_on_the_mcp_extra_at_the_core_version() -> None:
    core = tomllib.loads((PLUGIN.parents[1] / "pyproject.toml").read_text())["project"]
    plugin = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    assert f"swarmbus[mcp]=={core['version']}" in plugin["dependencies"]
    assert "mcp" in core["optional-dependencies"]


def test_registered_python_without_mcp_fails_with_a_fix(relay: HookRelay, tmp_path: Path, home: Path,
                                                         no_claude: None) -> None:
    python = python_with(tmp_path, mcp=False)
    register(home, python)
    result = mcp_check(relay, tmp_path)
    assert result.status == "fail", result
    assert python in result.summary and "cannot import the `mcp` package" in result.summary
    assert result.fix == f"{python} -m pip install 'swarmbus[mcp]'"


def test_registered_python_with_mcp_passes_the_package_check(relay: HookRelay, tmp_path: Path, home: Path,
                                                              no_claude: None) -> None:
    register(home, python_with(tmp_path, mcp=True))
    result = mcp_check(relay, tmp_path)
    # another interpreter than this one is "registered differently" (a warning), but can start
    assert result.status == "warn" and "registered differently" in result.summary, result


def test_registered_python_without_swarmbus_or_missing(relay: HookRelay, tmp_path: Path, home: Path,
                                                       no_claude: None) -> None:
    bare = tmp_path / "bare"
    venv.create(bare, with_pip=False)
    register(home, str(bare / "bin" / "python"))
    result = mcp_check(relay, tmp_path)
    assert result.status == "fail" and "cannot import swarmbus" in result.summary
    assert "swarmbus init --agent-id coder --host-type cc" in result.fix

    register(home, str(tmp_path / "gone" / "python"))
    result = mcp_check(relay, tmp_path)
    assert result.status == "fail" and "cannot be run" in result.summary


def test_not_registered_and_this_python_lacks_mcp(relay: HookRelay, tmp_path: Path, home: Path, no_claude: None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mcp" else real_find_spec(name, *a))
    result = mcp_check(relay, tmp_path)
    assert result.status == "fail" and "that init registers" in result.summary
    assert result.fix.startswith(f"{sys.executable} -m pip install 'swarmbus[mcp]', then run `swarmbus init")


def test_interpreter_of_an_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert mcp_probe.interpreter(mcp_entry(AGENT)) == sys.executable
    assert mcp_probe.interpreter({"command": "npx", "args": ["some-server"]}) is None
    assert mcp_probe.interpreter("not an entry") is None
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "swarmbus"
    script.write_text("#!/opt/py/bin/python3.12 -I\nimport sys\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    console = {"command": "swarmbus", "args": ["mcp-server", "--agent-id", AGENT]}
    assert mcp_probe.interpreter(console) == "/opt/py/bin/python3.12"
    python = bin_dir / "python3"
    python.symlink_to(sys.executable)
    script.write_text("#!/usr/bin/env -S python3\n")
    assert mcp_probe.interpreter(console) == str(python)
    script.write_text("no shebang\n")
    assert mcp_probe.interpreter(console) is None
