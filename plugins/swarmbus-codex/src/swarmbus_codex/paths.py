"""The Codex host's wake paths, for the core's wake router (``swarmbus.wake_by_paths``), in order:

- ``app-server``: a turn on the agent's thread through a running ``codex app-server --listen
  unix://PATH`` (:mod:`.appserver`). Ready when an app-server completes the handshake on the
  configured socket (``app_server``) or on a discovered one (``$CODEX_HOME/swarmbus-app-server.sock``,
  then Codex's default ``$CODEX_HOME/app-server-control/app-server-control.sock``). Confirmed when
  the server accepted the turn (``turn/start`` or ``turn/steer`` answered with the turn id): the
  ladder records ``surfaced``.
- ``headless``: ``codex exec resume <thread> -`` (:mod:`.headless`). Ready when ``codex`` is found
  and nothing else writes the thread: no app-server answers on those sockets (a headless run
  beside it would be a second writer on the thread), and the thread's writer lock under
  ``$CODEX_HOME/thread-writer-locks/`` is not held by a live Codex process (a TUI without an
  app-server holds it; best effort: that lock file is Codex's own, not a documented interface).
  Confirmed when the run exits 0 with ``turn.completed``: the model read the messages
  (``surfaced`` too).

Every wake (whichever path, or none) is logged and kept in ``codex-last-wake.json`` for doctor.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from swarmbus import HandlerContext, Settings, StoredMessage, WakeOutcome, WakePath, render_wake_prompt
from swarmbus_codex import appserver
from swarmbus_codex.config import (
    CodexSettings,
    app_server_candidates,
    codex_home,
    config,
    find_codex,
    work_dir,
)
from swarmbus_codex.state import Thread, current_thread, record_wake, save_thread

SURFACED_BY = ("app-server", "headless")
"""Paths whose confirmation means the model was shown the messages."""
NOT_FOUND = "codex not found: install it (npm install -g @openai/codex) or set codex_path under [plugins.codex]"


def _title(context: HandlerContext) -> str:
    return f"swarmbus {context.agent_id}"


def thread_overrides(cfg: CodexSettings) -> dict[str, str]:
    """Settings for a thread the plugin starts or loads (nobody is there to approve anything)."""
    return {"approvalPolicy": cfg.approval_policy, "sandbox": cfg.sandbox}


def start_params(settings: Settings, cfg: CodexSettings, agent_id: str) -> dict[str, str]:
    cwd = work_dir(settings, cfg, agent_id)
    cwd.mkdir(parents=True, exist_ok=True)
    params = {"cwd": str(cwd), **thread_overrides(cfg)}
    if cfg.model:
        params["model"] = cfg.model
    return params


# -- app-server --------------------------------------------------------------------------------------
async def _app_probe(context: HandlerContext) -> str | None:
    cfg = config(context.settings)
    client, why = await appserver.open_first(app_server_candidates(cfg), timeout=cfg.path_timeout,
                                             title=_title(context))
    if client is None:
        return "no app-server answers: " + "; ".join(why)
    await client.close()
    return None


async def _new_thread(client: appserver.Client, context: HandlerContext, cfg: CodexSettings) -> str:
    tid = await appserver.start_thread(client, start_params(context.settings, cfg, context.agent_id))
    save_thread(context.settings, context.agent_id, tid, "app-server")
    return tid


async def _app_wake(messages: list[StoredMessage], context: HandlerContext) -> WakeOutcome:
    cfg = config(context.settings)
    client, why = await appserver.open_first(app_server_candidates(cfg), timeout=cfg.path_timeout,
                                             title=_title(context))
    if client is None:
        return WakeOutcome(False, "no app-server answers: " + "; ".join(why))
    prompt = render_wake_prompt(messages, context.agent_id, instructions=cfg.extra_instructions)
    notes: list[str] = []
    try:
        thread = current_thread(context.settings, cfg, context.agent_id)
        if thread is None:
            thread = Thread(await _new_thread(client, context, cfg), "state")
            notes.append("started the thread")
        try:
            accepted = await appserver.deliver(client, thread.id, prompt, resume_overrides=thread_overrides(cfg))
        except appserver.ThreadGone as exc:
            if thread.configured:
                return WakeOutcome(False, f"codex has no thread {thread.id} (thread_id in [plugins.codex]): {exc}; "
                                          "fix thread_id, or remove it to let swarmbus start a thread")
            context.logger.warning("codex thread %s of %s is gone (%s); starting a new one", thread.id,
                                   context.agent_id, exc)
            tid = await _new_thread(client, context, cfg)
            notes.append(f"started a new thread: {thread.id} was gone")
            accepted = await appserver.deliver(client, tid, prompt, resume_overrides=thread_overrides(cfg))
    except appserver.AppServerError as exc:
        return WakeOutcome(False, f"codex app-server on {client.socket} refused the wake: {exc}")
    finally:
        await client.close()
    notes += accepted.notes
    if client.overload_retries:
        notes.append(f"after {client.overload_retries} overloaded answer(s)")
    how = "steered into the running turn" if accepted.steered else "new turn"
    detail = (f"codex app-server accepted turn {accepted.turn_id} ({how}) on thread {accepted.thread_id} "
              f"via unix://{client.socket}")
    if notes:
        detail += f"; {'; '.join(notes)}"
    return WakeOutcome(True, detail)


async def _app_test(context: HandlerContext) -> str | None:
    """The handshake, and the thread known to the server (or resumable): no turn, no model call."""
    cfg = config(context.settings)
    client, why = await appserver.open_first(app_server_candidates(cfg), timeout=cfg.path_timeout,
                                             title=_title(context))
    if client is None:
        return "; ".join(why)
    try:
        thread = current_thread(context.settings, cfg, context.agent_id)
        if thread is not None:
            await appserver.thread_status(client, thread.id)
    except appserver.AppServerError as exc:
        return str(exc)
    finally:
        await client.close()
    return None


# -- headless ----------------------------------------------------------------------------------------
def lock_held(path: Path) -> bool:
    """Whether another process holds the flock on ``path`` (False when there is no such file)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def writer_lock(cfg: CodexSettings, thread_id: str) -> Path:
    return codex_home(cfg) / "thread-writer-locks" / f"{thread_id}.lock"


