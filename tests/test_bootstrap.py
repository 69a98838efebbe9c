"""``scripts/bootstrap.sh`` installs once, then skips pip while nothing it depends on changed
(every pyproject.toml, the script itself, the Python version), and reinstalls when one did.

It runs on a copy of the scripts and pyproject files in a temporary directory, with a fake
``.venv/bin/python`` that records ``-m pip`` calls instead of installing anything (and runs this
interpreter for everything else), and fake ``mosquitto``/``openssl`` so nothing is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    for name in ("bootstrap.sh", "say.sh"):
        shutil.copy2(REPO / "scripts" / name, root / "scripts" / name)
    shutil.copy2(REPO / "pyproject.toml", root / "pyproject.toml")
    for plugin in ("one", "two"):
        (root / "plugins" / plugin).mkdir(parents=True)
        (root / "plugins" / plugin / "pyproject.toml").write_text(f'[project]\nname = "{plugin}"\n')
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    python.write_text('#!/bin/sh\nif [ "$1" = "-m" ] && [ "$2" = "pip" ]; then printf "%s\\n" "$*" >> "$PIP_LOG"; exit 0; fi\n'
                      f'exec "{sys.executable}" "$@"\n')
    tools = [python] + [bin_dir / t for t in ("swarmbus", "pytest", "tox", "ruff", "mypy", "lint-imports")]
    fakes = tmp_path / "fake-bin"
    fakes.mkdir()
    tools += [fakes / "mosquitto", fakes / "openssl"]
    for tool in tools[1:]:
        tool.write_text("#!/bin/sh\nexit 0\n")
    for tool in tools:
        tool.chmod(0o755)
    return root


def bootstrap(root: Path) -> tuple[list[str], str]:
    """Run the copy's bootstrap.sh; the pip command lines it ran, and what it printed."""
    log = root / "pip.log"
    log.unlink(missing_ok=True)
    env = {"PATH": f"{root.parent / 'fake-bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
           "PYTHON": sys.executable, "PIP_LOG": str(log), "HOME": str(root.parent)}
    proc = subprocess.run(["bash", "scripts/bootstrap.sh"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return (log.read_text().splitlines() if log.exists() else []), proc.stderr


def test_installs_once_then_only_after_a_change(tree: Path) -> None:
    (first,), said = bootstrap(tree)
    assert "installing swarmbus" in said and "\x1b" not in said  # not a terminal: no escape codes
    assert "-e .[mcp]" in first and "-e plugins/one/" in first and "-e plugins/two/" in first
    assert "pytest>=8" in first and "import-linter>=2.1" in first  # the dev group, from pyproject.toml
    assert (tree / ".venv" / ".bootstrap-stamp").is_file()

    pip, said = bootstrap(tree)
    assert pip == [] and "up to date" in said

    plugin = tree / "plugins" / "two" / "pyproject.toml"
    plugin.write_text(plugin.read_text() + 'dependencies = ["shtab"]\n')
    assert len(bootstrap(tree)[0]) == 1
    assert bootstrap(tree)[0] == []

    (tree / ".venv" / "bin" / "tox").unlink()  # a tool went missing: install again
    assert len(bootstrap(tree)[0]) == 1


def test_a_failed_install_is_not_stamped(tree: Path) -> None:
    python = tree / ".venv" / "bin" / "python"
    python.write_text(python.read_text().replace("exit 0; fi", "exit 1; fi"))
    env = {"PATH": f"{tree.parent / 'fake-bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
           "PYTHON": sys.executable, "PIP_LOG": str(tree / "pip.log")}
    proc = subprocess.run(["bash", "scripts/bootstrap.sh"], cwd=tree, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert not (tree / ".venv" / ".bootstrap-stamp").exists()
