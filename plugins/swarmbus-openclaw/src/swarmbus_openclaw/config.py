"""``[plugins.openclaw]`` settings, OpenClaw's own config file, and how they combine.

Where the gateway URL and the token come from, first match wins:

- URL: ``gateway_url``; ``OPENCLAW_GATEWAY_URL``; ``ws://127.0.0.1:<port>`` with the port from
  ``OPENCLAW_GATEWAY_PORT`` or OpenClaw's config ``gateway.port``; else port 18789.
- token: ``token``; ``token_file``; ``OPENCLAW_GATEWAY_TOKEN``; OpenClaw's config
  ``gateway.auth.token`` (a string, or an ``{source: "env", id: VAR}`` secret reference).
  When OpenClaw's ``gateway.auth.mode`` is ``password``, ``gateway.auth.password`` is sent as
  the password instead.

OpenClaw's config (``config_path``; ``OPENCLAW_CONFIG_PATH``; ``$OPENCLAW_STATE_DIR/openclaw.json``;
``~/.openclaw/openclaw.json``) is JSON5. It is read at wake time, so a token rotated there is
picked up without touching swarmbus' config. Parsing tries JSON, then the ``json5`` package if
it is installed, then a small built-in reader for the JSON5 that people write by hand
(comments, unquoted keys, single quotes, trailing commas).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from swarmbus_openclaw.protocol import CLIENT_IDS, CLIENT_MODES, DEFAULT_PORT

NAME = "openclaw"


class OpenClawSettings(BaseModel):
    """``[plugins.openclaw]`` in swarmbus' config file. Every field has a default."""

    model_config = ConfigDict(extra="forbid")

    gateway_url: str | None = None
    token: SecretStr | None = None
    token_file: Path | None = None
    config_path: Path | None = None
    agent_id: str = Field(default="main", min_length=1)
    session_key: str = Field(default="agent:main:swarmbus-inbox", min_length=1, max_length=512)
    wait_for_final: bool = False
    timeout_s: float = Field(default=600.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0, le=300)
    max_attempts: int = Field(default=5, ge=1, le=50)
    use_cli_fallback: bool = True
    cli_local: bool = False
    openclaw_path: str | None = None
    client_id: str = "gateway-client"
    client_mode: str = "backend"
    device_identity: Literal["auto", "always", "never"] = "auto"
    device_identity_path: Path | None = None
    extra_instructions: str | None = None

    @field_validator("gateway_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("ws://", "wss://")):
            raise ValueError("must be a ws:// or wss:// URL, e.g. ws://127.0.0.1:18789")
        return value

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, value: str) -> str:
        if value not in CLIENT_IDS:
            raise ValueError(f"must be one of the gateway's client ids: {', '.join(CLIENT_IDS)}")
        return value

    @field_validator("client_mode")
    @classmethod
    def _client_mode(cls, value: str) -> str:
        if value not in CLIENT_MODES:
            raise ValueError(f"must be one of {', '.join(CLIENT_MODES)}")
        return value

    @field_validator("token_file", "config_path", "device_identity_path", mode="after")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @model_validator(mode="after")
    def _one_token(self) -> OpenClawSettings:
        if self.token is not None and self.token_file is not None:
            raise ValueError("give the gateway token or a token file, not both")
        return self


def config(settings: Any) -> OpenClawSettings:
    """This plugin's validated section; the defaults when it was never registered or validated."""
    section = settings.plugin_config(NAME)
    if isinstance(section, OpenClawSettings):
        return section
    return OpenClawSettings.model_validate(section or {})


class ConfigProblem(Exception):
    """The gateway cannot be addressed with this configuration (message says why)."""


# -- OpenClaw's config file -------------------------------------------------------------------
def openclaw_config_path(cfg: OpenClawSettings, env: os._Environ[str] | dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if cfg.config_path is not None:
        return cfg.config_path
    if env.get("OPENCLAW_CONFIG_PATH"):
        return Path(env["OPENCLAW_CONFIG_PATH"]).expanduser()
    if env.get("OPENCLAW_STATE_DIR"):
        return Path(env["OPENCLAW_STATE_DIR"]).expanduser() / "openclaw.json"
    return Path.home() / ".openclaw" / "openclaw.json"


_JSON5_TOKEN = re.compile(
    r"""(?P<ws>\s+)|(?P<line>//[^\n]*)|(?P<block>/\*.*?\*/)|(?P<dq>"(?:[^"\\]|\\.)*")|(?P<sq>'(?:[^'\\]|\\.)*')"""
    r"""|(?P<punct>[{}\[\]:,])|(?P<word>[^\s{}\[\]:,"'/]+)""",
    re.DOTALL,
)


def json5_to_json(text: str) -> str:
    """The common hand-written JSON5 subset as JSON: comments dropped, bare keys and single
    quotes turned into double-quoted strings, trailing commas removed, ``+``/hex numbers and
    ``Infinity`` left alone (json.loads then rejects them). Raises ValueError on stray text."""
    out: list[str] = []
    pos = 0
    while pos < len(text):
        m = _JSON5_TOKEN.match(text, pos)
        if m is None:
            raise ValueError(f"unexpected character {text[pos]!r} at offset {pos}")
        pos = m.end()
        kind = m.lastgroup
        value = m.group()
        if kind in ("ws", "line", "block"):
            continue
        if kind == "sq":
            inner = value[1:-1].replace("\\'", "'").replace('\\"', '"').replace('"', '\\"')
            out.append(json.dumps(_unescape(inner)))
        elif kind == "punct" and value in "}]" and out and out[-1] == ",":
            out[-1] = value  # trailing comma
        elif kind == "word" and _next_is_colon(text, pos):
            out.append(json.dumps(value))  # bare key
        else:
            out.append(value)
    return "".join(out)


def _unescape(text: str) -> str:
    try:
        return str(json.loads(f'"{text}"'))
    except ValueError:
        return text


def _next_is_colon(text: str, pos: int) -> bool:
    while pos < len(text):
        m = _JSON5_TOKEN.match(text, pos)
        if m is None:
            return False
        if m.lastgroup in ("ws", "line", "block"):
            pos = m.end()
            continue
        return m.group() == ":"
    return False


def parse_openclaw_config(text: str) -> dict[str, Any]:
    """OpenClaw's config text as a dict (JSON, else json5 if installed, else the built-in
    JSON5 subset). Raises ValueError when none of them can read it."""
    if not text.strip():
        return {}
    errors = []
    try:
        data = json.loads(text)
    except ValueError as exc:
        errors.append(f"JSON: {exc}")
        data = None
        try:
            import json5  # type: ignore[import-not-found,import-untyped,unused-ignore]

            data = json5.loads(text)
        except ImportError:
            pass
        except ValueError as exc5:
            errors.append(f"json5: {exc5}")
        if data is None:
            try:
                data = json.loads(json5_to_json(text))
            except ValueError as exc2:
                errors.append(f"JSON5 subset: {exc2}")
                raise ValueError("; ".join(errors)) from None
    if not isinstance(data, dict):
        raise ValueError("the top level is not an object")
    return data


@dataclass(frozen=True)
class OpenClawConfig:
    """What this plugin reads from OpenClaw's config file."""

    path: Path
    exists: bool
    port: int | None = None
    auth_mode: str | None = None
    token: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    bind: str | None = None
    error: str | None = None


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _secret(value: Any, env: Any) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict) and value.get("source") == "env" and isinstance(value.get("id"), str):
        return env.get(value["id"]) or None
    return None


