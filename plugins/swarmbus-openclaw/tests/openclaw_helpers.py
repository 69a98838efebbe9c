"""Helpers shared by the swarmbus-openclaw tests (imported by name: the tests dir is on sys.path)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from swarmbus import HandlerContext, HookRelay, Settings, StoredMessage, new_envelope

AGENT = "oc"
TOKEN = "test-token"


def make_settings(relay: HookRelay, tmp_path: Path, host_type: str | None = "openclaw", **section: Any) -> Settings:
    settings = Settings(agent_id=AGENT, host_type=host_type, state_dir=tmp_path / "state")
    for name, model in relay.settings_sections().items():
        settings.plugins[name] = model.model_validate(section if name == "openclaw" else {})
    return settings


def stored(subject: str = "hello", body: str = "please look at the build", *, seq: int = 1,
           **fields: Any) -> StoredMessage:
    envelope = new_envelope("planner", AGENT, subject, body, **fields)
    return StoredMessage(seq, envelope, f"agents/{AGENT}/inbox", time.time())


def context_for(relay: HookRelay, settings: Settings) -> HandlerContext:
    async def send(to: str, subject: str, body: str, **fields: Any) -> str:
        raise AssertionError("the openclaw waker never sends")

    return HandlerContext(agent_id=AGENT, settings=settings, logger=logging.getLogger("test.openclaw"),
                          send=send, hooks=relay)
