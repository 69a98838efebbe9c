"""``[plugins.priority]``: which command runs for a woken message, and under which limits.

The command for a message is the first match of:

1. a rule in ``rules`` (in order) whose ``sender``, ``subject`` and ``priority`` patterns all
   match (``fnmatch`` patterns, case-sensitive; a rule leaves out what it does not care about);
2. the table entry for the message's priority (``high``, ``normal``, ``low``);
3. ``wake.command`` (``swarmbus start --invoke CMD``), for every woken message.

No match: this plugin has no opinion (another waker may act; otherwise the delivery says that
no waker is configured).
"""

from __future__ import annotations

import fnmatch
import shlex
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from swarmbus import Settings, StoredMessage

NAME = "priority"
"""The plugin's name: its entry-point name and its settings section ``[plugins.priority]``."""
PRIORITIES = ("high", "normal", "low")
"""The priorities with a table entry and a concurrency bucket; any other priority string (the
envelope allows 1-32 of ``A-Z a-z 0-9 _ -``) shares the ``normal`` bucket."""


def _argv(value: Any) -> Any:
    """A string is split like a shell command line (``shlex``), never run by a shell."""
    if isinstance(value, str):
        return shlex.split(value)
    return value


def _not_empty(argv: list[str] | None) -> list[str] | None:
    if argv is not None and (not argv or not argv[0].strip()):
        raise ValueError("must name a program: a non-empty argv list such as [\"notify-me\", \"--urgent\"]")
    return argv


class Rule(BaseModel):
    """One ``[[plugins.priority.rules]]`` entry: patterns to match, and the argv to run."""

    model_config = ConfigDict(extra="forbid")

    sender: str | None = None
    """``fnmatch`` pattern on the sender's agent id (``ci-*``)."""
    subject: str | None = None
    """``fnmatch`` pattern on the subject (``deploy *``)."""
    priority: str | None = None
    """``fnmatch`` pattern on the priority (``high``)."""
    command: list[str]

    @field_validator("command", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _argv(value)

    @field_validator("command")
    @classmethod
    def _program(cls, value: list[str]) -> list[str]:
        return _not_empty(value) or value

    @model_validator(mode="after")
    def _some_pattern(self) -> Rule:
        if self.sender is None and self.subject is None and self.priority is None:
            raise ValueError("a rule needs at least one of sender, subject, priority (use the priority tables for the rest)")
        return self

    def matches(self, message: StoredMessage) -> bool:
        pairs = ((self.sender, message.from_agent), (self.subject, message.subject), (self.priority, message.priority))
        return all(pattern is None or fnmatch.fnmatchcase(value, pattern) for pattern, value in pairs)


class PrioritySettings(BaseModel):
    """``[plugins.priority]`` in the config file. Every field has a default: with none set, only
    ``wake.command`` (``--invoke``) runs, as the core did before this plugin existed."""

    model_config = ConfigDict(extra="forbid")

    high: list[str] | None = None
    normal: list[str] | None = None
    low: list[str] | None = None
    rules: list[Rule] = Field(default_factory=list)
    timeout: float = Field(default=600.0, gt=0, le=86_400)
    """Seconds a command may run; then its whole process group is killed and the wake is
    recorded as failed. The ``wake`` handler's own timeout (``daemon.handler_timeout``, 600 s)
    still applies around it (waiting for a slot included)."""
    concurrency: int | dict[str, int] = 8
    """The most commands of one priority running at once: a number for each priority, or a
    table (``{ high = 4, low = 1 }``; a priority left out gets 8)."""
    batch: bool = False
    """False: a command runs once per message. True: the plugin asks the core for coalesced
    wakes (one wake at a time per agent, the messages that arrive meanwhile in the next one) and
    each distinct command runs once for its messages of a wake (stdin: one JSON envelope per line;
    ``SWARMBUS_BATCH`` = how many)."""

    @field_validator("high", "normal", "low", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _argv(value)

    @field_validator("high", "normal", "low")
    @classmethod
    def _program(cls, value: list[str] | None) -> list[str] | None:
        return _not_empty(value)

    @field_validator("concurrency")
    @classmethod
    def _limits(cls, value: int | dict[str, int]) -> int | dict[str, int]:
        limits = value.values() if isinstance(value, dict) else [value]
        if any(n < 1 or n > 256 for n in limits):
            raise ValueError("must be between 1 and 256")
        if isinstance(value, dict) and set(value) - set(PRIORITIES):
            raise ValueError(f"keys must be among {', '.join(PRIORITIES)}")
        return value

    def limit(self, bucket: str) -> int:
        """The concurrency limit of a priority bucket (see :func:`bucket`)."""
        if isinstance(self.concurrency, dict):
            return self.concurrency.get(bucket, 8)
        return self.concurrency


def config(settings: Settings) -> PrioritySettings:
    """This plugin's validated section; the defaults when it was never registered or validated
    (settings built by a test without the plugin's section, or a raw dict)."""
    section = settings.plugin_config(NAME)
    if isinstance(section, PrioritySettings):
        return section
    return PrioritySettings.model_validate(section or {})


def bucket(message: StoredMessage) -> str:
    """The concurrency bucket of a message: its priority when that is high, normal or low, else
    ``normal``."""
    return message.priority if message.priority in PRIORITIES else "normal"


def command_for(message: StoredMessage, settings: Settings) -> list[str] | None:
    """The argv to run for ``message`` (see the module docstring for the order), or None."""
    cfg = config(settings)
    for rule in cfg.rules:
        if rule.matches(message):
            return list(rule.command)
    by_priority: list[str] | None = getattr(cfg, message.priority) if message.priority in PRIORITIES else None
    if by_priority:
        return list(by_priority)
    return list(settings.wake.command) if settings.wake.command else None


def configured_commands(settings: Settings) -> list[tuple[str, list[str]]]:
    """Every configured argv with where it comes from (``wake.command``,
    ``plugins.priority.high``, ``plugins.priority.rules[0]``, ...), for ``doctor``."""
    cfg = config(settings)
    found: list[tuple[str, list[str]]] = []
    if settings.wake.command:
        found.append(("wake.command", list(settings.wake.command)))
    for name in PRIORITIES:
        argv = getattr(cfg, name)
        if argv:
            found.append((f"plugins.{NAME}.{name}", list(argv)))
    found.extend((f"plugins.{NAME}.rules[{i}]", list(rule.command)) for i, rule in enumerate(cfg.rules))
    return found
