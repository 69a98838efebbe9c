"""Shared machinery for the benchmark scenarios: processes, brokers, daemons, probes and /proc.

Everything a scenario starts goes through a :class:`Workspace`: a temporary directory, the
private mosquitto brokers (``swarmbus.dev_broker``, one per measured run, on a free port) or
private 3-node NATS clusters (:class:`NatsCluster`, ``swarmbus.dev_nats``, on free ports) and
every child process, each in its own process group. ``Workspace.close()`` stops them all and
removes the directory, on success, on failure and on Ctrl-C.

The three contenders:

- **ours**: ``.venv/bin/swarmbus start`` (:class:`OurDaemon`), ready when its control socket
  reports ``connected``; its store is read through :class:`StoreReader` (read-only SQLite);
- **predecessor**: swarmbus-py 0.2.0's ``swarmbus start`` from ``bench/.venv-predecessor``
  (:class:`PredecessorDaemon`), ready when its live "online" presence arrives; its inbox file
  is read through :class:`InboxCounter`;
- **floor**: a plain paho-mqtt subscriber process, ``bench/mqtt_peer.py sub``
  (:class:`FloorSubscriber`), ready when its SUBACK arrives.

Readiness is then proven the same way for all three: a probe message is published and must
arrive (:func:`probe`), retried while a deadline allows. Waits are conditions polled with a
deadline (:func:`wait_for`); the only plain sleeps are stated pacing or measurement windows.

CPU and memory come from /proc (Linux): :func:`tree_cpu_seconds` sums utime+stime+cutime+cstime
over a process and its live descendants (children that exited are in their parent's cutime and
cstime once reaped), and :func:`tree_rss_bytes` sums VmRSS over the same tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
sys.path.insert(0, str(REPO / "core"))

from swarmbus.control import daemon_status  # noqa: E402
from swarmbus.dev_broker import BrokerConfig, RunningBroker, free_port, start_broker  # noqa: E402
from swarmbus.dev_nats import NatsConfig, find_nats_server, start_nats  # noqa: E402
from swarmbus.envelope import new_envelope  # noqa: E402
from swarmbus.paths import AgentPaths  # noqa: E402

OUR_BIN = Path(sys.executable).parent
OUR_PYTHON = Path(sys.executable)
PRED_VENV = BENCH / ".venv-predecessor"
PRED_BIN = PRED_VENV / "bin"
PRED_REQUIREMENT = "swarmbus-py==0.2.0"
PEER_SCRIPT = BENCH / "mqtt_peer.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SENDER = "bench-pub"

T = TypeVar("T")

# Where "ours" runs from: the working tree (None), or a core/ exported from a git revision
# (see use_ours_revision); the bench's own imports above always come from the working tree.
OURS_PYTHONPATH: str | None = None


class BenchError(RuntimeError):
    """A benchmark could not run (missing tool, a process died, a deadline passed)."""


# -- waiting and statistics ------------------------------------------------------------------------


def wait_for(predicate: Callable[[], T], timeout: float, what: str, *, interval: float = 0.01,
             check: Callable[[], None] | None = None) -> T:
    """Poll ``predicate`` every ``interval`` s until it returns a truthy value; return that value.

    ``check`` runs before each poll and may raise (e.g. "the daemon exited"). Raises
    :class:`BenchError` naming ``what`` when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """Median, min, max and n of ``values`` (all None when empty)."""
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def rotated(items: Sequence[T], rep: int) -> list[T]:
    """``items`` rotated by ``rep``: who goes first changes from one repetition to the next."""
    k = rep % len(items)
    return [*items[k:], *items[:k]]


def warm_page_cache(directory: Path, nbytes: int) -> None:
    """Write ``nbytes`` of zeros to a scratch file in ``directory``, then delete it.

    On a VM, the first write to guest memory the guest has never touched costs the hypervisor
    about 9 us per 4 KiB page (measured here: a 64 KiB ``write()`` takes ~150 us of system time
    on fresh pages and ~16 us on pages the guest freed before). A freshly booted VM charges that
    to whichever contender writes most, and ranges then span 2x. The kernel hands recently freed
    pages out first, so writing and deleting a file larger than a run writes makes every
    contender's file writes run on warm pages, as on a machine that has been up a while.
    """
    scratch = directory / "page-cache-warmup"
    chunk = b"\0" * (1 << 20)
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(max(1, nbytes >> 20)):
            os.write(fd, chunk)
    finally:
        os.close(fd)
        scratch.unlink()


