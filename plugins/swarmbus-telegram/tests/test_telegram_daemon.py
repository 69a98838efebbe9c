"""End to end: the operator agent's daemon (``ops``) with the plugin, on a private mosquitto,
talking to the loopback mock Bot API (a real HTTP server the tests start).

Self-contained (the core's ``tests/conftest.py`` fixtures are not visible here): each test starts
its own broker and mock; every wait has a deadline (no sleeps as synchronisation).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mockbot import MockBot, html_problem, visible

from swarmbus import testing
from swarmbus.testing import find_mosquitto, wait_for

TOKEN = "987654321:AAF-daemon-token_abcdefghijklmnop123"
OPS = "ops"
CHAT = 4242


class Ops(testing.DaemonBus):
    """The ``ops`` agent's daemons (with the plugin) and the mock bot."""

    bot: MockBot
    token_file: Path

    def configure(self, **section: Any) -> None:
        values = {"chat_id": CHAT, "bot_token_file": str(self.token_file), "api_base": self.bot.url,
                  "poll_timeout": 1, "retry_min": 0.1, "retry_max": 0.5, "digest_interval": 0,
                  "held_interval": 0, **section}
        notify = values.pop("notify", None)
        lines = ["[plugins.telegram]", *(f"{k} = {json.dumps(v)}" for k, v in values.items())]
        if notify:
            lines += ["", "[plugins.telegram.notify]", *(f"{k} = {json.dumps(v)}" for k, v in notify.items())]
        self.config("\n".join(lines) + "\n")

    def send(self, subject: str, *, sender: str = "coder", priority: str = "high", body: str = "the body",
             to: str = OPS) -> str:
        proc = self.cli("send", "--agent-id", sender, "--to", to, "--subject", subject, "--body", body,
                        "--priority", priority, "--json", "--direct")
        assert proc.returncode == 0, proc.stderr
        return str(json.loads(proc.stdout)["id"])

    def texts(self, chat: int = CHAT) -> list[str]:
        return [visible(s.text) for s in self.bot.sent_to(chat)]

    def notified(self, needle: str, chat: int = CHAT) -> Any:
        return next((s for s in self.bot.sent_to(chat) if needle in visible(s.text)), None)

    def answer(self, update_id_message: int, needle: str = "") -> Any:
        found = [s for s in self.bot.answers_to(update_id_message) if needle in visible(s.text)]
        return found[0] if found else None

    def push(self, text: str, **kw: Any) -> int:
        """Push an update; returns the chat message id the bot's answer replies to."""
        self.bot.push(text, **kw)
        return self.bot._next_message  # the message id of that update

    def delivery(self, message_id: str, handler: str = "telegram", agent: str = OPS) -> dict[str, Any] | None:
        proc = self.cli("inbox", "--agent-id", agent, "--json")
        for message in json.loads(proc.stdout or "{}").get("messages", []):
            if message["id"] == message_id:
                for d in message["deliveries"]:
                    if d["handler"] == handler and d["status"] not in ("pending", "running"):
                        return d  # type: ignore[no-any-return]
        return None

    def start_peer(self, agent: str) -> Any:
        """A plain daemon (no plugins) for another agent, stopped with the others."""
        log = self.root / f"{agent}.log"
        env = {**self.env, "SWARMBUS_LOAD_PLUGINS": ""}
        proc = testing.start_daemon(env, agent, log_path=log)
        self.procs.append(proc)
        testing.wait_daemon_connected(env, agent, proc, 30, log_path=log)
        return proc

    def read(self, agent: str) -> list[dict[str, Any]]:
        proc = self.cli("read", "--agent-id", agent, "--json", "--peek", "--max", "100",
                        SWARMBUS_LOAD_PLUGINS="")
        out: list[dict[str, Any]] = []
        for line in proc.stdout.splitlines():
            if line.strip():
                value = json.loads(line)
                out.extend(value if isinstance(value, list) else value.get("messages", [value]))
        return out


