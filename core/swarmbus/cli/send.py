"""``swarmbus send``: the fast path.

With a daemon running for ``--agent-id``, a send is: parse flags, read the raw config (no
pydantic), validate the envelope (stdlib), one request on the daemon's Unix socket. The
daemon spools it in its durable outbox and publishes it on its existing connection. Only
without a daemon (or with ``--direct``) do we import paho and connect, with broker settings
validated by :mod:`swarmbus.broker_options` (still no pydantic, no pluggy) and a synchronous
one-shot publish (:func:`swarmbus.transport.publish.publish_once`).

Broker flags (``--broker``, ``--port``, ...) name where to send: when they give another broker
than the one the daemon is connected to, the message goes directly to the named broker (a note
on stderr says so), never silently through the daemon to its own. Only then is the daemon asked
for its broker first (one more socket round trip).
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from swarmbus.cli.common import FLAG_KEYS, print_json, raw_config
from swarmbus.control import DaemonUnavailable, daemon_status, send_request
from swarmbus.envelope import Envelope, new_envelope, validate_own_id
from swarmbus.errors import SwarmbusError, UsageError
from swarmbus.paths import AgentPaths

TYPE_CHECKING = False  # not from typing: importing typing costs this path ~4 ms
if TYPE_CHECKING:
    from typing import Any

    from swarmbus.config import RawConfig


def _read_body(args: argparse.Namespace) -> str:
    if args.body is not None:
        return str(args.body)
    try:
        data = sys.stdin.buffer.read() if args.body_file == "-" else Path(args.body_file).expanduser().read_bytes()
    except OSError as exc:
        raise UsageError(f"--body-file {args.body_file}: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"--body-file {args.body_file}: not UTF-8 text") from None


def run(args: argparse.Namespace) -> int:
    step = args.wait if isinstance(args.wait, str) else None
    puback_wait = 5.0 if step is not None else args.wait
    if puback_wait < 0:
        raise UsageError("--wait must be 0 or more seconds")
    if step is not None and (args.direct or not 0 < args.timeout <= 86400):
        raise UsageError("--wait STEP needs the daemon (not --direct) and a --timeout from 0 to 86400 seconds")
    raw = raw_config(args)
    agent_id = raw.get("agent_id")
    if not agent_id:
        raise UsageError("no agent id: pass --agent-id ID (the sender) or set SWARMBUS_AGENT_ID")
    validate_own_id(agent_id)
    expires_at = None
    if args.expires_in is not None:
        try:  # nan, inf and huge values cannot become a timestamp
            expires_at = (datetime.now(UTC) + timedelta(seconds=args.expires_in)).isoformat()
        except (OverflowError, ValueError):
            raise UsageError(f"--expires-in {args.expires_in:g}: not a usable number of seconds") from None
    envelope = new_envelope(
        agent_id, args.to, args.subject, _read_body(args),
        content_type=args.content_type, priority=args.priority, reply_to=args.reply_to,
        in_reply_to=args.in_reply_to, expires_at=expires_at,
    )
    if step is not None and step != "stored":
        from swarmbus.receipts import with_request

        envelope = with_request(envelope, [step])
    status = answer = None
    socket_path = AgentPaths.for_agent(agent_id, raw.get("state_dir")).socket
    if not args.direct and not _elsewhere(args, raw, socket_path):
        answer = _via_daemon(socket_path, envelope, puback_wait)
        status = None if answer is None else str(answer.get("status", "published"))
    if status is None:
        if step is not None:
            raise UsageError(f"--wait {step} needs a running daemon for {agent_id} (it receives the receipts): "
                             f"start it with `swarmbus start --agent-id {agent_id}`; the message was not sent")
        _direct(raw, envelope, timeout=max(puback_wait, 1.0))
        status = "published"
    if answer is not None and answer.get("recipient") == "never seen":
        sys.stderr.write(f"swarmbus: note: {envelope.to} has never been seen on this broker (no presence record); "
                         "the daemon keeps the message and publishes it again until it is stored there\n")
    if args.outbox or raw.get("outbox") or any(name.startswith("SWARMBUS_OUTBOX") for name in os.environ):
        _archive(agent_id, envelope, args.outbox, raw.get("outbox"))
    reached = None
    if step is not None:
        from swarmbus.cli.trace import wait_for_step

        reached = wait_for_step(socket_path, envelope.id, step, args.timeout, status)
    if args.json:
        out: dict[str, Any] = {"id": envelope.id, "to": envelope.to, "status": status}
        if reached is not None:
            out["reached"] = reached.reached
            out["ladder"] = reached.ladder
        print_json(out)
    elif status == "queued":
        print(f"Queued for {envelope.to}: the daemon will publish it when the broker is back (id {envelope.id})")
    else:
        print(f"Sent to {envelope.to}")
    if reached is not None and not reached.ok:
        sys.stderr.write(f"swarmbus: error: timed out after {args.timeout:g}s waiting for {step}: message {envelope.id} "
                         f"reached {reached.reached} (the daemon keeps it and publishes it again)\n")
        return 1
    if reached is not None and not args.json:
        print(f"{envelope.to} reached {reached.reached}")
    return 0


def _archive(agent_id: str, envelope: Envelope, flag: str | None, configured: str | None) -> None:
    """Append the message to the outbox archive, if one is configured. Only called when some
    outbox setting exists: swarmbus.markdown costs ~2 ms to import."""
    from swarmbus.markdown import append_entry, format_entry, outbox_path

    archive = outbox_path(agent_id, flag, os.environ, configured)
    if archive is not None:
        try:
            append_entry(archive, format_entry(envelope, direction="out"))
        except OSError as exc:
            sys.stderr.write(f"swarmbus: warning: could not append to outbox {archive}: {exc.strerror}\n")


def deliver(args: argparse.Namespace, raw: RawConfig, envelope: Envelope, *, wait: float = 5.0) -> tuple[str, str]:
    """Send ``envelope`` as ``swarmbus send`` does, for other commands that send a message (``job
    submit``): through the sender's daemon when one runs and the broker flags in ``args`` name no
    other broker, else over a connection of our own. ``wait``: seconds for the PUBACK.

    Returns ``(status, via)``: status ``published`` or ``queued`` (the daemon spooled it while the
    broker is away) or what the daemon answered; via ``daemon`` or ``direct``.

    :raises SwarmbusError: the direct publish failed (unreachable broker, refused publish).
    """
    socket_path = AgentPaths.for_agent(envelope.from_agent, raw.get("state_dir")).socket
    if not getattr(args, "direct", False) and not _elsewhere(args, raw, socket_path):
        answer = _via_daemon(socket_path, envelope, wait)
        if answer is not None:
            return str(answer.get("status", "published")), "daemon"
    _direct(raw, envelope, timeout=max(wait, 1.0))
    return "published", "direct"


def _elsewhere(args: argparse.Namespace, raw: RawConfig, socket_path: Path) -> bool:
    """True when broker flags name another broker than the running daemon's: the message then
    goes directly to the named one (said on stderr). False without broker flags (no cost), with
    no daemon, or when the daemon's broker is the one named."""
    if not any(key.startswith("broker.") and getattr(args, dest, None) is not None for key, dest, _ in FLAG_KEYS):
        return False
    status = daemon_status(socket_path)
    if status is None:
        return False
    from swarmbus.broker_options import broker_options

    named, theirs = broker_options(raw).url, status.get("broker")
    if named == theirs:
        return False
    sys.stderr.write(f"swarmbus: note: the broker flags name {named}, but the daemon of {raw.get('agent_id')} "
                     f"uses {theirs}: sending directly to {named} (use --direct to say so, or drop the broker "
                     "flags to send through the daemon)\n")
    return True


