"""``swarmbus broker acl`` and ``swarmbus broker --secure``: the files it writes (modes, no
secret where it does not belong, mosquitto_passwd fed on stdin), re-runs that change exactly
what was asked, clean errors, and what a private mosquitto then enforces (raw MQTT 5 clients:
a denied QoS 1 publish gets PUBACK 135, a denied read delivers nothing)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from brokers import BrokerFactory, CertBundle, make_ca
from conftest import wait_for
from peers import RawClient
from swarmbus import testing
from swarmbus.broker_acl import Registry, load_registry, render_mosquitto_conf
from swarmbus.dev_broker import RunningBroker, find_mosquitto, free_port, wait_until_listening

NOT_AUTHORIZED = 135


def allowed(reason_code: int) -> bool:
    """A PUBACK that accepted the publish: 0, or 16 "no matching subscribers" (both success codes)."""
    return reason_code < 0x80


# -- helpers ---------------------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "config.toml").write_text("")
    return testing.isolated_env(tmp_path, "mqtt://127.0.0.1:9")  # `broker acl` never connects


def acl(env: dict[str, str], *args: str, extra_env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """``swarmbus broker acl ARGS``; with ``check``, fail the test unless it exits 0."""
    proc = testing.run_cli({**env, **(extra_env or {})}, "broker", "acl", *args)
    if check and proc.returncode != 0:
        pytest.fail(f"broker acl {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def password(directory: Path, pid: str) -> str:
    return (directory / "agents" / pid / "password").read_text().strip()


def passwd_lines(directory: Path) -> dict[str, str]:
    """user -> its hash line in DIR/passwd."""
    return {line.split(":", 1)[0]: line for line in (directory / "passwd").read_text().splitlines() if line}


def snapshot(directory: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file and dir under ``directory``: (content, mtime_ns, mode)."""
    out: dict[str, tuple[bytes, int, int]] = {}
    for path in sorted(directory.rglob("*")):
        st = path.lstat()
        out[str(path.relative_to(directory))] = (path.read_bytes() if path.is_file() else b"", st.st_mtime_ns,
                                                 stat.S_IMODE(st.st_mode))
    return out


