"""``[plugins.telegram]``: where notifications go, what is worth one, who may answer, and the
secrets (the bot token and the chat id) with where they come from.

Secrets: the bot token comes from ``SWARMBUS_TELEGRAM_BOT_TOKEN`` or from ``bot_token_file``;
the chat id from ``SWARMBUS_TELEGRAM_CHAT_ID``, ``chat_id`` or the same file. The file must be
private to this user (mode 0600 or 0400: no permission for group or others) and holds either
the token alone, or ``bot_token=...`` and ``chat_id=...`` lines. The token is kept in a
:class:`Secret`, whose ``repr`` and ``str`` never show it, and is never part of the settings
model (``swarmbus config show`` shows the file's path, not its content).
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from swarmbus import EnvelopeError, Settings, StoredMessage, Verdict, combine_verdicts, validate_agent_id

NAME = "telegram"
"""The plugin's name: its entry-point name and its settings section ``[plugins.telegram]``."""
TOKEN_ENV = "SWARMBUS_TELEGRAM_BOT_TOKEN"  # noqa: S105 - the variable's name, not a token
CHAT_ENV = "SWARMBUS_TELEGRAM_CHAT_ID"
DEFAULT_API = "https://api.telegram.org"
"""The public Bot API (https://core.telegram.org/bots/api#making-requests)."""

