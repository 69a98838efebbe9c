"""The plugin contract: every hook is documented, tested, and says how its results combine;
then one ``test_hook_<name>`` per hook, checking its observable effect through ``HookRelay``.

Each hook test registers inline class plugins into a fresh ``get_plugin_manager(entry_points=False)``
so installed plugins never change the outcome.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from swarmbus import (
    CheckResult,
    Command,
    DoctorCheck,
    DoctorContext,
    Handler,
    HandlerContext,
    HookRelay,
    HostType,
    InitStep,
    Settings,
    StoredMessage,
    WakeDecision,
    WakeOutcome,
    WriteFile,
    get_plugin_manager,
    hookimpl,
    hookspecs,
    new_envelope,
    skip,
    wake,
)
from swarmbus.config import RawConfig
from swarmbus.errors import ConfigError
from swarmbus.settings import build_settings

REPO = Path(__file__).resolve().parent.parent
HOOKS_DOC = REPO / "docs" / "plugin-hooks.md"
HOOK_NAMES = hookspecs.HOOK_NAMES
AGENT = "coder"


# -- helpers ----------------------------------------------------------------------------------
def fresh(*plugins: object) -> HookRelay:
    """A new manager with the built-ins and ``plugins`` (registered in order), no entry points."""
    pm = get_plugin_manager(entry_points=False, env={})
    for plugin in plugins:
        pm.register(plugin)
    return HookRelay(pm)


def message(subject: str = "hello", *, priority: str = "normal", seq: int = 1, **fields: Any) -> StoredMessage:
    envelope = new_envelope("planner", AGENT, subject, "body text", priority=priority, **fields)
    return StoredMessage(seq, envelope, f"agents/{AGENT}/inbox", time.time())


def raw_with_sections(**sections: dict[str, Any]) -> RawConfig:
    """Raw config as if the file had ``[plugins.<name>]`` tables."""
    raw = RawConfig()
    for name, values in sections.items():
        raw.plugin_sections[name] = values
        raw.plugin_sources[name] = "file:test.toml"
    return raw


def settings_for(**values: Any) -> Settings:
    return Settings.model_validate(values)


async def _no_send(to: str, subject: str, body: str, **fields: Any) -> str:
    raise AssertionError("send must not be called")


def context(relay: HookRelay, settings: Settings) -> HandlerContext:
    return HandlerContext(agent_id=AGENT, settings=settings, logger=logging.getLogger("test.hookspecs"),
                          send=_no_send, hooks=relay)


def _doc_sections() -> dict[str, str]:
    text = HOOKS_DOC.read_text(encoding="utf-8")
    parts = re.split(r"^## +(\S+) *$", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def _signature_argnames(section: str, name: str) -> tuple[str, ...] | None:
    block = re.search(r"```[a-z]*\n(.*?)```", section, re.S)
    if block is None:
        return None
    call = re.search(rf"\b{re.escape(name)}\(([^)]*)\)", block.group(1))
    if call is None:
        return None
    params = [p.strip() for p in call.group(1).split(",") if p.strip()]
    return tuple(re.split(r"[:=\s]", p, maxsplit=1)[0] for p in params)


# -- the contract -----------------------------------------------------------------------------
def test_hook_names_are_the_registered_specs() -> None:
    pm = get_plugin_manager(entry_points=False, env={})
    specced = sorted(n for n, caller in vars(pm.hook).items() if getattr(caller, "spec", None) is not None)
    assert list(HOOK_NAMES) == specced
    assert HOOK_NAMES, "no hooks found"


@pytest.mark.parametrize("name", HOOK_NAMES)
def test_hook_is_documented_with_its_signature(name: str) -> None:
    sections = _doc_sections()
    assert name in sections, f"docs/plugin-hooks.md has no `## {name}` heading"
    expected = getattr(get_plugin_manager(entry_points=False, env={}).hook, name).spec.argnames
    found = _signature_argnames(sections[name], name)
    assert found is not None, f"`## {name}` must open with a code block showing `{name}(...)`"
    assert found == tuple(expected), f"docs/plugin-hooks.md shows {name}{found}, the hookspec is {name}{expected}"


def test_docs_document_no_unknown_hooks() -> None:
    documented = {n for n in _doc_sections() if n.startswith("swarmbus_")}
    assert documented == set(HOOK_NAMES)


@pytest.mark.parametrize("name", HOOK_NAMES)
def test_every_hook_has_a_test(name: str) -> None:
    assert callable(globals().get(f"test_hook_{name}")), f"tests/test_hookspecs.py has no test_hook_{name}"


@pytest.mark.parametrize("name", HOOK_NAMES)
def test_hookspec_docstring_says_how_results_combine(name: str) -> None:
    spec = getattr(get_plugin_manager(entry_points=False, env={}).hook, name).spec
    doc = " ".join((spec.function.__doc__ or "").split())
    if spec.opts["firstresult"]:
        assert "Stops at first non-None result" in doc, f"{name} is firstresult; its docstring must say so"
    else:
        assert "all implementations are called" in doc or "All results are collected" in doc, name
        assert "Stops at first" not in doc, name


# -- swarmbus_settings_sections ---------------------------------------------------------------
class DemoSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    level: int = 1
    label: str = "demo"


class SectionPlugin:
    @hookimpl
    def swarmbus_settings_sections(self, register: Any) -> None:
        register("demo", DemoSection)


def test_hook_swarmbus_settings_sections() -> None:
    relay = fresh(SectionPlugin())
    sections = relay.settings_sections()
    assert sections["demo"] is DemoSection

    settings = build_settings(raw_with_sections(demo={"level": 3}, other={"x": 1}), sections)
    assert settings.plugins["demo"] == DemoSection(level=3)
    assert settings.plugin_config("demo").label == "demo"
    assert settings.plugin_config("other") == {"x": 1}  # no model registered: stays a dict
    assert build_settings(RawConfig(), sections).plugin_config("demo") == DemoSection()  # absent: defaults

    with pytest.raises(ConfigError) as bad_value:
        build_settings(raw_with_sections(demo={"level": "very"}), sections)
    assert "plugins.demo.level" in str(bad_value.value)
    with pytest.raises(ConfigError) as bad_key:
        build_settings(raw_with_sections(demo={"levle": 2}), sections)
    assert "plugins.demo.levle" in str(bad_key.value)

    with pytest.raises(ValueError, match="'demo' registered twice"):
        fresh(SectionPlugin(), SectionPlugin()).settings_sections()


# -- swarmbus_register_handlers ---------------------------------------------------------------
async def _ok_handler(message: StoredMessage, context: HandlerContext) -> str:
    return "ok"


class HandlerPlugin:
    @hookimpl
    def swarmbus_register_handlers(self, register: Any, settings: Settings) -> None:
        register(Handler("demo", _ok_handler, timeout=5))
        if settings.wake.policy == "all":
            register(Handler("demo-all", _ok_handler))


def test_hook_swarmbus_register_handlers() -> None:
    relay = fresh(HandlerPlugin())
    handlers = relay.handlers(Settings())
    assert {"archive", "wake", "demo"} <= set(handlers)
    assert "demo-all" not in handlers
    assert handlers["demo"].timeout == 5
    assert "demo-all" in relay.handlers(settings_for(wake={"policy": "all"}))  # settings are passed
    assert "archive" not in relay.handlers(settings_for(daemon={"archive": False}))

    class Duplicate:
        @hookimpl
        def swarmbus_register_handlers(self, register: Any) -> None:  # a subset of the arguments
            register(Handler("archive", _ok_handler))

    with pytest.raises(ValueError, match="'archive' registered twice"):
        fresh(Duplicate()).handlers(Settings())


# -- swarmbus_route ---------------------------------------------------------------------------
class RoutePlugin:
    @hookimpl
    def swarmbus_route(self, message: StoredMessage, handlers: frozenset[str]) -> list[str] | None:
        if message.subject == "no-opinion":
            return None
        return ["demo", "ghost", "archive"]


def test_hook_swarmbus_route(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    relay = fresh(RoutePlugin())
    settings = Settings()
    all_handlers = frozenset({"archive", "wake", "demo"})
    names = relay.route(message(), all_handlers, settings)
    assert sorted(names) == ["archive", "demo", "ghost", "wake"]  # the union, each name once
    assert relay.route(message("no-opinion"), all_handlers, settings) == ["wake", "archive"]
    assert relay.route(message("no-opinion"), frozenset({"demo"}), settings) == []  # built-in: only registered

    # the dispatcher runs the known names and logs and ignores the unknown ones
    from swarmbus.daemon.dispatch import Dispatcher
    from swarmbus.store import Store

    ran: list[str] = []

    async def demo(msg: StoredMessage, ctx: HandlerContext) -> str:
        ran.append(msg.id)
        return "demo ran"

    caplog.set_level(logging.WARNING, logger="swarmbus")
    with Store(tmp_path / "store.sqlite3") as store:
        accepted = store.accept(f"agents/{AGENT}/inbox", message().envelope.to_wire(), AGENT)
        assert accepted.message is not None

        async def dispatch() -> None:
            def record(outcomes: list[tuple[int, str, str, str]], done: list[int]) -> None:
                store.record_outcomes(outcomes, done)
                dispatcher.recorded(done)

            dispatcher = Dispatcher(store, relay, {"demo": Handler("demo", demo)}, context(relay, settings), record)
            dispatcher.start()  # takes in what the store holds undispatched
            await dispatcher.drain(10)

        asyncio.run(dispatch())
        deliveries = store.deliveries(accepted.seq)
        assert [(d.handler, d.status, d.detail) for d in deliveries] == [("demo", "ok", "demo ran")]
        assert store.undispatched() == []
    assert ran == [accepted.message.id]
    assert any("unknown handler(s) ghost" in r.getMessage() for r in caplog.records)


# -- swarmbus_wake_decision -------------------------------------------------------------------
PAST = "2000-01-01T00:00:00+00:00"


@pytest.mark.parametrize(
    ("policy", "priority", "expires_at", "wakes", "reason"),
    [
        ("high", "high", None, True, "priority is high"),
        ("high", "normal", None, False, "below the wake policy"),
        ("high", "low", None, False, "below the wake policy"),
        ("priority-high", "high", None, True, "priority is high"),
        ("all", "low", None, True, "wake policy is all"),
        ("all", "high", PAST, False, "expired"),
        ("high", "high", PAST, False, "expired"),
        ("none", "high", None, False, "wake policy is none"),
    ],
)
def test_default_wake_policy(policy: str, priority: str, expires_at: str | None, wakes: bool, reason: str) -> None:
    decision = fresh().wake_decision(message(priority=priority, expires_at=expires_at), settings_for(wake={"policy": policy}))
    assert isinstance(decision, WakeDecision)
    assert decision.wake is wakes
    assert reason in decision.reason


def test_hook_swarmbus_wake_decision() -> None:
    calls: list[str] = []

    class Opinionated:
        @hookimpl
        def swarmbus_wake_decision(self, message: StoredMessage) -> WakeDecision | None:
            calls.append(message.subject)
            if message.subject == "loud":
                return wake("loud messages always wake")
            if message.subject == "quiet":
                return skip("quiet messages never wake")
            return None

    class First:
        @hookimpl(tryfirst=True)
        def swarmbus_wake_decision(self, message: StoredMessage) -> WakeDecision | None:
            return skip("first says no") if message.subject == "loud" and message.priority == "low" else None

    relay = fresh(Opinionated(), First())
    never = settings_for(wake={"policy": "none"})
    always = settings_for(wake={"policy": "all"})
    assert relay.wake_decision(message("loud"), never) == wake("loud messages always wake")  # overrides the policy
    assert relay.wake_decision(message("quiet"), always) == skip("quiet messages never wake")
    assert relay.wake_decision(message("other"), always) == wake("wake policy is all")  # None: the policy decides
    assert relay.wake_decision(message("other"), never) == skip("wake policy is none")

    calls.clear()
    assert relay.wake_decision(message("loud", priority="low"), never) == skip("first says no")
    assert calls == []  # stops at the first non-None result


# -- swarmbus_wake_filter ---------------------------------------------------------------------
def test_hook_swarmbus_wake_filter() -> None:
    from swarmbus import PolicyState, Verdict
    from swarmbus.default_plugins.chain import evaluate
    from swarmbus.default_plugins.history import WakeHistory

    seen: list[tuple[str, float]] = []

    class NightOwl:
        @hookimpl
        def swarmbus_wake_filter(self, message: StoredMessage, state: PolicyState, now: float) -> Verdict | None:
            seen.append((message.subject, now))
            if message.subject == "later":
                return Verdict.hold("come back later", now + 60, rule="night-owl")
            if message.subject == "never":
                return Verdict.skip("not for me")  # no rule name: recorded as "plugin"
            return None

    class AlwaysWake:  # an old-style plugin: its wake is no objection, never an override of a veto
        @hookimpl
        def swarmbus_wake_decision(self, message: StoredMessage) -> WakeDecision | None:
            return wake("plugin says wake") if message.subject != "vetoed" else skip("plugin says no")

    relay = fresh(NightOwl(), AlwaysWake())
    settings = settings_for(wake={"policy": "none", "senders": {"deny": ["mallory"]}})
    state, now = WakeHistory(), 1_700_000_000.0

    verdicts = relay.wake_filters(message("later"), settings, state, now)
    assert Verdict.hold("come back later", now + 60, rule="night-owl") in verdicts
    assert seen == [("later", now)]  # the injected clock is passed through
    assert "swarmbus.default_plugins.rules.quiet_hours" in relay.wake_filter_chain()

    # all implementations are called and any veto wins, whatever the order
    assert evaluate(relay, message("hello"), settings, state, now).wake  # the plugin's wake overrides policy none
    held = evaluate(relay, message("later"), settings, state, now)
    assert (held.final.action, held.final.until, held.final.rule) == ("hold", now + 60, "night-owl")
    skipped = evaluate(relay, message("never"), settings, state, now)
    assert (skipped.final.action, skipped.final.rule, skipped.reason) == ("skip", "plugin", "not for me")
    vetoed = evaluate(relay, message("vetoed"), settings, state, now)
    assert (vetoed.final.action, vetoed.final.rule, vetoed.reason) == ("skip", "decision", "plugin says no")
    denied = evaluate(relay, StoredMessage(2, new_envelope("mallory", AGENT, "later", "x"), "t", now), settings,
                      state, now)
    assert (denied.final.action, denied.final.rule) == ("skip", "senders")  # a skip beats a hold

    # through the built-in `wake` handler outside a daemon: a hold is reported, not kept
    handler = relay.handlers(settings)["wake"].handle
    assert "held until" in asyncio.run(handler(message("later"), context(relay, settings)))
    assert asyncio.run(handler(message("never"), context(relay, settings))) == "not woken: not for me"


# -- swarmbus_wake ----------------------------------------------------------------------------
def test_hook_swarmbus_wake() -> None:
    seen: list[tuple[str, str]] = []

    class AsyncWaker:
        @hookimpl
        def swarmbus_wake(self, message: StoredMessage, decision: WakeDecision, context: HandlerContext) -> Any:
            if message.subject != "async":
                return None

            async def do_wake() -> WakeOutcome:
                await asyncio.sleep(0)
                seen.append((decision.reason, context.agent_id))
                return WakeOutcome(True, "woke asynchronously")

            return do_wake()

    class FailingWaker:
        @hookimpl(tryfirst=True)
        def swarmbus_wake(self, message: StoredMessage) -> WakeOutcome | None:
            return WakeOutcome(False, "host is gone", exit_code=9) if message.subject == "fail" else None

    relay = fresh(AsyncWaker(), FailingWaker())
    settings = Settings()
    ctx = context(relay, settings)
    outcome = asyncio.run(relay.wake(message("async"), wake("because"), ctx))
    assert outcome == WakeOutcome(True, "woke asynchronously")  # the awaitable was awaited
    assert seen == [("because", AGENT)]
    assert asyncio.run(relay.wake(message("fail"), wake("x"), ctx)) == WakeOutcome(False, "host is gone", 9)
    assert asyncio.run(relay.wake(message("other"), wake("x"), ctx)) is None  # nobody wakes; no wake.command

    # the core has no waker of its own: wake.command is run by the swarmbus-priority plugin
    with_command = settings_for(wake={"command": [sys.executable, "-c", "import sys; sys.exit(3)"]})
    assert asyncio.run(relay.wake(message("other"), wake("x"), context(relay, with_command))) is None
    assert asyncio.run(relay.wake(message("async"), wake("x"), context(relay, with_command))).ok

    # through the built-in `wake` handler: decision, then wake
    wake_handler = relay.handlers(settings_for(wake={"policy": "all"}))["wake"].handle
    all_ctx = context(relay, settings_for(wake={"policy": "all"}))
    assert asyncio.run(wake_handler(message("async"), all_ctx)) == "woken (wake policy is all): woke asynchronously"
    assert "no waker is configured" in asyncio.run(wake_handler(message("other"), all_ctx))
    with pytest.raises(Exception, match="host is gone"):
        asyncio.run(wake_handler(message("fail"), all_ctx))
    assert "not woken" in asyncio.run(wake_handler(message("async"), context(relay, Settings())))


# -- swarmbus_wake_coalesce -------------------------------------------------------------------
def test_hook_swarmbus_wake_coalesce() -> None:
    class Host:
        @hookimpl
        def swarmbus_wake_coalesce(self, message: StoredMessage, settings: Settings) -> bool | None:
            if settings.host_type != "desk-bell":
                return None
            return message.subject != "alone"

    class Fallback:
        @hookimpl(trylast=True)
        def swarmbus_wake_coalesce(self) -> bool:
            return False

    bell = settings_for(host_type="desk-bell")
    assert fresh(Host()).wake_coalesce(message(), bell) is True
    assert fresh(Host()).wake_coalesce(message("alone"), bell) is False  # False is an answer too
    assert fresh(Host()).wake_coalesce(message(), Settings()) is False  # nobody answers: one call per message
    assert fresh(Host(), Fallback()).wake_coalesce(message(), bell) is True  # firstresult: the host first
    assert fresh(Host(), Fallback()).wake_coalesce(message(), Settings()) is False
    # what the core does with the answer: tests/test_coalesce.py


# -- swarmbus_wake_paths and the wake router ------------------------------------------------
def _context(marked: list[tuple[list[str], str, str]]) -> HandlerContext:
    async def send(*args: Any, **kwargs: Any) -> str:
        return "x"

    def mark_step(ids: Any, step: str, detail: str = "") -> int:
        marked.append((list(ids), step, detail))
        return len(list(ids))

    return HandlerContext(agent_id="desk", settings=Settings(), logger=logging.getLogger("t"), send=send,
                          hooks=None, mark_step=mark_step)


def test_hook_swarmbus_wake_paths() -> None:
    from swarmbus import WakeOutcome, WakePath, probe_paths, wake_by_paths

    calls: list[str] = []

    async def ready(context: HandlerContext) -> str | None:
        return None

    async def not_ready(context: HandlerContext) -> str | None:
        return "nobody home"

    async def broken_probe(context: HandlerContext) -> str | None:
        raise RuntimeError("probe bug")

    async def slow(messages: list[StoredMessage], context: HandlerContext) -> WakeOutcome:
        await asyncio.sleep(5)
        return WakeOutcome(True, "too late")

    async def refused(messages: list[StoredMessage], context: HandlerContext) -> WakeOutcome:
        calls.append("refused")
        return WakeOutcome(False, "the host said no", exit_code=3)

    async def confirmed(messages: list[StoredMessage], context: HandlerContext) -> WakeOutcome:
        calls.append("confirmed")
        return WakeOutcome(True, f"woke it for {len(messages)}")

    paths = [WakePath("socket", not_ready, confirmed), WakePath("buggy", broken_probe, confirmed),
             WakePath("slow", ready, slow, timeout=0.05), WakePath("cli", ready, refused),
             WakePath("last", ready, confirmed)]

    class Host:
        @hookimpl
        def swarmbus_wake_paths(self, settings: Settings) -> list[WakePath] | None:
            return paths if settings.host_type == "desk-bell" else None

    relay = fresh(Host())
    assert relay.wake_paths(settings_for(host_type="desk-bell")) == paths
    assert relay.wake_paths(Settings()) == []  # another host type: nobody answers
    marked: list[tuple[list[str], str, str]] = []
    context = _context(marked)
    msgs = [message(), message("two")]
    outcome = asyncio.run(wake_by_paths(msgs, paths, context, timeout=1.0, surfaced=("last",)))
    assert outcome.ok and outcome.detail.startswith("last: woke it for 2 (after socket: nobody home; ")
    assert "buggy: its readiness probe failed (RuntimeError: probe bug)" in outcome.detail
    assert "slow: no confirmation within 0.05s" in outcome.detail and "cli: the host said no" in outcome.detail
    assert calls == ["refused", "confirmed"]  # tried in order; the not-ready path never woke anything
    assert marked == [([m.id for m in msgs], "surfaced", outcome.detail)]
    failed = asyncio.run(wake_by_paths(msgs, paths[:4], context, timeout=1.0))
    assert not failed.ok and failed.detail.startswith("no wake path worked: socket: nobody home")
    assert failed.exit_code == 3  # the last path that ran and failed
    assert asyncio.run(probe_paths(paths[:2], context)) == [
        ("socket", "nobody home"), ("buggy", "its readiness probe failed (RuntimeError: probe bug)")]
    assert len(marked) == 1  # a failed wake surfaces nothing
    # fall_back=False: a path that was ready and failed ends the attempt; not-ready ones are skipped
    calls.clear()
    stopped = asyncio.run(wake_by_paths(msgs, [paths[0], paths[3], paths[4]], context, timeout=1.0, fall_back=False))
    assert not stopped.ok and calls == ["refused"] and stopped.exit_code == 3
    assert stopped.detail == ("no wake path worked (fall_back is off, so no later path was tried): "
                              "socket: nobody home; cli: the host said no")
    timed_out = asyncio.run(wake_by_paths(msgs, paths[2:], context, timeout=1.0, fall_back=False))
    assert not timed_out.ok and "slow: no confirmation within 0.05s" in timed_out.detail and calls == ["refused"]
    assert asyncio.run(wake_by_paths(msgs, [paths[0], paths[4]], context, fall_back=False)).ok


# -- swarmbus_host_session and the daemon's registry -----------------------------------------
def test_hook_swarmbus_host_session() -> None:
    import os

    from swarmbus import HostSession
    from swarmbus.daemon.sessions import TTL, HostSessions, SessionError, parse_session

    class Host:
        @hookimpl
        def swarmbus_host_session(self, environ: dict[str, str]) -> HostSession | None:
            if "DESK_SOCKET" not in environ:
                return None
            return HostSession("desk", environ["DESK_SESSION"], int(environ["DESK_PID"]),
                               {"socket": environ["DESK_SOCKET"], "token": "t0ken"})

    environ = {"DESK_SOCKET": "/tmp/d.sock", "DESK_SESSION": "s1", "DESK_PID": str(os.getpid())}
    found = fresh(Host()).host_sessions(environ)
    assert [(s.host, s.session_id, s.pid) for s in found] == [("desk", "s1", os.getpid())]
    assert "t0ken" not in repr(found[0])
    assert fresh(Host()).host_sessions({}) == []

    registry = HostSessions()
    assert registry.register(found[0], now=100.0) is True
    assert registry.register(found[0], now=105.0) is False  # a refresh
    later = HostSession("desk", "s2", os.getpid(), {})
    registry.register(later, now=106.0)
    assert [s.session_id for s in registry.live("desk", now=107.0)] == ["s2", "s1"]  # the newest first
    assert registry.live("other", now=107.0) == []
    assert [s.session_id for s in registry.live("desk", now=106.0 + TTL + 1)] == []  # not refreshed: gone
    registry.register(HostSession("desk", "dead", 2**22 + 12345, {}), now=200.0)
    assert registry.live("desk", now=200.0) == []  # its process does not run
    assert TTL > 0 and "token" not in str(registry.summary())
    for bad in (None, {"host": "Desk", "session_id": "s", "pid": 1}, {"host": "d", "session_id": "", "pid": 1},
                {"host": "d", "session_id": "s", "pid": True}, {"host": "d", "session_id": "s", "pid": 1, "endpoint": {"a": 1}}):
        with pytest.raises(SessionError):
            parse_session(bad)
    # kept across a daemon restart: saved (0600, it may hold a token), loaded while alive
    import stat
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "host-sessions.json"
        kept = HostSessions(path)
        kept.register(found[0])
        kept.register(HostSession("desk", "gone", 2**22 + 12345, {}))
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and "t0ken" in path.read_text()
        assert [s.session_id for s in HostSessions(path).live("desk")] == ["s1"]  # the dead one is not loaded
        kept.unregister("desk", "s1")
        assert HostSessions(path).live("desk") == []
        path.write_text("not json")
        assert HostSessions(path).live("desk") == []  # a damaged file is ignored (and logged)
    # end to end (the MCP server registering a real session, the daemon posting to it): the
    # Claude Code plugin's tests/test_cc_session.py and tests_real/test_real_session.py


# -- swarmbus_delivery_event ------------------------------------------------------------------
def test_hook_swarmbus_delivery_event(caplog: pytest.LogCaptureFixture) -> None:
    from swarmbus import DeliveryEvent

    seen: list[tuple[str, str]] = []

    class Broken:
        @hookimpl
        def swarmbus_delivery_event(self, event: DeliveryEvent) -> None:
            raise RuntimeError("dashboard down")

    class Follower:
        @hookimpl
        def swarmbus_delivery_event(self, event: DeliveryEvent) -> None:
            seen.append((event.step, event.by))

    relay = fresh(Follower(), Broken())  # Broken is called first (registered last): it must not stop Follower
    event = DeliveryEvent("m-1", "stored", "sent", "coder", "coder", time.time())
    with caplog.at_level(logging.ERROR, logger="swarmbus.plugins"):
        relay.delivery_event(event)  # never raises
    assert seen == [("stored", "coder")]
    assert "dashboard down" in caplog.text and "swarmbus_delivery_event" in caplog.text


# -- swarmbus_doctor_checks -------------------------------------------------------------------
def test_hook_swarmbus_doctor_checks() -> None:
    def run_ok(ctx: DoctorContext) -> CheckResult:
        return CheckResult("ok", f"agent {ctx.agent_id}, cache {sorted(ctx.cache)}")

    class Checks:
        @hookimpl
        def swarmbus_doctor_checks(self, register: Any, settings: Settings) -> None:
            register(DoctorCheck("zz-last", run_ok, order=10**6))
            register(DoctorCheck("aa-first", run_ok, order=0))
            register(DoctorCheck("a-tie", run_ok, order=80))  # same order as `plugins`: by name

    checks = fresh(Checks()).doctor_checks(Settings())
    names = [c.name for c in checks]
    assert [(c.order, c.name) for c in checks] == sorted((c.order, c.name) for c in checks)
    assert names[0] == "aa-first"
    assert names[-1] == "zz-last"
    assert names.index("a-tie") == names.index("plugins") - 1
    assert {"config", "broker", "daemon", "store", "presence", "plugins"} <= set(names)
    first = checks[0].run(DoctorContext(settings=Settings(), agent_id=AGENT, cache={"probe": {}}))
    assert first == CheckResult("ok", f"agent {AGENT}, cache ['probe']")


# -- swarmbus_host_types ----------------------------------------------------------------------
def test_hook_swarmbus_host_types() -> None:
    def steps(settings: Settings) -> list[InitStep]:
        return [InitStep("bell", [WriteFile(Path("/tmp/bellrc"), f"agent = {settings.agent_id}\n")])]

    class Hosts:
        @hookimpl
        def swarmbus_host_types(self, register: Any) -> None:
            register(HostType("demo-bell", "a desk bell", steps))
            register(HostType("demo-plain", "no setup"))

    hosts = fresh(Hosts()).host_types()
    assert hosts["demo-bell"].description == "a desk bell"
    [step] = hosts["demo-bell"].init_steps(settings_for(agent_id=AGENT))
    [change] = step.changes
    assert step.name == "bell"
    assert change.describe() == f"write /tmp/bellrc ({len(f'agent = {AGENT}') + 1} bytes)"
    assert hosts["demo-plain"].init_steps(Settings()) == []

    class Clash:
        @hookimpl
        def swarmbus_host_types(self, register: Any) -> None:
            register(HostType("demo-bell", "another bell"))

    with pytest.raises(ValueError, match="'demo-bell' registered twice"):
        fresh(Hosts(), Clash()).host_types()


# -- swarmbus_commands ------------------------------------------------------------------------
def test_hook_swarmbus_commands(caplog: pytest.LogCaptureFixture) -> None:
    from swarmbus.cli.main import CORE_COMMANDS, build_parser

    def configure(parser: Any) -> None:
        parser.add_argument("--shout", action="store_true")

    def run(args: Any, settings: Settings) -> int:
        return 7 if args.shout else 0

    class Commands:
        @hookimpl
        def swarmbus_commands(self, register: Any) -> None:
            register(Command("demo-hello", "say hello", configure, run))
            register(Command("send", "a clash with a core command", configure, run))

    class Again:
        @hookimpl
        def swarmbus_commands(self, register: Any) -> None:
            register(Command("demo-hello", "a clash with another plugin", configure, run))

    caplog.set_level(logging.WARNING, logger="swarmbus")
    commands = fresh(Commands(), Again()).commands(frozenset(CORE_COMMANDS))
    assert set(commands) == {"demo-hello"}
    assert any("'send' clashes" in r.getMessage() for r in caplog.records)
    assert any("'demo-hello' clashes" in r.getMessage() for r in caplog.records)

    args = build_parser(commands).parse_args(["demo-hello", "--shout", "--log-level", "debug"])
    assert args.command == "demo-hello"
    assert commands["demo-hello"].run(args, Settings()) == 7


# -- swarmbus_operator_event ------------------------------------------------------------------
def test_hook_swarmbus_operator_event(caplog: pytest.LogCaptureFixture) -> None:
    from swarmbus import OPERATOR_EVENT_KINDS, OperatorEvent

    seen: list[tuple[str, str, int]] = []

    class Broken:
        @hookimpl
        def swarmbus_operator_event(self, event: OperatorEvent) -> None:
            raise RuntimeError("pager down")

    class Pager:
        @hookimpl
        def swarmbus_operator_event(self, event: OperatorEvent) -> None:
            seen.append((event.kind, event.agent, event.count))

    relay = fresh(Pager(), Broken())  # Broken is called first: it must not stop Pager
    event = OperatorEvent("wake_failed", "coder", time.time(), "notify exited 3", peer="planner", count=3)
    with caplog.at_level(logging.ERROR, logger="swarmbus.plugins"):
        relay.operator_event(event)  # never raises
    assert seen == [("wake_failed", "coder", 3)]
    assert "pager down" in caplog.text and "swarmbus_operator_event" in caplog.text
    assert {"wake_failed", "loop_guard", "held", "peer_online", "peer_offline"} == set(OPERATOR_EVENT_KINDS)
    # what the daemon fires, and when: tests/test_operator.py


# -- swarmbus_services ------------------------------------------------------------------------
def test_hook_swarmbus_services() -> None:
    from swarmbus import Service

    ran: list[str] = []

    async def tick(ctx: HandlerContext) -> None:
        ran.append(ctx.agent_id)

    class Services:
        @hookimpl
        def swarmbus_services(self, register: Any, context: HandlerContext) -> None:
            register(Service("demo-tick", tick, "records the agent id"))

    relay = fresh(Services())
    ctx = context(relay, Settings())
    [service] = relay.services(ctx)
    assert (service.name, service.description) == ("demo-tick", "records the agent id")
    asyncio.run(service.run(ctx))
    assert ran == [AGENT]
    assert fresh().services(ctx) == []  # the core has none of its own

    with pytest.raises(ValueError, match="'demo-tick' registered twice"):
        fresh(Services(), Services()).services(ctx)
    # how the daemon runs them (restarts with backoff, cancels at shutdown): tests/test_operator.py


# -- swarmbus_task_handlers -------------------------------------------------------------------
def test_hook_swarmbus_task_handlers() -> None:
    from swarmbus import Task, TaskHandler
    from swarmbus.board.runtime import collect_handlers

    async def echo(task: Task, ctx: HandlerContext) -> Any:
        return {"echo": task.payload, "by": ctx.agent_id}

    class Tasks:
        @hookimpl
        def swarmbus_task_handlers(self, register: Any, settings: Settings) -> None:
            register(TaskHandler("demo.echo", echo, "echo the payload"))

    relay = fresh(Tasks())
    found = collect_handlers(relay, Settings())
    assert list(found) == ["demo.echo"] and found["demo.echo"].description == "echo the payload"
    task = Task("t-1", "demo.echo", "planner", {"x": 1}, attempt=1, fence=1, max_attempts=3)
    assert asyncio.run(found["demo.echo"].run(task, context(relay, Settings()))) == {"echo": {"x": 1}, "by": AGENT}
    assert collect_handlers(fresh(), Settings()) == {}  # the core runs no task type itself

    with pytest.raises(ValueError, match=r"'demo\.echo' registered twice"):
        collect_handlers(fresh(Tasks(), Tasks()), Settings())

    class BadType:
        @hookimpl
        def swarmbus_task_handlers(self, register: Any) -> None:
            register(TaskHandler("Not A Type", echo))

    with pytest.raises(ValueError, match="task type"):
        collect_handlers(fresh(BadType()), Settings())
    # how the daemon runs them (claims, leases, results): tests/test_tasks.py
