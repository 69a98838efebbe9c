"""``swarmbus swarm up|down|status``: run a swarm of agents described in a file (docs/swarm.md).

``up FILE`` starts one listener daemon per agent of the file (:mod:`swarmbus.swarm_file`), as
``swarmbus start --agent-id ID --swarm NAME --role R --capability C ...``: in the panes of a tmux
session of its own (``swarmbus-<name>``, on the private tmux socket ``-L swarmbus-<name>``, so the
user's own tmux server is never touched; each pane runs the daemon in the foreground, titled with
the agent id) when tmux is on PATH, else (or with ``--no-tmux``) as detached daemons, each under its
keeper (what ``swarmbus start --detach`` does). All are started at once; ``up`` then waits, up to a
deadline, until each daemon's control socket answers, and reports any that did not come up with
the last lines of its log (its pane). Agents whose daemon already runs are left alone. A record of
what it started is kept in ``<state>/swarms/<name>.json`` (0600) so ``down NAME`` and ``status NAME``
work without the file.

``down`` stops each agent's daemon the way ``swarmbus stop`` does (SIGTERM: the daemon publishes its
offline presence and exits; SIGKILL after ``--timeout``), then kills the tmux session. ``status``
says, for each agent, whether its daemon runs, its pid and how it runs.

No shell ever sees anything but known values: every command is an argv list; the command a tmux
pane runs is ``exec`` and :func:`shlex.join` of the daemon's argv (ids and names checked against
the agent-id charset, paths, the interpreter), run by ``/bin/sh`` (the private server's default
shell). Host types (``host_type``) are only recorded for the daemon (``SWARMBUS_HOST_TYPE``), whose
host plugin wakes the host; setting the host itself up is ``swarmbus init --host-type``'s job.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarmbus.cli.common import cli_layer, load_settings_for, print_json, safe_text
from swarmbus.cli.main import HelpFormatter, Parser, _common, _json
from swarmbus.control import daemon_status
from swarmbus.errors import ConfigError, OwnershipError, SwarmbusError, UsageError
from swarmbus.paths import AgentPaths, default_state_dir, ensure_private_dir
from swarmbus.supervise import SUPERVISOR_ENV
from swarmbus.swarm_file import (
    AgentSpec,
    SwarmSpec,
    load_swarm_file,
    lock_path,
    read_record,
    record_path,
    swarms_dir,
    write_record,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from swarmbus.supervise import RunningDaemon

UP_TIMEOUT = 60.0
"""Seconds ``up`` waits, by default, for every daemon's control socket to answer."""
CONNECT_GRACE = 5.0
"""Seconds ``up`` then waits for the daemons to connect to the broker (a warning, not a failure)."""
STOP_TIMEOUT = 20.0
"""Seconds ``down`` waits, by default, for a daemon to exit after SIGTERM before it sends SIGKILL."""
PANES_PER_WINDOW = 9
"""Panes per tmux window (3 x 3, tiled); more agents get more windows."""
TAIL_LINES = 12
STATUS_GRACE = 1.0
"""Seconds to wait for tmux to record a dead pane's exit status before reporting it unknown."""
POLL = 0.05
DEAD_LOOK = 0.3
"""Seconds between looks at the tmux panes for a daemon that exited, while ``up`` waits."""

DESCRIPTION = """\
Run a swarm: the agents a small TOML file describes (id, role, capabilities, host type), each
with its own listener daemon, in the panes of a tmux session when tmux is there, as detached
daemons otherwise.

  swarmbus swarm up docs/examples/swarm.toml            # tmux session swarmbus-opencto-dev
  swarmbus swarm up swarm.toml --no-tmux                # detached daemons (containers, CI)
  swarmbus swarm status opencto-dev
  tmux -L swarmbus-opencto-dev attach -t swarmbus-opencto-dev
  swarmbus swarm down opencto-dev

The file (docs/swarm.md, "Running a swarm"):

  name = "opencto-dev"
  [[agents]]
  id = "code-review"
  role = "code-review"
  capabilities = ["python", "typescript"]

Exit codes: 0 ok, 1 a daemon did not come up / would not stop / is not running, 2 usage error
or a bad swarm file (one line: the file, the key, what is wrong).
"""

UP = """\
Start a daemon for every agent of FILE that does not run yet (agents that already run are left
alone and reported), all at once, then wait until each one's control socket answers (--timeout).

With tmux on PATH (and no --no-tmux): one tmux session, swarmbus-<name>, on the private tmux
socket `-L swarmbus-<name>` (your own tmux server is never touched), 9 tiled panes per window,
each running one daemon in the foreground (its log scrolls there) and titled with its agent id;
a pane whose daemon exits stays, showing why. Otherwise each daemon runs detached under a keeper
that restarts it if it crashes (`swarmbus start --detach`; log in <state>/agents/<id>/daemon.log).

Each daemon runs `swarmbus start --agent-id ID --swarm NAME --role R --capability C ...` with
your settings (config file, SWARMBUS_*/MQTT_* environment; the file's broker, if it names one),
the agent's wake_policy, host_type (as SWARMBUS_HOST_TYPE: the host plugin wakes that host; set
the host up with `swarmbus init --host-type`) and env. What it started is recorded in
<state>/swarms/<name>.json, so `down NAME` works without the file.

  swarmbus swarm up docs/examples/swarm.toml
  swarmbus swarm up swarm.toml --no-tmux --json
  swarmbus swarm up swarm.toml --attach                 # then attach to the tmux session

--json prints {"swarm", "file", "ok", "tmux": {"socket", "session"} | null, "record", "agents":
[{"agent_id", "state": "started" | "running" | "failed", "mode": "tmux" | "detached" | ..., "pid",
"connected", "role", "reason", "tail" (the log's last lines), "pane", "log"}]}.

Exit codes: 0 every daemon runs, 1 some did not come up (each is named with its log's last lines),
2 usage error or a bad swarm file.
"""

