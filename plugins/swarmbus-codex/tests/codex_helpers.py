"""Helpers shared by the swarmbus-codex tests (imported by name: the tests dir is on sys.path)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

from swarmbus import HandlerContext, HookRelay, Settings, StoredMessage, WakeDecision, WakeOutcome, new_envelope
from swarmbus_codex.config import CodexSettings

AGENT = "cx"
T = TypeVar("T")


def make_settings(state_dir: Path, host_type: str | None = "codex", **section: Any) -> Settings:
    settings = Settings(agent_id=AGENT, host_type=host_type, state_dir=state_dir)
    settings.plugins["codex"] = CodexSettings.model_validate(section)
    return settings


def stored(subject: str = "hello", body: str = "please look at the build", *, seq: int = 1,
           sender: str = "planner") -> StoredMessage:
    envelope = new_envelope(sender, AGENT, subject, body)
    return StoredMessage(seq, envelope, f"agents/{AGENT}/inbox", time.time())


class Context:
    """A HandlerContext whose ``mark_step`` calls are recorded in :attr:`marks`."""

    def __init__(self, settings: Settings, relay: HookRelay | None = None) -> None:
        self.marks: list[tuple[list[str], str, str]] = []

        def mark_step(ids: Any, step: str, detail: str = "") -> int:
            ids = list(ids)
            self.marks.append((ids, step, detail))
            return len(ids)

        async def send(*args: Any, **kwargs: Any) -> str:
            raise AssertionError("the codex waker never sends")

        self.context = HandlerContext(agent_id=AGENT, settings=settings, logger=logging.getLogger("test.codex"),
                                      send=send, hooks=relay, mark_step=mark_step)


def run(awaitable: Awaitable[T]) -> T:
    async def main() -> T:
        return await awaitable

    return asyncio.run(main())


def wake_via_hook(relay: HookRelay, messages: list[StoredMessage], ctx: Context) -> WakeOutcome:
    """Call ``swarmbus_wake`` as the core's wake handler does (oldest first, the rest as the batch)."""
    decision = WakeDecision(True, "test", batch=tuple(messages[1:]))
    result = relay.pm.hook.swarmbus_wake(message=messages[0], decision=decision, context=ctx.context)
    assert result is not None, "the codex plugin did not answer swarmbus_wake"
    return run(result) if not isinstance(result, WakeOutcome) else result
