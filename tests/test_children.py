"""swarmbus.children: the one way wakers start child processes."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from conftest import wait_for
from swarmbus import run_child, scrubbed_env


def test_scrubbed_env_keeps_the_allow_list_and_never_broker_credentials() -> None:
    base = {"PATH": "/bin", "HOME": "/h", "SECRET_TOKEN": "x", "SWARMBUS_BROKER_PASSWORD": "pw",
            "MQTT_PASSWORD": "pw", "ANTHROPIC_BASE_URL": "http://127.0.0.1:1"}
    env = scrubbed_env(["ANTHROPIC_BASE_URL", "MQTT_PASSWORD", "SWARMBUS_BROKER_PASSWORD"], base)
    assert env == {"PATH": "/bin", "HOME": "/h", "ANTHROPIC_BASE_URL": "http://127.0.0.1:1"}


def test_run_child_passes_stdin_and_separates_streams() -> None:
    code, out, err = asyncio.run(run_child(
        [sys.executable, "-c", "import sys; d=sys.stdin.read(); print(d.upper()); print('e', file=sys.stderr); sys.exit(3)"],
        stdin=b"hello", env=scrubbed_env()))
    assert (code, out.strip(), err.strip()) == (3, b"HELLO", b"e")


def test_cancelling_run_child_kills_the_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    script = ("import subprocess, sys, time; "
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              f"open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(60)")

    async def scenario() -> None:
        task = asyncio.ensure_future(run_child([sys.executable, "-c", script], env=scrubbed_env()))
        while not pidfile.exists() or not pidfile.read_text():
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(scenario(), 30))
    grandchild = int(pidfile.read_text())

    def gone() -> bool:
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{grandchild}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")

    wait_for(gone, 10, what="the grandchild to be killed with its process group")
