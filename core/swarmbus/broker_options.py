"""Broker connection settings, parsed and validated with the standard library only.

This is the one definition of a valid ``[broker]`` section. Two callers use it:

- :class:`swarmbus.settings.BrokerSettings` (pydantic) validates through :func:`check_broker`;
- ``swarmbus send --direct`` (and ``send`` without a daemon) builds a :class:`BrokerOptions`
  from the raw layered config with :func:`broker_options`, without importing pydantic.

Both report problems the same way: ``invalid configuration: broker.<key>: <what is wrong>
(from <source>)``, one clause per problem, through :meth:`BrokerProblems.describe`.

The rules: ``host`` a host name or address (default ``localhost``); ``hosts`` a list of
``host[:port]`` to try in order instead (the nodes of a cluster; a string of them separated by
commas, from ``SWARMBUS_BROKER_HOSTS``); ``port`` 1-65535 or unset,
when it defaults by transport and TLS (1883 tcp, 8883 tcp+TLS, 80 websockets, 443 websockets+TLS);
``transport`` ``tcp`` or ``websockets`` (``ws_path`` default ``/mqtt``); ``tls`` a boolean, forced
on by ``ca_certs`` or ``certfile``; ``certfile`` and ``keyfile`` together or neither (mTLS);
``password`` or ``password_file``, not both; ``client_id_prefix`` 1-32 of ``A-Za-z0-9_.-``;
``protocol`` ``auto`` (MQTT 5, else 3.1.1), ``5`` or ``3.1.1``; ``keepalive`` 5-65535 seconds;
``connect_timeout`` more than 0 and at most 120 seconds. File paths have ``~`` expanded.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

from swarmbus.config import FALSE_WORDS, TRUE_WORDS
from swarmbus.errors import ConfigError

TYPE_CHECKING = False  # not from typing: importing typing costs the send fast path ~4 ms
if TYPE_CHECKING:
    from typing import Any

    from swarmbus.config import RawConfig

#: Every broker setting and its default, in the order problems are reported.
BROKER_DEFAULTS: dict[str, Any] = {
    "host": "localhost",
    "port": None,
    "hosts": (),
    "transport": "tcp",
    "ws_path": "/mqtt",
    "tls": False,
    "ca_certs": None,
    "certfile": None,
    "keyfile": None,
    "username": None,
    "password": None,
    "password_file": None,
    "client_id_prefix": "swarmbus",
    "protocol": "auto",
    "keepalive": 60,
    "connect_timeout": 5.0,
}

TRANSPORTS = ("tcp", "websockets")
PROTOCOLS = ("auto", "5", "3.1.1")
CLIENT_ID_PREFIX_RE = re.compile(r"\A[A-Za-z0-9_.-]{1,32}\Z")


class BrokerProblems(ValueError):
    """Invalid broker settings. ``problems`` is a list of ``(field, message)``; ``field`` is a
    key of :data:`BROKER_DEFAULTS`, or None when the section itself is not a table."""

    def __init__(self, problems: list[tuple[str | None, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{field or 'broker'}: {message}" for field, message in problems))

    def clauses(self, sources: Mapping[str, str]) -> list[str]:
        """``["broker.port: must be ... (from env:MQTT_PORT)", ...]``: each problem with its
        dotted key and, when ``sources`` (dotted key -> source label) knows it, its source."""
        out = []
        for field, message in self.problems:
            key = f"broker.{field}" if field else "broker"
            source = sources.get(key)
            out.append(f"{key}: {message}" + (f" (from {source})" if source else ""))
        return out

    def describe(self, sources: Mapping[str, str]) -> str:
        """The one-line ConfigError text: ``invalid configuration: <clause>; <clause>``."""
        return "invalid configuration: " + "; ".join(self.clauses(sources))


class _Bad(Exception):
    """A field's value is unusable; the message says what is expected."""


def _text(value: Any, what: str = "a string") -> str:
    if not isinstance(value, str):
        raise _Bad(f"must be {what}, not {value!r}")
    return value


def _whole(value: Any, low: int, high: int, what: str) -> int:
    number: Any = value
    if isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            number = None
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= high:
        raise _Bad(f"must be {what}, not {value!r}")
    return number


def _host(value: Any) -> str:
    text = _text(value, "a host name or address")
    if not text.strip() or any(c.isspace() for c in text):
        raise _Bad(f"must be a host name or address, not {value!r}")
    return text


def _port(value: Any) -> int | None:
    return None if value is None else _whole(value, 1, 65535, "a port number from 1 to 65535")


