"""Roles, capabilities and swarms: the settings (flags, environment, config file, validation),
the daemon's retained presence record, its parsing, and ``swarmbus list --role/--capability/--swarm``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SwarmEnv, wait_for
from peers import presence
from swarmbus.config import CONFIG_ENV
from swarmbus.errors import ConfigError
from swarmbus.presence_records import parse_presence, presence_payload
from swarmbus.settings import load_settings


def _settings(tmp_path: Path, toml: str = "", **env: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "config.toml"
    path.write_text(toml)
    return load_settings(env={CONFIG_ENV: str(path), **env})[0]


def test_settings_from_file_env_and_defaults(tmp_path: Path) -> None:
    plain = _settings(tmp_path)
    assert (plain.role, plain.capabilities, plain.swarm) == (None, [], None)
    assert (plain.tasks.host, plain.tasks.capacity, plain.tasks.lease, plain.tasks.max_attempts) == ("auto", 4, 60.0, 3)
    filed = _settings(tmp_path, 'role = "reviewer"\ncapabilities = ["python", "gpu", "python"]\nswarm = "ci"\n'
                                '[tasks]\nhost = true\ncapacity = 2\n')
    assert (filed.role, filed.capabilities, filed.swarm) == ("reviewer", ["python", "gpu"], "ci")
    assert (filed.tasks.host, filed.tasks.capacity) == ("yes", 2)
    env = _settings(tmp_path, 'role = "reviewer"\n', SWARMBUS_ROLE="builder", SWARMBUS_CAPABILITIES="go, rust",
                    SWARMBUS_SWARM="prod", SWARMBUS_TASK_HOST="no", SWARMBUS_TASK_OFFER_INTERVAL="0.5")
    assert (env.role, env.capabilities, env.swarm, env.tasks.host, env.tasks.offer_interval) == (
        "builder", ["go", "rust"], "prod", "no", 0.5)


@pytest.mark.parametrize(("toml", "env", "fragment"), [
    ('role = "Reviewer"\n', {}, "role"),
    ("", {"SWARMBUS_SWARM": "a b"}, "swarm"),
    ('capabilities = ["ok", "not ok"]\n', {}, "capabilities"),
    ("", {"SWARMBUS_CAPABILITIES": ",".join(f"c{i}" for i in range(33))}, "at most 32"),
    ('capabilities = "x" \n[tasks]\ncapacity = -1\n', {}, "tasks.capacity"),
    ("[tasks]\nlease = 0.01\n", {}, "tasks.lease"),
])
def test_bad_values_are_config_errors_naming_the_key(tmp_path: Path, toml: str, env: dict[str, str],
                                                     fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        _settings(tmp_path, toml, **env)


def test_presence_records_carry_the_profile_and_parse_defensively() -> None:
    payload = presence_payload("rev-1", "online", ts="2026-01-01T00:00:00+00:00", role="reviewer",
                               capabilities=["python", "gpu"], swarm="ci")
    assert list(json.loads(payload))[:2] == ["agent", "status"]  # the predecessor's keys first
    record = parse_presence("agents/rev-1/presence", payload)
    assert record is not None and (record.role, record.capabilities, record.swarm) == ("reviewer", ("python", "gpu"), "ci")
    old = parse_presence("agents/old/presence", b'{"agent": "old", "status": "online"}')
    assert old is not None and (old.role, old.capabilities, old.swarm) == (None, (), None)
    hostile = json.dumps({"agent": "h", "status": "online", "role": "Not A Name", "swarm": 7,
                          "capabilities": ["ok", 5, "bad name", "ok", *[f"c{i}" for i in range(40)]]}).encode()
    record = parse_presence("agents/h/presence", hostile)
    assert record is not None and record.role is None and record.swarm is None
    assert record.capabilities[0] == "ok" and len(record.capabilities) == 32 and "bad name" not in record.capabilities
    assert parse_presence("agents/h/presence", json.dumps({"agent": "h", "status": "online",
                                                            "capabilities": "python"}).encode()).capabilities == ()  # type: ignore[union-attr]


def test_start_flags_reach_presence_and_list_filters(swarm: SwarmEnv) -> None:
    swarm.start_daemon("rev-1", "--role", "reviewer", "--capability", "python", "--capability", "gpu",
                       "--swarm", "ci")
    swarm.start_daemon("rev-2", "--role", "reviewer", "--capability", "python", env={"SWARMBUS_SWARM": "ci"})
    swarm.start_daemon("plain")
    port = swarm.broker.port  # type: ignore[attr-defined]
    _, _, record = presence(port, "rev-1")
    assert (record["role"], record["capabilities"], record["swarm"]) == ("reviewer", ["python", "gpu"], "ci")
    _, _, record = presence(port, "plain")
    assert not {"role", "capabilities", "swarm"} & set(record)  # left out when unset

    def agents(*flags: str) -> list[str]:
        proc = swarm.cli("list", "--json", *flags)
        assert proc.returncode == 0, proc.stderr
        return sorted(r["agent"] for r in json.loads(proc.stdout))

    wait_for(lambda: agents() == ["plain", "rev-1", "rev-2"], 15, what="three agents online")
    assert agents("--role", "reviewer") == ["rev-1", "rev-2"]
    assert agents("--capability", "python", "--capability", "gpu") == ["rev-1"]
    assert agents("--swarm", "ci", "--capability", "python") == ["rev-1", "rev-2"]
    assert agents("--role", "nobody") == []
    rows = {r["agent"]: r for r in json.loads(swarm.cli("list", "--json").stdout)}
    assert (rows["rev-2"]["role"], rows["rev-2"]["capabilities"], rows["rev-2"]["swarm"]) == ("reviewer", ["python"], "ci")
    assert (rows["plain"]["role"], rows["plain"]["capabilities"], rows["plain"]["swarm"]) == (None, [], None)
    text = swarm.cli("list", "--role", "reviewer").stdout
    assert "role reviewer" in text and "swarm ci" in text and "[python, gpu]" in text and "plain" not in text
    none = swarm.cli("list", "--role", "nobody")
    assert none.returncode == 0 and "no agents online with role nobody" in none.stdout
    bad = swarm.cli("list", "--role", "Bad!")
    assert bad.returncode == 2 and "--role" in bad.stderr
    refused = swarm.cli("start", "--agent-id", "x", "--capability", "not ok")
    assert refused.returncode == 2 and "capabilit" in refused.stderr


def test_start_detach_forwards_every_capability() -> None:
    from swarmbus.cli.common import cli_layer
    from swarmbus.cli.detach import _forwarded_flags
    from swarmbus.cli.main import build_parser

    args = build_parser(only="start").parse_args(["start", "--agent-id", "x", "--capability", "py", "--capability",
                                                  "gpu", "--role", "r", "--swarm", "s", "--detach"])
    assert cli_layer(args)["capabilities"] == ("py,gpu", "--capability")
    assert _forwarded_flags(args, "x")[2:] == ["--role", "r", "--capability", "py,gpu", "--swarm", "s"]