# -- /proc -----------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (after the parenthesised command name), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return raw[raw.rindex(b")") + 2:].decode().split()


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def process_tree(pid: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """``pid`` and all its live descendants."""
    children = _children() if children is None else children
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, ()))
    return tree


def _trees(pids: int | Iterable[int]) -> list[int]:
    children = _children()  # one scan of /proc for all the roots
    return [p for root in ([pids] if isinstance(pids, int) else pids) for p in process_tree(root, children)]


def tree_cpu_seconds(pids: int | Iterable[int]) -> float:
    """CPU seconds (user+system, own and reaped children's) of each pid's process tree, summed."""
    total = 0
    for p in _trees(pids):
        fields = _stat(p)
        if fields is not None:
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / CLK_TCK


def tree_cpu_seconds_fine(pids: int | Iterable[int]) -> float:
    """CPU seconds on the scheduler's ns clock (/proc/<pid>/task/*/schedstat) of the live threads
    in each pid's process tree. Children that already exited are not included, so this is for
    windows without child processes (idle), where 10 ms ticks would be too coarse."""
    total = 0
    for p in _trees(pids):
        with contextlib.suppress(OSError):
            for task in os.scandir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    total += int(Path(task.path, "schedstat").read_text().split()[0])
    return total / 1e9


def tree_rss_bytes(pids: int | Iterable[int]) -> int:
    """Resident set size (VmRSS) of each pid's process tree, summed; shared pages count per process."""
    total = 0
    for p in _trees(pids):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def settle(pids: Sequence[int], *, window: float = 1.0, quiet_cpu: float = 0.02, timeout: float = 20.0) -> bool:
    """Wait until the process trees used at most ``quiet_cpu`` CPU seconds each during one
    ``window`` (a measurement window, not a sleep for synchronisation). False at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = tree_cpu_seconds(pids)
        time.sleep(window)
        if tree_cpu_seconds(pids) - before <= quiet_cpu * len(pids):
            return True
    return False


# -- brokers ---------------------------------------------------------------------------------------


class NatsCluster:
    """A private NATS cluster (``swarmbus.dev_nats``: JetStream, an MQTT 3.1.1 listener on every
    node, the MQTT streams replicated on every node) on free loopback ports, state under
    ``state_dir``, seen by the bench as one broker: ``host``, ``port`` and ``url`` are node n1's,
    where the bench's own clients (paho at MQTT 3.1.1, ``mosquitto_pub``) connect; our daemons
    and CLI get every node, in order, through ``SWARMBUS_BROKER_HOSTS`` (:func:`our_env`)."""

    engine = "nats-cluster"

    def __init__(self, state_dir: Path, nodes: int = 3) -> None:
        self.nats = start_nats(NatsConfig(state_dir=state_dir, nodes=nodes))
        first = self.nats.nodes[0]
        self.host, self.port, self.url = first.host, first.mqtt_port, first.mqtt_url
        self.hosts_value = self.nats.hosts_value

    def describe(self) -> dict[str, Any]:
        """Nodes (name -> host:port) and each MQTT stream's leader, as node n1 sees them now."""
        return {"nodes": {n.name: n.mqtt_host for n in self.nats.nodes},
                "stream_leaders": self.nats.stream_leaders()}

    def stop(self) -> None:
        self.nats.stop()


Broker = RunningBroker | NatsCluster


def nats_server_version() -> str:
    """``nats-server --version``'s output, or "" when it is not installed."""
    exe = find_nats_server()
    if exe is None:
        return ""
    with contextlib.suppress(OSError):
        return subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
    return ""


# -- processes -------------------------------------------------------------------------------------


def _groups_with_members(pgids: set[int]) -> set[int]:
    """Those of ``pgids`` that some live process still belongs to."""
    found = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and fields[0] not in ("Z", "X") and int(fields[2]) in pgids:
                found.add(int(fields[2]))
    return found


