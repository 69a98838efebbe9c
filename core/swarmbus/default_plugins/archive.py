"""Built-in ``archive`` handler: appends each stored message to the markdown inbox file.

The file is ``daemon.inbox_file`` (``--inbox``), by default ``<state_dir>/agents/<id>/inbox.md``;
``daemon.archive = false`` turns the handler off. See :mod:`swarmbus.markdown` for the format.

Exactly once per message id: an entry appended just before a crash, whose outcome the daemon
had not recorded yet, is not appended again when the message is dispatched after the restart
(``message.redelivered``): such a message is first looked up among the ids of the file's last
entries (at most ``2 * daemon.backlog``, the most messages the dispatcher can have had in hand).
Each entry is one ``write()`` in append mode, made from the event loop, so entries stay whole and
in dispatch order without a lock or a thread hop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from swarmbus.api import Handler, HandlerContext, StoredMessage
from swarmbus.hookspecs import hookimpl
from swarmbus.markdown import append_entry, archived_ids, format_entry
from swarmbus.paths import AgentPaths
from swarmbus.settings import Settings


def inbox_path(settings: Settings, agent_id: str) -> Path:
    configured = settings.daemon.inbox_file
    if configured is not None:
        return Path(str(configured).replace("{agent_id}", agent_id)).expanduser()
    return AgentPaths.for_agent(agent_id, settings.state_dir).inbox_file


@hookimpl
def swarmbus_register_handlers(register: Callable[[Handler], None], settings: Settings) -> None:
    if not settings.daemon.archive:
        return
    recent: set[str] | None = None  # ids at the end of the file, read once, at the first redelivered message
    lookback = 2 * settings.daemon.backlog
    paths: dict[str, Path] = {}  # agent id -> inbox path (resolved once: the settings do not change)

    async def archive(message: StoredMessage, context: HandlerContext) -> str:
        nonlocal recent
        path = paths.get(context.agent_id)
        if path is None:
            path = paths[context.agent_id] = inbox_path(context.settings, context.agent_id)
        if message.redelivered:
            if recent is None:
                recent = await asyncio.to_thread(archived_ids, path, lookback)
            if message.id in recent:
                return f"already in {path} (appended before a restart)"
        append_entry(path, format_entry(message.envelope, direction="in"))
        return f"appended to {path}"

    register(Handler("archive", archive, timeout=30, description="append to the markdown inbox file"))
