"""End to end through a real daemon: a private mosquitto, ``swarmbus start`` with host type
``openclaw`` pointed at the fake gateway, ``swarmbus send``, and the gateway receiving an
``agent`` request whose prompt carries the message."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from openclaw_fake_gateway import FakeGateway
from openclaw_helpers import TOKEN

from swarmbus import testing
from swarmbus.testing import BrokerConfig, find_mosquitto, free_port, start_broker, wait_for

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")


@pytest.fixture
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tmp_path_factory.mktemp("ocd"))


@pytest.fixture
def broker(root: Path) -> Iterator[object]:
    with start_broker(BrokerConfig(state_dir=root / "broker", port=free_port())) as running:
        yield running


def test_message_sent_to_the_agent_reaches_the_gateway(root: Path, broker: object, gateway: FakeGateway) -> None:
    config = root / "config.toml"
    config.write_text(f'[plugins.openclaw]\ngateway_url = "{gateway.url}"\ntoken = "{TOKEN}"\n')
    outside = {k: v for k, v in os.environ.items() if not k.startswith(("SWARMBUS_", "MQTT_", "OPENCLAW_"))}
    env = testing.isolated_env(root, broker.url, base=outside, plugins="openclaw",  # type: ignore[attr-defined]
                               SWARMBUS_HOST_TYPE="openclaw", SWARMBUS_WAKE_POLICY="all")
    log_path = root / "daemon.log"
    daemon = testing.start_daemon(env, "oc", log_path=log_path)
    try:
        testing.wait_daemon_connected(env, "oc", daemon, 20, log_path=log_path)
        body = f"integration body {time.time_ns()}"
        send = testing.run_cli(env, "send", "--agent-id", "planner", "--to", "oc", "--subject", "integration",
                               "--body", body, "--json")
        assert send.returncode == 0, send.stderr
        params = gateway.wait_for(
            lambda g: next((p for p in g.agent_params() if body in p.get("message", "")), None), timeout=30)
        assert params["sessionKey"] == "agent:main:swarmbus-inbox" and params["deliver"] is False
        assert "UNTRUSTED" in params["message"] and params["label"] == "swarmbus: integration"
        assert params["idempotencyKey"] in send.stdout  # the swarmbus message id
        assert gateway.connects[0]["client"]["displayName"] == "swarmbus oc"
        # the daemon recorded the wake as delivered, with the run id in its detail
        delivery = wait_for(lambda: testing.finished_delivery(env, "oc"), 20, "the wake outcome in the inbox")
        assert delivery["status"] == "ok", delivery
        assert f"openclaw run {params['idempotencyKey']} accepted" in str(delivery.get("detail")), delivery
        # the gateway's `accepted` is the delivery ladder's `surfaced` step (HandlerContext.mark_step)
        trace = testing.run_cli(env, "trace", "--agent-id", "oc", params["idempotencyKey"], "--json")
        assert trace.returncode == 0, trace.stderr
        surfaced = [s for s in json.loads(trace.stdout)["steps"] if s["step"] == "surfaced"]
        assert len(surfaced) == 1 and surfaced[0]["by"] == "oc", trace.stdout
        assert "openclaw gateway accepted run" in surfaced[0]["detail"]
    finally:
        testing.stop_daemon(daemon)
    assert TOKEN not in (root / "daemon.log").read_text()


def test_wake_test_handshakes_with_the_gateway_and_starts_no_run(root: Path, broker: object,
                                                                 gateway: FakeGateway) -> None:
    config = root / "config.toml"
    config.write_text(f'[plugins.openclaw]\ngateway_url = "{gateway.url}"\ntoken = "{TOKEN}"\n')
    outside = {k: v for k, v in os.environ.items() if not k.startswith(("SWARMBUS_", "MQTT_", "OPENCLAW_"))}
    env = testing.isolated_env(root, broker.url, base=outside, plugins="openclaw",  # type: ignore[attr-defined]
                               SWARMBUS_HOST_TYPE="openclaw", SWARMBUS_WAKE_POLICY="all")
    log_path = root / "daemon.log"
    daemon = testing.start_daemon(env, "oc", log_path=log_path)
    try:
        testing.wait_daemon_connected(env, "oc", daemon, 20, log_path=log_path)
        proc = testing.run_cli(env, "wake", "test", "--agent-id", "oc")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "gateway  ready  tested end to end" in proc.stdout and "would fire now: gateway" in proc.stdout
        assert gateway.connects and gateway.agent_params() == []  # a handshake, no agent run
        config.write_text('[plugins.openclaw]\ngateway_url = "ws://127.0.0.1:9/"\n'
                          f'token = "{TOKEN}"\nuse_cli_fallback = false\n')
        testing.stop_daemon(daemon)
        daemon = testing.start_daemon(env, "oc", log_path=log_path)
        testing.wait_daemon_connected(env, "oc", daemon, 20, log_path=log_path)
        down = testing.run_cli(env, "wake", "test", "--agent-id", "oc", "--json")
        assert down.returncode == 1, down.stdout + down.stderr
        row = json.loads(down.stdout)["paths"][0]
        assert row["name"] == "gateway" and not row["ready"] and row["detail"].startswith("test failed")
    finally:
        testing.stop_daemon(daemon)
