"""Run a private mosquitto broker for local development and tests.

swarmbus talks MQTT to an ordinary mosquitto broker. This module writes a mosquitto.conf tuned
for swarmbus and starts, stops, kills and restarts mosquitto as a child process. It uses the
standard library only and imports nothing else from swarmbus, so tests and the CLI can use it
before anything else is configured.

Typical use::

    from swarmbus.dev_broker import BrokerConfig, free_port, start_broker

    cfg = BrokerConfig(state_dir=Path("/tmp/bus"), port=free_port())
    with start_broker(cfg) as broker:
        print(broker.url)          # "mqtt://127.0.0.1:40123"
        broker.kill()              # SIGKILL, as in a crash
        broker.restart()           # same config and port; queued QoS 1 messages come back

Everything the broker writes lives in ``BrokerConfig.state_dir``:

* ``mosquitto.conf``: the generated configuration (see :func:`render_mosquitto_conf`);
* ``mosquitto.db``: the persistence database, saved every ``autosave_interval`` seconds and
  on SIGTERM;
* ``mosquitto.log``: mosquitto's own log;
* ``mosquitto.console.log``: mosquitto's stdout/stderr, which holds the errors it prints
  before its log file is open (bad config, unreadable log file).

Notes checked against mosquitto 2.0.11 (Debian 12):

* ``log_type`` takes one type per line. ``log_type error warning notice information`` on
  one line turns on ``error`` only and ignores the rest without a warning.
* When started as root, mosquitto switches to the ``mosquitto`` user, which cannot write a
  root-owned state dir. The log file and the database then fail with "Permission denied".
  So when the euid is 0 the config says ``user root``; mosquitto prints a warning and runs.
* A websockets listener ignores its bind address (it listens on ``*``) unless
  ``socket_domain`` is given too, so the generated config sets it.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "BrokerConfig",
    "MosquittoNotFound",
    "RunningBroker",
    "answers_mqtt",
    "find_mosquitto",
    "free_port",
    "port_in_use",
    "render_mosquitto_conf",
    "start_broker",
    "wait_until_listening",
    "write_mosquitto_conf",
]

CONF_NAME = "mosquitto.conf"
DB_NAME = "mosquitto.db"
LOG_NAME = "mosquitto.log"
CONSOLE_LOG_NAME = "mosquitto.console.log"

INSTALL_HINT = (
    "mosquitto is not installed (looked on PATH and in /usr/sbin, /usr/local/sbin, "
    "/opt/homebrew/sbin). Install it with `sudo apt-get install mosquitto mosquitto-clients` "
    "(Debian/Ubuntu) or `brew install mosquitto` (macOS)."
)

_FALLBACK_PATHS: tuple[str, ...] = (
    "/usr/sbin/mosquitto",
    "/usr/local/sbin/mosquitto",
    "/opt/homebrew/sbin/mosquitto",
)

# mosquitto logs this after every listener is open. Seeing it in *our* log proves that *our*
# process owns the port, and not some other process that happens to accept connections on it.
_RUNNING_RE = re.compile(rb"mosquitto version \S+ running")

_PATH_FIELDS = ("state_dir", "password_file", "acl_file", "cafile", "certfile", "keyfile")


class MosquittoNotFound(RuntimeError):
    """Raised when no mosquitto executable can be found. The message says how to install it."""

    def __init__(self, message: str = INSTALL_HINT) -> None:
        super().__init__(message)


@dataclass(frozen=True)
class BrokerConfig:
    """Settings for one private mosquitto instance.

    Paths may be given as ``str``; they are turned into absolute :class:`~pathlib.Path`
    objects. A path must not contain whitespace, because mosquitto.conf cannot quote it.

    ``allow_anonymous`` defaults to ``None``, which means "True, unless ``password_file`` is
    set". Pass ``True`` or ``False`` to override that. :attr:`anonymous_allowed` gives the
    value that ends up in the config. The field stays ``None`` on purpose: with
    ``dataclasses.replace(cfg, password_file=...)`` the default rule then applies again.

    TLS is on when any of ``cafile``/``certfile``/``keyfile`` is set. ``certfile`` and
    ``keyfile`` are then required. ``require_certificate`` (mTLS) also needs ``cafile``.

    Raises:
        ValueError: for an out-of-range port or interval, an incomplete TLS setup, a path
            with whitespace, or a multi-line ``extra_lines`` entry.
    """

    state_dir: Path
    port: int = 1883
    bind: str = "127.0.0.1"
    autosave_interval: int = 1
    persistence: bool = True
    password_file: Path | None = None
    acl_file: Path | None = None
    allow_anonymous: bool | None = None
    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    require_certificate: bool = False
    websockets_port: int | None = None
    extra_lines: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in _PATH_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            path = Path(value).expanduser().absolute()
            if any(ch.isspace() for ch in str(path)):
                raise ValueError(f"{name} must not contain whitespace: {str(path)!r}")
            object.__setattr__(self, name, path)
        object.__setattr__(self, "extra_lines", tuple(self.extra_lines))

        for name in ("port", "websockets_port"):
            port = getattr(self, name)
            if port is not None and not 1 <= port <= 65535:
                raise ValueError(f"{name} must be in 1..65535, got {port}")
        if self.websockets_port is not None and self.websockets_port == self.port:
            raise ValueError("websockets_port must differ from port")
        if self.autosave_interval < 0:
            raise ValueError(f"autosave_interval must be >= 0, got {self.autosave_interval}")
        if not self.bind or any(ch.isspace() for ch in self.bind):
            raise ValueError(f"bind must be a non-empty address without spaces: {self.bind!r}")
        if self.tls and (self.certfile is None or self.keyfile is None):
            raise ValueError("TLS needs both certfile and keyfile")
        if self.require_certificate and self.cafile is None:
            raise ValueError("require_certificate (mTLS) needs cafile to verify client certs")
        if self.require_certificate and self.websockets_port is not None:
            raise ValueError(
                "require_certificate cannot be combined with websockets_port: mosquitto "
                "websockets listeners do not support require_certificate, so that listener "
                "would accept clients without a certificate"
            )
        for line in self.extra_lines:
            if "\n" in line or "\r" in line:
                raise ValueError(f"extra_lines entries must be single lines: {line!r}")

    @property
    def tls(self) -> bool:
        """True when the listener(s) use TLS (any of cafile/certfile/keyfile is set)."""
        return any(p is not None for p in (self.cafile, self.certfile, self.keyfile))

    @property
    def anonymous_allowed(self) -> bool:
        """The ``allow_anonymous`` value written to the config (see the class docstring)."""
        if self.allow_anonymous is not None:
            return self.allow_anonymous
        return self.password_file is None

    @property
    def connect_host(self) -> str:
        """Address a local client should dial: the bind address, or loopback for a wildcard."""
        if self.bind in ("0.0.0.0", "*"):  # noqa: S104 - we map the wildcard to loopback
            return "127.0.0.1"
        if self.bind == "::":
            return "::1"
        return self.bind

    @property
    def conf_path(self) -> Path:
        """``<state_dir>/mosquitto.conf``."""
        return self.state_dir / CONF_NAME

    @property
    def db_path(self) -> Path:
        """``<state_dir>/mosquitto.db``, the persistence database."""
        return self.state_dir / DB_NAME

    @property
    def log_path(self) -> Path:
        """``<state_dir>/mosquitto.log``, mosquitto's log file."""
        return self.state_dir / LOG_NAME

    @property
    def console_log_path(self) -> Path:
        """``<state_dir>/mosquitto.console.log``, mosquitto's stdout and stderr."""
        return self.state_dir / CONSOLE_LOG_NAME


