"""Helpers for tests that act as MQTT peers of swarmbus daemons on a private broker: a raw paho
client, envelope builders, and readers for what a daemon stored and archived."""

from __future__ import annotations

import json
import shlex
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from conftest import SwarmEnv, wait_for
from swarmbus.envelope import new_envelope
from swarmbus.store import Store


class RawClient:
    """A plain paho-mqtt 2.x MQTT 5 client on the test broker; records every message it gets and
    the reason code of every PUBACK. With ``username`` it authenticates; with ``ca`` it uses TLS
    (verifying the broker against that CA, on ``host``, default ``localhost`` then). A refused
    CONNECT fails the test, unless ``check`` is False (then :attr:`ok` is False)."""

    def __init__(self, port: int, *topics: str, username: str | None = None, password: str | None = None,
                 ca: Path | None = None, host: str | None = None, check: bool = True) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.pubacks: dict[int, int] = {}  # mid -> PUBACK reason code (0 success, 135 not authorized)
        self.subacks: set[int] = set()
        self.connack: Any = None
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._topics = topics
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"test-raw-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca))
        host = host or ("localhost" if ca is not None else "127.0.0.1")
        self.client.connect(host, port)
        self.client.loop_start()
        if not self._connected.wait(10) or (check and self.connack.is_failure):
            self.close()
            pytest.fail(f"raw client could not connect to {host}:{port} ({self.connack})")
        if topics and not self._subscribed.wait(10):
            self.close()
            pytest.fail(f"raw client could not subscribe to {topics}")

    @property
    def ok(self) -> bool:
        """Whether the broker accepted the CONNECT."""
        return not self.connack.is_failure

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        with self._lock:
            self.subacks.add(mid)
        self._subscribed.set()

    def subscribe(self, *topics: str) -> None:
        """Subscribe at QoS 1 and wait for the SUBACK."""
        _, mid = self.client.subscribe([(t, 1) for t in topics])
        wait_for(lambda: mid in self.subacks, 10, what=f"the SUBACK for {topics}")

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self._lock:
            self.pubacks[mid] = int(reason.value)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connack = reason
        if reason.is_failure:
            self._connected.set()
            return
        if self._topics:
            client.subscribe([(t, 1) for t in self._topics])
        self._connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(msg)

    def publish_reason(self, topic: str, payload: bytes = b"x", *, retain: bool = False) -> int:
        """Publish at QoS 1 and return the PUBACK's reason code (0 accepted, 135 refused by an ACL)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        wait_for(lambda: self._acked(info.mid) is not None, 10, what=f"the PUBACK for {topic}")
        return int(self._acked(info.mid))  # type: ignore[arg-type]

    def _acked(self, mid: int) -> int | None:
        with self._lock:
            return self.pubacks.get(mid)

    def received(self, topic: str | None = None) -> list[mqtt.MQTTMessage]:
        with self._lock:
            return [m for m in self.messages if topic is None or m.topic == topic]

    def publish(self, topic: str, payload: bytes, *, wait: bool = True) -> mqtt.MQTTMessageInfo:
        info = self.client.publish(topic, payload, qos=1)
        if wait:
            info.wait_for_publish(5)
            assert info.is_published(), f"no PUBACK for a publish on {topic}"
        return info

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def raw_client(port: int, *topics: str, **auth: Any) -> Iterator[RawClient]:
    """A :class:`RawClient` (``auth``: its keyword arguments), closed afterwards."""
    client = RawClient(port, *topics, **auth)
    try:
        yield client
    finally:
        client.close()


def presence(port: int, agent_id: str, timeout: float = 5.0) -> tuple[bool, bytes, dict[str, Any]]:
    """The first record a fresh subscriber to ``agents/<id>/presence`` gets: ``(retain flag,
    raw payload, decoded)``. That is the retained record, unless none was retained yet when
    it subscribed and a live one (a heartbeat, retain flag False) came first."""
    topic = f"agents/{agent_id}/presence"
    with raw_client(port, topic) as sub:
        msg = wait_for(lambda: next(iter(sub.received(topic)), None), timeout, what=f"a presence record on {topic}")
    return bool(msg.retain), bytes(msg.payload), json.loads(msg.payload)


def wire(to: str, *, sender: str = "zed", body: str = "hello", subject: str = "test", **fields: Any) -> dict[str, Any]:
    """A valid wire object (keys in wire order) from ``sender`` to ``to``."""
    return new_envelope(sender, to, subject, body, **fields).to_dict()


def encode(obj: Any) -> bytes:
    return json.dumps(obj).encode("utf-8")


def inbox_file(swarm: SwarmEnv, agent_id: str) -> Path:
    return swarm.state_dir / "agents" / agent_id / "inbox.md"


def inbox_text(swarm: SwarmEnv, agent_id: str) -> str:
    path = inbox_file(swarm, agent_id)
    return path.read_text(encoding="utf-8") if path.exists() else ""


def delivery(store: Store, message_id: str, handler: str) -> Any:
    """The delivery row of ``handler`` for the stored message ``message_id`` (or None)."""
    seq = seq_of(store, message_id)
    if seq is None:
        return None
    return next((d for d in store.deliveries(seq) if d.handler == handler), None)


def seq_of(store: Store, message_id: str) -> int | None:
    rows = store._query("SELECT seq FROM messages WHERE id = ?", (message_id,))
    return int(rows[0][0]) if rows else None


def py_command(code: str, *args: str) -> str:
    """An ``--invoke`` value running ``code`` with this interpreter (split like a shell)."""
    return shlex.join([sys.executable, "-c", code, *args])


# a slow wake command: records its pid in <argv[1]>/<message id>.pid, reads the body, sleeps 30 s
PID_CHILD = ("import os,sys,time; d=sys.argv[1]; p=os.path.join(d, os.environ['SWARMBUS_ID']);"
             " open(p+'.tmp','w').write(str(os.getpid())); os.rename(p+'.tmp', p+'.pid');"
             " sys.stdin.read(); time.sleep(30)")


