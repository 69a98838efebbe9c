"""The ``[plugins.cc]`` config section and the paths Claude Code reads.

Every field has a default, so an agent with ``host_type = "cc"`` and no section at all wakes
Claude Code with ``claude -p --resume`` in the default permission mode.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from swarmbus import AgentPaths, Settings, check_env_passthrough, find_program

NAME = "cc"
"""The plugin's name: its entry-point name, its host type and its section ``[plugins.cc]``."""

WakeMode = Literal["auto", "resume", "rewake", "context"]
PathName = Literal["session", "rewake", "resume"]

BYPASS = "bypassPermissions"
_MODE_NAME = re.compile(r"\A[A-Za-z]{1,32}\Z")
"""Variables that carry broker settings or credentials: never passed to Claude Code."""


class CCSettings(BaseModel):
    """``[plugins.cc]`` in the swarmbus config file."""

    model_config = ConfigDict(extra="forbid")

    wake_mode: WakeMode = "auto"
    """auto: the wake router tries ``wake_paths`` in order (default: the live session's inbox,
    a waiting Stop hook, then a headless resume);
    resume: the daemon runs ``claude -p --resume <the agent's session>`` per wake;
    rewake: an idle interactive session is woken by its Stop hook (``asyncRewake``);
    context: unread messages are added to the next prompt by a UserPromptSubmit hook."""
    wake_paths: list[PathName] = Field(default_factory=lambda: ["session", "rewake", "resume"], min_length=1)
    """In ``auto`` mode, the paths to try, in order: ``session`` (post to the live interactive
    session's inbox socket, Claude Code 2.1.224+), ``rewake`` (a Stop hook blocked in ``swarmbus
    wait`` picks the message up), ``resume`` (a headless ``claude -p --resume``)."""
    path_timeout: float = Field(default=5.0, gt=0)
    """Seconds each path's readiness probe, and the ``session`` post, may take."""
    fall_back: bool = True
    """In ``auto`` mode: when a path was ready but its wake failed, try the next one (default).
    False ends the wake there (it is retried with the next one): no headless ``resume`` starts
    because a live session's post failed."""
    claude_path: str | None = None
    """The ``claude`` executable; default: found on PATH, then ~/.local/bin, /usr/local/bin."""
    permission_mode: str = "default"
    """``--permission-mode`` for headless wakes. ``bypassPermissions`` also needs
    ``allow_bypass_permissions = true``."""
    allow_bypass_permissions: bool = False
    allowed_tools: list[str] = Field(default_factory=lambda: ["Bash(swarmbus *)", "mcp__swarmbus__*"])
    """``--allowedTools`` for headless wakes; everything else is denied in the default mode."""
    model: str | None = None
    cwd: str | None = None
    """Working directory of headless wakes (Claude keys its sessions by it); default: the
    agent's state dir."""
    max_turns: int | None = Field(default=None, ge=1)
    extra_instructions: str | None = None
    """Trusted operator text appended to every wake prompt (and to hook context)."""
    install_hook: bool | None = None
    """None or True: ``swarmbus init`` installs the hook the wake mode needs (rewake: Stop,
    context: UserPromptSubmit; resume needs none) and, in every mode, the SessionStart hook that
    starts the daemon. False: you manage settings.json yourself."""
    env_passthrough: list[str] = Field(default_factory=list)
    """Extra environment variable names passed to headless wakes (e.g. ANTHROPIC_API_KEY,
    ANTHROPIC_BASE_URL). Broker variables (SWARMBUS_BROKER_*, MQTT_*) are refused."""

    @field_validator("permission_mode")
    @classmethod
    def _mode(cls, value: str) -> str:
        if not _MODE_NAME.match(value):
            raise ValueError(f"{value!r} is not a permission mode (e.g. default, acceptEdits, dontAsk, plan)")
        return value

    @field_validator("allowed_tools")
    @classmethod
    def _tools(cls, value: list[str]) -> list[str]:
        for tool in value:
            if not tool.strip() or tool.startswith("-"):
                raise ValueError(f"{tool!r} is not a tool pattern")
        return value

    @field_validator("env_passthrough")
    @classmethod
    def _env(cls, value: list[str]) -> list[str]:
        return check_env_passthrough(value, "Claude Code")

    @model_validator(mode="after")
    def _bypass(self) -> CCSettings:
        if self.permission_mode == BYPASS and not self.allow_bypass_permissions:
            raise ValueError(
                "permission_mode = \"bypassPermissions\" lets peer messages drive every tool without asking; "
                "it is refused unless allow_bypass_permissions = true is also set"
            )
        return self

    def hook_event(self) -> str | None:
        """The Claude Code hook event init installs, or None."""
        if self.install_hook is False:
            return None
        return {"rewake": "Stop", "context": "UserPromptSubmit"}.get(self.wake_mode)


def config(settings: Settings) -> CCSettings:
    """This plugin's validated section; the defaults when it was never registered (for
    example settings a test built by hand)."""
    section = settings.plugin_config(NAME)
    if isinstance(section, CCSettings):
        return section
    return CCSettings.model_validate(section or {})


def find_claude(cfg: CCSettings) -> str | None:
    """The ``claude`` executable to run, or None when there is none (``swarmbus.find_program``)."""
    return find_program("claude", cfg.claude_path)


# -- where Claude Code keeps things (user scope) -----------------------------------------------
def claude_json_path() -> Path:
    """``~/.claude.json``: Claude Code's global state, with user-scope MCP servers."""
    return Path.home() / ".claude.json"


def claude_dir() -> Path:
    return Path.home() / ".claude"


def skill_path() -> Path:
    return claude_dir() / "skills" / "swarmbus" / "SKILL.md"


def user_settings_path() -> Path:
    return claude_dir() / "settings.json"


def agent_dir(settings: Settings, agent_id: str) -> Path:
    """``<state_dir>/agents/<id>``: where the session id and the last wake are kept."""
    return AgentPaths.for_agent(agent_id, settings.state_dir).root


def locator_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables that tell a ``swarmbus`` child which config and state dir to use
    (paths, never secrets), when they are set here."""
    environ = dict(os.environ) if environ is None else environ
    return {k: environ[k] for k in ("SWARMBUS_CONFIG", "SWARMBUS_STATE_DIR") if environ.get(k)}
