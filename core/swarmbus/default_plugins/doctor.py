"""Built-in ``swarmbus doctor`` checks.

Each returns a :class:`swarmbus.CheckResult` with a fix hint for every warning or failure.
Checks that need the broker share one probe connection result through ``context.cache`` and
are skipped (not failed again) when the broker check failed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from swarmbus._version import __version__
from swarmbus.api import CheckResult, DoctorCheck, DoctorContext
from swarmbus.hookspecs import hookimpl
from swarmbus.settings import Settings

DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"
SYS_SIGNS = ("$SYS/broker/version", "$SYS/broker/uptime")
"""$SYS topics mosquitto publishes too: receiving one while the drop counter stays away means the
broker does not publish that counter (to this client), rather than no $SYS at all."""
SYS_WAIT = 1.5
"""Seconds doctor waits for the broker's drop counter."""
UNACKED_LIMIT = 5.0
"""Seconds a received message may wait for its commit and PUBACK before doctor calls it stuck."""


def check_config(ctx: DoctorContext) -> CheckResult:
    b = ctx.settings.broker
    try:
        b.resolved_password()
    except Exception as exc:
        return CheckResult("fail", f"configuration unusable: {exc}", fix="fix the path in the config or environment")
    for label, path in (("CA bundle", b.ca_certs), ("client certificate", b.certfile), ("client key", b.keyfile)):
        if path is not None and not path.is_file():
            return CheckResult("fail", f"{label} {path} does not exist", fix="point it at an existing file")
    return CheckResult("ok", f"configuration valid (broker {b.url})")


def _probe(ctx: DoctorContext) -> dict[str, object]:
    if "probe" in ctx.cache:
        return ctx.cache["probe"]  # type: ignore[no-any-return]
    from swarmbus.errors import BrokerUnreachable
    from swarmbus.transport.link import MqttLink, Subscription, one_shot_client_id
    from swarmbus.transport.negotiated import ProtocolMemory

    b = ctx.settings.broker
    dropped: list[int] = []
    other_sys: list[str] = []
    got_sys = threading.Event()

    def on_message(topic: str, payload: bytes, mid: int, qos: int) -> None:
        if topic == DROPPED_TOPIC:
            with contextlib.suppress(ValueError):
                dropped.append(int(payload))
            got_sys.set()
        else:
            other_sys.append(topic)

    link = MqttLink(b, client_id=one_shot_client_id(b.client_id_prefix, ctx.agent_id, "doctor"),
                    subscriptions=[Subscription(DROPPED_TOPIC, 0), *(Subscription(t, 0) for t in SYS_SIGNS)],
                    on_message=on_message, reconnect_min=0.2, reconnect_max=1.0,
                    protocol_memory=ProtocolMemory.in_state_dir(ctx.settings.state_dir))
    link.retry_log_level = logging.DEBUG
    started = time.monotonic()
    link.start()
    result: dict[str, object]
    try:
        link.wait_connected(b.connect_timeout)
        elapsed = (time.monotonic() - started) * 1000
        got_sys.wait(SYS_WAIT)
        result = {"ok": True, "protocol": link.protocol, "url": link.url, "ms": elapsed, "dropped": dropped[-1] if dropped else None,
                  "sys_refused": DROPPED_TOPIC in link.refused_subscriptions, "other_sys": bool(other_sys)}
    except BrokerUnreachable as exc:
        result = {"ok": False, "error": str(exc)}
    finally:
        link.stop(timeout=2.0)
    ctx.cache["probe"] = result
    return result


def check_broker(ctx: DoctorContext) -> CheckResult:
    probe = _probe(ctx)
    b = ctx.settings.broker
    if not probe["ok"]:
        return CheckResult(
            "fail", str(probe["error"]),
            fix=f"start a broker (`swarmbus broker --port {b.effective_port}`) or fix --broker/auth/TLS settings",
        )
    auth = "with auth" if b.username else "anonymous"
    tls = "TLS" if b.tls else "plain TCP"
    return CheckResult("ok", f"broker {probe.get('url', b.url)} reachable ({tls}, {auth}) in {probe['ms']:.0f} ms")


