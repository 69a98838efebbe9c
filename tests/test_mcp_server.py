"""``swarmbus mcp-server``, driven over stdio by the MCP SDK's own client against real daemons
on a private broker. Works with mcp 1.x and 2.x (their result models differ in field case)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import swarmbus
from conftest import SwarmEnv, wait_for
from swarmbus.store import Store

ME = "coder"
PEER = "planner"
HAS_MCP = importlib.util.find_spec("mcp") is not None
requires_mcp = pytest.mark.skipif(not HAS_MCP, reason="the mcp package is not installed: pip install 'swarmbus[mcp]'")
pytestmark = pytest.mark.broker


def field(model: Any, snake: str, camel: str) -> Any:
    """A result field under mcp 2.x (snake_case) or 1.x (camelCase)."""
    return getattr(model, snake) if hasattr(model, snake) else getattr(model, camel)


def mcp_session(swarm: SwarmEnv, body: Callable[[Any, Any], Awaitable[Any]], agent_id: str = ME) -> Any:
    """Start ``swarmbus mcp-server`` for ``agent_id``, initialize, run ``body(session, init)``.
    The SDK's stdio client ends the server process when the block exits."""
    import anyio
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    async def main() -> Any:
        params = StdioServerParameters(command=sys.executable, args=["-m", "swarmbus", "mcp-server", "--agent-id", agent_id],
                                       env=swarm.env)
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            with anyio.fail_after(60):
                init = await session.initialize()
                return await body(session, init)

    return anyio.run(main)


def result_text(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


async def call(session: Any, tool: str, **arguments: Any) -> Any:
    """Call a tool that must succeed; returns its JSON result."""
    result = await session.call_tool(tool, arguments)
    assert not field(result, "is_error", "isError"), result_text(result)
    return json.loads(result_text(result))


async def call_error(session: Any, tool: str, **arguments: Any) -> str:
    result = await session.call_tool(tool, arguments)
    assert field(result, "is_error", "isError"), result_text(result)
    return result_text(result)


def send_from_peer(swarm: SwarmEnv, subject: str, to: str = ME) -> str:
    proc = swarm.cli("send", "--agent-id", PEER, "--to", to, "--subject", subject, "--body", f"body of {subject}",
                     "--json", check=True)
    return str(json.loads(proc.stdout)["id"])


def stored(swarm: SwarmEnv, agent_id: str) -> dict[str, dict[str, Any]]:
    path = swarm.store_path(agent_id)
    if not path.exists():
        return {}
    with Store(path) as s:
        return {m.id: m.to_json() for m in s.messages_after(0)}


def wait_stored(swarm: SwarmEnv, agent_id: str, message_id: str) -> dict[str, Any]:
    return wait_for(lambda: stored(swarm, agent_id).get(message_id), 15,  # type: ignore[no-any-return]
                    what=f"{message_id} in {agent_id}'s store")


# -- without the SDK -------------------------------------------------------------------------------
def shadow_mcp(tmp_path: Path, init: str) -> dict[str, str]:
    """Environment whose ``import mcp`` runs ``init`` instead of the installed SDK."""
    fake = tmp_path / "shadow" / "mcp"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(init)
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(fake.parent), os.environ.get("PYTHONPATH")) if p)}


def test_without_the_sdk_exits_2_with_the_install_hint(swarm: SwarmEnv, tmp_path: Path) -> None:
    env = shadow_mcp(tmp_path, "raise ModuleNotFoundError(\"No module named 'mcp'\", name='mcp')\n")
    proc = swarm.cli("mcp-server", "--agent-id", ME, env=env, input="")
    assert proc.returncode == 2, proc.stderr
    assert "needs the MCP Python SDK: pip install 'swarmbus[mcp]'" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_an_unusable_sdk_exits_2_saying_why(swarm: SwarmEnv, tmp_path: Path) -> None:
    env = shadow_mcp(tmp_path, "raise ImportError('cannot import name eval_type_backport (test)')\n")
    proc = swarm.cli("mcp-server", "--agent-id", ME, env=env, input="")
    assert proc.returncode == 2, proc.stderr
    assert "cannot be used" in proc.stderr and "eval_type_backport (test)" in proc.stderr
    assert "pip install -U 'swarmbus[mcp]'" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


