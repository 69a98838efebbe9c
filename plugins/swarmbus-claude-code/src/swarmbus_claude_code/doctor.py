"""``swarmbus doctor`` checks for host type ``cc`` (registered only for that host type)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from swarmbus import CheckResult, DoctorCheck, DoctorContext, ProvisionError
from swarmbus_claude_code import hooks_json, mcp_probe
from swarmbus_claude_code.install import (
    claude_version as _claude_version,
)
from swarmbus_claude_code.install import (
    current_mcp_entry,
    hook_entry,
    mcp_entry,
    skill_text,
)
from swarmbus_claude_code.settings import agent_dir, config, find_claude, skill_path, user_settings_path
from swarmbus_claude_code.waker import load_last_wake

HOST_TYPE = "cc"


def check_claude(ctx: DoctorContext) -> CheckResult:
    cfg = config(ctx.settings)
    claude = find_claude(cfg)
    if claude is None:
        status = "fail" if cfg.wake_mode in ("resume", "auto") else "warn"
        return CheckResult(status, "claude not found" + (f" at {cfg.claude_path}" if cfg.claude_path else " on PATH"),
                           fix="npm install -g @anthropic-ai/claude-code, or set claude_path under [plugins.cc]")
    try:
        version = _claude_version(claude, timeout=15)
    except ProvisionError as exc:
        return CheckResult("fail", str(exc), fix="reinstall Claude Code or fix claude_path under [plugins.cc]")
    return CheckResult("ok", f"{version} at {claude} (wake mode {cfg.wake_mode})",
                       details={"path": claude, "version": version, "wake_mode": cfg.wake_mode})


def check_mcp(ctx: DoctorContext) -> CheckResult:
    agent = ctx.agent
    current = current_mcp_entry()
    cannot_start = _server_cannot_start(ctx, current)
    if cannot_start is not None:
        return cannot_start
    if current is None:
        return CheckResult("warn", "the swarmbus MCP server is not registered in ~/.claude.json (user scope)",
                           fix=ctx.init_fix(HOST_TYPE))
    if agent and current != mcp_entry(agent):
        args = current.get("args") if isinstance(current, dict) else None
        return CheckResult("warn", f"the swarmbus MCP server is registered differently: {current.get('command') if isinstance(current, dict) else current} {args}",
                           fix=ctx.init_fix(HOST_TYPE))
    return CheckResult("ok", "swarmbus MCP server registered (user scope, ~/.claude.json)")


def _server_cannot_start(ctx: DoctorContext, entry: Any) -> CheckResult | None:
    """A failure when the Python that runs the MCP server (the registered entry's, or with none
    registered this one, which init registers) cannot import ``swarmbus`` or the ``mcp`` SDK."""
    python = sys.executable if entry is None else mcp_probe.interpreter(entry)
    if python is None:  # not a Python command we can look into
        return None
    server = "the swarmbus MCP server" + (" that init registers" if entry is None else "")
    details = {"python": python}
    try:
        missing = mcp_probe.missing_packages(python)
    except OSError as exc:
        return CheckResult("fail", f"{server} runs {python}, which cannot be run: {exc}", fix=ctx.init_fix(HOST_TYPE),
                           details=details)
    if "swarmbus" in missing:
        return CheckResult("fail", f"{server} runs {python}, which cannot import swarmbus, so it cannot start",
                           fix=ctx.init_fix(HOST_TYPE) + " (it registers the Python that runs it)", details=details)
    if "mcp" in missing:
        fix = f"{python} -m pip install 'swarmbus[mcp]'" + (f", then {ctx.init_fix(HOST_TYPE)}" if entry is None else "")
        return CheckResult("fail", f"{server} runs {python}, which cannot import the `mcp` package (the "
                           "swarmbus[mcp] extra), so it cannot start", fix=fix, details=details)
    return None


def check_skill(ctx: DoctorContext) -> CheckResult:
    path = skill_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return CheckResult("warn", f"the swarmbus skill is not installed ({path})", fix=ctx.init_fix(HOST_TYPE))
    agent = ctx.agent
    if agent and text != skill_text(agent):
        return CheckResult("warn", f"the swarmbus skill at {path} differs from this version's (edited or for another agent)",
                           fix=ctx.init_fix(HOST_TYPE))
    return CheckResult("ok", f"swarmbus skill installed ({path})")


def check_hook(ctx: DoctorContext) -> CheckResult:
    cfg = config(ctx.settings)
    agent = ctx.agent
    event = cfg.hook_event()
    path = user_settings_path()
    if agent is None:
        return CheckResult("skip", "no agent id: cannot tell which hook is ours")
    try:
        found = hooks_json.ours(hooks_json.load(path), hooks_json.marker_for(agent))
    except (OSError, ValueError) as exc:
        return CheckResult("fail", f"cannot read {path}: {exc}", fix="fix the JSON in that file")
    if event is None:
        if found:
            return CheckResult("warn", f"a swarmbus {', '.join(found)} hook is installed but wake mode {cfg.wake_mode} "
                               "does not use it", fix=ctx.init_fix(HOST_TYPE) + " (it removes the stale hook)")
        why = "install_hook = false" if cfg.install_hook is False else f"wake mode {cfg.wake_mode}"
        return CheckResult("skip", f"no Claude Code hook needed ({why})")
    if found == {event: [hook_entry(agent, event)]}:
        return CheckResult("ok", f"swarmbus {event} hook installed in {path}")
    if event in found:
        return CheckResult("warn", f"the swarmbus {event} hook in {path} differs from this version's", fix=ctx.init_fix(HOST_TYPE))
    return CheckResult("fail", f"wake mode {cfg.wake_mode} needs the swarmbus {event} hook in {path}; it is missing",
                       fix=ctx.init_fix(HOST_TYPE))


SERVICE_MANAGERS = ("systemd", "launchd")


def check_start_hook(ctx: DoctorContext) -> CheckResult:
    """The SessionStart hook that starts the daemon (``swarmbus start --detach``) is what brings a
    daemon run without a service manager back after a reboot: it must be in settings.json then.
    Under systemd or launchd it is optional. Reads how the daemon runs from the core ``daemon``
    check's ``ctx.cache["daemon"]`` (its control socket's status, or None)."""
    cfg = config(ctx.settings)
    agent = ctx.agent
    if agent is None:
        return CheckResult("skip", "no agent id: cannot tell which hook is ours")
    if cfg.install_hook is False:
        return CheckResult("skip", "install_hook = false: you manage the hooks in settings.json yourself")
    path = user_settings_path()
    try:
        found = hooks_json.ours(hooks_json.load(path), hooks_json.marker_for(agent, "start"))
    except (OSError, ValueError) as exc:
        return CheckResult("fail", f"cannot read {path}: {exc}", fix="fix the JSON in that file")
    status = ctx.cache.get("daemon")
    supervisor = status.get("supervisor") if isinstance(status, dict) else None
    details = {"settings": str(path), "supervisor": supervisor}
    if found == {"SessionStart": [hook_entry(agent, "SessionStart")]}:
        return CheckResult("ok", f"swarmbus SessionStart hook installed in {path} (it starts the daemon)", details=details)
    if supervisor in SERVICE_MANAGERS:
        return CheckResult("ok", f"the daemon runs under {supervisor}: the SessionStart hook is not needed"
                           + (" (the one installed differs from this version's)" if found else ""), details=details)
    if found:
        return CheckResult("warn", f"the swarmbus SessionStart hook in {path} differs from this version's",
                           fix=ctx.init_fix(HOST_TYPE), details=details)
    how = f"runs {supervisor}" if supervisor else "is not running"
    summary = (f"the daemon {how}, not under systemd or launchd, and the SessionStart hook that starts it with "
               f"each Claude Code session is missing from {path}: after a reboot nothing starts it")
    return CheckResult("warn" if supervisor else "fail", summary, fix=ctx.init_fix(HOST_TYPE), details=details)


def check_last_wake(ctx: DoctorContext) -> CheckResult:
    cfg = config(ctx.settings)
    agent = ctx.agent
    if cfg.wake_mode not in ("resume", "auto"):
        return CheckResult("skip", f"wake mode {cfg.wake_mode}: messages are delivered by the Claude Code hook")
    if agent is None:
        return CheckResult("skip", "no agent id")
    last = load_last_wake(agent_dir(ctx.settings, agent))
    if last is None:
        return CheckResult("ok", "no wake yet")
    ago = time.time() - float(last.get("finished_at", 0) or 0)
    when = f"{ago / 60:.0f} min ago" if ago < 7200 else f"{ago / 3600:.0f} h ago"
    details = {k: last.get(k) for k in ("ok", "exit_code", "session_id", "duration_s", "detail", "finished_at")}
    if last.get("ok"):
        return CheckResult("ok", f"last wake ok ({when}): {last.get('detail', '')}", details=details)
    return CheckResult("warn", f"last wake failed ({when}): {last.get('detail', '')}",
                       fix="see the daemon log (`journalctl --user -u swarmbus-<id>`) and "
                           f"{agent_dir(ctx.settings, agent) / 'claude-last-wake.json'}", details=details)


SESSION_INBOX_SINCE = (2, 1, 224)
"""The first Claude Code version with a session inbox socket (cross-session messaging)."""


def _version_tuple(text: str) -> tuple[int, ...] | None:
    import re

    match = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(g) for g in match.groups()) if match else None


def _user_settings() -> dict[str, Any]:
    import json

    try:
        data = json.loads(user_settings_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def check_session(ctx: DoctorContext) -> CheckResult:
    """The ``session`` wake path: a version with the inbox, a live session registered with the
    daemon, and no setting that would hold or refuse its messages."""
    cfg = config(ctx.settings)
    if cfg.wake_mode != "auto" or "session" not in cfg.wake_paths:
        return CheckResult("skip", f"wake path `session` not used (wake mode {cfg.wake_mode})")
    settings = _user_settings()
    inbound = settings.get("crossSessionInbound")
    if inbound == "refuse":
        return CheckResult("fail", "crossSessionInbound = \"refuse\" in ~/.claude/settings.json: the session "
                                   "refuses posted messages, so the `session` wake path cannot work",
                           fix="set \"crossSessionInbound\": \"accept\" (or remove it: the session's own children, "
                               "like the swarmbus MCP server's daemon, are accepted by default)")
    mode = (settings.get("permissions") or {}).get("defaultMode") if isinstance(settings.get("permissions"), dict) else None
    holds = []
    if inbound == "hold":
        holds.append("crossSessionInbound = \"hold\" holds every posted message for your approval")
    if mode == "bypassPermissions":
        holds.append("a bypassPermissions session holds messages from senders that prompt for permission")
    claude = find_claude(cfg)
    version = None
    if claude is not None:
        try:
            version = _version_tuple(_claude_version(claude, timeout=15))
        except ProvisionError:
            version = None
    if version is not None and version < SESSION_INBOX_SINCE:
        return CheckResult("warn", f"Claude Code {'.'.join(map(str, version))} has no session inbox "
                                   f"(needs {'.'.join(map(str, SESSION_INBOX_SINCE))}+): wakes fall back",
                           fix="update Claude Code: npm install -g @anthropic-ai/claude-code@latest")
    daemon = ctx.cache.get("daemon")
    live = (daemon or {}).get("host_sessions") if isinstance(daemon, dict) else None
    live = [s for s in (live or []) if s.get("host") == "cc"]
    if holds:
        return CheckResult("warn", "; ".join(holds), fix="set \"crossSessionInbound\": \"accept\" in "
                                                          "~/.claude/settings.json, or approve each held message")
    if daemon is None:
        return CheckResult("skip", "no daemon answers: live sessions are registered with it")
    if not live:
        return CheckResult("warn", "no live Claude Code session is registered: wakes fall back to "
                                   + ", ".join(p for p in cfg.wake_paths if p != "session"),
                           fix="start Claude Code (`claude`) with the swarmbus MCP server registered (`swarmbus init "
                               "--host-type cc`); it registers the session within seconds")
    newest = live[0]
    return CheckResult("ok", f"{len(live)} live session(s); wakes go to {newest['session_id']} (pid {newest['pid']})",
                       details={"sessions": live})


CHECKS: tuple[tuple[str, Callable[[DoctorContext], CheckResult]], ...] = (
    ("cc: claude", check_claude),
    ("cc: mcp", check_mcp),
    ("cc: skill", check_skill),
    ("cc: hook", check_hook),
    ("cc: start hook", check_start_hook),
    ("cc: last wake", check_last_wake),
    ("cc: session", check_session),
)


def doctor_checks() -> list[DoctorCheck]:
    return [DoctorCheck(name, run, order=900 + i) for i, (name, run) in enumerate(CHECKS)]