def _onoff(value: bool) -> str:
    return "true" if value else "false"


def _is_loopback(bind: str) -> bool:
    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False


def _socket_domain(bind: str) -> str | None:
    try:
        version = ipaddress.ip_address(bind).version
    except ValueError:
        return None
    return "ipv4" if version == 4 else "ipv6"


def render_mosquitto_conf(cfg: BrokerConfig, *, euid: int | None = None) -> str:
    """Return the text of mosquitto.conf (mosquitto 2.0 syntax) for ``cfg``.

    Every group of lines has a ``#`` comment above it that says why it is there.
    ``extra_lines`` go in verbatim at the very end, after all listeners, so any per-listener
    option among them applies to the last listener.

    Args:
        cfg: the broker settings.
        euid: the effective uid that mosquitto will run with. Defaults to ``os.geteuid()``.
            When it is 0 the config adds ``user root`` (see the comment in the output).

    Returns:
        The config text, ending with a newline. Paths in it are absolute.
    """
    if euid is None:
        euid = os.geteuid()
    state = cfg.state_dir
    out: list[str] = [
        "# Generated by swarmbus.dev_broker: a private development broker for swarmbus.",
        "# Regenerated on every start; edit BrokerConfig (or extra_lines), not this file.",
        "",
        "# Security options (password_file, acl_file, allow_anonymous) are global,",
        "# so every listener below enforces the same authentication.",
        "per_listener_settings false",
        "",
    ]

    if euid == 0:
        out += [
            "# Running as root. Without this line mosquitto switches to user 'mosquitto'",
            "# (or 'nobody'). That user cannot write the root-owned, mode-0700 state dir,",
            "# so the log file and the persistence db fail with 'Permission denied' (checked",
            "# on mosquitto 2.0.11). With 'user root' it only warns that it should not run",
            "# as root and keeps working. As a non-root user, 'user' does nothing, so the",
            "# line is left out.",
            "user root",
            "",
        ]

    out += [
        f"# Main MQTT listener, bound to {cfg.bind} only"
        + (" (loopback: not reachable from the network)." if _is_loopback(cfg.bind) else "."),
        f"listener {cfg.port} {cfg.bind}",
    ]
    if cfg.tls:
        out += _tls_lines(cfg, websockets=False)
    out.append("")

    out += [
        "# Anonymous clients: "
        + (
            "refused; only users in password_file may connect."
            if not cfg.anonymous_allowed
            else "allowed (a loopback-only dev broker)."
        ),
        f"allow_anonymous {_onoff(cfg.anonymous_allowed)}",
    ]
    if cfg.password_file is not None:
        out += [
            "# Users and hashed passwords (made with mosquitto_passwd).",
            f"password_file {cfg.password_file}",
        ]
    if cfg.acl_file is not None:
        out += ["# Topic access rules per user.", f"acl_file {cfg.acl_file}"]
    out.append("")

    out += [
        "# Durable sessions: subscriptions and queued QoS 1 messages for offline clients",
        "# survive a restart. The db is saved every autosave_interval seconds and on SIGTERM.",
        "# mosquitto's default interval of 1800 s would lose up to 30 minutes of queued",
        "# messages on SIGKILL or a crash. autosave_on_changes false: the interval is seconds,",
        "# not a count of changes.",
        f"persistence {_onoff(cfg.persistence)}",
        f"persistence_location {state}/",
        f"persistence_file {DB_NAME}",
        f"autosave_interval {cfg.autosave_interval}",
        "autosave_on_changes false",
        "",
        "# No per-client queue cap. The default of 1000 silently drops QoS 1 messages for a",
        "# slow or offline subscriber during a burst. 0 means no maximum (the man page calls",
        "# that 'not recommended'); for a dev broker, memory growth beats silent loss.",
        "# max_queued_bytes stays at its default, 0 (no maximum).",
        "max_queued_messages 0",
        "",
        "# Outgoing QoS 1/2 messages in flight per client. The man page says 0 means 'no",
        "# maximum', so 0 is not used. 20 is mosquitto's default and keeps the in-flight",
        "# window bounded. Messages still go out in queue order (only 1 would guarantee",
        "# order when retries happen).",
        "max_inflight_messages 20",
        "",
        "# Low latency for small agent messages: turn off Nagle's algorithm.",
        "set_tcp_nodelay true",
        "",
        "# Log to a file in the state dir. log_type takes ONE type per line in 2.0.11:",
        "# 'log_type error warning ...' on one line turns on 'error' only.",
        f"log_dest file {state / LOG_NAME}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "log_timestamp true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        "# Log client connects and disconnects (useful when checking reconnect behaviour).",
        "connection_messages true",
        "",
        "# Refresh $SYS every second, so counters such as",
        "# $SYS/broker/publish/messages/dropped are current when a test reads them.",
        "sys_interval 1",
    ]

    if cfg.websockets_port is not None:
        out += [
            "",
            f"# Extra MQTT-over-WebSockets listener, also bound to {cfg.bind}.",
            f"listener {cfg.websockets_port} {cfg.bind}",
            "protocol websockets",
        ]
        domain = _socket_domain(cfg.bind)
        if domain is not None:
            out += [
                "# Without socket_domain a 2.0.11 websockets listener ignores the bind address",
                "# and listens on all interfaces.",
                f"socket_domain {domain}",
            ]
        if cfg.tls:
            out += _tls_lines(cfg, websockets=True)

    if cfg.extra_lines:
        out += ["", "# extra_lines from BrokerConfig, verbatim.", *cfg.extra_lines]
    return "\n".join(out) + "\n"


