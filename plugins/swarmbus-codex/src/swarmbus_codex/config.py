"""The ``[plugins.codex]`` config section and where Codex keeps things.

Every field has a default, so an agent with ``host_type = "codex"`` and no section at all wakes
Codex through a running app-server when one answers on a discovered socket, else with a headless
``codex exec resume`` in a read-only sandbox that never asks for approval.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from swarmbus import AgentPaths, Settings, check_env_passthrough, find_program

NAME = "codex"
"""The plugin's name: its entry-point name, its host type and its section ``[plugins.codex]``."""

SandboxMode = Literal["read-only", "workspace-write", "danger-full-access"]
ApprovalPolicy = Literal["untrusted", "on-request", "never"]

MCP_NAME = "swarmbus"
"""The name of the swarmbus MCP server in Codex's config: ``[mcp_servers.swarmbus]``."""
SOCKET_NAME = "swarmbus-app-server.sock"
"""The app-server socket discovered under ``$CODEX_HOME`` (``codex app-server --listen
unix://$CODEX_HOME/swarmbus-app-server.sock``)."""
CODEX_DEFAULT_SOCKET = ("app-server-control", "app-server-control.sock")
"""Where ``codex app-server --listen unix://`` (no path) listens, under ``$CODEX_HOME`` (observed
with codex-cli 0.171.0); discovered second."""
"""Variables that carry broker settings or credentials: never passed to Codex."""
_THREAD_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")
_MODEL = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}\Z")


class CodexSettings(BaseModel):
    """``[plugins.codex]`` in the swarmbus config file."""

    model_config = ConfigDict(extra="forbid")

    codex_path: str | None = None
    """The ``codex`` executable; default: found on PATH, then ~/.local/bin, /usr/local/bin."""
    codex_home: str | None = None
    """Codex's home (config.toml, skills, sessions); default: ``$CODEX_HOME``, else ``~/.codex``."""
    app_server: str | None = None
    """``unix://PATH`` of a running ``codex app-server --listen unix://PATH`` to wake through;
    default: discover ``$CODEX_HOME/swarmbus-app-server.sock``, then Codex's own default socket."""
    thread_id: str | None = None
    """The agent's Codex thread; default: the one kept in the agent's state dir, created by the
    first wake."""
    cwd: str | None = None
    """Working directory of the threads the plugin starts; default ``<state>/agents/<id>/codex-work``."""
    model: str | None = None
    """``-m`` for headless runs and ``model`` for threads the plugin starts; default: Codex's own."""
    sandbox: SandboxMode = "read-only"
    """Sandbox of headless runs and of threads the plugin starts or resumes."""
    approval_policy: ApprovalPolicy = "never"
    """Approval policy of headless runs and of threads the plugin starts or resumes (nobody is there
    to approve anything during a wake)."""
    allow_danger_full_access: bool = False
    """``sandbox = "danger-full-access"`` lets peer messages drive every command unsandboxed; it is
    refused unless this is also true."""
    wait_for_mcp: bool = True
    """Headless runs wait for the swarmbus MCP server to start (``-c mcp_servers.swarmbus.required=true``,
    only when ``[mcp_servers.swarmbus]`` is registered), so its tools are there on the first model
    request: ``codex exec`` (0.171.0) often asks the model before a server that takes about a second to
    start has answered. The run then fails when that server cannot start."""
    extra_instructions: str | None = None
    """Trusted operator text appended to every wake prompt."""
    env_passthrough: list[str] = Field(default_factory=list)
    """Extra environment variable names passed to headless runs (e.g. OPENAI_API_KEY). Broker
    variables (SWARMBUS_BROKER_*, MQTT_*) are refused."""
    path_timeout: float = Field(default=10.0, gt=0, le=600)
    """Seconds for each wake path's readiness probe, and for a wake through the app-server."""
    fall_back: bool = True
    """When the app-server was ready but its wake failed, try ``codex exec resume`` next (default).
    False ends the wake there (it is retried with the next one)."""

    @field_validator("app_server")
    @classmethod
    def _app_server(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith("unix://") or not value.removeprefix("unix://").strip():
            raise ValueError(f"{value!r} is not unix://PATH (the socket of `codex app-server --listen unix://PATH`)")
        return value

    @field_validator("thread_id")
    @classmethod
    def _thread(cls, value: str | None) -> str | None:
        if value is not None and not _THREAD_ID.match(value):
            raise ValueError(f"{value!r} is not a Codex thread id (a UUID like 01a21a0a-226a-7c10-a6f8-0547f5c1c388)")
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str | None) -> str | None:
        if value is not None and not _MODEL.match(value):
            raise ValueError(f"{value!r} is not a model name")
        return value

    @field_validator("env_passthrough")
    @classmethod
    def _env(cls, value: list[str]) -> list[str]:
        return check_env_passthrough(value, "Codex")

    @model_validator(mode="after")
    def _danger(self) -> CodexSettings:
        if self.sandbox == "danger-full-access" and not self.allow_danger_full_access:
            raise ValueError(
                'sandbox = "danger-full-access" lets peer messages drive every command without a sandbox; '
                "it is refused unless allow_danger_full_access = true is also set"
            )
        return self


