"""Test helpers for swarmbus and its plugins' tests (not used at run time).

Polling and processes:

- :func:`wait_for`: poll a predicate with a deadline (raises AssertionError with what it waited for).
- :func:`wait_on`: the same without polling, for a fake peer that notifies a condition variable.
- :func:`pid_alive`, :func:`kill_process_group`, :func:`kill_group_of`, :func:`keeper_pids` (the
  keepers of detached daemons and brokers under a state dir).

A private mosquitto (re-exported from the dev broker module, so plugin tests need nothing internal):
:class:`BrokerConfig`, :func:`start_broker` (a :class:`RunningBroker`), :func:`free_port`,
:func:`find_mosquitto`.

A host type's init steps, applied without the CLI (re-exported from the provisioning module):
:func:`run_step`, :func:`undo`, :class:`StepResult`.

A plugin's fixtures:

- :class:`FakeProgram`: a fake host executable (``claude``, ``codex``) on PATH that logs what it
  was asked as JSON lines and reads its behaviour from a control file.
- :func:`use_home`: a temporary HOME without the user's swarmbus, broker or host variables.
- :func:`plugin_relay`: a plugin manager with the built-ins and only the plugin under test.

A daemon on a private broker:

- :func:`isolated_env`: the environment of an isolated swarmbus (its own state dir, config file
  and broker URL; no plugins unless asked for).
- :func:`run_cli`: ``python -m swarmbus ARGS`` in such an environment.
- :func:`start_daemon`, :func:`wait_daemon_connected`, :func:`stop_daemon`: ``python -m swarmbus
  start`` in its own process group, until its control socket reports it connected.
- :func:`agent_status`, :func:`finished_delivery`: what the daemon's control socket and
  ``swarmbus inbox --json`` say.
- :class:`DashboardProcess`: ``swarmbus dashboard`` on a free port, until it printed its address.
- :class:`DaemonBus`: all of it for one agent (broker, environment, daemons, ``send``,
  ``status``, ``messages``), opened and closed by a plugin's ``bus`` fixture.

``swarmbus init`` end to end:

- :data:`FAKE_SYSTEMCTL`: the source of a fake ``systemctl`` (format it with ``python``, ``log``
  and ``state``) that records every call as JSON lines and emulates ``systemctl --user
  daemon-reload | enable | restart | disable --now | is-enabled | is-active`` for the units in
  ``$XDG_CONFIG_HOME/systemd/user``: ``restart`` really runs the unit's ``ExecStart=`` (detached,
  with its ``Environment=``), so ``swarmbus init`` can be tested end to end in a temporary HOME
  on a machine without a user systemd.
- :data:`NO_BUS_SYSTEMCTL`: a fake ``systemctl`` for a machine without a user bus (every call
  fails like the real one there: exit 1, ``Failed to connect to bus: No medium found``).
- :func:`install_fake_systemctl`: write one of them into a bin directory.
- :class:`InitHome`: a temporary HOME with the fake systemctl first on PATH, and what a test
  reads back (the calls, the unit's daemon, the files under HOME).
- :func:`describe_run`: a completed CLI run as an assertion message (failing on a traceback).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Self, TypeVar

from swarmbus.control import daemon_status
from swarmbus.dev_broker import BrokerConfig, RunningBroker, find_mosquitto, free_port, start_broker
from swarmbus.ownership import pid_alive
from swarmbus.paths import AgentPaths
from swarmbus.provision import StepResult, run_step, undo

__all__ = [
    "FAKE_SYSTEMCTL",
    "NO_BUS_SYSTEMCTL",
    "AgentPaths",
    "BrokerConfig",
    "DaemonBus",
    "DashboardProcess",
    "FakeProgram",
    "InitHome",
    "RunningBroker",
    "StepResult",
    "agent_status",
    "describe_run",
    "find_mosquitto",
    "finished_delivery",
    "free_port",
    "install_fake_systemctl",
    "isolated_env",
    "keeper_pids",
    "kill_group_of",
    "kill_process_group",
    "pid_alive",
    "plugin_relay",
    "run_cli",
    "run_step",
    "start_broker",
    "start_daemon",
    "stop_daemon",
    "undo",
    "use_home",
    "wait_daemon_connected",
    "wait_for",
    "wait_on",
]

T = TypeVar("T")

#: The variables :func:`isolated_env` keeps from the test's own environment.
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")


def wait_for(predicate: Callable[[], T | None], timeout: float = 10.0, what: str = "condition", interval: float = 0.02) -> T:
    """Poll ``predicate`` every ``interval`` seconds until it returns a truthy value, and return
    that value; after ``timeout`` seconds raise AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def wait_on(cond: threading.Condition, predicate: Callable[[], T | None], timeout: float,
            describe: Callable[[], str] | None = None) -> T | None:
    """For a fake peer that records what it gets under ``cond`` and calls ``cond.notify_all()``
    on each change: hold ``cond`` and return ``predicate()``'s first truthy value, re-checked on
    every notification. After ``timeout`` seconds raise AssertionError saying ``describe()``,
    or, without ``describe``, return None."""
    deadline = time.monotonic() + timeout
    with cond:
        while True:
            value = predicate()
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if describe is None:
                    return None
                raise AssertionError(f"not within {timeout}s: {describe()}")
            cond.wait(remaining)


