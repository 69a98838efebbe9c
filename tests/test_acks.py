"""Per-consumer acknowledgements: ``Store.unacked``/``Store.ack`` (no broker), and the
daemon's ``read`` control op that the MCP server uses (real daemon on a private broker)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import SwarmEnv, wait_for
from swarmbus.control import request
from swarmbus.paths import AgentPaths
from swarmbus.store import Store

ME = "coder"
INBOX = f"agents/{ME}/inbox"


def payload(message_id: str) -> bytes:
    return json.dumps({
        "id": message_id, "from": "planner", "to": ME, "ts": "2026-01-01T00:00:00+00:00",
        "subject": f"s-{message_id}", "body": "hello", "content_type": "text/plain", "priority": "normal",
        "reply_to": None,
    }).encode("utf-8")


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with Store(tmp_path / "store.sqlite3") as s:
        for i in range(1, 6):
            assert s.accept(INBOX, payload(f"m{i}"), ME).outcome == "stored"
        yield s


def ids(messages: list[Any]) -> list[str]:
    return [m.id for m in messages]


def test_unacked_is_non_destructive_and_ordered(store: Store) -> None:
    assert ids(store.unacked("mcp", 3)) == ["m1", "m2", "m3"]
    assert ids(store.unacked("mcp", 3)) == ["m1", "m2", "m3"]  # reading changed nothing
    assert store.cursor("mcp") == 0


def test_ack_moves_the_cursor_over_the_contiguous_prefix(store: Store) -> None:
    assert store.ack("mcp", ["m2", "m4"]) == 2
    assert store.cursor("mcp") == 0  # m1 is not acknowledged: nothing contiguous yet
    assert ids(store.unacked("mcp", 10)) == ["m1", "m3", "m5"]
    assert store.ack("mcp", ["m1"]) == 1
    assert store.cursor("mcp") == 2  # m1, m2
    assert ids(store.unacked("mcp", 10)) == ["m3", "m5"]
    assert store.ack("mcp", ["m3", "m5"]) == 2
    assert store.cursor("mcp") == 5
    assert store.unacked("mcp", 10) == []
    # ack rows below the cursor are implied by it and dropped
    assert store._query("SELECT COUNT(*) FROM acks")[0][0] == 0


def test_ack_ignores_unknown_repeated_and_already_covered_ids(store: Store) -> None:
    assert store.ack("mcp", []) == 0
    assert store.ack("mcp", ["nope"]) == 0
    assert store.ack("mcp", ["m1", "m1"]) == 1
    assert store.ack("mcp", ["m1"]) == 0  # below the cursor now
    assert store.ack("mcp", ["m3"]) == 1
    assert store.ack("mcp", ["m3"]) == 0  # already acknowledged, above the cursor
    assert store.cursor("mcp") == 1


def test_consumers_are_independent(store: Store) -> None:
    store.ack("mcp", ["m1", "m2"])
    assert ids(store.unacked("other", 2)) == ["m1", "m2"]
    assert store.cursor("other") == 0
    # a consumer whose cursor was set by `read` starts after it
    store.set_cursor("other", 4)
    assert ids(store.unacked("other", 10)) == ["m5"]


def test_acks_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    with Store(path) as s:
        for i in range(1, 4):
            s.accept(INBOX, payload(f"m{i}"), ME)
        s.ack("mcp", ["m2"])
    with Store(path) as s:
        assert ids(s.unacked("mcp", 10)) == ["m1", "m3"]


# -- the daemon's read op ------------------------------------------------------------------------
def socket_of(swarm: SwarmEnv, agent_id: str) -> Path:
    return AgentPaths.for_agent(agent_id, swarm.state_dir).socket


def send(swarm: SwarmEnv, to: str, subject: str) -> str:
    proc = swarm.cli("send", "--agent-id", "planner", "--to", to, "--subject", subject, "--body", "b", "--json",
                     check=True)
    return str(json.loads(proc.stdout)["id"])


def stored_ids(swarm: SwarmEnv, agent_id: str) -> list[str]:
    with Store(swarm.store_path(agent_id)) as s:
        return s.message_ids()


@pytest.mark.broker
def test_read_op_acks_and_returns(swarm: SwarmEnv) -> None:
    swarm.start_daemon(ME)
    sock = socket_of(swarm, ME)
    first, second = send(swarm, ME, "one"), send(swarm, ME, "two")
    wait_for(lambda: len(stored_ids(swarm, ME)) == 2, what="two stored messages")

    answer = request(sock, {"op": "read", "consumer": "mcp", "max": 1})
    assert answer["ok"] and answer["acked"] == 0
    assert [m["id"] for m in answer["messages"]] == [first]
    assert answer["messages"][0]["subject"] == "one" and answer["messages"][0]["from"] == "planner"
    # again: the same message (nothing acknowledged)
    assert [m["id"] for m in request(sock, {"op": "read", "consumer": "mcp"})["messages"]] == [first, second]
    # acknowledge first, then read: only the second
    answer = request(sock, {"op": "read", "consumer": "mcp", "ack_ids": [first]})
    assert answer["acked"] == 1 and [m["id"] for m in answer["messages"]] == [second]
    # max 0 only acknowledges
    answer = request(sock, {"op": "read", "consumer": "mcp", "ack_ids": [second], "max": 0})
    assert answer == {"ok": True, "acked": 1, "messages": []}
    assert request(sock, {"op": "read", "consumer": "mcp"})["messages"] == []
    # the `read` command's consumer is untouched
    with Store(swarm.store_path(ME)) as s:
        assert s.cursor("mcp") == 2 and s.cursor("default") == 0


@pytest.mark.broker
def test_read_op_waits_for_a_new_message(swarm: SwarmEnv) -> None:
    swarm.start_daemon(ME)
    sock = socket_of(swarm, ME)
    started = time.monotonic()
    answer = request(sock, {"op": "read", "consumer": "mcp", "wait": 0.5}, timeout=10)
    assert answer["messages"] == [] and time.monotonic() - started >= 0.5

    result: dict[str, Any] = {}

    def reader() -> None:
        result["answer"] = request(sock, {"op": "read", "consumer": "mcp", "wait": 30}, timeout=40)

    thread = threading.Thread(target=reader)
    started = time.monotonic()
    thread.start()
    try:
        assert "answer" not in result
        message_id = send(swarm, ME, "late")
    finally:
        thread.join(40)
    assert [m["id"] for m in result["answer"]["messages"]] == [message_id]
    assert time.monotonic() - started < 30


@pytest.mark.broker
@pytest.mark.parametrize(("req", "needle"), [
    ({"op": "read"}, "consumer"),
    ({"op": "read", "consumer": "bad name!"}, "consumer"),
    ({"op": "read", "consumer": "mcp", "ack_ids": "m1"}, "ack_ids"),
    ({"op": "read", "consumer": "mcp", "max": "lots"}, "number"),
    ({"op": "read", "consumer": "mcp", "max": -1}, "max"),
    ({"op": "read", "consumer": "mcp", "wait": 1e9}, "wait"),
])
def test_read_op_rejects_bad_requests(swarm: SwarmEnv, req: dict[str, Any], needle: str) -> None:
    swarm.start_daemon(ME)
    answer = request(socket_of(swarm, ME), req)
    assert answer["ok"] is False and answer["kind"] == "usage" and needle in answer["error"]
