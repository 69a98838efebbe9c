"""``swarmbus init`` / ``swarmbus uninit``: turn this machine into a working swarmbus agent.

Common steps (core): the broker (reachable, or a local ``swarmbus broker`` user service), the
config file, the daemon as a user service (systemd or launchd), then the host type's own steps
(from its plugin, via the ``swarmbus_host_types`` hook), and finally ``swarmbus doctor``
against the configured broker. Every step is a list of declarative changes
(:mod:`swarmbus.provision`): a second run changes nothing and says so, ``--dry-run`` lists every
file and command and changes nothing, and a failed step stops init with its reason and exit 1.
What init wrote is recorded in ``<state>/agents/<id>/init.json`` for ``uninit``.
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
from swarmbus.config import default_config_path, load_raw, read_config_file
from swarmbus.envelope import validate_own_id
from swarmbus.errors import SwarmbusError, UsageError
from swarmbus.paths import AgentPaths
from swarmbus.provision import Change, ProvisionError, StepResult, TomlEntries, Verify, run_step, undo
from swarmbus.settings import Settings

MARK = {"changed": "✓", "unchanged": "=", "would-change": "~", "failed": "✗"}


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

    link = MqttLink(settings.broker, client_id=one_shot_client_id(settings.broker.client_id_prefix, None, "init"),
                    reconnect_min=0.2, reconnect_max=1.0)
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


def _service_env(args: argparse.Namespace, host_type: str | None) -> dict[str, str]:
    env = {"SWARMBUS_CONFIG": str(_config_path(args)), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if host_type:
        env["SWARMBUS_HOST_TYPE"] = host_type
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


def _broker_step(settings: Settings, args: argparse.Namespace, manager: str | None) -> list[Change]:
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
    if manager is None:
        return [_failing("the broker", f"no broker at {b.url} and no user service manager to run one: "
                         "run `swarmbus broker` yourself or pass --broker URL")]
    from swarmbus.dev_broker import find_mosquitto
    from swarmbus.service import plan_service

    if find_mosquitto() is None:
        return [_failing("mosquitto", "no broker is running and mosquitto is not installed: apt-get install "
                         "mosquitto (or brew install mosquitto), or pass --broker URL")]
    plan = plan_service("swarmbus-broker", "swarmbus development broker (mosquitto)",
                        [sys.executable, "-m", "swarmbus", "broker", "--port", str(b.effective_port)],
                        _service_env(args, None), manager)

    def wait_broker() -> str:
        deadline = time.monotonic() + 15
        while True:
            try:
                return _broker_reachable(settings)
            except ProvisionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    return [*plan.install, Verify("the broker", wait_broker)]


def _doctor(settings: Settings, agent_id: str) -> str:
    from swarmbus.api import DoctorContext
    from swarmbus.control import daemon_status
    from swarmbus.plugins import HookRelay, get_plugin_manager

    socket = AgentPaths.for_agent(agent_id, settings.state_dir).socket
    deadline = time.monotonic() + 20
    while not (daemon_status(socket) or {}).get("connected") and time.monotonic() < deadline:
        time.sleep(0.2)
    pm = get_plugin_manager()
    context = DoctorContext(settings=settings, agent_id=agent_id, cache={"plugin_infos": pm.infos})
    failed, warned = [], 0
    checks = HookRelay(pm).doctor_checks(settings)
    for check in checks:
        result = check.run(context)
        if result.status == "fail":
            failed.append(f"{check.name}: {result.summary}" + (f" (fix: {result.fix})" if result.fix else ""))
        warned += result.status == "warn"
    if failed:
        raise ProvisionError("doctor found problems: " + "; ".join(failed))
    return f"doctor: {len(checks)} checks, none failed ({warned} warnings)"


def _print(result: StepResult) -> None:
    print(f"[{MARK[result.status]}] {result.name}: {result.status}")
    for line in result.lines:
        print(f"      {line}")


def _init(args: argparse.Namespace) -> int:
    from swarmbus.plugins import HookRelay, get_plugin_manager
    from swarmbus.service import plan_service, service_manager

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
    manager = service_manager()

    values: dict[str, Any] = {}
    if args.broker:
        values["broker"] = {"url": settings.broker.url}
    existing = read_config_file(config_path).get("agent_id") if config_path.is_file() else None
    if existing in (None, agent_id):
        values["agent_id"] = agent_id  # the default id for interactive commands; never overwrite another

    config = TomlEntries(config_path, values)
    try:
        config_changes = bool(values) and config.pending()
    except ProvisionError:
        config_changes = False  # the config step fails with the reason
    steps: list[tuple[str, list[Change]]] = [("broker", _broker_step(settings, args, manager))]
    steps.append(("config", [config] if values else []))
    if manager is None:
        steps.append(("service", [_failing("a user service manager", "no systemd (systemctl --user) or launchd "
                                           f"here: run `swarmbus start --agent-id {agent_id}` under your own supervisor")]))
    else:
        plan = plan_service(f"swarmbus-{agent_id}", f"swarmbus listener daemon for agent {agent_id}",
                            [sys.executable, "-m", "swarmbus", "start", "--agent-id", agent_id],
                            _service_env(args, host_type), manager,
                            # the daemon reads the config file only at start
                            restart=config_changes or _config_newer_than_daemon(config_path, settings, agent_id))
        steps.append(("service", plan.install))
    if host_type:
        for step in hosts[host_type].init_steps(settings):
            steps.append((f"{host_type}: {step.name}", list(step.changes)))
    steps.append(("doctor", [Verify("swarmbus doctor", lambda: _doctor(settings, agent_id))]))

    if args.dry_run:
        print(f"swarmbus init --dry-run for {agent_id} (host type {host_type or 'none'}): nothing will be changed")
    records: list[dict[str, Any]] = []
    results = []
    for name, changes in steps:
        result = run_step(name, changes, dry_run=args.dry_run)
        results.append(result)
        records.extend(result.undo)
        _print(result)
        if result.status == "failed":
            break
    if not args.dry_run and (records or _manifest_path(settings, agent_id).exists()):
        _save_manifest(settings, agent_id, host_type, records)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        print(f"init failed at step {failed[0].name!r}; nothing after it was done. Fix it and re-run "
              "(steps already done are kept and will show as unchanged).", file=sys.stderr)
        return 1
    if args.dry_run:
        print("dry run: no file was written and no command was run")
    elif all(r.status == "unchanged" for r in results):
        print(f"nothing to change: {agent_id} was already set up, and doctor passes")
    else:
        print(f"{agent_id} is set up: its daemon runs as a user service and doctor passes")
    return 0


def _save_manifest(settings: Settings, agent_id: str, host_type: str | None, records: list[dict[str, Any]]) -> None:
    path = _manifest_path(settings, agent_id)
    old: list[dict[str, Any]] = []
    if path.exists():
        old = json.loads(path.read_text()).get("undo", [])
    merged = old + [r for r in records if r not in old]
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(json.dumps({"agent_id": agent_id, "host_type": host_type, "undo": merged}, indent=2))


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
        return 0
    # keep what could not be undone, so that a second uninit retries it
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "undo": failed}, indent=2))
    print(f"{agent_id}: {len(failed)} undo steps failed; fix the cause and run uninit again", file=sys.stderr)
    return 1
