"""``scripts/bootstrap.sh`` installs once, then skips pip while nothing it depends on changed
(every pyproject.toml, the script itself, the Python version), and reinstalls when one did.

It runs on a copy of the scripts and pyproject files in a temporary directory, with a fake
``.venv/bin/python`` that records ``-m pip`` calls instead of installing anything (and runs this
interpreter for everything else), and fake ``mosquitto``/``openssl``/``nats-server``/``rabbitmq-server``
so nothing is installed (the engine servers' install is run against a fake ``apt-get``)."""

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
    tools += [fakes / "mosquitto", fakes / "openssl", fakes / "nats-server", fakes / "rabbitmq-server"]
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
    assert "-e .[mcp,dashboard]" in first and "-e plugins/one/" in first and "-e plugins/two/" in first
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


FAKE_APT = """#!/bin/sh
policy=absent
[ -x "$SWARMBUS_POLICY_RC_D" ] && { "$SWARMBUS_POLICY_RC_D" rabbitmq-server start; policy="exits $?"; }
echo "$* | RUNLEVEL=$RUNLEVEL DEBIAN_FRONTEND=$DEBIAN_FRONTEND policy-rc.d $policy" >> "$APT_LOG"
[ "$1" = install ] && [ -n "$APT_FAIL" ] && exit 100
exit 0
"""


@pytest.mark.parametrize(("uid", "fail"), [(0, False), (0, True), (1000, False)], ids=["root", "apt-fails", "user"])
def test_missing_engine_servers_are_installed_as_root_without_starting_them(tree: Path, uid: int, fail: bool) -> None:
    fakes = tree.parent / "fake-bin"
    for name in ("nats-server", "rabbitmq-server"):
        (fakes / name).unlink()
    (fakes / "apt-get").write_text(FAKE_APT)
    (fakes / "id").write_text(f'#!/bin/sh\n[ "$1" = -u ] && echo {uid} && exit 0\nexec /usr/bin/id "$@"\n')
    for name in ("apt-get", "id"):
        (fakes / name).chmod(0o755)
    apt_log, policy = tree / "apt.log", tree / "policy-rc.d"
    env = {"PATH": f"{fakes}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}", "PYTHON": sys.executable,
           "PIP_LOG": str(tree / "pip.log"), "HOME": str(tree.parent), "APT_LOG": str(apt_log),
           "SWARMBUS_ENGINE_PATH": str(fakes), "SWARMBUS_POLICY_RC_D": str(policy), "APT_FAIL": "1" if fail else ""}
    proc = subprocess.run(["bash", "scripts/bootstrap.sh"], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr  # never fails bootstrap: the engine tests skip instead
    calls = apt_log.read_text().splitlines() if apt_log.exists() else []
    assert not policy.exists()  # removed again
    if uid != 0:
        assert calls == []
        assert "nats-server rabbitmq-server not installed: the engine tests will skip" in proc.stderr
        return
    assert "installing nats-server rabbitmq-server for the engine tests" in proc.stderr
    assert calls[0].startswith("update -qq |")
    assert calls[1].startswith("install -y -qq --no-install-recommends nats-server rabbitmq-server |"), calls
    assert "RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive policy-rc.d exits 101" in calls[1]  # no service starts
    said = "could not install nats-server rabbitmq-server" if fail else "installed nats-server rabbitmq-server"
    assert said in proc.stderr
