"""Against the real OpenClaw gateway (opt-in: ``tox -e real-openclaw``, see docs/hosts.md).

tox installs node 24 and ``openclaw`` from the npm registry and points these tests at them
through ``OC_REAL_NODE_DIR`` (the directory holding ``node``) and ``OC_REAL_OPENCLAW`` (the
``openclaw`` executable); without them every test is skipped.

The gateway runs in a temporary HOME with the config from the reference (loopback, token auth)
and a loopback mock of an OpenAI-compatible model (``openclaw_mock_model.py``), so an agent turn
runs end to end with no real LLM and no network beyond 127.0.0.1. Readiness is a completed
WebSocket handshake, polled with a deadline (start-up takes 6 to 15 s). A private mosquitto and a
``swarmbus start`` daemon with host type ``openclaw`` complete the chain: ``swarmbus send`` ->
daemon -> gateway ``agent`` run -> the mock model sees the message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.append(str(Path(__file__).parent))

from openclaw_mock_model import MockModel, request_text

from swarmbus import HandlerContext, HookRelay, Settings, StoredMessage, get_plugin_manager, new_envelope, testing, wake
from swarmbus.testing import BrokerConfig, free_port, run_step, start_broker, wait_for
from swarmbus_openclaw.gateway import ConnectOptions, GatewayError, probe

NODE_DIR = os.environ.get("OC_REAL_NODE_DIR", "")
OPENCLAW = os.environ.get("OC_REAL_OPENCLAW", "")
TOKEN = "swarmbus-test-token"  # noqa: S105 - a throwaway test gateway token
QUIET = {"OPENCLAW_DISABLE_BONJOUR": "1", "OPENCLAW_NO_AUTO_UPDATE": "1", "OPENCLAW_SKIP_CHANNELS": "1",
         "OPENCLAW_NO_RESPAWN": "1", "OPENCLAW_EXEC_SHELL_SNAPSHOT": "0"}

pytestmark = pytest.mark.skipif(not (NODE_DIR and OPENCLAW and Path(OPENCLAW).exists()),
                                reason="real OpenClaw not installed: run `tox -e real-openclaw`")

CONFIG = """// written by the swarmbus-openclaw real-gateway tests (JSON5, as OpenClaw reads it)
{
  gateway: {
    mode: "local", port: %(port)d, bind: "loopback",
    auth: { mode: "token", token: "%(token)s" },
    tailscale: { mode: "off" },
  },
  discovery: { mdns: { mode: "off" } },
  update: { checkOnStart: false },
  logging: { file: "%(log)s" },
  agents: { defaults: { model: { primary: "mock/mock-1" } } },
  models: {
    mode: "merge",
    providers: {
      mock: {
        baseUrl: "%(model_url)s", apiKey: "mock-key", api: "openai-completions",
        models: [{ id: "mock-1", name: "Mock", reasoning: false, input: ["text"],
                   cost: { input: 0, output: 0, cacheRead: 0, cacheWrite: 0 },
                   contextWindow: 32768, maxTokens: 1024 }],
      },
    },
  },
}
"""


@dataclass
class RealGateway:
    home: Path
    port: int
    proc: subprocess.Popen[bytes]
    model: MockModel
    env: dict[str, str]
    log_path: Path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    testing.kill_process_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        testing.kill_process_group(proc.pid)
        proc.wait(10)


@pytest.fixture(scope="module")
def real_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealGateway]:
    root = Path(tmp_path_factory.mktemp("ocreal"))
    home = root / "home"
    (home / ".openclaw").mkdir(parents=True)
    with MockModel() as model:
        port = free_port()
        (home / ".openclaw" / "openclaw.json").write_text(CONFIG % {
            "port": port, "token": TOKEN, "log": root / "openclaw-file.log", "model_url": model.base_url})
        env = {k: v for k, v in os.environ.items() if k in ("LANG", "LC_ALL", "TMPDIR", "TZ", "USER")}
        env.update(QUIET, HOME=str(home), PATH=os.pathsep.join([NODE_DIR, os.environ.get("PATH", "/usr/bin:/bin")]),
                   NO_COLOR="1")
        log_path = root / "gateway.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen([str(Path(NODE_DIR) / "node"), OPENCLAW, "gateway", "run"], env=env,
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        gateway = RealGateway(home, port, proc, model, env, log_path)
        try:
            options = ConnectOptions(gateway.url, token=TOKEN, connect_timeout=5)

            def ready() -> bool:
                if proc.poll() is not None:
                    pytest.fail(f"openclaw gateway exited {proc.returncode}:\n{gateway.log()}")
                try:
                    asyncio.run(probe(options))
                    return True
                except GatewayError:
                    return False

            wait_for(ready, 120, "the gateway handshake", interval=0.5)
            yield gateway
        finally:
            _stop(proc)


@pytest.fixture
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with start_broker(BrokerConfig(state_dir=Path(tmp_path_factory.mktemp("ocb")), port=free_port())) as running:
        yield running


def test_handshake_protocol_and_scopes(real_gateway: RealGateway) -> None:
    hello = asyncio.run(probe(ConnectOptions(real_gateway.url, token=TOKEN, display_name="swarmbus real-test")))
    assert hello.protocol == 4
    assert "operator.write" in hello.scopes and "agent" in hello.methods
    with pytest.raises(GatewayError) as info:
        asyncio.run(probe(ConnectOptions(real_gateway.url, token="wrong-token")))  # noqa: S106
    assert info.value.detail_code == "AUTH_TOKEN_MISMATCH"


def test_signed_device_identity_is_accepted(real_gateway: RealGateway) -> None:
    from swarmbus_openclaw.identity import DeviceIdentity

    hello = asyncio.run(probe(ConnectOptions(real_gateway.url, token=TOKEN, identity=DeviceIdentity.generate())))
    assert hello.protocol == 4 and "operator.write" in hello.scopes


def test_daemon_wake_runs_the_agent_on_the_message(real_gateway: RealGateway, broker: Any,
                                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    """swarmbus send -> daemon -> accepted agent run -> the mock model gets the message."""
    root = Path(tmp_path_factory.mktemp("ocd"))
    config = root / "config.toml"
    config.write_text("# the gateway port and token come from OpenClaw's config in HOME\n")
    env = testing.isolated_env(root, broker.url, base=real_gateway.env, plugins="openclaw",
                               SWARMBUS_HOST_TYPE="openclaw", SWARMBUS_WAKE_POLICY="all")
    log_path = root / "daemon.log"
    daemon = testing.start_daemon(env, "oc", log_path=log_path)
    try:
        testing.wait_daemon_connected(env, "oc", daemon, 30, log_path=log_path)
        marker = f"MARKER-{time.time_ns()}"
        started = time.time()
        send = testing.run_cli(env, "send", "--agent-id", "planner", "--to", "oc", "--subject", "real gateway",
                               "--body", f"please check {marker}", "--json")
        assert send.returncode == 0, send.stderr
        message_id = json.loads(send.stdout)["id"]

        delivery = wait_for(lambda: testing.finished_delivery(env, "oc"), 60, "the wake outcome")
        assert delivery["status"] == "ok", f"{delivery}\n{log_path.read_text()}"
        assert f"openclaw run {message_id} accepted" in delivery["detail"]  # runId == our idempotencyKey
        assert f"openclaw run {message_id} accepted" in log_path.read_text()
        trace = json.loads(testing.run_cli(env, "trace", "--agent-id", "oc", message_id, "--json").stdout)
        surfaced = [s for s in trace["steps"] if s["step"] == "surfaced"]
        assert surfaced, trace
        testing.report_latency("openclaw gateway (send -> accepted)", float(surfaced[0]["at"]) - started)
        # the run goes on after the plugin closed its connection: the model gets the framed message
        body = real_gateway.model.wait_for(lambda b: marker in request_text(b), timeout=90)
        assert body is not None, f"the mock model never saw {marker}:\n{real_gateway.log()}"
        text = request_text(body)
        assert "UNTRUSTED" in text and message_id in text
        assert TOKEN not in log_path.read_text()
    finally:
        testing.stop_daemon(daemon)


def _relay_and_settings(home: Path, state: Path, **section: Any) -> tuple[HookRelay, Settings]:
    import swarmbus_openclaw

    pm = get_plugin_manager(entry_points=False)
    pm.register(swarmbus_openclaw, name="openclaw")
    relay = HookRelay(pm)
    settings = Settings(agent_id="oc", host_type="openclaw", state_dir=state)
    settings.plugins["openclaw"] = relay.settings_sections()["openclaw"].model_validate(section)
    return relay, settings


def _wake(relay: HookRelay, settings: Settings, message: StoredMessage) -> Any:
    async def send(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("not used")

    context = HandlerContext("oc", settings, logging.getLogger("test.real"), send, relay)
    return asyncio.run(relay.wake(message, wake("test"), context))


def test_wait_for_final_and_replay(real_gateway: RealGateway, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(real_gateway.home))  # URL and token from OpenClaw's config
    relay, settings = _relay_and_settings(real_gateway.home, tmp_path / "state", wait_for_final=True, timeout_s=120)
    marker = f"FINAL-{time.time_ns()}"
    message = StoredMessage(1, new_envelope("planner", "oc", "final please", marker), "agents/oc/inbox", time.time())
    outcome = _wake(relay, settings, message)
    assert outcome.ok, outcome
    assert f"openclaw run {message.id} ok" in outcome.detail and "completed" in outcome.detail
    assert real_gateway.model.wait_for(lambda b: marker in request_text(b), timeout=1)
    count = sum(marker in request_text(b) for b in real_gateway.model.requests)
    again = _wake(relay, settings, message)  # the same message id: the cached run, no second turn
    assert again.ok and f"openclaw run {message.id} ok" in again.detail
    assert sum(marker in request_text(b) for b in real_gateway.model.requests) == count


def test_cli_fallback_reaches_the_gateway(real_gateway: RealGateway, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin's own URL is wrong; ``openclaw agent`` finds the gateway from OpenClaw's config."""
    monkeypatch.setenv("HOME", str(real_gateway.home))
    monkeypatch.setenv("PATH", real_gateway.env["PATH"])
    for key, value in QUIET.items():
        monkeypatch.setenv(key, value)
    openclaw_bin = Path(OPENCLAW).parent.parent / ".bin" / "openclaw"
    relay, settings = _relay_and_settings(real_gateway.home, tmp_path / "state", timeout_s=120,
                                          gateway_url=f"ws://127.0.0.1:{free_port()}",
                                          openclaw_path=str(openclaw_bin))
    marker = f"CLI-{time.time_ns()}"
    message = StoredMessage(1, new_envelope("planner", "oc", "via cli", marker), "agents/oc/inbox", time.time())
    outcome = _wake(relay, settings, message)
    assert outcome.ok, outcome
    assert "not reachable" in outcome.detail and "openclaw agent (CLI) run" in outcome.detail
    assert real_gateway.model.wait_for(lambda b: marker in request_text(b), timeout=1)


def test_init_steps_against_the_real_gateway(real_gateway: RealGateway, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """init's skill is listed by OpenClaw as ready and visible to the model; its gateway step passes."""
    monkeypatch.setenv("HOME", str(real_gateway.home))
    relay, settings = _relay_and_settings(real_gateway.home, tmp_path / "state")
    steps = {s.name: s.changes for s in relay.host_types()["openclaw"].init_steps(settings)}
    results = {name: run_step(name, changes, dry_run=False) for name, changes in steps.items()}
    assert results["skill"].status == "changed" and results["gateway"].status == "unchanged", results
    assert "protocol 4, operator.write granted" in results["gateway"].lines[0]
    proc = subprocess.run([str(Path(NODE_DIR) / "node"), OPENCLAW, "skills", "list", "--json"],
                          env=real_gateway.env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    skills = {s["name"]: s for s in json.loads(proc.stdout[proc.stdout.index("{"):])["skills"]}
    skill = skills["swarmbus"]
    assert skill["source"] == "openclaw-managed" and skill["eligible"] and skill["modelVisible"], skill
