"""End to end through a real daemon: a private mosquitto, ``swarmbus start`` with host type
``openclaw`` pointed at the fake gateway, ``swarmbus send``, and the gateway receiving an
``agent`` request whose prompt carries the message."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from openclaw_fake_gateway import FakeGateway
from openclaw_helpers import TOKEN

from swarmbus.broker import BrokerConfig, find_mosquitto, free_port, start_broker
from swarmbus.control import daemon_status
from swarmbus.paths import AgentPaths

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")


def wait_until(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


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
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWARMBUS_", "MQTT_", "OPENCLAW_"))}
    env.update(SWARMBUS_STATE_DIR=str(root / "state"), SWARMBUS_CONFIG=str(config),
               SWARMBUS_BROKER_URL=broker.url, SWARMBUS_HOST_TYPE="openclaw",  # type: ignore[attr-defined]
               SWARMBUS_WAKE_POLICY="all", SWARMBUS_LOAD_PLUGINS="openclaw", PYTHONUNBUFFERED="1")
    log = (root / "daemon.log").open("w")
    daemon = subprocess.Popen([sys.executable, "-m", "swarmbus", "start", "--agent-id", "oc"], env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        socket = AgentPaths.for_agent("oc", root / "state").socket

        def connected() -> bool:
            if daemon.poll() is not None:
                pytest.fail(f"daemon exited {daemon.returncode}:\n{(root / 'daemon.log').read_text()}")
            return bool((daemon_status(socket) or {}).get("connected"))

        wait_until(connected, 20, "the daemon to connect")
        body = f"integration body {time.time_ns()}"
        send = subprocess.run([sys.executable, "-m", "swarmbus", "send", "--agent-id", "planner", "--to", "oc",
                               "--subject", "integration", "--body", body, "--json"],
                              env=env, capture_output=True, text=True, timeout=60)
        assert send.returncode == 0, send.stderr
        params = gateway.wait_for(
            lambda g: next((p for p in g.agent_params() if body in p.get("message", "")), None), timeout=30)
        assert params["sessionKey"] == "agent:main:swarmbus-inbox" and params["deliver"] is False
        assert "UNTRUSTED" in params["message"] and params["label"] == "swarmbus: integration"
        assert params["idempotencyKey"] in send.stdout  # the swarmbus message id
        assert gateway.connects[0]["client"]["displayName"] == "swarmbus oc"
        # the daemon recorded the wake as delivered, with the run id in its detail
        def wake_delivery() -> dict[str, object] | None:
            proc = subprocess.run([sys.executable, "-m", "swarmbus", "inbox", "--agent-id", "oc", "--json"],
                                  env=env, capture_output=True, text=True, timeout=60)
            for message in json.loads(proc.stdout or "{}").get("messages", []):
                for delivery in message.get("deliveries", []):
                    if delivery.get("handler") == "wake" and delivery.get("status") not in ("pending", "running"):
                        return delivery  # type: ignore[no-any-return]
            return None

        delivery = wait_until(wake_delivery, 20, "the wake outcome in the inbox")
        assert delivery["status"] == "ok", delivery
        assert f"openclaw run {params['idempotencyKey']} accepted" in str(delivery.get("detail")), delivery
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait(10)
        log.close()
    assert TOKEN not in (root / "daemon.log").read_text()
