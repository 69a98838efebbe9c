"""Run a private RabbitMQ node with the MQTT plugin, for local development and tests.

The node is isolated from any RabbitMQ the machine runs (Debian's package starts one as a
service, on 5672 with epmd on 4369): it gets a unique node name (``swarmbus-<random>@localhost``),
its own epmd on a free port (started here, stopped here), free ports for AMQP, Erlang
distribution and MQTT, its own config, enabled-plugins file, Erlang cookie (a ``HOME`` of its
own), database and logs, all under one state dir. The system's ``/etc/rabbitmq`` files are not
read, and ``rabbitmqctl`` is only ever run against the private node name and epmd port. Standard
library only, like :mod:`swarmbus.dev_broker`.

Typical use::

    from swarmbus.dev_rabbit import RabbitConfig, start_rabbit

    with start_rabbit(RabbitConfig(state_dir=Path("/tmp/rabbit"))) as rabbit:
        print(rabbit.url)          # "mqtt://127.0.0.1:40123"
        rabbit.rabbitmqctl("list_queues")

Files under ``state_dir``: ``rabbitmq.conf``, ``enabled_plugins`` (``[rabbitmq_mqtt].``),
``rabbitmq-env.conf`` (empty: it replaces ``/etc/rabbitmq/rabbitmq-env.conf``), ``home/``
(``.erlang.cookie``), ``mnesia/`` (the database), ``log/`` (``<node>.log``), ``console.log``
(the server script's output) and ``epmd.log``.

Checked against RabbitMQ 3.10.8 on Erlang/OTP 25 (Debian 12):

* ``/usr/sbin/rabbitmq-server`` is a wrapper that, run as root, switches to the ``rabbitmq``
  user (``su rabbitmq``), who cannot write a root-owned state dir, and runs everything from
  ``/var/lib/rabbitmq``. :func:`find_rabbitmq` returns the real script in
  ``/usr/lib/rabbitmq/bin`` instead, which runs as the calling user (root included).
* Without ``inet_dist_use_interface`` the Erlang distribution port listens on all interfaces;
  ``ERL_FLAGS`` here binds it (and that of ``rabbitmqctl``) to loopback.
* The plugin's defaults (its ``rabbitmq_mqtt.app``): ``allow_anonymous`` true with user
  ``guest``, ``subscription_ttl`` 86400000 ms (the queue of a persistent session unused for 24 h
  is deleted, with its messages), retained messages in a node-local DETS store, ``prefetch`` 10.
  The config written here keeps anonymous logins and sets ``subscription_ttl = infinity``.
* An MQTT 5 CONNECT is answered by closing the socket, with no CONNACK.
* Booting takes several seconds (about 11 s on two CPUs); ``rabbitmqctl stop`` halts the node
  in a few.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from swarmbus.dev_broker import answers_mqtt, free_port, log_tails

__all__ = [
    "RabbitConfig",
    "RabbitNotFound",
    "RunningRabbit",
    "find_epmd",
    "find_rabbitmq",
    "render_rabbitmq_conf",
    "start_rabbit",
]

CONF_NAME = "rabbitmq.conf"
PLUGINS_NAME = "enabled_plugins"
ENV_CONF_NAME = "rabbitmq-env.conf"
CONSOLE_LOG_NAME = "console.log"
EPMD_LOG_NAME = "epmd.log"

INSTALL_HINT = (
    "RabbitMQ is not installed (looked in /usr/lib/rabbitmq/bin, on PATH and in /usr/sbin, "
    "/usr/local/sbin, /opt/homebrew/sbin), or epmd (Erlang) is missing. Install it with "
    "`sudo apt-get install rabbitmq-server` (Debian/Ubuntu; stop the service it starts if you "
    "do not want it) or `brew install rabbitmq` (macOS)."
)

# The real server script first: Debian's /usr/sbin/rabbitmq-server is a wrapper that `su`s to
# the rabbitmq user when run as root.
_SERVER_PATHS: tuple[str, ...] = (
    "/usr/lib/rabbitmq/bin/rabbitmq-server",
    "/usr/local/sbin/rabbitmq-server",
    "/opt/homebrew/sbin/rabbitmq-server",
    "/usr/local/opt/rabbitmq/sbin/rabbitmq-server",
)
_WRAPPER = "rabbitmq-script-wrapper"
_NODE_NAME_RE = re.compile(r"[A-Za-z0-9_-]+@[A-Za-z0-9_.-]+")


class RabbitNotFound(RuntimeError):
    """Raised when no usable rabbitmq-server script (or no epmd) is found; the message says how
    to install it."""

    def __init__(self, message: str = INSTALL_HINT) -> None:
        super().__init__(message)


@dataclass(frozen=True)
class RabbitConfig:
    """Settings for one private RabbitMQ node.

    Attributes:
        state_dir: everything the node writes (see the module docstring); created on start.
        mqtt_port, amqp_port, dist_port, epmd_port: TCP ports on loopback; None: a free port
            picked at start (:attr:`RunningRabbit.mqtt_port` etc. say which).
        node_name: the Erlang node name; None: ``swarmbus-<12 hex digits>@localhost``.
        allow_anonymous: MQTT clients without credentials log in as ``guest`` (the default
            user, which RabbitMQ lets in from loopback only).
        subscription_ttl_ms: delete the queue of a persistent MQTT session unused this long;
            None: never (the plugin's own default is 24 h).
        extra_lines: lines appended verbatim to ``rabbitmq.conf`` (new-style ``key = value``).

    Raises:
        ValueError: a port out of range, two ports alike, a bad node name, a state dir with
            whitespace, or a multi-line ``extra_lines`` entry.
    """

    state_dir: Path
    mqtt_port: int | None = None
    amqp_port: int | None = None
    dist_port: int | None = None
    epmd_port: int | None = None
    node_name: str | None = None
    allow_anonymous: bool = True
    subscription_ttl_ms: int | None = None
    extra_lines: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        state = Path(self.state_dir).expanduser().absolute()
        if any(ch.isspace() for ch in str(state)):
            raise ValueError(f"state_dir must not contain whitespace: {str(state)!r}")
        object.__setattr__(self, "state_dir", state)
        object.__setattr__(self, "extra_lines", tuple(self.extra_lines))
        ports = [p for p in (self.mqtt_port, self.amqp_port, self.dist_port, self.epmd_port) if p is not None]
        for port in ports:
            if not 1 <= port <= 65535:
                raise ValueError(f"ports must be in 1..65535, got {port}")
        if len(set(ports)) != len(ports):
            raise ValueError(f"the ports must differ: {ports}")
        if self.node_name is not None and not _NODE_NAME_RE.fullmatch(self.node_name):
            raise ValueError(f"node_name must look like name@host: {self.node_name!r}")
        if self.subscription_ttl_ms is not None and self.subscription_ttl_ms <= 0:
            raise ValueError(f"subscription_ttl_ms must be > 0, got {self.subscription_ttl_ms}")
        for line in self.extra_lines:
            if "\n" in line or "\r" in line:
                raise ValueError(f"extra_lines entries must be single lines: {line!r}")


def render_rabbitmq_conf(cfg: RabbitConfig, *, mqtt_port: int, amqp_port: int) -> str:
    """The text of ``rabbitmq.conf`` (the new-style format of RabbitMQ 3.7+) for ``cfg`` with
    the given ports, each group of lines under a ``#`` comment; ends with a newline."""
    ttl = "infinity" if cfg.subscription_ttl_ms is None else str(cfg.subscription_ttl_ms)
    out = [
        "# Generated by swarmbus.dev_rabbit: a private RabbitMQ node for swarmbus development.",
        "# Regenerated on every start; edit RabbitConfig (or extra_lines), not this file.",
        "",
        "# AMQP 0-9-1, on loopback only (swarmbus does not use it; RabbitMQ always listens).",
        f"listeners.tcp.default = 127.0.0.1:{amqp_port}",
        "",
        "# The MQTT plugin's listener (MQTT 3.1.1 in RabbitMQ before 3.13), loopback only.",
        f"mqtt.listeners.tcp.default = 127.0.0.1:{mqtt_port}",
        "",
        "# Anonymous MQTT clients log in as guest (allowed from loopback only)"
        + (": the dev default." if cfg.allow_anonymous else ": refused here."),
        f"mqtt.allow_anonymous = {'true' if cfg.allow_anonymous else 'false'}",
        "mqtt.default_user = guest",
        "mqtt.default_pass = guest",
        "",
        "# The plugin deletes the queue of a persistent session unused for subscription_ttl",
        "# (default 24 h), with the messages queued in it: an agent offline for a day would lose",
        "# them. 'infinity' keeps it.",
        f"mqtt.subscription_ttl = {ttl}",
        "",
        "# Logs go to <state>/log/<node>.log (RABBITMQ_LOG_BASE); console output is separate.",
        "log.file.level = info",
        "log.console = false",
    ]
    if cfg.extra_lines:
        out += ["", "# extra_lines from RabbitConfig, verbatim.", *cfg.extra_lines]
    return "\n".join(out) + "\n"


def _resolve(path: str) -> str:
    return os.path.realpath(path)


def find_rabbitmq() -> str | None:
    """The path of a rabbitmq-server script that runs as the calling user, or None.

    Debian's ``/usr/lib/rabbitmq/bin/rabbitmq-server`` first (the ``/usr/sbin`` one is a wrapper
    that switches to the ``rabbitmq`` user when run as root, so it is skipped), then
    ``rabbitmq-server`` on PATH unless it is that wrapper, then Homebrew's locations."""
    candidates = [_SERVER_PATHS[0]]
    on_path = shutil.which("rabbitmq-server")
    if on_path:
        candidates.append(on_path)
    candidates += _SERVER_PATHS[1:]
    for candidate in candidates:
        if (os.path.isfile(candidate) and os.access(candidate, os.X_OK)
                and os.path.basename(_resolve(candidate)) != _WRAPPER):
            return candidate
    return None


def find_epmd() -> str | None:
    """The path of Erlang's epmd, or None: on PATH, else in an ``erts-*/bin`` of /usr/lib/erlang
    or Homebrew's erlang."""
    found = shutil.which("epmd")
    if found:
        return found
    for pattern in ("/usr/lib/erlang/erts-*/bin/epmd", "/usr/local/lib/erlang/erts-*/bin/epmd",
                    "/opt/homebrew/lib/erlang/erts-*/bin/epmd", "/opt/homebrew/opt/erlang/lib/erlang/erts-*/bin/epmd"):
        for candidate in sorted(glob.glob(pattern), reverse=True):
            if os.access(candidate, os.X_OK):
                return candidate
    return None



def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``, from /proc; on a system without
    /proc, ``[pgid]`` while signal 0 reaches the group."""
    if not os.path.isdir("/proc/self"):
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        # after the ")" that ends the command name: state, ppid, pgrp
        if fields[0] not in (b"Z", b"X") and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


# Nodes and epmds still running, so that an interpreter exit (a crashed test run) leaves no
# beam or epmd processes holding ports.
_LIVE: set[RunningRabbit] = set()


@atexit.register
def _reap_live() -> None:
    for rabbit in list(_LIVE):
        rabbit.kill()
        rabbit._stop_epmd()
    _LIVE.clear()


class RunningRabbit:
    """A private RabbitMQ node started by :func:`start_rabbit`, with its own epmd.

    Attributes:
        config: the :class:`RabbitConfig`.
        node_name: the Erlang node name (``swarmbus-<hex>@localhost``).
        host: ``127.0.0.1``; ``mqtt_port``, ``amqp_port``, ``dist_port``, ``epmd_port``: its ports.
        url: ``"mqtt://127.0.0.1:<mqtt_port>"``; ``hosts``: ``["127.0.0.1:<mqtt_port>"]``.
        proc: the server script's process (it leads a session of its own: the Erlang VM and its
            helpers are in its process group); ``epmd``: the epmd process.
        env: the environment the node and ``rabbitmqctl`` run with.

    Used as a context manager it calls :meth:`stop` on exit.
    """

    host = "127.0.0.1"

    def __init__(self, config: RabbitConfig, server: str, epmd: str, *, timeout: float) -> None:
        self.config = config
        self.server = server
        self.epmd_path = epmd
        self.rabbitmqctl_path = str(Path(server).with_name("rabbitmqctl"))
        self.node_name = config.node_name or f"swarmbus-{secrets.token_hex(6)}@localhost"
        self.mqtt_port = config.mqtt_port or free_port()
        self.amqp_port = config.amqp_port or free_port()
        self.dist_port = config.dist_port or free_port()
        self.epmd_port = config.epmd_port or free_port()
        self.url = f"mqtt://{self.host}:{self.mqtt_port}"
        self.hosts = [f"{self.host}:{self.mqtt_port}"]
        self.epmd: subprocess.Popen[bytes] | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._write_files()
        self.env = self._environment()
        _LIVE.add(self)
        try:
            self._start_epmd(timeout)
            self._spawn(timeout)
        except BaseException:
            self.kill()
            self._stop_epmd()
            _LIVE.discard(self)
            raise

    # -- files and environment --------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.config.state_dir

    @property
    def log_path(self) -> Path:
        """``<state>/log/<node>.log``: the node's log."""
        return self.state_dir / "log" / f"{self.node_name}.log"

    @property
    def console_log_path(self) -> Path:
        """``<state>/console.log``: the server script's stdout and stderr."""
        return self.state_dir / CONSOLE_LOG_NAME

    def _write_files(self) -> None:
        state = self.state_dir
        for directory in (state, state / "home", state / "mnesia", state / "log"):
            if not directory.is_dir():
                directory.mkdir(parents=True, mode=0o700, exist_ok=True)
                directory.chmod(0o700)
        (state / CONF_NAME).write_text(render_rabbitmq_conf(self.config, mqtt_port=self.mqtt_port,
                                                            amqp_port=self.amqp_port))
        (state / PLUGINS_NAME).write_text("[rabbitmq_mqtt].\n")
        (state / ENV_CONF_NAME).write_text("# empty: replaces /etc/rabbitmq/rabbitmq-env.conf for this node\n")
        cookie = state / "home" / ".erlang.cookie"
        if not cookie.exists():
            fd = os.open(cookie, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(16).upper())

    def _environment(self) -> dict[str, str]:
        state = self.state_dir
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
        env.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        env.update(
            HOME=str(state / "home"),
            RABBITMQ_NODENAME=self.node_name,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}",
            RABBITMQ_MNESIA_BASE=str(state / "mnesia"),
            RABBITMQ_LOG_BASE=str(state / "log"),
            RABBITMQ_CONFIG_FILE=str(state / CONF_NAME),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(state / "advanced.config"),  # absent: none
            RABBITMQ_ENABLED_PLUGINS_FILE=str(state / PLUGINS_NAME),
            RABBITMQ_CONF_ENV_FILE=str(state / ENV_CONF_NAME),
            RABBITMQ_PID_FILE=str(state / "rabbit.pid"),
        )
        return env

    # -- processes --------------------------------------------------------------------------------
    def _start_epmd(self, timeout: float) -> None:
        with open(self.state_dir / EPMD_LOG_NAME, "ab") as log:
            self.epmd = subprocess.Popen(
                [self.epmd_path, "-address", "127.0.0.1", "-port", str(self.epmd_port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                start_new_session=True,
            )
        deadline = time.monotonic() + min(timeout, 10.0)
        while True:
            if self.epmd.poll() is not None:
                raise RuntimeError(f"epmd exited with code {self.epmd.returncode} (port {self.epmd_port})\n"
                                   + log_tails([self.state_dir / EPMD_LOG_NAME]))
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.epmd_port), timeout=0.5):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"epmd is not listening on 127.0.0.1:{self.epmd_port}")
            time.sleep(0.02)

    def _stop_epmd(self) -> None:
        if self.epmd is not None and self.epmd.poll() is None:
            self.epmd.terminate()
            try:
                self.epmd.wait(5)
            except subprocess.TimeoutExpired:
                self.epmd.kill()
                self.epmd.wait()

    def _logs(self) -> str:
        return log_tails((self.log_path, self.console_log_path))

    def _spawn(self, timeout: float) -> None:
        try:
            offset = self.log_path.stat().st_size
        except FileNotFoundError:
            offset = 0
        with open(self.console_log_path, "ab") as console:
            self.proc = subprocess.Popen(
                [self.server], stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                env=self.env, cwd=self.state_dir, start_new_session=True,
            )
        # the plugin logs this once its listener is open: in *our* log, it proves that our node
        # holds the port, not another process that accepts connections there
        marker = re.compile(rb"started MQTT TCP listener on [^\n]*:" + str(self.mqtt_port).encode() + rb"\b")
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited with code {self.proc.returncode} during startup "
                                   f"(node {self.node_name})\n{self._logs()}")
            listening = False
            with contextlib.suppress(OSError), open(self.log_path, "rb") as fh:
                fh.seek(offset)
                listening = bool(marker.search(fh.read()))
            if listening and answers_mqtt(self.host, self.mqtt_port, timeout=2.0):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"RabbitMQ node {self.node_name} did not answer MQTT on {self.hosts[0]} within "
                                   f"{timeout:g}s\n{self._logs()}")
            time.sleep(0.1)

    @property
    def running(self) -> bool:
        """True while the server script (and so the node) runs."""
        return self.proc is not None and self.proc.poll() is None

    def processes(self) -> list[int]:
        """The live processes of the node: the server script's process group (the script, the
        Erlang VM and its helpers; not epmd). Empty once it stopped."""
        return _group_members(self.proc.pid) if self.proc is not None else []

    def rabbitmqctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``rabbitmqctl -n NODE ARGS`` against this node only (its epmd port and cookie);
        output captured as text. Raises ``subprocess.TimeoutExpired`` after ``timeout`` s."""
        return subprocess.run([self.rabbitmqctl_path, "-n", self.node_name, *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, cwd=self.state_dir)

    def _wait_group_gone(self, timeout: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None and not _group_members(self.proc.pid):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the node's whole process group (the script, the Erlang VM and its helpers; a
        crash: nothing is flushed) and wait for them. The epmd keeps running."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._wait_group_gone(5.0)

    def stop(self, timeout: float = 30.0) -> int | None:
        """Stop the node cleanly, then its epmd, leaving no process behind.

        ``rabbitmqctl stop`` first (the node flushes and halts); if that fails or the node is
        still up after ``timeout`` seconds, SIGTERM the script (it stops the VM the same way),
        then SIGKILL the process group. Returns the script's exit code (None: never started)."""
        self._stop_node(timeout)
        self._stop_epmd()
        _LIVE.discard(self)
        return self.proc.returncode if self.proc is not None else None

    def _stop_node(self, timeout: float) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        deadline = time.monotonic() + timeout
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            self.rabbitmqctl("stop", timeout=max(1.0, timeout / 2))
        if not self._wait_group_gone(max(0.0, deadline - time.monotonic())):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.proc.pid, signal.SIGTERM)
            if not self._wait_group_gone(10.0):
                self.kill()

    def restart(self, timeout: float = 90.0) -> None:
        """Start the node again with the same name, ports and files (stopping it first, but not
        its epmd); return once it answers MQTT.

        Raises:
            RuntimeError: it exited or did not answer within ``timeout`` seconds (then it is killed).
        """
        self._stop_node(30.0)
        _LIVE.add(self)
        if self.epmd is None or self.epmd.poll() is not None:
            self._start_epmd(timeout)
        try:
            self._spawn(timeout)
        except BaseException:
            self.kill()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<RunningRabbit {self.node_name} {self.url} {'running' if self.running else 'stopped'}>"


def start_rabbit(cfg: RabbitConfig, server: str | None = None, *, timeout: float = 90.0) -> RunningRabbit:
    """Write the node's files, start its epmd and the node; return once the MQTT listener (ours:
    the node logged it) accepts an MQTT 3.1.1 connection.

    Args:
        cfg: the settings; ``cfg.state_dir`` is created if missing.
        server: the rabbitmq-server script; default :func:`find_rabbitmq`.
        timeout: seconds to wait for the node (RabbitMQ takes several seconds to boot).

    Returns:
        A :class:`RunningRabbit`; stop it with ``stop()`` or a ``with`` block.

    Raises:
        RabbitNotFound: no rabbitmq-server script, or no epmd.
        RuntimeError: epmd or the node exited during startup, or the node did not answer in
            time; the message has the log tails. Whatever was started is killed first.
    """
    exe = server or find_rabbitmq()
    epmd = find_epmd()
    if exe is None or epmd is None:
        raise RabbitNotFound()
    return RunningRabbit(cfg, exe, epmd, timeout=timeout)