DOWN = """\
Stop every agent of the swarm (FILE, or NAME from the record `swarm up` kept), all at once, as
`swarmbus stop` does: SIGTERM (the daemon publishes its offline presence and exits), SIGKILL
after --timeout. Then kill the swarm's tmux session, if `up` made one. A daemon that runs under
systemd or launchd (`swarmbus init`) is left alone and named.

  swarmbus swarm down opencto-dev
  swarmbus swarm down docs/examples/swarm.toml --timeout 5

--json prints {"swarm", "ok", "tmux_session_killed", "agents": [{"agent_id", "state": "stopped" |
"not running" | "left alone" | "failed", "pid", "mode", "reason", ...}]}.

Exit codes: 0 every agent is stopped (or was not running), 1 one would not stop or was left
alone, 2 usage error, a bad swarm file, or no swarm of that name was started here.
"""

STATUS = """\
Say, for each agent of the swarm (FILE, or NAME from the record `swarm up` kept), whether its
daemon runs, its pid, how it runs (tmux, detached, or foreground/systemd/launchd when started
otherwise) and whether it is connected to the broker.

  swarmbus swarm status opencto-dev
  swarmbus swarm status swarm.toml --json

--json prints {"swarm", "file", "tmux": {"socket", "session", "running"} | null, "running" (count),
"total", "agents": [{"agent_id", "role", "running", "pid", "mode", "connected"}]}.

Exit codes: 0 every agent runs, 1 some do not, 2 usage error, a bad swarm file, or no swarm of
that name was started here.
"""


# -- arguments ---------------------------------------------------------------------------------------


def configure(p: argparse.ArgumentParser) -> None:
    """Add this command's description and arguments to p."""
    p.description = DESCRIPTION
    sub = p.add_subparsers(dest="swarm_action", metavar="ACTION", parser_class=Parser, required=True)

    def add(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=description, formatter_class=HelpFormatter)

    up = add("up", "start the swarm a file describes (tmux panes, or detached daemons)", UP)
    up.add_argument("file", metavar="FILE", help="the swarm file (TOML)")
    up.add_argument("--no-tmux", action="store_true", help="detached daemons even when tmux is on PATH")
    up.add_argument("--attach", action="store_true", help="attach to the tmux session afterwards (needs a terminal)")
    up.add_argument("--timeout", type=float, default=UP_TIMEOUT, metavar="SECONDS",
                    help=f"how long to wait for every daemon to answer (default {UP_TIMEOUT:g})")
    _json(up)
    _common(up)

    down = add("down", "stop every agent of a swarm and its tmux session", DOWN)
    down.add_argument("target", metavar="FILE|NAME", help="the swarm file, or the swarm's name")
    down.add_argument("--timeout", type=float, default=STOP_TIMEOUT, metavar="SECONDS",
                      help=f"wait this long after SIGTERM before SIGKILL (default {STOP_TIMEOUT:g})")
    _json(down)
    _common(down)

    status = add("status", "say which agents of a swarm run", STATUS)
    status.add_argument("target", metavar="FILE|NAME", help="the swarm file, or the swarm's name")
    _json(status)
    _common(status)


def run(args: argparse.Namespace) -> int:
    """Run ``swarm up|down|status``; returns the exit code (see the descriptions)."""
    if args.swarm_action == "up":
        return run_up(args)
    if args.swarm_action == "down":
        return run_down(args)
    return run_status(args)


# -- what to run -------------------------------------------------------------------------------------


@dataclass
class Launch:
    """How to start one agent's daemon: ``argv`` (a foreground ``swarmbus start``) and ``env``
    (what it needs on top of the user's environment)."""

    agent: AgentSpec
    paths: AgentPaths
    argv: list[str]
    env: dict[str, str]

    @property
    def pane_command(self) -> str:
        """The string a tmux pane runs (by /bin/sh): ``exec`` and the quoted argv."""
        return "exec " + shlex.join(self.argv)


@dataclass
class Outcome:
    """What became of one agent: ``state`` is ``started``, ``running`` (it already ran: left
    alone), ``failed``, or for ``down`` ``stopped``, ``not running``, ``left alone``."""

    agent_id: str
    state: str
    mode: str | None = None
    pid: int | None = None
    connected: bool | None = None
    reason: str | None = None
    tail: list[str] = field(default_factory=list)
    pane: str | None = None
    log: str | None = None
    role: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"agent_id": self.agent_id, "state": self.state, "mode": self.mode, "pid": self.pid,
                "connected": self.connected, "role": self.role, "reason": self.reason, "tail": self.tail,
                "pane": self.pane, "log": self.log}