def assert_clean_error(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.startswith("swarmbus: error:"), proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    for word in words:
        assert word in proc.stderr, (word, proc.stderr)


def Peer(port: int, user: str, secret: str, *, ca: Path | None = None, topics: tuple[str, ...] = ()) -> RawClient:
    """A raw MQTT 5 client logged in as a broker user (:class:`peers.RawClient`); a refused login
    leaves ``ok`` False instead of failing the test."""
    return RawClient(port, *topics, username=user, password=secret, ca=ca, host="127.0.0.1", check=False)


@pytest.fixture
def peers() -> Iterator[Any]:
    """``connect(port, user, password, ...) -> Peer``; all closed at teardown."""
    made: list[RawClient] = []

    def connect(*args: Any, **kwargs: Any) -> RawClient:
        peer = Peer(*args, **kwargs)
        made.append(peer)
        return peer

    yield connect
    for peer in made:
        peer.close()


def refused(port: int, user: str, secret: str, *, ca: Path | None = None) -> bool:
    """Whether the broker refuses this login (CONNACK 134 bad user name or password / 135 not authorized)."""
    peer = Peer(port, user, secret, ca=ca)
    try:
        return bool(peer.connack.is_failure and peer.connack.value in (134, 135))
    finally:
        peer.close()


def publish_once(port: int, user: str, secret: str, topic: str, *, retain: bool = False,
                 ca: Path | None = None) -> int:
    """One QoS 1 publish on a connection of its own; the PUBACK's reason code. (mosquitto 2.0.11
    drops a client right after it refuses one of its publishes, and that client's session with it.)"""
    peer = Peer(port, user, secret, ca=ca)
    peer.client.reconnect_delay_set(0.01, 0.05)  # closing waits out paho's reconnect delay (1 s by default)
    try:
        assert peer.ok, peer.connack
        return peer.publish_reason(topic, b"forged" if retain else b"x", retain=retain)
    finally:
        peer.close()


def accepted(port: int, user: str, secret: str, *, ca: Path | None = None) -> bool:
    peer = Peer(port, user, secret, ca=ca)
    try:
        return peer.ok
    finally:
        peer.close()


def secure_broker(broker_factory: BrokerFactory, directory: Path, **tls: Any) -> RunningBroker:
    return broker_factory(password_file=directory / "passwd", acl_file=directory / "acl", allow_anonymous=False, **tls)


def reload(broker: RunningBroker) -> None:
    """SIGHUP: mosquitto rereads password_file and acl_file (callers then wait for the effect)."""
    broker.proc.send_signal(signal.SIGHUP)


FAKE_PASSWD = """#!/bin/sh
# records each call's argv and whether stdin is a terminal, then runs the real mosquitto_passwd
if [ -t 0 ]; then tty=tty; else tty=pipe; fi
printf '%s\\t%s\\n' "$tty" "$*" >> "{log}"
exec {real} "$@"
"""


# -- files, modes, secrets -------------------------------------------------------------------------


def test_files_modes_and_no_password_where_it_does_not_belong(env: dict[str, str], tmp_path: Path) -> None:
    fake = tmp_path / "fakebin"
    fake.mkdir()
    log = tmp_path / "passwd-calls.log"
    real = shutil.which("mosquitto_passwd")
    assert real is not None, "mosquitto_passwd is not installed (it ships with mosquitto)"
    (fake / "mosquitto_passwd").write_text(FAKE_PASSWD.format(log=log, real=real))
    (fake / "mosquitto_passwd").chmod(0o755)
    path_env = {"PATH": f"{fake}:{env.get('PATH', os.defpath)}"}
    d = tmp_path / "auth"
    first = acl(env, "alice", "bob", "--observer", "dash", "--dir", str(d), extra_env=path_env)
    rotated = acl(env, "--dir", str(d), "--rotate", "bob", "--json", extra_env=path_env)

    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE((d / "agents").stat().st_mode) == 0o700
    for name in ("passwd", "acl", "registry.json", "mosquitto.conf"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600, name
    for pid in ("alice", "bob", "dash"):
        assert stat.S_IMODE((d / "agents" / pid).stat().st_mode) == 0o700, pid
        for name in ("password", "swarmbus.toml"):
            assert stat.S_IMODE((d / "agents" / pid / name).stat().st_mode) == 0o600, (pid, name)
    assert set(passwd_lines(d)) == {"alice", "bob", "dash"}
    assert json.loads((d / "registry.json").read_text()) == {
        "version": 1, "verified": True,
        "principals": {"alice": {"role": "agent"}, "bob": {"role": "agent"}, "dash": {"role": "observer"}}}

    secrets = {password(d, pid) for pid in ("alice", "bob", "dash")}
    assert len(secrets) == 3 and all(len(s) >= 24 for s in secrets)
    calls = log.read_text().splitlines()
    assert len(calls) == 4, calls  # three adds, one rotation: each `FILE USER`, the password on a pipe
    for call in calls:
        tty, argv = call.split("\t")
        assert tty == "pipe" and argv.split() in ([str(d / "passwd"), u] for u in ("alice", "bob", "dash")), call
    public = [first.stdout, first.stderr, rotated.stdout, rotated.stderr, log.read_text(),
              *((d / name).read_text() for name in ("registry.json", "acl", "mosquitto.conf", "passwd")),
              *((d / "agents" / pid / "swarmbus.toml").read_text() for pid in ("alice", "bob", "dash"))]
    for text in public:
        for secret in secrets:
            assert secret not in text
    assert json.loads(rotated.stdout)["rotated"] == [{"id": "bob", "reason": "asked"}]


def test_job_and_task_lines_for_agents_and_observers(env: dict[str, str], tmp_path: Path) -> None:
    d = tmp_path / "auth"
    acl(env, "alice", "--observer", "dash", "--dir", str(d))
    blocks = {block.split("\n", 1)[0]: [line for line in block.splitlines() if line.startswith("topic ")]
              for block in (d / "acl").read_text().split("\n\n") if block.startswith("user ")}
    for line in ("topic write swarmbus/jobs/+/record/alice", "topic write swarmbus/jobs/+/events/alice",
                 "topic write swarmbus/jobs/+/outcome/alice", "topic read swarmbus/jobs/#",
                 "topic write swarmbus/tasks/+/state/alice", "topic write swarmbus/tasks/_offer/+/+/+/alice",
                 "topic read swarmbus/tasks/#"):
        assert line in blocks["user alice"], line
    dash = blocks["user dash"]
    assert "topic read swarmbus/jobs/#" in dash and "topic read swarmbus/tasks/+/state/+" in dash
    assert not [line for line in dash if line.startswith(("topic write", "topic readwrite")) and "/sync/" not in line]
    users = (d / "nats-users.conf").read_text()
    alice = next(line for line in users.splitlines() if '"alice"' in line)
    for subject in ("swarmbus.jobs.*.record.alice", "swarmbus.jobs.*.events.alice", "swarmbus.jobs.*.outcome.alice",
                    "swarmbus.jobs.>", "swarmbus.tasks.*.state.alice", "swarmbus.tasks.>"):
        assert f'"{subject}"' in alice, subject
    observer = next(line for line in users.splitlines() if '"dash"' in line)
    publish = observer.split("publish:", 1)[1].split("}", 1)[0]
    assert "swarmbus.jobs" not in publish and "swarmbus.tasks" not in publish
    assert '"swarmbus.jobs.>"' in observer and '"swarmbus.tasks.*.state.*"' in observer


def test_agent_config_loads_with_swarmbus_settings_and_round_trips(env: dict[str, str], tmp_path: Path) -> None:
    odd = tmp_path / 'pki "q" \\ é # \t\x7f'
    odd.mkdir()
    ca = odd / "ca.pem"
    ca.write_text("not really a CA; only its path matters here\n")
    d = tmp_path / "auth"
    acl(env, "alice", "--observer", "dash", "--dir", str(d), "--broker", "mqtts://bus.example:8884",
        "--ca-cert", str(ca), "--allow-unverified")
    data = tomllib.loads((d / "agents" / "alice" / "swarmbus.toml").read_text())
    assert data == {"agent_id": "alice",
                    "broker": {"url": "mqtts://bus.example:8884", "tls": True, "ca_certs": str(ca),
                               "username": "alice", "password_file": str(d / "agents" / "alice" / "password")},
                    "security": {"verify_senders": False}}
    observer = tomllib.loads((d / "agents" / "dash" / "swarmbus.toml").read_text())
    assert "agent_id" not in observer and observer["broker"]["username"] == "dash"

    from swarmbus.settings import load_settings

    settings, _ = load_settings(env={"SWARMBUS_CONFIG": str(d / "agents" / "alice" / "swarmbus.toml")})
    assert settings.agent_id == "alice"
    assert (settings.broker.host, settings.broker.port, settings.broker.tls) == ("bus.example", 8884, True)
    assert settings.broker.ca_certs == ca
    assert settings.broker.username == "alice"
    assert settings.broker.resolved_password() == password(d, "alice")
    assert settings.security.verify_senders is False
    # --verified later: the configs follow, the rest of what earlier runs recorded is kept
    acl(env, "--dir", str(d), "--verified")
    settings, _ = load_settings(env={"SWARMBUS_CONFIG": str(d / "agents" / "alice" / "swarmbus.toml")})
    assert settings.security.verify_senders is True and settings.broker.ca_certs == ca
    assert load_registry(d) == Registry(True, {"alice": "agent", "dash": "observer"},
                                        {"url": "mqtts://bus.example:8884", "ca_cert": str(ca)}, {})


# -- re-runs -----------------------------------------------------------------------------------------


def test_second_identical_run_changes_nothing(env: dict[str, str], tmp_path: Path) -> None:
    d = tmp_path / "auth"
    acl(env, "alice", "bob", "--observer", "dash", "--dir", str(d))
    before = snapshot(d)
    again = acl(env, "alice", "bob", "--observer", "dash", "--dir", str(d))
    assert "nothing to change" in again.stdout, again.stdout
    assert snapshot(d) == before
    as_json = json.loads(acl(env, "bob", "--dir", str(d), "--json").stdout)
    assert as_json["changed"] is False and as_json["written"] == [] and as_json["added"] == []
    assert snapshot(d) == before


def test_add_rotate_remove_change_exactly_one(env: dict[str, str], tmp_path: Path) -> None:
    d = tmp_path / "auth"
    acl(env, "alice", "bob", "--dir", str(d))
    pw = {pid: password(d, pid) for pid in ("alice", "bob")}
    lines = passwd_lines(d)
    before = snapshot(d)

    added = acl(env, "carol", "--dir", str(d))
    assert "added:     carol (agent)" in added.stdout and "kill -HUP" in added.stdout
    after = snapshot(d)
    for pid in ("alice", "bob"):
        for name in (f"agents/{pid}/password", f"agents/{pid}/swarmbus.toml"):
            assert after[name] == before[name], name
        assert passwd_lines(d)[pid] == lines[pid]
    assert "user carol" in (d / "acl").read_text()

    lines = passwd_lines(d)
    rotated = acl(env, "--dir", str(d), "--rotate", "bob")
    assert "rotated:   bob" in rotated.stdout
    assert password(d, "bob") != pw["bob"] and password(d, "alice") == pw["alice"]
    now = passwd_lines(d)
    assert now["bob"] != lines["bob"] and now["alice"] == lines["alice"] and now["carol"] == lines["carol"]

    removed = acl(env, "--dir", str(d), "--remove", "carol")
    assert "removed:   carol" in removed.stdout
    assert set(passwd_lines(d)) == {"alice", "bob"}
    assert not (d / "agents" / "carol").exists()
    assert "carol" not in (d / "acl").read_text()
    assert set(json.loads((d / "registry.json").read_text())["principals"]) == {"alice", "bob"}
    assert password(d, "alice") == pw["alice"]
    # removing it again is a no-op that says so
    again = acl(env, "--dir", str(d), "--remove", "carol")
    assert "nothing to change" in again.stdout and "carol" in again.stdout


def test_a_lost_password_file_is_a_rotation(env: dict[str, str], tmp_path: Path) -> None:
    d = tmp_path / "auth"
    acl(env, "alice", "bob", "--dir", str(d))
    alice_line = passwd_lines(d)["alice"]
    (d / "agents" / "bob" / "password").unlink()
    out = acl(env, "alice", "bob", "--dir", str(d))
    assert "bob (its password file was missing: new password)" in out.stdout, out.stdout
    assert password(d, "bob") and passwd_lines(d)["alice"] == alice_line


def test_runs_on_one_dir_wait_for_each_other(env: dict[str, str], tmp_path: Path) -> None:
    if not Path("/proc/locks").exists():
        pytest.skip("needs /proc/locks (Linux) to see a blocked flock")
    d = tmp_path / "auth"
    acl(env, "alice", "--dir", str(d))
    lock = d / ".lock"
    inode = lock.stat().st_ino
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        proc = subprocess.Popen([sys.executable, "-m", "swarmbus", "broker", "acl", "bob", "--dir", str(d)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # a waiter on our inode shows in /proc/locks as "-> FLOCK ..."
            wait_for(lambda: any(line.split()[1:3] == ["->", "FLOCK"] and f":{inode} " in line
                                 for line in Path("/proc/locks").read_text().splitlines()),
                     what="the second run to wait for the lock")
            assert proc.poll() is None
            assert "bob" not in json.loads((d / "registry.json").read_text())["principals"]
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        _, err = proc.communicate(timeout=30)
    finally:
        os.close(fd)
    assert proc.returncode == 0, err
    assert set(json.loads((d / "registry.json").read_text())["principals"]) == {"alice", "bob"}


# -- errors ------------------------------------------------------------------------------------------


def test_missing_mosquitto_passwd_is_a_clean_error_that_writes_nothing(env: dict[str, str], tmp_path: Path) -> None:
    empty = tmp_path / "emptybin"
    empty.mkdir()
    d = tmp_path / "auth"
    proc = acl(env, "alice", "--dir", str(d), extra_env={"PATH": str(empty)}, check=False)
    assert_clean_error(proc, 1, "mosquitto_passwd", "apt install mosquitto", "brew install mosquitto")
    assert not d.exists()
    acl(env, "alice", "--dir", str(d))
    before = snapshot(d)
    proc = acl(env, "bob", "--dir", str(d), "--rotate", "alice", extra_env={"PATH": str(empty)}, check=False)
    assert_clean_error(proc, 1, "mosquitto_passwd")
    assert snapshot(d) == before


@pytest.mark.parametrize("args", [
    ("Alice",), ("broadcast",), ("a/b",), ("x" * 65,), ("",), ("ok", "--observer", "system"),
    ("ok", "--observer", "ok"), ("--rotate", "nobody"), ("ok", "--remove", "ok"),
])
def test_bad_ids_are_usage_errors(env: dict[str, str], tmp_path: Path, args: tuple[str, ...]) -> None:
    d = tmp_path / "auth"
    proc = acl(env, *args, "--dir", str(d), check=False)
    assert_clean_error(proc, 2)
    assert not d.exists()


def test_other_usage_errors(env: dict[str, str], tmp_path: Path) -> None:
    d = tmp_path / "auth"
    assert_clean_error(acl(env, "alice", check=False), 2, "--dir")
    assert_clean_error(acl(env, "alice", "--dir", str(d), "--server-cert", str(tmp_path / "nope.pem"),
                           "--server-key", str(tmp_path / "nope.key"), check=False), 2, "no such file")
    assert_clean_error(acl(env, "alice", "--dir", str(d), "--broker", "http://x", check=False), 2, "scheme")
    proc = acl(env, "alice", "--dir", str(d), "--broker", "mqtts://u:hunter2@x", check=False)
    assert_clean_error(proc, 2, "user name or password")
    assert "hunter2" not in proc.stderr
    assert_clean_error(acl(env, "alice", "--dir", str(tmp_path / "with space"), check=False), 2, "whitespace")
    acl(env, "alice", "--dir", str(d))
    assert_clean_error(acl(env, "--observer", "alice", "--dir", str(d), check=False), 2, "already an agent")
    assert_clean_error(acl(env, "--rotate", "zed", "--dir", str(d), check=False), 2, "zed")


def test_broker_help_teaches_both_forms(env: dict[str, str]) -> None:
    top = testing.run_cli(env, "broker", "--help")
    assert top.returncode == 0
    for word in ("acl", "--secure", "--detach", "--print-config"):
        assert word in top.stdout, word
    sub = testing.run_cli(env, "broker", "acl", "--help")
    assert sub.returncode == 0
    for word in ("--observer", "--rotate", "--remove", "--allow-unverified", "--server-cert", "kill -HUP"):
        assert word in sub.stdout, word


# -- what mosquitto enforces -------------------------------------------------------------------------


def test_broker_enforces_the_acl(env: dict[str, str], tmp_path: Path, broker_factory: BrokerFactory,
                                 peers: Any) -> None:
    d = tmp_path / "auth"
    acl(env, "alice", "bob", "carol", "--observer", "dash", "--dir", str(d))
    broker = secure_broker(broker_factory, d)
    port = broker.port
    pw = {pid: password(d, pid) for pid in ("alice", "bob", "carol", "dash")}

    def refused_publish(user: str, topic: str, retain: bool = False) -> bool:
        return publish_once(port, user, pw[user], topic, retain=retain) == NOT_AUTHORIZED

    bob = peers(port, "bob", pw["bob"], topics=("agents/+/inbox/+",))
    assert allowed(bob.publish_reason("agents/bob/presence", b"bob-online", retain=True))
    alice = peers(port, "alice", pw["alice"], topics=("agents/alice/inbox/+",))
    carol = peers(port, "carol", pw["carol"])

    # send under her own id: delivered; under someone else's, or without it (verified): refused
    assert allowed(alice.publish_reason("agents/bob/inbox/alice", b"hi bob"))
    wait_for(lambda: bob.received("agents/bob/inbox/alice"), what="bob to get alice's message")
    assert allowed(alice.publish_reason("agents/broadcast/alice", b"all"))
    assert allowed(alice.publish_reason("agents/bob/receipts/alice", b"stored"))
    for topic in ("agents/bob/inbox/carol", "agents/bob/inbox", "agents/broadcast", "agents/broadcast/carol",
                  "agents/bob/receipts", "agents/bob/receipts/carol", "swarmbus/sync/bob/x"):
        assert refused_publish("alice", topic), topic

    # someone else's presence: refused, and the real retained record stays
    assert refused_publish("alice", "agents/bob/presence", retain=True)
    assert refused_publish("alice", "agents/bob/presence/heartbeat", retain=True)
    late = peers(port, "dash", pw["dash"], topics=("agents/bob/presence",))
    msg = wait_for(lambda: next(iter(late.received("agents/bob/presence")), None), what="bob's retained presence")
    assert msg.retain and msg.payload == b"bob-online"

    # bob reads only his own inbox: carol's message to alice reaches alice, not bob (who only
    # gets the later one addressed to him, from the same sender: delivery is in order)
    assert allowed(carol.publish_reason("agents/alice/inbox/carol", b"for alice only"))
    assert allowed(carol.publish_reason("agents/bob/inbox/carol", b"marker"))
    wait_for(lambda: bob.received("agents/bob/inbox/carol"), what="the marker")
    wait_for(lambda: alice.received("agents/alice/inbox/carol"), what="alice to get carol's message")
    assert [m.topic for m in bob.received()] == ["agents/bob/inbox/alice", "agents/bob/inbox/carol"]

    # the observer: a late subscription still gets alice's retained record; it cannot publish
    assert allowed(alice.publish_reason("agents/alice/presence", b"alice-online", retain=True))
    dash = peers(port, "dash", pw["dash"], topics=("agents/+/presence",))
    got = wait_for(lambda: next(iter(dash.received("agents/alice/presence")), None), what="alice's retained presence")
    assert got.retain and got.payload == b"alice-online"
    for topic in ("agents/alice/inbox/dash", "agents/alice/inbox", "agents/broadcast", "agents/broadcast/dash",
                  "agents/dash/presence", "agents/alice/presence", "agents/alice/receipts/dash"):
        assert refused_publish("dash", topic), topic

    # jobs and task states (docs/jobs.md, docs/swarm.md): written only under one's own id, read by all
    jobs = peers(port, "bob", pw["bob"], topics=("swarmbus/jobs/#", "swarmbus/tasks/#"))
    watcher = peers(port, "dash", pw["dash"], topics=("swarmbus/jobs/#", "swarmbus/tasks/+/state/+"))
    for topic, retain in (("swarmbus/jobs/j-1/record/alice", True), ("swarmbus/jobs/j-1/events/alice", False),
                          ("swarmbus/jobs/j-1/outcome/alice", True), ("swarmbus/tasks/t-1/state/alice", True)):
        assert allowed(alice.publish_reason(topic, b"ok", retain=retain)), topic
        wait_for(lambda t=topic: jobs.received(t) and watcher.received(t), what=f"bob and dash to read {topic}")
    for topic in ("swarmbus/jobs/j-1/record/bob", "swarmbus/jobs/j-1/events/bob", "swarmbus/jobs/j-1/outcome/bob",
                  "swarmbus/jobs/j-1/events", "swarmbus/jobs/j-1/other/alice", "swarmbus/tasks/t-1/state/bob"):
        assert refused_publish("alice", topic, retain=True), topic
    for topic in ("swarmbus/jobs/j-1/record/dash", "swarmbus/jobs/j-1/events/dash", "swarmbus/jobs/j-1/outcome/dash",
                  "swarmbus/tasks/t-1/state/dash"):
        assert refused_publish("dash", topic, retain=True), topic
    # task offers: under one's own id, read by every agent, also through a shared subscription
    pool = peers(port, "bob", pw["bob"], topics=("$share/swarmbus-tasks/swarmbus/tasks/_offer/dev/coder/~/+",))
    offer = "swarmbus/tasks/_offer/dev/coder/~/alice"
    assert allowed(alice.publish_reason(offer, b"offer"))
    wait_for(lambda: pool.received(offer), what="bob to get alice's offer through the shared subscription")
    assert refused_publish("alice", "swarmbus/tasks/_offer/dev/coder/~/bob"), "an offer under another id"
    assert refused_publish("dash", "swarmbus/tasks/_offer/dev/coder/~/dash"), "an observer's offer"
    late_job = peers(port, "dash", pw["dash"], topics=("swarmbus/jobs/+/outcome/+",))
    got = wait_for(lambda: next(iter(late_job.received("swarmbus/jobs/j-1/outcome/alice")), None),
                   what="alice's retained outcome, for a late observer")
    assert got.retain and got.payload == b"ok"

    # unknown users and wrong passwords are refused
    assert refused(port, "alice", "wrong-password")
    assert refused(port, "mallory", pw["alice"])


def test_unverified_rotate_and_remove_after_a_reload(env: dict[str, str], tmp_path: Path,
                                                     broker_factory: BrokerFactory, peers: Any) -> None:
    d = tmp_path / "auth"
    acl(env, "alice", "bob", "--dir", str(d))
    broker = secure_broker(broker_factory, d)
    port = broker.port
    old = password(d, "alice")
    bob = peers(port, "bob", password(d, "bob"), topics=("agents/bob/inbox",))
    assert publish_once(port, "alice", old, "agents/bob/inbox") == NOT_AUTHORIZED

    acl(env, "--dir", str(d), "--allow-unverified")
    reload(broker)
    wait_for(lambda: allowed(publish_once(port, "alice", old, "agents/bob/inbox")),
             what="the plain topic to be allowed after the reload")
    wait_for(lambda: bob.received("agents/bob/inbox"), what="bob to get the plain message")
    assert allowed(publish_once(port, "alice", old, "agents/broadcast"))
    assert publish_once(port, "alice", old, "agents/bob/inbox/carol") == NOT_AUTHORIZED  # never someone else's id

    acl(env, "--dir", str(d), "--rotate", "alice")
    new = password(d, "alice")
    assert new != old
    reload(broker)
    wait_for(lambda: refused(port, "alice", old), what="alice's old password to be refused")
    assert accepted(port, "alice", new)

    bob_pw = password(d, "bob")
    assert accepted(port, "bob", bob_pw)
    acl(env, "--dir", str(d), "--remove", "bob")
    reload(broker)
    wait_for(lambda: refused(port, "bob", bob_pw), what="bob to be refused after his removal")
    assert accepted(port, "alice", new)


def test_tls_through_swarmbus_broker_secure(env: dict[str, str], tmp_path: Path, peers: Any) -> None:
    certs: CertBundle = make_ca(tmp_path / "pki")
    d = tmp_path / "auth"
    port = free_port()
    acl(env, "alice", "bob", "--dir", str(d), "--broker", f"mqtts://127.0.0.1:{port}", "--ca-cert", str(certs.ca),
        "--server-cert", str(certs.server_cert), "--server-key", str(certs.server_key), "--server-ca", str(certs.ca))
    state = tmp_path / "state"

    shown = testing.run_cli(env, "broker", "--secure", str(d), "--port", str(port), "--state-dir", str(state),
                            "--print-config")
    assert shown.returncode == 0, shown.stderr
    lines = set(shown.stdout.splitlines())
    for line in (f"password_file {d / 'passwd'}", f"acl_file {d / 'acl'}", "allow_anonymous false",
                 f"certfile {certs.server_cert}", f"keyfile {certs.server_key}", f"cafile {certs.ca}"):
        assert line in lines, line

    log = (tmp_path / "secure-broker.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "swarmbus", "broker", "--secure", str(d), "--port", str(port),
                             "--state-dir", str(state)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_listening("127.0.0.1", port, timeout=15, proc=proc, log_paths=(tmp_path / "secure-broker.log",))
        from swarmbus.settings import load_settings

        settings, _ = load_settings(env={"SWARMBUS_CONFIG": str(d / "agents" / "alice" / "swarmbus.toml")})
        assert settings.broker.tls and settings.broker.port == port and settings.broker.ca_certs == certs.ca
        bob = peers(port, "bob", password(d, "bob"), ca=certs.ca, topics=("agents/bob/inbox/+",))
        alice = peers(port, str(settings.broker.username), str(settings.broker.resolved_password()), ca=certs.ca)
        assert allowed(alice.publish_reason("agents/bob/inbox/alice", b"over tls"))
        got = wait_for(lambda: bob.received("agents/bob/inbox/alice"), what="bob to get alice's message over TLS")
        assert got[0].payload == b"over tls"
        assert publish_once(port, "alice", password(d, "alice"), "agents/bob/inbox", ca=certs.ca) == NOT_AUTHORIZED
        assert refused(port, "alice", "wrong", ca=certs.ca)
        old = password(d, "alice")
        acl(env, "--dir", str(d), "--rotate", "alice")
        proc.send_signal(signal.SIGHUP)  # the command exec'd mosquitto: same pid
        wait_for(lambda: refused(port, "alice", old, ca=certs.ca), what="the old password to be refused")
        assert accepted(port, "alice", password(d, "alice"), ca=certs.ca)
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def test_the_mosquitto_conf_snippet_runs(env: dict[str, str], tmp_path: Path, peers: Any) -> None:
    certs = make_ca(tmp_path / "pki")
    d = tmp_path / "auth"
    acl(env, "alice", "--dir", str(d), "--server-cert", str(certs.server_cert), "--server-key", str(certs.server_key))
    text = (d / "mosquitto.conf").read_text()
    assert "listener 8883" in text and "allow_anonymous false" in text and "per_listener_settings false" in text
    registry = load_registry(d)
    assert registry is not None
    assert render_mosquitto_conf(registry, d) == text
    port = free_port()
    conf = render_mosquitto_conf(registry, d, port=port).replace(f"listener {port}\n", f"listener {port} 127.0.0.1\n")
    if os.geteuid() == 0:  # as root mosquitto would switch to user `mosquitto`, who cannot read DIR (0700)
        conf += "user root\n"
    (tmp_path / "snippet.conf").write_text(conf)
    exe = find_mosquitto()
    assert exe is not None
    log_path = tmp_path / "snippet.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([exe, "-c", str(tmp_path / "snippet.conf")], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_listening("127.0.0.1", port, timeout=15, proc=proc, log_paths=(log_path,))
        alice = peers(port, "alice", password(d, "alice"), ca=certs.ca)
        assert alice.ok and allowed(alice.publish_reason("agents/alice/presence", b"on", retain=True))
        assert refused(port, "alice", "wrong", ca=certs.ca)
    finally:
        proc.terminate()
        proc.wait(15)


def test_secure_refuses_what_it_cannot_do(env: dict[str, str], tmp_path: Path) -> None:
    d = tmp_path / "auth"
    proc = testing.run_cli(env, "broker", "--secure", str(d), "--print-config", "--state-dir", str(tmp_path))
    assert_clean_error(proc, 2, "broker acl")
    acl(env, "alice", "--dir", str(d))
    proc = testing.run_cli(env, "broker", "--secure", str(d), "--detach", "--port", str(free_port()),
                           "--state-dir", str(tmp_path))
    assert_clean_error(proc, 2, "--detach")
    shown = testing.run_cli(env, "broker", "--secure", str(d), "--port", "18998", "--print-config",
                            "--state-dir", str(tmp_path))
    lines = set(shown.stdout.splitlines())
    assert {f"password_file {d / 'passwd'}", f"acl_file {d / 'acl'}", "allow_anonymous false",
            "listener 18998 127.0.0.1"} <= lines
    assert not any(line.startswith(("certfile", "keyfile")) for line in lines)
    plain = testing.run_cli(env, "broker", "--port", "18998", "--print-config", "--state-dir", str(tmp_path))
    assert "allow_anonymous true" in plain.stdout.splitlines()
    assert not any(line.startswith(("password_file", "acl_file")) for line in plain.stdout.splitlines())
