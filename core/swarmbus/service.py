"""User-service definitions for the daemon (and the development broker), rendered in Python.

- Linux: a systemd *user* unit in ``~/.config/systemd/user/`` (``systemctl --user``);
- macOS: a launchd agent in ``~/Library/LaunchAgents/`` (``launchctl bootstrap gui/<uid>``).

Arguments are quoted for the target format (systemd's own quoting rules, plistlib's XML), never
substituted into a template with sed, so a ``|``, ``&``, ``%``, ``$`` or a space in a path cannot
corrupt the file (the predecessor's bug B20).
"""

from __future__ import annotations

import os
import plistlib
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from swarmbus.provision import Change, RunCommand, WriteFile

_SYSTEMD_SAFE = re.compile(r"\A[A-Za-z0-9_@+=:,./-]+\Z")


def systemd_quote(arg: str) -> str:
    """Quote one word for ``ExecStart=`` (systemd.service(5) "Command lines"; specifiers
    ``%`` and variables ``$`` are escaped as ``%%`` and ``$$``)."""
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if _SYSTEMD_SAFE.match(escaped):
        return escaped
    return '"' + _c_escape(escaped) + '"'


def _c_escape(text: str) -> str:
    """Backslash escapes inside a systemd quoted word: ``\\``, ``\"``, and control characters
    (a raw newline would end the line and corrupt the unit)."""
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    return "".join(f"\\x{ord(c):02x}" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text)


def _systemd_env_value(key: str, value: str) -> str:
    return '"' + _c_escape(f"{key}={value}".replace("%", "%%")) + '"'


def render_systemd_unit(description: str, argv: Sequence[str], env: Mapping[str, str]) -> str:
    """A ``Type=simple`` user unit restarting on failure, started at login (default.target)."""
    lines = [
        "# Written by `swarmbus init`; `swarmbus uninit` removes it.",
        "[Unit]",
        f"Description={description}",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        "ExecStart=" + " ".join(systemd_quote(a) for a in argv),
        *(f"Environment={_systemd_env_value(k, v)}" for k, v in sorted(env.items())),
        "Restart=on-failure",
        "RestartSec=5s",
        # SIGTERM makes the daemon publish its offline presence before it exits
        "KillSignal=SIGTERM",
        "TimeoutStopSec=20s",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ]
    return "\n".join(lines)


def render_launchd_plist(label: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> str:
    """A launchd agent: started at load, restarted when it exits with failure."""
    data = {
        "Label": label,
        "ProgramArguments": list(argv),
        "EnvironmentVariables": dict(env),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "StandardErrorPath": str(log_path),
        "StandardOutPath": str(log_path),
    }
    return plistlib.dumps(data).decode("utf-8")


@dataclass(frozen=True)
class ServicePlan:
    """Files and commands to install (``install``) one user service."""

    manager: str  # systemd | launchd
    name: str
    path: Path
    install: list[Change]


def service_manager() -> str | None:
    """``systemd`` (Linux with systemctl), ``launchd`` (macOS), or None. Whether it actually
    works here (a user bus) is :func:`service_problem`'s question."""
    if sys.platform == "darwin":
        return "launchd"
    if sys.platform.startswith("linux") and shutil.which("systemctl"):
        return "systemd"
    return None


def service_problem(manager: str) -> str | None:
    """Why ``manager`` (``systemd`` | ``launchd``) cannot run this user's services here, or None
    when it can: systemd needs Linux, ``systemctl`` and a user manager that answers
    (``systemctl --user show-environment``; containers, root shells, WSL and CI runners often have
    no user bus), launchd needs macOS and ``launchctl print gui/<uid>``."""
    platform = str(sys.platform)  # (not narrowed by type checkers: this runs on every platform)
    if manager == "systemd":
        if not platform.startswith("linux"):
            return f"systemd is not available on {platform}"
        if shutil.which("systemctl") is None:
            return "systemctl is not installed"
        argv = ["systemctl", "--user", "show-environment"]
    elif manager == "launchd":
        if platform != "darwin":
            return f"launchd is macOS only (this is {platform})"
        argv = ["launchctl", "print", f"gui/{os.getuid()}"]
    else:
        raise ValueError(f"unknown service manager {manager!r}")
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`{' '.join(argv)}` failed: {exc}"
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        return f"`{' '.join(argv)}` exited {proc.returncode}" + (f": {detail[-1]}" if detail else "")
    return None


def usable_service_manager() -> tuple[str | None, str | None]:
    """``(manager, None)`` when this platform's user service manager works, else ``(None, why)``."""
    native = service_manager()
    if native is None:
        return None, f"no systemd or launchd on {sys.platform}" if not sys.platform.startswith("linux") \
            else "systemctl is not installed"
    problem = service_problem(native)
    return (native, None) if problem is None else (None, problem)


def _quiet(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def plan_service(name: str, description: str, argv: Sequence[str], env: Mapping[str, str],
                 manager: str, *, restart: bool = False) -> ServicePlan:
    """Plan installing and starting service ``name`` (e.g. ``swarmbus-coder``) under ``manager``.

    The unit/plist is rewritten only when its content changes; the service is (re)started when
    the file changed, it is not running, or ``restart`` (e.g. the config file it reads changes);
    undo stops, disables and removes it.
    """
    home = Path.home()
    if manager == "systemd":
        path = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "systemd" / "user" / f"{name}.service"
        unit = f"{name}.service"
        write = WriteFile(path, render_systemd_unit(description, argv, env))
        changed = write.pending()

        def active() -> bool:
            if restart:
                return False
            return (not changed and _quiet(["systemctl", "--user", "is-enabled", "--quiet", unit])
                    and _quiet(["systemctl", "--user", "is-active", "--quiet", unit]))

        return ServicePlan(manager, name, path, [
            write,
            RunCommand(("systemctl", "--user", "daemon-reload"), done=lambda: not changed),
            RunCommand(("systemctl", "--user", "enable", unit), done=active),
            RunCommand(("systemctl", "--user", "restart", unit), done=active,
                       undo=("systemctl", "--user", "disable", "--now", unit)),
        ])
    if manager == "launchd":
        label = f"dev.swarmbus.{name}"
        path = home / "Library" / "LaunchAgents" / f"{label}.plist"
        log = home / "Library" / "Logs" / "swarmbus" / f"{name}.log"
        write = WriteFile(path, render_launchd_plist(label, argv, env, log))
        changed = write.pending() or restart
        domain = f"gui/{os.getuid()}"
        loaded = lambda: not changed and _quiet(["launchctl", "print", f"{domain}/{label}"])  # noqa: E731
        return ServicePlan(manager, name, path, [
            write,
            RunCommand(("launchctl", "bootout", f"{domain}/{label}"),
                       done=lambda: not changed or not _quiet(["launchctl", "print", f"{domain}/{label}"])),
            RunCommand(("launchctl", "bootstrap", domain, str(path)), done=loaded,
                       undo=("launchctl", "bootout", f"{domain}/{label}")),
        ])
    raise ValueError(f"unknown service manager {manager!r}")
