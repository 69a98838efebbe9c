"""MqttLink against a real private broker: the paho-mqtt 2.x traps it designs around."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from typing import Any

from conftest import wait_for
from swarmbus.settings import BrokerSettings
from swarmbus.transport.link import MqttLink, Subscription


def _settings(broker: Any) -> BrokerSettings:
    return BrokerSettings(host="127.0.0.1", port=broker.port)


def test_tcp_nodelay_is_set_on_the_socket(broker: Any) -> None:
    link = MqttLink(_settings(broker), client_id="nodelay")
    link.start()
    try:
        link.wait_connected(5)
        sock = link._client.socket()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        link.stop()


def test_an_exception_in_a_callback_does_not_kill_the_link(broker: Any) -> None:
    got: list[bytes] = []

    def on_message(topic: str, payload: bytes, mid: int, qos: int) -> None:
        if payload == b"boom":
            raise RuntimeError("handler bug")
        got.append(payload)

    receiver = MqttLink(_settings(broker), client_id="victim", subscriptions=[Subscription("t/x", 1)],
                        on_message=on_message)
    sender = MqttLink(_settings(broker), client_id="sender")
    receiver.start()
    sender.start()
    try:
        receiver.wait_connected(5)
        sender.wait_connected(5)


        def subscribed() -> bool:  # the SUBACK is not observable: probe until a publish gets through
            sender.publish_and_wait("t/x", b"probe")
            return b"probe" in got

        wait_for(subscribed, what="the subscription")
        got.clear()
        sender.publish_and_wait("t/x", b"boom")
        sender.publish_and_wait("t/x", b"after")
        # late probes may still arrive: only the real messages count
        wait_for(lambda: [g for g in got if g != b"probe"] == [b"after"], what="the message after the failing one")
        assert receiver.callback_errors == 1
        assert receiver.thread_alive() and receiver.connected
    finally:
        sender.stop()
        receiver.stop()


def test_persistent_session_survives_disconnect_with_session_expiry(broker: Any) -> None:
    """MQTT 5: clean_start=False alone is not enough; the daemon sets a Session Expiry Interval,
    so messages published while it is away are queued for it."""
    seen: list[bytes] = []
    ready = threading.Event()

    def on_message(topic: str, payload: bytes, mid: int, qos: int) -> None:
        seen.append(payload)

    def make() -> MqttLink:
        return MqttLink(_settings(broker), client_id="durable", persistent=True, session_expiry=300,
                        subscriptions=[Subscription("t/q", 1)], on_message=on_message,
                        on_connected=lambda present: ready.set())

    first = make()
    first.start()
    first.wait_connected(5)
    ready.wait(5)
    first.stop()
    sender = MqttLink(_settings(broker), client_id="sender2")
    sender.start()
    sender.wait_connected(5)
    sender.publish_and_wait("t/q", b"while away")
    sender.stop()
    second = make()
    second.start()
    try:
        second.wait_connected(5)
        assert second.session_present is True
        wait_for(lambda: b"while away" in seen, what="the queued message")
    finally:
        second.stop()


def test_daemon_log_format_json_is_one_object_per_line(swarm: Any) -> None:
    daemon = swarm.start_daemon("jsonlog", "--log-format", "json")
    daemon.stop()
    lines = [line for line in daemon.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    startup = [r for r in records if r.get("event") == "startup"]
    assert len(startup) == 1
    assert startup[0]["agent_id"] == "jsonlog" and startup[0]["version"] == "0.1.0"
    assert "broker" in startup[0] and "plugins" in startup[0]


def test_python_dash_m_swarmbus_works() -> None:
    proc = subprocess.run([sys.executable, "-m", "swarmbus", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("swarmbus 0.1.0")
