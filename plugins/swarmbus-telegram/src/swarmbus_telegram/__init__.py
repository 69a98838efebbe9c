"""swarmbus-telegram: operator notifications, digests and replies from a Telegram chat.

Runs inside one agent's daemon (typically a dedicated operator agent, ``swarmbus start
--agent-id ops`` with ``[plugins.telegram]`` configured); it sees the messages that daemon
receives and the operator events it fires:

- pushes a notification per message worth one (``[plugins.telegram.notify]``; default: priority
  ``high``), and for operator events: a wake failed N times in a row, the loop guard tripped,
  messages held (grouped), a watched agent's daemon offline for a while;
- a periodic digest of what arrived (per sender, subjects, what was held);
- replies and commands from the chat (``/status``, ``/mute``, ``/unmute``, ``/hold``,
  ``/release``, ``/send``; a reply to a notification answers its sender);
- a durable outbox in its own SQLite file, so an outage or a restart delays and loses nothing.

Hooks: ``swarmbus_settings_sections`` (``[plugins.telegram]``), ``swarmbus_register_handlers``
and ``swarmbus_route`` (the ``telegram`` handler: every message), ``swarmbus_services`` (the
``telegram`` service: sender, ticker, poller), ``swarmbus_operator_event``,
``swarmbus_doctor_checks`` (``telegram``, ``telegram-chat``, ``telegram-delivery``) and
``swarmbus_commands`` (``swarmbus telegram test``). It imports only the public ``swarmbus`` API.
See docs/telegram.md for a worked configuration.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pydantic import BaseModel

from swarmbus import (
    Command,
    DoctorCheck,
    Handler,
    HandlerContext,
    OperatorEvent,
    Service,
    Settings,
    StoredMessage,
    hookimpl,
)
from swarmbus_telegram import doctor
from swarmbus_telegram.config import NAME, TelegramSettings, config, configured, notify_verdict
from swarmbus_telegram.notifier import Telegram

__version__ = "0.1.0"
__all__ = ["NAME", "Telegram", "TelegramSettings", "notify_verdict", "runtime_for"]

HANDLER = "telegram"
_runtimes: dict[str, Telegram] = {}


def runtime_for(settings: Settings, agent_id: str) -> Telegram:
    """The plugin's runtime for ``agent_id``'s daemon with ``settings`` (made on first use)."""
    rt = _runtimes.get(agent_id)
    if rt is None or rt.settings is not settings:
        if rt is not None:
            rt.close()
        rt = _runtimes[agent_id] = Telegram(settings, agent_id)
    return rt


@hookimpl
def swarmbus_settings_sections(register: Callable[[str, type[BaseModel]], None]) -> None:
    register(NAME, TelegramSettings)


async def handle(message: StoredMessage, context: HandlerContext) -> str:
    """The ``telegram`` handler: count the message, queue its notification when it is worth one."""
    return runtime_for(context.settings, context.agent_id).on_message(message)


@hookimpl
def swarmbus_register_handlers(register: Callable[[Handler], None], settings: Settings) -> None:
    if configured(config(settings)):
        register(Handler(HANDLER, handle, timeout=30, description="Telegram: notifications and the digest"))


@hookimpl
def swarmbus_route(message: StoredMessage, handlers: frozenset[str]) -> Iterable[str] | None:
    return [HANDLER] if HANDLER in handlers else None


@hookimpl
def swarmbus_services(register: Callable[[Service], None], context: HandlerContext) -> None:
    if configured(config(context.settings)):
        rt = runtime_for(context.settings, context.agent_id)
        register(Service("telegram", rt.run, "Telegram: send notifications, digests; read replies and commands"))


@hookimpl
def swarmbus_operator_event(event: OperatorEvent) -> None:
    for rt in list(_runtimes.values()):
        rt.on_event(event)


@hookimpl
def swarmbus_doctor_checks(register: Callable[[DoctorCheck], None], settings: Settings) -> None:
    register(DoctorCheck("telegram", doctor.check_bot, order=90))
    register(DoctorCheck("telegram-chat", doctor.check_chat, order=91))
    register(DoctorCheck("telegram-delivery", doctor.check_delivery, order=92))


@hookimpl
def swarmbus_commands(register: Callable[[Command], None]) -> None:
    register(Command("telegram", "Telegram notifications: `swarmbus telegram test` sends one message",
                     doctor.configure, doctor.run))
