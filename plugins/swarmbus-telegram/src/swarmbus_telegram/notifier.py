"""The plugin at run time, inside one agent's daemon: what it records, what it sends, when.

Intake (synchronous, quick, on the daemon's event loop; never blocks message handling): each
received message (the ``telegram`` handler) is counted for the digest and, when it is worth a
notification (:func:`~swarmbus_telegram.config.notify_verdict`) and nothing is muted, its
notification is queued in the durable outbox (:mod:`swarmbus_telegram.state`); operator events
(``swarmbus_operator_event``) queue theirs the same way, or are recorded (holds).

The ``telegram`` service (``swarmbus_services``) runs three loops:

- the sender: takes the outbox in order and sends each text (split into parts of at most 4096
  characters) with ``sendMessage``; HTTP 429 waits ``retry_after``; an outage or a 5xx is
  retried with backoff (``retry_min`` doubling to ``retry_max``), keeping the order; a text
  Telegram refuses as malformed (400) is sent once more without markup, then kept as dead;
- the ticker (every second): the digest when its interval has passed, the notice of messages
  held since the last one (at most one per ``held_interval``), and watched agents whose daemon
  has been offline for ``offline_after``;
- the poller (``commands = true``): ``getUpdates`` long polls; each update is handled (replies
  and commands: :mod:`swarmbus_telegram.chat`), then the offset is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from swarmbus import HandlerContext, OperatorEvent, Settings, StoredMessage
from swarmbus_telegram import redact
from swarmbus_telegram.botapi import BotApi, Refused, RetryAfter, TelegramError, Unavailable
from swarmbus_telegram.config import Secrets, TelegramSettings, config, load_secrets, notify_verdict
from swarmbus_telegram.state import Entry, State, state_path
from swarmbus_telegram.text import clock, code, esc, listing, plain, split_html

log = logging.getLogger("swarmbus.telegram")
TICK = 1.0
"""Seconds between the ticker's checks (digest, held notices, offline agents)."""


class SetupError(Exception):
    """The plugin is configured but cannot run (no token, a secrets file others can read, ...)."""


# -- texts ---------------------------------------------------------------------------------------
PRIORITY_MARK = {"high": "🔴", "normal": "🔵", "low": "⚪"}


def message_text(message: StoredMessage, agent_id: str, body_chars: int) -> str:
    """The notification of ``message`` (HTML; every peer-supplied field escaped, in ``<code>``
    or ``<pre>``)."""
    e = message.envelope
    lines = [f"{PRIORITY_MARK.get(e.priority, '🔵')} <b>{esc(e.priority, 32)}</b> message for {code(e.to, 64)} "
             f"from {code(e.from_agent, 64)}",
             f"<b>Subject:</b> {code(e.subject, 256) if e.subject else '<i>(none)</i>'}"]
    if e.body and body_chars:
        lines.append(f"<pre>{esc(e.body, body_chars)}</pre>")
    if e.in_reply_to:
        lines.append(f"<i>in reply to</i> {code(e.in_reply_to, 80)}")
    lines.append(f"<i>Reply to this message to answer {esc(e.from_agent, 64)} (as {esc(agent_id, 64)}).</i>")
    return "\n".join(lines)


def wake_failed_text(event: OperatorEvent) -> str:
    return (f"⚠️ {code(event.agent, 64)}: the last {event.count} wakes failed\n"
            f"latest: {code(event.detail, 500)}\n"
            f"<i>swarmbus inbox --agent-id {esc(event.agent, 64)}</i>")


def loop_guard_text(event: OperatorEvent) -> str:
    return (f"🔁 loop guard: {code(event.agent, 64)} holds the messages of {code(event.peer or '?', 64)} "
            f"until {esc(clock(event.until))}\n{code(event.detail, 500)}\n"
            f"<i>send {esc(event.agent, 64)} a message to let the exchange go on</i>")


def held_text(agent_id: str, rows: Sequence[Mapping[str, Any]]) -> str:
    lines = [f"⏸ {len(rows)} message{'s' if len(rows) != 1 else ''} held from waking {code(agent_id, 64)}:"]
    items = [f"• from {code(r['sender'], 64)} by {code(r['rule'], 40)} until {esc(clock(r['until']))}: "
             f"{code(r['reason'], 160)}" for r in rows]
    lines += listing(items, 10, "… and {n} more")
    lines.append(f"<i>swarmbus inbox --agent-id {esc(agent_id, 64)} shows each</i>")
    return "\n".join(lines)


