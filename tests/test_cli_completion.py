"""``swarmbus completion bash|zsh|fish``: static completion scripts (shtab) covering every core
command and the installed plugins' commands; bash's script really completes; nothing else imports
shtab."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from swarmbus import Command, testing
from swarmbus.cli import completion, main
from swarmbus.cli.main import CORE_COMMANDS


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "config.toml").write_text("")
    return testing.isolated_env(tmp_path, "mqtt://127.0.0.1:9")  # completion never connects


def complete_in_bash(script: Path, *words: str) -> list[str]:
    """What bash offers for the last of ``words`` (the command line so far) with ``script`` loaded."""
    line = " ".join(("swarmbus", *words))
    argv = ["bash", "-c", f'. "$0"; COMP_WORDS=({line}); COMP_CWORD={len(words)}; COMP_LINE="{line}"; '
                          f'COMP_POINT={len(line)}; _shtab_swarmbus; printf "%s\\n" "${{COMPREPLY[@]}}"', str(script)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_bash_script_is_valid_and_completes(env: dict[str, str], tmp_path: Path) -> None:
    proc = testing.run_cli(env, "completion", "bash")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    script = tmp_path / "swarmbus.bash"
    script.write_text(proc.stdout)
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    for name in CORE_COMMANDS:
        assert name in proc.stdout, name
    assert complete_in_bash(script, "se") == ["send"]
    assert complete_in_bash(script, "do") == ["doctor"]
    assert complete_in_bash(script, "send", "--prio") == ["--priority"]
    assert complete_in_bash(script, "send", "--priority", "") == ["low", "normal", "high"]
    assert complete_in_bash(script, "completion", "") == ["bash", "zsh", "fish"]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_scripts(env: dict[str, str], tmp_path: Path, shell: str) -> None:
    proc = testing.run_cli(env, "completion", shell)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    for name in ("send", "start", "doctor", "completion"):
        assert name in proc.stdout, name
    if shutil.which(shell):  # a syntax check where the shell is installed
        script = tmp_path / f"swarmbus.{shell}"
        script.write_text(proc.stdout)
        check = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr


def test_usage_errors_and_help(env: dict[str, str]) -> None:
    for args in (("completion",), ("completion", "tcsh")):
        proc = testing.run_cli(env, *args)
        assert proc.returncode == 2 and proc.stdout == "", proc.stdout
        assert proc.stderr.startswith("swarmbus: error:") and "Traceback" not in proc.stderr, proc.stderr
    proc = testing.run_cli(env, "completion", "--help")
    assert proc.returncode == 0
    for where in ("bash-completion/completions/swarmbus", "~/.zfunc/_swarmbus", "~/.config/fish/completions/swarmbus.fish"):
        assert where in proc.stdout, where


def test_plugin_commands_and_path_options_complete(monkeypatch: pytest.MonkeyPatch) -> None:
    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--target", metavar="PATH")

    hello = Command("demo-hello", "say hello", configure, lambda args, settings: 0)
    monkeypatch.setattr(main, "_plugin_commands", lambda: {"demo-hello": hello})
    script = completion.script("bash")
    assert "demo-hello" in script
    # --config (metavar PATH) and the plugin's --target complete file names, --state-dir directories
    assert "_shtab_swarmbus_demo_hello___target_COMPGEN=_shtab_compgen_files" in script
    assert "_shtab_swarmbus_send___config_COMPGEN=_shtab_compgen_files" in script
    assert "_shtab_swarmbus_send___state_dir_COMPGEN=_shtab_compgen_dirs" in script


def test_only_the_completion_command_imports_shtab() -> None:
    code = ("import sys; from swarmbus.cli.main import build_parser; build_parser(); "
            "assert 'shtab' not in sys.modules, 'shtab imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