def config(settings: Settings) -> CodexSettings:
    """This plugin's validated section; the defaults when it was never registered (for
    example settings a test built by hand)."""
    section = settings.plugin_config(NAME)
    if isinstance(section, CodexSettings):
        return section
    return CodexSettings.model_validate(section or {})


def find_codex(cfg: CodexSettings) -> str | None:
    """The ``codex`` executable to run, or None when there is none (``swarmbus.find_program``)."""
    return find_program("codex", cfg.codex_path)


def codex_home(cfg: CodexSettings) -> Path:
    """``codex_home``, else ``$CODEX_HOME``, else ``~/.codex``."""
    if cfg.codex_home:
        return Path(cfg.codex_home).expanduser()
    if os.environ.get("CODEX_HOME"):
        return Path(os.environ["CODEX_HOME"]).expanduser()
    return Path.home() / ".codex"


def config_toml_path(cfg: CodexSettings) -> Path:
    return codex_home(cfg) / "config.toml"


def skill_path(cfg: CodexSettings) -> Path:
    """``$CODEX_HOME/skills/swarmbus/SKILL.md``: Codex lists the skills under there for every thread."""
    return codex_home(cfg) / "skills" / "swarmbus" / "SKILL.md"


def app_server_candidates(cfg: CodexSettings) -> list[tuple[Path, str]]:
    """The sockets to try, in order, each with where it came from: the configured one only, else
    ``$CODEX_HOME/swarmbus-app-server.sock`` and Codex's default ``unix://`` socket."""
    if cfg.app_server:
        return [(Path(cfg.app_server.removeprefix("unix://")).expanduser(), "app_server in [plugins.codex]")]
    home = codex_home(cfg)
    return [(home / SOCKET_NAME, "discovered under CODEX_HOME"),
            (home.joinpath(*CODEX_DEFAULT_SOCKET), "Codex's default `--listen unix://` socket")]


def agent_dir(settings: Settings, agent_id: str) -> Path:
    """``<state_dir>/agents/<id>``: where the thread id and the last wake are kept."""
    return AgentPaths.for_agent(agent_id, settings.state_dir).root


def work_dir(settings: Settings, cfg: CodexSettings, agent_id: str) -> Path:
    """The working directory of threads the plugin starts (created on demand)."""
    return Path(cfg.cwd).expanduser() if cfg.cwd else agent_dir(settings, agent_id) / "codex-work"


def locator_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables that tell a ``swarmbus`` child which config and state dir to use
    (paths, never secrets), when they are set here."""
    environ = dict(os.environ) if environ is None else environ
    return {k: environ[k] for k in ("SWARMBUS_CONFIG", "SWARMBUS_STATE_DIR") if environ.get(k)}
