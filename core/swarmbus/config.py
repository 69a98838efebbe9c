"""Layered configuration sources, with provenance, before any validation.

Sources, highest first: command-line flags, environment variables, the TOML config file,
built-in defaults. This module only *gathers* raw values and remembers where each came from;
:mod:`swarmbus.settings` validates them into the typed :class:`~swarmbus.settings.Settings`.
It is stdlib-only so the ``send`` fast path can read ``agent_id`` and ``state_dir`` without
importing pydantic.

The config file is ``<platformdirs user_config_dir>/swarmbus/config.toml`` unless
``SWARMBUS_CONFIG`` names another path. A broker URL (``mqtt://``, ``mqtts://``, ``ws://``,
``wss://``) is expanded here into host, port, TLS and transport, keeping its source label.
"""

from __future__ import annotations

import os
import sys
from collections import namedtuple
from collections.abc import Mapping
from pathlib import Path

from swarmbus.errors import ConfigError

TYPE_CHECKING = False  # not from typing: importing typing costs the send fast path ~4 ms
if TYPE_CHECKING:
    from typing import Any

CONFIG_ENV = "SWARMBUS_CONFIG"


# One setting: its dotted key, the environment names that set it (first wins), whether it is
# secret (masked in output) and how to coerce environment strings (str|int|float|bool|list).
# A plain namedtuple: typing.NamedTuple would cost the send fast path ~15 ms of imports.
FieldSpec = namedtuple("FieldSpec", "key env secret kind", defaults=((), False, "str"))


FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("agent_id", ("SWARMBUS_AGENT_ID",)),
    FieldSpec("host_type", ("SWARMBUS_HOST_TYPE",)),
    FieldSpec("role", ("SWARMBUS_ROLE",)),
    FieldSpec("capabilities", ("SWARMBUS_CAPABILITIES",)),  # comma-separated; the settings split it
    FieldSpec("swarm", ("SWARMBUS_SWARM",)),
    FieldSpec("tasks.host", ("SWARMBUS_TASK_HOST",)),
    FieldSpec("tasks.capacity", ("SWARMBUS_TASK_CAPACITY",), kind="int"),
    FieldSpec("tasks.host_capacity", ("SWARMBUS_TASK_HOST_CAPACITY",), kind="int"),
    FieldSpec("tasks.offer_interval", ("SWARMBUS_TASK_OFFER_INTERVAL",), kind="float"),
    FieldSpec("tasks.shared", ("SWARMBUS_TASK_SHARED",)),
    FieldSpec("state_dir", ("SWARMBUS_STATE_DIR",)),
    FieldSpec("log_format", ("SWARMBUS_LOG_FORMAT",)),
    FieldSpec("log_level", ("SWARMBUS_LOG_LEVEL",)),
    FieldSpec("outbox", ("SWARMBUS_OUTBOX",)),
    FieldSpec("broker.url", ("SWARMBUS_BROKER_URL",)),
    FieldSpec("broker.host", ("SWARMBUS_BROKER_HOST", "MQTT_BROKER")),
    FieldSpec("broker.port", ("SWARMBUS_BROKER_PORT", "MQTT_PORT"), kind="int"),
    FieldSpec("broker.hosts", ("SWARMBUS_BROKER_HOSTS",)),
    FieldSpec("broker.transport", ("SWARMBUS_BROKER_TRANSPORT",)),
    FieldSpec("broker.ws_path", ("SWARMBUS_BROKER_WS_PATH",)),
    FieldSpec("broker.tls", ("SWARMBUS_BROKER_TLS", "MQTT_TLS"), kind="bool"),
    FieldSpec("broker.ca_certs", ("SWARMBUS_BROKER_CA_CERT", "MQTT_CA_CERTS")),
    FieldSpec("broker.certfile", ("SWARMBUS_BROKER_CLIENT_CERT", "MQTT_CERTFILE")),
    FieldSpec("broker.keyfile", ("SWARMBUS_BROKER_CLIENT_KEY", "MQTT_KEYFILE")),
    FieldSpec("broker.username", ("SWARMBUS_BROKER_USERNAME", "MQTT_USERNAME")),
    FieldSpec("broker.password", ("SWARMBUS_BROKER_PASSWORD", "MQTT_PASSWORD"), secret=True),
    FieldSpec("broker.password_file", ("SWARMBUS_BROKER_PASSWORD_FILE",)),
    FieldSpec("broker.client_id_prefix", ("SWARMBUS_CLIENT_ID_PREFIX", "MQTT_CLIENT_ID_PREFIX")),
    FieldSpec("broker.protocol", ("SWARMBUS_BROKER_PROTOCOL",)),
    FieldSpec("broker.keepalive", ("SWARMBUS_BROKER_KEEPALIVE",), kind="int"),
    FieldSpec("broker.connect_timeout", ("SWARMBUS_BROKER_CONNECT_TIMEOUT",), kind="float"),
    FieldSpec("daemon.session_expiry", ("SWARMBUS_SESSION_EXPIRY",), kind="int"),
    FieldSpec("daemon.heartbeat_interval", ("SWARMBUS_HEARTBEAT_INTERVAL",), kind="float"),
    FieldSpec("daemon.handler_concurrency", ("SWARMBUS_HANDLER_CONCURRENCY",), kind="int"),
    FieldSpec("daemon.handler_timeout", ("SWARMBUS_HANDLER_TIMEOUT",), kind="float"),
    FieldSpec("daemon.inbox_file", ("SWARMBUS_INBOX",)),
    FieldSpec("daemon.archive", ("SWARMBUS_ARCHIVE",), kind="bool"),
    FieldSpec("daemon.store_sync", ("SWARMBUS_STORE_SYNC",)),
    FieldSpec("daemon.reconnect_min", ("SWARMBUS_RECONNECT_MIN",), kind="float"),
    FieldSpec("daemon.reconnect_max", ("SWARMBUS_RECONNECT_MAX",), kind="float"),
    FieldSpec("daemon.backlog", ("SWARMBUS_BACKLOG",), kind="int"),
    FieldSpec("daemon.redeliver_min", ("SWARMBUS_REDELIVER_MIN",), kind="float"),
    FieldSpec("daemon.redeliver_max", ("SWARMBUS_REDELIVER_MAX",), kind="float"),
    FieldSpec("daemon.redeliver_give_up", ("SWARMBUS_REDELIVER_GIVE_UP",), kind="float"),
    FieldSpec("wake.policy", ("SWARMBUS_WAKE_POLICY",)),
    FieldSpec("wake.command", ("SWARMBUS_INVOKE",), kind="list"),
    FieldSpec("security.verify_senders", ("SWARMBUS_VERIFY_SENDERS",), kind="bool"),
)
FIELD_BY_KEY = {f.key: f for f in FIELDS}

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})


