"""A small Telegram Bot API client on httpx (https://core.telegram.org/bots/api).

Requests are ``POST {api_base}/bot<token>/<method>`` with a JSON body; answers are
``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code", "description", "parameters"}``
(https://core.telegram.org/bots/api#making-requests). The token is part of every URL, so no
httpx error, URL or response is ever let out as it is: every error this module raises is one of
its own, whose text went through :func:`scrub` (the token and anything shaped like a token
replaced by ``<token>``) and which is raised ``from None`` (no chained httpx exception holding
the URL). :func:`quiet_http_logs` keeps httpx's own request logging (which prints URLs) off.

Errors:

- :class:`RetryAfter`: HTTP 429 (flood control); ``seconds`` is the answer's
  ``parameters.retry_after`` (https://core.telegram.org/bots/api#responseparameters);
- :class:`Unavailable`: the server could not be reached, timed out, or answered 5xx or not JSON:
  worth retrying later;
- :class:`Refused`: any other ``ok: false`` answer (``status`` is its ``error_code``): 400 (the
  request itself is wrong: retrying the same gives the same), 401 (bad token), 403 (the bot was
  blocked or removed from the chat), 404, 409 (another ``getUpdates`` or a webhook).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import httpx

from swarmbus_telegram.config import Secret

_TOKENISH = re.compile(r"\d{3,20}:[A-Za-z0-9_-]{20,200}")


class TelegramError(Exception):
    """A Bot API call failed; the text never holds the token."""


class Unavailable(TelegramError):
    """Not reached, timed out, 5xx or not a Bot API answer: try again later."""


class RetryAfter(TelegramError):
    """HTTP 429: wait ``seconds`` before the next request (``parameters.retry_after``)."""

    def __init__(self, seconds: float, text: str) -> None:
        super().__init__(text)
        self.seconds = seconds


class Refused(TelegramError):
    """The Bot API answered ``ok: false`` with ``status`` (its ``error_code``)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


def scrub(text: str, token: Secret | None = None) -> str:
    """``text`` with the token (and anything shaped like a bot token) replaced by ``<token>``."""
    if token is not None and token.reveal():
        text = text.replace(token.reveal(), "<token>")
    return _TOKENISH.sub("<token>", text)


def quiet_http_logs() -> None:
    """httpx and httpcore log every request's URL at info/debug level, and the URL holds the
    token: keep them at warning and above."""
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)


def answer_of(method: str, status: int, body: bytes, token: Secret | None) -> Any:
    """The ``result`` of a Bot API answer.

    :raises RetryAfter: 429. :raises Refused: another ``ok: false``. :raises Unavailable: 5xx,
        or not a Bot API answer.
    """
    try:
        data = httpx.Response(status, content=body).json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise Unavailable(f"{method}: HTTP {status} without a Bot API answer")
    if data.get("ok") is True and status < 400:
        return data.get("result")
    code = data.get("error_code") if isinstance(data.get("error_code"), int) else status
    description = scrub(str(data.get("description") or "no description"), token)[:300]
    parameters = data.get("parameters") if isinstance(data.get("parameters"), dict) else {}
    if code == 429 or status == 429:
        retry = parameters.get("retry_after")
        seconds = float(retry) if isinstance(retry, int | float) and not isinstance(retry, bool) and retry >= 0 else 5.0
        raise RetryAfter(min(seconds, 3600.0), f"{method}: Telegram asks to wait {seconds:g}s ({description})")
    if status >= 500 or code >= 500:
        raise Unavailable(f"{method}: HTTP {status}: {description}")
    raise Refused(code, f"{method}: {code} {description}")


class BotApi:
    """An async Bot API client (one ``httpx.AsyncClient``). Use :meth:`aclose` when done.

    :param token: the bot token (a :class:`~swarmbus_telegram.config.Secret`).
    :param api_base: ``https://api.telegram.org`` or a self-hosted Bot API server.
    :param timeout: seconds for a request other than a long poll.
    """

    def __init__(self, token: Secret, api_base: str, *, timeout: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        quiet_http_logs()
        self._token = token
        self.api_base = api_base.rstrip("/")
        self.timeout = timeout
        self._client = httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False,
                                         headers={"User-Agent": "swarmbus-telegram"})

    def __repr__(self) -> str:
        return f"BotApi({self.api_base!r}, token=********)"

    async def aclose(self) -> None:
        await self._client.aclose()

    async def call(self, method: str, params: dict[str, Any] | None = None, *, timeout: float | None = None) -> Any:
        """Call ``method`` with ``params`` (JSON) and return its ``result``.

        :raises RetryAfter: HTTP 429. :raises Refused: ``ok: false``. :raises Unavailable: not
            reached, timed out, 5xx.
        """
        url = f"{self.api_base}/bot{self._token.reveal()}/{method}"
        try:
            response = await self._client.post(url, json=params or {}, timeout=timeout or self.timeout)
            body = response.content
        except httpx.TimeoutException:
            raise Unavailable(f"{method}: no answer within {timeout or self.timeout:g}s") from None
        except Exception as exc:  # httpx errors carry the URL, and so the token: never let one out
            raise Unavailable(scrub(f"{method}: {type(exc).__name__}: {exc}", self._token)[:300]) from None
        return answer_of(method, response.status_code, body, self._token)

    async def send_message(self, chat_id: int | str, text: str, *, html: bool = True,
                           reply_to: int | None = None) -> dict[str, Any]:
        """``sendMessage`` (https://core.telegram.org/bots/api#sendmessage): ``text`` (1-4096
        characters) to ``chat_id`` in HTML parse mode (``html``), without link previews, as a
        reply to message ``reply_to`` when given (sent anyway if that is gone). Returns the sent
        Message (its ``message_id``)."""
        params: dict[str, Any] = {"chat_id": chat_id, "text": text, "link_preview_options": {"is_disabled": True}}
        if html:
            params["parse_mode"] = "HTML"
        if reply_to is not None:
            params["reply_parameters"] = {"message_id": reply_to, "allow_sending_without_reply": True}
        result = await self.call("sendMessage", params)
        return result if isinstance(result, dict) else {}

    async def get_updates(self, offset: int | None, timeout: int) -> list[dict[str, Any]]:
        """``getUpdates`` (https://core.telegram.org/bots/api#getupdates): a long poll of up to
        ``timeout`` seconds for updates from ``offset`` on (which confirms every earlier one);
        only ``message`` updates."""
        params: dict[str, Any] = {"timeout": timeout, "allowed_updates": ["message"]}
        if offset is not None:
            params["offset"] = offset
        result = await self.call("getUpdates", params, timeout=timeout + self.timeout)
        return [u for u in result if isinstance(u, dict)] if isinstance(result, list) else []


def call_sync(token: Secret, api_base: str, method: str, params: dict[str, Any] | None = None, *,
              timeout: float = 10.0) -> Any:
    """:meth:`BotApi.call` without an event loop (``swarmbus doctor``, ``swarmbus telegram test``).

    :raises RetryAfter: :raises Refused: :raises Unavailable: as :meth:`BotApi.call`.
    """
    quiet_http_logs()
    url = f"{api_base.rstrip('/')}/bot{token.reveal()}/{method}"
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False, headers={"User-Agent": "swarmbus-telegram"}) as client:
            response = client.post(url, json=params or {})
            body = response.content
    except httpx.TimeoutException:
        raise Unavailable(f"{method}: no answer within {timeout:g}s") from None
    except Exception as exc:
        raise Unavailable(scrub(f"{method}: {type(exc).__name__}: {exc}", token)[:300]) from None
    return answer_of(method, response.status_code, body, token)
