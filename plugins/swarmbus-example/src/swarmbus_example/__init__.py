"""swarmbus-example: the smallest complete swarmbus plugin, meant to be copied.

It answers every message whose subject is exactly ``ping`` with a reply (subject ``pong``,
the ping's id as the body, ``in_reply_to`` set to the ping's id), and shows one use of each
kind of hook a plugin typically needs:

- ``swarmbus_settings_sections``: the ``[plugins.example]`` config section;
- ``swarmbus_register_handlers``: the ``example-pong`` handler;
- ``swarmbus_route``: sends ``ping`` messages to that handler;
- ``swarmbus_wake_decision``: a ping is answered here, so it never wakes the host agent;
- ``swarmbus_doctor_checks``: the ``example`` line of ``swarmbus doctor``;
- ``swarmbus_commands``: ``swarmbus example-hello``;
- ``swarmbus_task_handlers``: runs ``example.echo`` tasks from the task board (``swarmbus task
  post example.echo --payload '{"text": "hi"}'``): the result echoes the payload.

It imports only names from ``swarmbus`` itself (the public API), never ``swarmbus.<module>``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, field_validator

from swarmbus import (
    CheckResult,
    Command,
    DoctorCheck,
    DoctorContext,
    Handler,
    HandlerContext,
    Settings,
    StoredMessage,
    Task,
    TaskHandler,
    WakeDecision,
    hookimpl,
    skip,
)

__version__ = "0.1.0"

NAME = "example"
"""The plugin's name: its entry-point name and its settings section ``[plugins.example]``."""
HANDLER = "example-pong"
PING = "ping"
ECHO = "example.echo"
"""The task type this plugin runs from the task board."""


class ExampleSettings(BaseModel):
    """``[plugins.example]`` in the config file. Every field has a default."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    reply_subject: str = "pong"

    @field_validator("reply_subject")
    @classmethod
    def _not_ping(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        if value == PING:
            raise ValueError("must not be 'ping' (two agents would answer each other forever)")
        return value


def config(settings: Settings) -> ExampleSettings:
    """This plugin's validated section; the defaults when it was never registered or validated
    (for example settings built by a test without the plugin's section)."""
    section = settings.plugin_config(NAME)
    if isinstance(section, ExampleSettings):
        return section
    return ExampleSettings.model_validate(section or {})


def is_ping(message: StoredMessage) -> bool:
    return message.subject == PING


# -- settings ---------------------------------------------------------------------------------
@hookimpl
def swarmbus_settings_sections(register: Callable[[str, type[BaseModel]], None]) -> None:
    register(NAME, ExampleSettings)


# -- handler and routing ----------------------------------------------------------------------
async def answer_ping(message: StoredMessage, context: HandlerContext) -> str:
    """The ``example-pong`` handler: reply to the sender (or its ``reply_to``)."""
    cfg = config(context.settings)
    if message.from_agent == context.agent_id:
        return "not answered: own message"
    if message.envelope.expired():
        return "not answered: expired"
    to = message.envelope.reply_to or message.from_agent
    reply_id = await context.send(to, cfg.reply_subject, message.id, in_reply_to=message.id)
    context.logger.info("example: answered ping %s from %s with %s", message.id, message.from_agent, reply_id)
    return f"answered {cfg.reply_subject} {reply_id} to {to}"


@hookimpl
def swarmbus_register_handlers(register: Callable[[Handler], None], settings: Settings) -> None:
    if not config(settings).enabled:
        return
    register(Handler(HANDLER, answer_ping, timeout=30, description="answer `ping` messages with `pong`"))


@hookimpl
def swarmbus_route(message: StoredMessage, handlers: frozenset[str]) -> list[str] | None:
    # Only an opinion about pings, and only when our handler exists (it is absent when disabled).
    # The built-in router still sends every message to `archive` and `wake` as well.
    if is_ping(message) and HANDLER in handlers:
        return [HANDLER]
    return None


@hookimpl
def swarmbus_wake_decision(message: StoredMessage, settings: Settings) -> WakeDecision | None:
    # A ping is answered by this plugin: no reason to wake the host agent for it. None for every
    # other message leaves the decision to other plugins and finally to the built-in policy.
    if is_ping(message) and config(settings).enabled:
        return skip("ping is answered by the example plugin")
    return None


# -- tasks ------------------------------------------------------------------------------------
async def echo(task: Task, context: HandlerContext) -> dict[str, object]:
    """The ``example.echo`` task: its result is its payload, and who ran it (which attempt).
    A handler returns the result (any JSON value) or raises to fail the attempt."""
    context.logger.info("example: echoing task %s (attempt %d) for %s", task.task_id, task.attempt, task.owner)
    return {"echo": task.payload, "by": context.agent_id, "attempt": task.attempt}


@hookimpl
def swarmbus_task_handlers(register: Callable[[TaskHandler], None], settings: Settings) -> None:
    if config(settings).enabled:
        register(TaskHandler(ECHO, echo, "echo the payload back as the result"))


# -- doctor -----------------------------------------------------------------------------------
def check_example(ctx: DoctorContext) -> CheckResult:
    cfg = config(ctx.settings)
    if not cfg.enabled:
        return CheckResult("warn", "example plugin is disabled: pings are not answered",
                           fix="set `enabled = true` under [plugins.example] in the config file")
    return CheckResult("ok", f"example plugin answers `{PING}` with `{cfg.reply_subject}`")


@hookimpl
def swarmbus_doctor_checks(register: Callable[[DoctorCheck], None], settings: Settings) -> None:
    register(DoctorCheck(NAME, check_example, order=900))


# -- CLI --------------------------------------------------------------------------------------
def _configure_hello(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default="world", help="who to greet (default: world)")


def _run_hello(args: argparse.Namespace, settings: Settings) -> int:
    cfg = config(settings)
    state = "answers" if cfg.enabled else "is disabled; it would answer"
    print(f"hello, {args.name}! the example plugin {state} `{PING}` with `{cfg.reply_subject}`")
    return 0


@hookimpl
def swarmbus_commands(register: Callable[[Command], None]) -> None:
    register(Command("example-hello", "print a greeting from the example plugin", _configure_hello, _run_hello))
