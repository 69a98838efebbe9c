"""The daemon's MQTT connection, driven by its asyncio event loop.

:class:`AsyncMqttLink` is :class:`~swarmbus.transport.link.MqttLink` (the same paho client,
callbacks, publish tickets, MQTT 5 → 3.1.1 fallback, TCP_NODELAY and backoff) with a different
driver: instead of a thread of its own, paho's external-loop API runs on the event loop. The
socket is watched with ``add_reader``; a readable socket is read in one burst (every packet
already there), then ``on_cycle`` runs (the daemon commits the burst and acknowledges it), then
what paho queued is written. Connecting (DNS, TCP, TLS) and the ``before_connect`` check run in
a worker thread so the loop never blocks on the network.

Why on the loop: a message then goes from the socket to the store, the dispatcher and a wake
child without waiting for another thread to be scheduled (on a busy machine a thread handoff
costs a few hundred microseconds), and an idle daemon has nothing but the loop to wake.
Everything that touches the link (publish, ack, stop) must run in the loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from .link import MqttLink

_DRAIN_PACKETS = 256


class AsyncMqttLink(MqttLink):
    """See the module docstring; construct it like :class:`MqttLink`, then ``start()`` it from
    the running loop and ``await aclose()`` it."""

    _loop: asyncio.AbstractEventLoop
    _task: asyncio.Task[None] | None = None
    _lost: asyncio.Event
    _sock: Any = None
    _writing = False
    _flush_pending = False
    _misc_timer: asyncio.TimerHandle | None = None

    # -- driver -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Start connecting, and keep reconnecting until :meth:`aclose` (call in the loop)."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._lost = asyncio.Event()
        self._client.on_socket_close = self._guard(self._handle_socket_close)
        self._client.on_socket_unregister_write = self._guard(self._handle_unregister_write)
        self._task = self._loop.create_task(self._supervise(), name=f"swarmbus-mqtt-{self.client_id}")

    def _new_client(self) -> mqtt.Client:
        client = super()._new_client()
        client.on_socket_close = self._guard(self._handle_socket_close)
        client.on_socket_unregister_write = self._guard(self._handle_unregister_write)
        return client

    async def _supervise(self) -> None:
        failures = 0
        while not self._no_reconnect.is_set():
            if self.before_connect is not None and not await asyncio.to_thread(self._call_before_connect):
                self._no_reconnect.set()
                break
            if self._no_reconnect.is_set():
                break
            self._fallback = False
            self._use_remembered_protocol()
            try:
                await asyncio.to_thread(self._connect_once)
            except (OSError, ssl.SSLError, ValueError, mqtt.WebsocketConnectionError) as exc:
                failures += 1
                await self._pause(self._connect_failed(exc, failures))
                continue
            self.generation += 1
            started = time.monotonic()
            self._lost.clear()
            self._attach()
            await self._lost.wait()
            self._detach()
            failures, wait = self._connection_ended(started, failures)
            if wait is None:
                break
            if wait:
                await self._pause(wait)

    async def _pause(self, seconds: float) -> None:
        """Sleep between attempts; :meth:`aclose` cuts it short."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._lost.wait()  # set by aclose() while we are disconnected
        self._lost.clear()

    def _attach(self) -> None:
        sock = self._client.socket()
        if sock is None:
            self._lost.set()
            return
        self._sock = sock
        self._loop.add_reader(sock, self._on_readable)
        self._flush()  # CONNECT was queued by connect()
        self._schedule_misc()

    def _detach(self) -> None:
        if self._misc_timer is not None:
            self._misc_timer.cancel()
            self._misc_timer = None
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(sock)
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_writer(sock)
        self._writing = False

    def _on_readable(self) -> None:
        client = self._client
        try:
            if client.loop_read() != mqtt.MQTT_ERR_SUCCESS:
                return self._drop()
            for _ in range(_DRAIN_PACKETS):  # what is already there becomes one batch
                seen = self._packets
                if client.loop_read() != mqtt.MQTT_ERR_SUCCESS:
                    return self._drop()
                if self._packets == seen:
                    break
            pending = getattr(self._sock, "pending", None)  # decrypted TLS bytes select cannot see
            if pending is not None and pending():
                self._loop.call_soon(self._on_readable)
            self._cycle()
            self._flush()
        except Exception:
            self.callback_errors += 1
            self.log.exception("MQTT read failed; reconnecting")
            self._drop()

    def _flush(self) -> None:
        """Write what paho has queued; if the socket is full, finish when it is writable."""
        self._flush_pending = False
        client = self._client
        if self._sock is None:
            return
        if client.want_write() and client.loop_write() != mqtt.MQTT_ERR_SUCCESS:
            self._drop()
            return
        if client.want_write() and not self._writing and self._sock is not None:
            self._writing = True
            self._loop.add_writer(self._sock, self._flush)

    def _schedule_misc(self) -> None:
        tick = min(5.0, self.broker.keepalive / 4)
        self._misc_timer = self._loop.call_later(tick, self._misc)

    def _misc(self) -> None:
        self._misc_timer = None
        if self._sock is None:
            return
        if self._client.loop_misc() != mqtt.MQTT_ERR_SUCCESS:
            self._drop()
            return
        self._flush()
        self._schedule_misc()

    def _drop(self) -> None:
        self._lost.set()

    # -- paho callbacks (the loop's thread) ------------------------------------------------------------
    def _handle_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._flush_pending:
            return
        self._flush_pending = True
        if threading.get_ident() == self._loop_thread:
            self._loop.call_soon(self._flush)
        else:  # connect() runs in a worker thread and queues CONNECT
            self._loop.call_soon_threadsafe(self._flush)

    def _handle_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._writing and self._sock is not None:
            self._writing = False
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_writer(self._sock)

    def _handle_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._detach()
        self._lost.set()

    # -- public API --------------------------------------------------------------------------------
    def wake(self) -> None:
        """Run ``on_cycle`` soon (call in the loop's thread)."""
        self._loop.call_soon(self._cycle)

    def thread_alive(self) -> bool:
        """True while the link's task runs (the name is :class:`MqttLink`'s)."""
        return self._task is not None and not self._task.done()

    def reconnect_soon(self) -> None:
        with contextlib.suppress(Exception):
            self._client.disconnect()

    async def aclose(self, *, final: tuple[str, bytes] | None = None, timeout: float = 5.0) -> None:
        """Stop reconnecting; publish ``final`` (retained, QoS 1) and wait for its PUBACK when
        connected; send DISCONNECT (so no Last Will); end the task."""
        self._no_reconnect.set()
        if final is not None and self.connected:
            ticket = self.publish(final[0], final[1], retain=True)
            acked: asyncio.Future[None] = self._loop.create_future()
            ticket.on_done(lambda: _resolve(acked))
            try:
                async with asyncio.timeout(timeout):
                    await acked
            except TimeoutError:
                self.log.warning("final presence was not acknowledged within %.0fs", timeout)
        if self._sock is not None:
            with contextlib.suppress(Exception):  # already closed
                self._client.disconnect()
        else:
            self._lost.set()  # cut a pause between attempts short
        if self._task is not None:
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(self._task)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            except Exception:
                self.log.exception("the MQTT link ended with an error")
        self._detach()
        self._connected.clear()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
