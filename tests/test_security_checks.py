"""The doctor's security checks on the paths a real machine takes: a remote broker without TLS,
credential files readable by others, a broker without an ACL (the private test broker), and one
that cannot be reached."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from swarmbus.api import DoctorContext
from swarmbus.default_plugins.security import check_acl, check_credentials, check_tls, check_verified, is_loopback
from swarmbus.dev_broker import free_port
from swarmbus.settings import Settings


def ctx(tmp_path: Path, **broker: Any) -> DoctorContext:
    security = broker.pop("security", {})
    settings = Settings(broker={"connect_timeout": 2, **broker}, security=security, state_dir=tmp_path / "state")
    return DoctorContext(settings, "alice", {})


@pytest.mark.parametrize(("host", "loop"), [("localhost", True), ("127.0.0.5", True), ("::1", True),
                                            ("[::1]", True), ("10.0.0.5", False), ("broker.example", False)])
def test_loopback_hosts(host: str, loop: bool) -> None:
    assert is_loopback(host) is loop


def test_tls(tmp_path: Path) -> None:
    assert check_tls(ctx(tmp_path, host="localhost")).status == "ok"
    remote_anon = check_tls(ctx(tmp_path, host="10.0.0.5"))
    assert remote_anon.status == "warn" and "clear text" in remote_anon.summary
    remote_auth = check_tls(ctx(tmp_path, hosts=["127.0.0.1:1", "10.0.0.5:1883"], username="alice", password="x"))
    assert remote_auth.status == "fail" and "password" in remote_auth.summary and "10.0.0.5" in remote_auth.summary
    assert check_tls(ctx(tmp_path, host="10.0.0.5", tls=True, username="alice")).status == "ok"


def test_credential_files_must_be_private(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("pw\n")
    secret.chmod(0o644)
    loose = check_credentials(ctx(tmp_path, username="alice", password_file=str(secret)))
    assert loose.status == "fail" and "0644" in loose.summary and loose.fix and "chmod 600" in loose.fix
    secret.chmod(0o600)
    assert check_credentials(ctx(tmp_path, username="alice", password_file=str(secret))).status == "ok"
    assert check_credentials(ctx(tmp_path)).status == "skip"


def test_a_broker_without_an_acl_is_reported(tmp_path: Path, broker: Any) -> None:
    local = ctx(tmp_path, host="127.0.0.1", port=broker.port)
    result = check_acl(local)
    assert result.status == "ok" and "accepted" in result.summary and "loopback" in result.summary
    verified = check_verified(local)
    assert verified.status == "ok" and "off" in verified.summary
    claimed = ctx(tmp_path, host="127.0.0.1", port=broker.port, security={"verify_senders": True})
    warned = check_verified(claimed)
    assert warned.status == "warn" and "does not bind topics to users" in warned.summary
    # with credentials on a broker that lets them write as anyone: a warning, whatever the host
    authed = check_acl(ctx(tmp_path, host="127.0.0.1", port=broker.port, username="alice", password="x"))
    assert authed.status == "warn" and authed.fix and "swarmbus broker acl" in authed.fix


def test_an_unreachable_broker_skips_the_probe(tmp_path: Path) -> None:
    gone = ctx(tmp_path, host="127.0.0.1", port=free_port())
    assert check_acl(gone).status == "skip"
    assert check_verified(gone).status == "ok"  # off, loopback: nothing to warn about