_DURATION_RE = re.compile(r"\A\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*\Z")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any, *, zero: bool = False) -> float:
    """``"90s"``, ``"10m"``, ``"2h"``, ``"1d"`` or a number of seconds, to seconds (``zero``:
    0 is allowed, meaning off). :raises ValueError: anything else."""
    if isinstance(value, bool):
        raise ValueError(f"a duration like 10m, 2h or 30s, not {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(str(value))
        if match is None:
            raise ValueError(f"a duration like 10m, 2h or 30s, not {value!r}")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not (0 <= seconds < float("inf")) or (seconds == 0 and not zero):
        raise ValueError(f"a duration must be more than 0 seconds, not {value!r}")
    return seconds


class Secret:
    """A secret string whose ``repr``/``str`` are ``********``; :meth:`reveal` gives it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class SecretsError(Exception):
    """A secrets file cannot be used (missing, not private, unreadable): the message says why
    and how to fix it, and never holds the secret."""


class NotifySettings(BaseModel):
    """``[plugins.telegram.notify]``: which messages are pushed one by one (the others are only
    counted in the digest). A message is pushed when its priority is in ``priorities``, or its
    sender matches ``senders``, or its subject matches ``subjects``, unless its sender matches
    ``deny_senders`` (any veto wins, as in the wake chain)."""

    model_config = ConfigDict(extra="forbid")

    priorities: list[str] = Field(default_factory=lambda: ["high"])
    senders: list[str] = Field(default_factory=list)
    """``fnmatch`` patterns on the sender's agent id (``ci-*``)."""
    subjects: list[str] = Field(default_factory=list)
    """Regular expressions searched in the subject."""
    deny_senders: list[str] = Field(default_factory=list)
    """``fnmatch`` patterns: never pushed (still counted in the digest)."""
    body_chars: int = Field(default=600, ge=0, le=3500)
    """How much of the body a notification shows (characters; the rest is cut with ``…``)."""

    @field_validator("subjects")
    @classmethod
    def _regexes(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from None
        return value


class TelegramSettings(BaseModel):
    """``[plugins.telegram]`` in the config file. Nothing happens until a chat id (and a token)
    are configured."""

    model_config = ConfigDict(extra="forbid")

    chat_id: int | str | None = None
    """Where notifications go: a numeric chat id (``-100...`` for a group) or ``@channel``."""
    bot_token_file: Path | None = None
    """A file private to this user (0600) with the bot token (or ``bot_token=`` and ``chat_id=`` lines)."""
    api_base: str = DEFAULT_API
    """The Bot API server: the public one, a self-hosted one, or a test's mock."""
    operator_id: str | None = None
    """The agent id replies and ``/send`` come from (default: this daemon's agent id)."""
    allowed_chat_ids: list[int | str] = Field(default_factory=list)
    """Chats whose messages are obeyed (default: ``chat_id`` only)."""
    allowed_user_ids: list[int] = Field(default_factory=list)
    """Telegram users who are obeyed (default: anyone in an allowed chat)."""
    commands: bool = True
    """Read the chat (``getUpdates``): replies and commands. False: notifications only."""
    notify: NotifySettings = Field(default_factory=NotifySettings)
    digest_interval: float = 86400.0
    """Seconds (or ``6h``, ``1d``) between digests; 0: no digest."""
    wake_failed_after: int = Field(default=3, ge=1, le=1000)
    """Tell when this many wakes failed in a row."""
    notify_held: bool = True
    """Tell about messages held from waking (grouped: at most one notice per ``held_interval``)."""
    held_interval: float = 600.0
    watch: list[str] = Field(default_factory=list)
    """Agents whose daemons are watched: tell when one is offline for ``offline_after``."""
    offline_after: float = 600.0
    poll_timeout: int = Field(default=30, ge=0, le=50)
    """Seconds a ``getUpdates`` long poll waits for updates."""
    retry_min: float = Field(default=1.0, gt=0, le=3600)
    """Seconds before the first retry after a failed request (doubling up to ``retry_max``)."""
    retry_max: float = Field(default=60.0, gt=0, le=86400)
    reply_priority: Literal["low", "normal", "high"] = "high"
    """The priority of what the operator sends from the chat (high wakes by default)."""
    mute_default: float = 3600.0
    """How long ``/mute`` without a duration mutes."""

    @field_validator("digest_interval", "held_interval", mode="before")
    @classmethod
    def _off_or_duration(cls, value: Any) -> float:
        return parse_duration(value, zero=True)

    @field_validator("offline_after", "mute_default", mode="before")
    @classmethod
    def _positive_duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("api_base")
    @classmethod
    def _api(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not re.match(r"\Ahttps?://[^/\s]+(/[^\s]*)?\Z", value):
            raise ValueError("must be an http:// or https:// URL, e.g. https://api.telegram.org")
        return value

    @field_validator("operator_id")
    @classmethod
    def _operator(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return validate_agent_id(value)
        except EnvelopeError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("watch")
    @classmethod
    def _agents(cls, value: list[str]) -> list[str]:
        for agent in value:
            try:
                validate_agent_id(agent)
            except EnvelopeError as exc:
                raise ValueError(str(exc)) from None
        return value


def config(settings: Settings) -> TelegramSettings:
    """This plugin's validated section; the defaults when it was never registered or validated."""
    section = settings.plugin_config(NAME)
    if isinstance(section, TelegramSettings):
        return section
    return TelegramSettings.model_validate(section or {})


def configured(cfg: TelegramSettings, env: Mapping[str, str] | None = None) -> bool:
    """Whether the plugin is set up at all (a chat id or a token from anywhere): only then does
    it register its handler and service."""
    env = os.environ if env is None else env
    return bool(cfg.chat_id is not None or cfg.bot_token_file is not None or env.get(TOKEN_ENV) or env.get(CHAT_ENV))


# -- secrets ---------------------------------------------------------------------------------------
def read_secrets_file(path: Path) -> dict[str, str]:
    """The secrets in ``path``: ``{"bot_token": ...}`` for a file holding only the token, else
    its ``bot_token=`` and ``chat_id=`` lines (``#`` comments and blank lines are skipped).

    :raises SecretsError: it is missing, not a regular file, not this user's, readable or
        writable by group or others (fix: ``chmod 600 PATH``), or unreadable.
    """
    path = path.expanduser()
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SecretsError(f"bot_token_file {path} does not exist") from None
    except OSError as exc:
        raise SecretsError(f"bot_token_file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SecretsError(f"bot_token_file {path} is not a regular file")
    if st.st_uid != os.geteuid():
        raise SecretsError(f"bot_token_file {path} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()})")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise SecretsError(f"refusing bot_token_file {path}: its mode is {mode:04o}, other users may read it; "
                           f"make it private: chmod 600 {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretsError(f"bot_token_file {path} cannot be read ({type(exc).__name__})") from None
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if len(lines) == 1 and "=" not in lines[0]:
        return {"bot_token": lines[0]}
    found: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition("=")
        key = key.strip().lower()
        if not sep or key not in ("bot_token", "chat_id"):
            raise SecretsError(f"bot_token_file {path}: expected the token alone, or bot_token= and chat_id= lines")
        found[key] = value.strip().strip('"').strip("'")
    return found


_TOKEN_RE = re.compile(r"\A\d{1,20}:[A-Za-z0-9_-]{10,200}\Z")


@dataclass
class Secrets:
    """The token and the chat id, each with where it came from, and what is wrong (problems say
    what to fix and never hold the token)."""

    token: Secret | None = None
    token_source: str = ""
    chat_id: int | str | None = None
    chat_source: str = ""
    problems: list[str] = field(default_factory=list)


def _chat(value: Any) -> int | str:
    text = str(value).strip()
    if re.fullmatch(r"-?\d{1,20}", text):
        return int(text)
    if re.fullmatch(r"@[A-Za-z0-9_]{4,64}", text):
        return text
    raise ValueError("a chat id is a number (e.g. 123456789, -1001234567890) or @channelname")


def load_secrets(cfg: TelegramSettings, env: Mapping[str, str] | None = None) -> Secrets:
    """The bot token (``SWARMBUS_TELEGRAM_BOT_TOKEN``, else ``bot_token_file``) and the chat id
    (``SWARMBUS_TELEGRAM_CHAT_ID``, else ``chat_id``, else the file). Never raises: what is
    missing or wrong is in ``problems``."""
    env = os.environ if env is None else env
    out = Secrets()
    from_file: dict[str, str] = {}
    if cfg.bot_token_file is not None:
        try:
            from_file = read_secrets_file(cfg.bot_token_file)
        except SecretsError as exc:
            out.problems.append(str(exc))
    token = env.get(TOKEN_ENV, "").strip()
    if token:
        out.token, out.token_source = Secret(token), f"env:{TOKEN_ENV}"
    elif from_file.get("bot_token"):
        out.token, out.token_source = Secret(from_file["bot_token"]), f"file:{cfg.bot_token_file}"
    elif cfg.bot_token_file is None or from_file:
        out.problems.append(f"no bot token: set {TOKEN_ENV}, or bot_token_file (a file only you can read) "
                            "under [plugins.telegram]")
    if out.token is not None and not _TOKEN_RE.match(out.token.reveal()):
        out.problems.append(f"the bot token from {out.token_source} does not look like one (123456:ABC-...; "
                            "BotFather gives it)")
    for raw, source in ((env.get(CHAT_ENV, "").strip() or None, f"env:{CHAT_ENV}"),
                        (cfg.chat_id, "config:plugins.telegram.chat_id"),
                        (from_file.get("chat_id"), f"file:{cfg.bot_token_file}")):
        if raw is None or raw == "":
            continue
        try:
            out.chat_id, out.chat_source = _chat(raw), source
        except ValueError as exc:
            out.problems.append(f"chat id from {source}: {exc}")
        break
    if out.chat_id is None and not any("chat id" in p for p in out.problems):
        out.problems.append(f"no chat id: set chat_id under [plugins.telegram] (or {CHAT_ENV})")
    return out


# -- what is worth a notification --------------------------------------------------------------------
RULE = "telegram.notify"


def notify_verdict(message: StoredMessage, cfg: TelegramSettings) -> Verdict:
    """Whether ``message`` is pushed on its own (``allow``) or only counted in the digest
    (``skip``), with why: the rules of :class:`NotifySettings`, combined like the wake chain
    (:func:`swarmbus.combine_verdicts`: any skip wins)."""
    rules = cfg.notify
    verdicts: list[Verdict] = []
    if any(fnmatch.fnmatchcase(message.from_agent, p) for p in rules.deny_senders):
        verdicts.append(Verdict.skip(f"sender {message.from_agent} is on notify.deny_senders", rule=RULE))
    reasons = []
    if message.priority in rules.priorities:
        reasons.append(f"priority is {message.priority}")
    if any(fnmatch.fnmatchcase(message.from_agent, p) for p in rules.senders):
        reasons.append(f"sender {message.from_agent} is on notify.senders")
    if any(re.search(p, message.subject) for p in rules.subjects):
        reasons.append("the subject matches notify.subjects")
    if reasons:
        verdicts.append(Verdict.allow("; ".join(reasons), rule=RULE))
    else:
        verdicts.append(Verdict.skip(f"not worth a notification (priority {message.priority})", rule=RULE))
    final = combine_verdicts(verdicts)
    return final if final.action != "allow" else verdicts[-1]
