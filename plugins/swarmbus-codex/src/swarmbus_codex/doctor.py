"""``swarmbus doctor`` checks for host type ``codex`` (registered only for that host type).

- ``codex: codex``: the executable is found and ``codex --version`` runs;
- ``codex: mcp``: ``[mcp_servers.swarmbus]`` in ``$CODEX_HOME/config.toml`` is this agent's;
- ``codex: skill``: ``$CODEX_HOME/skills/swarmbus/SKILL.md`` is this version's;
- ``codex: app-server``: an app-server answers on the configured or a discovered socket (ok), or
  none runs (skip: wakes use ``codex exec resume``); a configured one that does not answer warns;
- ``codex: last wake``: the outcome of the last wake and the agent's thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from swarmbus import CheckResult, DoctorCheck, DoctorContext, ProvisionError
from swarmbus_codex import appserver, codex_config
from swarmbus_codex.config import (
    MCP_NAME,
    app_server_candidates,
    config,
    config_toml_path,
    find_codex,
    skill_path,
)
from swarmbus_codex.install import INSTALL_HINT, codex_version, mcp_entry, skill_text
from swarmbus_codex.state import current_thread, last_wake

HOST_TYPE = "codex"


def check_codex(ctx: DoctorContext) -> CheckResult:
    cfg = config(ctx.settings)
    codex = find_codex(cfg)
    if codex is None:
        where = f" at {cfg.codex_path}" if cfg.codex_path else " on PATH"
        return CheckResult("fail", f"codex not found{where}: wakes cannot run it", fix=INSTALL_HINT)
    try:
        version = codex_version(codex, timeout=30)
    except ProvisionError as exc:
        return CheckResult("fail", str(exc), fix="reinstall Codex (npm install -g @openai/codex) or fix codex_path "
                                                 "under [plugins.codex]")
    return CheckResult("ok", f"{version} at {codex}", details={"path": codex, "version": version})


def check_mcp(ctx: DoctorContext) -> CheckResult:
    cfg = config(ctx.settings)
    path = config_toml_path(cfg)
    try:
        data = codex_config.parse(path, codex_config.read_text(path))
    except codex_config.ConfigError as exc:
        return CheckResult("fail", str(exc), fix=f"fix {path} (Codex cannot read it either)")
    servers = data.get(codex_config.TABLE)
    entry = servers.get(MCP_NAME) if isinstance(servers, dict) else None
    if not isinstance(entry, dict):
        return CheckResult("warn", f"the swarmbus MCP server is not registered in {path}", fix=ctx.init_fix(HOST_TYPE))
    agent = ctx.agent
    if agent and not codex_config.matches(path, MCP_NAME, mcp_entry(agent)):
        return CheckResult("warn", f"[mcp_servers.swarmbus] in {path} differs from this agent's: "
                                   f"{entry.get('command')} {entry.get('args')}", fix=ctx.init_fix(HOST_TYPE))
    if entry.get("enabled") is False:
        return CheckResult("warn", f"[mcp_servers.swarmbus] in {path} has enabled = false",
                           fix="remove `enabled = false` from it")
    return CheckResult("ok", f"swarmbus MCP server registered in {path}", details={"config": str(path)})


def check_skill(ctx: DoctorContext) -> CheckResult:
    path = skill_path(config(ctx.settings))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return CheckResult("warn", f"the swarmbus skill is not installed ({path})", fix=ctx.init_fix(HOST_TYPE))
    agent = ctx.agent
    if agent and text != skill_text(agent):
        return CheckResult("warn", f"the swarmbus skill at {path} differs from this version's (edited, or for "
                                   "another agent)", fix=ctx.init_fix(HOST_TYPE))
    return CheckResult("ok", f"swarmbus skill installed ({path})")


def check_app_server(ctx: DoctorContext) -> CheckResult:
    cfg = config(ctx.settings)

    async def probe() -> tuple[str | None, str, list[str]]:
        client, why = await appserver.open_first(app_server_candidates(cfg), timeout=cfg.path_timeout)
        if client is None:
            return None, "", why
        await client.close()
        return str(client.socket), client.user_agent, why

    socket, agent_string, why = asyncio.run(probe())
    if socket is not None:
        return CheckResult("ok", f"an app-server answers on unix://{socket}: wakes start turns there"
                           + (f" ({agent_string.split(' ')[0]})" if agent_string else ""),
                           details={"socket": socket, "user_agent": agent_string})
    if cfg.app_server:
        return CheckResult("warn", f"app_server = {cfg.app_server!r} does not answer: {'; '.join(why)}; wakes fall back "
                                   "to headless `codex exec resume`",
                           fix=f"start it: codex app-server --listen {cfg.app_server}")
    return CheckResult("skip", "none running: wakes use headless `codex exec resume`", details={"tried": why})


def check_last_wake(ctx: DoctorContext) -> CheckResult:
    agent = ctx.agent
    if agent is None:
        return CheckResult("skip", "no agent id")
    cfg = config(ctx.settings)
    thread = current_thread(ctx.settings, cfg, agent)
    where = f"thread {thread.id} ({'thread_id in [plugins.codex]' if thread.configured else 'kept by swarmbus'})" \
        if thread else "no thread yet (the first wake starts one)"
    last = last_wake(ctx.settings, agent)
    details = {"thread_id": thread.id if thread else None, **{k: (last or {}).get(k) for k in
                                                               ("ok", "detail", "duration_s", "finished_at")}}
    if last is None:
        return CheckResult("ok", f"no wake yet; {where}", details=details)
    ago = time.time() - float(last.get("finished_at", 0) or 0)
    when = f"{ago / 60:.0f} min ago" if ago < 7200 else f"{ago / 3600:.0f} h ago"
    if last.get("ok"):
        return CheckResult("ok", f"last wake ok ({when}): {last.get('detail', '')}; {where}", details=details)
    return CheckResult("warn", f"last wake failed ({when}): {last.get('detail', '')}; {where}",
                       fix="see the daemon log (`swarmbus inbox` shows each wake's outcome)", details=details)


CHECKS: tuple[tuple[str, Callable[[DoctorContext], CheckResult]], ...] = (
    ("codex: codex", check_codex),
    ("codex: mcp", check_mcp),
    ("codex: skill", check_skill),
    ("codex: app-server", check_app_server),
    ("codex: last wake", check_last_wake),
)


def doctor_checks() -> list[DoctorCheck]:
    return [DoctorCheck(name, run, order=920 + i) for i, (name, run) in enumerate(CHECKS)]
