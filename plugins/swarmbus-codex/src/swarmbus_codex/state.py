"""What the plugin keeps in the agent's state dir (``<state>/agents/<id>/``).

- ``codex-thread.json``: the agent's Codex thread, once a wake created one (``thread_id`` in
  ``[plugins.codex]`` wins over it): ``{"thread_id", "created_by", "updated_at"}``.
- ``codex-last-wake.json``: the last wake, for ``swarmbus doctor``: ``{"ok", "detail",
  "message_ids", "duration_s", "finished_at"}``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

from swarmbus import Settings, read_json_file, write_json_file
from swarmbus_codex.config import CodexSettings, agent_dir

THREAD_FILE = "codex-thread.json"
LAST_WAKE_FILE = "codex-last-wake.json"


@dataclass(frozen=True)
class Thread:
    """The agent's thread and where its id came from: ``config`` (``thread_id`` in
    ``[plugins.codex]``: never replaced) or ``state`` (kept by an earlier wake: replaced when Codex
    no longer has it)."""

    id: str
    source: str

    @property
    def configured(self) -> bool:
        return self.source == "config"


def current_thread(settings: Settings, cfg: CodexSettings, agent_id: str) -> Thread | None:
    if cfg.thread_id:
        return Thread(cfg.thread_id, "config")
    data = read_json_file(agent_dir(settings, agent_id) / THREAD_FILE)
    tid = (data or {}).get("thread_id")
    return Thread(tid, "state") if isinstance(tid, str) and tid else None


def save_thread(settings: Settings, agent_id: str, thread_id: str, created_by: str) -> None:
    write_json_file(agent_dir(settings, agent_id) / THREAD_FILE,
               {"thread_id": thread_id, "created_by": created_by, "updated_at": time.time()})


def record_wake(settings: Settings, agent_id: str, data: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        write_json_file(agent_dir(settings, agent_id) / LAST_WAKE_FILE, {**data, "finished_at": time.time()})


def last_wake(settings: Settings, agent_id: str) -> dict[str, Any] | None:
    return read_json_file(agent_dir(settings, agent_id) / LAST_WAKE_FILE)