def split_endpoint(text: str) -> tuple[str, int | None]:
    """``"host"``, ``"host:1883"``, ``"[::1]:1883"`` or ``"::1"`` -> ``(host, port or None)``.

    :raises ValueError: no host, or a port that is not 1-65535.
    """
    text = text.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError(f"{text!r} is not [ADDRESS]:PORT")
        port_text = rest[1:] if rest.startswith(":") else None
        if rest and port_text is None:
            raise ValueError(f"{text!r} is not [ADDRESS]:PORT")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, None  # a bare name, or an IPv6 address without a port
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"{text!r} has no host")
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r} has no port from 1 to 65535")
    return host, int(port_text)


def _hosts(value: Any) -> tuple[str, ...]:
    """A list of ``host[:port]`` (or one string of them separated by commas or spaces)."""
    items = value.replace(",", " ").split() if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise _Bad(f"must be a list of HOST[:PORT], not {value!r}")
    for item in items:
        try:
            split_endpoint(item)
        except ValueError as exc:
            raise _Bad(f"must be a list of HOST[:PORT]: {exc}") from None
    return tuple(item.strip() for item in items)


def _choice(choices: tuple[str, ...]) -> Any:
    def check(value: Any) -> str:
        text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if text not in choices:
            raise _Bad(f"must be {', '.join(choices[:-1])} or {choices[-1]}, not {value!r}")
        return str(text)

    return check


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise _Bad(f"must be true or false, not {value!r}")


def _path(value: Any) -> Path | None:
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f"must be a file path, not {value!r}")
    return Path(value).expanduser()


def _optional_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _password(value: Any) -> str | None:
    if value is None:
        return None
    unwrap = getattr(value, "get_secret_value", None)  # a pydantic SecretStr
    if unwrap is not None:
        value = unwrap()
    if not isinstance(value, str):
        raise _Bad("must be a string")  # never echo what might be a secret
    return value


def _prefix(value: Any) -> str:
    if not isinstance(value, str) or not CLIENT_ID_PREFIX_RE.match(value):
        raise _Bad(f"must be 1-32 of A-Z a-z 0-9 _ . -, not {value!r}")
    return value


def _keepalive(value: Any) -> int:
    return _whole(value, 5, 65535, "whole seconds from 5 to 65535")


def _connect_timeout(value: Any) -> float:
    number: Any = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number) \
            or not 0 < number <= 120:
        raise _Bad(f"must be seconds, more than 0 and at most 120, not {value!r}")
    return float(number)


_CHECKS: dict[str, Any] = {
    "host": _host,
    "port": _port,
    "hosts": _hosts,
    "transport": _choice(TRANSPORTS),
    "ws_path": _text,
    "tls": _bool,
    "ca_certs": _path,
    "certfile": _path,
    "keyfile": _path,
    "username": _optional_text,
    "password": _password,
    "password_file": _path,
    "client_id_prefix": _prefix,
    "protocol": _choice(PROTOCOLS),
    "keepalive": _keepalive,
    "connect_timeout": _connect_timeout,
}


def check_broker(values: Any) -> dict[str, Any]:
    """Validate broker settings (keys as in :data:`BROKER_DEFAULTS`, without ``broker.``).

    Returns every field, normalised: defaults filled in, numbers as int/float, paths as
    ``~``-expanded :class:`~pathlib.Path`, ``password`` a plain str (a pydantic ``SecretStr``
    is unwrapped), ``protocol`` a str, and ``tls`` True whenever ``ca_certs`` or ``certfile``
    is set.

    :raises BrokerProblems: ``values`` is not a mapping, has unknown keys, or has unusable
        values (all of them are listed); or, once every field is usable, a client certificate
        without its key (or the reverse), or both a password and a password file.
    """
    if not isinstance(values, Mapping):
        raise BrokerProblems([(None, f"must be a table of broker settings, not {values!r}")])
    out = dict(BROKER_DEFAULTS)
    problems: list[tuple[str | None, str]] = []
    for key in values:
        if key not in _CHECKS:
            problems.append((str(key), "unknown setting"))
    for key, check in _CHECKS.items():
        if key in values:
            try:
                out[key] = check(values[key])
            except _Bad as exc:
                problems.append((key, str(exc)))
    if not problems:
        if (out["certfile"] is None) != (out["keyfile"] is None):
            given = "certfile" if out["certfile"] is not None else "keyfile"
            problems.append((given, "client certificate and key must be given together (mTLS)"))
        if out["password"] is not None and out["password_file"] is not None:
            problems.append(("password", "give the broker password or a password file, not both"))
    if problems:
        raise BrokerProblems(problems)
    if out["ca_certs"] is not None or out["certfile"] is not None:
        out["tls"] = True
    return out


def effective_port(port: int | None, transport: str, tls: bool) -> int:
    """``port``, or the default for the transport: 1883, 8883 (TLS), 80 or 443 (websockets)."""
    if port is not None:
        return port
    if transport == "websockets":
        return 443 if tls else 80
    return 8883 if tls else 1883


