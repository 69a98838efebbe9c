"""The typed settings object, validated with pydantic v2.

Build it with :func:`load_settings` (CLI flags > environment > config file > defaults; see
:mod:`swarmbus.config`). Plugin sections ``[plugins.<name>]`` are validated against the
pydantic models plugins register through the ``swarmbus_settings_sections`` hook.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from swarmbus.broker_options import (
    BROKER_DEFAULTS,
    BrokerAddress,
    BrokerProblems,
    check_broker,
    read_password,
)
from swarmbus.config import RawConfig, load_raw
from swarmbus.envelope import AGENT_ID_RE, EnvelopeError, validate_own_id
from swarmbus.errors import ConfigError


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class BrokerSettings(_Model, BrokerAddress):
    """Where and how to connect. ``port`` defaults by transport and TLS (1883, 8883, 80, 443).

    The rules live in :mod:`swarmbus.broker_options` (stdlib only, shared with the
    ``swarmbus send`` fast path): this model validates through
    :func:`~swarmbus.broker_options.check_broker` and only adds the types.
    """

    host: str = BROKER_DEFAULTS["host"]
    port: int | None = None
    hosts: tuple[str, ...] = ()
    """``host[:port]`` of each node to try, in order (a cluster); empty: ``host`` and ``port``."""
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
    redeliver_min: float = Field(default=2.0, gt=0)
    """The first delay before a sent message with no ``stored`` receipt is published again."""
    redeliver_max: float = Field(default=300.0, gt=0)
    """The cap of the redelivery backoff (the delay doubles from ``redeliver_min``)."""
    redeliver_give_up: float = Field(default=86400.0, gt=0)
    """Seconds after the send when redelivery stops (the message's ``expires_at`` stops it too)."""


class SecuritySettings(_Model):
    """``[security]``: how far this agent trusts what peers claim.

    ``verify_senders``: publish under this agent's own id (``agents/<to>/inbox/<self>``,
    ``agents/broadcast/<self>``, ``agents/<to>/receipts/<self>``), and quarantine anything that
    arrives on a topic that does not carry its envelope's ``from``. Only a broker ACL that binds
    that topic segment to the authenticated user (``swarmbus broker acl``) makes this proof of
    identity; see docs/security.md and the wire changes in docs/protocol.md.
    """

    verify_senders: bool = False


MAX_CAPABILITIES = 32
"""The most capabilities an agent may declare (``capabilities``; each is named like an agent id)."""


def _name(value: Any, what: str) -> str:
    """A role, capability or swarm name: the agent-id charset (1-64 of a-z 0-9 _ -).
    :raises ValueError: anything else."""
    if isinstance(value, str) and AGENT_ID_RE.match(value.strip()):
        return value.strip()
    raise ValueError(f"{what} {value!r} is not a name: use 1-64 of a-z, 0-9, '_' and '-'")


def parse_names(value: Any, what: str = "capability") -> list[str]:
    """A list of names from a list or a comma-separated string (``"gpu, python"``), without
    duplicates, in the given order. :raises ValueError: a bad name, or more than
    :data:`MAX_CAPABILITIES` of them."""
    if value is None:
        return []
    items = [part for part in value.split(",") if part.strip()] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError(f"a list of {what} names (or one comma-separated string), not {value!r}")
    names = list(dict.fromkeys(_name(item, what) for item in items))
    if len(names) > MAX_CAPABILITIES:
        raise ValueError(f"at most {MAX_CAPABILITIES} {what} names, not {len(names)}")
    return names


class TaskSettings(_Model):
    """``[tasks]``: this agent on the task board (docs/swarm.md). Times are seconds.

    ``host``: take tasks no plugin handler runs, as wakes for the host agent (``auto``: when a
    host is configured, i.e. ``host_type`` or ``wake.command`` is set). ``capacity``: tasks run
    by plugin handlers at once; ``host_capacity``: tasks held for the host at once. ``lease``
    and ``max_attempts``: the defaults of tasks this agent posts. ``offer_interval``: the first
    wait before an unclaimed task is offered again (doubling up to ``offer_max``). ``shared``:
    take offers through MQTT 5 shared subscriptions (``auto``: when the connection is MQTT 5).
    """

    host: Literal["auto", "yes", "no"] = "auto"
    capacity: int = Field(default=4, ge=0, le=256)
    host_capacity: int = Field(default=1, ge=0, le=256)
    lease: float = Field(default=60.0, ge=0.5, le=86_400)
    max_attempts: int = Field(default=3, ge=1, le=100)
    offer_interval: float = Field(default=2.0, gt=0, le=3600)
    offer_max: float = Field(default=60.0, gt=0, le=86_400)
    shared: Literal["auto", "yes", "no"] = "auto"

    @field_validator("host", "shared", mode="before")
    @classmethod
    def _words(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, str) and value.strip().lower() in ("1", "true", "on", "0", "false", "off"):
            return "yes" if value.strip().lower() in ("1", "true", "on") else "no"
        return value.strip().lower() if isinstance(value, str) else value


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"\A\s*(\d+(?:\.\d+)?)?\s*([smhd])?\s*\Z")


