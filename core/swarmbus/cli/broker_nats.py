"""``swarmbus broker --engine nats [--nodes N]``: a local NATS server with JetStream and its MQTT
listener (one node, or a loopback cluster of N nodes), in the foreground, or detached with a
keeper per node (``--detach``, ``--stop``, ``--status``); the mechanism is :mod:`swarmbus.dev_nats`.

Files: ``<state>/broker/nats-<port>/``: ``layout.json`` (the nodes and their ports) and one
directory per node, ``n1`` .. ``nN``, with its ``nats.conf``, ``nats.log``, JetStream store and,
detached, its keeper's files (``broker.pid``, ``broker.log``, ``keeper.lock``, ``keeper.json``).
Node ``i`` serves MQTT on ``--port`` + ``i``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from swarmbus.dev_nats import (
    LAYOUT_NAME,
    NatsConfig,
    NatsNode,
    NatsServerNotFound,
    find_nats_server,
    load_layout,
    mqtt_answers,
    node_meta_leader,
    node_ready,
    plan_nodes,
    render_nats_conf,
    save_layout,
    start_nats,
    write_nats_confs,
)
from swarmbus.errors import SwarmbusError, UsageError
from swarmbus.kept import Keeper, KeptFiles, find_keeper

READY_TIMEOUT = 60.0
"""Seconds to wait for every node to serve MQTT (a cluster elects a leader and creates the MQTT
streams on the first connection)."""
STOP_TIMEOUT = 20.0


def cluster_dir(state_dir: Path, port: int) -> Path:
    """``<state>/broker/nats-<port>``: the layout and every node's directory."""
    return state_dir / "broker" / f"nats-{port}"


def start_argv(state_dir: Path, port: int, nodes: int) -> list[str]:
    """``python -m swarmbus broker --engine nats --nodes N --detach --port PORT --state-dir DIR``."""
    return [sys.executable, "-m", "swarmbus", "broker", "--engine", "nats", "--nodes", str(nodes), "--detach",
            "--port", str(port), "--state-dir", str(state_dir)]


def node_files(node: NatsNode) -> KeptFiles:
    """The keeper's files of a detached node, in the node's directory."""
    return KeptFiles(node.dir, "broker")


def _keepers(nodes: list[NatsNode]) -> list[Keeper | None]:
    return [find_keeper(node_files(n)) for n in nodes]


def _use_lines(nodes: list[NatsNode]) -> list[str]:
    if len(nodes) == 1:
        return [f"  use it: --broker {nodes[0].mqtt_url}   (or SWARMBUS_BROKER_URL={nodes[0].mqtt_url})"]
    hosts = [n.mqtt_host for n in nodes]
    return [f"  use it: SWARMBUS_BROKER_HOSTS={','.join(hosts)}",
            f"      or in config.toml: [broker] hosts = {json.dumps(hosts)}"]


def _config(args: argparse.Namespace, state: Path) -> NatsConfig:
    nodes = args.nodes if args.nodes is not None else 1
    if nodes < 1:
        raise UsageError(f"--nodes must be 1 or more, got {nodes}")
    if not 1 <= args.port <= 65536 - nodes:
        raise UsageError(f"--port {args.port} leaves no room for {nodes} MQTT ports")
    cfg = NatsConfig(state_dir=cluster_dir(state, args.port), nodes=nodes, mqtt_port=args.port, bind=args.bind)
    if getattr(args, "secure", None):
        from swarmbus.broker_acl import nats_secure_fields

        cfg = dataclasses.replace(cfg, **nats_secure_fields(Path(args.secure), plan_nodes(cfg)[0].dir))
    return cfg


def _check_layout(args: argparse.Namespace, cfg: NatsConfig) -> None:
    """Refuse to reuse a state dir made for another number of nodes (its JetStream stores hold
    that cluster's metadata)."""
    old = load_layout(cfg.state_dir / LAYOUT_NAME)
    if old is not None and len(old) != cfg.nodes:
        raise UsageError(
            f"the NATS state in {cfg.state_dir} was made for {len(old)} node(s), not {cfg.nodes}",
            hint=f"pass --nodes {len(old)}, or remove {cfg.state_dir} (its stored sessions and messages go with it)")


def _taken(cfg: NatsConfig, nodes: list[NatsNode]) -> UsageError | None:
    from swarmbus.cli.admin import _port_taken
    from swarmbus.dev_broker import BrokerConfig, port_in_use

    for node in nodes:
        if port_in_use(cfg.bind, node.mqtt_port):
            return _port_taken(BrokerConfig(state_dir=cfg.state_dir, port=node.mqtt_port, bind=cfg.bind))
    return None


