"""Broker connection options end to end: WebSockets, mTLS, client-id prefix; and tail --follow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from brokers import make_ca
from conftest import SwarmEnv, _base_env, wait_for
from swarmbus.dev_broker import free_port


def _env_for(tmp_path_factory: Any, url: str) -> SwarmEnv:
    root = Path(tmp_path_factory.mktemp("tr"))
    env = SwarmEnv(root, url)
    env.env = _base_env(root, url)
    return env


def test_daemons_talk_over_websockets(tmp_path_factory: Any, broker_factory: Any) -> None:
    ws_port = free_port()
    broker = broker_factory(websockets_port=ws_port)
    env = _env_for(tmp_path_factory, f"ws://127.0.0.1:{ws_port}")
    try:
        env.start_daemon("wsbob")
        sent = env.cli("send", "--agent-id", "wsalice", "--to", "wsbob", "--subject", "over ws", "--body", "hi",
                       "--direct", check=True)
        assert "Sent to wsbob" in sent.stdout
        wait_for(lambda: (env.status("wsbob") or {}).get("last_seq") == 1, what="wsbob to store the message")
        assert env.status("wsbob")["broker"].startswith("ws://")
        assert broker.port != ws_port
    finally:
        for d in env.daemons:
            d.stop()


def test_mutual_tls_with_client_certificate(tmp_path_factory: Any, broker_factory: Any, tmp_path: Path) -> None:
    certs = make_ca(tmp_path / "pki")
    broker = broker_factory(cafile=certs.ca, certfile=certs.server_cert, keyfile=certs.server_key,
                            require_certificate=True)
    env = _env_for(tmp_path_factory, f"mqtts://127.0.0.1:{broker.port}")
    tls = ["--ca-cert", str(certs.ca), "--client-cert", str(certs.client_cert), "--client-key", str(certs.client_key)]
    try:
        env.start_daemon("mbob", *tls)
        ok = env.cli("send", "--agent-id", "malice", "--to", "mbob", "--subject", "mtls", "--body", "x", "--direct",
                     *tls)
        assert ok.returncode == 0, ok.stderr
        wait_for(lambda: (env.status("mbob") or {}).get("last_seq") == 1, what="mbob to store the message")
        refused = env.cli("send", "--agent-id", "malice", "--to", "mbob", "--subject", "no cert", "--body", "x",
                          "--direct", "--ca-cert", str(certs.ca))
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert "broker unreachable" in refused.stderr
    finally:
        for d in env.daemons:
            d.stop()


def test_client_id_prefix_applies_to_the_daemon_session(swarm: Any) -> None:
    swarm.start_daemon("pfx", "--client-id-prefix", "fleet7")
    assert swarm.status("pfx")["client_id"] == "fleet7-pfx"


def test_tail_follow_streams_new_messages(swarm: Any) -> None:
    swarm.start_daemon("tailer")
    proc = subprocess.Popen([sys.executable, "-m", "swarmbus", "tail", "--agent-id", "tailer", "--follow", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=swarm.env,
                            start_new_session=True)
    lines: list[dict[str, Any]] = []

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(json.loads(line))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        for n in (1, 2):
            swarm.cli("send", "--agent-id", "someone", "--to", "tailer", "--subject", f"s{n}", "--body", "b",
                      check=True)
            wait_for(lambda n=n: len(lines) == n, what=f"tail --follow to print message {n}")
        assert [m["subject"] for m in lines] == ["s1", "s2"]
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(10)
