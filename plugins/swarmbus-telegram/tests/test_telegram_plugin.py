"""swarmbus-telegram without a daemon: escaping and splitting (with hypothesis), what is worth a
notification, the secrets and their file mode, the Bot API client against the loopback mock
(429 with retry_after, an outage, errors without the token), the durable outbox and digest
cursor, and the hooks through a fresh plugin manager."""

from __future__ import annotations

import asyncio
import html
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mockbot import MockBot, html_problem, utf16_len, visible

import swarmbus_telegram
from swarmbus import (
    HandlerContext,
    HookRelay,
    OperatorEvent,
    Settings,
    StoredMessage,
    get_plugin_manager,
    new_envelope,
)
from swarmbus_telegram import redact
from swarmbus_telegram.botapi import BotApi, Refused, RetryAfter, Unavailable, call_sync
from swarmbus_telegram.config import (
    Secret,
    SecretsError,
    TelegramSettings,
    load_secrets,
    notify_verdict,
    parse_duration,
    read_secrets_file,
)
from swarmbus_telegram.notifier import Telegram, digest_text, message_text
from swarmbus_telegram.state import State
from swarmbus_telegram.text import LIMIT, esc, split_html, strip_tags, ulen

TOKEN = "123456789:AAH-test-token_0123456789abcdefXYZ"
ME = "ops"
HOSTILE = ('<script>alert(1)</script> & <b>bold</b> </pre></code><a href="tg://x">tap</a> /release coder '
           "@everyone &amp; &#x3c; \u202eevil\u202c 😀")
BODY = HOSTILE + " \x1b[31m red \t tab \x00"


def stored(subject: str = "hello", *, sender: str = "coder", priority: str = "normal", body: str = "the body",
           seq: int = 1, **fields: Any) -> StoredMessage:
    return StoredMessage(seq, new_envelope(sender, ME, subject, body, priority=priority, **fields),
                         f"agents/{ME}/inbox", time.time())


def settings_with(tmp_path: Path, **section: Any) -> Settings:
    s = Settings.model_validate({"agent_id": ME, "state_dir": str(tmp_path / "state")})
    s.plugins["telegram"] = TelegramSettings.model_validate({"chat_id": 4242, **section})
    return s


@pytest.fixture
def bot() -> Any:
    mock = MockBot(TOKEN)
    yield mock
    mock.stop()


# -- escaping and splitting ---------------------------------------------------------------------------
def test_hostile_fields_are_escaped_and_inert() -> None:
    message = stored(HOSTILE[:200], body=BODY * 3, priority="high")
    text = message_text(message, ME, 600)
    assert html_problem(text) is None, text  # Telegram's parser accepts it
    assert "<script>" not in text and "<a " not in text and "</pre></code>" not in text.split("<pre>", 1)[0]
    for tag in re.findall(r"</?([a-z-]+)", text):
        assert tag in ("b", "i", "code", "pre"), tag  # only the template's own markup
    shown = visible(text)
    assert "<script>alert(1)</script>" in shown and "\u202e" not in shown and "\x1b" not in shown
    # every peer field sits in <code> or <pre>: no tappable /command, mention or link from a peer
    outside = re.sub(r"<(code|pre)>.*?</\1>", "", text, flags=re.S)
    assert "/release" not in outside and "@everyone" not in outside and "script" not in outside


def test_split_keeps_every_part_valid_and_nothing_lost() -> None:
    body = "\n".join(f"line {i}: " + "<&>" * 20 + " word" * 30 for i in range(120))
    markup = f"<b>head</b>\n<pre>{esc(body)}</pre>\n<i>tail</i>"
    parts = split_html(markup)
    assert len(parts) >= 3
    for part in parts:
        assert ulen(part) <= LIMIT and html_problem(part) is None, part[:200]
    assert "".join(strip_tags(p) for p in parts) == strip_tags(markup)
    assert split_html("<b>short</b>") == ["<b>short</b>"]
    assert split_html("<b> </b>") == []