def broker_endpoints(host: str, port: int | None, hosts: tuple[str, ...], transport: str,
                     tls: bool) -> list[tuple[str, int]]:
    """Where to connect, in the order to try: ``hosts`` (each ``host[:port]``, the port
    defaulting to ``port`` or the transport's default) when given, else ``[(host, port)]``.
    Duplicates are dropped."""
    default = effective_port(port, transport, tls)
    if not hosts:
        return [(host, default)]
    out: list[tuple[str, int]] = []
    for item in hosts:
        name, given = split_endpoint(item)
        endpoint = (name, given or default)
        if endpoint not in out:
            out.append(endpoint)
    return out


def broker_url(host: str, port: int, transport: str, tls: bool, ws_path: str) -> str:
    """``mqtt://host:1883``, ``mqtts://``, ``ws://host:80/mqtt`` or ``wss://`` (no credentials)."""
    scheme = {("tcp", False): "mqtt", ("tcp", True): "mqtts",
              ("websockets", False): "ws", ("websockets", True): "wss"}[(transport, tls)]
    return f"{scheme}://{host}:{port}{ws_path if transport == 'websockets' else ''}"


def read_password(password: str | None, password_file: Path | None) -> str | None:
    """``password``, else the contents of ``password_file`` without its trailing newline, else
    None. Raises ConfigError if the file cannot be read."""
    if password is not None:
        return password
    if password_file is None:
        return None
    try:
        return password_file.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"broker password file {password_file}: {exc.strerror}") from None


class BrokerAddress:
    """Where to connect, derived from the validated fields; shared by :class:`BrokerOptions` and
    the pydantic :class:`swarmbus.settings.BrokerSettings`."""

    __slots__ = ()
    if TYPE_CHECKING:
        host: str
        port: int | None
        hosts: tuple[str, ...]
        transport: str
        tls: bool
        ws_path: str

    @property
    def effective_port(self) -> int:
        """The port to connect to (``port`` or the transport's default)."""
        return effective_port(self.port, self.transport, self.tls)

    @property
    def url(self) -> str:
        """Where we connect, as a URL without credentials (for messages): the first endpoint."""
        host, port = self.endpoints[0]
        return broker_url(host, port, self.transport, self.tls, self.ws_path)

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        """``[(host, port), ...]`` in the order to try (:func:`broker_endpoints`)."""
        return broker_endpoints(self.host, self.port, self.hosts, self.transport, self.tls)

    def url_of(self, endpoint: tuple[str, int]) -> str:
        """The URL of one of :attr:`endpoints`, without credentials."""
        return broker_url(endpoint[0], endpoint[1], self.transport, self.tls, self.ws_path)


class BrokerOptions(BrokerAddress):
    """Validated broker settings as plain attributes (the fields of :data:`BROKER_DEFAULTS`),
    with the same helpers as :class:`swarmbus.settings.BrokerSettings`.

    :raises BrokerProblems: as :func:`check_broker`.
    """

    host: str
    port: int | None
    hosts: tuple[str, ...]
    transport: str
    ws_path: str
    tls: bool
    ca_certs: Path | None
    certfile: Path | None
    keyfile: Path | None
    username: str | None
    password: str | None
    password_file: Path | None
    client_id_prefix: str
    protocol: str
    keepalive: int
    connect_timeout: float

    __slots__ = tuple(BROKER_DEFAULTS)

    def __init__(self, **values: Any) -> None:
        for key, value in check_broker(values).items():
            setattr(self, key, value)

    def __repr__(self) -> str:
        parts = []
        for key in BROKER_DEFAULTS:
            value = getattr(self, key)
            parts.append(f"{key}={'********' if key == 'password' and value is not None else repr(value)}")
        return f"BrokerOptions({', '.join(parts)})"

    def resolved_password(self) -> str | None:
        """The password, read from ``password_file`` when that is set (trailing newline
        stripped). Raises ConfigError if the file cannot be read."""
        return read_password(self.password, self.password_file)


def broker_options(raw: RawConfig) -> BrokerOptions:
    """The ``broker.*`` values of the layered raw config, validated.

    :raises ConfigError: ``invalid configuration: broker.<key>: ... (from <source>)``, the same
        text the pydantic settings give for the same values.
    """
    values: dict[str, Any] = {}
    for key, value in raw.values.items():
        if key == "broker":  # `broker = ...` in the file, not a [broker] table
            raise ConfigError(BrokerProblems([(None, f"must be a table of broker settings, not {value!r}")])
                              .describe(raw.sources))
        if key.startswith("broker."):
            values[key[len("broker."):]] = value
    try:
        return BrokerOptions(**values)
    except BrokerProblems as exc:
        raise ConfigError(exc.describe(raw.sources)) from None
