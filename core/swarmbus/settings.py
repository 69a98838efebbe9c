"""The typed settings object, validated with pydantic v2.

Build it with :func:`load_settings` (CLI flags > environment > config file > defaults; see
:mod:`swarmbus.config`). Plugin sections ``[plugins.<name>]`` are validated against the
pydantic models plugins register through the ``swarmbus_settings_sections`` hook.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from swarmbus.broker_options import (
    BROKER_DEFAULTS,
    BrokerProblems,
    broker_url,
    check_broker,
    effective_port,
    read_password,
)
from swarmbus.config import RawConfig, load_raw
from swarmbus.envelope import EnvelopeError, validate_own_id
from swarmbus.errors import ConfigError


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class BrokerSettings(_Model):
    """Where and how to connect. ``port`` defaults by transport and TLS (1883, 8883, 80, 443).

    The rules live in :mod:`swarmbus.broker_options` (stdlib only, shared with the
    ``swarmbus send`` fast path): this model validates through
    :func:`~swarmbus.broker_options.check_broker` and only adds the types.
    """

    host: str = BROKER_DEFAULTS["host"]
    port: int | None = None
    transport: Literal["tcp", "websockets"] = "tcp"
    ws_path: str = BROKER_DEFAULTS["ws_path"]
    tls: bool = False
    ca_certs: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    client_id_prefix: str = BROKER_DEFAULTS["client_id_prefix"]
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    keepalive: int = BROKER_DEFAULTS["keepalive"]
    connect_timeout: float = BROKER_DEFAULTS["connect_timeout"]

    @model_validator(mode="before")
    @classmethod
    def _check(cls, data: Any) -> Any:
        if isinstance(data, BrokerSettings):
            return data
        return check_broker(data)  # BrokerProblems is a ValueError: pydantic reports it

    @property
    def effective_port(self) -> int:
        return effective_port(self.port, self.transport, self.tls)

    @property
    def url(self) -> str:
        return broker_url(self.host, self.effective_port, self.transport, self.tls, self.ws_path)

    def resolved_password(self) -> str | None:
        """The password, read from ``password_file`` when that is set (trailing newline
        stripped). Raises ConfigError if the file cannot be read."""
        secret = self.password.get_secret_value() if self.password is not None else None
        return read_password(secret, self.password_file)


class DaemonSettings(_Model):
    """The listener daemon. Times are seconds."""

    session_expiry: int = Field(default=7 * 24 * 3600, ge=0, le=0xFFFFFFFF)
    heartbeat_interval: float = Field(default=60.0, gt=0)
    handler_concurrency: int = Field(default=8, ge=1, le=256)
    handler_timeout: float = Field(default=600.0, gt=0)
    inbox_file: Path | None = None
    archive: bool = True
    store_sync: Literal["normal", "full"] = "normal"
    reconnect_min: float = Field(default=0.5, gt=0)
    reconnect_max: float = Field(default=5.0, gt=0)
    """The reconnect backoff's cap: a broker that comes back is used within about this long."""
    backlog: int = Field(default=1024, ge=16, le=1_000_000)
    """The most messages the dispatcher holds in memory; the rest wait in the store."""


class WakeSettings(_Model):
    """When and how the host agent is woken. ``policy``: ``high`` wakes for priority=high
    directed messages only (the predecessor's ``priority-high``), ``all`` for every message,
    ``none`` never. ``command`` is an argv list run for each wake (no shell)."""

    policy: Literal["high", "all", "none"] = "high"
    command: list[str] | None = None

    @field_validator("policy", mode="before")
    @classmethod
    def _alias(cls, value: Any) -> Any:
        return "high" if value == "priority-high" else value

    @field_validator("command", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            import shlex

            return shlex.split(value) or None
        return value


class Settings(_Model):
    """Everything swarmbus reads from flags, environment and the config file."""

    agent_id: str | None = None
    host_type: str | None = None
    state_dir: Path | None = None
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    outbox: str | None = None
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    wake: WakeSettings = Field(default_factory=WakeSettings)
    plugins: dict[str, Any] = Field(default_factory=dict)

    @field_validator("agent_id", mode="after")
    @classmethod
    def _agent(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return validate_own_id(value)
        except EnvelopeError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    def require_agent_id(self) -> str:
        from swarmbus.errors import UsageError

        if not self.agent_id:
            raise UsageError(
                "no agent id: pass --agent-id ID, set SWARMBUS_AGENT_ID, "
                "or put agent_id = \"ID\" in the config file"
            )
        return self.agent_id

    def plugin_config(self, name: str) -> Any:
        """The validated section ``[plugins.<name>]`` (a model instance, or a dict when the
        plugin registered no model), or None when absent."""
        return self.plugins.get(name)


def _format_validation_error(exc: ValidationError, raw: RawConfig) -> str:
    lines = []
    for err in exc.errors():
        problems = err.get("ctx", {}).get("error")
        if isinstance(problems, BrokerProblems):  # the [broker] rules: worded as the fast path words them
            lines.extend(problems.clauses(raw.sources))
            continue
        key = ".".join(str(p) for p in err["loc"])
        source = raw.sources.get(key) or raw.plugin_sources.get(key.split(".")[1] if key.startswith("plugins.") else "", "")
        where = f" (from {source})" if source else ""
        lines.append(f"{key}: {err['msg']}{where}")
    return "invalid configuration: " + "; ".join(lines)


def build_settings(
    raw: RawConfig, sections: Mapping[str, type[BaseModel]] | None = None
) -> Settings:
    """Validate raw values. Raises ConfigError naming each bad key and its source."""
    data = raw.nested()
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, raw)) from None
    for name, model in (sections or {}).items():
        try:
            settings.plugins[name] = model.model_validate(settings.plugins.get(name, {}))
        except ValidationError as exc:
            details = "; ".join(
                f"plugins.{name}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(f"invalid configuration: {details}") from None
    return settings


def load_settings(
    cli: Mapping[str, tuple[Any, str]] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    sections: Mapping[str, type[BaseModel]] | None = None,
) -> tuple[Settings, RawConfig]:
    """Load and validate. Returns the settings and the raw layers (for ``config show``)."""
    raw = load_raw(cli, env=os.environ if env is None else env)
    return build_settings(raw, sections), raw
