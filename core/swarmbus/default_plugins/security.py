"""``swarmbus doctor`` checks for identity and transport security (docs/security.md).

- ``tls``: TLS in use for a broker that is not on this machine's loopback.
- ``credentials``: the password file and the client key are private to their owner (0600).
- ``acl``: one probe publish, as another sender, to the inbox of an agent that does not exist
  (``agents/swarmbus-acl-probe/inbox/swarmbus-acl-probe``, QoS 1, not retained, empty). A broker
  with the ACL of ``swarmbus broker acl`` refuses it (MQTT 5 reason 135); one that accepts it lets
  any client write as any sender. Nobody subscribes there, so an accepted probe reaches no one.
- ``verified-senders``: ``security.verify_senders`` on or off, and whether the ``acl`` probe
  shows the broker vouching for it.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Callable
from pathlib import Path

from swarmbus.api import CheckResult, DoctorCheck, DoctorContext
from swarmbus.hookspecs import hookimpl
from swarmbus.settings import Settings

PROBE_ID = "swarmbus-acl-probe"
PROBE_TOPIC = f"agents/{PROBE_ID}/inbox/{PROBE_ID}"
"""Where the ACL probe publishes: an inbox nobody owns, as a sender nobody is."""
ACL_FIX = ("generate a least-privilege set-up with `swarmbus broker acl AGENT... --dir DIR` and run the broker "
           "with it (docs/security.md)")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _remote(settings: Settings) -> list[str]:
    return [host for host, _ in settings.broker.endpoints if not is_loopback(host)]


def check_tls(ctx: DoctorContext) -> CheckResult:
    b = ctx.settings.broker
    remote = _remote(ctx.settings)
    if b.tls:
        verify = f"verified against {b.ca_certs}" if b.ca_certs else "verified against the system trust store"
        return CheckResult("ok", f"TLS in use ({verify})")
    if not remote:
        return CheckResult("ok", "no TLS, but the broker is on this machine's loopback")
    what = "the broker password and every message travel" if b.username else "every message travels"
    return CheckResult(
        "fail" if b.username else "warn",
        f"no TLS to {', '.join(remote)}: {what} in clear text",
        fix="give the broker a TLS listener (docs/security.md) and connect with mqtts:// and broker.ca_certs")


def _exposed(path: Path) -> str | None:
    """Why ``path`` is not private to its owner, or None."""
    try:
        info = path.stat()
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        return f"{path} is mode {mode:04o} (readable by others)"
    if info.st_uid != os.geteuid():
        return f"{path} belongs to another user (uid {info.st_uid})"
    return None


def check_credentials(ctx: DoctorContext) -> CheckResult:
    b = ctx.settings.broker
    files = [p for p in (b.password_file, b.keyfile) if p is not None]
    if b.username is None and not files:
        return CheckResult("skip", "no broker credentials configured (anonymous)")
    problems = [why for why in map(_exposed, files) if why is not None]
    if problems:
        return CheckResult("fail", "; ".join(problems),
                           fix="chmod 600 the file (and chown it to the user the daemon runs as)")
    if b.password is not None:
        return CheckResult("ok", f"user {b.username!r} with a password given directly (environment, flag or config); "
                                 "a password_file (mode 0600) keeps it out of config files")
    named = ", ".join(str(p) for p in files)
    return CheckResult("ok", f"user {b.username!r}; {named} private (0600)" if files else f"user {b.username!r}")


def _acl_probe(ctx: DoctorContext) -> dict[str, object]:
    if "acl" in ctx.cache:
        return ctx.cache["acl"]  # type: ignore[no-any-return]
    reached = ctx.cache.get("probe")
    if isinstance(reached, dict) and not reached.get("ok"):  # the broker check failed: do not wait again
        ctx.cache["acl"] = {"outcome": "unreachable", "detail": str(reached.get("error"))}
        return ctx.cache["acl"]  # type: ignore[no-any-return]
    from swarmbus.errors import BrokerUnreachable, PublishRefused, TimeoutExpired
    from swarmbus.transport.negotiated import ProtocolMemory
    from swarmbus.transport.publish import publish_once

    result: dict[str, object]
    try:
        protocol = publish_once(ctx.settings.broker, PROBE_TOPIC, b"", agent_id=ctx.agent_id, timeout=5.0,
                                memory=ProtocolMemory.in_state_dir(ctx.settings.state_dir))
        result = {"outcome": "accepted", "protocol": protocol}
    except PublishRefused as exc:
        result = {"outcome": "refused", "detail": str(exc).rsplit(": ", 1)[-1]}
    except (BrokerUnreachable, TimeoutExpired) as exc:
        result = {"outcome": "unreachable", "detail": str(exc)}
    ctx.cache["acl"] = result
    return result


def check_acl(ctx: DoctorContext) -> CheckResult:
    probe = _acl_probe(ctx)
    if probe["outcome"] == "unreachable":
        return CheckResult("skip", "ACL not probed (broker unreachable)")
    if probe["outcome"] == "refused":
        return CheckResult("ok", f"the broker refused a probe publish as another sender ({probe['detail']}): "
                                 "an ACL binds topics to users")
    if probe["protocol"] != "5":
        return CheckResult("warn", "ACL unknown: on MQTT 3.1.1 a broker cannot report a refused publish",
                           fix="use an MQTT 5 broker (mosquitto 2) to have refusals reported")
    local = not _remote(ctx.settings)
    return CheckResult(
        "ok" if local and ctx.settings.broker.username is None else "warn",
        f"the broker accepted a probe publish to {PROBE_TOPIC} (as another sender): any client may write "
        "any agent's inbox and presence" + (" (a loopback development broker)" if local else ""),
        fix=ACL_FIX)


def check_verified(ctx: DoctorContext) -> CheckResult:
    on = ctx.settings.security.verify_senders
    probe = _acl_probe(ctx)
    enforced = probe["outcome"] == "refused"
    if on and enforced:
        return CheckResult("ok", "verified senders on: the broker vouches for every sender's id, "
                                 "and a message whose `from` differs is quarantined")
    if on:
        unknown = probe["outcome"] != "accepted" or probe.get("protocol") != "5"
        return CheckResult(
            "warn",
            "verified senders on, but " + ("the broker's ACL could not be probed" if unknown else
                                           "the broker does not bind topics to users") +
            ": a sender's id is only as good as the ACL",
            fix=ACL_FIX)
    if enforced:
        return CheckResult("warn", "verified senders off although the broker enforces an ACL: `from` is self-asserted",
                           fix="set security.verify_senders = true (or SWARMBUS_VERIFY_SENDERS=1) on every agent "
                               "once all run this swarmbus version (docs/security.md)")
    if not _remote(ctx.settings):
        return CheckResult("ok", "verified senders off (a loopback development broker)")
    return CheckResult("warn", "verified senders off: any client that reaches the broker can write as any agent",
                       fix=ACL_FIX + ", then set security.verify_senders = true")


SECURITY_CHECKS = (
    DoctorCheck("tls", check_tls, 21),
    DoctorCheck("credentials", check_credentials, 22),
    DoctorCheck("acl", check_acl, 26),
    DoctorCheck("verified-senders", check_verified, 27),
)


@hookimpl
def swarmbus_doctor_checks(register: Callable[[DoctorCheck], None], settings: Settings) -> None:
    for check in SECURITY_CHECKS:
        register(check)
