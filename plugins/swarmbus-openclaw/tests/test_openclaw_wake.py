"""The wake hook against the fake gateway: handshake, agent params, retries, auth errors and
device signing. Each wake goes through HookRelay.wake, the way the daemon's wake handler calls it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import stat
import threading
from pathlib import Path

import pytest
from openclaw_fake_gateway import FakeGateway
from openclaw_helpers import AGENT, TOKEN, context_for, make_settings, stored

from swarmbus import HookRelay, StoredMessage, WakeDecision, WakeOutcome, render_wake_prompt, wake
from swarmbus_openclaw.identity import b64url_decode
from swarmbus_openclaw.wake import idempotency_key, run_label


def run_wake(relay: HookRelay, settings: object, message: StoredMessage) -> WakeOutcome | None:
    return asyncio.run(relay.wake(message, wake("test"), context_for(relay, settings)))  # type: ignore[arg-type]


def test_other_host_types_are_not_woken(relay: HookRelay, tmp_path: Path) -> None:
    for host_type in (None, "claude-code"):
        settings = make_settings(relay, tmp_path, host_type=host_type)
        assert run_wake(relay, settings, stored()) is None


def test_handshake_and_agent_params(relay: HookRelay, tmp_path: Path, gateway: FakeGateway) -> None:
    settings = make_settings(relay, tmp_path, gateway_url=gateway.url, token=TOKEN)
    message = stored("build broke", "the nightly build failed at step 3")
    outcome = run_wake(relay, settings, message)
    assert outcome is not None and outcome.ok, outcome
    assert message.id in outcome.detail and "accepted" in outcome.detail

    (connect,) = gateway.connects
    assert connect["minProtocol"] == connect["maxProtocol"] == 4
    assert connect["client"]["id"] == "gateway-client" and connect["client"]["mode"] == "backend"
    assert connect["client"]["displayName"] == f"swarmbus {AGENT}"
    assert connect["role"] == "operator" and "operator.write" in connect["scopes"]
    assert connect["auth"] == {"token": TOKEN}
    assert "device" not in connect  # loopback and device_identity = "auto"

    (params,) = gateway.agent_params()
    assert params["idempotencyKey"] == message.id
    assert params["sessionKey"] == "agent:main:swarmbus-inbox"
    assert params["agentId"] == "main"
    assert params["deliver"] is False
    assert params["timeout"] == 600
    assert params["label"] == "swarmbus: build broke"
    assert params["message"] == render_wake_prompt([message], AGENT)
    assert "the nightly build failed at step 3" in params["message"]
    assert "UNTRUSTED" in params["message"]
    # the first frame the client sent was connect, and every request went over one connection
    first_in = next(r for r in gateway.frames if r.direction == "in")
    assert first_in.frame["method"] == "connect"
    assert {r.conn for r in gateway.frames} == {1}


def test_configured_session_agent_and_instructions(relay: HookRelay, tmp_path: Path, gateway: FakeGateway) -> None:
    settings = make_settings(relay, tmp_path, gateway_url=gateway.url, token=TOKEN, agent_id="ops",
                             session_key="agent:ops:bus", timeout_s=42, extra_instructions="Reply within a day.")
    assert run_wake(relay, settings, stored()).ok  # type: ignore[union-attr]
    (params,) = gateway.agent_params()
    assert (params["agentId"], params["sessionKey"], params["timeout"]) == ("ops", "agent:ops:bus", 42)
    assert params["message"].count("Reply within a day.") == 1


def test_label_is_cleaned_and_capped(relay: HookRelay, tmp_path: Path, gateway: FakeGateway) -> None:
    settings = make_settings(relay, tmp_path, gateway_url=gateway.url, token=TOKEN)
    assert run_wake(relay, settings, stored("line   one  " + "x" * 200)).ok  # type: ignore[union-attr]
    label = gateway.agent_params()[0]["label"]
    assert label.startswith("swarmbus: line one xxx")
    assert len(label) == 128 and label.endswith("…")
    # envelopes refuse control characters in subjects; the label is cleaned regardless
    assert run_label("a\x1b[31m\tb\u0085c") == "swarmbus: a [31m b c"
    assert run_label("") == "swarmbus: (no subject)"


def test_wait_for_final_reports_the_finished_run(relay: HookRelay, tmp_path: Path, gateway: FakeGateway) -> None:
    gateway.final_delay = 0.2
    settings = make_settings(relay, tmp_path, gateway_url=gateway.url, token=TOKEN, wait_for_final=True)
    message = stored()
    outcome = run_wake(relay, settings, message)
    assert outcome is not None and outcome.ok
    assert f"openclaw run {message.id} ok" in outcome.detail and "completed" in outcome.detail
    responses = [r.frame for r in gateway.frames if r.direction == "out" and r.frame.get("type") == "res"]
    assert [r["payload"]["status"] for r in responses[1:]] == ["accepted", "ok"]  # two res frames, one id
    assert responses[1]["id"] == responses[2]["id"]


def test_same_message_twice_runs_once(relay: HookRelay, tmp_path: Path, gateway: FakeGateway) -> None:
    """A re-dispatched message reuses its id as the idempotencyKey: the gateway replays the run."""
    settings = make_settings(relay, tmp_path, gateway_url=gateway.url, token=TOKEN)
    message = stored()
    assert run_wake(relay, settings, message).ok  # type: ignore[union-attr]
    gateway.wait_for(lambda g: message.id in g.runs)
    second = run_wake(relay, settings, message)
    assert second is not None and second.ok and f"{message.id} ok" in second.detail
    assert [p["idempotencyKey"] for p in gateway.agent_params()] == [message.id, message.id]
    assert len(gateway.runs) == 1


def test_a_coalesced_wake_is_one_run_listing_every_message(relay: HookRelay, tmp_path: Path,
                                                          gateway: FakeGateway) -> None:
    """The plugin takes coalesced wakes; one ``agent`` run covers the message and its batch, with
    a key derived from the set of ids (the same set, in any order, gives the same key)."""
    settings = make_settings(relay, tmp_path, gateway_url=gateway.url, token=TOKEN)
    assert relay.wake_coalesce(stored(), settings) is True
    assert relay.wake_coalesce(stored(), make_settings(relay, tmp_path, host_type=None)) is False
    messages = [stored(f"subject {i}", f"body number {i}", seq=i) for i in (1, 2, 3)]
    decision = WakeDecision(True, "test", batch=tuple(messages[1:]))
    outcome = asyncio.run(relay.wake(messages[0], decision, context_for(relay, settings)))
    assert outcome is not None and outcome.ok, outcome
    (params,) = gateway.agent_params()
    assert params["message"] == render_wake_prompt(messages, AGENT)
    prompt = params["message"]
    assert [prompt.index(f"body number {i}") for i in (1, 2, 3)] == sorted(prompt.index(f"body number {i}")
                                                                            for i in (1, 2, 3))
    assert params["label"] == "swarmbus: subject 1 (+2 more)"
    key = params["idempotencyKey"]
    assert key.startswith("swarmbus-batch-") and key == idempotency_key(list(reversed(messages)))
    assert key != idempotency_key(messages[:2]) and idempotency_key(messages[:1]) == messages[0].id
    # the same batch again (a retry, a restart that batches them the same way): the gateway replays it
    again = asyncio.run(relay.wake(messages[0], decision, context_for(relay, settings)))
    assert again is not None and again.ok
    assert len(gateway.runs) == 1


def test_replay_while_the_run_is_in_flight_waits_for_it(
        relay: HookRelay, tmp_path: Path, gateway: FakeGateway) -> None:
    """The real gateway answers a key whose run is still going with one ``in_flight`` frame and no
    final one; with wait_for_final the plugin then waits for the run with ``agent.wait``."""
    gateway.hold = threading.Event()
    message = stored()
    quick = make_settings(relay, tmp_path, gateway_url=gateway.url, token=TOKEN)
    assert "accepted" in run_wake(relay, quick, message).detail  # type: ignore[union-attr]
    waiting = make_settings(relay, tmp_path, gateway_url=gateway.url, token=TOKEN, wait_for_final=True)
    outcomes: list[WakeOutcome | None] = []
    waker = threading.Thread(target=lambda: outcomes.append(run_wake(relay, waiting, message)))
    waker.start()
    gateway.wait_for(lambda g: g.requests("agent.wait"))  # replayed key -> in_flight -> agent.wait
    gateway.hold.set()  # now the run finishes
    waker.join(30)
    (outcome,) = outcomes
    assert outcome is not None and outcome.ok and f"openclaw run {message.id} ok" in outcome.detail, outcome
    statuses = [r.frame["payload"].get("status") for r in gateway.frames
                if r.direction == "out" and r.frame.get("type") == "res" and r.frame.get("ok")]
    assert "in_flight" in statuses
    assert [r.frame["params"]["runId"] for r in gateway.requests("agent.wait")] == [message.id]
    assert len(gateway.runs) == 1


def test_unavailable_is_retried_with_the_same_key_after_retry_after(
        relay: HookRelay, tmp_path: Path, gateway: FakeGateway) -> None:
    gateway.unavailable(2, retry_after_ms=300)
    settings = make_settings(relay, tmp_path, gateway_url=gateway.url, token=TOKEN)
    message = stored()
    outcome = run_wake(relay, settings, message)
    assert outcome is not None and outcome.ok, outcome
    assert "after 3 attempts" in outcome.detail
    requests = gateway.requests("agent")
    assert [r.frame["params"]["idempotencyKey"] for r in requests] == [message.id] * 3
    # the gaps are measured on the fake's clock: each retry came at least retryAfterMs later
    refusals = [r for r in gateway.frames if r.direction == "out" and r.frame.get("type") == "res"
                and not r.frame["ok"]]
    assert len(refusals) == 2 and all(r.frame["error"]["retryAfterMs"] == 300 for r in refusals)
    for refusal, retry in zip(refusals, requests[1:], strict=True):
        assert retry.t - refusal.t >= 0.3
    assert len({r.conn for r in requests}) == 3  # a fresh connection per attempt


def test_unavailable_during_connect_is_retried(relay: HookRelay, tmp_path: Path, gateway: FakeGateway) -> None:
    gateway.unavailable(1, retry_after_ms=150, on="connect")
    settings = make_settings(relay, tmp_path, gateway_url=gateway.url, token=TOKEN)
    outcome = run_wake(relay, settings, stored())
    assert outcome is not None and outcome.ok, outcome
    connects = gateway.requests("connect")
    assert len(connects) == 2 and connects[1].t - connects[0].t >= 0.15


def test_retries_are_bounded(relay: HookRelay, tmp_path: Path, gateway: FakeGateway) -> None:
    gateway.unavailable(10, retry_after_ms=10)
    settings = make_settings(relay, tmp_path, gateway_url=gateway.url, token=TOKEN, max_attempts=3)
    outcome = run_wake(relay, settings, stored())
    assert outcome is not None and not outcome.ok
    assert "UNAVAILABLE" in outcome.detail
    assert len(gateway.requests("agent")) == 3


def test_restart_close_1012_reconnects_and_retries(relay: HookRelay, tmp_path: Path, gateway: FakeGateway) -> None:
    gateway.close_with_restart(1)
    settings = make_settings(relay, tmp_path, gateway_url=gateway.url, token=TOKEN)
    message = stored()
    outcome = run_wake(relay, settings, message)
    assert outcome is not None and outcome.ok, outcome
    requests = gateway.requests("agent")
    assert [r.frame["params"]["idempotencyKey"] for r in requests] == [message.id, message.id]
    assert requests[0].conn != requests[1].conn


def test_token_mismatch_is_a_clear_failure(relay: HookRelay, tmp_path: Path, gateway: FakeGateway) -> None:
    settings = make_settings(relay, tmp_path, gateway_url=gateway.url, token="not-the-token")
    outcome = run_wake(relay, settings, stored())
    assert outcome is not None and not outcome.ok
    assert "AUTH_TOKEN_MISMATCH" in outcome.detail
    assert "[plugins.openclaw] token" in outcome.detail  # where the token came from, never the token
    assert "not-the-token" not in outcome.detail
    assert gateway.requests("agent") == []
    assert len(gateway.requests("connect")) == 1  # auth errors are not retried


def test_device_identity_always_signs_the_connect(relay: HookRelay, tmp_path: Path, gateway: FakeGateway) -> None:
    settings = make_settings(relay, tmp_path, gateway_url=gateway.url, token=TOKEN, device_identity="always")
    assert run_wake(relay, settings, stored()).ok  # type: ignore[union-attr]
    (connect,) = gateway.connects
    device = connect["device"]
    raw = b64url_decode(device["publicKey"])
    assert len(raw) == 32 and device["id"] == hashlib.sha256(raw).hexdigest()
    assert "=" not in device["publicKey"] and "=" not in device["signature"]
    assert gateway.verified_devices == [device["id"]]  # the fake verified the v3 signature
    handshake = gateway.frames[0].frame["payload"]
    assert device["nonce"] == handshake["nonce"] and device["signedAt"] == handshake["ts"]
    # the key pair is kept, 0600, in the agent's state dir, in OpenClaw's device.json shape
    path = tmp_path / "state" / "agents" / AGENT / "openclaw-device.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored_identity = json.loads(path.read_text())
    assert stored_identity["version"] == 1 and stored_identity["deviceId"] == device["id"]
    assert stored_identity["privateKeyPem"].startswith("-----BEGIN PRIVATE KEY-----")
    # the same identity is used next time
    assert run_wake(relay, settings, stored()).ok  # type: ignore[union-attr]
    assert gateway.connects[1]["device"]["id"] == device["id"]


def test_device_identity_never(relay: HookRelay, tmp_path: Path, gateway: FakeGateway) -> None:
    settings = make_settings(relay, tmp_path, gateway_url=gateway.url, token=TOKEN, device_identity="never")
    assert run_wake(relay, settings, stored()).ok  # type: ignore[union-attr]
    assert "device" not in gateway.connects[0]


def test_gateway_rejects_a_bad_signature(gateway: FakeGateway) -> None:
    """The fake really verifies: a signature over another payload is refused."""
    from swarmbus_openclaw.gateway import ConnectOptions, GatewayClient, GatewayError
    from swarmbus_openclaw.identity import DeviceIdentity

    class WrongPayload(GatewayClient):
        def connect_params(self, nonce: str, challenge_ts: object) -> dict[str, object]:
            params = super().connect_params(nonce, challenge_ts)
            device = params["device"]
            device["signature"] = self.options.identity.sign("v3|something else")  # type: ignore[union-attr,index]
            return params

    options = ConnectOptions(gateway.url, token=TOKEN, identity=DeviceIdentity.generate())

    async def attempt() -> None:
        async with WrongPayload(options):
            pass

    with pytest.raises(GatewayError) as info:
        asyncio.run(attempt())
    assert info.value.detail_code == "DEVICE_AUTH_SIGNATURE_INVALID"


def test_closed_enums_are_enforced_by_settings(relay: HookRelay) -> None:
    model = relay.settings_sections()["openclaw"]
    for bad in ({"client_id": "swarmbus"}, {"client_mode": "daemon"}, {"gateway_url": "http://x"},
                {"device_identity": "sometimes"}, {"token": "a", "token_file": "/tmp/t"}, {"colour": 1}):
        with pytest.raises(ValueError):
            model.model_validate(bad)
    cfg = model()
    assert (cfg.client_id, cfg.client_mode, cfg.agent_id, cfg.session_key) == (
        "gateway-client", "backend", "main", "agent:main:swarmbus-inbox")
    assert cfg.wait_for_final is False and cfg.use_cli_fallback is True and cfg.timeout_s == 600
