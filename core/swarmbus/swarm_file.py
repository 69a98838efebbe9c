"""The swarm file ``swarmbus swarm up FILE`` reads, and the record ``up`` keeps of what it started.

A swarm file is TOML (read with :mod:`tomllib`, validated with pydantic)::

    name = "opencto-dev"                  # the swarm: 1-64 of a-z 0-9 _ - (like an agent id)
    broker = "mqtt://localhost:1883"      # optional; else the user's settings (flags, env, config)

    [[agents]]
    id = "task-manager"                   # required, unique in the file
    role = "task-manager"                 # optional
    capabilities = ["planning", "triage"] # optional, at most 32
    host_type = "cc"                      # optional: recorded for the daemon (SWARMBUS_HOST_TYPE)
    wake_policy = "high"                  # optional: high, all, none, priority-high
    env = { SWARMBUS_HANDLER_TIMEOUT = "900" }   # optional extra environment for this daemon

:func:`load_swarm_file` returns a :class:`SwarmSpec` or raises :class:`swarmbus.errors.ConfigError`
with one line naming the file, the key and what is wrong (the CLI exits 2).

The record (:func:`record_path`: ``<state>/swarms/<name>.json``, mode 0600 in a 0700 directory) says
which agents ``up`` started and how (tmux panes or detached daemons, and the tmux socket), so
``swarm down NAME`` and ``swarm status NAME`` work without the file.
"""

from __future__ import annotations

import re
import time
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from swarmbus.envelope import AGENT_ID_RE, EnvelopeError, validate_own_id
from swarmbus.errors import ConfigError
from swarmbus.files import read_json_file, write_json_file
from swarmbus.paths import ensure_private_dir
from swarmbus.settings import MAX_CAPABILITIES, parse_names

MAX_AGENTS = 64
"""The most agents one swarm file may list."""
WAKE_POLICIES = ("high", "all", "none", "priority-high")
"""The values of ``wake_policy`` (those of ``swarmbus start --wake-policy``)."""
RECORD_VERSION = 1

_ENV_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
RESERVED_ENV: dict[str, str] = {
    "SWARMBUS_AGENT_ID": "set by the agent's id",
    "SWARMBUS_ROLE": "use role",
    "SWARMBUS_CAPABILITIES": "use capabilities",
    "SWARMBUS_SWARM": "set by the swarm's name",
    "SWARMBUS_HOST_TYPE": "use host_type",
    "SWARMBUS_WAKE_POLICY": "use wake_policy",
    "SWARMBUS_BROKER_URL": "use broker",
    "SWARMBUS_STATE_DIR": "every agent of a swarm uses the state dir of `swarmbus swarm up` (--state-dir)",
    "SWARMBUS_CONFIG": "every agent of a swarm uses the config file of `swarmbus swarm up` (--config)",
    "SWARMBUS_SUPERVISOR": "set by swarmbus",
    "SWARMBUS_BROKER_PASSWORD": "keep secrets out of the swarm file: a password file in the config file",
    "MQTT_PASSWORD": "keep secrets out of the swarm file: a password file in the config file",
    "TMUX": "set by tmux",
}
"""Keys ``env`` may not set, and why (the swarm file has a field for it, or it is no place for it)."""


def _a_name(value: Any, what: str) -> str:
    if isinstance(value, str) and AGENT_ID_RE.match(value):
        return value
    raise ValueError(f"{value!r} is not a {what}: use 1-64 of a-z, 0-9, '_' and '-'")