def _state_dir(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """The state dir and the config file (when one exists) of the user's settings, validated."""
    settings = load_settings_for(args)
    state_dir = Path(settings.state_dir).expanduser() if settings.state_dir else default_state_dir()
    from swarmbus.cli.common import raw_config

    raw = raw_config(args)
    config = raw.config_path if raw.config_exists else None
    return state_dir.absolute(), (config.absolute() if config else None)


def _plan(spec: SwarmSpec, source: str, args: argparse.Namespace, state_dir: Path,
          config: Path | None) -> list[Launch]:
    """One :class:`Launch` per agent, each validated as its daemon would validate its settings.

    :raises ConfigError: an agent's settings are invalid (its env, or what it inherits), or it
        would inherit a host type from the user's own agent settings."""
    from swarmbus.cli.start import require_runnable_wake_command
    from swarmbus.config import load_raw
    from swarmbus.plugins import HookRelay, get_plugin_manager
    from swarmbus.settings import build_settings

    pm = get_plugin_manager()
    relay = HookRelay(pm)
    sections = relay.settings_sections()
    host_types: dict[str, Any] | None = None
    base_env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}
    launches = []
    for i, agent in enumerate(spec.agents):
        where = f"{source}: agents[{i}] (id {agent.id})"
        if agent.host_type not in (None, "none"):
            host_types = relay.host_types() if host_types is None else host_types
            if agent.host_type not in host_types:
                known = ", ".join(sorted(host_types)) or "none"
                raise ConfigError(f"{where}.host_type: {agent.host_type!r} is not a host type an installed plugin "
                                  f"provides (installed: {known})")
        flags = argparse.Namespace(
            agent_id=agent.id, swarm=spec.name, role=agent.role,
            capability=",".join(agent.capabilities) if agent.capabilities else None,
            wake_policy=agent.wake_policy, broker=spec.broker, state_dir=str(state_dir),
            log_level=args.log_level, log_format=args.log_format)
        env = dict(agent.env)
        if agent.host_type is not None:
            env["SWARMBUS_HOST_TYPE"] = agent.host_type
        try:
            raw = load_raw(cli_layer(flags), env={**base_env, **env}, config_path=config)
            inherited = [key for key in ("role", "capabilities")
                         if raw.get(key) and getattr(flags, "capability" if key == "capabilities" else key) is None]
            for key in inherited:  # the user's own agent's role/capabilities are not this agent's: clear them
                setattr(flags, "capability" if key == "capabilities" else key, "")
            if inherited:
                raw = load_raw(cli_layer(flags), env={**base_env, **env}, config_path=config)
            if agent.host_type is None and raw.get("host_type"):
                raise ConfigError(
                    f"it would inherit host_type {raw.get('host_type')!r} from {raw.sources.get('host_type')} (your "
                    "own agent's setting); give it a host_type in the swarm file (\"none\" for no host), or run "
                    "`swarm up` with a config file without one (--config)")
            settings = build_settings(raw, sections)
            require_runnable_wake_command(settings, pm)
        except UsageError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        argv = [sys.executable, "-m", "swarmbus", "start", "--agent-id", agent.id, "--swarm", spec.name]
        if flags.role is not None:
            argv += ["--role", flags.role]
        for capability in agent.capabilities or ([""] if flags.capability == "" else []):
            argv += ["--capability", capability]
        if agent.wake_policy:
            argv += ["--wake-policy", agent.wake_policy]
        if spec.broker:
            argv += ["--broker", spec.broker]
        argv += ["--state-dir", str(state_dir)]
        if config is not None:
            argv += ["--config", str(config)]
        if args.log_level:
            argv += ["--log-level", args.log_level]
        if args.log_format:
            argv += ["--log-format", args.log_format]
        launches.append(Launch(agent, AgentPaths.for_agent(agent.id, state_dir), argv, env))
    return launches


@contextlib.contextmanager
def _swarm_lock(state_dir: Path, name: str) -> Iterator[None]:
    """Hold ``<state>/swarms/<name>.lock`` (one ``up``/``down`` of a swarm at a time)."""
    from swarmbus.ownership import Ownership, owner_of

    ensure_private_dir(state_dir)
    ensure_private_dir(swarms_dir(state_dir))
    path = lock_path(state_dir, name)
    try:
        lock = Ownership(path, "swarmbus swarm").acquire()
    except OwnershipError:
        raise SwarmbusError(f"another `swarmbus swarm` command is working on swarm {name} "
                            f"({owner_of(path) or 'it just finished'}); try again when it is done") from None
    try:
        yield
    finally:
        lock.release()


# -- tmux --------------------------------------------------------------------------------------------


class TmuxError(SwarmbusError):
    """A tmux command failed."""


@dataclass(frozen=True)
class Pane:
    pane_id: str
    window_id: str
    agent: str
    dead: bool
    status: str