def check_broker_nodes(ctx: DoctorContext) -> CheckResult:
    """Each node of ``broker.hosts`` on its own: a connection (with the configured TLS and
    credentials) that gets a CONNACK."""
    from swarmbus.errors import BrokerUnreachable
    from swarmbus.transport.link import MqttLink, one_shot_client_id
    from swarmbus.transport.negotiated import ProtocolMemory

    b = ctx.settings.broker
    if len(b.endpoints) < 2:
        return CheckResult("skip", "one broker node configured (broker.hosts lists a cluster's nodes)")
    lines, down = [], []
    for host, port in b.endpoints:
        one = b.model_copy(update={"hosts": (f"[{host}]:{port}" if ":" in host else f"{host}:{port}",)})
        link = MqttLink(one, client_id=one_shot_client_id(b.client_id_prefix, ctx.agent_id, "doctor"),
                        reconnect_min=0.2, reconnect_max=1.0,
                        protocol_memory=ProtocolMemory.in_state_dir(ctx.settings.state_dir))
        link.retry_log_level = logging.DEBUG
        started = time.monotonic()
        link.start()
        try:
            link.wait_connected(min(b.connect_timeout, 3.0))
            lines.append(f"{one.url} ok ({(time.monotonic() - started) * 1000:.0f} ms, MQTT {link.protocol})")
        except BrokerUnreachable as exc:
            down.append(one.url)
            lines.append(f"{one.url} DOWN ({str(exc).split(': ', 1)[-1]})")
        finally:
            link.stop(timeout=1.0)
    summary = "; ".join(lines)
    if len(down) == len(lines):
        return CheckResult("fail", f"no broker node answers: {summary}", fix="start the cluster, or fix broker.hosts")
    if down:
        return CheckResult("warn", f"{len(down)} of {len(lines)} broker nodes do not answer: {summary}",
                           fix="the daemon uses the others meanwhile; restart the node(s) that are down")
    return CheckResult("ok", f"all {len(lines)} broker nodes answer: {summary}")


def check_protocol(ctx: DoctorContext) -> CheckResult:
    probe = _probe(ctx)
    if not probe["ok"]:
        return CheckResult("skip", "MQTT version not negotiated (broker unreachable)")
    if probe["protocol"] == "5":
        return CheckResult("ok", "MQTT 5 negotiated (session expiry, no-local)")
    return CheckResult("warn", "MQTT 3.1.1 negotiated: own broadcasts are filtered locally; sessions never expire",
                       fix="use a broker with MQTT 5 (mosquitto >= 1.6) if you can")


def check_dropped(ctx: DoctorContext) -> CheckResult:
    probe = _probe(ctx)
    if not probe["ok"]:
        return CheckResult("skip", "broker counters not read (broker unreachable)")
    if probe["dropped"] is None:
        if probe.get("sys_refused"):
            return CheckResult("skip", f"no permission to read {DROPPED_TOPIC} (the broker refused the subscription); "
                                       "drop check skipped")
        if probe.get("other_sys"):
            return CheckResult("skip", f"the broker does not publish {DROPPED_TOPIC} to this client (other $SYS "
                                       "topics arrive); drop check skipped")
        return CheckResult("skip", f"no $SYS topics received within {SYS_WAIT:g}s: the broker publishes none to this "
                                   "client (mosquitto with sys_interval 0, or an ACL; NATS and RabbitMQ have no $SYS); "
                                   "drop check skipped")
    if probe["dropped"]:
        return CheckResult("warn", f"the broker has dropped {probe['dropped']} messages since it started",
                           fix="set `max_queued_messages 0` in mosquitto.conf (swarmbus broker does)")
    return CheckResult("ok", "broker reports 0 dropped messages")