def _tls_lines(cfg: BrokerConfig, *, websockets: bool) -> list[str]:
    lines = [
        "# TLS for this listener: the server certificate and key, plus the CA that"
        " client certificates are checked against."
    ]
    if cfg.cafile is not None:
        lines.append(f"cafile {cfg.cafile}")
    lines += [f"certfile {cfg.certfile}", f"keyfile {cfg.keyfile}"]
    if not websockets:
        lines += [
            "# mTLS: "
            + (
                "a client must present a certificate signed by cafile."
                if cfg.require_certificate
                else "client certificates are optional; passwords still apply."
            ),
            f"require_certificate {_onoff(cfg.require_certificate)}",
        ]
    return lines


def write_mosquitto_conf(cfg: BrokerConfig) -> Path:
    """Create ``cfg.state_dir`` if needed and write ``<state_dir>/mosquitto.conf``.

    A new state dir gets mode 0700 (its parents are created with default permissions). An
    existing dir keeps its mode. The config file gets mode 0600.

    Returns:
        The absolute path of the written config file.

    Raises:
        OSError: if the directory or the file cannot be created.
    """
    state = cfg.state_dir
    if not state.is_dir():
        state.mkdir(parents=True, mode=0o700, exist_ok=True)
        state.chmod(0o700)  # mkdir's mode is masked by the umask
    path = cfg.conf_path
    text = render_mosquitto_conf(cfg)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return path