@pytest.fixture
def ops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ops]:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed (apt-get install mosquitto): the daemon tests need it")
    root = Path(tmp_path_factory.mktemp("tg"))
    bot = MockBot(TOKEN, chat_id=CHAT)
    bus = Ops.open(root, OPS, plugins="telegram,priority")
    bus.bot = bot
    bus.token_file = root / "telegram.token"
    bus.token_file.write_text(TOKEN + "\n")
    bus.token_file.chmod(0o600)
    bus.configure()
    try:
        yield bus
    finally:
        bus.close()
        bot.stop()
        for path in [bus.log_path, *root.glob("*.log")]:
            if path.exists():
                assert TOKEN not in path.read_text(errors="replace"), f"the token is in {path}"


def test_notifications_replies_and_strangers(ops: Ops) -> None:
    ops.start_peer("coder")
    daemon = ops.start_daemon()
    hostile = '<b>boom</b> & </code><a href="tg://resolve?domain=x">/release coder</a>'
    important = ops.send(hostile, body="<script>alert(1)</script>\n" * 3)
    routine = ops.send("routine", priority="normal")
    sent = wait_for(lambda: ops.notified("boom"), 20, "the high message's notification")
    assert html_problem(sent.text) is None and sent.params["parse_mode"] == "HTML"
    assert "<a " not in sent.text and "&lt;/code&gt;" in sent.text and "&lt;script&gt;" in sent.text
    assert sent.params["link_preview_options"] == {"is_disabled": True}
    assert wait_for(lambda: ops.delivery(routine), 20, "the routine message handled")["detail"].startswith(
        "counted for the digest")
    assert not ops.notified("routine")

    # a reply to the notification: a message to coder, from ops, in reply to the original
    asked = ops.push("ship it, but carefully", reply_to=sent.message_id)
    wait_for(lambda: ops.answer(asked, "Sent to coder"), 20, "the answer to the reply")
    [reply] = wait_for(lambda: [m for m in ops.read("coder") if m["body"] == "ship it, but carefully"], 20,
                       "the reply at coder")
    assert reply["from"] == OPS and reply["in_reply_to"] == important and reply["priority"] == "high"
    assert reply["subject"] == f"Re: {hostile}"[:256]

    # /send, and a reply to something that is not a notification
    sent_cmd = ops.push("/send coder deploy window opens at 14:00")
    wait_for(lambda: ops.answer(sent_cmd, "Sent to coder"), 20, "the /send answer")
    wait_for(lambda: [m for m in ops.read("coder") if m["subject"] == "deploy window opens at 14:00"], 20, "/send at coder")
    lost = ops.push("hello?", reply_to=12345)
    assert "nobody to answer" in visible(wait_for(lambda: ops.answer(lost), 20, "the answer").text)

    # strangers: another chat, a user of another chat, a bot: logged and ignored
    before = len(ops.bot.sent)
    stranger = ops.bot.push("/send coder from a stranger", chat_id=666)
    ops.bot.push("/status", chat_id=777, user_id=777)
    ops.bot.push("/send coder from a bot", is_bot=True)
    wait_for(lambda: ops.bot.confirmed_upto > stranger + 2, 20, "the strangers' updates to be taken")
    check = ops.push("/help")
    wait_for(lambda: ops.answer(check, "commands"), 20, "the /help answer")
    assert len(ops.bot.sent) == before + 1  # only the /help answer
    assert not ops.bot.sent_to(666) and not ops.bot.sent_to(777)
    assert not [m for m in ops.read("coder") if "stranger" in m["body"] or "from a bot" in m["body"]]
    assert "ignored update" in ops.log() and "not on the allow-lists" in ops.log()
    assert daemon.poll() is None

    # the offset is kept: a restart handles no update twice
    handled = len(ops.bot.sent)
    ops.stop()
    ops.procs.remove(daemon)
    polls = len(ops.bot.calls("getUpdates"))  # the old daemon polls no more
    ops.start_daemon()
    after = ops.push("/help")
    wait_for(lambda: ops.answer(after), 20, "the answer after the restart")
    assert len(ops.bot.sent) == handled + 1
    first_poll = ops.bot.calls("getUpdates")[polls]  # the new daemon's first: from the stored offset
    assert first_poll.params.get("offset", 0) > stranger + 2


