"""Constants of the OpenClaw gateway WebSocket protocol, version 4, and this plugin's host type.

Kept apart from :mod:`swarmbus_openclaw.gateway` so that loading the plugin (settings
validation, ``swarmbus --help``, a daemon whose host type is not ``openclaw``) does not import
the client, ``websockets`` or ``cryptography``: those load on the first wake, doctor check or
init step that needs them. The closed enums are the gateway's own (its ``connect`` schema).
"""

from __future__ import annotations

HOST_TYPE = "openclaw"
PROTOCOL_VERSION = 4
DEFAULT_PORT = 18789
CLIENT_IDS = (
    "webchat-ui", "openclaw-control-ui", "openclaw-browser-copilot", "openclaw-tui", "webchat", "cli",
    "gateway-client", "openclaw-macos", "openclaw-linux", "openclaw-ios", "openclaw-watchos", "openclaw-android",
    "node-host", "openclaw-worker", "test", "fingerprint", "openclaw-probe",
)
CLIENT_MODES = ("webchat", "cli", "ui", "backend", "node", "worker", "probe", "test")
