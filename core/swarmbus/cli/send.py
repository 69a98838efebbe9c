"""``swarmbus send``: the fast path.

With a daemon running for ``--agent-id``, a send is: parse flags, read the raw config (no
pydantic), validate the envelope (stdlib), one request on the daemon's Unix socket. The
daemon spools it in its durable outbox and publishes it on its existing connection. Only
without a daemon (or with ``--direct``) do we import paho and pydantic and connect.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from swarmbus.cli.common import print_json, raw_config
from swarmbus.control import DaemonUnavailable, request
from swarmbus.envelope import Envelope, new_envelope, validate_own_id
from swarmbus.errors import SwarmbusError, UsageError
from swarmbus.markdown import append_entry, format_entry, outbox_path
from swarmbus.paths import AgentPaths


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
    if args.wait < 0:
        raise UsageError("--wait must be 0 or more seconds")
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
    status = None
    if not args.direct:
        status = _via_daemon(AgentPaths.for_agent(agent_id, raw.get("state_dir")).socket, envelope, args.wait)
    if status is None:
        _direct(args, envelope)
        status = "published"
    archive = outbox_path(agent_id, args.outbox, os.environ, raw.get("outbox"))
    if archive is not None:
        try:
            append_entry(archive, format_entry(envelope, direction="out"))
        except OSError as exc:
            sys.stderr.write(f"swarmbus: warning: could not append to outbox {archive}: {exc.strerror}\n")
    if args.json:
        print_json({"id": envelope.id, "to": envelope.to, "status": status})
    elif status == "queued":
        print(f"Queued for {envelope.to}: the daemon will publish it when the broker is back (id {envelope.id})")
    else:
        print(f"Sent to {envelope.to}")
    return 0


def _via_daemon(socket_path: Path, envelope: Envelope, wait: float) -> str | None:
    try:
        answer = request(socket_path, {"op": "send", "envelope": envelope.to_dict(), "wait": wait}, timeout=wait + 5)
    except DaemonUnavailable:
        return None
    except TimeoutError as exc:
        raise SwarmbusError(f"the local daemon did not answer: {exc}") from None
    if not answer.get("ok"):
        error = SwarmbusError if answer.get("kind") != "usage" else UsageError
        raise error(f"the daemon refused the message: {answer.get('error')}")
    return str(answer.get("status", "published"))


def _direct(args: argparse.Namespace, envelope: Envelope) -> None:
    from swarmbus.cli.common import load_settings_for
    from swarmbus.oneshot import send_direct

    settings = load_settings_for(args)
    send_direct(settings, envelope, timeout=max(args.wait, 1.0))