def find_mosquitto() -> str | None:
    """Return the path of the mosquitto executable, or ``None`` if it is not installed.

    Looks on ``PATH`` first, then in /usr/sbin, /usr/local/sbin and /opt/homebrew/sbin, which
    are often missing from a non-root user's PATH.
    """
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in _FALLBACK_PATHS:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago.

    The OS picks it (bind to port 0). Another process could still take it before mosquitto
    binds it. :func:`start_broker` detects that case and raises instead of talking to the
    wrong process.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _bind_address(bind: str) -> tuple[int, str]:
    """The socket family and the address to bind for a ``BrokerConfig.bind`` value."""
    if bind == "*":
        return socket.AF_INET, ""
    return (socket.AF_INET6 if ":" in bind else socket.AF_INET), bind


def port_in_use(bind: str, port: int) -> bool:
    """True when another socket already holds ``port`` on ``bind`` (a listener there, or on the
    wildcard address), so mosquitto would fail with "Address already in use".

    It binds a socket the way mosquitto does (``SO_REUSEADDR``: connections left in TIME_WAIT do
    not count) and closes it at once. Any other bind error (an address not on this machine, a
    privileged port) is not "in use": mosquitto reports those itself.
    """
    family, host = _bind_address(bind)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


# MQTT 3.1.1 CONNECT, clean session, keepalive 10 s, client id "swarmbus-port-probe".
_PROBE_ID = b"swarmbus-port-probe"
_PROBE_CONNECT = (bytes([0x10, 12 + len(_PROBE_ID)]) + b"\x00\x04MQTT\x04\x02\x00\x0a"
                  + len(_PROBE_ID).to_bytes(2, "big") + _PROBE_ID)