def parse_bool(text: str, *, name: str) -> bool:
    lowered = text.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise ConfigError(f"{name}={text!r} is not a boolean: use 1/0, true/false, yes/no or on/off")


def verify_senders(raw: RawConfig) -> bool:
    """``security.verify_senders`` from the layered raw config, for the stdlib send path (the
    pydantic settings validate the same key). :raises ConfigError: not a boolean."""
    value = raw.get("security.verify_senders")
    if value is None or isinstance(value, bool):
        return bool(value)
    return parse_bool(str(value), name="security.verify_senders")


def _coerce(spec: FieldSpec, text: str, name: str) -> Any:
    if spec.kind == "bool":
        return parse_bool(text, name=name)
    if spec.kind == "list":
        import shlex

        try:
            return shlex.split(text)
        except ValueError as exc:
            raise ConfigError(f"{name}={text!r} cannot be split like a shell command: {exc}") from None
    if spec.kind in ("int", "float"):
        try:
            return int(text) if spec.kind == "int" else float(text)
        except ValueError:
            raise ConfigError(f"{name}={text!r} is not a number") from None
    return text


def _linux_config_dir() -> str | None:
    """platformdirs' user config directory in the common Linux case, without importing it
    (~7 ms of imports on every ``swarmbus send``): ``$XDG_CONFIG_HOME`` when it is an absolute
    path, else ``$HOME/.config`` when ``$HOME`` is absolute. None in every other case (another
    platform, Android, a relative or blank ``$XDG_CONFIG_HOME``, no usable ``$HOME``): then
    platformdirs decides. Like platformdirs, it reads the process environment."""
    if sys.platform != "linux" or "ANDROID_DATA" in os.environ or hasattr(sys, "getandroidapilevel"):
        return None
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    if xdg:
        return xdg if xdg.startswith("/") else None
    if not os.environ.get("HOME", "").startswith("/"):
        return None
    return os.path.expanduser("~/.config")


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    """``$SWARMBUS_CONFIG`` (from ``env``, default the process environment), else
    ``<platformdirs user config dir>/swarmbus/config.toml``."""
    env = os.environ if env is None else env
    override = env.get(CONFIG_ENV)
    if override:
        return Path(override).expanduser()
    base = _linux_config_dir()
    if base is not None:
        return Path(base) / "swarmbus" / "config.toml"
    from platformdirs import user_config_path

    return user_config_path("swarmbus", appauthor=False) / "config.toml"


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and dotted != "plugins":
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def redact_url(url: str) -> str:
    """``url`` with the password of any ``user:password@`` replaced by ``********`` (for
    error messages: a broker URL may carry credentials)."""
    head, sep, rest = url.partition("://")
    if not sep:
        head, rest = "", url
    netloc, slash, tail = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{head}{sep}{userinfo.split(':', 1)[0]}:********@{host}{slash}{tail}"


