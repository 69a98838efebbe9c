"""The Claude Code host's wake paths, for the core's wake router (``swarmbus.wake_by_paths``).

- ``session``: post to the live interactive session's inbox socket (:mod:`.session`); ready when
  a session registered by the swarmbus MCP server is alive and its socket exists; confirmed when
  the post was written. The ladder records ``surfaced``.
- ``rewake``: a Stop hook with ``asyncRewake`` is blocked in ``swarmbus wait`` on the daemon and
  takes the stored message by itself; ready when such a reader is waiting right now.
- ``resume``: a headless ``claude -p --resume <the agent's session>`` (:mod:`.waker`); ready when
  the ``claude`` executable is found; confirmed when the run exits 0. The ladder records
  ``surfaced`` too (the model read the messages in that run).

In ``auto`` mode they are tried in the order of ``[plugins.cc] wake_paths``; the other modes
offer their one path (``context`` none: the UserPromptSubmit hook delivers at the next prompt).
"""

from __future__ import annotations

from swarmbus import HandlerContext, Settings, StoredMessage, WakeOutcome, WakePath
from swarmbus_claude_code import session
from swarmbus_claude_code.settings import CCSettings, config, find_claude

SURFACED_BY = ("session", "resume")
"""Paths whose confirmation means the model was shown the messages."""
REWAKE_DETAIL = "a Stop hook waiting in `swarmbus wait` picks the message up and wakes the idle session"


async def _rewake_probe(context: HandlerContext) -> str | None:
    waiting = context.waiting_readers() if context.waiting_readers is not None else 0
    return None if waiting > 0 else "no Stop hook is waiting in `swarmbus wait` (wake_mode rewake installs it)"


async def _rewake(messages: list[StoredMessage], context: HandlerContext) -> WakeOutcome:
    return WakeOutcome(True, REWAKE_DETAIL)


async def _resume_probe(context: HandlerContext) -> str | None:
    return None if find_claude(config(context.settings)) else "claude not found: install Claude Code or set claude_path under [plugins.cc]"


async def _resume(messages: list[StoredMessage], context: HandlerContext) -> WakeOutcome:
    from swarmbus_claude_code.waker import wake_once

    return await wake_once(messages, context)


def _all(settings: Settings) -> dict[str, WakePath]:
    return {
        "session": WakePath("session", session.probe, session.wake,
                            "post to the live Claude Code session's inbox socket", test=session.test),
        "rewake": WakePath("rewake", _rewake_probe, _rewake, "a Stop hook blocked in `swarmbus wait`"),
        "resume": WakePath("resume", _resume_probe, _resume, "a headless `claude -p --resume` of the agent's session",
                           timeout=settings.daemon.handler_timeout),
    }


def wake_paths(settings: Settings, cfg: CCSettings | None = None) -> list[WakePath]:
    """The paths to try for this agent, in order (see the module docstring)."""
    cfg = cfg or config(settings)
    every = _all(settings)
    if cfg.wake_mode == "auto":
        return [every[name] for name in dict.fromkeys(cfg.wake_paths)]
    return [every[cfg.wake_mode]] if cfg.wake_mode in every else []