class Workspace:
    """A temporary directory plus every broker and child process a scenario starts."""

    def __init__(self, name: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=f"swarmbus-bench-{name}-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.brokers: list[Broker] = []
        self.config = self.root / "empty-config.toml"
        self.config.write_text("")

    def dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def broker(self, name: str = "broker") -> RunningBroker:
        broker = start_broker(BrokerConfig(state_dir=self.dir(name), port=free_port()))
        self.brokers.append(broker)
        return broker

    def nats_cluster(self, name: str = "nats", nodes: int = 3) -> NatsCluster:
        cluster = NatsCluster(self.dir(name), nodes)
        self.brokers.append(cluster)
        return cluster

    def spawn(self, argv: Sequence[str | Path], *, env: dict[str, str], log: Path,
              stdin: int | None = subprocess.DEVNULL, stdout: int | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` in its own process group; stderr (and stdout unless piped) go to ``log``."""
        with open(log, "ab") as fh:
            proc = subprocess.Popen([str(a) for a in argv], env=env, stdin=stdin,
                                    stdout=stdout if stdout is not None else fh, stderr=fh,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self, procs: Iterable[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
        """SIGTERM each process group, wait up to ``timeout`` s in total, then SIGKILL what is left."""
        procs = list(procs)
        running = [p for p in procs if p.poll() is None]
        for p in running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in running:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        leftover = _groups_with_members({p.pid for p in procs})
        for p in procs:  # the group may outlive its leader (e.g. an orphaned wake child)
            if p.pid in leftover:  # a pid in use as a pgid is never recycled, so this is still ours
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
            if p.stdin is not None:
                with contextlib.suppress(OSError):
                    p.stdin.close()
            if p.stdout is not None:
                with contextlib.suppress(OSError):
                    p.stdout.close()

    def close(self) -> None:
        try:
            self.stop(self.procs)
        finally:
            for broker in self.brokers:
                with contextlib.suppress(Exception):
                    broker.stop()
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("SWARMBUS_", "MQTT_", "PYTHONDONTWRITEBYTECODE", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"))}


def our_env(ws: Workspace, state_dir: Path, broker: Broker) -> dict[str, str]:
    """The environment our daemon and CLI run with: this state dir and broker (a NATS cluster:
    all its nodes, ``SWARMBUS_BROKER_HOSTS``), no config, only the plugin of the default install
    that runs ``--invoke`` (swarmbus-priority)."""
    env = _clean_env()
    env.update(SWARMBUS_STATE_DIR=str(state_dir), SWARMBUS_CONFIG=str(ws.config),
               SWARMBUS_BROKER_URL=broker.url, SWARMBUS_LOAD_PLUGINS="priority")
    if isinstance(broker, NatsCluster):  # the nodes, tried in order (docs/configuration.md, "Several brokers")
        del env["SWARMBUS_BROKER_URL"]
        env["SWARMBUS_BROKER_HOSTS"] = broker.hosts_value
    if OURS_PYTHONPATH:
        env["PYTHONPATH"] = OURS_PYTHONPATH
    return env


def use_ours_revision(rev: str, dest: Path) -> str:
    """Run "ours" from ``git archive <rev> core`` extracted under ``dest`` (read-only for the repo:
    no checkout). Returns the resolved short commit id."""
    global OURS_PYTHONPATH
    import io
    import tarfile

    commit = subprocess.run(["git", "rev-parse", "--short", f"{rev}^{{commit}}"], cwd=REPO,
                            capture_output=True, text=True)
    if commit.returncode != 0:
        raise BenchError(f"unknown git revision {rev!r}: {commit.stderr.strip()}")
    tar = subprocess.run(["git", "archive", "--format=tar", commit.stdout.strip(), "core"], cwd=REPO,
                         capture_output=True)
    if tar.returncode != 0:
        raise BenchError(f"git archive {rev} core failed: {tar.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
        archive.extractall(dest, filter="data")
    OURS_PYTHONPATH = str(dest / "core")
    return commit.stdout.strip()


def pred_env() -> dict[str, str]:
    """The predecessor's environment: nothing of ours (it reads SWARMBUS_BROKER_* and SWARMBUS_OUTBOX)."""
    return _clean_env()


# -- the predecessor and the wake helper -----------------------------------------------------------


def ensure_predecessor() -> Path:
    """Install swarmbus-py 0.2.0 into bench/.venv-predecessor (once); return its ``swarmbus``."""
    exe = PRED_BIN / "swarmbus"
    py = PRED_BIN / "python"

    def installed() -> bool:
        if not exe.exists() or not py.exists():
            return False
        probe = subprocess.run([str(py), "-c", "import importlib.metadata as m; print(m.version('swarmbus-py'))"],
                               capture_output=True, text=True)
        return probe.returncode == 0 and probe.stdout.strip() == PRED_REQUIREMENT.split("==")[1]

    if installed():
        return exe
    print(f"installing {PRED_REQUIREMENT} into {PRED_VENV} ...", file=sys.stderr)
    steps = [[sys.executable, "-m", "venv", "--clear", str(PRED_VENV)],
             [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", PRED_REQUIREMENT]]
    for argv in steps:
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(
                f"could not install the predecessor ({PRED_REQUIREMENT}) into {PRED_VENV}: "
                f"`{shlex.join(argv)}` exited {done.returncode}:\n{(done.stderr or done.stdout)[-1500:]}\n"
                "pip needs to reach PyPI (or the configured package index). Install it by hand with "
                f"`python3 -m venv {PRED_VENV} && {py} -m pip install {PRED_REQUIREMENT}` and re-run.")
    if not installed():
        raise BenchError(f"{PRED_REQUIREMENT} was installed into {PRED_VENV} but `swarmbus` is not usable there")
    return exe


_WAKE_HELPER_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
/* Appends "<CLOCK_REALTIME ns> <SWARMBUS_ID>\n" to argv[1] as its first act, then drains stdin. */
int main(int argc, char **argv) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (argc < 2) return 2;
    const char *id = getenv("SWARMBUS_ID");
    char line[320];
    int n = snprintf(line, sizeof line, "%lld%09ld %.200s\n", (long long)ts.tv_sec, ts.tv_nsec, id ? id : "-");
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd < 0) return 1;
    if (write(fd, line, (size_t)n) != n) return 1;
    close(fd);
    char buf[65536];
    while (read(0, buf, sizeof buf) > 0) {}
    return 0;
}
"""


def build_wake_helper(ws: Workspace) -> Path | None:
    """Compile the wake-stamp helper with the machine's C compiler; None when there is none."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    src, exe = ws.root / "wakestamp.c", ws.root / "wakestamp"
    src.write_text(_WAKE_HELPER_C)
    done = subprocess.run([cc, "-O2", "-o", str(exe), str(src)], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"warning: could not compile the wake helper ({done.stderr.strip()[-300:]}); using touch",
              file=sys.stderr)
        return None
    return exe


class WakeMarker:
    """Where a wake command records when it started.

    With the compiled helper, each wake appends a line ``<ns> <message id>``; without it, the
    wake command is ``/usr/bin/touch MARKER`` and the start time is the marker's st_mtime_ns
    (as fine as the kernel's file timestamps)."""

    def __init__(self, path: Path, helper: Path | None) -> None:
        self.path, self.helper = path, helper

    @property
    def command(self) -> str:
        exe = str(self.helper) if self.helper else shutil.which("touch") or "/usr/bin/touch"
        return shlex.join([exe, str(self.path)])

    def token(self) -> int:
        """An opaque "how far are we" value: line count (helper) or mtime (touch)."""
        try:
            if self.helper:
                return self.path.read_bytes().count(b"\n")
            return self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    def started_after(self, token: int) -> float | None:
        """Start time (Unix s) of the first wake recorded after ``token``, or None yet."""
        try:
            if self.helper:
                lines = self.path.read_bytes().splitlines()
                return int(lines[token].split()[0]) / 1e9 if len(lines) > token else None
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        return mtime / 1e9 if mtime != token else None


# -- reading what a daemon received ----------------------------------------------------------------


class StoreReader:
    """Read-only view of our daemon's store (``messages``: seq, id, received_at; ``dispatches``: done_at)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5, check_same_thread=False)
        return self._db

    def last_seq(self) -> int:
        return int(self._conn().execute("SELECT coalesce(max(seq), 0) FROM messages").fetchone()[0])

    def since(self, seq: int) -> tuple[int, int, float | None, float | None]:
        """(rows, rows dispatched, max received_at, max dispatch time) for rows after ``seq``.
        Schema 2 keeps the dispatch time in ``dispatches.done_at``; schema 1 (an older
        ``--ours-rev``) kept it in ``messages.dispatched_at``."""
        db = self._conn()
        received = db.execute("SELECT count(*), max(received_at) FROM messages WHERE seq > ?", (seq,)).fetchone()
        try:
            done = db.execute("SELECT count(done_at), max(done_at) FROM dispatches WHERE seq > ?", (seq,)).fetchone()
        except sqlite3.OperationalError:  # no such table: schema 1
            done = db.execute("SELECT count(dispatched_at), max(dispatched_at) FROM messages WHERE seq > ?",
                              (seq,)).fetchone()
        return int(received[0]), int(done[0]), received[1], done[1]

    def quarantined(self) -> int:
        with contextlib.suppress(sqlite3.Error):
            return int(self._conn().execute("SELECT count(*) FROM quarantine").fetchone()[0])
        return -1

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class InboxCounter:
    """Counts ``## [`` entries in a growing markdown inbox file, reading only the new bytes."""

    MARK = b"\n## ["

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.count, self._tail = path, 0, 0, b""

    def update(self) -> int:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return self.count
        if data:
            self.offset += len(data)
            chunk = self._tail + data
            self.count += chunk.count(self.MARK)
            self._tail = chunk[-(len(self.MARK) - 1):]  # a mark split over two reads is counted once
        return self.count

    def mtime(self) -> float:
        """The file's st_mtime_ns in seconds. Coarse: Linux stamps files with its tick clock, up to
        one tick (4 ms at HZ=250) behind the wall clock, so use it only for long intervals."""
        return self.path.stat().st_mtime_ns / 1e9


class FileWatch:
    """inotify (Linux, via ctypes) on one directory: the wall-clock time at which each write to a
    file in it was seen. A thread blocks on the inotify fd, so the time is taken within
    scheduling latency of the write, with no polling; file mtimes are too coarse for ms figures."""

    IN_MODIFY = 0x2

    def __init__(self, directory: Path) -> None:
        import ctypes
        import select
        import struct

        libc = ctypes.CDLL(None, use_errno=True)
        self._fd = libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        if self._fd < 0 or libc.inotify_add_watch(self._fd, os.fsencode(directory), self.IN_MODIFY) < 0:
            raise BenchError(f"inotify on {directory} failed: {os.strerror(ctypes.get_errno())}")
        self.events: list[tuple[str, float]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        header = struct.Struct("iIII")

        def reader() -> None:
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            while not self._stop.is_set():
                if not poller.poll(100):
                    continue
                t = time.time()
                try:
                    data = os.read(self._fd, 65536)
                except BlockingIOError:
                    continue
                pos, batch = 0, []
                while pos + header.size <= len(data):
                    _, _, _, length = header.unpack_from(data, pos)
                    name = data[pos + header.size:pos + header.size + length].rstrip(b"\0").decode()
                    batch.append((name, t))
                    pos += header.size + length
                with self._lock:
                    self.events.extend(batch)

        self._thread = threading.Thread(target=reader, daemon=True)
        self._thread.start()

    def mark(self) -> int:
        with self._lock:
            return len(self.events)

    def modified_after(self, mark: int, name: str) -> float | None:
        """Time of the first write to ``name`` seen after ``mark``, or None yet."""
        with self._lock:
            return next((t for n, t in self.events[mark:] if n == name), None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        os.close(self._fd)


# -- MQTT clients in the bench process -------------------------------------------------------------


def _paho() -> Any:
    import paho.mqtt.client as mqtt

    return mqtt


def _nodelay(client: Any) -> None:
    import socket

    sock = client.socket()
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _protocol(mqtt: Any, broker: Broker) -> Any:
    """MQTT 5, or 3.1.1 on NATS (which refuses 5)."""
    return mqtt.MQTTv311 if isinstance(broker, NatsCluster) else mqtt.MQTTv5


class Publisher:
    """One paho client (MQTT 5; 3.1.1 on NATS; TCP_NODELAY) in the bench process, for paced publishes."""

    def __init__(self, broker: Broker, name: str = "bench-publisher") -> None:
        mqtt = _paho()
        self._connected = threading.Event()
        self._closed = False
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{name}-{os.getpid()}",
                                  protocol=_protocol(mqtt, broker))

        def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            _nodelay(client)
            self._connected.set()

        self.client.on_connect = on_connect
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        wait_for(self._connected.is_set, 10, "the bench publisher to connect")

    def publish(self, topic: str, payload: bytes) -> float:
        """Publish at QoS 1; return the wall-clock time taken just before the publish call."""
        t = time.time()
        self.client.publish(topic, payload, qos=1)
        return t

    def send(self, to: str, subject: str, *, priority: str = "normal", body: str = "x" * 100) -> float:
        topic = "agents/broadcast" if to == "broadcast" else f"agents/{to}/inbox"
        payload = new_envelope(SENDER, to, subject, body, priority=priority).to_wire()
        return self.publish(topic, payload)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.client.disconnect()
            self.client.loop_stop()


class PresenceWatch:
    """Collects agent ids whose live (not retained) ``online`` presence arrived."""

    def __init__(self, broker: Broker) -> None:
        mqtt = _paho()
        self.online: set[str] = set()
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._closed = False
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-presence-{os.getpid()}",
                                  protocol=_protocol(mqtt, broker))

        def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            client.subscribe("agents/+/presence", qos=1)

        def on_subscribe(client: Any, userdata: Any, mid: Any, codes: Any, props: Any) -> None:
            self._subscribed.set()

        def on_message(client: Any, userdata: Any, msg: Any) -> None:
            if msg.retain:
                return
            with contextlib.suppress(ValueError, UnicodeDecodeError, AttributeError):
                data = json.loads(msg.payload)
                if data.get("status") == "online":
                    with self._lock:
                        self.online.add(str(data.get("agent")))

        self.client.on_connect, self.client.on_subscribe, self.client.on_message = on_connect, on_subscribe, on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        wait_for(self._subscribed.is_set, 10, "the presence watcher to subscribe")

    def has(self, agent_id: str) -> bool:
        with self._lock:
            return agent_id in self.online

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.client.disconnect()
            self.client.loop_stop()


# -- the contenders --------------------------------------------------------------------------------


class Contender:
    """A receiving process: start it, wait until ready, count what it received."""

    label = "?"
    agent_id: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.label} exited with code {self.proc.returncode}:\n{log_tail(self.log)}")

    def received(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError


class OurDaemon(Contender):
    label = "ours"

    def __init__(self, ws: Workspace, broker: Broker, agent_id: str, state_dir: Path,
                 extra: Sequence[str] = ()) -> None:
        self.agent_id, self.state_dir = agent_id, state_dir
        self.paths = AgentPaths.for_agent(agent_id, state_dir)
        self.log = ws.dir("logs") / f"ours-{agent_id}.log"
        self.env = our_env(ws, state_dir, broker)
        argv = [OUR_BIN / "swarmbus", "start", "--agent-id", agent_id, "--log-level", "warning", *extra]
        self.proc = ws.spawn(argv, env=self.env, log=self.log)
        self.store = StoreReader(self.paths.store)

    def is_ready(self) -> bool:
        self.check_alive()
        return bool((daemon_status(self.paths.socket, timeout=1.0) or {}).get("connected"))

    def wait_ready(self, timeout: float = 60.0) -> None:
        wait_for(self.is_ready, timeout, f"our daemon {self.agent_id} to connect", interval=0.05)

    def link(self) -> tuple[str, str]:
        """(node in use, MQTT version) from the control socket; ("?", "?") when it does not answer."""
        status = daemon_status(self.paths.socket, timeout=2.0) or {}
        return str(status.get("broker", "?")), str(status.get("protocol", "?"))

    def received(self) -> int:
        return self.store.last_seq() if self.paths.store.exists() else 0


class PredecessorDaemon(Contender):
    label = "predecessor"

    def __init__(self, ws: Workspace, broker: Broker, agent_id: str, inbox: Path,
                 invoke: str | None = None) -> None:
        self.agent_id, self.inbox_path = agent_id, inbox
        self.log = ws.dir("logs") / f"pred-{agent_id}.log"
        argv: list[str | Path] = [PRED_BIN / "swarmbus", "start", "--agent-id", agent_id,
                                  "--broker", broker.host, "--port", str(broker.port), "--inbox", inbox]
        if invoke:
            argv += ["--invoke", invoke]
        self.proc = ws.spawn(argv, env=pred_env(), log=self.log)
        self.inbox = InboxCounter(inbox)

    def wait_ready(self, presence: PresenceWatch, timeout: float = 60.0) -> None:
        wait_for(lambda: presence.has(self.agent_id), timeout, f"predecessor {self.agent_id} to come online",
                 interval=0.05, check=self.check_alive)

    def received(self) -> int:
        return self.inbox.update()


class FloorSubscriber(Contender):
    """``bench/mqtt_peer.py sub``: plain paho, persistent session, QoS 1; reports on stdout."""

    label = "floor"

    def __init__(self, ws: Workspace, broker: RunningBroker, agent_id: str, *, expect: int = 0,
                 spawn: str = "") -> None:
        self.agent_id = agent_id
        self.log = ws.dir("logs") / f"floor-{agent_id}.log"
        argv: list[str | Path] = [OUR_PYTHON, PEER_SCRIPT, "sub", "--host", broker.host, "--port", str(broker.port),
                                  "--agent-id", agent_id]
        argv += ["--expect", str(expect)] if expect else ["--spawn", spawn] if spawn else ["--echo"]
        self.proc = ws.spawn(argv, env=_clean_env(), log=self.log, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.lines: list[list[str]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._lock:
                self.lines.append(raw.decode().split())

    def find(self, kind: str) -> list[str] | None:
        with self._lock:
            return next((line for line in self.lines if line and line[0] == kind), None)

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_for(lambda: self.find("ready"), timeout, "the floor subscriber's SUBACK", check=self.check_alive)

    def received(self) -> int:
        with self._lock:
            return sum(1 for line in self.lines if line and line[0] in ("msg", "first"))

    def times(self) -> list[float]:
        """Receive times (Unix s) of the messages reported so far, in order."""
        with self._lock:
            return [float(line[1]) for line in self.lines if line and line[0] in ("msg", "first")]


def probe(contender: Contender, publisher: Publisher, timeout: float = 30.0, retry: float = 3.0) -> None:
    """Publish a normal-priority probe to the contender's inbox until one arrives: readiness
    proven by delivery (the subscription is in place and the receive path is warm)."""
    before = contender.received()
    deadline = time.monotonic() + timeout
    while True:
        publisher.send(contender.agent_id, "probe")
        try:
            wait_for(lambda: contender.received() > before, min(retry, max(0.1, deadline - time.monotonic())),
                     f"{contender.label} {contender.agent_id} to receive a probe", interval=0.02,
                     check=contender.check_alive)
            return
        except BenchError:
            if time.monotonic() >= deadline:
                raise


def run_peer_publisher(broker: RunningBroker, to: str, count: int, body_bytes: int, ws: Workspace,
                       timeout: float) -> dict[str, Any]:
    """Run ``bench/mqtt_peer.py pub`` (a separate process) and return its JSON report."""
    log = ws.dir("logs") / "publisher.log"
    argv: list[str | Path] = [OUR_PYTHON, PEER_SCRIPT, "pub", "--host", broker.host, "--port", str(broker.port),
                              "--to", to, "--count", str(count), "--body-bytes", str(body_bytes)]
    proc = ws.spawn(argv, env=_clean_env(), log=log, stdout=subprocess.PIPE)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        ws.stop([proc])
        raise BenchError(f"the publisher did not finish within {timeout:.0f} s:\n{log_tail(log)}") from None
    if proc.returncode != 0:
        raise BenchError(f"the publisher failed ({proc.returncode}):\n{log_tail(log)}")
    report: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return report


# -- machine notes ---------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    def first_line(argv: list[str]) -> str:
        with contextlib.suppress(OSError):
            done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO)
            return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr).strip() else ""
        return ""

    model = ""
    with contextlib.suppress(OSError):
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    from importlib.metadata import version

    dirty = first_line(["git", "status", "--porcelain", "--", "core"])
    return {
        "cpus": os.cpu_count(), "cpu_model": model, "kernel": os.uname().release,
        "python": sys.version.split()[0], "paho_mqtt": version("paho-mqtt"),
        "mosquitto": first_line(["mosquitto", "-h"]) or first_line(["/usr/sbin/mosquitto", "-h"]),
        "mem_total_mb": int(Path("/proc/meminfo").read_text().split()[1]) // 1024,
        "loadavg_start": os.getloadavg(), "git_head": first_line(["git", "rev-parse", "--short", "HEAD"]),
        "worktree_core_modified": bool(dirty),
    }