def check_daemon(ctx: DoctorContext) -> CheckResult:
    if not ctx.agent_id:
        return CheckResult("skip", "no agent id: daemon not checked", fix="pass --agent-id ID")
    from swarmbus.control import daemon_status
    from swarmbus.paths import AgentPaths

    paths = AgentPaths.for_agent(ctx.agent_id, ctx.settings.state_dir)
    status = daemon_status(paths.socket)
    ctx.cache["daemon"] = status
    if not status:
        return CheckResult("fail", f"no daemon running for {ctx.agent_id}",
                           fix=f"swarmbus start --agent-id {ctx.agent_id}  (or start its user service)")
    if status.get("version") != __version__:
        return CheckResult("fail", f"daemon pid {status['pid']} runs swarmbus {status.get('version')}, installed is {__version__}",
                           fix="restart the daemon so it runs the installed code")
    if not status.get("connected"):
        return CheckResult("fail", f"daemon pid {status['pid']} is not connected: {status.get('last_error')}",
                           fix="check the broker and the daemon's log")
    if not status.get("link_running"):
        return CheckResult("fail", "daemon's MQTT link is not running", fix="restart the daemon")
    if status.get("store_error"):
        return CheckResult("fail", f"daemon pid {status['pid']} cannot write its store: {status['store_error']} "
                                   f"({status.get('unacked', 0)} received messages wait unacknowledged)",
                           fix="free disk space or fix the store's permissions; the daemon retries by itself")
    age = status.get("oldest_unacked_age")
    if age is not None and float(age) > UNACKED_LIMIT:
        return CheckResult("fail", f"daemon pid {status['pid']} has {status.get('unacked')} received messages "
                                   f"unacknowledged for {float(age):.0f}s", fix="check the daemon's log; restart it")
    if status.get("callback_errors"):
        return CheckResult("fail", f"daemon pid {status['pid']} had {status['callback_errors']} errors in its receive "
                                   "path since it started", fix="see the daemon's log for the traceback; report it")
    beat = ctx.settings.daemon.heartbeat_interval
    last = status.get("last_puback_at")
    if last is None or time.time() - float(last) > 3 * beat + 5:
        return CheckResult("warn", "daemon has had no broker acknowledgement recently",
                           fix="check the broker; the daemon reconnects by itself")
    return CheckResult("ok", f"daemon pid {status['pid']} connected over MQTT {status.get('protocol')}, "
                             f"{status.get('last_seq')} messages stored")


def check_store(ctx: DoctorContext) -> CheckResult:
    if not ctx.agent_id:
        return CheckResult("skip", "no agent id: store not checked")
    from swarmbus.paths import AgentPaths
    from swarmbus.store import Store

    paths = AgentPaths.for_agent(ctx.agent_id, ctx.settings.state_dir)
    daemon = ctx.cache.get("daemon")
    try:
        paths.ensure()
        with Store(paths.store) as store:
            if not daemon:  # a running daemon reports its own write errors; never write beside it
                store.set_cursor("_doctor", store.last_seq())
            counters = store.counters()
    except Exception as exc:
        return CheckResult("fail", f"store {paths.store} not writable: {exc}", fix="check permissions and free disk space")
    quarantined = counters.get("quarantined", 0)
    if quarantined:
        return CheckResult("warn", f"store writable; {quarantined} messages quarantined",
                           fix=f"inspect them: swarmbus inbox --agent-id {ctx.agent_id} --quarantined")
    return CheckResult("ok", f"store {paths.store} writable")


WAKE_FAILURES = 3
"""``wakes`` fails when this many of the latest wake attempts all failed."""