_CONNACK = 0x20
_DISCONNECT = b"\xe0\x00"


def answers_mqtt(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when whatever listens on ``host``:``port`` answers an MQTT 3.1.1 CONNECT with a
    CONNACK (accepting or refusing the client: either way it is an MQTT broker). Plain TCP
    only: a TLS or websockets listener answers False. Never raises; waits at most about
    ``timeout`` seconds for the connect and again for the answer."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(_PROBE_CONNECT)
            first = sock.recv(1)
            if first and first[0] == _CONNACK:
                with contextlib.suppress(OSError):
                    sock.sendall(_DISCONNECT)
                return True
    except OSError:
        pass
    return False


def _tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return f"(no {path.name})"
    text = data.decode("utf-8", "replace").rstrip("\n")
    if not text:
        return f"({path.name} is empty)"
    return "\n".join(text.splitlines()[-lines:])


def log_tails(paths: tuple[Path, ...] | list[Path]) -> str:
    """The last lines of each file, each under a ``--- tail of PATH ---`` heading (for errors)."""
    return "\n".join(f"--- tail of {p} ---\n{_tail(p)}" for p in paths)


def wait_until_listening(
    host: str,
    port: int,
    timeout: float = 10.0,
    proc: subprocess.Popen[bytes] | None = None,
    *,
    log_paths: tuple[Path, ...] | list[Path] = (),
) -> None:
    """Wait until a TCP connect to ``(host, port)`` works.

    It retries every 20 ms until ``timeout`` seconds (monotonic clock) have passed.

    Args:
        host, port: where to connect.
        timeout: deadline in seconds.
        proc: if given, stop waiting and fail as soon as this process exits.
        log_paths: files whose last 40 lines go into the error message (mosquitto's log and
            console output).

    Raises:
        RuntimeError: if ``proc`` exits first or the deadline passes. The message includes
            the exit code and the log tails.
    """
    deadline = time.monotonic() + timeout
    last_error: OSError | None = None
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"mosquitto exited with code {proc.returncode} before listening on "
                f"{host}:{port}\n{log_tails(log_paths)}"
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(
                f"nothing listening on {host}:{port} after {timeout:.1f}s "
                f"(last error: {last_error})\n{log_tails(log_paths)}"
            )
        try:
            with socket.create_connection((host, port), timeout=min(1.0, remaining)):
                pass
        except OSError as exc:
            last_error = exc
        else:
            return
        time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))


# Brokers that are still running, so that an interpreter exit (e.g. a crashed test run) does
# not leave orphaned mosquitto processes holding ports.
_LIVE_PROCS: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _reap_live_procs() -> None:
    for proc in list(_LIVE_PROCS):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    _LIVE_PROCS.clear()