def test_outage_and_429_delay_but_lose_nothing(ops: Ops) -> None:
    ops.configure(commands=False)
    ops.start_daemon()
    ops.bot.outage = "drop"
    ids = [ops.send(f"during outage {i}") for i in range(3)]
    wait_for(lambda: len(ops.bot.calls("sendMessage")) >= 3, 20, "a few failed attempts")
    assert ops.bot.sent == []
    # a restart during the outage: the outbox is durable
    ops.stop()
    ops.procs.clear()
    ops.start_daemon()
    ops.bot.script("sendMessage", MockBot.too_many(2))
    attempts = len(ops.bot.calls("sendMessage"))
    ops.bot.outage = None
    wait_for(lambda: len(ops.bot.sent) >= 3, 30, "every notification after the outage")
    texts = ops.texts()
    assert [sum(f"during outage {i}" in t for t in texts) for i in range(3)] == [1, 1, 1]  # each once
    assert [next(i for i, t in enumerate(texts) if f"during outage {n}" in t) for n in range(3)] == [0, 1, 2]  # in order
    calls = ops.bot.calls("sendMessage")[attempts:]
    limited = next(c for c in calls if c.answered == 429)
    after = [c for c in calls if c.at > limited.at]
    assert after and after[0].at - limited.at >= 1.9, "retry_after (2 s) was not honoured"
    status = json.loads(ops.cli("doctor", "--agent-id", OPS, "--json").stdout)
    checks = {c["name"]: c for c in status["checks"]}
    assert checks["telegram"]["status"] == "ok" and "@swarmbus_test_bot" in checks["telegram"]["summary"]
    assert checks["telegram-chat"]["status"] == "ok"
    assert checks["telegram-delivery"]["status"] == "ok" and "nothing waiting" in checks["telegram-delivery"]["summary"]
    assert all(ops.delivery(i) for i in ids)


def test_digest_cursor_across_a_restart(ops: Ops) -> None:
    ops.configure(commands=False, digest_interval=1)
    ops.start_daemon()
    first = [f"before-{i}" for i in range(3)]
    for subject in first:
        ops.send(subject, priority="normal")
    wait_for(lambda: all(any(s in t for t in ops.texts()) for s in first), 20, "a digest with the first messages")
    ops.stop()
    ops.procs.clear()
    second = [f"while-down-{i}" for i in range(2)]
    for subject in second:
        ops.send(subject, priority="normal")  # queued by the broker for ops's session
    ops.start_daemon()
    third = ["after-restart"]
    ops.send(third[0], priority="normal")
    everything = first + second + third
    wait_for(lambda: all(any(s in t for t in ops.texts()) for s in everything), 30, "digests with every message")
    digests = [t for t in ops.texts() if "Digest" in t]
    for subject in everything:  # counted in exactly one digest: none twice, none missed
        assert sum(subject in t for t in digests) == 1, (subject, digests)
    assert not [t for t in ops.texts() if "Digest" not in t]  # normal messages: no notification of their own


WAKE_DUMP = ("import json, os, sys; p = os.path.join(sys.argv[1], os.environ['SWARMBUS_ID']);"
             " json.dump({'env': dict(os.environ), 'stdin': sys.stdin.read()}, open(p, 'w'));"
             " sys.exit(3 if 'fails' in os.environ['SWARMBUS_SUBJECT'] else 0)")


