"""``swarmbus doctor`` checks and the ``swarmbus telegram test`` command.

Checks (after the core's): ``telegram`` (90: the token and the chat id are there, the secrets
file is private, ``getMe`` answers: https://core.telegram.org/bots/api#getme), ``telegram-chat``
(91: ``getChat`` reaches the chat: https://core.telegram.org/bots/api#getchat) and
``telegram-delivery`` (92: the last delivery's outcome and what waits in the outbox). None of
them ever prints the token.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from swarmbus import CheckResult, DoctorContext, Settings
from swarmbus_telegram.botapi import Refused, RetryAfter, TelegramError, call_sync
from swarmbus_telegram.config import CHAT_ENV, TOKEN_ENV, Secrets, config, configured, load_secrets
from swarmbus_telegram.state import State, state_path
from swarmbus_telegram.text import clock

NOT_CONFIGURED = "not configured (no chat_id or bot token under [plugins.telegram])"


def _secrets(ctx: DoctorContext) -> Secrets:
    cached = ctx.cache.get("telegram-secrets")
    if isinstance(cached, Secrets):
        return cached
    secrets = load_secrets(config(ctx.settings))
    ctx.cache["telegram-secrets"] = secrets
    return secrets


def _api_problem(exc: TelegramError, what: str) -> CheckResult:
    if isinstance(exc, Refused) and exc.status == 401:
        return CheckResult("fail", f"{what}: the bot token was refused ({exc})",
                           fix=f"take the token BotFather gave (/mybots), in {TOKEN_ENV} or bot_token_file")
    if isinstance(exc, Refused):
        return CheckResult("fail", f"{what}: {exc}", fix="check chat_id, and that the bot is a member of that chat")
    if isinstance(exc, RetryAfter):
        return CheckResult("warn", f"{what}: {exc}", fix=f"wait {exc.seconds:g}s and run doctor again")
    return CheckResult("fail", f"{what}: the Bot API does not answer ({exc})",
                       fix="check the network and api_base under [plugins.telegram]")


def check_bot(ctx: DoctorContext) -> CheckResult:
    cfg = config(ctx.settings)
    if not configured(cfg):
        return CheckResult("skip", NOT_CONFIGURED)
    secrets = _secrets(ctx)
    if secrets.token is None or secrets.chat_id is None:
        return CheckResult("fail", "; ".join(secrets.problems),
                           fix=f"set chat_id and bot_token_file (chmod 600) under [plugins.telegram], or {TOKEN_ENV} "
                               f"and {CHAT_ENV}")
    try:
        me = call_sync(secrets.token, cfg.api_base, "getMe", timeout=10)
    except TelegramError as exc:
        ctx.cache["telegram-api-down"] = True
        return _api_problem(exc, "getMe")
    name = me.get("username", "?") if isinstance(me, dict) else "?"
    extra = f" ({'; '.join(secrets.problems)})" if secrets.problems else ""
    return CheckResult("warn" if secrets.problems else "ok",
                       f"bot @{name} answers (getMe; token from {secrets.token_source}){extra}",
                       fix="see above" if secrets.problems else None)


def check_chat(ctx: DoctorContext) -> CheckResult:
    cfg = config(ctx.settings)
    if not configured(cfg):
        return CheckResult("skip", NOT_CONFIGURED)
    secrets = _secrets(ctx)
    if secrets.token is None or secrets.chat_id is None or ctx.cache.get("telegram-api-down"):
        return CheckResult("skip", "the bot is not usable (see the telegram check)")
    try:
        chat = call_sync(secrets.token, cfg.api_base, "getChat", {"chat_id": secrets.chat_id}, timeout=10)
    except TelegramError as exc:
        return _api_problem(exc, f"getChat {secrets.chat_id}")
    title = ""
    if isinstance(chat, dict):
        title = chat.get("title") or chat.get("username") or chat.get("first_name") or ""
    return CheckResult("ok", f"chat {secrets.chat_id} ({title or chat.get('type', '?') if isinstance(chat, dict) else '?'}) "
                             f"is reachable (from {secrets.chat_source})")


def check_delivery(ctx: DoctorContext) -> CheckResult:
    cfg = config(ctx.settings)
    if not configured(cfg):
        return CheckResult("skip", NOT_CONFIGURED)
    if not ctx.agent_id:
        return CheckResult("skip", "no agent id: give --agent-id to see the agent's notification outbox")
    path = state_path(ctx.settings, ctx.agent_id)
    if not path.exists():
        return CheckResult("skip", f"nothing sent yet for {ctx.agent_id} (no {path.name})")
    state = State(path)
    try:
        last: dict[str, Any] | None = state.get("last_delivery")
        waiting, oldest = state.pending()
    finally:
        state.close()
    queue = f"; {waiting} waiting since {clock(oldest)}" if waiting else "; nothing waiting"
    if last is None:
        return CheckResult("ok" if not waiting else "warn", "no delivery attempted yet" + queue,
                           fix=None if not waiting else f"is the daemon running? swarmbus status --agent-id {ctx.agent_id}")
    if last.get("ok"):
        return CheckResult("ok", f"last notification delivered at {clock(last.get('at'))}{queue}")
    stale = waiting and oldest is not None and time.time() - oldest > 600
    return CheckResult("fail" if stale else "warn",
                       f"the last delivery failed at {clock(last.get('at'))}: {last.get('error')}{queue}",
                       fix="the daemon keeps trying (nothing is lost); see the errors above and the daemon's log")


# -- swarmbus telegram test -------------------------------------------------------------------------
def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("test",), help="test: send one message to the configured chat")
    parser.add_argument("--agent-id", metavar="ID", help="the agent whose settings to use (names it in the text)")
    parser.add_argument("--text", help="the text to send (default: a short test line)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """``swarmbus telegram test``: 0 sent, 1 the Bot API refused or could not be reached, 2 not
    configured."""
    cfg = config(settings)
    secrets = load_secrets(cfg)
    if secrets.token is None or secrets.chat_id is None:
        sys.stderr.write(f"swarmbus: error: telegram: {'; '.join(secrets.problems)}\n")
        return 2
    agent = settings.agent_id or "swarmbus"
    text = args.text or f"✅ swarmbus-telegram test from {agent} at {time.strftime('%Y-%m-%d %H:%M:%S')}"
    try:
        sent = call_sync(secrets.token, cfg.api_base, "sendMessage",
                         {"chat_id": secrets.chat_id, "text": text[:4096]}, timeout=15)
    except TelegramError as exc:
        sys.stderr.write(f"swarmbus: error: telegram: {exc}\n")
        return 1
    message_id = sent.get("message_id") if isinstance(sent, dict) else None
    print(f"sent a test message to chat {secrets.chat_id} (message {message_id}) through {cfg.api_base}")
    return 0