def check_wakes(ctx: DoctorContext) -> CheckResult:
    """The latest wake attempts (``wake_log``): fail when the last :data:`WAKE_FAILURES` all
    failed, warn when the latest one did."""
    if not ctx.agent_id:
        return CheckResult("skip", "no agent id: wakes not checked")
    from swarmbus.paths import AgentPaths
    from swarmbus.store import Store

    paths = AgentPaths.for_agent(ctx.agent_id, ctx.settings.state_dir)
    if not paths.store.exists():
        return CheckResult("skip", "no store yet: no wakes to check")
    try:
        with Store(paths.store) as store:
            attempts = store.wake_attempts(WAKE_FAILURES)
            held = len(store.holds())
    except Exception as exc:
        return CheckResult("skip", f"wakes not checked: {exc}")
    fix = (f"see what the waker said: swarmbus inbox --agent-id {ctx.agent_id}; check the host plugin "
           "(`swarmbus plugins`) or the wake command (wake.command, --invoke): run it by hand with a message on stdin")
    failed = [a for a in attempts if not a.ok]
    note = f"; {held} message(s) held by the wake policy" if held else ""
    if not attempts:
        return CheckResult("ok", "no wake attempts yet" + note)
    if len(attempts) >= WAKE_FAILURES and len(failed) == len(attempts):
        return CheckResult("fail", f"the last {len(attempts)} wakes failed (latest: {attempts[0].detail}){note}", fix=fix)
    if not attempts[0].ok:
        return CheckResult("warn", f"the latest wake failed ({attempts[0].detail}){note}", fix=fix)
    return CheckResult("ok", f"the latest wake worked ({len(failed)} of the last {len(attempts)} failed){note}")


def check_presence(ctx: DoctorContext) -> CheckResult:
    if not ctx.agent_id:
        return CheckResult("skip", "no agent id: presence not checked")
    if not _probe(ctx)["ok"]:
        return CheckResult("skip", "presence not checked (broker unreachable)")
    from swarmbus.oneshot import scan_presence, stale

    try:
        records = {r.agent: r for r in scan_presence(ctx.settings)}
    except Exception as exc:
        return CheckResult("fail", f"presence scan failed: {exc}", fix="check ACLs: agents/+/presence must be readable")
    own = records.get(ctx.agent_id)
    if own is None:
        return CheckResult("warn", f"no presence record for {ctx.agent_id}", fix=f"swarmbus start --agent-id {ctx.agent_id}")
    if not own.online:
        return CheckResult("warn", f"{ctx.agent_id} is offline to its peers", fix=f"swarmbus start --agent-id {ctx.agent_id}")
    if stale(own):
        return CheckResult("warn", f"{ctx.agent_id}'s presence is stale (no heartbeat)", fix="restart the daemon")
    others = sum(1 for r in records.values() if r.online and r.agent != ctx.agent_id)
    return CheckResult("ok", f"{ctx.agent_id} is online to its peers ({others} other agents online)")


def check_plugins(ctx: DoctorContext) -> CheckResult:
    infos = ctx.cache.get("plugin_infos") or {}
    failed = [i for i in infos.values() if getattr(i, "status", "") == "failed"]
    if failed:
        names = ", ".join(f"{i.name} ({i.error})" for i in failed)
        return CheckResult("fail", f"plugins failed to load: {names}", fix="reinstall or remove them (pip)")
    if ctx.settings.wake.command:  # the wake-command check itself is the command-waker plugin's
        from swarmbus.plugins import command_waker_problem

        missing = command_waker_problem(infos)
        if missing:
            return CheckResult("fail", f"{missing[0]}: every wake fails", fix=missing[1])
    loaded = [i.name for i in infos.values() if not getattr(i, "builtin", True) and i.status == "loaded"]
    return CheckResult("ok", f"{len(loaded)} plugins loaded" + (f": {', '.join(loaded)}" if loaded else ""))


CORE_CHECKS = (
    DoctorCheck("config", check_config, 10),
    DoctorCheck("broker", check_broker, 20),
    DoctorCheck("broker-nodes", check_broker_nodes, 25),
    DoctorCheck("mqtt-version", check_protocol, 30),
    DoctorCheck("broker-drops", check_dropped, 40),
    DoctorCheck("daemon", check_daemon, 50),
    DoctorCheck("store", check_store, 60),
    DoctorCheck("presence", check_presence, 70),
    DoctorCheck("wakes", check_wakes, 75),
    DoctorCheck("plugins", check_plugins, 80),
)


@hookimpl
def swarmbus_doctor_checks(register: Callable[[DoctorCheck], None], settings: Settings) -> None:
    for check in CORE_CHECKS:
        register(check)
