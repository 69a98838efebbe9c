"""Where an agent's local state lives, kept private to its user.

``<state_dir>`` is ``SWARMBUS_STATE_DIR`` / ``state_dir`` or platformdirs' user state dir
(``~/.local/state/swarmbus`` on Linux). Each agent id owns ``<state_dir>/agents/<id>/``:

- ``store.sqlite3``: the durable store (WAL), see :mod:`swarmbus.store`;
- ``daemon.lock``: held (``flock``) by whichever process owns the receive session;
- ``daemon.sock``: the daemon's local control socket (see :mod:`swarmbus.control`);
- ``inbox.md``: the markdown inbox archive, unless configured elsewhere.

The agent directory and its parent are created with mode 0700 and must belong to this user
(a directory of ours with a looser mode is tightened; one that belongs to someone else is
refused). A socket path longer than ``sun_path`` allows (about 100 bytes) cannot be bound, so then
the daemon makes a fresh private directory with a short path (``mkdtemp`` under
``XDG_RUNTIME_DIR`` when that is this user's, else under ``/tmp``: created by the daemon itself,
mode 0700, an unpredictable name) and leaves its path in ``<agent dir>/daemon.sock.path`` for
clients. A socket never goes into a directory another user created or can write.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from swarmbus.errors import UsageError

# sun_path is 108 bytes on Linux, 104 on macOS; keep a margin.
_MAX_SOCKET_PATH = 100
SOCKET_POINTER = "daemon.sock.path"


def default_state_dir() -> Path:
    from platformdirs import user_state_path

    return user_state_path("swarmbus", appauthor=False)


def private_dir_problem(path: Path) -> str | None:
    """Why ``path`` is not a directory private to this user (None when it is): not a real
    directory, a symlink, owned by another user, or writable by others."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return f"{path} does not exist"
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    if st.st_uid != os.geteuid():
        return f"{path} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()})"
    if st.st_mode & 0o022:
        return f"{path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) with mode 0700, or make sure an existing one is a
    directory of this user's that nobody else can enter (tightening our own to 0700).

    :raises UsageError: it belongs to another user, is a symlink or not a directory.
    """
    with contextlib.suppress(FileExistsError, NotADirectoryError):  # a file there: said below
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        st = os.lstat(path)
    except OSError as exc:  # a file where a parent directory should be
        raise UsageError(f"refusing to keep swarmbus state in {path}: {exc.strerror}",
                         hint="use a directory of your own (--state-dir), or remove what is in the way") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise UsageError(f"refusing to keep swarmbus state in {path}: {private_dir_problem(path)}",
                         hint="use a directory of your own (--state-dir), or remove that one")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)


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
    def natural_socket(self) -> Path:
        return self.root / "daemon.sock"

    @property
    def socket_fits(self) -> bool:
        """True when the natural socket path is short enough to bind."""
        return len(os.fsencode(self.natural_socket)) <= _MAX_SOCKET_PATH

    @property
    def socket(self) -> Path:
        """The control socket clients connect to: the natural path, or the short private path
        the running daemon recorded when the natural one is too long."""
        if self.socket_fits:
            return self.natural_socket
        try:
            recorded = (self.root / SOCKET_POINTER).read_text(encoding="utf-8").strip()
        except OSError:
            return self.natural_socket  # no daemon recorded one: connecting fails as "not running"
        return Path(recorded)

    def ensure(self) -> None:
        """Create the agent dir (and ``agents/``) with mode 0700, checking they are private.

        :raises UsageError: a directory on the way belongs to another user.
        """
        ensure_private_dir(self.root.parent)
        ensure_private_dir(self.root)

    def make_socket_path(self) -> Path:
        """For the daemon: the path to bind its control socket at, in a directory private to
        this user; for a too-long natural path, a fresh short directory recorded for clients.

        :raises UsageError: no private directory could be made.
        """
        self.ensure()
        self.release_socket_path()
        if self.socket_fits:
            return self.natural_socket
        import tempfile

        runtime = os.environ.get("XDG_RUNTIME_DIR")
        bases = [Path(runtime)] if runtime and private_dir_problem(Path(runtime)) is None else []
        bases.append(Path("/tmp"))  # noqa: S108 - mkdtemp makes a fresh 0700 dir with a random name
        for base in bases:
            try:
                made = Path(tempfile.mkdtemp(prefix="swarmbus-", dir=base))
            except OSError:
                continue
            path = made / "s"
            if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
                pointer = self.root / SOCKET_POINTER
                tmp = pointer.with_suffix(".tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(str(path) + "\n")
                os.replace(tmp, pointer)
                return path
            os.rmdir(made)
        raise UsageError(f"cannot make a private directory with a short path for the control socket of {self.agent_id}",
                         hint="set XDG_RUNTIME_DIR to a directory of yours, or use a shorter --state-dir")

    def release_socket_path(self) -> None:
        """Remove the socket and, for a recorded short path, its private directory and the
        record (a crashed daemon's leftovers too; only ever a directory of this user's)."""
        pointer = self.root / SOCKET_POINTER
        try:
            recorded = Path(pointer.read_text(encoding="utf-8").strip())
        except OSError:
            recorded = None
        for sock in (self.natural_socket, recorded):
            if sock is None:
                continue
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.lstat(sock).st_mode) and private_dir_problem(sock.parent) is None:
                    sock.unlink()
        if recorded is not None and recorded.parent != self.root and private_dir_problem(recorded.parent) is None:
            with contextlib.suppress(OSError):
                os.rmdir(recorded.parent)
        with contextlib.suppress(FileNotFoundError):
            pointer.unlink()
