"""The control socket and the state dirs stay private to their user.

A socket in a directory another user created or can write would let that user read every
`swarmbus send` (the sender seeing "Sent"); these tests play that other user (as root, with
files owned by ``nobody``) and check nothing is ever put there or handed to them.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SwarmEnv, wait_for
from swarmbus.control import DaemonUnavailable, UnsafeSocket, daemon_status, request
from swarmbus.errors import UsageError
from swarmbus.paths import SOCKET_POINTER, AgentPaths, ensure_private_dir, private_dir_problem
from swarmbus.store import Store

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="playing another user needs root (CI runs as root)")


def long_state_dir(tmp_path: Path) -> Path:
    path = tmp_path / ("s" * 90)
    assert len(os.fsencode(AgentPaths.for_agent("coder", path).natural_socket)) > 100
    return path


def test_short_path_is_the_natural_one(tmp_path: Path) -> None:
    paths = AgentPaths.for_agent("coder", tmp_path)
    assert paths.socket_fits
    assert paths.make_socket_path() == paths.socket == paths.root / "daemon.sock"
    assert private_dir_problem(paths.root) is None
    assert stat.S_IMODE(paths.root.stat().st_mode) == 0o700


def test_long_path_gets_a_fresh_private_short_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    paths = AgentPaths.for_agent("coder", long_state_dir(tmp_path))
    assert paths.socket == paths.natural_socket  # no daemon yet: nothing recorded
    sock = paths.make_socket_path()
    assert len(os.fsencode(sock)) <= 100 and sock.parent.parent == Path("/tmp")
    assert private_dir_problem(sock.parent) is None and stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    assert paths.socket == sock  # clients find it through the record in the agent dir
    assert stat.S_IMODE((paths.root / SOCKET_POINTER).stat().st_mode) == 0o600
    again = paths.make_socket_path()  # a restart: the old dir is cleaned up, a new one made
    assert again != sock and not sock.parent.exists()
    paths.release_socket_path()
    assert not again.parent.exists() and not (paths.root / SOCKET_POINTER).exists()


def test_runtime_dir_used_only_when_it_is_ours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = tmp_path / "rt"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    paths = AgentPaths.for_agent("coder", long_state_dir(tmp_path))
    sock = paths.make_socket_path()
    assert sock.parent.parent == runtime
    paths.release_socket_path()
    runtime.chmod(0o777)  # writable by anyone: not a place for a socket
    sock = paths.make_socket_path()
    assert sock.parent.parent == Path("/tmp")
    paths.release_socket_path()


@as_root
def test_squatted_shared_dir_is_never_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another user pre-creates the shared-looking directories a naive daemon would use."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    squat = tmp / f"swarmbus-{os.getuid()}"
    squat.mkdir(mode=0o777)
    os.chown(squat, NOBODY, NOBODY)
    squat.chmod(0o777)
    runtime = tmp_path / "foreign-runtime"
    runtime.mkdir(mode=0o700)
    os.chown(runtime, NOBODY, NOBODY)
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    paths = AgentPaths.for_agent("coder", long_state_dir(tmp_path))
    sock = paths.make_socket_path()
    assert squat not in sock.parents and runtime not in sock.parents
    assert private_dir_problem(sock.parent) is None
    assert list(squat.iterdir()) == []
    paths.release_socket_path()


@as_root
def test_foreign_agent_dir_is_refused(tmp_path: Path) -> None:
    paths = AgentPaths.for_agent("coder", tmp_path)
    paths.root.mkdir(parents=True)
    os.chown(paths.root, NOBODY, NOBODY)
    with pytest.raises(UsageError, match="belongs to uid 65534"):
        paths.ensure()


def test_own_loose_dir_is_tightened_and_symlink_refused(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o777)
    loose.chmod(0o777)
    ensure_private_dir(loose)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700
    link = tmp_path / "link"
    link.symlink_to(loose)
    with pytest.raises(UsageError, match="symbolic link"):
        ensure_private_dir(link)


@as_root
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peer credentials (SO_PEERCRED) are Linux's")
def test_a_file_in_the_way_of_a_state_dir_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "odd").write_text("not a directory")
    with pytest.raises(UsageError, match="is not a directory"):
        ensure_private_dir(tmp_path / "agents" / "odd")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="Not a directory"):
        ensure_private_dir(tmp_path / "file" / "agents" / "a")
    env = {**os.environ, "SWARMBUS_STATE_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "swarmbus", "start", "--agent-id", "odd", "--broker", "localhost:9"],
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "is not a directory" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "swarmbus", "status", "--agent-id", "odd"],
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "not running" in proc.stdout and "Traceback" not in proc.stderr, proc.stderr


def test_client_refuses_a_socket_served_by_another_user(tmp_path: Path) -> None:
    """An impostor listening (as another user) where the daemon's socket should be gets nothing."""
    where = tmp_path / "impostor"
    where.mkdir(mode=0o700)
    path = where / "daemon.sock"
    got = tmp_path / "got"
    code = ("import os,socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); os.chmod(sys.argv[1], 0o777);"
            " os.setgid(65534); os.setuid(65534); s.listen(); print('ready', flush=True); c,_=s.accept();"
            " open(sys.argv[2],'wb').write(c.recv(65536))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), str(got)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with pytest.raises(UnsafeSocket, match="served by uid 65534"):
            request(path, {"op": "send", "envelope": {"body": "secret"}}, timeout=5)
        assert daemon_status(path) is None
    finally:
        proc.kill()
        proc.wait(5)
    assert not got.exists() or got.read_bytes() == b""


def test_daemon_with_long_state_dir_and_squatted_tmp(swarm: SwarmEnv, tmp_path: Path) -> None:
    """End to end: a state dir too long for a socket path, a squatted $TMPDIR/swarmbus-<uid>: the
    daemon binds in a fresh private dir, `swarmbus send` goes through it, and cleans up on stop."""
    tmp = tmp_path / "tmp"
    squat = tmp / f"swarmbus-{os.getuid()}"
    squat.mkdir(parents=True)
    squat.chmod(0o777)
    if os.geteuid() == 0:
        os.chown(squat, NOBODY, NOBODY)
    state = long_state_dir(tmp_path)
    env = {"SWARMBUS_STATE_DIR": str(state), "TMPDIR": str(tmp)}
    swarm.env.update(env)
    swarm.env.pop("XDG_RUNTIME_DIR", None)
    sender = swarm.start_daemon("coder")
    receiver = swarm.start_daemon("planner")
    paths = AgentPaths.for_agent("coder", state)
    sock = paths.socket
    assert sock != paths.natural_socket and private_dir_problem(sock.parent) is None
    assert squat not in sock.parents and list(squat.iterdir()) == []
    proc = swarm.cli("send", "--agent-id", "coder", "--to", "planner", "--subject", "private", "--body", "b", "--json")
    assert proc.returncode == 0, proc.stderr
    assert '"status": "published"' in proc.stdout  # through the daemon (a direct send says so too, but...)
    assert (swarm.status("coder") or {}).get("counters", {}) is not None
    with Store(AgentPaths.for_agent("planner", state).store) as store:
        wait_for(lambda: any(m.subject == "private" for m in store.recent(5)), 15, what="the message")
    with Store(paths.store) as store:
        assert [row[0] for row in store._query("SELECT id FROM outbox")] != []  # ...only the daemon spools
    sender.stop()
    receiver.stop()
    assert not sock.parent.exists() and not (paths.root / SOCKET_POINTER).exists()


def test_stale_socket_is_unavailable_not_unsafe(tmp_path: Path) -> None:
    where = tmp_path / "d"
    where.mkdir(mode=0o700)
    path = where / "daemon.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # bound, never listening: like a crashed daemon's socket
    with pytest.raises(DaemonUnavailable):
        request(path, {"op": "status"}, timeout=2)