def offline_text(agent: str, since: float, reason: str | None) -> str:
    why = f" ({code(reason, 120)})" if reason else ""
    return f"🔌 the daemon of {code(agent, 64)} is offline since {esc(clock(since))}{why}"


def online_text(agent: str) -> str:
    return f"✅ the daemon of {code(agent, 64)} is back online"


def digest_text(agent_id: str, since: float | None, arrivals: Sequence[Mapping[str, Any]],
                holds: Sequence[Mapping[str, Any]]) -> str | None:
    """The digest of ``arrivals`` and ``holds`` (None when both are empty: nothing to say)."""
    if not arrivals and not holds:
        return None
    by_sender: dict[str, list[str]] = defaultdict(list)
    for row in arrivals:
        by_sender[row["sender"]].append(row["subject"])
    start = f" since {esc(clock(since))}" if since else ""
    lines = [f"📋 <b>Digest</b> for {code(agent_id, 64)}{start}: {len(arrivals)} message"
             f"{'s' if len(arrivals) != 1 else ''} from {len(by_sender)} sender{'s' if len(by_sender) != 1 else ''}"]
    senders = sorted(by_sender.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    items = []
    for sender, subjects in senders:
        shown = ", ".join(code(s, 60) for s in subjects[:5]) + (f" and {len(subjects) - 5} more" if len(subjects) > 5 else "")
        items.append(f"• {code(sender, 64)}: {len(subjects)} — {shown}")
    lines += listing(items, 20, "… and {n} more senders")
    if holds:
        rules = Counter(r["rule"] for r in holds)
        ends = [r["until"] for r in holds if r["until"]]
        lines.append(f"⏸ held: {len(holds)} (" + ", ".join(f"{code(rule, 40)}: {n}" for rule, n in rules.most_common())
                     + (f"; the last until {esc(clock(max(ends)))}" if ends else "") + ")")
    return "\n".join(lines)


def _iso(ts: Any) -> float | None:
    if not isinstance(ts, str):
        return None
    try:
        return datetime.fromisoformat(ts).timestamp()
    except ValueError:
        return None


# -- the runtime ---------------------------------------------------------------------------------
class Telegram:
    """The plugin for one daemon (see the module docstring).

    :param env: where ``SWARMBUS_TELEGRAM_*`` come from (default ``os.environ``).
    :param clock: Unix seconds (tests inject one).
    """

    def __init__(self, settings: Settings, agent_id: str, *, env: Mapping[str, str] | None = None,
                 clock: Any = time.time) -> None:
        self.settings = settings
        self.cfg: TelegramSettings = config(settings)
        self.agent_id = agent_id
        self.env = os.environ if env is None else env
        self.clock = clock
        self._state: State | None = None
        self.context: HandlerContext | None = None
        self.secrets: Secrets | None = None
        self.api: BotApi | None = None
        self._outbox_ready: asyncio.Event | None = None
        self._tick_now: asyncio.Event | None = None
        self._offline: dict[str, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"Telegram(agent_id={self.agent_id!r})"

    @property
    def state(self) -> State:
        if self._state is None:
            self._state = State(state_path(self.settings, self.agent_id))
        return self._state

    def close(self) -> None:
        if self._state is not None:
            self._state.close()
            self._state = None

    # -- intake --------------------------------------------------------------------------------------
    def muted_until(self) -> float | None:
        until = self.state.get("mute_until")
        return float(until) if until is not None and float(until) > self.clock() else None

    def _queued(self) -> None:
        if self._outbox_ready is not None:
            self._outbox_ready.set()

    def enqueue(self, key: str, kind: str, text: str, **fields: Any) -> bool:
        queued = self.state.enqueue(key, kind, text, now=self.clock(), **fields)
        self._queued()
        return queued

    def on_message(self, message: StoredMessage) -> str:
        """Count ``message`` for the digest and queue its notification when it is worth one;
        returns the detail recorded with the ``telegram`` delivery."""
        if message.from_agent == self.agent_id:
            return "not counted: this agent's own message"
        self.state.record_arrival(message.id, message.from_agent, message.subject, message.priority, message.received_at)
        verdict = notify_verdict(message, self.cfg)
        if verdict.action != "allow":
            return f"counted for the digest ({verdict.reason})"
        muted = self.muted_until()
        if muted is not None:
            return f"counted for the digest (notifications muted until {clock(muted)})"
        queued = self.enqueue(f"message:{message.id}", "message",
                              message_text(message, self.agent_id, self.cfg.notify.body_chars),
                              reply_agent=message.from_agent, reply_message_id=message.id,
                              reply_subject=message.subject)
        return f"notification queued ({verdict.reason})" if queued else "notification already queued"

    def on_event(self, event: OperatorEvent) -> None:
        """Record or queue what an operator event says (quick: one small local write)."""
        if event.kind == "held":
            self.state.record_held(event.message_id, event.peer or "?", event.rule or "?", event.until, event.detail,
                                   event.at)
            self._tick()
            return
        if event.kind in ("peer_online", "peer_offline"):
            self._tick()
            return
        if self.muted_until() is not None:
            return
        if event.kind == "wake_failed" and event.count == self.cfg.wake_failed_after:
            self.enqueue(f"wake_failed:{event.agent}:{event.at}", "wake_failed", wake_failed_text(event))
        elif event.kind == "loop_guard":
            self.enqueue(f"loop_guard:{event.agent}:{event.peer}:{event.until}", "loop_guard", loop_guard_text(event))

    def _tick(self) -> None:
        if self._tick_now is not None:
            self._tick_now.set()

    # -- the service ---------------------------------------------------------------------------------
    async def run(self, context: HandlerContext) -> None:
        """The ``telegram`` service: sender, ticker and (with ``commands``) poller, until cancelled.

        :raises SetupError: no usable token or chat id (the daemon logs it and tries again later).
        """
        self.context = context
        self.secrets = secrets = load_secrets(self.cfg, self.env)
        if secrets.token is None or secrets.chat_id is None:
            raise SetupError("notifications are queued but not sent: " + "; ".join(secrets.problems))
        for problem in secrets.problems:
            log.warning("telegram: %s", problem)
        remove = redact.install(secrets.token)
        self._outbox_ready, self._tick_now = asyncio.Event(), asyncio.Event()
        self.api = BotApi(secrets.token, self.cfg.api_base)
        try:
            if self.cfg.watch and context.watch_presence is not None:
                context.watch_presence(self.cfg.watch)
            log.info("telegram: notifying chat %s through %s (commands %s)", secrets.chat_id, self.cfg.api_base,
                     "on" if self.cfg.commands else "off")
            async with asyncio.TaskGroup() as group:
                group.create_task(self._sender(), name="telegram-sender")
                group.create_task(self._ticker(), name="telegram-ticker")
                if self.cfg.commands:
                    from swarmbus_telegram.chat import Chat

                    group.create_task(self._poller(Chat(self)), name="telegram-poller")
        finally:
            api, self.api = self.api, None
            with contextlib.suppress(Exception):
                await api.aclose()
            self._outbox_ready = self._tick_now = None
            remove()

    async def _wait(self, event: asyncio.Event | None, timeout: float) -> None:
        if event is None:
            await asyncio.sleep(timeout)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, timeout)):
                await event.wait()
        event.clear()

    # -- the sender ----------------------------------------------------------------------------------
    async def _sender(self) -> None:
        cfg = self.cfg
        delay = cfg.retry_min
        while True:
            now = self.clock()
            entry = self.state.next_due(now)
            if entry is None:
                due = self.state.next_wake()
                await self._wait(self._outbox_ready, 60.0 if due is None else min(60.0, due - now))
                continue
            try:
                await self.deliver(entry)
                delay = cfg.retry_min
            except RetryAfter as exc:
                log.warning("telegram: %s; waiting %gs", exc, exc.seconds)
                self.state.failed(entry, str(exc), now, now + exc.seconds)
                await asyncio.sleep(exc.seconds)
            except Refused as exc:
                if exc.status == 400 and not entry.plain:
                    log.warning("telegram: %s; sending it again without markup", exc)
                    self.state.use_plain(entry, str(exc))
                elif exc.status == 400:
                    log.error("telegram: %s; giving up on %s (kept in the outbox)", exc, entry.key)
                    self.state.dead(entry, str(exc), now)
                else:
                    log.error("telegram: %s; trying again in %gs (check the token and the chat: swarmbus doctor)",
                              exc, delay)
                    self.state.failed(entry, str(exc), now, now + delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, cfg.retry_max)
            except TelegramError as exc:
                log.warning("telegram: %s; trying again in %gs (%d waiting)", exc, delay, self.state.pending()[0])
                self.state.failed(entry, str(exc), now, now + delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, cfg.retry_max)

    def _chat_of(self, entry: Entry) -> tuple[str, int | str]:
        assert self.secrets is not None and self.secrets.chat_id is not None
        chat = entry.chat or str(self.secrets.chat_id)
        return chat, int(chat) if chat.lstrip("-").isdigit() else chat

    async def deliver(self, entry: Entry) -> None:
        """Send ``entry``'s parts not sent yet, recording each, then the entry as sent.

        :raises TelegramError: a part could not be sent (the parts before it stay sent)."""
        assert self.api is not None
        chat, chat_id = self._chat_of(entry)
        if entry.plain:
            import html

            parts = [html.unescape(p) for p in split_html(html.escape(plain(entry.text), quote=False))]
        else:
            parts = split_html(entry.text)
        for i in range(entry.parts_sent, len(parts)):
            result = await self.api.send_message(chat_id, parts[i], html=not entry.plain,
                                                 reply_to=entry.answer_to if i == 0 else None)
            tg_id = result.get("message_id")
            self.state.part_sent(entry, i + 1, chat, tg_id if isinstance(tg_id, int) else None)
        self.state.sent(entry, self.clock())

    # -- the ticker ----------------------------------------------------------------------------------
    async def _ticker(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("telegram: a periodic check failed; trying again in %gs", TICK)
            await self._wait(self._tick_now, TICK)

    def tick(self) -> None:
        """Queue the digest, the held notice and the offline notices that are due now."""
        now, cfg = self.clock(), self.cfg
        muted = self.muted_until() is not None
        if cfg.digest_interval > 0 and not muted:
            last = self.state.get("digest_last_at")
            if last is None:
                self.state.put("digest_last_at", now)
            elif now - float(last) >= cfg.digest_interval and self.state.digest(
                    lambda a, h: digest_text(self.agent_id, float(last), a, h), now):
                self._queued()
        held_due = now - float(self.state.get("held_last_at", 0.0)) >= cfg.held_interval
        if cfg.notify_held and not muted and held_due and self.state.take(
                "held_notice", "held", self._held_notice, stamp=("held_last_at", now)):
            self._queued()
        if cfg.watch and self.context is not None and self.context.presence is not None:
            for agent in cfg.watch:
                self._watch(agent, self.context.presence(agent), now, muted)

    def _held_notice(self, rows: list[Any]) -> tuple[str, str, str] | None:
        if not rows:
            return None
        return f"held:{rows[0]['n']}:{rows[-1]['n']}", "held", held_text(self.agent_id, rows)

    def _watch(self, agent: str, record: dict[str, Any] | None, now: float, muted: bool) -> None:
        if record is None:
            return
        episode = f"{agent}:{record.get('instance')}:{record.get('ts')}"
        seen = self._offline.get(agent)
        if not record.get("online"):
            if seen is None or seen["episode"] != episode:
                since = _iso(record.get("last_seen")) or _iso(record.get("ts")) or now
                seen = self._offline[agent] = {"episode": episode, "since": since, "told": False}
            if not seen["told"] and not muted and now - seen["since"] >= self.cfg.offline_after:
                self.enqueue(f"offline:{episode}", "offline", offline_text(agent, seen["since"], record.get("reason")))
                seen["told"] = True
        elif seen is not None:
            del self._offline[agent]
            if seen["told"] and not muted:
                self.enqueue(f"online:{episode}", "online", online_text(agent))

    # -- the poller ----------------------------------------------------------------------------------
    async def _poller(self, chat: Any) -> None:
        assert self.api is not None
        delay = self.cfg.retry_min
        while True:
            offset = self.state.get("offset")
            try:
                updates = await self.api.get_updates(offset, self.cfg.poll_timeout)
                delay = self.cfg.retry_min
            except RetryAfter as exc:
                log.warning("telegram: %s; waiting %gs", exc, exc.seconds)
                await asyncio.sleep(exc.seconds)
                continue
            except (Unavailable, Refused) as exc:
                log.warning("telegram: reading the chat failed: %s; trying again in %gs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.cfg.retry_max)
                continue
            for update in sorted(updates, key=lambda u: u.get("update_id") if isinstance(u.get("update_id"), int) else -1):
                update_id = update.get("update_id")
                if not isinstance(update_id, int) or isinstance(update_id, bool) or (
                        offset is not None and update_id < int(offset)):
                    continue
                try:
                    await chat.handle(update)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("telegram: handling update %d failed; skipped", update_id)
                self.state.put("offset", update_id + 1)