def _via_daemon(socket_path: Path, envelope: Envelope, wait: float) -> dict[str, Any] | None:
    """The daemon's answer for the send (``status``: ``published``, ``queued``, ...; ``recipient``:
    what presence says of it), or None when no daemon runs. A daemon too late to take it refuses
    it unsent (see ``control.send_request``)."""
    try:
        answer = send_request(socket_path, envelope.to_dict(), wait)
    except DaemonUnavailable:
        return None
    except TimeoutError as exc:
        raise SwarmbusError(f"the local daemon did not answer ({exc}): the message was not sent") from None
    if not answer.get("ok"):
        if answer.get("status") == "refused":
            from swarmbus.errors import PublishRefused

            raise PublishRefused(str(answer.get("error")), hint=answer.get("hint"))
        error = SwarmbusError if answer.get("kind") != "usage" else UsageError
        raise error(f"the daemon refused the message: {answer.get('error')}")
    return answer


def _direct(raw: RawConfig, envelope: Envelope, *, timeout: float) -> None:
    """Publish over a connection of our own: what :func:`swarmbus.oneshot.send_direct` does,
    without building the pydantic settings."""
    from swarmbus.broker_options import broker_options
    from swarmbus.config import verify_senders
    from swarmbus.topics import topic_for_recipient
    from swarmbus.transport.negotiated import ProtocolMemory
    from swarmbus.transport.publish import publish_once
    from swarmbus.transport.reach import enable_notices

    enable_notices()  # a person waits: say what a slow connect waits for
    broker = broker_options(raw)
    sender = envelope.from_agent if verify_senders(raw) else None
    publish_once(broker, topic_for_recipient(envelope.to, sender), envelope.to_wire(), agent_id=envelope.from_agent,
                 timeout=timeout, memory=ProtocolMemory.in_state_dir(raw.get("state_dir")))