@settings(max_examples=150, deadline=None)
@given(st.text(min_size=0, max_size=3000), st.text(max_size=300), st.integers(min_value=40, max_value=600))
def test_split_properties(body: str, subject: str, limit: int) -> None:
    markup = f"<b>{esc(subject, 256)}</b>\n<pre>{esc(body)}</pre>\n<code>{esc(subject)}</code> end"
    assert html_problem(markup) is None
    parts = split_html(markup, limit)
    for part in parts:
        assert ulen(part) <= limit, (limit, part)
        assert html_problem(part) is None, part
        assert strip_tags(part).strip()
    # nothing visible is lost but whitespace at a split
    squeeze = lambda t: re.sub(r"\s+", "", t)  # noqa: E731
    assert squeeze("".join(strip_tags(p) for p in parts)) == squeeze(strip_tags(markup))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=500), st.integers(min_value=1, max_value=300))
def test_esc_properties(value: str, limit: int) -> None:
    out = esc(value, limit)
    assert "<" not in out and ">" not in out
    assert html_problem(out) is None
    assert len(html.unescape(out)) <= limit
    out.encode("utf-8")  # no lone surrogates: Telegram takes UTF-8 only


def test_digest_text() -> None:
    rows = [{"sender": "coder", "subject": f"s{i}"} for i in range(7)] + [{"sender": "<evil>", "subject": "<b>"}]
    held = [{"rule": "quiet_hours", "until": time.time() + 60}]
    text = digest_text(ME, time.time() - 3600, rows, held)
    assert text is not None and html_problem(text) is None
    assert "8 messages from 2 senders" in visible(text) and "and 2 more" in visible(text)
    assert "quiet_hours" in visible(text) and "&lt;evil&gt;" in text
    assert digest_text(ME, None, [], []) is None


# -- what is worth a notification ------------------------------------------------------------------
def test_notify_rules() -> None:
    cfg = TelegramSettings.model_validate({"notify": {"priorities": ["high"], "senders": ["ci-*"],
                                                      "subjects": [r"^deploy"], "deny_senders": ["noisy"]}})
    assert notify_verdict(stored(priority="high"), cfg).action == "allow"
    assert notify_verdict(stored(priority="normal"), cfg).action == "skip"
    assert notify_verdict(stored(sender="ci-bot"), cfg).reason == "sender ci-bot is on notify.senders"
    assert notify_verdict(stored("deploy prod"), cfg).action == "allow"
    assert notify_verdict(stored(priority="high", sender="noisy"), cfg).action == "skip"
    assert notify_verdict(stored(priority="high"), TelegramSettings()).action == "allow"  # the default
    with pytest.raises(ValueError, match="not a valid regular expression"):
        TelegramSettings.model_validate({"notify": {"subjects": ["("]}})
    assert parse_duration("2h") == 7200 and parse_duration(0, zero=True) == 0
    with pytest.raises(ValueError):
        parse_duration("soon")


# -- secrets ----------------------------------------------------------------------------------------
def test_secrets_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"{TOKEN}\n")
    path.chmod(0o644)
    with pytest.raises(SecretsError, match=r"mode is 0644.*chmod 600") as err:
        read_secrets_file(path)
    assert TOKEN not in str(err.value)
    cfg = TelegramSettings.model_validate({"bot_token_file": str(path), "chat_id": 4242})
    secrets = load_secrets(cfg, env={})
    assert secrets.token is None and any("chmod 600" in p for p in secrets.problems)
    path.chmod(0o600)
    secrets = load_secrets(cfg, env={})
    assert secrets.token == Secret(TOKEN) and secrets.problems == [] and secrets.chat_id == 4242
    assert TOKEN not in repr(secrets) and TOKEN not in str(secrets.token)
    path.write_text(f"# swarmbus\nbot_token={TOKEN}\nchat_id=-100123\n")
    both = load_secrets(TelegramSettings.model_validate({"bot_token_file": str(path)}), env={})
    assert both.token == Secret(TOKEN) and both.chat_id == -100123
    env = load_secrets(cfg, env={"SWARMBUS_TELEGRAM_BOT_TOKEN": "42:" + "x" * 30, "SWARMBUS_TELEGRAM_CHAT_ID": "7"})
    assert env.token_source == "env:SWARMBUS_TELEGRAM_BOT_TOKEN" and env.chat_id == 7
    none = load_secrets(TelegramSettings(), env={})
    assert none.token is None and any("no bot token" in p for p in none.problems)