async def second_writer(context: HandlerContext, cfg: CodexSettings, thread: Thread | None) -> str | None:
    """Why a headless run now would be a second writer on the thread, or None."""
    client, _ = await appserver.open_first(app_server_candidates(cfg), timeout=cfg.path_timeout,
                                           title=_title(context))
    if client is not None:
        await client.close()
        return (f"an app-server answers on {client.socket}: a headless run beside it would be a second writer on "
                "the thread")
    if thread is not None and lock_held(writer_lock(cfg, thread.id)):
        return (f"thread {thread.id} is open in another Codex process ({writer_lock(cfg, thread.id)} is locked): "
                "a headless run would be a second writer; run that Codex through `codex app-server --listen "
                f"unix://{codex_home(cfg)}/swarmbus-app-server.sock` and attach with `codex --remote` to take wakes")
    return None


async def _headless_probe(context: HandlerContext) -> str | None:
    cfg = config(context.settings)
    if find_codex(cfg) is None:
        return NOT_FOUND
    return await second_writer(context, cfg, current_thread(context.settings, cfg, context.agent_id))


async def _headless_wake(messages: list[StoredMessage], context: HandlerContext) -> WakeOutcome:
    from swarmbus_codex.headless import wake_headless

    settings, cfg, agent = context.settings, config(context.settings), context.agent_id
    codex = find_codex(cfg)
    if codex is None:
        return WakeOutcome(False, NOT_FOUND)
    thread = current_thread(settings, cfg, agent)
    prompt = render_wake_prompt(messages, agent, instructions=cfg.extra_instructions)
    outcome = await wake_headless(codex, cfg, context, prompt, thread, work_dir(settings, cfg, agent), len(messages))
    if outcome.thread_id and (thread is None or (outcome.thread_id != thread.id and not thread.configured)):
        save_thread(settings, agent, outcome.thread_id, "headless")
    if outcome.tail:
        context.logger.debug("codex exec output (last lines):\n%s", outcome.tail)
    return WakeOutcome(outcome.ok, outcome.detail, exit_code=outcome.exit_code)


# -- the paths and the wake ----------------------------------------------------------------------------
def wake_paths(settings: Settings) -> list[WakePath]:
    return [
        WakePath("app-server", _app_probe, _app_wake, "a turn on the agent's thread through a running "
                 "`codex app-server --listen unix://...`", test=_app_test, timeout=config(settings).path_timeout),
        WakePath("headless", _headless_probe, _headless_wake, "`codex exec resume <thread> -` when no app-server "
                 "answers", timeout=settings.daemon.handler_timeout),
    ]


async def wake(messages: list[StoredMessage], context: HandlerContext) -> WakeOutcome:
    """Wake Codex for ``messages`` (the oldest first) by the first path that works."""
    from swarmbus import wake_by_paths

    cfg = config(context.settings)
    started = time.monotonic()
    outcome = await wake_by_paths(messages, wake_paths(context.settings), context, timeout=cfg.path_timeout,
                                  surfaced=SURFACED_BY, fall_back=cfg.fall_back)
    ids = [m.id for m in messages]
    log = context.logger.info if outcome.ok else context.logger.warning
    log("codex wake %s for %d message(s) [%s]: %s", "ok" if outcome.ok else "failed", len(ids), ", ".join(ids),
        outcome.detail, extra={"message_ids": ids, "exit_code": outcome.exit_code})
    with contextlib.suppress(Exception):  # doctor's record must never fail a wake
        record_wake(context.settings, context.agent_id, {
            "ok": outcome.ok, "detail": outcome.detail, "exit_code": outcome.exit_code, "message_ids": ids,
            "duration_s": round(time.monotonic() - started, 3)})
    return outcome
