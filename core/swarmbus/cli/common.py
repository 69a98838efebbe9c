"""Helpers shared by CLI commands: turning flags into settings, and printing messages."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from swarmbus.config import RawConfig, load_raw

TYPE_CHECKING = False  # not from typing: importing typing costs the send fast path ~4 ms
if TYPE_CHECKING:
    from typing import Any

    from swarmbus.api import StoredMessage
    from swarmbus.settings import Settings

# dotted settings key -> (argparse dest, flag as the user typed it)
FLAG_KEYS: tuple[tuple[str, str, str], ...] = (
    ("broker.url", "broker", "--broker"),
    ("broker.port", "port", "--port"),
    ("agent_id", "agent_id", "--agent-id"),
    ("state_dir", "state_dir", "--state-dir"),
    ("log_format", "log_format", "--log-format"),
    ("log_level", "log_level", "--log-level"),
    ("broker.username", "username", "--username"),
    ("broker.password", "password", "--password"),
    ("broker.password_file", "password_file", "--password-file"),
    ("broker.tls", "tls", "--tls"),
    ("broker.ca_certs", "ca_cert", "--ca-cert"),
    ("broker.certfile", "client_cert", "--client-cert"),
    ("broker.keyfile", "client_key", "--client-key"),
    ("broker.client_id_prefix", "client_id_prefix", "--client-id-prefix"),
    ("broker.protocol", "mqtt_version", "--mqtt-version"),
    ("daemon.inbox_file", "inbox", "--inbox"),
    ("daemon.archive", "archive", "--no-archive"),
    ("wake.policy", "wake_policy", "--wake-policy"),
    ("wake.command", "invoke", "--invoke"),
    ("daemon.handler_timeout", "handler_timeout", "--handler-timeout"),
    ("daemon.handler_concurrency", "handler_concurrency", "--handler-concurrency"),
    ("daemon.heartbeat_interval", "heartbeat_interval", "--heartbeat-interval"),
    ("daemon.session_expiry", "session_expiry", "--session-expiry"),
    ("role", "role", "--role"),
    ("capabilities", "capability", "--capability"),
    ("swarm", "swarm", "--swarm"),
)


def cli_layer(args: argparse.Namespace) -> dict[str, tuple[Any, str]]:
    out: dict[str, tuple[Any, str]] = {}
    for key, dest, flag in FLAG_KEYS:
        value = getattr(args, dest, None)
        if value is not None:
            out[key] = (value, flag)
    brokers = getattr(args, "brokers", None) or []
    if len(brokers) > 1:  # --broker repeated: the nodes of a cluster, in order
        from swarmbus.config import expand_broker_url

        nodes = []
        for url in brokers:
            parts = expand_broker_url(str(url))
            port = parts.get("broker.port")
            host = str(parts["broker.host"])
            host = f"[{host}]" if ":" in host else host
            nodes.append(f"{host}:{port}" if port else host)
        out["broker.hosts"] = (nodes, "--broker")
    return out


def raw_config(args: argparse.Namespace) -> RawConfig:
    """File, environment and flags, unvalidated (cheap: no pydantic)."""
    path = Path(args.config).expanduser() if getattr(args, "config", None) else None
    if path is not None and not path.is_file():
        from swarmbus.errors import ConfigError

        raise ConfigError(f"--config {path}: no such file")
    return load_raw(cli_layer(args), config_path=path)


def load_settings_for(args: argparse.Namespace, *, pm: Any = None) -> Settings:
    """Validated settings for a command; with a plugin manager ``pm``, the plugins'
    ``[plugins.<name>]`` sections are validated against their registered models too."""
    from swarmbus.settings import build_settings

    raw = raw_config(args)
    sections = None
    if pm is not None:
        from swarmbus.plugins import HookRelay

        sections = HookRelay(pm).settings_sections()
    settings = build_settings(raw, sections)
    from swarmbus.logs import setup_logging

    # one-shot commands stay quiet unless a log level was asked for; the daemon logs at info
    chosen = args.command == "start" or "log_level" in raw.sources
    setup_logging(settings.log_format, settings.log_level if chosen else "warning")
    if args.command not in LONG_RUNNING:  # a person waits on it: say what a slow connect waits for
        from swarmbus.transport.reach import enable_notices

        enable_notices()
    return settings


LONG_RUNNING = ("start", "mcp-server")
"""Commands that run until stopped: they log, they print no "waiting for the broker" notice."""


_TERMINAL_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def safe_text(text: str) -> str:
    """Peer text is data: strip terminal control sequences before printing it to a person."""
    return _TERMINAL_UNSAFE.sub("\ufffd", text)


def print_message(message: StoredMessage) -> None:
    e = message.envelope
    out = sys.stdout
    out.write(f"--- from {e.from_agent} @ {e.ts} ---\n")
    out.write(f"id: {e.id}\n")
    out.write(f"to: {e.to}\n")
    out.write(f"subject: {safe_text(e.subject)}\n")
    if e.priority != "normal":
        out.write(f"priority: {e.priority}\n")
    if e.reply_to:
        out.write(f"reply_to: {e.reply_to}\n")
    if e.in_reply_to:
        out.write(f"in_reply_to: {safe_text(e.in_reply_to)}\n")
    if e.expires_at:
        out.write(f"expires_at: {e.expires_at}{' (expired)' if e.expired() else ''}\n")
    out.write(f"content-type: {e.content_type}\n\n")
    out.write(safe_text(e.body))
    out.write("\n\n" if not e.body.endswith("\n") else "\n")
    out.flush()


def print_json(value: Any) -> None:
    """``value`` as one line of JSON on stdout; non-ASCII text as ``\\uXXXX`` escapes (the same JSON)
    when stdout's encoding cannot hold it (``PYTHONIOENCODING=ascii``)."""
    text = json.dumps(value, indent=None, ensure_ascii=False)
    if not text.isascii():
        try:
            text.encode(getattr(sys.stdout, "encoding", None) or "utf-8")
        except (UnicodeEncodeError, LookupError):
            text = json.dumps(value, indent=None)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
