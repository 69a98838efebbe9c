"""A least-privilege mosquitto set-up for a list of swarmbus agents (``swarmbus broker acl``).

Everything lives in one private directory (mode 0700), safe to re-run::

    DIR/registry.json             who exists and with which role; broker and listener files (no secrets)
    DIR/passwd                    mosquitto's password file, changed only through ``mosquitto_passwd``
    DIR/acl                       mosquitto's acl_file, regenerated from the registry on every run
    DIR/mosquitto.conf            a snippet for running a system mosquitto with these two files
    DIR/nats-users.conf           the same users and permissions for nats-server's MQTT listener
    DIR/agents/<id>/password      the plaintext password of one principal (0600)
    DIR/agents/<id>/swarmbus.toml a config file that principal can use (``swarmbus start --config``)
    DIR/.lock                     held (flock) for a whole run

A principal is an ``agent`` (sends under its own id, reads its own inbox, receipts, broadcasts
and everyone's presence; writes job records, events and outcomes and task states under its own
id, reads every job and task) or an ``observer`` (reads presence, broadcasts, jobs and task
states only). Files are
written only when their content changes, so a run that changes nothing leaves every byte and
mtime as it was. Passwords never appear in argv, in the registry, or in anything printed.

mosquitto notes (2.0.11): ``topic`` lines before the first ``user`` line apply to anonymous
clients only and ``pattern`` lines apply to every user, so the ACL is one ``user`` block per
principal with explicit ``topic`` lines; mosquitto rereads password_file and acl_file on SIGHUP.

NATS notes (2.9.10, checked here): user permissions apply to the MQTT listener with topics as
subjects (``/`` -> ``.``, ``+`` -> ``*``, ``#`` -> ``>``); a denied publish is dropped (logged as a
"Publish Violation"; MQTT 3.1.1 cannot refuse it), and QoS 1 subscriptions also need subscribe
permission on ``$MQTT.sub.>``, where JetStream delivers them (MQTT clients cannot subscribe there).
An ``include`` path in a nats.conf is relative to that file, even when it starts with ``/``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarmbus.envelope import EnvelopeError, validate_own_id
from swarmbus.errors import ConfigError, SwarmbusError, UsageError

__all__ = [
    "ROLES",
    "Outcome",
    "Registry",
    "Request",
    "acl_file",
    "apply",
    "find_mosquitto_passwd",
    "load_registry",
    "nats_secure_fields",
    "passwd_file",
    "passwd_users",
    "render_acl",
    "render_agent_config",
    "render_mosquitto_conf",
    "render_nats_users",
]

REGISTRY_VERSION = 1
ROLES = ("agent", "observer")
REGISTRY_NAME = "registry.json"
PASSWD_NAME = "passwd"  # noqa: S105 - a file name, not a password
ACL_NAME = "acl"
CONF_NAME = "mosquitto.conf"
NATS_USERS_NAME = "nats-users.conf"
NATS_MQTT_DELIVERY = "$MQTT.sub.>"
"""The subjects nats-server delivers MQTT QoS 1 subscriptions on (JetStream consumers)."""
LOCK_NAME = ".lock"
AGENTS_DIR = "agents"
PASSWORD_NAME = "password"  # noqa: S105 - a file name, not a password
AGENT_CONFIG_NAME = "swarmbus.toml"
MOSQUITTO_PASSWD = "mosquitto_passwd"  # noqa: S105 - a file name, not a password
INSTALL_HINT = "it ships with mosquitto: `sudo apt install mosquitto` (Debian/Ubuntu) or `brew install mosquitto` (macOS)"
SYNC_PREFIX = "swarmbus"
"""The sync topics' first level: the daemon's ``broker.client_id_prefix`` (default ``swarmbus``)."""
JOBS_PREFIX = "swarmbus/jobs"
"""Job topics: ``swarmbus/jobs/<job_id>/record|events|outcome/<agent>`` (docs/jobs.md)."""
TASKS_PREFIX = "swarmbus/tasks"
"""Task-board topics: ``swarmbus/tasks/<task_id>/state/<owner>`` and the rest under it (docs/swarm.md)."""

_BROKER_KEYS = ("url", "ca_cert")
_LISTENER_KEYS = ("certfile", "keyfile", "cafile")


# -- the registry --------------------------------------------------------------------------------


@dataclass
class Registry:
    """What ``registry.json`` holds (no secrets).

    ``principals`` maps an id to its role (``agent`` or ``observer``); ``broker`` may hold
    ``url`` and ``ca_cert`` (written into each agent's config); ``listener`` may hold
    ``certfile``, ``keyfile`` and ``cafile`` (the broker's TLS files); ``verified`` says whether
    agents may only send under their own id.
    """

    verified: bool = True
    principals: dict[str, str] = field(default_factory=dict)
    broker: dict[str, str] = field(default_factory=dict)
    listener: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        """The file's text: sorted keys, two-space indent, a final newline; empty sections left out."""
        data: dict[str, Any] = {
            "version": REGISTRY_VERSION,
            "verified": self.verified,
            "principals": {pid: {"role": role} for pid, role in self.principals.items()},
        }
        if self.broker:
            data["broker"] = dict(self.broker)
        if self.listener:
            data["listener"] = dict(self.listener)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def ids(self, role: str | None = None) -> list[str]:
        """The principals' ids, sorted; only those with ``role`` when given."""
        return sorted(pid for pid, r in self.principals.items() if role in (None, r))


def parse_registry(text: str, source: Path | str = REGISTRY_NAME) -> Registry:
    """Parse the text of ``registry.json``.

    :raises ConfigError: not JSON, another version, or a field of the wrong kind (an invalid id,
        an unknown role, a non-string path).
    """

    def bad(why: str) -> ConfigError:
        return ConfigError(f"{source}: {why}",
                           hint="it is written by `swarmbus broker acl`; restore it, or start again in a new --dir")

    try:
        data = json.loads(text)
    except ValueError as exc:
        raise bad(f"not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("version") != REGISTRY_VERSION:
        raise bad(f"not a version {REGISTRY_VERSION} registry")
    verified = data.get("verified", True)
    principals = data.get("principals", {})
    if not isinstance(verified, bool) or not isinstance(principals, dict):
        raise bad("`verified` must be true or false and `principals` an object")
    registry = Registry(verified=verified)
    for pid, entry in principals.items():
        try:
            validate_own_id(pid)
        except EnvelopeError as exc:
            raise bad(str(exc)) from None
        role = entry.get("role") if isinstance(entry, dict) else None
        if role not in ROLES:
            raise bad(f"{pid}: role must be one of {', '.join(ROLES)}")
        registry.principals[pid] = role
    for name, keys, target in (("broker", _BROKER_KEYS, registry.broker),
                               ("listener", _LISTENER_KEYS, registry.listener)):
        section = data.get(name, {})
        if not isinstance(section, dict) or any(k not in keys or not isinstance(v, str) for k, v in section.items()):
            raise bad(f"`{name}` may hold only {', '.join(keys)}, as strings")
        target.update(section)
    return registry


def load_registry(directory: Path) -> Registry | None:
    """The registry in ``directory``, or None when it has no ``registry.json``.

    :raises ConfigError: the file cannot be read or parsed (see :func:`parse_registry`).
    """
    path = Path(directory) / REGISTRY_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it: {exc}") from None
    return parse_registry(text, path)


def passwd_file(directory: Path) -> Path:
    """``DIR/passwd``: mosquitto's ``password_file``."""
    return Path(directory) / PASSWD_NAME


def acl_file(directory: Path) -> Path:
    """``DIR/acl``: mosquitto's ``acl_file``."""
    return Path(directory) / ACL_NAME


def passwd_users(path: Path) -> set[str]:
    """The user names in a mosquitto password file (``user:hash`` lines); empty when it is absent."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return set()
    return {line.split(":", 1)[0] for line in text.splitlines() if ":" in line and not line.startswith("#")}


# -- rendering -----------------------------------------------------------------------------------


def _agent_rules(agent: str, verified: bool) -> list[str]:
    lines = [
        f"user {agent}",
        "# send: directed messages, broadcasts and delivery receipts, each under the sender's own id (verified senders)",
        f"topic write agents/+/inbox/{agent}",
        f"topic write agents/broadcast/{agent}",
        f"topic write agents/+/receipts/{agent}",
    ]
    if not verified:
        lines += [
            "# send without the sender's id (--allow-unverified: for senders too old to put it in the topic)",
            "topic write agents/+/inbox",
            "topic write agents/broadcast",
            "topic write agents/+/receipts",
        ]
    lines += [
        "# its own presence record and heartbeat only",
        f"topic write agents/{agent}/presence",
        f"topic write agents/{agent}/presence/heartbeat",
        "# receive: its own inbox, broadcasts, receipts for what it sent",
        f"topic read agents/{agent}/inbox",
        f"topic read agents/{agent}/inbox/+",
        "topic read agents/broadcast",
        "topic read agents/broadcast/+",
        f"topic read agents/{agent}/receipts",
        f"topic read agents/{agent}/receipts/+",
        "# everyone's presence",
        "topic read agents/+/presence",
        "topic read agents/+/presence/heartbeat",
        "# the connection-private sync topics swarmbus uses to know a backlog has arrived",
        f"topic readwrite {SYNC_PREFIX}/sync/{agent}/#",
        "# jobs (docs/jobs.md): records, events and outcomes under its own id; every job's to read",
        f"topic write {JOBS_PREFIX}/+/record/{agent}",
        f"topic write {JOBS_PREFIX}/+/events/{agent}",
        f"topic write {JOBS_PREFIX}/+/outcome/{agent}",
        f"topic read {JOBS_PREFIX}/#",
        "# the task board (docs/swarm.md): the state of the tasks it arbitrates and its offers;",
        "# every task's to read (claims, grants and completions are inbox messages)",
        f"topic write {TASKS_PREFIX}/+/state/{agent}",
        f"topic write {TASKS_PREFIX}/_offer/+/+/+/{agent}",
        f"topic read {TASKS_PREFIX}/#",
    ]
    return lines


def _observer_rules(observer: str) -> list[str]:
    return [
        f"user {observer}",
        "# read-only: everyone's presence and the broadcasts; its own sync topics",
        "topic read agents/+/presence",
        "topic read agents/+/presence/heartbeat",
        "topic read agents/broadcast",
        "topic read agents/broadcast/+",
        f"topic readwrite {SYNC_PREFIX}/sync/{observer}/#",
        "# jobs and the task board's states, to watch (swarmbus job watch|list, the dashboard)",
        f"topic read {JOBS_PREFIX}/#",
        f"topic read {TASKS_PREFIX}/+/state/+",
    ]


def render_acl(registry: Registry, directory: Path) -> str:
    """The text of mosquitto's ``acl_file`` for ``registry``: a header, then one ``user`` block
    per principal, sorted by id. The same registry always gives the same bytes."""
    out = [
        "# Generated by `swarmbus broker acl` from registry.json: do not edit, re-run the command.",
        "# mosquitto rereads password_file and acl_file on SIGHUP: kill -HUP <mosquitto pid>",
        f"# (or restart `swarmbus broker --secure {directory}`).",
        "# Senders: " + ("verified: an agent publishes only under its own id."
                         if registry.verified else
                         "unverified allowed (--allow-unverified): agents may also publish without their id."),
        "# No topic lines before the first `user` (they would apply to anonymous clients) and no",
        "# `pattern` lines (they apply to every user): one block per principal.",
    ]
    for pid in registry.ids():
        out += ["", *_rules(registry, pid)]
    return "\n".join(out) + "\n"


def _nats_subject(topic_filter: str) -> str:
    """An MQTT topic filter as a NATS subject: ``/`` -> ``.``, ``+`` -> ``*``, ``#`` -> ``>``."""
    return topic_filter.replace("/", ".").replace("+", "*").replace("#", ">")


def _rules(registry: Registry, pid: str) -> list[str]:
    if registry.principals[pid] == "agent":
        return _agent_rules(pid, registry.verified)
    return _observer_rules(pid)


def render_nats_users(registry: Registry, directory: Path) -> str:
    """The text of ``nats-users.conf``: an ``authorization`` block with one user per principal,
    its password (read from ``agents/<id>/password``; nats-server could take bcrypt hashes, which
    would need a dependency) and the same permissions as :func:`render_acl`, as subjects.

    :raises OSError: a principal's password file cannot be read.
    """
    out = [
        "# Generated by `swarmbus broker acl` from registry.json: do not edit, re-run the command.",
        "# For nats-server's MQTT listener: `swarmbus broker --engine nats --secure DIR` includes it;",
        "# for your own server, `include` it (a path relative to your nats.conf). Holds passwords: 0600.",
        "# A publish these permissions deny is dropped and logged (\"Publish Violation\"), not refused:",
        "# MQTT 3.1.1 cannot say so. $MQTT.sub.> is where JetStream delivers QoS 1 subscriptions; keep",
        "# the NATS client port private, since a NATS-protocol client with these credentials could read it.",
        "authorization {",
        "  users = [",
    ]
    for pid in registry.ids():
        publish, subscribe = [], [NATS_MQTT_DELIVERY]
        for line in _rules(registry, pid):
            words = line.split(" ")
            if words[0] != "topic":
                continue
            subject = _nats_subject(words[2])
            if words[1] in ("write", "readwrite"):
                publish.append(subject)
            if words[1] in ("read", "readwrite"):
                subscribe.append(subject)
        password = (directory / AGENTS_DIR / pid / PASSWORD_NAME).read_text(encoding="utf-8").strip()
        out.append(f"    {{user: {json.dumps(pid)}, password: {json.dumps(password)}, permissions: {{"
                   f"publish: {{allow: {json.dumps(publish)}}}, subscribe: {{allow: {json.dumps(subscribe)}}}}}}}")
    out += ["  ]", "}"]
    return "\n".join(out) + "\n"


def nats_secure_fields(directory: Path, conf_dir: Path) -> dict[str, Any]:
    """``NatsConfig`` fields for ``swarmbus broker --engine nats --secure DIR``: an ``include`` of
    DIR's ``nats-users.conf`` (relative to ``conf_dir``, where the node configs are written) and
    the credentials of the first principal for the readiness probe.

    :raises UsageError: DIR holds no set-up made by ``swarmbus broker acl`` (or one made before it
        wrote ``nats-users.conf``: re-run it).
    """
    directory = Path(directory).expanduser().absolute()
    registry = load_registry(directory)
    users = directory / NATS_USERS_NAME
    if registry is None or not registry.ids() or not users.is_file():
        raise UsageError(f"--secure {directory}: no NATS users from `swarmbus broker acl` there ({NATS_USERS_NAME})",
                         hint=f"make them: swarmbus broker acl AGENT ... --dir {directory}")
    probe = registry.ids()[0]
    try:
        password = (directory / AGENTS_DIR / probe / PASSWORD_NAME).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(f"--secure {directory}: cannot read {probe}'s password ({exc.strerror})",
                         hint=f"re-run: swarmbus broker acl --dir {directory}") from None
    include = os.path.relpath(users, conf_dir)
    return {"extra_lines": (f'include "{include}"',), "probe_credentials": (probe, password)}


def _toml_string(value: str) -> str:
    """``value`` as a TOML basic string: backslash, quote and control characters escaped."""
    escaped = []
    for ch in value:
        if ch in ('"', "\\"):
            escaped.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            escaped.append(f"\\u{ord(ch):04x}")
        else:
            escaped.append(ch)
    return '"' + "".join(escaped) + '"'


def render_agent_config(registry: Registry, principal: str, password_path: Path) -> str:
    """The text of ``agents/<id>/swarmbus.toml`` (for ``swarmbus start --config PATH``): the
    agent id (agents only), the broker URL and CA when the registry has them, the user name and
    the password file, and ``[security] verify_senders`` (agents only). It holds no secret."""
    role = registry.principals[principal]
    use = ("swarmbus start --config PATH" if role == "agent" else
           "swarmbus list --config PATH (read-only: it cannot run a daemon)")
    out = [
        f"# swarmbus config for {role} {principal!r}, generated by `swarmbus broker acl`",
        f"# (rewritten when the registry changes). Use it with: {use}",
        "# or SWARMBUS_CONFIG=PATH.",
    ]
    if role == "agent":
        out += ["", f"agent_id = {_toml_string(principal)}"]
    out += ["", "[broker]"]
    if "url" in registry.broker:
        out.append(f"url = {_toml_string(registry.broker['url'])}")
    if "ca_cert" in registry.broker:
        out += ["# the CA that signed the broker's certificate", "tls = true",
                f"ca_certs = {_toml_string(registry.broker['ca_cert'])}"]
    out += [
        f"username = {_toml_string(principal)}",
        "# copy this file and the password file to the agent's machine and adjust this path",
        f"password_file = {_toml_string(str(password_path))}",
    ]
    if role == "agent":
        out += ["", "[security]",
                "# publish under this agent's own id, and refuse messages whose topic does not carry their sender",
                f"verify_senders = {'true' if registry.verified else 'false'}"]
    return "\n".join(out) + "\n"


def render_mosquitto_conf(registry: Registry, directory: Path, *, port: int | None = None) -> str:
    """A mosquitto.conf for a system mosquitto using ``directory``'s password and ACL files:
    a TLS listener on 8883 when the registry has listener files, else a plain one on 1883
    (``port`` overrides the port)."""
    directory = Path(directory)
    tls = "certfile" in registry.listener and "keyfile" in registry.listener
    out = [
        "# mosquitto configuration generated by `swarmbus broker acl` (rewritten on every run):",
        f"#   mosquitto -c {directory / CONF_NAME}",
        "# or copy these lines into the broker's own config. After each `swarmbus broker acl` run,",
        "# reload it: kill -HUP <mosquitto pid> (it rereads password_file and acl_file).",
        "# mosquitto reads the files below as the user it runs as (a system service switches to",
        "# `mosquitto`): run `swarmbus broker acl` as that user, or give that user the directory.",
        "",
        "# password_file, acl_file and allow_anonymous apply to every listener.",
        "per_listener_settings false",
        "",
    ]
    if tls:
        out += ["# TLS listener: the broker's certificate and key" +
                (", and the CA client certificates are checked against." if "cafile" in registry.listener else "."),
                f"listener {port or 8883}"]
        if "cafile" in registry.listener:
            out.append(f"cafile {registry.listener['cafile']}")
        out += [f"certfile {registry.listener['certfile']}", f"keyfile {registry.listener['keyfile']}"]
    else:
        out += ["# No TLS: user names and passwords travel in clear. Give `swarmbus broker acl` the",
                "# broker's --server-cert and --server-key for a TLS listener on 8883 instead.",
                f"listener {port or 1883}"]
    out += [
        "",
        "# Only the users in password_file, each limited by acl_file.",
        "allow_anonymous false",
        f"password_file {passwd_file(directory)}",
        f"acl_file {acl_file(directory)}",
    ]
    return "\n".join(out) + "\n"


# -- files ---------------------------------------------------------------------------------------


def _private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) and make it mode 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != 0o700:
        path.chmod(0o700)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file created 0600 beside ``path``, fsync it, rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` atomically (mode 0600) unless ``path`` already holds exactly it; True when written.
    An unchanged file keeps its mtime; only a wrong mode is fixed."""
    data = text.encode("utf-8")
    try:
        if path.read_bytes() == data:
            if path.stat().st_mode & 0o777 != 0o600:
                path.chmod(0o600)
            return False
    except FileNotFoundError:
        pass
    _write_atomic(path, data)
    return True


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``DIR/.lock`` (waiting for another run to finish)."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# -- mosquitto_passwd ----------------------------------------------------------------------------


def find_mosquitto_passwd() -> str:
    """The path of ``mosquitto_passwd`` on PATH.

    :raises SwarmbusError: it is not on PATH (exit 1; the hint says how to install it).
    """
    found = shutil.which(MOSQUITTO_PASSWD)
    if found is None:
        raise SwarmbusError(f"{MOSQUITTO_PASSWD} is not on PATH: `swarmbus broker acl` maintains the password "
                            f"file with it", hint=INSTALL_HINT)
    return found


def _child_env() -> dict[str, str]:
    from swarmbus.children import scrubbed_env

    return scrubbed_env()


def _mosquitto_passwd(exe: str, argv: list[str], stdin: str | None) -> None:
    """Run ``exe ARGV`` (no shell, scrubbed environment), the password only on ``stdin``.

    :raises SwarmbusError: it failed (its stderr, which never holds the password, is in the message).
    """
    try:
        proc = subprocess.run([exe, *argv], input=stdin if stdin is not None else "", capture_output=True,
                              text=True, env=_child_env(), timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SwarmbusError(f"{MOSQUITTO_PASSWD} could not run: {exc}", hint=INSTALL_HINT) from None
    if proc.returncode != 0:
        said = " ".join(line for line in (proc.stdout + proc.stderr).splitlines()
                        if line.strip() and not line.startswith(("Password:", "Reenter password:")))
        raise SwarmbusError(f"{MOSQUITTO_PASSWD} {' '.join(argv)} failed (exit {proc.returncode}): {said.strip()}")


def _set_password(exe: str, passwd: Path, user: str, password: str) -> None:
    """Add ``user`` to ``passwd`` or change its password: ``mosquitto_passwd FILE USER`` reads the
    password twice from stdin when stdin is not a terminal (never ``-b``: argv is visible in ps)."""
    _mosquitto_passwd(exe, [str(passwd), user], f"{password}\n{password}\n")


def _delete_user(exe: str, passwd: Path, user: str) -> None:
    _mosquitto_passwd(exe, ["-D", str(passwd), user], None)


# -- a run ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What one ``swarmbus broker acl`` run asks for. Ids are validated by :func:`apply`.

    ``verified`` None keeps the registry's value (True for a new directory); the paths and
    ``broker_url`` None keep what an earlier run recorded. The listener files are one set:
    ``server_cert`` (with ``server_key``, and ``server_ca`` or none) replaces the recorded set.
    """

    agents: tuple[str, ...] = ()
    observers: tuple[str, ...] = ()
    rotate: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    verified: bool | None = None
    broker_url: str | None = None
    ca_cert: Path | None = None
    server_cert: Path | None = None
    server_key: Path | None = None
    server_ca: Path | None = None


@dataclass
class Outcome:
    """What a run did. ``rotated`` maps an id to why (``asked``, or what was missing);
    ``absent`` lists ``--remove`` ids that did not exist; ``written`` the files written (none
    when nothing changed); ``reload`` says whether the broker must reload (passwd or acl changed)."""

    directory: Path
    added: dict[str, str] = field(default_factory=dict)
    rotated: dict[str, str] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    reload: bool = False

    @property
    def changed(self) -> bool:
        """False when the run changed nothing at all."""
        return bool(self.written or self.removed)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary (never a password)."""
        return {
            "dir": str(self.directory),
            "changed": self.changed,
            "added": [{"id": pid, "role": role} for pid, role in self.added.items()],
            "rotated": [{"id": pid, "reason": why} for pid, why in self.rotated.items()],
            "removed": self.removed,
            "absent": self.absent,
            "unchanged": self.unchanged,
            "written": [str(p) for p in self.written],
            "reload": self.reload,
        }


def _valid_ids(ids: Iterable[str], flag: str) -> list[str]:
    out: list[str] = []
    for pid in ids:
        try:
            validate_own_id(pid)
        except EnvelopeError as exc:
            raise UsageError(f"{flag}: {exc}") from None
        if pid not in out:
            out.append(pid)
    return out


def _existing_file(path: Path | None, flag: str) -> str | None:
    if path is None:
        return None
    resolved = Path(path).expanduser().absolute()
    if not resolved.is_file():
        raise UsageError(f"{flag} {path}: no such file")
    return str(resolved)


def _no_whitespace(value: str, what: str) -> None:
    if any(ch.isspace() for ch in value):
        raise UsageError(f"{what} must not contain whitespace: mosquitto.conf cannot quote a path ({value!r})")


def _check_request(request: Request) -> None:
    """Usage errors that do not depend on the registry: ids, overlaps, files, the URL."""
    agents = _valid_ids(request.agents, "AGENT")
    observers = _valid_ids(request.observers, "--observer")
    _valid_ids(request.rotate, "--rotate")
    remove = _valid_ids(request.remove, "--remove")
    both = sorted(set(agents) & set(observers))
    if both:
        raise UsageError(f"{', '.join(both)}: listed as an agent and as an observer")
    kept = sorted(set(remove) & set(agents + observers + list(request.rotate)))
    if kept:
        raise UsageError(f"{', '.join(kept)}: given to --remove and also to keep or rotate")
    if (request.server_cert is None) != (request.server_key is None):
        raise UsageError("--server-cert and --server-key go together")
    if request.server_ca is not None and request.server_cert is None:
        raise UsageError("--server-ca needs --server-cert and --server-key")
    if request.broker_url is not None:
        from swarmbus.config import expand_broker_url

        try:
            parts = expand_broker_url(request.broker_url)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        if "broker.username" in parts or "broker.password" in parts:
            raise UsageError("--broker must not carry a user name or password: each principal's config gets its own")


@dataclass
class _Plan:
    registry: Registry
    added: dict[str, str]
    rotated: dict[str, str]
    removed: list[str]
    absent: list[str]
    unchanged: list[str]


def _plan(current: Registry, request: Request, directory: Path, users: set[str]) -> _Plan:
    """The new registry and what to do, from the current one and the request.

    :raises UsageError: ``--rotate`` of an unknown id, or an id listed with another role than it has.
    """
    new = Registry(current.verified, dict(current.principals), dict(current.broker), dict(current.listener))
    if request.verified is not None:
        new.verified = request.verified
    for key, value in (("url", request.broker_url),
                       ("ca_cert", _existing_file(request.ca_cert, "--ca-cert"))):
        if value is not None:
            new.broker[key] = value
    if request.server_cert is not None:
        new.listener = {"certfile": str(_existing_file(request.server_cert, "--server-cert")),
                        "keyfile": str(_existing_file(request.server_key, "--server-key"))}
        server_ca = _existing_file(request.server_ca, "--server-ca")
        if server_ca is not None:
            new.listener["cafile"] = server_ca
    for value in new.listener.values():
        _no_whitespace(value, "a listener file's path")

    added: dict[str, str] = {}
    for role, ids in (("agent", request.agents), ("observer", request.observers)):
        for pid in ids:
            had = current.principals.get(pid)
            if had is None:
                new.principals[pid] = added[pid] = role
            elif had != role:
                raise UsageError(f"{pid} is already an {had}, not an {role}",
                                 hint=f"--remove {pid} first, then add it again as an {role}")
    unknown = sorted(pid for pid in request.rotate if pid not in new.principals)
    if unknown:
        raise UsageError(f"--rotate {', '.join(unknown)}: no such agent or observer in {directory}")
    removed = sorted(pid for pid in set(request.remove) if pid in current.principals or pid in users)
    absent = sorted(set(request.remove) - set(removed))
    for pid in removed:
        new.principals.pop(pid, None)
    rotated: dict[str, str] = {}
    for pid in sorted(set(new.principals) - set(added)):
        password = directory / AGENTS_DIR / pid / PASSWORD_NAME
        if pid in request.rotate:
            rotated[pid] = "asked"
        elif not password.is_file():
            rotated[pid] = "its password file was missing"
        elif pid not in users:
            rotated[pid] = "it was missing from the password file"
    unchanged = sorted(set(new.principals) - set(added) - set(rotated))
    return _Plan(new, dict(sorted(added.items())), rotated, removed, absent, unchanged)


def _give_password(exe: str, directory: Path, pid: str) -> Path:
    """A new password for ``pid``: staged in ``agents/<pid>/`` (0600), set in passwd, then renamed
    into place, so a failure leaves neither half. Returns the password file."""
    home = directory / AGENTS_DIR / pid
    _private_dir(home)
    password = secrets.token_urlsafe(24)
    target = home / PASSWORD_NAME
    staged = home / f".{PASSWORD_NAME}.new"
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(password + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        _set_password(exe, passwd_file(directory), pid, password)
        os.replace(staged, target)
    except BaseException:
        with contextlib.suppress(OSError):
            staged.unlink()
        raise
    return target


def _remove_principal(exe: str, directory: Path, pid: str, users: set[str]) -> None:
    if pid in users:
        _delete_user(exe, passwd_file(directory), pid)
    home = directory / AGENTS_DIR / pid
    if home.is_dir() and not home.is_symlink():
        shutil.rmtree(home)
    else:
        with contextlib.suppress(FileNotFoundError):
            home.unlink()


def apply(directory: Path, request: Request) -> Outcome:
    """Bring ``directory`` to what ``request`` asks (see the module docstring), under its lock.

    Returns an :class:`Outcome`. Only files whose content changes are written.

    :raises UsageError: an invalid id, an id both kept and removed or with another role, an
        unknown ``--rotate`` id, a missing certificate file, a bad broker URL, whitespace in a
        path mosquitto.conf must hold.
    :raises ConfigError: ``registry.json`` cannot be read or parsed.
    :raises SwarmbusError: ``mosquitto_passwd`` is not on PATH (checked before anything is
        written) or fails.
    """
    _check_request(request)
    directory = Path(directory).expanduser().absolute()
    _no_whitespace(str(directory), "--dir")
    exe = find_mosquitto_passwd()
    if not directory.exists():  # usage errors before anything is created
        _plan(Registry(), request, directory, set())
    _private_dir(directory)
    with _locked(directory):
        return _run(exe, directory, request)


def _run(exe: str, directory: Path, request: Request) -> Outcome:
    passwd = passwd_file(directory)
    users = passwd_users(passwd)
    plan = _plan(load_registry(directory) or Registry(), request, directory, users)
    outcome = Outcome(directory, added=plan.added, rotated=plan.rotated, removed=plan.removed,
                      absent=plan.absent, unchanged=plan.unchanged)
    if not passwd.exists():
        os.close(os.open(passwd, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        outcome.written.append(passwd)
    if passwd.stat().st_mode & 0o777 != 0o600:
        passwd.chmod(0o600)
    _private_dir(directory / AGENTS_DIR)
    for pid in [*plan.added, *plan.rotated]:
        outcome.written.append(_give_password(exe, directory, pid))
    for pid in plan.removed:
        _remove_principal(exe, directory, pid, users)
    if plan.added or plan.rotated or any(pid in users for pid in plan.removed):
        passwd.chmod(0o600)
        if passwd not in outcome.written:
            outcome.written.append(passwd)
    registry = plan.registry
    files: list[tuple[Path, str]] = [
        (directory / REGISTRY_NAME, registry.to_json()),
        (acl_file(directory), render_acl(registry, directory)),
        (directory / CONF_NAME, render_mosquitto_conf(registry, directory)),
    ]
    if registry.ids():
        files.append((directory / NATS_USERS_NAME, render_nats_users(registry, directory)))
    else:  # nobody left: an empty users list would let nats-server take anonymous clients
        with contextlib.suppress(FileNotFoundError):
            (directory / NATS_USERS_NAME).unlink()
    for pid in registry.ids():
        home = directory / AGENTS_DIR / pid
        _private_dir(home)
        files.append((home / AGENT_CONFIG_NAME, render_agent_config(registry, pid, home / PASSWORD_NAME)))
    for path, text in files:
        if _write_if_changed(path, text):
            outcome.written.append(path)
    outcome.reload = passwd in outcome.written or acl_file(directory) in outcome.written
    return outcome