# -- with the SDK ----------------------------------------------------------------------------------
@requires_mcp
def test_initialize_reports_swarmbus_version_and_lists_the_tools(swarm: SwarmEnv) -> None:
    async def body(session: Any, init: Any) -> Any:
        return init, (await session.list_tools()).tools

    init, tools = mcp_session(swarm, body)
    info = field(init, "server_info", "serverInfo")
    assert info.name == "swarmbus"
    assert info.version == swarmbus.__version__
    assert "coder" in (init.instructions or "")
    by_name = {t.name: t for t in tools}
    assert set(by_name) == {"send_message", "read_inbox", "list_agents"}
    schemas = {name: field(t, "input_schema", "inputSchema") for name, t in by_name.items()}
    assert list(schemas["send_message"]["properties"]) == [
        "to", "subject", "body", "content_type", "priority", "reply_to", "in_reply_to"]
    assert sorted(schemas["send_message"]["required"]) == ["body", "subject", "to"]
    assert list(schemas["read_inbox"]["properties"]) == ["ack_ids", "max_messages", "wait_seconds"]
    assert not schemas["read_inbox"].get("required")
    assert schemas["list_agents"]["properties"] == {}
    for tool in tools:
        assert tool.description


@requires_mcp
def test_send_message_reaches_another_daemon(swarm: SwarmEnv) -> None:
    swarm.start_daemon(ME)
    swarm.start_daemon(PEER)

    async def body(session: Any, init: Any) -> Any:
        sent = await call(session, "send_message", to=PEER, subject="review", body="got a minute?",
                          content_type="text/markdown", priority="HIGH", reply_to=ME, in_reply_to="abc-1")
        bad_to = await call_error(session, "send_message", to="Bad Id!", subject="x", body="y")
        bad_subject = await call_error(session, "send_message", to=PEER, subject="two\nlines", body="y")
        return sent, bad_to, bad_subject

    sent, bad_to, bad_subject = mcp_session(swarm, body)
    assert sent["to"] == PEER and sent["status"] == "published"
    message = wait_stored(swarm, PEER, sent["id"])
    assert message["from"] == ME and message["subject"] == "review" and message["body"] == "got a minute?"
    assert message["content_type"] == "text/markdown" and message["priority"] == "high"
    assert message["reply_to"] == ME and message["in_reply_to"] == "abc-1"
    assert "invalid recipient 'Bad Id!'" in bad_to
    assert "subject contains control characters" in bad_subject


@requires_mcp
def test_send_message_without_a_daemon_connects_directly(swarm: SwarmEnv) -> None:
    swarm.start_daemon(PEER)

    async def body(session: Any, init: Any) -> Any:
        return await call(session, "send_message", to=PEER, subject="direct", body="no daemon here")

    sent = mcp_session(swarm, body)
    assert sent["status"] == "published"
    assert wait_stored(swarm, PEER, sent["id"])["from"] == ME


