"""Where an agent's local state lives.

``<state_dir>`` is ``SWARMBUS_STATE_DIR`` / ``state_dir`` or platformdirs' user state dir
(``~/.local/state/swarmbus`` on Linux). Each agent id owns ``<state_dir>/agents/<id>/``:

- ``store.sqlite3``: the durable store (WAL), see :mod:`swarmbus.store`;
- ``daemon.lock``: held (``flock``) by whichever process owns the receive session;
- ``daemon.sock``: the daemon's local control socket (see :mod:`swarmbus.control`);
- ``inbox.md``: the markdown inbox archive, unless configured elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

# sun_path is 108 bytes on Linux, 104 on macOS; keep a margin.
_MAX_SOCKET_PATH = 100


def default_state_dir() -> Path:
    from platformdirs import user_state_path

    return user_state_path("swarmbus", appauthor=False)


class AgentPaths:
    """The files of one agent id under a state dir (no IO until :meth:`ensure`)."""

    __slots__ = ("agent_id", "root")

    def __init__(self, agent_id: str, root: Path) -> None:
        self.agent_id = agent_id
        self.root = root

    @classmethod
    def for_agent(cls, agent_id: str, state_dir: str | Path | None = None) -> AgentPaths:
        base = Path(state_dir).expanduser() if state_dir else default_state_dir()
        return cls(agent_id, base / "agents" / agent_id)

    @property
    def store(self) -> Path:
        return self.root / "store.sqlite3"

    @property
    def lock(self) -> Path:
        return self.root / "daemon.lock"

    @property
    def inbox_file(self) -> Path:
        return self.root / "inbox.md"

    @property
    def socket(self) -> Path:
        """The control socket; moved to a short runtime path if the natural one is too long."""
        natural = self.root / "daemon.sock"
        if len(os.fsencode(natural)) <= _MAX_SOCKET_PATH:
            return natural
        import hashlib
        import tempfile

        digest = hashlib.sha256(os.fsencode(natural)).hexdigest()[:20]
        runtime = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
        return Path(runtime) / f"swarmbus-{os.getuid()}" / f"{digest}.sock"

    def ensure(self) -> None:
        """Create the agent dir (and the socket's dir) with mode 0700."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.socket.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
