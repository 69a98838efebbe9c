"""``swarmbus broker --detach | --stop | --status``: the local broker in the background, kept
(restarted when it crashes) without a service manager; the mechanism is
:mod:`swarmbus.local_broker`."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from swarmbus.dev_broker import BrokerConfig
from swarmbus.kept import describe_last_exit, last_run


def start_argv(state_dir: Path, port: int) -> list[str]:
    """``python -m swarmbus broker --detach --port PORT --state-dir DIR`` (what init runs)."""
    return [sys.executable, "-m", "swarmbus", "broker", "--detach", "--port", str(port), "--state-dir", str(state_dir)]


def stop_argv(state_dir: Path, port: int) -> list[str]:
    """``python -m swarmbus broker --stop --port PORT --state-dir DIR`` (init's undo)."""
    return [sys.executable, "-m", "swarmbus", "broker", "--stop", "--port", str(port), "--state-dir", str(state_dir)]


def _detach(args: argparse.Namespace, state: Path, cfg: BrokerConfig) -> int:
    from swarmbus.cli.admin import _port_taken
    from swarmbus.local_broker import PortTaken, StartFailed, start_detached

    try:
        broker = start_detached(state, cfg.port, cfg.bind)
    except PortTaken as exc:
        raise _port_taken(exc.config) from None
    except StartFailed as exc:
        sys.stderr.write(f"swarmbus: error: could not start the broker: {exc}\n")
        sys.stderr.write("".join(f"    {line}\n" for line in exc.tail) if exc.tail else f"  (nothing in {exc.log})\n")
        sys.stderr.write(f"  hint: see {exc.log} and {cfg.log_path}\n")
        return 1
    if not broker.started:
        if broker.keeper is None:
            print(f"an MQTT broker already listens on {broker.url} (not one `swarmbus broker --detach` started): "
                  "nothing to start")
        else:
            print(f"the broker on {broker.url} already runs (pid {broker.pid}, kept by pid {broker.keeper})")
        return 0
    print(f"started the broker on {broker.url}: mosquitto pid {broker.pid}, kept by pid {broker.keeper} "
          "(restarted if it crashes)")
    print(f"  config {cfg.conf_path}, log {broker.log} and {cfg.log_path}")
    print(f"  stop it: swarmbus broker --stop --port {cfg.port}   (it does not survive a reboot; "
          f"crontab -e: @reboot {shlex.join(start_argv(state, cfg.port))})")
    return 0


def _stop(state: Path, cfg: BrokerConfig, timeout: float) -> int:
    from swarmbus.local_broker import stop_detached

    keeper, killed = stop_detached(state, cfg.port, timeout=timeout)
    if keeper is None:
        print(f"no detached broker runs on port {cfg.port} (none that `swarmbus broker --detach` started "
              f"with state dir {state})")
        return 0
    how = "SIGKILL after SIGTERM timed out" if killed else "SIGTERM"
    pid = f"mosquitto pid {keeper.child}, " if keeper.child else ""
    print(f"stopped the broker on port {cfg.port} ({pid}keeper pid {keeper.pid}, {how})")
    return 0


def _status(args: argparse.Namespace, state: Path, cfg: BrokerConfig) -> int:
    from swarmbus.dev_broker import answers_mqtt
    from swarmbus.local_broker import broker_files, find_broker_keeper

    keeper = find_broker_keeper(state, cfg.port)
    answers = answers_mqtt(cfg.connect_host, cfg.port)
    files = broker_files(state, cfg.port)
    info = {"port": cfg.port, "running": keeper is not None, "answers_mqtt": answers,
            "keeper": keeper.pid if keeper else None, "pid": keeper.child if keeper else None,
            "restarts": keeper.restarts if keeper else None, "log": str(files.log), "last_run": last_run(files)}
    if args.json:
        print(json.dumps(info))
    elif keeper is None:
        print(f"no detached broker runs on port {cfg.port}"
              + (" (but an MQTT broker answers there: not one swarmbus started)" if answers else ""))
        last = info["last_run"]
        if isinstance(last, dict) and last.get("reason"):
            print(f"  its last keeper {last.get('state')}: {last['reason']}")
    else:
        print(f"the broker on port {cfg.port} runs: mosquitto pid {keeper.child}, kept by pid {keeper.pid}, "
              f"{keeper.restarts} restarts" + (f" (last: it {describe_last_exit(keeper.state)})" if keeper.restarts
                                                 else ""))
        print(f"  answers MQTT: {'yes' if answers else 'no (starting, or between restarts)'}; log {files.log}")
    return 0 if keeper is not None else 1


def run_detached(args: argparse.Namespace, state: Path, cfg: BrokerConfig) -> int:
    """``--detach``: 0 it runs (already, or now), 1 it could not be started, 2 usage (the port is
    taken by something else). ``--stop``: 0 stopped or none ran, 1 it would not stop.
    ``--status``: 0 a detached broker runs, 1 none does."""
    if args.detach:
        return _detach(args, state, cfg)
    if args.stop:
        return _stop(state, cfg, args.timeout)
    return _status(args, state, cfg)
