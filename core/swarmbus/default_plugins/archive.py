"""Built-in ``archive`` handler: appends each stored message to the markdown inbox file.

The file is ``daemon.inbox_file`` (``--inbox``), by default ``<state_dir>/agents/<id>/inbox.md``;
``daemon.archive = false`` turns the handler off. See :mod:`swarmbus.markdown` for the format.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from swarmbus.api import Handler, HandlerContext, StoredMessage
from swarmbus.hookspecs import hookimpl
from swarmbus.markdown import append_entry, format_entry
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
    lock = asyncio.Lock()

    async def archive(message: StoredMessage, context: HandlerContext) -> str:
        path = inbox_path(context.settings, context.agent_id)
        entry = format_entry(message.envelope, direction="in")
        async with lock:  # keep entries whole and in arrival order
            await asyncio.to_thread(append_entry, path, entry)
        return f"appended to {path}"

    register(Handler("archive", archive, timeout=30, description="append to the markdown inbox file"))