def parse_duration(value: Any) -> float:
    """``"90s"``, ``"10m"``, ``"2h"``, ``"1d"``, a bare unit (``"h"`` = one hour) or a number of
    seconds, to seconds (> 0). :raises ValueError: anything else."""
    if isinstance(value, bool):
        raise ValueError(f"a duration like 10m, 2h or 30s, not {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(str(value))
        if match is None or (match.group(1) is None and match.group(2) is None):
            raise ValueError(f"a duration like 10m, 2h or 30s, not {value!r}")
        seconds = float(match.group(1) or 1) * _UNITS[match.group(2) or "s"]
    if not 0 < seconds < float("inf"):
        raise ValueError(f"a duration must be more than 0 seconds, not {value!r}")
    return seconds


def parse_rate(value: Any) -> tuple[int, float]:
    """``"5/10m"`` (5 per 10 minutes), ``"20/h"``: to (count >= 1, window seconds).
    :raises ValueError: anything else."""
    count, sep, window = str(value).partition("/")
    if not sep or not count.strip().isdigit() or int(count) < 1:
        raise ValueError(f"a rate like 5/10m or 20/h (count/duration), not {value!r}")
    return int(count), parse_duration(window)


class _Rate(_Model):
    count: int
    window: float


class SendersRule(_Model):
    """``[wake.senders]``: ``deny`` never wakes; a non-empty ``allow`` wakes only for those."""

    allow: list[str] = Field(default_factory=list)
    deny: list[str] = Field(default_factory=list)


class MatchRule(_Model):
    """``[wake.match]``: ``subject`` a regular expression the subject must contain a match of;
    ``content_types`` the media types (without parameters) that may wake. Empty: any."""

    subject: str | None = None
    content_types: list[str] = Field(default_factory=list)

    @field_validator("subject")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value


class QuietHoursRule(_Model):
    """``[wake.quiet_hours]``: no wakes from ``start`` to ``end`` (``HH:MM``, local time in the
    IANA ``timezone``; across midnight when ``end`` < ``start``); messages are held until the
    window ends. ``breakthrough = "high"`` lets priority-high messages through (only those from
    ``breakthrough_senders`` when that is not empty); ``"none"`` lets nothing through."""

    start: str | None = None
    end: str | None = None
    timezone: str = "UTC"
    breakthrough: Literal["none", "high"] = "none"
    breakthrough_senders: list[str] = Field(default_factory=list)

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", str(value).strip())
        if match is None:
            raise ValueError(f"a time of day like 22:00 (HH:MM, 24-hour), not {value!r}")
        return f"{int(match.group(1)):02d}:{match.group(2)}"

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {value!r} (e.g. Europe/Berlin, UTC)") from None
        return value

    @model_validator(mode="after")
    def _both(self) -> QuietHoursRule:
        if (self.start is None) != (self.end is None):
            raise ValueError("set both start and end, or neither")
        if self.start is not None and self.start == self.end:
            raise ValueError("start and end are the same time")
        return self

    @property
    def enabled(self) -> bool:
        return self.start is not None


class RateLimitRule(_Model):
    """``[wake.rate_limit]``: at most ``per_sender`` wakes per sender and ``overall`` wakes in
    all, each ``"COUNT/DURATION"`` (``"5/10m"``); over it a message is held until the window
    has room."""

    per_sender: _Rate | None = None
    overall: _Rate | None = None

    @field_validator("per_sender", "overall", mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if value is None or isinstance(value, dict | _Rate):
            return value
        count, window = parse_rate(value)
        return {"count": count, "window": window}


class BudgetRule(_Model):
    """``[wake.budget]``: at most ``per_hour`` wakes in any hour and ``per_day`` in any 24 hours
    (sliding windows); over it a message is held until the budget refills."""

    per_hour: int | None = Field(default=None, ge=1)
    per_day: int | None = Field(default=None, ge=1)


class LoopGuardRule(_Model):
    """``[wake.loop_guard]``: more than ``max_messages`` messages between this agent and one
    peer within ``window`` (a duration, ``"10m"``), with no message from one of ``humans`` (the
    operators' ids) in that time, hold that peer's messages and tell the operators."""

    max_messages: int | None = Field(default=None, ge=1)
    window: float = 600.0
    humans: list[str] = Field(default_factory=list)

    @field_validator("window", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value)


class WakeSettings(_Model):
    """When and how the host agent is woken. ``policy``: ``high`` wakes for priority=high
    directed messages only (the predecessor's ``priority-high``), ``all`` for every message,
    ``none`` never. ``command`` is an argv list run for each wake (no shell). ``debounce``
    (seconds, or a duration like ``"30s"``; 0 = none) delays a coalesced wake until its oldest
    message has waited that long, so a burst goes into one wake. The sub-tables are the rules
    of the wake policy (docs/policies.md); their defaults change nothing."""

    policy: Literal["high", "all", "none"] = "high"
    command: list[str] | None = None
    debounce: float = Field(default=0.0, ge=0, le=86_400)
    senders: SendersRule = Field(default_factory=SendersRule)
    match: MatchRule = Field(default_factory=MatchRule)
    quiet_hours: QuietHoursRule = Field(default_factory=QuietHoursRule)
    rate_limit: RateLimitRule = Field(default_factory=RateLimitRule)
    budget: BudgetRule = Field(default_factory=BudgetRule)
    loop_guard: LoopGuardRule = Field(default_factory=LoopGuardRule)

    @field_validator("policy", mode="before")
    @classmethod
    def _alias(cls, value: Any) -> Any:
        return "high" if value == "priority-high" else value

    @field_validator("debounce", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip() not in ("", "0"):
            return parse_duration(value)
        return 0.0 if isinstance(value, str) else value

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
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    role: str | None = None
    """This agent's role in its swarm (a name like an agent id), or None."""
    capabilities: list[str] = Field(default_factory=list)
    """What this agent can do (names like agent ids, at most 32): tasks that need them may go to it."""
    swarm: str | None = None
    """The swarm this agent belongs to (a name like an agent id), or None; it takes only its swarm's tasks."""
    tasks: TaskSettings = Field(default_factory=TaskSettings)
    plugins: dict[str, Any] = Field(default_factory=dict)

    @field_validator("host_type", mode="before")
    @classmethod
    def _no_host(cls, value: Any) -> Any:
        """``none`` (as ``swarmbus init --host-type none`` spells it) means no host type: it
        overrides one a config file would give (``SWARMBUS_HOST_TYPE=none``)."""
        return None if isinstance(value, str) and value.strip().lower() == "none" else value

    @field_validator("role", "swarm", mode="before")
    @classmethod
    def _one_name(cls, value: Any, info: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return _name(value, info.field_name)

    @field_validator("capabilities", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        return parse_names(value)

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