def read_openclaw_config(path: Path, env: Any = None) -> OpenClawConfig:
    """Read ``gateway.port``, ``gateway.bind`` and ``gateway.auth`` from OpenClaw's config.
    Never raises: a missing file gives ``exists=False``, an unreadable one ``error``."""
    env = os.environ if env is None else env
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return OpenClawConfig(path, False)
    except OSError as exc:
        return OpenClawConfig(path, True, error=f"cannot read {path}: {exc.strerror}")
    try:
        data = parse_openclaw_config(text)
    except ValueError as exc:
        return OpenClawConfig(path, True, error=f"cannot parse {path} ({exc}); pip install json5 may help")
    gateway = _obj(data.get("gateway"))
    auth = _obj(gateway.get("auth"))
    port = gateway.get("port")
    return OpenClawConfig(
        path, True,
        port=port if isinstance(port, int) and 0 < port < 65536 else None,
        auth_mode=auth.get("mode") if isinstance(auth.get("mode"), str) else None,
        token=_secret(auth.get("token"), env),
        password=_secret(auth.get("password"), env),
        bind=gateway.get("bind") if isinstance(gateway.get("bind"), str) else None,
    )


# -- the resolved target ----------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """Where and how to connect, with the source of each value (for doctor and init)."""

    url: str
    url_source: str
    token: str | None = field(repr=False)
    password: str | None = field(repr=False)
    token_source: str
    sign: bool
    openclaw_config: OpenClawConfig

    @property
    def loopback(self) -> bool:
        return is_loopback_url(self.url)


def is_loopback_url(url: str) -> bool:
    host = (urlsplit(url).hostname or "").strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_target(cfg: OpenClawSettings, env: Any = None) -> Target:
    """Combine swarmbus' settings, the environment and OpenClaw's config (see module doc)."""
    env = os.environ if env is None else env
    oc = read_openclaw_config(openclaw_config_path(cfg, env), env)
    if cfg.gateway_url:
        url, url_source = cfg.gateway_url, "[plugins.openclaw] gateway_url"
    elif env.get("OPENCLAW_GATEWAY_URL"):
        url, url_source = env["OPENCLAW_GATEWAY_URL"], "OPENCLAW_GATEWAY_URL"
    elif env.get("OPENCLAW_GATEWAY_PORT", "").isdigit():
        url, url_source = f"ws://127.0.0.1:{int(env['OPENCLAW_GATEWAY_PORT'])}", "OPENCLAW_GATEWAY_PORT"
    elif oc.port:
        url, url_source = f"ws://127.0.0.1:{oc.port}", f"gateway.port in {oc.path}"
    else:
        url, url_source = f"ws://127.0.0.1:{DEFAULT_PORT}", "the default port"
    token: str | None = None
    password: str | None = None
    if cfg.token is not None:
        token, token_source = cfg.token.get_secret_value(), "[plugins.openclaw] token"
    elif cfg.token_file is not None:
        try:
            token = cfg.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigProblem(f"gateway token file {cfg.token_file}: {exc.strerror}") from None
        token_source = f"token_file {cfg.token_file}"
    elif env.get("OPENCLAW_GATEWAY_TOKEN"):
        token, token_source = env["OPENCLAW_GATEWAY_TOKEN"], "OPENCLAW_GATEWAY_TOKEN"
    elif oc.auth_mode == "password" and oc.password:
        password, token_source = oc.password, f"gateway.auth.password in {oc.path}"
    elif oc.token:
        token, token_source = oc.token, f"gateway.auth.token in {oc.path}"
    else:
        token_source = "none"  # noqa: S105 - a label, not a secret
    loopback = is_loopback_url(url)
    sign = cfg.device_identity == "always" or (cfg.device_identity == "auto" and not loopback)
    return Target(url, url_source, token or None, password, token_source, sign, oc)
