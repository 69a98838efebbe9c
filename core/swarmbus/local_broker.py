"""A local mosquitto run detached under a keeper (``swarmbus broker --detach``), for machines
without a user service manager: start it, say whether it runs, stop it.

Its files are in ``<state>/broker/<port>/`` (private, 0700), beside the generated
``mosquitto.conf``, ``mosquitto.db`` and ``mosquitto.log`` of :mod:`swarmbus.dev_broker`:
``broker.pid`` (mosquitto's pid), ``broker.log`` (the keeper's lines and mosquitto's console
output), ``keeper.lock`` and ``keeper.json`` (see :mod:`swarmbus.keeper`). The keeper restarts
mosquitto when it crashes. It does not survive a reboot.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from swarmbus import kept
from swarmbus.dev_broker import BrokerConfig, answers_mqtt, find_mosquitto, port_in_use, write_mosquitto_conf
from swarmbus.errors import SwarmbusError
from swarmbus.kept import Keeper, KeptFiles, StartFailed
from swarmbus.ownership import pid_alive
from swarmbus.paths import ensure_private_dir

READY_TIMEOUT = 15.0
"""Seconds ``broker --detach`` waits for mosquitto to answer MQTT on its port."""
STOP_TIMEOUT = 20.0


def broker_dir(state_dir: Path, port: int) -> Path:
    """``<state>/broker/<port>``: the broker's config, database, logs and keeper files."""
    return state_dir / "broker" / str(port)


def broker_files(state_dir: Path, port: int) -> KeptFiles:
    """The kept broker's files for ``port`` under ``state_dir``."""
    return KeptFiles(broker_dir(state_dir, port), "broker")


def find_broker_keeper(state_dir: Path, port: int) -> Keeper | None:
    """The keeper of the detached broker on ``port`` (its lock says so), or None."""
    return kept.find_keeper(broker_files(state_dir, port))


@dataclass(frozen=True)
class DetachedBroker:
    """The outcome of :func:`start_detached`: ``started`` (False: one already ran), ``keeper``
    (its keeper's pid; None: an MQTT broker not started by swarmbus already listens on the
    port), ``pid`` (mosquitto's pid, when known), ``url``, ``log`` (``broker.log``)."""

    started: bool
    keeper: int | None
    pid: int | None
    url: str
    log: Path


def _url(cfg: BrokerConfig) -> str:
    host = cfg.connect_host
    return f"mqtt://[{host}]:{cfg.port}" if ":" in host else f"mqtt://{host}:{cfg.port}"


def start_detached(state_dir: Path, port: int, bind: str = "127.0.0.1", *,
                   timeout: float = READY_TIMEOUT) -> DetachedBroker:
    """Make sure a broker answers MQTT on ``bind``:``port``: when one already does (ours, or any
    other), say so; else write the config and start mosquitto under a keeper, waiting up to
    ``timeout`` seconds until it answers.

    :raises PortTaken: the port is taken by a program that does not answer MQTT.
    :raises SwarmbusError: mosquitto is not installed.
    :raises UsageError: the state dir is not private to this user.
    :raises StartFailed: mosquitto exited or did not answer in time (it was stopped).
    """
    cfg = BrokerConfig(state_dir=broker_dir(state_dir, port), port=port, bind=bind)
    files = broker_files(state_dir, port)
    keeper = kept.find_keeper(files)
    if answers_mqtt(cfg.connect_host, port):
        return DetachedBroker(False, keeper.pid if keeper else None, keeper.child if keeper else None, _url(cfg),
                              files.log)
    if keeper is not None:  # between restarts: the keeper brings it back
        kept.stop_keeper(keeper.pid, timeout=STOP_TIMEOUT, child=keeper.child)
    if port_in_use(bind, port):
        raise PortTaken(cfg)
    mosquitto = find_mosquitto()
    if mosquitto is None:
        raise SwarmbusError("mosquitto is not installed", hint="apt-get install mosquitto  (or: brew install mosquitto)")
    ensure_private_dir(state_dir)
    ensure_private_dir(cfg.state_dir.parent)
    ensure_private_dir(cfg.state_dir)
    conf = write_mosquitto_conf(cfg)

    def answering(child: int | None) -> int | None:
        return child if child and pid_alive(child) and answers_mqtt(cfg.connect_host, port, timeout=0.5) else None

    keeper_pid, child = kept.start([mosquitto, "-c", str(conf)], files, os.environ, name=f"the broker on port {port}",
                                   ready=answering, timeout=timeout)
    return DetachedBroker(True, keeper_pid, child, _url(cfg), files.log)


class PortTaken(SwarmbusError):
    """The port is held by something that does not answer MQTT: ``config`` is the broker's."""

    def __init__(self, config: BrokerConfig) -> None:
        super().__init__(f"port {config.port} is taken by a program that does not answer MQTT")
        self.config = config


def stop_detached(state_dir: Path, port: int, *, timeout: float = STOP_TIMEOUT) -> tuple[Keeper | None, bool]:
    """Stop the detached broker on ``port`` and its keeper: (the keeper stopped, or None when
    none ran; whether SIGKILL was needed). A broker swarmbus did not start is never touched.

    :raises SwarmbusError: it cannot be signalled or would not die.
    """
    keeper, killed = kept.stop(broker_files(state_dir, port), timeout=timeout)
    if keeper is not None:
        pid_file = broker_files(state_dir, port).pid
        pid_file.unlink(missing_ok=True)
    return keeper, killed


__all__ = ["DetachedBroker", "PortTaken", "StartFailed", "broker_dir", "broker_files", "find_broker_keeper",
           "start_detached", "stop_detached"]