def expand_broker_url(url: str) -> dict[str, Any]:
    """``mqtts://user:pw@host:8883`` -> ``{"broker.host": ..., "broker.port": ..., ...}``.

    A bare ``host`` or ``host:port`` is accepted too and sets only the host (and port), so TLS
    and transport settings from other sources still apply. Raises ConfigError for other schemes.
    """
    from urllib.parse import unquote, urlsplit

    text = url.strip()
    bare = "://" not in text
    if bare:
        text = "mqtt://" + text
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    schemes = {
        "mqtt": ("tcp", False, 1883),
        "tcp": ("tcp", False, 1883),
        "mqtts": ("tcp", True, 8883),
        "ssl": ("tcp", True, 8883),
        "ws": ("websockets", False, 80),
        "wss": ("websockets", True, 443),
    }
    if scheme not in schemes:
        raise ConfigError(
            f"broker URL {redact_url(url)!r}: scheme must be mqtt://, mqtts://, ws:// or wss://"
        )
    transport, tls, default_port = schemes[scheme]
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"broker URL {redact_url(url)!r} has an invalid port") from None
    if not parts.hostname:
        raise ConfigError(f"broker URL {redact_url(url)!r} has no host")
    out: dict[str, Any] = {"broker.host": parts.hostname}
    if bare:
        # HOST[:PORT] names only the host (and port): TLS and transport from other layers stay
        if port:
            out["broker.port"] = port
    else:
        out.update({"broker.port": port or default_port, "broker.transport": transport, "broker.tls": tls})
    if transport == "websockets" and parts.path:
        out["broker.ws_path"] = parts.path
    if parts.username:
        out["broker.username"] = unquote(parts.username)
    if parts.password:
        out["broker.password"] = unquote(parts.password)
    return out


class RawConfig:
    """Raw values by dotted key, each with the label of the source that set it."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.sources: dict[str, str] = {}
        self.plugin_sections: dict[str, dict[str, Any]] = {}
        self.plugin_sources: dict[str, str] = {}
        self.config_path: Path | None = None
        self.config_exists = False

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def set(self, key: str, value: Any, source: str) -> None:
        if key == "broker.url":
            for sub, sub_value in expand_broker_url(str(value)).items():
                self.values[sub] = sub_value
                self.sources[sub] = source
            return
        self.values[key] = value
        self.sources[key] = source

    def nested(self) -> dict[str, Any]:
        """Values as nested dicts, ready for the Settings model."""
        out: dict[str, Any] = {}
        for key, value in self.values.items():
            node = out
            *parents, leaf = key.split(".")
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = value
        if self.plugin_sections:
            out["plugins"] = dict(self.plugin_sections)
        return out


def _only_comments(text: str) -> bool:
    """True when ``text`` holds nothing but blank lines and comments, which TOML parses to
    ``{}``: then ``tomllib`` need not be imported (~3 ms on the ``swarmbus send`` fast path).
    Anything doubtful (e.g. a control character in a comment) answers False, so the real
    parser decides."""
    for line in text.split("\n"):
        line = line.removesuffix("\r").strip(" \t")
        if line and not (line.startswith("#") and line.replace("\t", " ").isprintable()):
            return False
    return True


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse the TOML file. Raises ConfigError with the file name and TOML error position."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 text (byte {exc.start})") from None
    if _only_comments(text):
        return {}
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def load_raw(
    cli: Mapping[str, tuple[Any, str]] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    config_path: Path | None = None,
) -> RawConfig:
    """Gather file, environment and CLI values (in rising precedence).

    ``cli`` maps dotted keys to ``(value, "--flag")``; None values are ignored. Unknown keys
    in the file are kept so that validation can name them. Raises ConfigError for an
    unreadable file or an uncoercible environment value.
    """
    env = os.environ if env is None else env
    raw = RawConfig()
    path = config_path or default_config_path(env)
    raw.config_path = path
    if path.is_file():
        raw.config_exists = True
        data = read_config_file(path)
        plugins = data.pop("plugins", {})
        if not isinstance(plugins, Mapping) or not all(isinstance(v, Mapping) for v in plugins.values()):
            raise ConfigError(f"{path}: [plugins.<name>] sections must be tables")
        for name, section in plugins.items():
            raw.plugin_sections[name] = dict(section)
            raw.plugin_sources[name] = f"file:{path}"
        for key, value in _flatten(data).items():
            raw.set(key, value, f"file:{path}")
    elif env.get(CONFIG_ENV):
        raise ConfigError(f"{CONFIG_ENV}={env[CONFIG_ENV]} does not exist")
    # MQTT_* (seed 000 names) first, then SWARMBUS_* so ours win; a URL is expanded last in
    # its pass so that it beats a bare host from the same pass.
    ordered = sorted(FIELDS, key=lambda spec: spec.key == "broker.url")
    for prefix in ("MQTT_", "SWARMBUS_"):
        for spec in ordered:
            for name in reversed(spec.env):
                text = env.get(name)
                if name.startswith(prefix) and text is not None and text != "":
                    raw.set(spec.key, _coerce(spec, text, name), f"env:{name}")
    for key, (value, flag) in (cli or {}).items():
        if value is not None:
            raw.set(key, value, f"cli:{flag}")
    return raw
