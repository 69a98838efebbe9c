"""``swarmbus init`` / ``swarmbus uninit``: turn this machine into a working swarmbus agent.

Common steps (core): the broker (reachable, or a local ``swarmbus broker`` user service), the
config file (everything the daemon needs at run time: agent id, host type, broker settings; edited
with the user's comments kept), the daemon (``--service``: a systemd or launchd user service, or a
detached daemon where no service manager works, see :mod:`swarmbus.cli.init_service`), then the
host type's own steps (from its plugin, via the ``swarmbus_host_types`` hook), and finally
``swarmbus doctor`` against the configured broker. Every step is a list of declarative changes
(:mod:`swarmbus.provision`): a second run changes nothing and says so, ``--dry-run`` lists every
file and command and changes nothing, and a failed step stops init with its reason and exit 1.
What init does is recorded in ``<state>/agents/<id>/init.json`` for ``uninit``, each undo record
saved before its change is made, so an init that fails, raises or is killed half-way can be undone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from swarmbus.cli.common import load_settings_for
from swarmbus.cli.init_service import detached_broker_changes
from swarmbus.cli.output import paint, pick_marks
from swarmbus.config import default_config_path, expand_broker_url, load_raw, read_config_file
from swarmbus.envelope import validate_own_id
from swarmbus.errors import SwarmbusError, UsageError
from swarmbus.paths import AgentPaths
from swarmbus.provision import Change, ProvisionError, StepResult, TomlEntries, Verify, run_step, undo
from swarmbus.settings import Settings

MARK = {"changed": "✓", "unchanged": "=", "would-change": "~", "failed": "✗"}
ASCII_MARK = {"changed": "+", "unchanged": "=", "would-change": "~", "failed": "x"}  # where stdout cannot encode MARK
MARK_COLOR = {"changed": "green", "unchanged": None, "would-change": "yellow", "failed": "red"}


def run(args: argparse.Namespace) -> int:
    if args.command == "uninit" or getattr(args, "remove", False):
        return _uninit(args)
    return _init(args)


def _config_path(args: argparse.Namespace) -> Path:
    return Path(args.config).expanduser() if args.config else default_config_path()


def _load_settings(args: argparse.Namespace, pm: Any = None) -> Settings:
    """``load_settings_for``, except that a config file which does not exist yet is fine: init
    writes it (and uninit may have removed it)."""
    path = _config_path(args)
    if path.is_file():
        return load_settings_for(args, pm=pm)
    from swarmbus.cli.common import cli_layer
    from swarmbus.config import CONFIG_ENV
    from swarmbus.logs import setup_logging
    from swarmbus.plugins import HookRelay
    from swarmbus.settings import build_settings

    env = {k: v for k, v in os.environ.items() if k != CONFIG_ENV}
    raw = load_raw(cli_layer(args), env=env, config_path=path)
    settings = build_settings(raw, HookRelay(pm).settings_sections() if pm is not None else None)
    setup_logging(settings.log_format, settings.log_level if "log_level" in raw.sources else "warning")
    return settings


def _manifest_path(settings: Settings, agent_id: str) -> Path:
    return AgentPaths.for_agent(agent_id, settings.state_dir).root / "init.json"


def _failing(label: str, message: str) -> Verify:
    """A step that cannot be done here: it fails with ``message`` when it runs."""

    def check() -> str:
        raise ProvisionError(message)

    return Verify(label, check)


def _broker_reachable(settings: Settings) -> str:
    from swarmbus.errors import BrokerUnreachable
    from swarmbus.transport.link import MqttLink, one_shot_client_id
    from swarmbus.transport.negotiated import ProtocolMemory

    link = MqttLink(settings.broker, client_id=one_shot_client_id(settings.broker.client_id_prefix, None, "init"),
                    reconnect_min=0.2, reconnect_max=1.0,
                    protocol_memory=ProtocolMemory.in_state_dir(settings.state_dir))
    import logging

    link.retry_log_level = logging.DEBUG
    link.start()
    try:
        link.wait_connected(settings.broker.connect_timeout)
        return f"broker {settings.broker.url} reachable (MQTT {link.protocol})"
    except BrokerUnreachable as exc:
        raise ProvisionError(str(exc)) from None
    finally:
        link.stop(timeout=2.0)


def _service_env(args: argparse.Namespace, host_type: str | None, supervisor: str | None = None) -> dict[str, str]:
    """The environment of a user service: the config file, PATH, the host type and state dir
    (also in the config file), and for the daemon ``SWARMBUS_SUPERVISOR`` (for ``swarmbus status``)."""
    env = {"SWARMBUS_CONFIG": str(_config_path(args)), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if host_type:
        env["SWARMBUS_HOST_TYPE"] = host_type
    if supervisor:
        env["SWARMBUS_SUPERVISOR"] = supervisor
    if os.environ.get("SWARMBUS_STATE_DIR"):
        env["SWARMBUS_STATE_DIR"] = os.environ["SWARMBUS_STATE_DIR"]
    return env


def _config_newer_than_daemon(config_path: Path, settings: Settings, agent_id: str) -> bool:
    """True when the running daemon started before the config file last changed (the user
    edited it, e.g. a plugin's section): it reads the file only at start, so init restarts it."""
    from swarmbus.control import daemon_status

    status = daemon_status(AgentPaths.for_agent(agent_id, settings.state_dir).socket)
    if not status or not isinstance(status.get("started_at"), int | float):
        return False
    try:
        return config_path.stat().st_mtime > float(status["started_at"])
    except OSError:
        return False


def _broker_step(settings: Settings, args: argparse.Namespace, manager: str | None, *,
                 start_one: bool = True) -> list[Change]:
    """Check the broker; when none answers on a local plain-TCP address (and ``--broker`` was not
    given), start one: a user service under ``manager``, else (``start_one``) a detached broker
    kept by swarmbus (``swarmbus broker --detach``), whose undo stops it."""
    check = Verify("the broker", lambda: _broker_reachable(settings))
    if args.broker:
        return [check]
    try:
        _broker_reachable(settings)
        return [check]
    except ProvisionError:
        pass
    b = settings.broker
    if b.host not in ("localhost", "127.0.0.1", "::1") or b.transport != "tcp" or b.tls:
        return [check]  # not ours to start: the check fails with the reason
    from swarmbus.dev_broker import find_mosquitto
    from swarmbus.service import plan_service

    if manager is None and not start_one:
        return [_failing("the broker", f"no broker at {b.url}, and --service none starts nothing: run `swarmbus "
                         f"broker --detach --port {b.effective_port}` yourself or pass --broker URL")]
    if find_mosquitto() is None:
        return [_failing("mosquitto", "no broker is running and mosquitto is not installed: apt-get install "
                         "mosquitto (or brew install mosquitto), or pass --broker URL")]

    def wait_broker() -> str:
        deadline = time.monotonic() + 15
        while True:
            try:
                return _broker_reachable(settings)
            except ProvisionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    if manager is None:  # a detached broker, kept by swarmbus; uninit stops it only if init started it
        return [*detached_broker_changes(_state_dir(settings), b.effective_port), Verify("the broker", wait_broker)]
    plan = plan_service("swarmbus-broker", "swarmbus development broker (mosquitto)",
                        [sys.executable, "-m", "swarmbus", "broker", "--port", str(b.effective_port)],
                        _service_env(args, None), manager)
    return [*plan.install, Verify("the broker", wait_broker)]


def _state_dir(settings: Settings) -> Path:
    """The state dir in use (``settings.state_dir``, else the platform default)."""
    from swarmbus.paths import default_state_dir

    return Path(settings.state_dir).expanduser() if settings.state_dir else default_state_dir()


NO_DAEMON_CHECKS = frozenset({"daemon", "presence"})
"""Doctor checks that cannot pass before the daemon runs (``--service none``)."""


def _doctor(settings: Settings, agent_id: str, *, expect_daemon: bool = True) -> str:
    from swarmbus.api import DoctorContext
    from swarmbus.control import daemon_status
    from swarmbus.plugins import HookRelay, get_plugin_manager

    socket = AgentPaths.for_agent(agent_id, settings.state_dir).socket
    deadline = time.monotonic() + 20
    while expect_daemon and not (daemon_status(socket) or {}).get("connected") and time.monotonic() < deadline:
        time.sleep(0.2)
    pm = get_plugin_manager()
    context = DoctorContext(settings=settings, agent_id=agent_id, cache={"plugin_infos": pm.infos})
    failed, warned = [], 0
    checks = HookRelay(pm).doctor_checks(settings)
    for check in checks:
        result = check.run(context)
        if result.status == "fail" and not expect_daemon and check.name in NO_DAEMON_CHECKS:
            continue  # no daemon was asked for
        if result.status == "fail":
            failed.append(f"{check.name}: {result.summary}" + (f" (fix: {result.fix})" if result.fix else ""))
        warned += result.status == "warn"
    if failed:
        raise ProvisionError("doctor found problems: " + "; ".join(failed))
    return f"doctor: {len(checks)} checks, none failed ({warned} warnings)"


def _print(result: StepResult) -> None:
    mark = pick_marks(MARK, ASCII_MARK)[result.status]
    print(f"[{paint(mark, MARK_COLOR[result.status])}] {result.name}: {result.status}")
    for line in result.lines:
        print(f"      {line}")


def _init(args: argparse.Namespace) -> int:
    from swarmbus.plugins import HookRelay, get_plugin_manager
    from swarmbus.service import plan_service

    if not args.agent_id:
        raise UsageError("swarmbus init needs --agent-id ID")
    agent_id = validate_own_id(args.agent_id)
    pm = get_plugin_manager()
    hosts = HookRelay(pm).host_types()
    host_type = args.host_type
    if host_type and host_type != "none" and host_type not in hosts:
        known = ", ".join(sorted(hosts)) or "none installed"
        raise UsageError(f"unknown host type {host_type!r} (installed: {known}); "
                         f"install its plugin, e.g. pip install swarmbus-{host_type}")
    host_type = None if host_type == "none" else host_type
    settings = _load_settings(args, pm=pm)
    settings.agent_id = agent_id
    settings.host_type = host_type
    config_path = _config_path(args)
    from swarmbus.cli.init_service import broker_note, choose, detached_changes, reboot_note, stop_detached_daemon

    mode = choose(getattr(args, "service", None) or "auto")
    manager = mode.manager
    paths = AgentPaths.for_agent(agent_id, settings.state_dir)

    values, warnings = _config_values(args, settings, agent_id, host_type, config_path)
    for warning in warnings:
        print(f"note: {warning}")
    config = TomlEntries(config_path, values)
    try:
        config_changes = bool(values) and config.pending()
    except ProvisionError:
        config_changes = False  # the config step fails with the reason
    # the daemon reads the config file only at start
    restart = config_changes or _config_newer_than_daemon(config_path, settings, agent_id)
    steps: list[tuple[str, list[Change]]] = [("broker", _broker_step(settings, args, manager,
                                                                     start_one=mode.kind != "none"))]
    steps.append(("config", [config] if values else []))
    if manager is not None:
        plan = plan_service(f"swarmbus-{agent_id}", f"swarmbus listener daemon for agent {agent_id}",
                            [sys.executable, "-m", "swarmbus", "start", "--agent-id", agent_id],
                            _service_env(args, host_type, manager), manager, restart=restart)
        # a detached daemon of this agent (from an init without a service manager, or by hand) would keep
        # the unit's daemon from owning the agent: it goes first
        steps.append(("service", [stop_detached_daemon(paths), *plan.install]))
    elif mode.kind == "detached":
        steps.append(("service", detached_changes(paths, args.config and str(config_path), restart=restart)))
    if host_type:
        for step in hosts[host_type].init_steps(settings):
            steps.append((f"{host_type}: {step.name}", list(step.changes)))
    expect_daemon = mode.kind != "none"
    steps.append(("doctor", [Verify("swarmbus doctor", lambda: _doctor(settings, agent_id, expect_daemon=expect_daemon))]))

    if args.dry_run:
        print(f"swarmbus init --dry-run for {agent_id} (host type {host_type or 'none'}) with service {mode.kind}: "
              "nothing will be changed")
    manifest = Manifest(_manifest_path(settings, agent_id), agent_id, host_type)
    results = []
    for name, changes in steps:
        # each undo record is saved before its change is made: an init killed half-way can be undone
        result = run_step(name, changes, dry_run=args.dry_run, on_undo=None if args.dry_run else manifest.add)
        results.append(result)
        _print(result)
        if result.status == "failed":
            break
    if not args.dry_run and manifest.path.exists():
        manifest.save()  # the host type of this run
    failed = [r for r in results if r.status == "failed"]
    if failed:
        print(f"init failed at step {failed[0].name!r}; nothing after it was done. Fix it and re-run "
              "(steps already done are kept and will show as unchanged; `swarmbus uninit` undoes them).",
              file=sys.stderr)
        return 1
    if args.dry_run:
        print("dry run: no file was written and no command was run")
        return 0
    locators = {k: v for k, v in _service_env(args, None).items() if k == "SWARMBUS_CONFIG"}
    if os.environ.get("SWARMBUS_STATE_DIR"):
        locators["SWARMBUS_STATE_DIR"] = os.environ["SWARMBUS_STATE_DIR"]
    if all(r.status == "unchanged" for r in results):
        print(f"nothing to change: {agent_id} was already set up, and doctor passes")
    elif mode.kind == "detached":
        from swarmbus.supervise import find_daemon, log_path

        daemon = find_daemon(paths)
        pid = f"pid {daemon.pid}, " if daemon else ""
        print(f"{agent_id} is set up: its daemon runs detached ({pid}log {log_path(paths)}) and doctor passes")
    elif mode.kind == "none":
        print(f"{agent_id} is set up without a daemon, and doctor passes (apart from the daemon checks)")
    else:
        print(f"{agent_id} is set up: its daemon runs as a user service and doctor passes")
    for line in reboot_note(mode, paths, args.config and str(config_path), host_type, locators):
        print(line)
    if manager is None and not args.broker:
        for line in broker_note(_state_dir(settings), settings.broker.effective_port, host_type):
            print(line)
    return 0


def _config_values(args: argparse.Namespace, settings: Settings, agent_id: str, host_type: str | None,
                   config_path: Path) -> tuple[dict[str, Any], list[str]]:
    """What init saves in the config file, so that a daemon started by hand (or by the
    SessionStart hook) behaves like the service: the agent id (unless the file names another),
    the host type, the state dir and the broker settings init was given. Returns (nested values,
    notes for the user). A password is never written: use --password-file."""
    from swarmbus.cli.common import cli_layer

    values: dict[str, Any] = {}
    notes: list[str] = []
    existing = read_config_file(config_path).get("agent_id") if config_path.is_file() else None
    if existing in (None, agent_id):
        values["agent_id"] = agent_id  # the default id for interactive commands; never overwrite another
    if host_type:
        values["host_type"] = host_type
    given = cli_layer(args)
    if "state_dir" in given:
        values["state_dir"] = str(Path(str(given["state_dir"][0])).expanduser().resolve())
    broker: dict[str, Any] = {}
    in_url = expand_broker_url(args.broker) if args.broker else {}
    if args.broker:
        broker["url"] = settings.broker.url  # normalised, with the port; credentials are separate keys
        if in_url.get("broker.username") and "broker.username" not in given:
            broker["username"] = in_url["broker.username"]
    for key, (value, flag) in given.items():
        if not key.startswith("broker.") or key == "broker.url" or (key == "broker.port" and args.broker):
            continue
        leaf = key.removeprefix("broker.")
        if leaf == "password":
            notes.append(f"{flag} is not saved in {config_path}: give the daemon the password with --password-file "
                         "(saved) or SWARMBUS_BROKER_PASSWORD")
            continue
        if leaf in ("password_file", "ca_certs", "certfile", "keyfile"):
            value = str(Path(str(value)).expanduser().resolve())
        broker[leaf] = value
    if in_url.get("broker.password") and "broker.password" not in given:
        notes.append(f"the password in --broker is not saved in {config_path}: use --password-file")
    if broker:
        values["broker"] = broker
    return values, notes


class Manifest:
    """``<state>/agents/<id>/init.json`` (0600): the undo records of every init run, oldest
    first, with the agent id and host type. :meth:`add` saves each new record at once."""

    def __init__(self, path: Path, agent_id: str, host_type: str | None) -> None:
        self.path = path
        self.agent_id = agent_id
        self.host_type = host_type
        self.undo: list[dict[str, Any]] = json.loads(path.read_text()).get("undo", []) if path.exists() else []

    def add(self, record: dict[str, Any]) -> None:
        if record not in self.undo:
            self.undo.append(record)
            self.save()

    def save(self) -> None:
        _write_private(self.path, json.dumps({"agent_id": self.agent_id, "host_type": self.host_type,
                                              "undo": self.undo}, indent=2))


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, mode 0600 (the records may hold the config file as it was)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _retire_on_broker(settings: Settings, agent_id: str) -> None:
    """After uninit: end the agent's broker session and clear its retained presence (best effort:
    the broker may be gone, e.g. the one init started and uninit just stopped)."""
    from swarmbus.oneshot import retire_agent

    try:
        for line in retire_agent(settings, agent_id):
            print(f"  {line}")
    except SwarmbusError as exc:
        print(f"  the broker may still hold {agent_id}'s session and presence ({exc}); when it runs: "
              f"swarmbus retire {agent_id}")


def _uninit(args: argparse.Namespace) -> int:
    if not args.agent_id:
        raise UsageError("swarmbus uninit needs --agent-id ID")
    agent_id = validate_own_id(args.agent_id)
    settings = _load_settings(args)
    path = _manifest_path(settings, agent_id)
    if not path.exists():
        print(f"nothing to undo: swarmbus init has not set up {agent_id} here ({path} is absent)")
        return 0
    records = json.loads(path.read_text()).get("undo", [])
    if args.dry_run:
        for record in reversed(records):
            print(f"would undo: {record.get('kind')} {record.get('path') or ' '.join(record.get('argv', []))}")
        return 0
    failed: list[dict[str, Any]] = []
    for record in reversed(records):
        try:
            line = undo(record)
        except (OSError, ProvisionError, SwarmbusError, ValueError, subprocess.SubprocessError) as exc:
            failed.insert(0, record)
            line = f"failed: {exc}"
        if line:
            print(f"  {line}")
    if not failed:
        path.unlink()
        print(f"{agent_id}: what init wrote has been removed")
        _retire_on_broker(settings, agent_id)
        return 0
    # keep what could not be undone, so that a second uninit retries it
    data = json.loads(path.read_text())
    _write_private(path, json.dumps({**data, "undo": failed}, indent=2))
    print(f"{agent_id}: {len(failed)} undo steps failed; fix the cause and run uninit again", file=sys.stderr)
    return 1