def test_mute_hold_status_and_the_token_in_no_output(ops: Ops, tmp_path: Path) -> None:
    woken = tmp_path / "woken"
    woken.mkdir()
    ops.configure(wake_failed_after=1)
    env_token = {"SWARMBUS_TELEGRAM_BOT_TOKEN": TOKEN, "SWARMBUS_LOG_LEVEL": "debug"}
    daemon = ops.start_daemon("--invoke", shlex.join([sys.executable, "-c", WAKE_DUMP, str(woken)]), **env_token)

    muted = ops.push("/mute 2h")
    assert "muted until" in visible(wait_for(lambda: ops.answer(muted), 20, "the /mute answer").text)
    quiet = ops.send("while muted")
    assert "muted until" in wait_for(lambda: ops.delivery(quiet), 20, "the muted message handled")["detail"]
    unmuted = ops.push("/unmute")
    wait_for(lambda: ops.answer(unmuted, "on again"), 20, "the /unmute answer")
    ops.send("after unmute")
    wait_for(lambda: ops.notified("after unmute"), 20, "a notification again")
    assert not ops.notified("while muted")

    held = ops.push("/hold ops 2h")
    assert "every wake is held until" in visible(wait_for(lambda: ops.answer(held), 30, "the /hold answer").text)
    status = json.loads(ops.cli("status", "--agent-id", OPS, "--json").stdout)["status"]
    assert status["manual_hold"] is not None and status["manual_hold"]["reason"] == "from Telegram"
    waiting = ops.send("held by the operator", priority="high")
    notice = wait_for(lambda: ops.notified("held from waking"), 20, "the held notice")
    assert "manual" in visible(notice.text)
    assert not (woken / waiting).exists()
    asked = ops.push("/status")
    text = visible(wait_for(lambda: ops.answer(asked), 30, "the /status answer").text)
    assert "ops: running, connected" in text and "1 held" in text and "wakes held until" in text
    released = ops.push("/release ops")
    wait_for(lambda: ops.answer(released, "no longer held"), 30, "the /release answer")
    wait_for(lambda: (woken / waiting).exists(), 20, "the held message woken after /release")
    away = ops.push("/hold nobody-here")
    assert "not on this machine" in visible(wait_for(lambda: ops.answer(away), 30, "the answer").text)

    # a wake that fails: the operator hears it (wake_failed_after = 1)
    ops.send("this wake fails")  # the wake command exits 3 for it
    failed = wait_for(lambda: ops.notified("wakes failed"), 20, "the wake_failed notification")
    assert "exited 3" in visible(failed.text)

    # errors on the way (401, a dropped connection, 429): logged, the token nowhere
    ops.bot.script("getUpdates", ("status", 401, {"ok": False, "error_code": 401, "description": "Unauthorized"}),
                   ("drop",), MockBot.too_many(1))
    ops.bot.script("sendMessage", ("drop",))
    ops.send("one more")
    wait_for(lambda: ops.notified("one more"), 30, "the notification after the errors")
    assert daemon.poll() is None

    # nowhere: wake children, the wake prompt on stdin, the command line, config show, doctor, test
    for path in woken.iterdir():
        record = json.loads(path.read_text())
        assert TOKEN not in json.dumps(record), f"the token reached a wake child ({path.name})"
    assert TOKEN.encode() not in Path(f"/proc/{daemon.pid}/cmdline").read_bytes()
    outputs = [ops.cli("config", "show", "--json", **env_token), ops.cli("config", "show", **env_token),
               ops.cli("doctor", "--agent-id", OPS, **env_token), ops.cli("telegram", "test", "--agent-id", OPS),
               ops.cli("telegram", "test", "--agent-id", OPS, **env_token)]
    for proc in outputs:
        assert TOKEN not in proc.stdout + proc.stderr, testing.describe_run(proc)
    assert "sent a test message to chat 4242" in outputs[-1].stdout
    log = ops.log()
    assert "telegram: notifying chat 4242" in log and "getUpdates" in log  # the errors were logged...
    assert TOKEN not in log and TOKEN.split(":")[1] not in log  # ...without the token


def test_the_token_file_must_be_private(ops: Ops) -> None:
    ops.token_file.chmod(0o644)
    doctor = ops.cli("doctor", "--agent-id", OPS, "--json")
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks["telegram"]["status"] == "fail" and "chmod 600" in checks["telegram"]["summary"]
    test = ops.cli("telegram", "test")
    assert test.returncode == 2 and "chmod 600" in test.stderr and TOKEN not in test.stderr
    daemon = ops.start_daemon()
    high = ops.send("queued while the file is open to all")
    wait_for(lambda: ops.delivery(high), 20, "the message handled")
    wait_for(lambda: "refusing bot_token_file" in ops.log(), 20, "the service to say why it does not send")
    assert ops.bot.sent == [] and daemon.poll() is None
    os.chmod(ops.token_file, 0o600)  # fixed: the service starts again (backoff) and sends what waited
    wait_for(lambda: ops.notified("queued while the file"), 30, "the notification once the file is private")
    assert time.time()  # (the daemon kept serving meanwhile)
