"""``swarmbus config | plugins | broker``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swarmbus.cli.common import load_settings_for, print_json, raw_config

if TYPE_CHECKING:
    from swarmbus.dev_broker import BrokerConfig
    from swarmbus.errors import UsageError


def run(args: argparse.Namespace) -> int:
    return {"config": _config, "plugins": _plugins, "broker": _broker}[args.command](args)


def _flatten(model: Any, prefix: str = "") -> dict[str, Any]:
    from pydantic import BaseModel, SecretStr

    out: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            out.update(_flatten(value, key + "."))
        elif isinstance(value, SecretStr):
            out[key] = "********"
        elif isinstance(value, Path):
            out[key] = str(value)
        else:
            out[key] = value
    return out


def _config(args: argparse.Namespace) -> int:
    if args.action == "path":  # the path, whether or not the file exists yet
        from swarmbus.config import default_config_path

        print(Path(args.config).expanduser() if args.config else default_config_path())
        return 0
    from swarmbus.config import FIELD_BY_KEY
    from swarmbus.plugins import get_plugin_manager

    pm = get_plugin_manager()
    settings = load_settings_for(args, pm=pm)
    raw = raw_config(args)
    if args.action == "check":
        settings.broker.resolved_password()  # a password file must be readable
        if args.json:
            print_json({"ok": True, "config_file": str(raw.config_path), "config_file_exists": raw.config_exists})
        else:
            where = raw.config_path if raw.config_exists else f"{raw.config_path} (absent: defaults and environment only)"
            print(f"configuration is valid ({where})")
        return 0
    values = _flatten(settings)
    values.pop("plugins", None)
    values["broker.url"] = settings.broker.url
    rows = []
    for key, value in values.items():
        spec = FIELD_BY_KEY.get(key)
        if spec is not None and spec.secret and value is not None:
            value = "********"
        source = raw.sources.get(key, "default")
        if key == "broker.url":
            source = "derived"
        rows.append({"key": key, "value": value, "source": source})
    plugin_rows: dict[str, dict[str, Any]] = {
        name: {"values": _flatten(section) if hasattr(section, "model_fields") else section,
               "source": raw.plugin_sources.get(name, "default")}
        for name, section in settings.plugins.items()
    }
    if args.json:
        print_json({"config_file": str(raw.config_path), "config_file_exists": raw.config_exists,
                    "settings": rows, "plugins": plugin_rows})
        return 0
    print(f"# config file: {raw.config_path}{'' if raw.config_exists else ' (absent)'}")
    width = max(len(r["key"]) for r in rows)
    for r in rows:
        print(f"{r['key']:<{width}}  {r['value']!s:<30}  {r['source']}")
    for name, info in plugin_rows.items():
        for key, value in info["values"].items():
            print(f"plugins.{name}.{key}  {value!s:<30}  {info['source']}")
    return 0


def _plugins(args: argparse.Namespace) -> int:
    from swarmbus.plugins import get_plugin_manager

    infos = [i for i in get_plugin_manager().infos.values() if args.all or not i.builtin]
    if args.json:
        print_json([i.to_json() for i in infos])
        return 0
    if not infos:
        print("no plugins installed (built-ins: swarmbus plugins --all)")
        return 0
    for i in infos:
        state = "" if i.status == "loaded" else f" [{i.status}{': ' + i.error if i.error else ''}]"
        label = i.name if i.builtin else f"{i.name} ({i.distribution} {i.version})"
        print(f"{label}{state}")
        if i.hooks:
            print(f"    hooks: {', '.join(i.hooks)}")
    return 0


def _broker(args: argparse.Namespace) -> int:  # returns only via print-config or an error
    if getattr(args, "broker_action", None) == "acl":
        from swarmbus.cli.broker_acl import run as run_acl

        return run_acl(args)
    from swarmbus.dev_broker import (
        BrokerConfig,
        MosquittoNotFound,
        find_mosquitto,
        port_in_use,
        render_mosquitto_conf,
        write_mosquitto_conf,
    )
    from swarmbus.errors import SwarmbusError
    from swarmbus.paths import default_state_dir

    state = Path(args.state_dir).expanduser() if args.state_dir else (
        Path(os.environ["SWARMBUS_STATE_DIR"]) if os.environ.get("SWARMBUS_STATE_DIR") else default_state_dir())
    secure = getattr(args, "secure", None)
    nats = getattr(args, "engine", "mosquitto") == "nats"
    if secure and not nats and (args.detach or args.stop or args.status):
        from swarmbus.errors import UsageError

        raise UsageError("--secure runs mosquitto in the foreground or prints its config (--print-config): "
                         "not with --detach, --stop or --status (NATS takes --secure with all of them)")
    if getattr(args, "engine", "mosquitto") == "nats":
        from swarmbus.cli.broker_nats import run as run_nats

        return run_nats(args, state)
    if getattr(args, "nodes", None) is not None:
        from swarmbus.errors import UsageError

        raise UsageError("--nodes needs --engine nats (mosquitto runs one node)")
    try:
        cfg = BrokerConfig(state_dir=state / "broker" / str(args.port), port=args.port, bind=args.bind,
                           **(_secure_fields(Path(secure)) if secure else {}))
    except ValueError as exc:  # a port out of range, whitespace in a path
        from swarmbus.errors import UsageError

        raise UsageError(str(exc)) from None
    if args.detach or args.stop or args.status:
        from swarmbus.cli.broker_detach import run_detached

        return run_detached(args, state, cfg)
    if args.print_config:
        sys.stdout.write(render_mosquitto_conf(cfg))
        return 0
    binary = find_mosquitto()
    if binary is None:
        raise SwarmbusError(str(MosquittoNotFound()), hint="apt-get install mosquitto  (or: brew install mosquitto)")
    if port_in_use(cfg.bind, cfg.port):
        raise _port_taken(cfg)
    conf = write_mosquitto_conf(cfg)
    how = f" (users and ACL from {secure}{', TLS' if cfg.tls else ''})" if secure else ""
    print(f"swarmbus broker: mosquitto on {args.bind}:{args.port}{how}, config {conf}, log {cfg.log_path}",
          file=sys.stderr, flush=True)
    os.execv(binary, [binary, "-c", str(conf)])  # noqa: S606 - replace ourselves with mosquitto


def _secure_fields(directory: Path) -> dict[str, Any]:
    """``BrokerConfig`` fields for ``swarmbus broker --secure DIR``: DIR's password and ACL files,
    anonymous clients refused, and the TLS listener files DIR's registry records (when it does).

    :raises UsageError: DIR holds no set-up made by ``swarmbus broker acl``.
    :raises ConfigError: its registry.json cannot be read.
    """
    from swarmbus.broker_acl import acl_file, load_registry, passwd_file
    from swarmbus.errors import UsageError

    directory = directory.expanduser().absolute()
    registry = load_registry(directory)
    if registry is None or not passwd_file(directory).is_file() or not acl_file(directory).is_file():
        raise UsageError(f"--secure {directory}: no set-up from `swarmbus broker acl` there (registry.json, passwd, acl)",
                         hint=f"make one: swarmbus broker acl AGENT ... --dir {directory}")
    fields: dict[str, Any] = {"password_file": passwd_file(directory), "acl_file": acl_file(directory),
                              "allow_anonymous": False}
    listener = registry.listener
    if "certfile" in listener and "keyfile" in listener:
        fields.update(certfile=Path(listener["certfile"]), keyfile=Path(listener["keyfile"]))
        if "cafile" in listener:
            fields["cafile"] = Path(listener["cafile"])
    return fields


def _port_taken(cfg: BrokerConfig) -> UsageError:
    """The usage error (exit 2) for ``swarmbus broker`` on a port something already listens on:
    what is there (an MQTT broker, or another program), and what to do."""
    from swarmbus.dev_broker import answers_mqtt, port_in_use
    from swarmbus.errors import UsageError

    host, port = cfg.connect_host, cfg.port

    def where(p: int | str) -> str:
        return f"[{host}]:{p}" if ":" in host else f"{host}:{p}"

    other = next((p for p in range(port + 1, min(port + 100, 65536)) if not port_in_use(cfg.bind, p)), None)
    instead = f"swarmbus broker --port {other or 'N'}, then pass --broker mqtt://{where(other or 'N')}"
    if answers_mqtt(host, port):
        use = "nothing to pass: localhost:1883 is the default" if port == 1883 else f"pass --broker mqtt://{where(port)}"
        return UsageError(
            f"port {port} is taken: an MQTT broker already listens on {where(port)} (perhaps the system's "
            "mosquitto service), so there is no need to start another",
            hint=f"use that broker ({use}; `swarmbus doctor` checks it), or run a private one on another port: {instead}",
        )
    return UsageError(
        f"port {port} is taken: another program listens on {where(port)}, and it does not answer MQTT",
        hint=f"run the broker on another port: {instead}; or stop that program (`ss -ltnp 'sport = :{port}'` names it)",
    )