class RunningBroker:
    """A mosquitto child process started by :func:`start_broker`.

    Attributes:
        config: the :class:`BrokerConfig` it runs with.
        proc: the current process (a new one after :meth:`restart`).
        conf_path: ``<state_dir>/mosquitto.conf``.
        log_path: ``<state_dir>/mosquitto.log``.
        host: the address clients should connect to (``config.connect_host``).
        port: the MQTT port.
        url: ``"mqtt://host:port"``, or ``"mqtts://host:port"`` with TLS (IPv6 in brackets).

    When used as a context manager it calls :meth:`stop` on exit.
    """

    config: BrokerConfig
    proc: subprocess.Popen[bytes]
    conf_path: Path
    log_path: Path
    host: str
    port: int
    url: str

    def __init__(self, config: BrokerConfig, mosquitto: str, *, timeout: float = 10.0) -> None:
        self.config = config
        self.mosquitto = mosquitto
        self.conf_path = config.conf_path
        self.log_path = config.log_path
        self.console_log_path = config.console_log_path
        self.host = config.connect_host
        self.port = config.port
        scheme = "mqtts" if config.tls else "mqtt"
        url_host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"{scheme}://{url_host}:{self.port}"
        self._spawn(timeout)

    @property
    def state_dir(self) -> Path:
        """The broker's state directory."""
        return self.config.state_dir

    @property
    def db_path(self) -> Path:
        """``<state_dir>/mosquitto.db``."""
        return self.config.db_path

    @property
    def running(self) -> bool:
        """True while the mosquitto process is alive."""
        return self.proc.poll() is None

    def _spawn(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        try:
            log_offset = self.log_path.stat().st_size
        except FileNotFoundError:
            log_offset = 0
        with open(self.console_log_path, "ab") as console:
            self.proc = subprocess.Popen(
                [self.mosquitto, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                cwd=self.config.state_dir,
            )
        _LIVE_PROCS.add(self.proc)
        logs = (self.log_path, self.console_log_path)
        try:
            self._wait_running_marker(log_offset, deadline, logs)
            wait_until_listening(
                self.host,
                self.port,
                timeout=max(0.0, deadline - time.monotonic()),
                proc=self.proc,
                log_paths=logs,
            )
        except BaseException:
            self.kill()
            raise

    def _wait_running_marker(self, offset: int, deadline: float, logs: tuple[Path, ...]) -> None:
        while True:
            with contextlib.suppress(OSError), open(self.log_path, "rb") as fh:
                if fh.seek(0, os.SEEK_END) < offset:  # truncated/replaced: read it all
                    offset = 0
                fh.seek(offset)
                if _RUNNING_RE.search(fh.read()):
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with code {self.proc.returncode} during startup "
                    f"(port {self.port})\n{log_tails(logs)}"
                )
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"mosquitto did not report 'running' in {self.log_path} before the "
                    f"deadline\n{log_tails(logs)}"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 10) -> int:
        """Send SIGTERM and wait up to ``timeout`` seconds for mosquitto to exit.

        On SIGTERM mosquitto saves its persistence db before it exits. If it is still running
        after ``timeout``, it gets SIGKILL.

        Returns:
            The exit code (0 for a clean shutdown; negative signal number if killed). If it
            had already exited, the code it exited with.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        _LIVE_PROCS.discard(self.proc)
        return self.proc.returncode

    def kill(self) -> None:
        """Send SIGKILL (a simulated crash: nothing is saved) and wait for the exit."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        _LIVE_PROCS.discard(self.proc)

    def restart(self, timeout: float = 10.0) -> None:
        """Start mosquitto again with the same config file and port.

        If it is still running, it is stopped first with :meth:`stop` (SIGTERM). Returns once
        the new process is accepting connections.

        Raises:
            RuntimeError: if the new process exits or is not listening within ``timeout``.
        """
        if self.proc.poll() is None:
            self.stop()
        self._spawn(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited({self.proc.returncode})"
        return f"<RunningBroker {self.url} pid={self.proc.pid} {state} dir={self.state_dir}>"


def start_broker(
    cfg: BrokerConfig, mosquitto: str | None = None, *, timeout: float = 10.0
) -> RunningBroker:
    """Write the config for ``cfg`` and start mosquitto. Return once it accepts connections.

    Args:
        cfg: the broker settings. ``cfg.state_dir`` is created if it is missing.
        mosquitto: path of the mosquitto executable. Defaults to :func:`find_mosquitto`.
        timeout: seconds to wait for the broker to start listening.

    Returns:
        A :class:`RunningBroker`. Stop it with ``stop()`` or use it in a ``with`` block.

    Raises:
        MosquittoNotFound: if no mosquitto executable is found.
        RuntimeError: if mosquitto exits during startup (bad config, port in use...) or is
            not listening within ``timeout``. The message includes the log tails. The
            process is killed first.
    """
    exe = mosquitto or find_mosquitto()
    if exe is None:
        raise MosquittoNotFound()
    write_mosquitto_conf(cfg)
    return RunningBroker(cfg, exe, timeout=timeout)