def _binary() -> str:
    exe = find_nats_server()
    if exe is None:
        raise SwarmbusError(str(NatsServerNotFound()), hint="apt-get install nats-server  (or: brew install nats-server)")
    return exe


def run(args: argparse.Namespace, state: Path) -> int:
    """``--print-config``: 0. Foreground: 0 stopped by a signal, 1 a node died or could not start.
    ``--detach``: 0 it runs (already, or now), 1 it could not be started, 2 usage (a port taken by
    another program, another node count). ``--stop``: 0 stopped or none ran, 1 a node would not
    stop. ``--status``: 0 every node runs, 1 not."""
    cfg = _config(args, state)
    if args.stop:
        return _stop(cfg, args.timeout)
    if args.status:
        return _status(args, cfg)
    if args.print_config:
        nodes = plan_nodes(cfg)
        for node in nodes:
            if len(nodes) > 1:
                sys.stdout.write(f"# ---- {node.conf_path} ----\n")
            sys.stdout.write(render_nats_conf(cfg, node, nodes))
        return 0
    _check_layout(args, cfg)
    if args.detach:
        return _detach(cfg, state)
    return _foreground(cfg)


def _foreground(cfg: NatsConfig) -> int:
    exe = _binary()
    nodes = plan_nodes(cfg)
    problem = _taken(cfg, nodes)
    if problem is not None:
        raise problem
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            running = start_nats(cfg, exe, nodes=nodes, timeout=READY_TIMEOUT)
        except RuntimeError as exc:
            sys.stderr.write(f"swarmbus: error: could not start NATS: {exc}\n")
            return 1
        save_layout(cfg.state_dir / LAYOUT_NAME, cfg, nodes)
        with running:
            what = f"a cluster of {len(nodes)} nodes" if len(nodes) > 1 else "one node"
            print(f"swarmbus broker: NATS with JetStream and MQTT, {what}: "
                  + ", ".join(f"{n.mqtt_url} ({n.name})" for n in nodes), file=sys.stderr)
            for line in [*_use_lines(nodes), f"  files in {cfg.state_dir} (nats.conf and nats.log per node); "
                         "Ctrl-C stops it"]:
                print(line, file=sys.stderr)
            sys.stderr.flush()
            while not stop.wait(0.5):
                dead = [n.name for n in nodes if not running.running(n.index)]
                if dead:
                    sys.stderr.write(f"swarmbus: error: NATS node(s) {', '.join(dead)} exited; stopping the rest "
                                     f"(see {nodes[0].log_path.parent.parent}/*/nats.log)\n")
                    return 1
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _listening(node: NatsNode) -> bool:
    try:
        with socket.create_connection((node.host, node.mqtt_port), timeout=0.5):
            return True
    except OSError:
        return False


def _detach(cfg: NatsConfig, state: Path) -> int:
    from swarmbus import kept
    from swarmbus.kept import StartFailed
    from swarmbus.ownership import pid_alive
    from swarmbus.paths import ensure_private_dir

    old = load_layout(cfg.state_dir / LAYOUT_NAME)
    if old is not None:
        keepers = _keepers(old)
        alive = [k for k in keepers if k is not None]
        if len(alive) == len(old):
            print(f"NATS on {', '.join(n.mqtt_url for n in old)} already runs (kept by pids "
                  f"{', '.join(str(k.pid) for k in alive)})")
            return 0
        for keeper in alive:  # a partial cluster: start it afresh
            kept.stop_keeper(keeper.pid, timeout=STOP_TIMEOUT, child=keeper.child)
    nodes = plan_nodes(cfg)
    problem = _taken(cfg, nodes)
    if problem is not None:
        raise problem
    exe = _binary()
    ensure_private_dir(state)
    ensure_private_dir(state / "broker")
    ensure_private_dir(cfg.state_dir)
    write_nats_confs(cfg, nodes)
    save_layout(cfg.state_dir / LAYOUT_NAME, cfg, nodes)
    started: list[tuple[int, int]] = []

    def stop_started() -> None:
        for keeper_pid, child in started:
            kept.stop_keeper(keeper_pid, timeout=STOP_TIMEOUT, child=child)

    deadline = time.monotonic() + READY_TIMEOUT
    try:
        for node in nodes:
            def listening(child: int | None, node: NatsNode = node) -> int | None:
                return child if child and pid_alive(child) and _listening(node) else None

            started.append(kept.start([exe, "-c", str(node.conf_path)], node_files(node), os.environ,
                                      name=f"NATS node {node.name} (MQTT port {node.mqtt_port})", ready=listening,
                                      timeout=max(1.0, deadline - time.monotonic())))
        for node in nodes:
            while not node_ready(node, cluster=len(nodes) > 1, credentials=cfg.probe_credentials,
                                 timeout=max(0.5, min(5.0, deadline - time.monotonic()))):
                if time.monotonic() > deadline:
                    stop_started()
                    sys.stderr.write(f"swarmbus: error: NATS node {node.name} did not serve MQTT within "
                                     f"{READY_TIMEOUT:g}s (no JetStream leader?); stopped every node\n"
                                     f"  hint: see {node.log_path}\n")
                    return 1
                time.sleep(0.2)
    except StartFailed as exc:
        stop_started()
        sys.stderr.write(f"swarmbus: error: could not start NATS: {exc}\n")
        sys.stderr.write("".join(f"    {line}\n" for line in exc.tail) if exc.tail else f"  (nothing in {exc.log})\n")
        return 1
    what = f"a cluster of {len(nodes)} nodes" if len(nodes) > 1 else "one node"
    print(f"started NATS ({what}) on {', '.join(n.mqtt_url for n in nodes)}: nats-server pids "
          f"{', '.join(str(c) for _, c in started)}, each kept by a keeper (restarted if it crashes)")
    for line in _use_lines(nodes):
        print(line)
    print(f"  files in {cfg.state_dir}; stop it: swarmbus broker --engine nats --stop --port {nodes[0].mqtt_port}")
    print(f"  it does not survive a reboot; crontab -e: @reboot "
          f"{shlex.join(start_argv(state, nodes[0].mqtt_port, len(nodes)))}")
    return 0


