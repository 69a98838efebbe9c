"""``swarmbus dashboard`` in a real headless Chromium (issue 13): the page loads and lists the
agents, a message sent during the test appears without reloading, and a task moves through its
states (open, claimed, completed) as the task board publishes them. Every wait is a WebDriverWait
on a condition of the page; the page must never reload (a marker set in the window survives) and
the browser must log no error (a Content-Security-Policy violation would be one).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the dashboard extra is not installed (pip install 'swarmbus[dashboard]')")
pytest.importorskip("uvicorn", reason="the dashboard extra is not installed (pip install 'swarmbus[dashboard]')")
pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")

from selenium.webdriver.support.ui import WebDriverWait

WAIT = 20.0
"""Seconds any one condition of the page may take (it normally takes well under one)."""


def _text(driver: Any, css: str) -> str | None:
    """The text of the first element ``css`` selects, or None (read in one step: the page rebuilds
    a table when a row of it changes, so an element found first could be gone a moment later)."""
    return driver.execute_script("const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                                 css)


def _reached(driver: Any, css: str) -> bool:
    return bool(driver.execute_script(
        "const e = document.querySelector(arguments[0]); return !!e && e.classList.contains('reached');", css))


def _wait_text(driver: Any, css: str, expected: str, what: str) -> None:
    WebDriverWait(driver, WAIT, poll_frequency=0.05).until(
        lambda d: _text(d, css) == expected,
        message=f"{what}: {css} shows {_text(driver, css)!r}, not {expected!r}")


def _open(driver: Any, url: str) -> None:
    driver.get(url)
    WebDriverWait(driver, WAIT, poll_frequency=0.05).until(
        lambda d: d.execute_script("return document.body.getAttribute('data-ready');") == "1",
        message="the page's first snapshot")
    WebDriverWait(driver, WAIT, poll_frequency=0.05).until(
        lambda d: _text(d, "#live") == "live", message="the event stream open")
    driver.execute_script("window.__notReloaded = true;")


def _not_reloaded(driver: Any) -> None:
    assert driver.execute_script("return window.__notReloaded === true;"), "the page reloaded"


def _no_browser_errors(driver: Any) -> None:
    errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert not errors, f"the browser logged errors: {errors}"


def _now() -> str:
    return datetime.now(UTC).isoformat()


def test_the_page_lists_agents_and_a_message_sent_now_appears(env: Any, dashboard: Any, browser: Any) -> None:
    env.start_daemon("alice")
    env.start_daemon("bob")
    _open(browser, dashboard.url)
    for agent in ("alice", "bob"):
        _wait_text(browser, f'#agents tr[data-key="{agent}"] .c-status', "online", f"{agent} listed online")
    _wait_text(browser, '#agents tr[data-key="alice"] .c-local', "yes", "alice's store found on this machine")

    sent = json.loads(env.cli("send", "--agent-id", "alice", "--to", "bob", "--subject", "sent during the test",
                              "--body", "<b>not bold</b>", "--json").stdout)
    row = f'#messages tr[data-key="{sent["id"]}"]'
    WebDriverWait(browser, WAIT, poll_frequency=0.05).until(
        lambda d: (_text(d, f"{row} .c-subject") or "").startswith("sent during the test"),
        message="the message sent during the test")
    assert _text(browser, f"{row} .c-route") == "alice → bob"
    WebDriverWait(browser, WAIT, poll_frequency=0.05).until(
        lambda d: _reached(d, f'{row} [data-step="stored"]'), message="its ladder: stored")
    assert _reached(browser, f'{row} [data-step="published"]')
    # the body is text on the page, not markup
    assert _text(browser, f"{row} .preview") == "<b>not bold</b>"
    assert _text(browser, f"{row} .preview b") is None

    env.cli("read", "--agent-id", "bob")  # bob's host shows it: the ladder's next step, live
    WebDriverWait(browser, WAIT, poll_frequency=0.05).until(
        lambda d: _reached(d, f'{row} [data-step="surfaced"]'), message="its ladder: surfaced")
    _not_reloaded(browser)
    _no_browser_errors(browser)


def _task(state: str, claimer: str | None = None, result: str | None = None) -> bytes:
    return json.dumps({
        "task_id": "t1", "type": "review", "owner": "planner", "role": "reviewer", "capabilities": ["python"],
        "payload": {"pr": 7}, "state": state, "claimer": claimer, "fence": 1 if claimer else 0, "attempt": 1,
        "max_attempts": 3, "lease_until": None, "result": result, "error": None, "created_at": _now(),
        "updated_at": _now(), "v": 1,
    }).encode()


def test_a_task_moves_through_its_states_on_the_page(env: Any, dashboard: Any, publisher: Any, browser: Any) -> None:
    _open(browser, dashboard.url)
    topic = "swarmbus/tasks/t1/state/planner"  # retained, republished on every change, as the board does
    state = '#tasks tr[data-key="t1/planner"] .c-state'
    publisher.publish(topic, _task("open"), retain=True)
    _wait_text(browser, state, "open", "the posted task")
    publisher.publish(topic, _task("claimed", "coder"), retain=True)
    _wait_text(browser, state, "claimed", "the claimed task")
    assert _text(browser, '#tasks tr[data-key="t1/planner"] .c-claimer') == "coder"
    hostile = "<img src=x onerror=\"window.__pwned=1\"><b>done</b>"
    publisher.publish(topic, _task("completed", "coder", result=hostile), retain=True)
    _wait_text(browser, state, "completed", "the completed task")
    _wait_text(browser, '#tasks tr[data-key="t1/planner"] .c-history', "open → claimed → completed", "its history")
    assert _text(browser, '#tasks tr[data-key="t1/planner"] .c-result') == hostile  # text, never markup
    assert _text(browser, "#tasks img, #tasks td b") is None
    assert browser.execute_script("return window.__pwned === undefined;")

    publisher.publish("swarmbus/tasks/t1/state/planner", b"{broken", retain=True)  # a hostile update: counted
    WebDriverWait(browser, WAIT, poll_frequency=0.05).until(
        lambda d: _text(d, "#malformed-count") == "1", message="the malformed record counted")
    assert _text(browser, state) == "completed"
    _not_reloaded(browser)
    _no_browser_errors(browser)