class AgentSpec(BaseModel):
    """One ``[[agents]]`` entry. ``id``: the agent id; ``role``: its role or None;
    ``capabilities``: names (at most 32); ``host_type``: the host the daemon's host plugin wakes
    (``cc``, ``openclaw``, ``codex``, ...; None: no host), recorded as ``SWARMBUS_HOST_TYPE`` (the
    host itself is set up by ``swarmbus init --host-type``, not by ``swarm up``); ``wake_policy``:
    one of :data:`WAKE_POLICIES` or None (the user's setting); ``env``: extra environment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    role: str | None = None
    capabilities: list[str] = Field(default_factory=list)
    host_type: str | None = None
    wake_policy: Literal["high", "all", "none", "priority-high"] | None = None
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value  # pydantic words the type error
        try:
            return validate_own_id(value)
        except EnvelopeError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("role", "host_type", mode="before")
    @classmethod
    def _name(cls, value: Any, info: Any) -> Any:
        if value is None or not isinstance(value, str):
            return value
        return _a_name(value, info.field_name.replace("_", " "))

    @field_validator("capabilities", mode="before")
    @classmethod
    def _capabilities(cls, value: Any) -> Any:
        if not isinstance(value, list):
            raise ValueError(f"a list of capability names, like [\"python\", \"gpu\"], not {value!r}")
        if len(value) > MAX_CAPABILITIES:
            raise ValueError(f"at most {MAX_CAPABILITIES} capabilities, not {len(value)}")
        for item in value:
            _a_name(item, "capability")
        return parse_names(value)

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        for key, text in value.items():
            if not _ENV_NAME.match(key):
                raise ValueError(f"{key!r} is not an environment variable name (A-Z, a-z, 0-9, _)")
            if key in RESERVED_ENV:
                raise ValueError(f"{key} may not be set here: {RESERVED_ENV[key]}")
            if not isinstance(text, str):
                raise ValueError(f"{key}: the value must be a string (quote it), not {text!r}")
            if _CONTROL.search(text):
                raise ValueError(f"{key}: the value holds a control character (newline, NUL, ...)")
        return value


class SwarmSpec(BaseModel):
    """A validated swarm file: ``name`` (the swarm), ``broker`` (a URL or HOST[:PORT], or None:
    the user's settings) and ``agents`` (1 to :data:`MAX_AGENTS`, unique ids)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    broker: str | None = None
    agents: list[AgentSpec] = Field(min_length=1, max_length=MAX_AGENTS)

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> Any:
        return _a_name(value, "swarm name") if isinstance(value, str) else value

    @field_validator("broker", mode="before")
    @classmethod
    def _broker(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        from urllib.parse import urlsplit

        from swarmbus.config import expand_broker_url

        try:
            expand_broker_url(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        if urlsplit(value if "://" in value else "mqtt://" + value).password is not None:
            raise ValueError("the URL holds a password: keep secrets out of the swarm file (give the user name "
                             "and a password file in the config file, or SWARMBUS_BROKER_PASSWORD_FILE)")
        return value.strip()


_KEYS = {"name", "broker", "agents"}
_AGENT_KEYS = ("id", "role", "capabilities", "host_type", "wake_policy", "env")


def _where(loc: tuple[int | str, ...], data: Any) -> str:
    """A pydantic location as a key path: ``agents[2] (id deploy).capabilities[0]``."""
    out = ""
    node = data
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
            if i == 1 and loc[0] == "agents" and isinstance(node, list) and part < len(node):
                agent_id = node[part].get("id") if isinstance(node[part], dict) else None
                if isinstance(agent_id, str) and AGENT_ID_RE.match(agent_id):
                    out += f" (id {agent_id})"
        else:
            out += ("." if out else "") + part
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return out or "the file"


def _what(err: Any) -> str:
    kind = err["type"]
    loc = err["loc"]
    if kind == "extra_forbidden":
        known = _AGENT_KEYS if len(loc) == 3 and loc[0] == "agents" else sorted(_KEYS)
        return f"unknown key (use {', '.join(known)})"
    if kind == "missing":
        return "missing (it is required)"
    if kind == "too_short" and loc == ("agents",):
        return "no agents: add at least one [[agents]] table with an id"
    if kind == "too_long" and loc == ("agents",):
        return f"more than {MAX_AGENTS} agents"
    message = str(err["msg"])
    return message.removeprefix("Value error, ")


def parse_swarm(data: dict[str, Any], source: str) -> SwarmSpec:
    """Validate ``data`` (a parsed swarm file) and return it.

    :raises ConfigError: one line: ``SOURCE: KEY: what is wrong`` (and how many more problems)."""
    try:
        spec = SwarmSpec.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise ConfigError(f"{source}: {_where(tuple(first['loc']), data)}: {_what(first)}{more}") from None
    seen: dict[str, int] = {}
    for i, agent in enumerate(spec.agents):
        if agent.id in seen:
            raise ConfigError(f"{source}: agents[{i}].id: {agent.id!r} is listed twice (also agents[{seen[agent.id]}])")
        seen[agent.id] = i
    return spec


def load_swarm_file(path: Path) -> SwarmSpec:
    """Read and validate the swarm file at ``path``.

    :raises ConfigError: it cannot be read, is not TOML, or does not describe a swarm (one line
        naming the file, the key and what is wrong)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a swarm file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_swarm(data, str(path))


# -- the record of what `up` started ----------------------------------------------------------------


def swarms_dir(state_dir: Path) -> Path:
    """``<state>/swarms``: the records of swarms started on this machine."""
    return state_dir / "swarms"


def record_path(state_dir: Path, name: str) -> Path:
    """``<state>/swarms/<name>.json``."""
    return swarms_dir(state_dir) / f"{name}.json"


def lock_path(state_dir: Path, name: str) -> Path:
    """``<state>/swarms/<name>.lock``: held while ``up`` or ``down`` works on the swarm."""
    return swarms_dir(state_dir) / f"{name}.lock"


def read_record(state_dir: Path, name: str) -> dict[str, Any] | None:
    """The record of swarm ``name`` (see :func:`write_record`), or None (never started here, or
    unreadable)."""
    record = read_json_file(record_path(state_dir, name))
    if record is None or record.get("swarm") != name or not isinstance(record.get("agents"), list):
        return None
    return record


def write_record(state_dir: Path, name: str, record: dict[str, Any]) -> Path:
    """Write ``record`` for swarm ``name`` atomically, mode 0600 (``swarms/`` made 0700), adding
    ``swarm``, ``v`` and ``updated_at`` (Unix s). The shape ``swarm up`` writes: ``{"swarm",
    "v": 1, "file" (absolute path or None), "state_dir", "tmux": {"socket", "session"} or None,
    "state": "up" | "down", "agents": [{"agent_id", "role", "mode": "tmux" | "detached" |
    "foreground" | "systemd" | ..., "started": bool (by swarm up), "pid", "pane"}], "updated_at"}``.

    :raises UsageError: the state dir is not private to this user. :raises OSError: it cannot be written."""
    ensure_private_dir(state_dir)
    ensure_private_dir(swarms_dir(state_dir))
    path = record_path(state_dir, name)
    write_json_file(path, {**record, "swarm": name, "v": RECORD_VERSION, "updated_at": time.time()})
    return path