class Tmux:
    """tmux on the swarm's private socket: ``-S PATH`` when known (from the record), else
    ``-L swarmbus-<name>``. Every call is an argv list; nothing runs through a shell."""

    def __init__(self, exe: str, name: str, socket: str | None, env: Mapping[str, str]) -> None:
        self.exe = exe
        self.session = f"swarmbus-{name}"
        self.socket_args = ["-S", socket] if socket else ["-L", self.session]
        self.env = {k: v for k, v in env.items() if k not in ("TMUX", "TMUX_PANE")}

    def __call__(self, *args: str, check: bool = True) -> str:
        argv = [self.exe, *self.socket_args, *args]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=15)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TmuxError(f"tmux {args[0]} failed: {exc}") from None
        if check and proc.returncode != 0:
            raise TmuxError(f"tmux {args[0]} failed: {(proc.stderr or proc.stdout).strip() or f'status {proc.returncode}'}")
        return proc.stdout if proc.returncode == 0 else ""

    @property
    def target(self) -> str:
        return f"={self.session}"

    def exists(self) -> bool:
        argv = [self.exe, *self.socket_args, "has-session", "-t", self.target]
        try:
            return subprocess.run(argv, capture_output=True, env=self.env, timeout=15).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def socket_path(self) -> str | None:
        return self("display-message", "-p", "-t", self.target, "#{socket_path}", check=False).strip() or None

    def server_pid(self) -> int | None:
        text = self("display-message", "-p", "-t", self.target, "#{pid}", check=False).strip()
        return int(text) if text.isdigit() else None

    def panes(self) -> list[Pane]:
        out = self("list-panes", "-s", "-t", self.target, "-F",
                   "#{pane_id}\t#{window_id}\t#{@swarmbus_agent}\t#{pane_dead}\t#{pane_dead_status}", check=False)
        panes = []
        for line in out.splitlines():
            parts = line.split("\t")
            if len(parts) == 5:
                panes.append(Pane(parts[0], parts[1], parts[2], parts[3] == "1", parts[4]))
        return panes

    def _env_flags(self, env: Mapping[str, str]) -> list[str]:
        """``-e KEY=VALUE`` for the pane: ``env``, and that tmux supervises it (``swarmbus status``)."""
        return [arg for key, value in {**env, SUPERVISOR_ENV: "tmux"}.items() for arg in ("-e", f"{key}={value}")]

    def _label(self, pane: str, agent: str) -> None:
        self("set-option", "-p", "-t", pane, "@swarmbus_agent", agent)
        self("select-pane", "-t", pane, "-T", agent)

    def create(self, launch: Launch, cwd: str) -> str:
        """Start the server and the session with ``launch``'s daemon in its first pane."""
        options = (("-g", "remain-on-exit", "on"), ("-g", "default-shell", "/bin/sh"),
                   ("-gw", "pane-border-status", "top"), ("-gw", "pane-border-format", " #{pane_title} "),
                   ("-gw", "allow-rename", "off"), ("-gw", "automatic-rename", "off"),
                   ("-g", "status-left-length", "40"))
        chain = [arg for scope, option, value in options for arg in (";", "set-option", scope, option, value)]
        out = self("start-server", *chain,
                   ";", "new-session", "-d", "-s", self.session, "-n", "agents", "-x", "200", "-y", "50",
                   "-c", cwd, "-P", "-F", "#{pane_id}", *self._env_flags(launch.env), launch.pane_command)
        pane = out.strip().splitlines()[-1]
        self("set-option", "-g", "allow-set-title", "off", check=False)  # tmux >= 3.3: programs keep off our titles
        self._label(pane, launch.agent.id)
        return pane

    def add(self, launch: Launch, cwd: str) -> str:
        """A new pane for ``launch``'s daemon: in the first window with room, else a new window."""
        counts: dict[str, int] = {}
        for pane in self.panes():
            counts[pane.window_id] = counts.get(pane.window_id, 0) + 1
        window = next((w for w, n in counts.items() if n < PANES_PER_WINDOW), None)
        flags = ["-d", "-c", cwd, "-P", "-F", "#{pane_id}", *self._env_flags(launch.env), launch.pane_command]
        if window is None:
            out = self("new-window", "-t", f"{self.target}:", "-n", f"agents-{len(counts) + 1}", *flags)
        else:
            self("select-layout", "-t", window, "tiled", check=False)  # room for one more
            out = self("split-window", "-t", window, *flags)
        new_pane = out.strip().splitlines()[-1]
        self("select-layout", "-t", new_pane, "tiled", check=False)
        self._label(new_pane, launch.agent.id)
        return new_pane

    def respawn(self, pane: str, launch: Launch, cwd: str) -> None:
        """Run ``launch``'s daemon again in its (dead) pane."""
        self("respawn-pane", "-k", "-t", pane, "-c", cwd, *self._env_flags(launch.env), launch.pane_command)

    def tail(self, pane: str, lines: int = TAIL_LINES) -> list[str]:
        out = self("capture-pane", "-p", "-J", "-t", pane, "-S", "-200", check=False)
        text = [line.rstrip() for line in out.splitlines()]
        text = [line for line in text if line and not line.startswith("Pane is dead")]
        return text[-lines:]

    def kill(self) -> None:
        self("kill-session", "-t", self.target, check=False)

    def attach_argv(self) -> list[str]:
        return [self.exe, *self.socket_args, "attach-session", "-t", self.target]

    def attach_hint(self) -> str:
        """The command a person types to look at the session."""
        if self.socket_args[0] == "-S":
            tmpdir = os.environ.get("TMUX_TMPDIR") or "/tmp"  # noqa: S108 - tmux's own default
            if self.socket_args[1] == os.path.join(tmpdir, f"tmux-{os.geteuid()}", self.session):
                return f"tmux -L {self.session} attach -t {self.session}"
        return shlex.join(["tmux", *self.socket_args, "attach", "-t", self.session])


