"""What the CLI prints for a person degrades gracefully: ASCII marks where stdout cannot encode
``✓``, escapes (never a traceback) for other text it cannot encode, and ANSI colour only on a
terminal without ``NO_COLOR`` (https://no-color.org); ``scripts/say.sh`` (the scripts' progress
lines) likewise. ``doctor`` runs against a broker port where nothing listens: every check still
prints, the broker check fails."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO
from swarmbus import testing
from swarmbus.cli import output
from swarmbus.dev_broker import free_port

ESC = "\x1b"


def doctor_env(root: Path, **extra: str) -> dict[str, str]:
    """An isolated environment whose broker is a free port on loopback (nothing listens)."""
    (root / "config.toml").write_text("")
    return testing.isolated_env(root, f"mqtt://127.0.0.1:{free_port()}", SWARMBUS_BROKER_CONNECT_TIMEOUT="1", **extra)


def run_on_a_terminal(argv: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 60) -> tuple[int, str]:
    """Run ``argv`` with stdout and stderr on a pseudo-terminal; its exit code and output."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env, cwd=cwd)
    os.close(follower)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([leader], [], [], timeout)
            assert ready, f"{argv} printed nothing for {timeout} s"
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other side is closed (the process exited)
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
    return proc.wait(timeout), b"".join(chunks).decode("utf-8", errors="replace")


# -- the helper ---------------------------------------------------------------------------------------------------------
def test_pick_marks_follows_the_stream_encoding() -> None:
    fancy, plain = {"ok": "✓", "fail": "✗"}, {"ok": "+", "fail": "x"}
    assert output.pick_marks(fancy, plain, io.TextIOWrapper(io.BytesIO(), encoding="utf-8")) is fancy
    assert output.pick_marks(fancy, plain, io.TextIOWrapper(io.BytesIO(), encoding="ascii")) is plain
    assert output.pick_marks(fancy, plain, io.TextIOWrapper(io.BytesIO(), encoding="latin-1")) is plain
    assert output.can_encode("é", io.TextIOWrapper(io.BytesIO(), encoding="latin-1"))


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("env", "tty", "coloured"), [
    ({}, True, True),
    ({}, False, False),
    ({"NO_COLOR": "1"}, True, False),
    ({"NO_COLOR": ""}, True, True),  # no-color.org: only a non-empty value counts
    ({"TERM": "dumb"}, True, False),
])
def test_colour_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], tty: bool,
                                                    coloured: bool) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    stream: Any = Tty() if tty else io.StringIO()
    assert output.color_enabled(stream) is coloured
    assert output.paint("x", "red", stream) == ("\x1b[31mx\x1b[0m" if coloured else "x")
    assert output.paint("x", None, stream) == "x"


# -- doctor, end to end -------------------------------------------------------------------------------------------------
def test_doctor_on_an_ascii_stdout_prints_ascii_marks(tmp_path: Path) -> None:
    proc = testing.run_cli(doctor_env(tmp_path, PYTHONIOENCODING="ascii"), "doctor", "--agent-id", "asciitest")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stdout.isascii(), proc.stdout
    assert re.search(r"^\[x\] broker: broker unreachable", proc.stdout, re.MULTILINE), proc.stdout
    assert re.search(r"^\[\+\] config: ", proc.stdout, re.MULTILINE), proc.stdout
    assert re.search(r"^\[-\] presence: ", proc.stdout, re.MULTILINE), proc.stdout
    assert re.search(r"^\d+ checks: \d+ failed", proc.stdout, re.MULTILINE), proc.stdout


def test_doctor_to_a_pipe_has_no_escape_codes(tmp_path: Path) -> None:
    env = doctor_env(tmp_path, PYTHONIOENCODING="utf-8", TERM="xterm")
    proc = testing.run_cli(env, "doctor", "--agent-id", "pipetest")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.search(r"^\[✗\] broker: ", proc.stdout, re.MULTILINE), proc.stdout
    assert ESC not in proc.stdout + proc.stderr


def test_doctor_on_a_terminal_colours_its_marks_unless_no_color(tmp_path: Path) -> None:
    env = doctor_env(tmp_path, PYTHONIOENCODING="utf-8", TERM="xterm")
    argv = [sys.executable, "-m", "swarmbus", "doctor", "--agent-id", "ttytest"]
    code, text = run_on_a_terminal(argv, env)
    assert code == 1, text
    assert "[\x1b[31m✗\x1b[0m] broker: " in text, text
    code, text = run_on_a_terminal(argv, {**env, "NO_COLOR": "1"})
    assert code == 1, text
    assert "[✗] broker: " in text and ESC not in text, text


def test_text_stdout_cannot_encode_is_escaped_not_a_crash(tmp_path: Path) -> None:
    root = tmp_path / "café"
    root.mkdir()
    env = doctor_env(root, PYTHONIOENCODING="ascii")
    proc = testing.run_cli(env, "config", "show")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "caf\\xe9" in proc.stdout and proc.stdout.isascii()
    proc = testing.run_cli(env, "config", "show", "--json")
    assert proc.returncode == 0 and proc.stdout.isascii(), proc.stderr
    settings = {s["key"]: s["value"] for s in json.loads(proc.stdout)["settings"]}
    assert settings["state_dir"] == str(root / "state")  # \\u00e9 escapes: still the same JSON


# -- the scripts' progress lines ----------------------------------------------------------------------------------------
def say(env: dict[str, str], *, terminal: bool) -> str:
    argv = ["bash", "-c", '. scripts/say.sh && say "hello there"']
    if terminal:
        code, text = run_on_a_terminal(argv, env, cwd=REPO)
        assert code == 0, text
        return text
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=30)
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr
    return proc.stderr


def test_say_is_bold_only_on_a_terminal_without_no_color() -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TERM": "xterm"}
    assert say(env, terminal=False) == "==> hello there\n"
    assert say({**env, "NO_COLOR": "1"}, terminal=False) == "==> hello there\n"
    assert say(env, terminal=True).replace("\r\n", "\n") == "\x1b[1m==> hello there\x1b[0m\n"
    assert say({**env, "NO_COLOR": "1"}, terminal=True).replace("\r\n", "\n") == "==> hello there\n"
    assert say({**env, "TERM": "dumb"}, terminal=True).replace("\r\n", "\n") == "==> hello there\n"