@requires_mcp
def test_read_inbox_is_non_destructive_until_acknowledged(swarm: SwarmEnv) -> None:
    swarm.start_daemon(ME)
    first = send_from_peer(swarm, "one")
    second = send_from_peer(swarm, "two")
    wait_stored(swarm, ME, first)
    wait_stored(swarm, ME, second)

    async def reads(session: Any, init: Any) -> Any:
        a = await call(session, "read_inbox")
        b = await call(session, "read_inbox", max_messages=1)
        c = await call(session, "read_inbox", ack_ids=[first])
        return a, b, c

    a, b, c = mcp_session(swarm, reads)
    assert [m["id"] for m in a["messages"]] == [first, second]
    assert a["messages"][0]["subject"] == "one" and a["messages"][0]["body"] == "body of one"
    assert a["messages"][0]["from"] == PEER and "UNTRUSTED" in a["note"]
    assert [m["id"] for m in b["messages"]] == [first]  # returned again: nothing was acknowledged
    assert c["acked"] == 1 and [m["id"] for m in c["messages"]] == [second]

    # the acknowledgement is the daemon's, not the server process's: a new server sees it too
    async def later(session: Any, init: Any) -> Any:
        again = await call(session, "read_inbox")
        ack_only = await call(session, "read_inbox", ack_ids=[second], max_messages=0)
        empty = await call(session, "read_inbox")
        return again, ack_only, empty

    again, ack_only, empty = mcp_session(swarm, later)
    assert [m["id"] for m in again["messages"]] == [second]
    assert ack_only == {"messages": [], "acked": 1}
    assert empty["messages"] == []
    # other readers are unaffected
    with Store(swarm.store_path(ME)) as s:
        assert s.cursor("default") == 0 and s.cursor("mcp") == 2


@requires_mcp
def test_read_inbox_wait_seconds_returns_a_message_sent_during_the_wait(swarm: SwarmEnv) -> None:
    import anyio

    swarm.start_daemon(ME)
    sent: list[str] = []

    async def body(session: Any, init: Any) -> Any:
        started = time.monotonic()
        empty = await call(session, "read_inbox", wait_seconds=0.5)
        waited = time.monotonic() - started
        results: dict[str, Any] = {}

        async def reader() -> None:
            results["read"] = await call(session, "read_inbox", wait_seconds=30)

        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            assert "read" not in results
            sent.append(await anyio.to_thread.run_sync(send_from_peer, swarm, "late"))
        return empty, waited, results["read"], time.monotonic() - started

    empty, waited, read, elapsed = mcp_session(swarm, body)
    assert empty["messages"] == [] and waited >= 0.5
    assert [m["id"] for m in read["messages"]] == sent
    assert elapsed < 30


@requires_mcp
def test_read_inbox_bad_arguments(swarm: SwarmEnv) -> None:
    swarm.start_daemon(ME)

    async def body(session: Any, init: Any) -> Any:
        return (await call_error(session, "read_inbox", max_messages=1000),
                await call_error(session, "read_inbox", wait_seconds=-1))

    too_many, negative = mcp_session(swarm, body)
    assert "max_messages must be between 0 and 100" in too_many
    assert "wait_seconds must be between 0 and 600" in negative


@requires_mcp
def test_read_inbox_without_a_daemon_errors_and_never_subscribes(swarm: SwarmEnv) -> None:
    daemon = swarm.start_daemon(ME)  # creates the agent's persistent session on the broker
    assert daemon.stop() == 0
    queued = send_from_peer(swarm, "queued while down")

    async def body(session: Any, init: Any) -> Any:
        return await call_error(session, "read_inbox")

    error = mcp_session(swarm, body)
    assert "no swarmbus daemon is running for coder" in error
    assert "swarmbus start --agent-id coder" in error
    assert queued not in stored(swarm, ME)
    # the broker still holds the message for the daemon: nobody else took the session
    swarm.start_daemon(ME)
    wait_stored(swarm, ME, queued)


@requires_mcp
def test_list_agents_shows_online_daemons(swarm: SwarmEnv) -> None:
    swarm.start_daemon(ME)
    peer = swarm.start_daemon(PEER)

    async def body(session: Any, init: Any) -> Any:
        return await call(session, "list_agents")

    agents = {a["agent"]: a for a in mcp_session(swarm, body)["agents"]}
    assert agents[ME]["status"] == "online" and agents[PEER]["status"] == "online"
    assert agents[ME]["last_seen"] and set(agents[ME]) == {"agent", "status", "last_seen"}
    assert peer.stop() == 0
    agents = {a["agent"]: a for a in mcp_session(swarm, body)["agents"]}
    assert agents[PEER]["status"] == "offline" and agents[ME]["status"] == "online"