def report_latency(path: str, seconds: float) -> None:
    """Print ``latency <path>: <seconds>`` and append that line to ``$SWARMBUS_LATENCY_OUT`` when
    it is set: the real-peer tests' wake latencies, which bench/wake_latency.py collects."""
    line = f"latency {path}: {seconds:.3f}"
    print(line)
    out = os.environ.get("SWARMBUS_LATENCY_OUT")
    if out:
        with open(out, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def kill_process_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to the process group ``pid`` leads (a process started with
    ``start_new_session=True``: the daemon and any children); a group already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def kill_group_of(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to the process group ``pid`` is in (a detached daemon or broker: its keeper's
    group, the keeper included), unless that is this process's own group; gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        group = os.getpgid(pid)
        if group != os.getpgrp():
            os.killpg(group, sig)


def keeper_pids(state_dir: Path) -> set[int]:
    """The live keepers under ``state_dir`` (of agents' detached daemons and of detached brokers:
    mosquitto's, and each node of a detached NATS), as their ``keeper.lock`` files say."""
    from swarmbus.ownership import owner_of

    found = set()
    for lock in [*state_dir.glob("agents/*/keeper.lock"), *state_dir.glob("broker/*/keeper.lock"),
                 *state_dir.glob("broker/nats-*/*/keeper.lock")]:
        words = (owner_of(lock) or "").split()
        if words[:2] == ["keeper", "pid"] and words[2:3] and words[2].isdigit() and pid_alive(int(words[2])):
            found.add(int(words[2]))
    return found


# -- a daemon on a private broker ------------------------------------------------------------------
def isolated_env(root: Path, broker_url: str, *, base: Mapping[str, str] | None = None, plugins: str = "",
                 heartbeat: float | None = None, reconnect: tuple[float, float] | None = None,
                 **overrides: str) -> dict[str, str]:
    """The environment of a swarmbus isolated under ``root``: state dir ``root/state``, config
    file ``root/config.toml`` (not written here), broker ``broker_url``, only the plugins named
    in ``plugins`` (comma-separated; none by default), unbuffered output.

    ``base`` is what the rest comes from (default: :data:`INHERITED` from this process's
    environment); ``heartbeat`` sets the presence interval and ``reconnect`` the (min, max)
    reconnect backoff, in seconds; ``overrides`` are set last."""
    env = dict(base) if base is not None else {k: v for k, v in os.environ.items() if k in INHERITED}
    env.update(
        SWARMBUS_STATE_DIR=str(root / "state"),
        SWARMBUS_CONFIG=str(root / "config.toml"),
        SWARMBUS_BROKER_URL=broker_url,
        SWARMBUS_LOAD_PLUGINS=plugins,
        PYTHONUNBUFFERED="1",
    )
    if heartbeat is not None:
        env["SWARMBUS_HEARTBEAT_INTERVAL"] = f"{heartbeat:g}"
    if reconnect is not None:
        env["SWARMBUS_RECONNECT_MIN"], env["SWARMBUS_RECONNECT_MAX"] = (f"{s:g}" for s in reconnect)
    env.update(overrides)
    return env


def run_cli(env: Mapping[str, str], *args: str, input: str | None = None,
            timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``python -m swarmbus ARGS`` (this interpreter) with exactly ``env``; output captured as text."""
    return subprocess.run([sys.executable, "-m", "swarmbus", *args], input=input, capture_output=True, text=True,
                          timeout=timeout, env=dict(env))


def agent_status(agent_id: str, state_dir: str | Path) -> dict[str, Any] | None:
    """What the control socket of ``agent_id``'s daemon under ``state_dir`` answers, or None."""
    return daemon_status(AgentPaths.for_agent(agent_id, state_dir).socket)


def start_daemon(env: Mapping[str, str], agent_id: str, *flags: str, log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m swarmbus start --agent-id AGENT_ID FLAGS`` with ``env`` in its own process
    group (so :func:`kill_process_group` reaches its wake children), output to ``log_path``.
    Does not wait: see :func:`wait_daemon_connected`."""
    with log_path.open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "swarmbus", "start", "--agent-id", agent_id, *flags],
                                stdout=log, stderr=subprocess.STDOUT, env=dict(env), start_new_session=True)


def wait_daemon_connected(env: Mapping[str, str], agent_id: str, proc: subprocess.Popen[bytes],
                          timeout: float = 15.0, *, log_path: Path | None = None) -> dict[str, Any]:
    """Wait until the control socket of ``agent_id``'s daemon (under ``env``'s
    ``SWARMBUS_STATE_DIR``) reports it connected; return that status. Raises AssertionError,
    with the daemon's log, as soon as ``proc`` exits."""
    paths = AgentPaths.for_agent(agent_id, env["SWARMBUS_STATE_DIR"])

    def connected() -> dict[str, Any] | None:
        if proc.poll() is not None:
            log = log_path.read_text(errors="replace") if log_path and log_path.exists() else ""
            raise AssertionError(f"daemon {agent_id} exited {proc.returncode}:\n{log}")
        status = daemon_status(paths.socket)  # (re-read: a long state dir's socket path is recorded at start)
        return status if status and status.get("connected") else None

    return wait_for(connected, timeout, f"daemon {agent_id} to connect")


def stop_daemon(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
    """Send ``sig`` to a daemon still running and wait up to ``timeout`` seconds for it to exit,
    then SIGKILL its process group; return its exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_process_group(proc.pid)
            proc.wait(10)
    return int(proc.returncode)


class DaemonBus:
    """One agent's daemons on a private broker, for a plugin's daemon tests.

    :meth:`open` starts a mosquitto on a free port and builds :func:`isolated_env` under
    ``root`` (config file ``root/config.toml``, written with ``config_text``); :meth:`close`
    stops every daemon started here, then the broker; as a context manager it closes on exit.
    Raises RuntimeError (from :func:`start_broker`) when mosquitto is missing or cannot start.
    """

    def __init__(self, root: Path, env: dict[str, str], agent_id: str, broker: RunningBroker | None = None) -> None:
        self.root, self.env, self.agent_id, self.broker = root, env, agent_id, broker
        self.procs: list[subprocess.Popen[bytes]] = []

    @classmethod
    def open(cls, root: Path, agent_id: str, *, plugins: str, config_text: str = "",
             overrides: Mapping[str, str] | None = None) -> Self:
        """``overrides``: environment variables set last (e.g. ``SWARMBUS_WAKE_POLICY``)."""
        broker = start_broker(BrokerConfig(state_dir=root / "broker", port=free_port()))
        env = isolated_env(root, broker.url, plugins=plugins, reconnect=(0.1, 0.5))
        env.update(overrides or {})
        bus = cls(root, env, agent_id, broker)
        bus.config(config_text or f"# {plugins} test\n")
        return bus

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def log_path(self) -> Path:
        return self.root / "daemon.log"

    def config(self, text: str) -> None:
        """Write the config file the daemons and CLI calls read."""
        Path(self.env["SWARMBUS_CONFIG"]).write_text(text)

    def cli(self, *args: str, timeout: float = 60, **extra: str) -> subprocess.CompletedProcess[str]:
        """``swarmbus ARGS`` in this environment (``extra``: more variables)."""
        return run_cli({**self.env, **extra}, *args, timeout=timeout)

    def start_daemon(self, *flags: str, **extra: str) -> subprocess.Popen[bytes]:
        """Start the agent's daemon (``flags`` after ``start``) and wait until it is connected
        (30 s); its output goes to :attr:`log_path`."""
        env = {**self.env, **extra}
        proc = start_daemon(env, self.agent_id, *flags, log_path=self.log_path)
        self.procs.append(proc)
        wait_daemon_connected(env, self.agent_id, proc, 30, log_path=self.log_path)
        return proc

    def send(self, body: str, subject: str = "task", *, sender: str = "planner", to: str | None = None) -> str:
        """``swarmbus send`` from ``sender`` to ``to`` (default: this bus's agent); returns the
        message id. Fails the test when the command fails."""
        proc = self.cli("send", "--agent-id", sender, "--to", to or self.agent_id, "--subject", subject,
                        "--body", body, "--json")
        assert proc.returncode == 0, describe_run(proc)
        return str(json.loads(proc.stdout)["id"])

    def status(self) -> dict[str, Any]:
        """The daemon's control-socket status ({} when none answers)."""
        return agent_status(self.agent_id, self.env["SWARMBUS_STATE_DIR"]) or {}

    def messages(self) -> list[dict[str, Any]]:
        """``swarmbus inbox --json``'s messages."""
        return list(json.loads(self.cli("inbox", "--agent-id", self.agent_id, "--json").stdout or "{}")
                    .get("messages", []))

    def log(self) -> str:
        """What the daemons wrote so far ("" before the first start)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Stop every daemon started here (SIGTERM, then SIGKILL)."""
        for proc in self.procs:
            stop_daemon(proc)

    def close(self) -> None:
        """:meth:`stop`, then the broker."""
        self.stop()
        if self.broker is not None:
            self.broker.stop()


class FakeProgram:
    """A fake host executable for a plugin's tests: ``script`` (Python source) installed as
    ``<bin_dir>/<name>`` with this interpreter, talking to the test through files.

    The script reads :attr:`control_file` (JSON written by :meth:`control`) and appends one JSON
    object per event to :attr:`log` (``{"kind": "started" | "finished" | ..., "argv", "pid", ...}``).
    :meth:`cleanup` kills every ``pid`` and ``child_pid`` a record names that still runs.
    """

    def __init__(self, bin_dir: Path, name: str, script: str) -> None:
        bin_dir.mkdir(parents=True, exist_ok=True)
        self.bin_dir = bin_dir
        self.path = bin_dir / name
        self.path.write_text(f"#!{sys.executable}\n" + script)
        self.path.chmod(0o755)
        self.log = bin_dir / f"fake-{name}-log.jsonl"
        self.control_file = bin_dir / f"fake-{name}-control.json"
        self.name = name

    def control(self, **values: Any) -> None:
        """Replace what the fake reads from its control file."""
        self.control_file.write_text(json.dumps(values))

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The fake's log records so far, all or only those of ``kind``."""
        if not self.log.exists():
            return []
        lines = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        return [r for r in lines if kind is None or r["kind"] == kind]

    def runs(self) -> list[dict[str, Any]]:
        """The ``started`` records, in start order."""
        return self.records("started")

    def wait_for(self, predicate: Callable[[], T | None], timeout: float = 30.0, what: str = "") -> T:
        """:func:`wait_for`, with the fake's records in the failure message."""
        try:
            return wait_for(predicate, timeout, what or f"the fake {self.name}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; records: {self.records()}") from None

    def cleanup(self) -> None:
        """SIGKILL every process a record names (``pid``, ``child_pid``) that is still alive."""
        for record in self.records():
            for pid in (record.get("pid"), record.get("child_pid")):
                if isinstance(pid, int) and pid > 0 and pid_alive(pid):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)


def use_home(home: Path, monkeypatch: Any, clear: tuple[str, ...] = ()) -> Path:
    """Make ``home`` the test's HOME (the variable and ``Path.home``) through pytest's
    ``monkeypatch``, and unset every variable starting with ``SWARMBUS_``, ``MQTT_`` or a prefix
    in ``clear`` (a host's own, e.g. ``CLAUDE_``), so the user's set-up never leaks in."""
    home.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: home))
    for name in list(os.environ):
        if name.startswith(("SWARMBUS_", "MQTT_", *clear)):
            monkeypatch.delenv(name)
    return home


def plugin_relay(module: Any, name: str) -> Any:
    """A fresh plugin manager with the built-ins and only ``module`` (registered as ``name``),
    behind the core's :class:`~swarmbus.plugins.HookRelay`: entry points are not loaded."""
    from swarmbus.plugins import HookRelay, get_plugin_manager

    pm = get_plugin_manager(entry_points=False)
    pm.register(module, name=name)
    return HookRelay(pm)


class DashboardProcess:
    """``python -m swarmbus dashboard --port 0 ARGS`` in ``env``, in its own process group, until
    it printed its address: :attr:`url` and :attr:`port`; :attr:`out` and :attr:`err` collect
    what it writes. Raises AssertionError when it exits first or prints no address in 30 s."""

    def __init__(self, env: Mapping[str, str], *args: str) -> None:
        import threading

        self.proc = subprocess.Popen([sys.executable, "-m", "swarmbus", "dashboard", "--port", "0", *args],
                                     env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=lines.extend, args=(stream,), daemon=True).start()
        line = wait_for(self._url_line, 30, "the dashboard's address")
        self.url = line.split(": ", 1)[1].strip()
        from urllib.parse import urlsplit

        self.port = int(urlsplit(self.url).port or 0)

    def _url_line(self) -> str | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"swarmbus dashboard exited {self.proc.returncode}: {''.join(self.err)}")
        return next((line for line in self.out if line.startswith("swarmbus dashboard: ")), None)

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Signal its process group (SIGKILL after 15 s) and return its exit code."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


def finished_delivery(env: Mapping[str, str], agent_id: str, handler: str = "wake") -> dict[str, Any] | None:
    """The first delivery by ``handler`` that has finished (neither pending nor running) in
    ``swarmbus inbox --agent-id AGENT_ID --json``, or None."""
    proc = run_cli(env, "inbox", "--agent-id", agent_id, "--json")
    for message in json.loads(proc.stdout or "{}").get("messages", []):
        for delivery in message.get("deliveries", []):
            if delivery.get("handler") == handler and delivery.get("status") not in ("pending", "running"):
                return delivery  # type: ignore[no-any-return]
    return None


# -- swarmbus init end to end ----------------------------------------------------------------------
FAKE_SYSTEMCTL = '''\
#!{python}
"""A fake `systemctl --user` for tests: records argv, runs units' ExecStart= detached."""
import json, os, shlex, signal, subprocess, sys, time
from pathlib import Path

LOG = Path({log!r})
STATE = Path({state!r})


def unit_dir():
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "systemd" / "user"


def load():
    return json.loads(STATE.read_text()) if STATE.exists() else {{}}


def save(state):
    STATE.write_text(json.dumps(state))


def alive(pid):
    try:
        with open(f"/proc/{{pid}}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def stop(entry):
    pid = entry.pop("pid", None)
    if pid and alive(pid):
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive(pid):
            os.killpg(pid, signal.SIGKILL)


def unescape(word):
    return word.replace("%%", "%").replace("$$", "$")


def start(unit, entry):
    argv, env = None, {{k: os.environ[k] for k in ("HOME", "LANG", "XDG_RUNTIME_DIR") if k in os.environ}}
    for line in (unit_dir() / unit).read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "ExecStart":
            argv = [unescape(w) for w in shlex.split(value)]
        elif key == "Environment":
            for word in shlex.split(value):
                name, _, val = word.replace("%%", "%").partition("=")
                env[name] = val
    log = open(STATE.with_name(unit + ".log"), "ab")
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    entry["pid"] = proc.pid


def main(args):
    with LOG.open("a") as fh:
        fh.write(json.dumps(args) + "\\n")
    if args[:1] != ["--user"]:
        print("fake systemctl: only --user is emulated", file=sys.stderr)
        return 1
    args = [a for a in args[1:] if a != "--quiet"]
    if args == ["daemon-reload"]:
        return 0
    if args == ["show-environment"]:
        print(f"HOME={{os.environ.get('HOME', '')}}")
        return 0
    verb, unit = args[0], args[-1]
    state = load()
    entry = state.setdefault(unit, {{}})
    exists = (unit_dir() / unit).exists()
    try:
        if verb == "enable":
            if not exists:
                print(f"Failed to enable unit: Unit file {{unit}} does not exist.", file=sys.stderr)
                return 1
            entry["enabled"] = True
            return 0
        if verb == "restart":
            if not exists:
                print(f"Failed to restart {{unit}}: Unit {{unit}} not found.", file=sys.stderr)
                return 5
            stop(entry)
            start(unit, entry)
            return 0
        if verb == "disable" and "--now" in args:
            stop(entry)
            entry["enabled"] = False
            return 0
        if verb == "stop":
            stop(entry)
            return 0
        if verb == "is-enabled":
            return 0 if entry.get("enabled") and exists else 1
        if verb == "is-active":
            return 0 if entry.get("pid") and alive(entry["pid"]) else 3
        print(f"fake systemctl: {{args}} not emulated", file=sys.stderr)
        return 1
    finally:
        save(state)


sys.exit(main(sys.argv[1:]))
'''


NO_BUS_SYSTEMCTL = '''\
#!{python}
"""A fake `systemctl` on a machine without a user bus (containers, root shells, WSL, CI): every
call is recorded and fails the way the real one does there."""
import json, sys

with open({log!r}, "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\\n")
print("Failed to connect to bus: No medium found", file=sys.stderr)
sys.exit(1)
'''
"""The source of a fake ``systemctl`` (format it with ``python`` and ``log``) that records its
calls and fails every one with exit 1 and ``Failed to connect to bus: No medium found``."""


def install_fake_systemctl(bin_dir: Path, python: str, log: Path, state: Path, *, bus: bool = True) -> Path:
    """Write the fake ``systemctl`` (shebang ``python``) into ``bin_dir``; calls go to ``log``
    (JSON lines), unit state to ``state`` (JSON). With ``bus=False`` it is
    :data:`NO_BUS_SYSTEMCTL` instead: no user service manager works. Returns the script's path."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "systemctl"
    source = FAKE_SYSTEMCTL if bus else NO_BUS_SYSTEMCTL
    script.write_text(source.format(python=python, log=str(log), state=str(state)))
    script.chmod(0o755)
    return script


READ_ONLY_SYSTEMCTL = frozenset({"is-enabled", "is-active", "show-environment"})
"""``systemctl`` verbs that change nothing (left out of :meth:`InitHome.mutating_calls`)."""


def _is_swarmbus(pid: int) -> bool:
    """Whether ``pid`` still runs swarmbus (not a reused pid), as far as /proc tells."""
    try:
        return b"swarmbus" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


class InitHome:
    """``swarmbus init`` in a temporary HOME, for agent ``agent_id``, with the fake systemctl.

    The fake ``systemctl`` (with ``bus=False`` the one of a machine without a user bus, so that
    init runs the daemon detached) is installed in ``bin_dir`` (default ``root/bin``), which is put
    first on PATH (unless it already is); its call log, its unit state and the unit's output are
    ``root/systemctl-calls.jsonl``, ``root/systemctl-state.json`` and ``root/<unit>.log``.
    :attr:`env` is the environment for ``swarmbus``: the variables in ``inherit``, that PATH,
    HOME and ``XDG_CONFIG_HOME`` in ``home``, ``SWARMBUS_STATE_DIR=home/state``,
    ``SWARMBUS_CONFIG=home/.config/swarmbus/config.toml``, only the plugins in ``plugins``.

    Every daemon pid seen (after each :meth:`swarmbus` run) is remembered, so that
    :meth:`kill_daemons` at teardown leaves none running, whatever the test did."""

    def __init__(self, home: Path, root: Path, agent_id: str, *, bin_dir: Path | None = None, plugins: str = "",
                 inherit: tuple[str, ...] = ("LANG", "LC_ALL", "TMPDIR"), bus: bool = True) -> None:
        self.home = home
        self.root = root
        self.agent_id = agent_id
        self.unit = f"swarmbus-{agent_id}.service"
        self.pids: set[int] = set()
        bin_dir = bin_dir or root / "bin"
        install_fake_systemctl(bin_dir, sys.executable, root / "systemctl-calls.jsonl", root / "systemctl-state.json",
                               bus=bus)
        path = os.environ.get("PATH", "/usr/bin:/bin")
        if path.split(os.pathsep)[0] != str(bin_dir):
            path = os.pathsep.join([str(bin_dir), path])
        self.env = {k: v for k, v in os.environ.items() if k in inherit}
        self.env.update(
            PATH=path,
            HOME=str(home),
            XDG_CONFIG_HOME=str(home / ".config"),
            SWARMBUS_STATE_DIR=str(home / "state"),
            SWARMBUS_CONFIG=str(home / ".config" / "swarmbus" / "config.toml"),
            SWARMBUS_LOAD_PLUGINS=plugins,
            PYTHONUNBUFFERED="1",
        )

    @property
    def unit_path(self) -> Path:
        return self.home / ".config" / "systemd" / "user" / self.unit

    @property
    def config_path(self) -> Path:
        return Path(self.env["SWARMBUS_CONFIG"])

    @property
    def state_dir(self) -> Path:
        return Path(self.env["SWARMBUS_STATE_DIR"])

    @property
    def manifest(self) -> Path:
        return self.state_dir / "agents" / self.agent_id / "init.json"

    def swarmbus(self, *args: str, timeout: float = 120,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``python -m swarmbus ARGS`` with :attr:`env` (plus ``env``)."""
        proc = run_cli({**self.env, **(env or {})}, *args, timeout=timeout)
        self.daemon_pid()  # remember every daemon the fake systemctl started, for the teardown
        self.detached_pid()  # and every one `start --detach` started
        self.pids.update(keeper_pids(self.state_dir))  # and their keepers (a detached broker's too)
        status = self.status()
        if status and isinstance(status.get("pid"), int):
            self.pids.add(status["pid"])
        return proc

    def systemctl_calls(self) -> list[list[str]]:
        """Every ``systemctl`` argv so far (without the program name)."""
        log = self.root / "systemctl-calls.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def mutating_calls(self, since: int = 0) -> list[list[str]]:
        """The ``systemctl`` calls from the ``since``-th on, other than the queries
        (``is-enabled``, ``is-active``, ``show-environment``)."""
        return [c for c in self.systemctl_calls()[since:] if not READ_ONLY_SYSTEMCTL & set(c)]

    def systemctl_state(self) -> dict[str, Any]:
        path = self.root / "systemctl-state.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def daemon_pid(self) -> int | None:
        """The pid of the daemon the fake systemctl runs for the unit, if any."""
        pid = self.systemctl_state().get(self.unit, {}).get("pid")
        if pid:
            self.pids.add(int(pid))
        return int(pid) if pid else None

    def status(self) -> dict[str, Any] | None:
        return agent_status(self.agent_id, self.state_dir)

    @property
    def agent_dir(self) -> Path:
        return self.state_dir / "agents" / self.agent_id

    def detached_pid(self) -> int | None:
        """The pid in the agent's ``daemon.pid`` (written by ``swarmbus start --detach``), if any."""
        try:
            pid = int((self.agent_dir / "daemon.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        self.pids.add(pid)
        return pid

    def init(self, *extra: str) -> subprocess.CompletedProcess[str]:
        """``swarmbus init`` for this home's host type: defined by each plugin's subclass."""
        raise NotImplementedError

    def init_detached(self, user_config: str) -> tuple[subprocess.CompletedProcess[str], int]:
        """Write ``user_config`` as the config file, run :meth:`init` on this machine without a
        user bus, and check what every host type shares: exit 0, and a live detached daemon that
        init reported. Returns (the init run, the daemon's pid); AssertionError otherwise."""
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(user_config)
        proc = self.init()
        text = describe_run(proc)
        assert proc.returncode == 0, text
        pid = self.detached_pid()
        assert pid and pid_alive(pid), text + self.detached_log()
        assert f"{self.agent_id} is set up: its daemon runs detached (pid {pid}" in proc.stdout, text
        assert "Failed to connect to bus: No medium found" in proc.stdout, text
        return proc, pid

    def detached_log(self) -> str:
        path = self.agent_dir / "daemon.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def daemon_log(self) -> str:
        path = self.root / f"{self.unit}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def tree(self, *, include_state: bool = False) -> dict[str, bytes]:
        """Every file under HOME (path relative to HOME: content), except the daemon's state (its
        store changes as it runs) unless ``include_state``."""
        return {str(p.relative_to(self.home)): p.read_bytes() for p in sorted(self.home.rglob("*"))
                if p.is_file() and (include_state or not p.is_relative_to(self.state_dir))}

    def kill_daemons(self) -> None:
        """SIGKILL the process group of every daemon and keeper seen (started by the fake systemctl,
        by ``start --detach`` or by ``broker --detach``) that still runs."""
        self.pids.update(int(e["pid"]) for e in self.systemctl_state().values() if e.get("pid"))
        self.detached_pid()
        self.pids.update(keeper_pids(self.state_dir))
        for pid in self.pids:
            if pid_alive(pid) and _is_swarmbus(pid):
                kill_group_of(pid)


def describe_run(proc: subprocess.CompletedProcess[str]) -> str:
    """The exit status and output of a CLI run, for assertion messages; raises AssertionError
    (with them) if the output has a Python traceback."""
    text = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    if "Traceback" in proc.stdout + proc.stderr:
        raise AssertionError(text)
    return text