# -- the Bot API client ----------------------------------------------------------------------------------
def test_bot_api_errors_never_carry_the_token(bot: MockBot) -> None:
    async def main() -> None:
        api = BotApi(Secret(TOKEN), bot.url, timeout=5)
        assert TOKEN not in repr(api)
        bot.script("sendMessage", MockBot.too_many(3), ("drop",), ("status", 502, {"ok": False}),
                   ("status", 403, {"ok": False, "error_code": 403, "description": f"Forbidden: bot{TOKEN} blocked"}))
        with pytest.raises(RetryAfter) as too_many:
            await api.send_message(4242, "x")
        assert too_many.value.seconds == 3
        with pytest.raises(Unavailable) as dropped:
            await api.send_message(4242, "x")
        with pytest.raises(Unavailable) as bad_gateway:
            await api.send_message(4242, "x")
        with pytest.raises(Refused) as refused:
            await api.send_message(4242, "x")
        assert refused.value.status == 403
        for exc in (too_many.value, dropped.value, bad_gateway.value, refused.value):
            assert TOKEN not in str(exc) and exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)
        sent = await api.send_message(4242, "<b>ok</b>")
        assert sent["message_id"] == bot.sent_to()[-1].message_id
        await api.aclose()
        nowhere = BotApi(Secret(TOKEN), "http://127.0.0.1:9", timeout=2)  # nothing listens on port 9
        with pytest.raises(Unavailable) as unreachable:
            await nowhere.send_message(1, "x")
        assert TOKEN not in str(unreachable.value)
        await nowhere.aclose()

    asyncio.run(main())
    with pytest.raises(Refused) as wrong:
        call_sync(Secret("1:" + "z" * 30), bot.url, "getMe")
    assert wrong.value.status == 401 and "z" * 30 not in str(wrong.value)
    assert call_sync(Secret(TOKEN), bot.url, "getMe")["username"] == "swarmbus_test_bot"


def test_redactor_scrubs_any_record(caplog: pytest.LogCaptureFixture) -> None:
    handler = logging.StreamHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep()
    root.addHandler(keep)
    remove = redact.install(Secret(TOKEN))
    try:
        logging.getLogger("httpx").warning("HTTP Request: POST http://x/bot%s/getMe", TOKEN)
        try:
            raise RuntimeError(f"url http://x/bot{TOKEN}/sendMessage")
        except RuntimeError:
            logging.getLogger("other").exception("failed")
    finally:
        remove()
        root.removeHandler(handler)
        root.removeHandler(keep)
    assert len(records) == 2
    for record in records:
        text = record.getMessage() + (record.exc_text or "")
        assert TOKEN not in text and "<token>" in text


# -- the durable state -----------------------------------------------------------------------------
def test_state_file_is_private_and_the_outbox_dedupes(tmp_path: Path) -> None:
    state = State(tmp_path / "agent" / "telegram.sqlite3")
    assert (os.stat(state.path).st_mode & 0o777) == 0o600
    assert state.enqueue("message:1", "message", "<b>a</b>", now=10)
    assert not state.enqueue("message:1", "message", "<b>again</b>", now=11)
    entry = state.next_due(10)
    assert entry is not None and entry.text == "<b>a</b>"
    state.failed(entry, "down", 10, 20)
    assert state.next_due(15) is None and state.next_wake() == 20
    assert state.record_arrival("m1", "coder", "s", "normal", 1)
    assert not state.record_arrival("m1", "coder", "s", "normal", 1)  # counted once
    state.record_arrival("m2", "coder", "t", "normal", 2)
    seen: list[list[str]] = []
    assert state.digest(lambda a, h: seen.append([r["message_id"] for r in a]) or "digest", 100)  # type: ignore[func-returns-value]
    assert not state.digest(lambda a, h: None if not a else "x", 200)
    assert seen == [["m1", "m2"]]
    state.close()


