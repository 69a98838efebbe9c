"""Running the dashboard: bind the socket, connect to the broker, serve with uvicorn.

:func:`serve` binds first (so a port in use fails before anything else), connects the read-only
broker client (so an unreachable broker fails like every other command), prints the address
once, and serves until SIGINT (then ``KeyboardInterrupt``: the CLI exits 130) or SIGTERM (a
clean return: exit 0). Open event streams are ended as soon as the signal comes, so stopping
never waits for the browsers.
"""

from __future__ import annotations

import ipaddress
import secrets
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn

from swarmbus.dashboard.app import LOOPBACK_HOSTS, create_app
from swarmbus.dashboard.collector import Collector
from swarmbus.dashboard.state import DashboardState
from swarmbus.errors import SwarmbusError, UsageError
from swarmbus.settings import Settings

TOKEN_BYTES = 24
"""Random bytes in a generated token (32 URL-safe characters)."""
MIN_TOKEN_CHARS = 16


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def bind_socket(address: str, port: int) -> socket.socket:
    """A listening TCP socket on ``address`` (an IPv4 or IPv6 address, or a host name) and
    ``port`` (0: a free one). :raises UsageError: it cannot be bound (in use, not an address here)."""
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port}: use 0 (any free port) to 65535")
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"--bind {address}: not an address of this machine ({exc.strerror})") from None
    family, kind, proto, _name, where = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        taken = "in use by another program" if exc.errno in (98, 48) else exc.strerror
        raise UsageError(f"cannot listen on {address} port {port}: {taken}",
                         hint="pick another --port, or --port 0 for any free one") from None
    return sock


def is_loopback(sock: socket.socket) -> bool:
    """Whether ``sock`` listens only on a loopback address."""
    try:
        return ipaddress.ip_address(sock.getsockname()[0].split("%")[0]).is_loopback
    except ValueError:
        return False


def url_of(sock: socket.socket, token: str | None) -> str:
    host, port = sock.getsockname()[:2]
    if ipaddress.ip_address(host.split("%")[0]).is_unspecified:
        host = socket.gethostname()  # listening everywhere: this machine's name
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/" + (f"?token={token}" if token else "")


class _Server(uvicorn.Server):
    """uvicorn's server, ending every open event stream as soon as a signal asks it to stop."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._on_exit()


def serve(settings: Settings, *, bind: str = "127.0.0.1", port: int = 0, agents: list[str] | None = None,
          token: str | None = None, out: Any = None) -> None:
    """Serve the dashboard until stopped. ``token``: require it (None: generate one when the
    socket is not loopback-only, else require none). Prints the address on ``out`` (stdout) once
    it listens, with the token when it generated one (a token given is never printed).

    :raises UsageError: the address cannot be bound.
    :raises BrokerUnreachable: the broker cannot be reached.
    :raises SwarmbusError: the server could not start.
    """
    out = out or sys.stdout
    sock = bind_socket(bind, port)
    try:
        loopback = is_loopback(sock)
        generated = token is None and not loopback
        if generated:
            token = new_token()
        state = DashboardState()
        collector = Collector(settings, state, agents)
        collector.connect()
        actual = sock.getsockname()[1]
        app = create_app(collector, token=token, cookie=f"swarmbus_dashboard_{actual}",
                         hosts=None if token else LOOPBACK_HOSTS | {bind.lower()})
        config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False, lifespan="on",
                                timeout_graceful_shutdown=2, server_header=False, proxy_headers=False)

        def end_streams() -> None:  # in the signal handler: only schedule the work on the loop (no lock)
            if collector.loop is not None:
                collector.loop.call_soon_threadsafe(state.close_all)

        server = _Server(config, end_streams)
        print(f"swarmbus dashboard: {url_of(sock, token if generated else None)}", file=out)
        stores = ", ".join(agents) if agents else f"every agent's under {collector.state_dir / 'agents'}"
        print(f"  broker {collector.watcher.url if collector.watcher else '?'}; stores read: {stores}; "
              "Ctrl-C stops it", file=out)
        if generated:
            print("  the token is printed only this once; anyone with it can watch this swarm", file=out)
        elif token is not None:
            print("  open it with ?token=<the token in --token-file> once; a cookie keeps it", file=out)
        out.flush()
        previous = signal.signal(signal.SIGTERM, lambda *_: None)  # uvicorn raises it again on the way out
        try:
            server.run(sockets=[sock])
        finally:
            signal.signal(signal.SIGTERM, previous)
        if not server.started:
            if collector.watcher is not None:
                collector.watcher.stop()
            raise SwarmbusError("the dashboard could not start (see the log above)")
    finally:
        sock.close()
