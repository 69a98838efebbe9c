"""The two ``swarmbus send`` fast paths: what they import, the one-shot publish they use, and
the broker settings rules they share with the pydantic settings.

- through the daemon: no pydantic, paho, pluggy, asyncio or typing (and no tomllib without a
  config file that has content);
- ``--direct`` (and without a daemon): no pydantic, no pluggy; broker settings validated by
  ``swarmbus.broker_options`` exactly as ``swarmbus.settings.BrokerSettings`` validates them;
  the publish is ``swarmbus.transport.publish.publish_once`` over plain TCP, TLS + password,
  mTLS, websockets, and with a fallback to MQTT 3.1.1.
"""

from __future__ import annotations

import importlib.util
import json
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from brokers import make_ca
from conftest import SwarmEnv, wait_for
from mqtt_proxy import Mqtt311Proxy, read_packet
from swarmbus.broker_options import BrokerOptions, BrokerProblems, broker_options, check_broker
from swarmbus.cli.main import COMMANDS, CORE_COMMANDS, build_parser
from swarmbus.config import load_raw, read_config_file
from swarmbus.dev_broker import RunningBroker, free_port
from swarmbus.envelope import new_envelope
from swarmbus.errors import BrokerUnreachable, ConfigError, TimeoutExpired
from swarmbus.oneshot import send_direct
from swarmbus.settings import BrokerSettings, Settings, build_settings
from swarmbus.transport.publish import _State, one_shot_client_id, publish_once

SEND = ("send", "--agent-id", "fastalice", "--to", "fastbob", "--subject", "s", "--body", "b")


# -- helpers ---------------------------------------------------------------------------------------
def imported_modules(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``python -X importtime -m swarmbus ARGS``; return the process and every module it imported."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "swarmbus", *args], capture_output=True,
                          text=True, env=env, timeout=60)
    names = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", proc.stderr, re.MULTILINE))
    assert names, proc.stderr
    return proc, names


def loaded(names: set[str], *packages: str) -> set[str]:
    """The members of ``names`` that are one of ``packages`` or inside one."""
    return {n for n in names if any(n == p or n.startswith(p + ".") for p in packages)}