def test_runtime_splits_long_texts_and_maps_replies(tmp_path: Path, bot: MockBot) -> None:
    settings = settings_with(tmp_path, api_base=bot.url, notify={"body_chars": 3500})
    rt = Telegram(settings, ME, env={"SWARMBUS_TELEGRAM_BOT_TOKEN": TOKEN})
    long = stored("big", priority="high", body=("<&> " * 600 + "\n") * 5)
    assert rt.on_message(long).startswith("notification queued")
    assert rt.on_message(stored("small", seq=2)).startswith("counted for the digest")
    rt.state.enqueue("digest:x", "digest", "<b>d</b>\n" + "\n".join(f"<code>{esc('x' * 50)}</code>" for _ in range(300)))

    async def main() -> None:
        rt.secrets = load_secrets(rt.cfg, rt.env)
        rt.api = BotApi(rt.secrets.token, bot.url)  # type: ignore[arg-type]
        while (entry := rt.state.next_due(time.time())) is not None:
            await rt.deliver(entry)
        await rt.api.aclose()

    asyncio.run(main())
    sent = bot.sent_to(4242)
    assert len(sent) >= 4
    assert all(utf16_len(visible(s.text)) <= 4096 and html_problem(s.text) is None for s in sent)
    first = sent[0]
    target = rt.state.reply_target("4242", first.message_id)
    assert target is not None and target.agent == "coder" and target.message_id == long.id
    rt.close()


def test_operator_events_become_notifications(tmp_path: Path) -> None:
    rt = Telegram(settings_with(tmp_path, wake_failed_after=2), ME, env={})
    now = time.time()
    for count in (1, 2, 3):
        rt.on_event(OperatorEvent("wake_failed", ME, now + count, "notify exited 3", peer="coder", count=count))
    rt.on_event(OperatorEvent("loop_guard", ME, now, "loop guard: 9 messages", peer="chatty", until=now + 60))
    rt.on_event(OperatorEvent("held", ME, now, "quiet hours", peer="coder", until=now + 60, rule="quiet_hours",
                              message_id="m1"))
    rt.tick()  # the held notice (held_interval passed: none went before)
    kinds = [e.kind for e in iter(lambda: _pop(rt), None)]
    assert kinds == ["wake_failed", "loop_guard", "held"]
    rt.close()


def _pop(rt: Telegram) -> Any:
    entry = rt.state.next_due(time.time() + 1)
    if entry is not None:
        rt.state.sent(entry, time.time())
    return entry


# -- the hooks through a fresh plugin manager ----------------------------------------------------------
def test_hooks_register_only_when_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWARMBUS_TELEGRAM_BOT_TOKEN", raising=False)
    monkeypatch.delenv("SWARMBUS_TELEGRAM_CHAT_ID", raising=False)
    pm = get_plugin_manager(entry_points=False, env={})
    pm.register(swarmbus_telegram, name="telegram")
    relay = HookRelay(pm)
    assert relay.settings_sections()["telegram"] is TelegramSettings
    bare = Settings()
    assert "telegram" not in relay.handlers(bare)
    configured = settings_with(tmp_path)
    handlers = relay.handlers(configured)
    assert "telegram" in handlers and "telegram" in relay.route(stored(), frozenset(handlers), configured)

    async def no_send(*args: Any, **kwargs: Any) -> str:
        return "x"

    context = HandlerContext(ME, configured, logging.getLogger("t"), no_send, relay)
    [service] = relay.services(context)
    assert service.name == "telegram"
    assert relay.services(HandlerContext(ME, bare, logging.getLogger("t"), no_send, relay)) == []
    checks = [c.name for c in relay.doctor_checks(configured)]
    assert checks[-3:] == ["telegram", "telegram-chat", "telegram-delivery"]
    assert "telegram" in relay.commands()
    detail = asyncio.run(handlers["telegram"].handle(stored(priority="high"), context))
    assert detail.startswith("notification queued (priority is high)")
