"""The MQTT version each broker turned out to speak, remembered across processes (stdlib only).

With ``broker.protocol = "auto"`` a client offers MQTT 5 first and falls back to 3.1.1 when the
broker refuses it (CONNACK reason 132, or return code 1 from a 3.1.1-only broker) or closes the
connection without any CONNACK (RabbitMQ 3.10's MQTT plugin does; NATS 2.9 refuses with a
code). Every new process would pay for, and make the broker log, that refused attempt, so once
a 3.1.1 connection succeeds after a fallback the version is recorded here, keyed by the
broker's URL, and later processes (daemons, one-shot commands, ``send --direct``) go straight
to it. The file is ``<state_dir>/broker-protocols.json``, mode 0600, a JSON object
``{"mqtt://host:port": "3.1.1"}``. A missing or unreadable file means "nothing known"; a write
that fails is ignored (it only costs the next process the refused attempt).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

FILE_NAME = "broker-protocols.json"
VERSIONS = ("5", "3.1.1")
MAX_ENTRIES = 256


class ProtocolMemory:
    """Remembered MQTT versions in ``path`` (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def in_state_dir(cls, state_dir: str | Path | None) -> ProtocolMemory:
        """The memory under ``state_dir`` (None: the default state dir)."""
        from swarmbus.paths import default_state_dir

        base = Path(state_dir).expanduser() if state_dir else default_state_dir()
        return cls(base / FILE_NAME)

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(k, str) and v in VERSIONS}

    def get(self, url: str) -> str | None:
        """The version remembered for ``url`` (``"5"`` or ``"3.1.1"``), or None."""
        return self._read().get(url)

    def remember(self, url: str, version: str) -> None:
        """Record that ``url`` speaks ``version`` (atomically; failures are ignored)."""
        if version not in VERSIONS:
            return
        data = self._read()
        if data.get(url) == version:
            return
        data[url] = version
        while len(data) > MAX_ENTRIES:
            data.pop(next(iter(data)))
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out)
            os.replace(tmp, self.path)
        with contextlib.suppress(OSError):
            tmp.unlink()