def _tmux_for(name: str, record: dict[str, Any] | None, exe: str | None = None) -> Tmux | None:
    """The swarm's tmux (the recorded socket, else the default one), or None without tmux."""
    tmux = (record or {}).get("tmux") or {}
    exe = exe or shutil.which("tmux") or (tmux.get("exe") if tmux.get("exe") and os.path.exists(tmux["exe"]) else None)
    if exe is None:
        return None
    socket = tmux.get("socket") if isinstance(tmux.get("socket"), str) and os.path.exists(tmux["socket"]) else None
    return Tmux(exe, name, socket, os.environ)


# -- up ----------------------------------------------------------------------------------------------


def _find_daemon(paths: AgentPaths) -> RunningDaemon | None:
    """:func:`swarmbus.supervise.find_daemon`, or None when the agent's dir cannot hold one (a file
    where the directory should be: starting it then says why)."""
    from swarmbus.supervise import find_daemon

    try:
        return find_daemon(paths, socket_timeout=1.0)
    except OSError:
        return None


def _has_keeper(paths: AgentPaths) -> bool:
    """Whether a keeper keeps the agent's detached daemon (one waiting to restart it, say)."""
    from swarmbus.supervise import find_keeper

    try:
        return find_keeper(paths) is not None
    except OSError:
        return False


def _agent_mode(daemon_pid: int, supervisor: str, entry: dict[str, Any] | None) -> str:
    """How a running daemon runs: the record's mode when the record names this pid, else its supervisor."""
    if entry and entry.get("pid") == daemon_pid and entry.get("mode"):
        return str(entry["mode"])
    return supervisor


def _entries(record: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {str(e.get("agent_id")): e for e in (record or {}).get("agents", []) if isinstance(e, dict)}


def _wait_answering(pending: dict[str, Launch], deadline: float,
                    dead: Callable[[], dict[str, tuple[str, list[str]]]] | None) -> dict[str, Outcome]:
    """Wait until each pending agent's daemon answers on its control socket (``started``), its
    pane died (``dead()`` names it with a reason and its last lines: ``failed``), or the deadline
    passes (``failed``). Returns an outcome for every pending agent."""
    outcomes: dict[str, Outcome] = {}
    waiting = dict(pending)
    next_look = 0.0
    while waiting:
        for agent_id, launch in list(waiting.items()):
            daemon = _find_daemon(launch.paths)
            if daemon is not None and daemon.status is not None:
                outcomes[agent_id] = Outcome(agent_id, "started", pid=daemon.pid,
                                             connected=bool(daemon.status.get("connected")))
                del waiting[agent_id]
        if waiting and dead is not None and time.monotonic() >= next_look:
            next_look = time.monotonic() + DEAD_LOOK
            for agent_id, (reason, tail) in dead().items():
                if agent_id in waiting:
                    outcomes[agent_id] = Outcome(agent_id, "failed", reason=reason, tail=tail)
                    del waiting[agent_id]
        if not waiting:
            break
        if time.monotonic() >= deadline:
            for agent_id in waiting:
                outcomes[agent_id] = Outcome(agent_id, "failed", reason="its daemon did not answer in time")
            break
        time.sleep(POLL)
    return outcomes


def _start_tmux(tmux: Tmux, launches: list[Launch], restarting: dict[str, Launch], deadline: float,
                cwd: str) -> dict[str, Outcome]:
    """Start each launch in a pane of the swarm's session (made if absent; a dead pane of the
    agent is respawned), then wait for them all (and for the ``restarting`` ones)."""
    panes_of: dict[str, str] = {}
    if launches:
        existing = {p.agent: p for p in tmux.panes()}
        session = tmux.exists()
        for launch in launches:
            old = existing.get(launch.agent.id)
            if old is not None:  # its pane from an earlier up (its daemon exited, or never answered)
                tmux.respawn(old.pane_id, launch, cwd)
                panes_of[launch.agent.id] = old.pane_id
            elif not session:
                panes_of[launch.agent.id] = tmux.create(launch, cwd)
                session = True
            else:
                panes_of[launch.agent.id] = tmux.add(launch, cwd)

    unsettled: dict[str, float] = {}  # panes seen dead before tmux had their exit status: since when

    def dead() -> dict[str, tuple[str, list[str]]]:
        if not panes_of:
            return {}
        panes = tmux.panes()
        if not panes:  # the session is gone (killed, or its server died)
            return {a: ("the tmux session is gone", []) for a in panes_of}
        out: dict[str, tuple[str, list[str]]] = {}
        for pane in panes:
            if not (pane.dead and panes_of.get(pane.agent) == pane.pane_id):
                continue
            # tmux marks a pane dead when its terminal closes and records the status when it reaps
            # the process: give it up to STATUS_GRACE seconds before saying the status is unknown
            first = unsettled.setdefault(pane.pane_id, time.monotonic())
            if not pane.status and time.monotonic() - first < STATUS_GRACE:
                continue
            out[pane.agent] = (f"its daemon exited with status {pane.status or '?'}", [])  # its tail: below
        return out

    outcomes = _wait_answering({launch.agent.id: launch for launch in launches} | restarting, deadline, dead)
    for agent_id, outcome in outcomes.items():
        if agent_id in panes_of:
            outcome.pane = panes_of[agent_id]
            outcome.mode = "tmux"
            if outcome.state == "failed" and not outcome.tail:
                outcome.tail = tmux.tail(panes_of[agent_id])
    return outcomes


def _start_detached(launches: list[Launch], restarting: dict[str, Launch], deadline: float) -> dict[str, Outcome]:
    """Start each launch detached under a keeper (as ``swarmbus start --detach``), all at once."""
    from swarmbus.supervise import StartFailed, log_path, spawn

    env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}

    def one(launch: Launch) -> Outcome:
        agent_id = launch.agent.id
        log = str(log_path(launch.paths))
        try:
            daemon = spawn(launch.argv, launch.paths, {**env, **launch.env},
                           timeout=max(1.0, deadline - time.monotonic()))
        except StartFailed as exc:
            return Outcome(agent_id, "failed", mode="detached", reason=str(exc), tail=exc.tail, log=log)
        except SwarmbusError as exc:
            return Outcome(agent_id, "failed", mode="detached", reason=str(exc), log=log)
        status = daemon.status or {}
        return Outcome(agent_id, "started", mode="detached", pid=daemon.pid, connected=bool(status.get("connected")),
                       log=log)

    outcomes: dict[str, Outcome] = {}
    if launches:
        with ThreadPoolExecutor(max_workers=len(launches)) as pool:
            for outcome in pool.map(one, launches):
                outcomes[outcome.agent_id] = outcome
    outcomes.update(_wait_answering(restarting, deadline, None))
    return outcomes