def _stop(cfg: NatsConfig, timeout: float) -> int:
    from swarmbus import kept

    nodes = load_layout(cfg.state_dir / LAYOUT_NAME)
    if nodes is None:
        print(f"no detached NATS runs on port {cfg.mqtt_port} (none that `swarmbus broker --engine nats --detach` "
              f"started with files in {cfg.state_dir})")
        return 0
    stopped, failed = [], []
    for node in nodes:
        try:
            keeper, killed = kept.stop(node_files(node), timeout=timeout)
        except SwarmbusError as exc:
            failed.append(f"{node.name}: {exc}")
            continue
        if keeper is not None:
            stopped.append(f"{node.name} (pid {keeper.child or '?'}, keeper {keeper.pid}, "
                           f"{'SIGKILL after SIGTERM timed out' if killed else 'SIGTERM'})")
            (node.dir / "broker.pid").unlink(missing_ok=True)
    if stopped:
        print(f"stopped NATS on port {cfg.mqtt_port}: {', '.join(stopped)}")
    elif not failed:
        print(f"no detached NATS runs on port {cfg.mqtt_port}")
    for line in failed:
        sys.stderr.write(f"swarmbus: error: could not stop NATS node {line}\n")
    return 1 if failed else 0


def _status(args: argparse.Namespace, cfg: NatsConfig) -> int:
    nodes = load_layout(cfg.state_dir / LAYOUT_NAME)
    if nodes is None:
        info: dict[str, object] = {"engine": "nats", "port": cfg.mqtt_port, "running": False, "nodes": []}
        if args.json:
            print(json.dumps(info))
        else:
            print(f"no detached NATS runs on port {cfg.mqtt_port} (no {cfg.state_dir / LAYOUT_NAME})")
        return 1
    rows = []
    for node in nodes:
        keeper = find_keeper(node_files(node))
        rows.append({"name": node.name, "mqtt_port": node.mqtt_port, "url": node.mqtt_url,
                     "running": keeper is not None, "keeper": keeper.pid if keeper else None,
                     "pid": keeper.child if keeper else None, "restarts": keeper.restarts if keeper else None,
                     "answers_mqtt": mqtt_answers(node.host, node.mqtt_port, 2.0, cfg.probe_credentials),
                     "meta_leader": node_meta_leader(node) if len(nodes) > 1 else None,
                     "log": str(node.log_path)})
    all_run = all(r["running"] for r in rows)
    if args.json:
        print(json.dumps({"engine": "nats", "port": cfg.mqtt_port, "running": all_run, "nodes": rows,
                          "hosts": [n.mqtt_host for n in nodes]}))
    else:
        runs = sum(1 for r in rows if r["running"])
        print(f"NATS on port {cfg.mqtt_port}: {runs} of {len(rows)} node(s) run")
        for r in rows:
            state = (f"runs (pid {r['pid']}, kept by pid {r['keeper']}, {r['restarts']} restarts)" if r["running"]
                     else "does not run")
            extra = f", JetStream leader {r['meta_leader']}" if r["meta_leader"] else ""
            print(f"  {r['name']} {r['url']}: {state}; answers MQTT: {'yes' if r['answers_mqtt'] else 'no'}{extra}")
        if all_run:
            for line in _use_lines(nodes):
                print(line)
    return 0 if all_run else 1
