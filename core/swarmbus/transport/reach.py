"""What a person is told while, and when, the broker cannot be reached.

- :func:`refused`: the error for a TCP connection refused (``ECONNREFUSED``). Nothing listens
  there, and waiting will not change that in the seconds a command waits, so one-shot commands
  raise it at once instead of retrying until ``broker.connect_timeout``.
- :class:`WaitNotice`: when waiting *is* right (DNS, a connect that times out, a slow CONNACK),
  one line on stderr after :data:`NOTICE_DELAY` seconds, ``swarmbus: waiting for the broker at
  HOST:PORT (giving up after 5s)...``, so a command is never silent for seconds. The CLI turns
  it on with :func:`enable_notices` for commands a person waits on; the daemon, the MCP server
  and library users never print it.

Standard library only (``swarmbus send --direct`` uses it). Messages name the host and port,
never credentials.
"""

from __future__ import annotations

import sys
import threading
import time

from swarmbus.errors import BrokerRefused

TYPE_CHECKING = False  # not from typing: see swarmbus.config
if TYPE_CHECKING:
    from typing import TextIO

NOTICE_DELAY = 1.0
"""Seconds of waiting for the broker before :class:`WaitNotice` says what it waits for."""

_enabled = False
_stream: TextIO | None = None  # None: sys.stderr as it is when the notice is written


def enable_notices(stream: TextIO | None = None) -> None:
    """Make every later :class:`WaitNotice` write to ``stream`` (default ``sys.stderr``). Called
    by the CLI for one-shot commands; idempotent."""
    global _enabled, _stream
    _enabled, _stream = True, stream


def host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets (``[::1]:1883``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def refused(url: str, host: str, port: int) -> BrokerRefused:
    """The :class:`~swarmbus.errors.BrokerUnreachable` (exit 2) for a refused TCP connection to
    ``host``:``port`` (``url`` is the broker URL without credentials)."""
    where = host_port(host, port)
    local = host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")
    start = f"start one there (`swarmbus broker --port {port}`)" if local else f"check that the broker on {host} runs"
    return BrokerRefused(
        f"broker unreachable ({url}): nothing is listening on {where} (connection refused)",
        hint=f"{start}, or point --broker at one that runs; `swarmbus config show` says where the broker "
             "setting comes from",
    )


class WaitNotice:
    """Says once, after ``delay`` seconds, that a command is waiting for the broker.

    Either poll it (:meth:`poll`, from a loop that wakes often) or :meth:`arm` a timer for a call
    that blocks (a connect that may take seconds); :meth:`cancel` when the wait is over. Does
    nothing unless :func:`enable_notices` was called.

    :param host, port: where we connect (the notice names them; never credentials).
    :param timeout: seconds after which the command gives up (said in the notice).
    :param delay: seconds of waiting before the notice is due.
    """

    def __init__(self, host: str, port: int, timeout: float, *, delay: float = NOTICE_DELAY) -> None:
        self.text = (f"swarmbus: waiting for the broker at {host_port(host, port)} "
                     f"(giving up after {timeout:g}s)...\n")
        self.started = time.monotonic()
        self.delay = delay
        self.shown = False
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def poll(self) -> None:
        """Write the notice if it is due and not written yet."""
        if not self.shown and _enabled and time.monotonic() - self.started >= self.delay:
            self._show()

    def arm(self) -> None:
        """Write the notice from a timer thread when it becomes due (for a call that blocks)."""
        if self.shown or not _enabled or self._timer is not None:
            return
        due = max(0.0, self.delay - (time.monotonic() - self.started))
        self._timer = threading.Timer(due, self._show)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        """The wait is over: no notice after this."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        with self._lock:
            self.shown = True

    def _show(self) -> None:
        with self._lock:  # held while writing: after cancel() returns, nothing more is written
            if self.shown or not _enabled:
                return
            self.shown = True
            stream = _stream or sys.stderr
            try:
                stream.write(self.text)
                stream.flush()
            except (OSError, ValueError):  # a closed stderr: the notice is a courtesy
                pass