def _wait_connected(outcomes: dict[str, Outcome], launches: dict[str, Launch], deadline: float) -> None:
    """Give the daemons that answer a little time (up to ``deadline``) to connect to the broker."""
    while True:
        pending = [o for o in outcomes.values() if o.state in ("started", "running") and not o.connected]
        for outcome in pending:
            status = daemon_status(launches[outcome.agent_id].paths.socket, timeout=1.0)
            outcome.connected = bool(status and status.get("connected"))
            if not outcome.connected and status and status.get("last_error"):
                outcome.reason = f"not connected to the broker yet: {status['last_error']}"
            elif outcome.connected and outcome.reason and outcome.reason.startswith("not connected"):
                outcome.reason = None
        if all(o.connected for o in pending) or time.monotonic() >= deadline:
            for outcome in pending:
                if not outcome.connected and not outcome.reason:
                    outcome.reason = "not connected to the broker yet"
            return
        time.sleep(POLL * 2)


def run_up(args: argparse.Namespace) -> int:
    """``swarm up FILE``: 0 every daemon runs, 1 some did not come up."""
    if args.timeout <= 0:
        raise UsageError("--timeout must be more than 0 seconds")
    path = Path(args.file).expanduser()
    spec = load_swarm_file(path)
    tmux_exe = None if args.no_tmux else shutil.which("tmux")
    if args.attach:
        if args.no_tmux:
            raise UsageError("--attach needs tmux panes; with --no-tmux there is no session to attach to")
        if tmux_exe is None:
            raise UsageError("--attach needs tmux, which is not on PATH (the swarm would run as detached daemons)")
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise UsageError("--attach needs a terminal; attach later with `tmux -L swarmbus-"
                             f"{spec.name} attach -t swarmbus-{spec.name}`")
    state_dir, config = _state_dir(args)
    launches = _plan(spec, str(path), args, state_dir, config)
    by_id = {launch.agent.id: launch for launch in launches}
    deadline = time.monotonic() + args.timeout
    with _swarm_lock(state_dir, spec.name):
        record = read_record(state_dir, spec.name)
        entries = _entries(record)
        outcomes: dict[str, Outcome] = {}
        to_start: list[Launch] = []
        restarting: dict[str, Launch] = {}
        for launch in launches:
            daemon = _find_daemon(launch.paths)
            if daemon is not None:
                entry = entries.get(launch.agent.id)
                outcomes[launch.agent.id] = Outcome(
                    launch.agent.id, "running", mode=_agent_mode(daemon.pid, daemon.supervisor, entry), pid=daemon.pid,
                    connected=bool((daemon.status or {}).get("connected")),
                    pane=entry.get("pane") if entry and entry.get("pid") == daemon.pid else None)
            elif _has_keeper(launch.paths):  # crashed; its keeper restarts it
                restarting[launch.agent.id] = launch
            else:
                to_start.append(launch)
        tmux = _tmux_for(spec.name, record, tmux_exe) if tmux_exe else None
        new_record: dict[str, Any] = {
            "file": str(path.absolute()), "state_dir": str(state_dir), "state": "up",
            "tmux": (record or {}).get("tmux"),
            "agents": [{"agent_id": launch.agent.id, "role": launch.agent.role, "mode": "tmux" if tmux else "detached",
                        "started": True, "pid": None, "pane": None} for launch in launches],
        }
        # the agents of an earlier version of the file that still run stay in the record, for `down`
        new_record["agents"] += [e for a, e in entries.items() if a not in by_id and e.get("pid")]
        for entry in new_record["agents"]:
            outcome = outcomes.get(entry["agent_id"])
            if outcome is not None:  # already running: not ours to claim, unless an earlier up started it
                old = entries.get(entry["agent_id"]) or {}
                entry.update(mode=outcome.mode, pid=outcome.pid, pane=outcome.pane,
                             started=bool(old.get("started")) and old.get("pid") == outcome.pid)
        write_record(state_dir, spec.name, new_record)
        if tmux is not None:
            try:
                fresh = _start_tmux(tmux, to_start, restarting, deadline, str(state_dir))
            except TmuxError as exc:
                if tmux.exists():
                    raise
                print(f"swarmbus: {exc}; starting detached daemons instead", file=sys.stderr)
                tmux = None
                fresh = _start_detached(to_start, restarting, deadline)
        else:
            fresh = _start_detached(to_start, restarting, deadline)
        outcomes.update(fresh)
        if tmux is not None and tmux.exists():
            new_record["tmux"] = {"socket": tmux.socket_path(), "session": tmux.session, "exe": tmux.exe}
        for entry in new_record["agents"]:
            outcome = outcomes.get(entry["agent_id"])
            if outcome is not None and entry["agent_id"] in {launch.agent.id for launch in to_start}:
                entry.update(mode=outcome.mode or entry["mode"], pid=outcome.pid, pane=outcome.pane)
            elif outcome is not None and entry["agent_id"] in restarting:
                entry.update(mode="detached", pid=outcome.pid)
        write_record(state_dir, spec.name, new_record)
    _wait_connected(outcomes, by_id, min(deadline, time.monotonic() + CONNECT_GRACE))
    for launch in launches:
        outcomes[launch.agent.id].role = launch.agent.role
    ordered = [outcomes[launch.agent.id] for launch in launches]
    failed = [o for o in ordered if o.state == "failed"]
    if args.json:
        print_json({"swarm": spec.name, "file": str(path.absolute()), "ok": not failed,
                    "tmux": new_record["tmux"] if tmux is not None else None,
                    "record": str(record_path(state_dir, spec.name)),
                    "agents": [o.as_json() for o in ordered]})
    else:
        _print_up(spec, ordered, tmux)
    if args.attach and tmux is not None and tmux.exists():
        sys.stdout.flush()
        os.execvpe(tmux.exe, tmux.attach_argv(), tmux.env)  # noqa: S606 - argv, no shell
    return 1 if failed else 0