class Subscriber:
    """A plain paho client subscribed to ``topic`` on a plain TCP broker; collects payloads."""

    def __init__(self, broker: RunningBroker, topic: str) -> None:
        self.payloads: list[dict[str, Any]] = []
        self._ready = threading.Event()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"fast-test-{secrets.token_hex(4)}", protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(topic, 1)
        self.client.on_subscribe = lambda c, u, m, r, p: self._ready.set()
        self.client.on_message = lambda c, u, msg: self.payloads.append(json.loads(msg.payload))
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        wait_for(self._ready.is_set, 10, what="the subscriber's SUBACK")

    def wait_id(self, message_id: str) -> dict[str, Any]:
        return wait_for(lambda: next((p for p in self.payloads if p.get("id") == message_id), None), 10,  # type: ignore[no-any-return]
                        what=f"message {message_id}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscriber(broker: RunningBroker) -> Iterator[Subscriber]:
    sub = Subscriber(broker, "agents/fastbob/inbox")
    yield sub
    sub.close()


def _publish(broker: Any, body: str = "x", **kwargs: Any) -> tuple[str, str]:
    """publish_once of a fresh envelope for fastbob; returns (message id, MQTT version used)."""
    envelope = new_envelope("fastalice", "fastbob", "s", body)
    version = publish_once(broker, "agents/fastbob/inbox", envelope.to_wire(), agent_id="fastalice", **kwargs)
    return envelope.id, version


# -- 1. what each path imports -----------------------------------------------------------------------------------
def test_send_through_the_daemon_imports_no_heavy_modules(swarm: SwarmEnv) -> None:
    swarm.start_daemon("fastalice")
    proc, names = imported_modules(swarm.env, *SEND, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["status"] == "published"
    assert loaded(names, "pydantic", "pydantic_core", "paho", "pluggy", "asyncio", "typing") == set()
    # the test config file holds only a comment: nothing for tomllib to parse
    assert loaded(names, "tomllib", "swarmbus.settings", "swarmbus.plugins", "swarmbus.markdown") == set()
    assert "swarmbus.control" in names


def test_send_direct_imports_neither_pydantic_nor_pluggy(swarm: SwarmEnv) -> None:
    for extra in (("--direct",), ()):  # --direct, and the fallback when no daemon runs
        proc, names = imported_modules(swarm.env, *SEND, *extra)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "Sent to fastbob"
        assert loaded(names, "pydantic", "pydantic_core", "pluggy", "swarmbus.settings", "swarmbus.plugins") == set()
        assert "paho.mqtt.client" in names and "swarmbus.transport.publish" in names
        assert loaded(names, "swarmbus.transport.link") == set()
        if importlib.util.find_spec("socks") is None:  # with PySocks installed paho looks up proxies
            assert loaded(names, "urllib.request", "http.client") == set()


def test_deferred_stdlib_modules_load_on_first_use() -> None:
    """paho's unused imports (urllib.request, ...) are stand-ins until touched, then real."""
    code = (
        "import sys\n"
        "from swarmbus.transport import publish\n"
        "mqtt = publish._paho()\n"
        "assert 'http.client' not in sys.modules\n"
        "import urllib.request, ssl\n"
        "assert callable(urllib.request.getproxies)\n"
        "assert 'http.client' in sys.modules and sys.modules['urllib.request'].__file__\n"
        "assert ssl.CERT_REQUIRED and sys.modules['ssl'].__file__\n"
        "from urllib.request import Request\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


# -- 2. the one-shot publish --------------------------------------------------------------------------------------
def test_publish_once_plain_tcp(broker: RunningBroker, subscriber: Subscriber) -> None:
    options = BrokerOptions(host=broker.host, port=broker.port)
    message_id, version = _publish(options, body="plain")
    assert version == "5"
    assert subscriber.wait_id(message_id)["body"] == "plain"
    # the pydantic settings work the same, through oneshot.send_direct
    envelope = new_envelope("fastalice", "fastbob", "s", "via settings")
    send_direct(Settings(broker=BrokerSettings(host=broker.host, port=broker.port)), envelope, timeout=5)
    assert subscriber.wait_id(envelope.id)["body"] == "via settings"


def test_publish_once_sets_tcp_nodelay() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        _State().on_socket_open(None, None, sock)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_publish_once_falls_back_to_mqtt311(broker: RunningBroker, subscriber: Subscriber) -> None:
    proxy = Mqtt311Proxy(broker.host, broker.port).start()
    try:
        # the proxy records each connection's protocol level before it answers
        message_id, version = _publish(BrokerOptions(host="127.0.0.1", port=proxy.port))
        assert version == "3.1.1"
        assert subscriber.wait_id(message_id)
        assert proxy.levels == [5, 4]
        # pinned to 5: no fallback, the refusal is the answer
        with pytest.raises(BrokerUnreachable, match="connection refused: Unsupported protocol version"):
            _publish(BrokerOptions(host="127.0.0.1", port=proxy.port, protocol="5"))
        assert proxy.levels == [5, 4, 5]
        # pinned to 3.1.1: MQTT 5 is never tried
        assert _publish(BrokerOptions(host="127.0.0.1", port=proxy.port, protocol="3.1.1"))[1] == "3.1.1"
        assert proxy.levels == [5, 4, 5, 4]
        assert not proxy.errors
    finally:
        proxy.stop()


def test_publish_once_tls_and_password(tls_broker: Any, tmp_path: Path) -> None:
    broker, certs, users = tls_broker
    password_file = tmp_path / "pw"
    password_file.write_text(users["alice"] + "\n")
    good = BrokerOptions(host="localhost", port=broker.port, ca_certs=certs.ca, username="alice",
                         password_file=password_file)
    assert good.tls and good.url == f"mqtts://localhost:{broker.port}"
    assert _publish(good)[1] == "5"
    # refused credentials fail at once, not after connect_timeout
    started = time.monotonic()
    with pytest.raises(BrokerUnreachable, match=r"connection refused: (Not authori[sz]ed|Bad user name or password)"):
        _publish(BrokerOptions(host="localhost", port=broker.port, ca_certs=certs.ca, username="alice",
                               password="wrong", connect_timeout=60))
    # an unverifiable server certificate fails at once too
    with pytest.raises(BrokerUnreachable, match="certificate verify failed"):
        _publish(BrokerOptions(host="localhost", port=broker.port, tls=True, username="alice",
                               password=users["alice"], connect_timeout=60))
    assert time.monotonic() - started < 30


def test_publish_once_mutual_tls(broker_factory: Any, tmp_path: Path) -> None:
    certs = make_ca(tmp_path / "pki")
    broker = broker_factory(cafile=certs.ca, certfile=certs.server_cert, keyfile=certs.server_key,
                            require_certificate=True)
    options = BrokerOptions(host="127.0.0.1", port=broker.port, ca_certs=certs.ca, certfile=certs.client_cert,
                            keyfile=certs.client_key)
    assert _publish(options)[1] == "5"
    with pytest.raises(BrokerUnreachable, match="broker unreachable"):
        _publish(BrokerOptions(host="127.0.0.1", port=broker.port, ca_certs=certs.ca, connect_timeout=2))
    with pytest.raises(ConfigError, match="TLS files"):
        _publish(BrokerOptions(host="127.0.0.1", port=broker.port, ca_certs=tmp_path / "missing-ca.pem"))


def test_publish_once_websockets(broker_factory: Any) -> None:
    ws_port = free_port()
    broker = broker_factory(websockets_port=ws_port)
    sub = Subscriber(broker, "agents/fastbob/inbox")
    try:
        options = BrokerOptions(host="127.0.0.1", port=ws_port, transport="websockets", ws_path="/")
        assert options.url == f"ws://127.0.0.1:{ws_port}/"
        message_id, version = _publish(options, body="over ws")
        assert version == "5"
        assert sub.wait_id(message_id)["body"] == "over ws"
    finally:
        sub.close()


def test_publish_once_unreachable_names_the_reason() -> None:
    closed = free_port()
    started = time.monotonic()
    with pytest.raises(BrokerUnreachable) as info:
        _publish(BrokerOptions(host="127.0.0.1", port=closed, connect_timeout=30))
    assert time.monotonic() - started < 10  # a refused connection is not waited out
    assert (f"broker unreachable (mqtt://127.0.0.1:{closed}): nothing is listening on 127.0.0.1:{closed} "
            "(connection refused)") in str(info.value)
    assert info.value.exit_code == 2 and info.value.hint


def test_publish_once_times_out_without_puback() -> None:
    """A broker that accepts the connection but never acknowledges the publish."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    seen: list[int] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            read_packet(conn)  # CONNECT
            conn.sendall(bytes([0x20, 0x03, 0x00, 0x00, 0x00]))  # MQTT 5 CONNACK, success
            while True:
                try:
                    packet = read_packet(conn)
                except Exception:
                    return
                seen.append(packet[0] >> 4)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with pytest.raises(TimeoutExpired, match=r"no PUBACK from mqtt://127\.0\.0\.1"):
            _publish(BrokerOptions(host="127.0.0.1", port=port), timeout=0.3)
        thread.join(10)
        assert seen[:2] == [3, 14]  # PUBLISH, then DISCONNECT
        assert TimeoutExpired("x").exit_code == 1
    finally:
        listener.close()


def test_one_shot_client_ids_are_unique_and_never_the_daemons() -> None:
    ids = {one_shot_client_id("fleet", "coder", "send") for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"fleet-coder-send-[0-9a-f]{8}", i) for i in ids)
    assert re.fullmatch(r"swarmbus-anon-send-[0-9a-f]{8}", one_shot_client_id("swarmbus", None, "send"))


def test_cli_direct_send_over_tls_with_password(swarm: SwarmEnv, tls_broker: Any, tmp_path: Path) -> None:
    broker, certs, users = tls_broker
    password_file = tmp_path / "pw"
    password_file.write_text(users["alice"])
    proc = swarm.cli(*SEND, "--direct", "--json", "--broker", broker.url, "--ca-cert", str(certs.ca),
                     "--username", "alice", "--password-file", str(password_file))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "published"


# -- 3. one set of broker rules, one wording -------------------------------------------------------------------
BAD = [
    ({"MQTT_PORT": "0"}, ""),
    ({"SWARMBUS_BROKER_PORT": "70000"}, ""),
    ({}, '[broker]\nport = "many"\n'),
    ({"SWARMBUS_BROKER_PROTOCOL": "4"}, ""),
    ({"MQTT_CLIENT_ID_PREFIX": "has space"}, ""),
    ({"SWARMBUS_BROKER_TRANSPORT": "udp"}, ""),
    ({"SWARMBUS_BROKER_KEEPALIVE": "1"}, ""),
    ({"SWARMBUS_BROKER_CONNECT_TIMEOUT": "0"}, ""),
    ({"SWARMBUS_BROKER_CONNECT_TIMEOUT": "500"}, ""),
    ({"MQTT_CERTFILE": "/c.pem"}, ""),
    ({"SWARMBUS_BROKER_CLIENT_KEY": "/k.pem"}, ""),
    ({"SWARMBUS_BROKER_PASSWORD": "x", "SWARMBUS_BROKER_PASSWORD_FILE": "/pw"}, ""),
    ({}, '[broker]\nhostname = "x"\n'),
    ({}, 'broker = "mqtt://x"\n'),
    ({}, '[broker]\ntls = "maybe"\n'),
    ({}, '[broker]\nhost = ""\n'),
    ({}, "[broker]\nca_certs = 5\nkeepalive = 2.5\n"),
    ({"MQTT_PORT": "0", "SWARMBUS_BROKER_KEEPALIVE": "1"}, ""),
]


@pytest.mark.parametrize(("env", "toml"), BAD)
def test_bad_broker_settings_same_error_on_both_paths(tmp_path: Path, env: dict[str, str], toml: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(toml)
    raw = load_raw(env=env, config_path=path)
    with pytest.raises(ConfigError) as fast:
        broker_options(raw)
    with pytest.raises(ConfigError) as full:
        build_settings(raw)
    assert str(fast.value) == str(full.value)
    text = str(fast.value)
    assert text.startswith("invalid configuration: broker") and "\n" not in text
    assert "(from " in text  # every problem names its source


def test_broker_problems_name_key_and_source(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[broker]\nkeepalive = 1\n")
    raw = load_raw({"broker.port": (0, "--port")}, env={"MQTT_CLIENT_ID_PREFIX": "a b"}, config_path=path)
    with pytest.raises(ConfigError) as info:
        broker_options(raw)
    assert str(info.value) == (
        "invalid configuration: "
        "broker.port: must be a port number from 1 to 65535, not 0 (from cli:--port); "
        "broker.client_id_prefix: must be 1-32 of A-Z a-z 0-9 _ . -, not 'a b' (from env:MQTT_CLIENT_ID_PREFIX); "
        f"broker.keepalive: must be whole seconds from 5 to 65535, not 1 (from file:{path})"
    )


def test_secrets_never_appear_in_broker_errors() -> None:
    with pytest.raises(BrokerProblems) as info:
        check_broker({"password": 12345, "port": 0})
    assert "12345" not in str(info.value)
    options = BrokerOptions(password="hunter2")
    assert "hunter2" not in repr(options) and options.resolved_password() == "hunter2"


def test_broker_options_match_broker_settings(tmp_path: Path) -> None:
    good = [
        {},
        {"MQTT_BROKER": "mqtt.internal", "MQTT_PORT": "8883", "MQTT_TLS": "1", "MQTT_USERNAME": "u",
         "MQTT_PASSWORD": "pw", "MQTT_CLIENT_ID_PREFIX": "hermes", "SWARMBUS_BROKER_KEEPALIVE": "30",
         "SWARMBUS_BROKER_CONNECT_TIMEOUT": "2.5", "SWARMBUS_BROKER_PROTOCOL": "3.1.1"},
        {"SWARMBUS_BROKER_URL": "wss://h.example/ws"},
        {"SWARMBUS_BROKER_CA_CERT": "~/ca.pem"},
        {"MQTT_CERTFILE": "~/c.pem", "MQTT_KEYFILE": "~/k.pem", "SWARMBUS_BROKER_PASSWORD_FILE": "~/pw"},
    ]
    path = tmp_path / "config.toml"
    path.write_text("")
    for env in good:
        raw = load_raw(env=env, config_path=path)
        fast = broker_options(raw)
        full = build_settings(raw).broker
        for key in BrokerSettings.model_fields:
            value = getattr(full, key)
            value = value.get_secret_value() if key == "password" and value is not None else value
            assert getattr(fast, key) == value, (env, key)
        assert (fast.effective_port, fast.url) == (full.effective_port, full.url)


def test_cli_config_error_is_the_same_with_and_without_pydantic(swarm: SwarmEnv) -> None:
    env = {"SWARMBUS_BROKER_KEEPALIVE": "1"}
    direct = swarm.cli(*SEND, "--direct", "--port", "0", env=env)
    checked = swarm.cli("config", "check", "--port", "0", env=env)
    assert direct.returncode == checked.returncode == 2
    assert direct.stderr == checked.stderr
    assert direct.stderr == (
        "swarmbus: error: invalid configuration: broker.port: must be a port number from 1 to 65535, not 0 "
        "(from cli:--port); broker.keepalive: must be whole seconds from 5 to 65535, not 1 "
        "(from env:SWARMBUS_BROKER_KEEPALIVE)\n"
    )
    assert direct.stdout == ""


# -- the parser and the config file --------------------------------------------------------------------------------
def test_parser_for_one_command_is_the_same_as_in_the_full_parser() -> None:
    full = build_parser()
    choices = full._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert list(choices) == list(CORE_COMMANDS) == list(COMMANDS)
    for name in CORE_COMMANDS:
        alone = build_parser(only=name)
        only_choices = alone._subparsers._group_actions[0].choices  # type: ignore[union-attr]
        assert list(only_choices) == [name]
        assert only_choices[name].format_help() == choices[name].format_help()


def test_config_file_with_only_comments_needs_no_toml_parser(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    for text in ("", "\n\n", "# a comment\n  # indented\t comment\r\n\n"):
        path.write_text(text)
        assert read_config_file(path) == {}
    code = ("import sys; from pathlib import Path; from swarmbus.config import read_config_file; "
            f"assert read_config_file(Path({str(path)!r})) == {{}}; assert 'tomllib' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60).returncode == 0
    path.write_text("# fine\nagent_id = 'x' # trailing\n")
    assert read_config_file(path) == {"agent_id": "x"}
    path.write_text("# a control character \x01 in a comment\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        read_config_file(path)
    path.write_bytes(b"agent_id = '\xff'\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_config_file(path)


@pytest.mark.skipif(sys.platform != "linux", reason="the platformdirs shortcut is for Linux")
@pytest.mark.parametrize(
    ("xdg", "home"),
    [(None, "/home/u"), ("", "/home/u"), ("/x/conf", "/home/u"), ("/x/conf/", "/home/u"), ("rel/conf", "/home/u"),
     ("  ", "/home/u"), (None, "/"), (None, "/home/u/"), (None, "relative-home")],
)
def test_default_config_path_agrees_with_platformdirs(monkeypatch: pytest.MonkeyPatch, xdg: str | None,
                                                      home: str) -> None:
    from platformdirs import user_config_path

    from swarmbus.config import default_config_path

    if xdg is None:
        monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CONFIG_HOME", xdg)
    monkeypatch.setenv("HOME", home)
    try:
        expected = user_config_path("swarmbus", appauthor=False) / "config.toml"
    except RuntimeError:  # platformdirs cannot place it (relative HOME, no usable passwd entry)
        return
    assert default_config_path({}) == expected


def test_default_config_path_without_platformdirs_on_linux(tmp_path: Path) -> None:
    code = ("import sys; from swarmbus.config import default_config_path; p = default_config_path(); "
            "loaded = 'platformdirs' in sys.modules; from platformdirs import user_config_path; "
            "assert p == user_config_path('swarmbus', appauthor=False) / 'config.toml', p; "
            "assert loaded == (sys.platform != 'linux'), loaded")
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
