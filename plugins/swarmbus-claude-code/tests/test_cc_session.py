"""Wake path ``session``: the live Claude Code session's inbox socket, registered by the swarmbus
MCP server that runs inside it, with the wake router falling back when it is gone.

A fake inbox (a Unix socket server that records what each connection wrote, like Claude Code's
own: newline-delimited JSON, never an answer) stands in for the session; the real `swarmbus
mcp-server` registers it from the environment Claude Code gives its children; a real daemon on a
private mosquitto posts to it. The real `claude` does the same in tests_real/test_real_session.py.
"""

from __future__ import annotations

import json
import socketserver
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swarmbus import testing
from swarmbus.testing import wait_for
from swarmbus_claude_code.session import post_lines, session_from_environ

AGENT = "coder"
TOKEN = "0123456789abcdef0123456789abcdef"


class FakeInbox(socketserver.ThreadingUnixStreamServer):
    """Records the bytes of every connection until the client closes its end."""

    daemon_threads = True

    def __init__(self, path: str) -> None:
        self.posts: list[bytes] = []
        self.lock = threading.Lock()
        inbox = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                data = self.rfile.read()
                with inbox.lock:
                    inbox.posts.append(data)

        super().__init__(path, Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def lines(self) -> list[list[dict[str, Any]]]:
        with self.lock:
            return [[json.loads(line) for line in post.splitlines() if line.strip()] for post in self.posts]


class Bus(testing.DaemonBus):
    def sessions(self) -> list[dict[str, Any]]:
        return list(self.status().get("host_sessions") or [])


@pytest.fixture
def bus(tmp_path_factory: pytest.TempPathFactory, fake_claude: Any, home: Path) -> Iterator[Bus]:
    with Bus.open(Path(tmp_path_factory.mktemp("ccsess")), AGENT, plugins="cc",
                 overrides={"SWARMBUS_HOST_TYPE": "cc", "SWARMBUS_WAKE_POLICY": "all"}) as b:
        yield b


@pytest.fixture
def session(bus: Bus) -> Iterator[tuple[FakeInbox, subprocess.Popen[bytes], subprocess.Popen[bytes]]]:
    """``(inbox, claude, mcp server)``: a fake session (a sleeping process as its claude, and its
    inbox socket) and the real swarmbus MCP server started inside it, registered with the daemon."""
    sock_dir = tempfile.mkdtemp(prefix="cc-socks-", dir="/tmp")  # AF_UNIX paths are short
    inbox = FakeInbox(f"{sock_dir}/1.sock")
    claude = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    env = {**bus.env, "CLAUDE_CODE_MESSAGING_SOCKET": f"{sock_dir}/1.sock", "CLAUDE_CODE_MESSAGING_TOKEN": TOKEN,
           "CLAUDE_CODE_SESSION_ID": "sess-1", "CLAUDE_PID": str(claude.pid)}
    server = subprocess.Popen([sys.executable, "-m", "swarmbus", "mcp-server", "--agent-id", AGENT],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        yield inbox, claude, server
    finally:
        for proc in (server, claude):
            proc.kill()
            proc.wait(10)
        inbox.shutdown()
        inbox.server_close()


def test_session_from_environ_and_the_post() -> None:
    env = {"CLAUDE_CODE_MESSAGING_SOCKET": "/tmp/x.sock", "CLAUDE_CODE_MESSAGING_TOKEN": TOKEN,
           "CLAUDE_CODE_SESSION_ID": "s1", "CLAUDE_PID": "4242"}
    found = session_from_environ(env)
    assert found is not None and (found.host, found.session_id, found.pid) == ("cc", "s1", 4242)
    assert dict(found.endpoint) == {"socket": "/tmp/x.sock", "token": TOKEN}
    assert TOKEN not in repr(found)  # the endpoint (with its token) never shows in logs or reprs
    assert session_from_environ({"CLAUDE_PID": "1"}) is None
    assert session_from_environ({**env, "SWARMBUS_WAKE_CHILD": "1"}) is None  # a headless wake's own run
    assert session_from_environ({"CLAUDE_CODE_MESSAGING_SOCKET": "/tmp/y"}, parent_pid=7).pid == 7  # type: ignore[union-attr]
    lines = [json.loads(line) for line in post_lines(TOKEN, "a\nb `x`").decode().splitlines()]
    assert lines == [{"type": "auth", "token": TOKEN}, {"type": "user", "message": {"role": "user", "content": "a\nb `x`"}}]


def test_a_message_is_posted_to_the_live_session(bus: Bus, session: Any, fake_claude: Any) -> None:
    inbox, _, _ = session
    bus.config("[wake]\ndebounce = \"1s\"\n")  # a burst goes into one wake (one post)
    bus.start_daemon()
    wait_for(lambda: [s for s in bus.sessions() if s["session_id"] == "sess-1"], 20, "the MCP server to register")
    assert TOKEN not in json.dumps(bus.sessions())  # status never shows the endpoint

    ids = [bus.send(f"MARKER-{i} look at this", subject=f"s{i}") for i in range(3)]
    posts = wait_for(lambda: [p for p in inbox.lines() if p], 20, "a post to the session's inbox")
    assert len(posts) == 1, posts
    auth, user = posts[0]
    assert auth == {"type": "auth", "token": TOKEN}
    text = user["message"]["content"]
    assert user["type"] == "user" and user["message"]["role"] == "user"
    assert all(f"MARKER-{i}" in text for i in range(3)) and "UNTRUSTED DATA" in text and "3 new messages" in text
    assert fake_claude.runs() == []  # no headless claude when the session took it

    delivery = wait_for(lambda: testing.finished_delivery(bus.env, AGENT), 15, "the wake's outcome")
    assert delivery["status"] == "ok" and ": session: posted 3 messages to Claude Code session sess-1" in delivery["detail"]
    trace = json.loads(bus.cli("trace", "--agent-id", AGENT, ids[0], "--json").stdout)
    surfaced = [s for s in trace["steps"] if s["step"] == "surfaced"]
    assert surfaced and surfaced[0]["detail"].startswith("session: posted")
    assert TOKEN not in bus.log()


def test_the_router_falls_back_when_the_session_is_gone(bus: Bus, session: Any, fake_claude: Any) -> None:
    inbox, claude, _ = session
    bus.start_daemon()
    wait_for(lambda: bus.sessions(), 20, "the MCP server to register")
    claude.kill()  # the session ends (its socket may linger): the registration goes with its process
    claude.wait(10)
    bus.send("MARKER-FALLBACK after the session closed")
    fake_claude.wait_for(lambda: fake_claude.records("finished"), 30, "a headless resume")
    assert "MARKER-FALLBACK" in fake_claude.runs()[0]["stdin"]
    delivery = wait_for(lambda: testing.finished_delivery(bus.env, AGENT), 15, "the wake's outcome")
    assert ": resume: claude exited 0" in delivery["detail"]
    assert "after session: no live Claude Code session" in delivery["detail"]
    assert "rewake: no Stop hook is waiting" in delivery["detail"]
    assert not [p for p in inbox.lines() if p]


def test_wake_test_proves_the_session_path_without_a_turn(bus: Bus, session: Any, fake_claude: Any) -> None:
    inbox, _, _ = session
    bus.start_daemon()
    wait_for(lambda: bus.sessions(), 20, "the MCP server to register")
    proc = bus.cli("wake", "test", "--agent-id", AGENT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "session  ready  tested end to end" in proc.stdout and "would fire now: session" in proc.stdout
    assert "rewake   no" in proc.stdout
    answer = json.loads(bus.cli("wake", "test", "--agent-id", AGENT, "--json").stdout)
    assert [p["name"] for p in answer["paths"]] == ["session", "rewake", "resume"]
    assert [p["ready"] for p in answer["paths"]] == [True, False, True]
    with inbox.lock:
        assert inbox.posts and all(post == b"" for post in inbox.posts)  # connected, never posted
    assert fake_claude.runs() == []


def test_no_path_would_fire_without_session_hook_or_claude(bus: Bus, tmp_path: Path) -> None:
    bus.config(f"[plugins.cc]\nclaude_path = \"{tmp_path / 'missing' / 'claude'}\"\n")
    bus.start_daemon()
    proc = bus.cli("wake", "test", "--agent-id", AGENT)
    assert proc.returncode == 1 and "no path would fire now" in proc.stdout
    assert "claude not found" in proc.stdout


def test_a_restarted_daemon_still_knows_the_live_session(bus: Bus, session: Any, fake_claude: Any) -> None:
    inbox, _, server = session
    daemon = bus.start_daemon()
    wait_for(lambda: bus.sessions(), 20, "the MCP server to register")
    server.kill()  # no more refreshes: what the restarted daemon knows comes from its saved registry
    server.wait(10)
    testing.stop_daemon(daemon)
    bus.start_daemon()
    assert [s["session_id"] for s in bus.sessions()] == ["sess-1"]
    bus.send("MARKER-AFTER-RESTART")
    posts = wait_for(lambda: [p for p in inbox.lines() if p], 20, "a post to the session's inbox")
    assert "MARKER-AFTER-RESTART" in posts[0][1]["message"]["content"]
    assert fake_claude.runs() == []
