"""Replies and commands from the chat (``getUpdates`` updates; https://core.telegram.org/bots/api#update).

Only a text message in an allowed chat (``allowed_chat_ids``, default: ``chat_id``) from an
allowed user (``allowed_user_ids``, default: anyone there; never a bot) is obeyed; anything else
is logged (chat and user id, not the text) and ignored. Then:

- a reply to a notification about a message sends a swarmbus message to its sender, from the
  operator id, ``in_reply_to`` the original, subject ``Re: <subject>``;
- ``/status``: the agents of this machine (running, connected, held and unread counts, the
  operator's hold), the watched agents' presence, and the notifications (muted, waiting);
- ``/mute [DURATION]``, ``/unmute``: notifications (default ``mute_default``, 1 h);
- ``/hold AGENT [DURATION]``, ``/release AGENT``: the agent's wakes, through the policy engine
  (``swarmbus policy hold|release``, for an agent whose daemon runs on this machine);
- ``/send AGENT TEXT``: a swarmbus message to AGENT from the operator id;
- ``/help`` (and ``/start``).

Handling an update twice (a restart between its effects and the stored offset) changes nothing:
each answer is queued under a key of the update, and a message sent from the chat has an id
derived from the update, which the daemon's outbox takes once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import uuid
from typing import TYPE_CHECKING, Any

from swarmbus import AgentPaths, EnvelopeError, Settings, run_child, scrubbed_env, validate_agent_id
from swarmbus_telegram.config import parse_duration
from swarmbus_telegram.text import clock, code, cut, esc

if TYPE_CHECKING:
    from swarmbus_telegram.notifier import Telegram

log = logging.getLogger("swarmbus.telegram")
NAMESPACE = uuid.UUID("6f1c2a8e-7d0b-4c59-9a43-2e5d1b7c8f90")
"""Ids of messages sent from the chat: ``uuid5(NAMESPACE, "<agent>:<update id>")``."""
CLI_TIMEOUT = 30.0
MAX_AGENTS = 20

HELP = """<b>swarmbus</b> commands:
/status: agents, held and unread messages
/mute [2h]: no notifications for a while; /unmute
/hold AGENT [2h]: hold AGENT's wakes; /release AGENT
/send AGENT text: send AGENT a message
Reply to a notification to answer its sender."""


async def swarmbus_cli(settings: Settings, *args: str, stdin: bytes | None = None,
                       timeout: float = CLI_TIMEOUT) -> tuple[int, str, str]:
    """Run ``python -m swarmbus ARGS --state-dir DIR`` (argv, no shell) in a scrubbed
    environment (no broker credentials, no bot token; ``SWARMBUS_CONFIG`` kept; no plugins
    loaded) and return ``(exit code, stdout, stderr)``; exit 124 when it took over ``timeout``
    seconds (its process group is killed)."""
    argv = [sys.executable, "-m", "swarmbus", *args]
    if settings.state_dir is not None:
        argv += ["--state-dir", str(settings.state_dir)]
    env = scrubbed_env(extra_allow=("SWARMBUS_CONFIG", "SWARMBUS_STATE_DIR", "PYTHONPATH"))
    env["SWARMBUS_LOAD_PLUGINS"] = ""
    try:
        async with asyncio.timeout(timeout):
            code_, out, err = await run_child(argv, stdin=stdin, env=env)
    except TimeoutError:
        return 124, "", f"swarmbus {args[0]} took longer than {timeout:g}s"
    return code_, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    first = next((line for line in lines if line.startswith("swarmbus: error:")), lines[0] if lines else "failed")
    return first.removeprefix("swarmbus: error: ")


class Chat:
    """Handles updates for a :class:`~swarmbus_telegram.notifier.Telegram` runtime."""

    def __init__(self, rt: Telegram) -> None:
        self.rt = rt

    # -- who may talk to the bot ---------------------------------------------------------------------
    def allowed(self, chat_id: Any, user_id: Any) -> bool:
        cfg, secrets = self.rt.cfg, self.rt.secrets
        chats = {str(c) for c in (cfg.allowed_chat_ids or ([secrets.chat_id] if secrets and secrets.chat_id else []))}
        if str(chat_id) not in chats:
            return False
        return not cfg.allowed_user_ids or user_id in cfg.allowed_user_ids

    async def handle(self, update: dict[str, Any]) -> None:
        """Obey one update (see the module docstring)."""
        update_id = int(update["update_id"])
        message = update.get("message")
        if not isinstance(message, dict):
            return
        chat = message.get("chat") if isinstance(message.get("chat"), dict) else {}
        sender = message.get("from") if isinstance(message.get("from"), dict) else {}
        chat_id, user_id = chat.get("id"), sender.get("id")
        if not self.allowed(chat_id, user_id) or sender.get("is_bot"):
            log.warning("telegram: ignored update %d from chat %s, user %s: not on the allow-lists "
                        "(allowed_chat_ids, allowed_user_ids)", update_id, chat_id, user_id)
            return
        text = message.get("text")
        msg_id = message.get("message_id") if isinstance(message.get("message_id"), int) else None
        answer = Answer(self.rt, update_id, str(chat_id), msg_id)
        if not isinstance(text, str) or not text.strip():
            answer("Only text messages are understood here. /help")
            return
        replied = message.get("reply_to_message")
        if text.startswith("/"):
            await self.command(text, answer, update_id)
        elif isinstance(replied, dict) and isinstance(replied.get("message_id"), int):
            await self.reply(str(chat_id), replied["message_id"], text, answer, update_id)
        else:
            answer("Reply to a notification to answer its sender, or use a command.\n\n" + HELP, html=True)

    # -- replies and /send ---------------------------------------------------------------------------
    async def reply(self, chat: str, tg_message_id: int, text: str, answer: Answer, update_id: int) -> None:
        target = self.rt.state.reply_target(chat, tg_message_id)
        if target is None:
            answer("That message is not a notification about a message, so there is nobody to answer. "
                   "Use /send AGENT text.")
            return
        subject = cut(f"Re: {target.subject}" if target.subject else "reply from the operator", 256)
        await self.send(target.agent, subject, text, answer, update_id, in_reply_to=target.message_id)

    async def send(self, to: str, subject: str, body: str, answer: Answer, update_id: int, *,
                   in_reply_to: str | None = None) -> None:
        """Send a swarmbus message from the operator id (this daemon's connection and outbox when
        it is this agent's id, else ``swarmbus send --agent-id OPERATOR``)."""
        rt, context = self.rt, self.rt.context
        operator = rt.cfg.operator_id or rt.agent_id
        message_id = str(uuid.uuid5(NAMESPACE, f"{rt.agent_id}:{update_id}"))
        if len(body.encode("utf-8")) > 60_000:
            answer("That is too long for one swarmbus message (64 KiB).")
            return
        fields: dict[str, Any] = {"priority": rt.cfg.reply_priority}
        if in_reply_to:
            fields["in_reply_to"] = in_reply_to
        try:
            if operator == rt.agent_id and context is not None:
                sent = await context.send(to, subject, body, id=message_id, **fields)
            else:
                args = ["send", "--agent-id", operator, "--to", to, "--subject", subject, "--body-file", "-",
                        "--priority", rt.cfg.reply_priority, "--json", "--broker", rt.settings.broker.url]
                if in_reply_to:
                    args += ["--in-reply-to", in_reply_to]
                status, out, err = await swarmbus_cli(rt.settings, *args, stdin=body.encode("utf-8"))
                if status != 0:
                    answer(f"Not sent to {code(to, 64)}: {code(_error_line(err), 300)}", html=True)
                    return
                sent = str(json.loads(out).get("id", "?"))
        except (EnvelopeError, ValueError) as exc:
            answer(f"Not sent: {code(str(exc), 300)}", html=True)
            return
        log.info("telegram: the operator sent %s to %s (%s)", sent, to, "a reply" if in_reply_to else "/send")
        answer(f"Sent to {code(to, 64)} as {code(operator, 64)}" + (" (a reply)" if in_reply_to else "")
               + f": {code(sent, 64)}", html=True)

    # -- commands ------------------------------------------------------------------------------------
    async def command(self, text: str, answer: Answer, update_id: int) -> None:
        head, _, rest = text.strip().partition(" ")
        name = head[1:].split("@", 1)[0].lower()
        args = rest.split()
        if name in ("help", "start"):
            answer(HELP, html=True)
        elif name == "status":
            answer(await self.status_text(), html=True)
        elif name == "mute":
            self.mute(args, answer)
        elif name == "unmute":
            self.rt.state.put("mute_until", None)
            answer("Notifications are on again.")
        elif name in ("hold", "release"):
            await self.hold(name, args, answer)
        elif name == "send":
            parts = rest.strip().split(None, 1)
            if len(parts) < 2:
                answer("Usage: /send AGENT text")
                return
            try:
                to = validate_agent_id(parts[0])
            except EnvelopeError:
                answer(f"{code(parts[0], 64)} is not an agent id (1-64 of a-z 0-9 _ -).", html=True)
                return
            first = parts[1].strip().splitlines()[0] if parts[1].strip() else "message from the operator"
            await self.send(to, cut(first, 100), parts[1], answer, update_id)
        else:
            answer(f"Unknown command {code(head, 64)}.\n\n{HELP}", html=True)

    def mute(self, args: list[str], answer: Answer) -> None:
        try:
            seconds = parse_duration(args[0]) if args else self.rt.cfg.mute_default
        except ValueError:
            answer("Usage: /mute [DURATION], e.g. /mute 2h (90s, 10m, 2h, 1d)")
            return
        until = self.rt.clock() + seconds
        self.rt.state.put("mute_until", until)
        answer(f"Notifications muted until {clock(until)} (the digest keeps counting). /unmute ends it.")

    async def hold(self, name: str, args: list[str], answer: Answer) -> None:
        if not args or len(args) > 2 or (name == "release" and len(args) > 1):
            answer(f"Usage: /{name} AGENT" + (" [DURATION]" if name == "hold" else ""))
            return
        try:
            agent = validate_agent_id(args[0])
        except EnvelopeError:
            answer(f"{code(args[0], 64)} is not an agent id (1-64 of a-z 0-9 _ -).", html=True)
            return
        cli = ["policy", name, "--agent-id", agent, "--json"]
        if name == "hold":
            if len(args) == 2:
                try:
                    parse_duration(args[1])
                except ValueError:
                    answer("Usage: /hold AGENT [DURATION], e.g. /hold coder 2h")
                    return
                cli += ["--for", args[1]]
            cli += ["--reason", "from Telegram"]
        status, out, err = await swarmbus_cli(self.rt.settings, *cli)
        if status == 0:
            data = json.loads(out)
            if name == "hold":
                until = (data.get("manual_hold") or {}).get("until")
                answer(f"{code(agent, 64)}: every wake is held " + ("until /release" if until is None else
                                                                    f"until {esc(clock(until))}"), html=True)
            else:
                answer(f"{code(agent, 64)}: wakes are no longer held; {data.get('released', 0)} held message(s) "
                       "asked about again now.", html=True)
        elif "no daemon of" in err:
            answer(f"{code(agent, 64)} is not on this machine: no daemon of it answers here.", html=True)
        else:
            answer(f"/{name} {code(agent, 64)} failed: {code(_error_line(err), 300)}", html=True)

    async def status_text(self) -> str:
        rt = self.rt
        root = AgentPaths.for_agent(rt.agent_id, rt.settings.state_dir).root.parent
        try:
            agents = sorted(p.name for p in root.iterdir() if (p / "store.sqlite3").exists())
        except OSError:
            agents = []
        shown = agents[:MAX_AGENTS]
        results = await asyncio.gather(*(swarmbus_cli(rt.settings, "status", "--agent-id", a, "--json", timeout=15)
                                         for a in shown))
        lines = [f"📊 <b>status</b> from {code(rt.agent_id, 64)}", "<b>Agents on this machine:</b>"]
        items = [_agent_line(agent, status, out) for agent, (status, out, _) in zip(shown, results, strict=True)]
        lines += items or ["(none)"]
        if len(agents) > MAX_AGENTS:
            lines.append(f"… and {len(agents) - MAX_AGENTS} more")
        if rt.cfg.watch and rt.context is not None and rt.context.presence is not None:
            lines.append("<b>Watched:</b>")
            for agent in rt.cfg.watch:
                record = rt.context.presence(agent)
                state = "unknown" if record is None else ("online" if record.get("online") else "offline")
                lines.append(f"• {code(agent, 64)}: {state}")
        muted = rt.muted_until()
        waiting, oldest = rt.state.pending()
        lines.append("<b>Notifications:</b> " + (f"muted until {esc(clock(muted))}" if muted else "on")
                     + (f"; {waiting} waiting since {esc(clock(oldest))}" if waiting else ""))
        return "\n".join(lines)


def _agent_line(agent: str, status: int, out: str) -> str:
    try:
        info = json.loads(out)
    except ValueError:
        return f"• {code(agent, 64)}: status unknown"
    if not info.get("running"):
        return f"• {code(agent, 64)}: not running"
    daemon = info.get("status") or {}
    held = (daemon.get("holds") or {}).get("count", 0)
    words = ["running", "connected" if daemon.get("connected") else "not connected",
             f"{held} held", f"{daemon.get('unread', '?')} unread"]
    manual = daemon.get("manual_hold")
    if manual:
        words.append("wakes held " + ("until /release" if manual.get("until") is None
                                      else f"until {esc(clock(manual['until']))}"))
    return f"• {code(agent, 64)}: " + ", ".join(words)


class Answer:
    """Queues answers to one update (each under its own key, so a second handling adds none)."""

    def __init__(self, rt: Telegram, update_id: int, chat: str, reply_to: int | None) -> None:
        self.rt, self.update_id, self.chat, self.reply_to = rt, update_id, chat, reply_to
        self.count = 0

    def __call__(self, text: str, *, html: bool = False) -> None:
        self.count += 1
        body = text if html else esc(text)
        self.rt.enqueue(f"answer:{self.update_id}:{self.count}", "answer", body, chat=self.chat, answer_to=self.reply_to)