def _print_up(spec: SwarmSpec, ordered: list[Outcome], tmux: Tmux | None) -> None:
    started = sum(o.state == "started" for o in ordered)
    running = sum(o.state == "running" for o in ordered)
    failed = [o for o in ordered if o.state == "failed"]
    where = f"tmux session {tmux.session}" if tmux is not None and any(o.mode == "tmux" for o in ordered) else (
        "detached daemons")
    print(f"swarm {spec.name}: {started} started, {running} already running, {len(failed)} failed ({where})")
    width = max(len(o.agent_id) for o in ordered)
    for o in ordered:
        label = {"started": "started", "running": "running", "failed": "FAILED"}[o.state]
        detail = [f"pid {o.pid}"] if o.pid else []
        if o.mode:
            detail.append(o.mode if o.state != "running" else f"already running ({o.mode})")
        if o.role:
            detail.append(f"role {o.role}")
        if o.state != "failed":
            detail.append("connected" if o.connected else safe_text(o.reason or "not connected yet"))
        else:
            detail.append(safe_text(o.reason or "failed"))
        print(f"  {label:<8} {o.agent_id:<{width}}  " + ", ".join(detail))
        if o.state == "failed" and o.tail:
            print(f"           last lines of its {'pane' if o.pane else 'log'}{f' ({o.log})' if o.log and not o.pane else ''}:")
            for line in o.tail:
                print(f"             {safe_text(line)}")
    if tmux is not None and any(o.mode == "tmux" for o in ordered):
        print(f"look:   {tmux.attach_hint()}")
    print(f"status: swarmbus swarm status {spec.name}")
    print(f"stop:   swarmbus swarm down {spec.name}")


# -- down and status ---------------------------------------------------------------------------------


def _resolve(target: str, state_dir: Path, action: str) -> tuple[str, SwarmSpec | None, dict[str, Any] | None]:
    """FILE or NAME -> (name, the file's spec or None, the record or None).

    :raises UsageError: NAME is neither a file nor a swarm started here.
    :raises ConfigError: the file is not a valid swarm file."""
    from swarmbus.envelope import AGENT_ID_RE

    path = Path(target).expanduser()
    if path.is_file() or "/" in target or target.endswith(".toml") or not AGENT_ID_RE.match(target):
        spec = load_swarm_file(path)
        return spec.name, spec, read_record(state_dir, spec.name)
    record = read_record(state_dir, target)
    if record is None:
        raise UsageError(f"no swarm named {target!r} was started here (no record {record_path(state_dir, target)}); "
                         f"give its file instead: swarmbus swarm {action} FILE")
    return target, None, record


def _members(spec: SwarmSpec | None, record: dict[str, Any] | None) -> list[tuple[str, str | None]]:
    """(agent id, role) of the file's agents, then the record's others."""
    out: dict[str, str | None] = {}
    for agent in spec.agents if spec else []:
        out[agent.id] = agent.role
    for entry in (record or {}).get("agents", []):
        if isinstance(entry, dict) and isinstance(entry.get("agent_id"), str):
            out.setdefault(entry["agent_id"], entry.get("role"))
    return list(out.items())


