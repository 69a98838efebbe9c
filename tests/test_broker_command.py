"""`swarmbus broker`: the generated development broker is usable by daemons, keeps queued
messages across a broker restart, and refuses non-loopback clients by default."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from conftest import SwarmEnv, _base_env, wait_for
from swarmbus.dev_broker import free_port


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _start_broker(root: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SWARMBUS_STATE_DIR": str(root / "state")}
    proc = subprocess.Popen([sys.executable, "-m", "swarmbus", "broker", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    wait_for(lambda: proc.poll() is not None or _listening(port), 15, what="swarmbus broker to listen")
    assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
    return proc


def test_print_config_has_the_safety_settings(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "swarmbus", "broker", "--port", "18999", "--state-dir", str(tmp_path),
                          "--print-config"], capture_output=True, text=True, check=True).stdout
    lines = {line.strip() for line in out.splitlines()}
    assert "listener 18999 127.0.0.1" in lines
    assert "max_queued_messages 0" in lines
    assert "set_tcp_nodelay true" in lines
    assert "persistence true" in lines
    assert "autosave_interval 1" in lines
    assert str(tmp_path) in out


def test_daemons_exchange_messages_through_swarmbus_broker_across_a_restart(tmp_path_factory) -> None:
    root = Path(tmp_path_factory.mktemp("brk"))
    port = free_port()
    proc = _start_broker(root, port)
    env = SwarmEnv(root, f"mqtt://127.0.0.1:{port}")
    env.env = _base_env(root, env.broker_url)
    try:
        bob = env.start_daemon("bob")
        env.cli("send", "--agent-id", "alice", "--to", "bob", "--subject", "first", "--body", "1", check=True)
        wait_for(lambda: (env.status("bob") or {}).get("last_seq") == 1, what="bob to store the first message")
        bob.stop()
        # queued for bob's persistent session while he is away, then a broker restart (SIGTERM saves the db)
        env.cli("send", "--agent-id", "alice", "--to", "bob", "--subject", "queued", "--body", "2", "--direct",
                check=True)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
        proc = _start_broker(root, port)
        env.start_daemon("bob")
        wait_for(lambda: (env.status("bob") or {}).get("last_seq") == 2, what="the queued message after restart")
        read = env.cli("read", "--agent-id", "bob", "--json", check=True)
        assert [m["subject"] for m in __import__("json").loads(read.stdout)] == ["first", "queued"]
    finally:
        for d in env.daemons:
            d.stop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