def run_down(args: argparse.Namespace) -> int:
    """``swarm down FILE|NAME``: 0 all stopped, 1 one would not stop or was left alone."""
    if args.timeout <= 0:
        raise UsageError("--timeout must be more than 0 seconds")
    from swarmbus.supervise import stop

    state_dir, _config = _state_dir(args)
    name, spec, record = _resolve(args.target, state_dir, "down")
    members = _members(spec, record)
    entries = _entries(record)

    def one(member: tuple[str, str | None]) -> Outcome:
        agent_id, role = member
        paths = AgentPaths.for_agent(agent_id, state_dir)
        daemon = _find_daemon(paths)
        if daemon is not None and daemon.supervisor in ("systemd", "launchd"):
            return Outcome(agent_id, "left alone", mode=daemon.supervisor, pid=daemon.pid, role=role,
                           reason=f"it runs under {daemon.supervisor} (swarmbus init), which would start it again: "
                                  f"swarmbus stop --agent-id {agent_id}")
        try:
            result = stop(paths, timeout=args.timeout)
        except (SwarmbusError, OSError) as exc:
            return Outcome(agent_id, "failed", pid=daemon.pid if daemon else None, role=role, reason=str(exc))
        if result.pid is None:
            return Outcome(agent_id, "not running", role=role, reason=result.note)
        how = f"SIGKILL: it did not exit within {args.timeout:g}s of SIGTERM" if result.killed else "SIGTERM"
        return Outcome(agent_id, "stopped", pid=result.pid, role=role, reason=how,
                       mode=_agent_mode(daemon.pid, daemon.supervisor, entries.get(agent_id)) if daemon else None)

    with _swarm_lock(state_dir, name):
        with ThreadPoolExecutor(max_workers=max(1, len(members))) as pool:
            outcomes = list(pool.map(one, members))
        tmux = _tmux_for(name, record)
        killed_session = False
        if tmux is not None and tmux.exists():
            tmux.kill()
            killed_session = not tmux.exists()
        if record is not None:
            left = {o.agent_id: o for o in outcomes if o.state in ("left alone", "failed")}
            for entry in record.get("agents", []):
                if isinstance(entry, dict) and entry.get("agent_id") not in left:
                    entry.update(pid=None, pane=None)
            record["state"] = "down" if not left else "up"
            if killed_session or (tmux is not None and not tmux.exists()):
                record["tmux"] = None
            write_record(state_dir, name, record)
    bad = [o for o in outcomes if o.state in ("left alone", "failed")]
    if args.json:
        print_json({"swarm": name, "ok": not bad, "tmux_session_killed": killed_session,
                    "agents": [o.as_json() for o in outcomes]})
        return 1 if bad else 0
    stopped = sum(o.state == "stopped" for o in outcomes)
    print(f"swarm {name}: {stopped} stopped, {sum(o.state == 'not running' for o in outcomes)} were not running"
          + (f", {len(bad)} not stopped" if bad else ""))
    width = max((len(o.agent_id) for o in outcomes), default=0)
    for o in outcomes:
        detail = ", ".join(x for x in (f"pid {o.pid}" if o.pid else "", safe_text(o.reason or "")) if x)
        print(f"  {o.state:<12} {o.agent_id:<{width}}" + (f"  {detail}" if detail else ""))
    if killed_session and tmux is not None:
        print(f"killed the tmux session {tmux.session}")
    return 1 if bad else 0


def run_status(args: argparse.Namespace) -> int:
    """``swarm status FILE|NAME``: 0 every agent runs, 1 some do not."""
    state_dir, _config = _state_dir(args)
    name, spec, record = _resolve(args.target, state_dir, "status")
    entries = _entries(record)
    rows: list[dict[str, Any]] = []
    for agent_id, role in _members(spec, record):
        daemon = _find_daemon(AgentPaths.for_agent(agent_id, state_dir))
        if daemon is None:
            rows.append({"agent_id": agent_id, "role": role, "running": False, "pid": None, "mode": None,
                         "connected": None})
            continue
        rows.append({"agent_id": agent_id, "role": role, "running": True, "pid": daemon.pid,
                     "mode": _agent_mode(daemon.pid, daemon.supervisor, entries.get(agent_id)),
                     "connected": bool((daemon.status or {}).get("connected")) if daemon.status else None})
    tmux = _tmux_for(name, record)
    session = None
    if tmux is not None and (record or {}).get("tmux"):
        session = {"socket": (record or {})["tmux"].get("socket"), "session": tmux.session, "running": tmux.exists()}
    running = sum(r["running"] for r in rows)
    if args.json:
        file = str(Path(args.target).expanduser().absolute()) if spec is not None else (record or {}).get("file")
        print_json({"swarm": name, "file": file, "tmux": session, "running": running, "total": len(rows), "agents": rows})
        return 0 if running == len(rows) else 1
    print(f"swarm {name}: {running} of {len(rows)} running")
    width = max((len(r["agent_id"]) for r in rows), default=0)
    for r in rows:
        if not r["running"]:
            print(f"  {r['agent_id']:<{width}}  stopped")
            continue
        link = {True: "connected", False: "not connected", None: "not answering"}[r["connected"]]
        print(f"  {r['agent_id']:<{width}}  running  pid {r['pid']}, {r['mode']}, {link}"
              + (f", role {r['role']}" if r["role"] else ""))
    if session is not None and tmux is not None:
        print(f"tmux session {tmux.session}: " + (f"look: {tmux.attach_hint()}" if session["running"] else "gone"))
    return 0 if running == len(rows) else 1

