"""``swarmbus dashboard``: serve a live web page of agents, messages, jobs and tasks.

Needs the ``dashboard`` extra (Starlette and uvicorn), imported only when the command runs;
without it the command exits 2 saying ``pip install 'swarmbus[dashboard]'``. The work is in
:mod:`swarmbus.dashboard`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from swarmbus.errors import UsageError

DESCRIPTION = """\
Serve a local web page that shows, live (no reloading), what the swarm does:

  - agents: online, offline or stale, role, capabilities, swarm, last seen (the broker's
    retained presence and heartbeats, as `swarmbus list` reads them);
  - the message flow of the agents whose stores are on this machine, each message with its
    delivery ladder (published, stored, woken, surfaced, acknowledged, replied: `swarmbus trace`);
  - held messages and quarantined publishes with their reasons (`swarmbus inbox --quarantined`,
    `swarmbus policy explain`);
  - jobs and tasks with their states (the retained swarmbus/jobs/# and swarmbus/tasks/+/state/+).

It only reads: a read-only broker connection of its own (it never takes an agent's session) and
the stores opened read-only (the daemons never wait for it). It listens on 127.0.0.1 by
default. Bound to any other address it requires a token: generated and printed once with the
address (or read from --token-file), passed as ?token= on the first visit, then kept in a cookie.
--port 0 picks a free port; the address is printed either way. The broker is given by --broker
URL (HOST:PORT or mqtt://HOST:PORT) or the usual settings: --port here is the web page's.

  swarmbus dashboard                              http://127.0.0.1:8765/
  swarmbus dashboard --port 0 --agent-id planner --agent-id coder
  swarmbus dashboard --bind 0.0.0.0 --port 8765 --token-file ~/.config/swarmbus/dashboard.token

Needs: pip install 'swarmbus[dashboard]' (Starlette and uvicorn).
Exit codes: 0 stopped by SIGTERM; 1 failure; 2 usage error (a bad flag, the port in use, the
extra not installed) or broker unreachable; 130 stopped by Ctrl-C.
"""

DEFAULT_PORT = 8765


def configure(p: argparse.ArgumentParser) -> None:
    """Add this command's description and arguments to p."""
    from swarmbus.cli.main import _broker, _common

    p.description = DESCRIPTION
    p.epilog = None
    p.add_argument("--port", dest="http_port", type=int, default=DEFAULT_PORT, metavar="P",
                   help=f"the web page's TCP port (default {DEFAULT_PORT}; 0: any free port, printed)")
    p.add_argument("--bind", default="127.0.0.1", metavar="ADDR",
                   help="the address to listen on (default 127.0.0.1; any other needs a token)")
    p.add_argument("--agent-id", dest="agent_ids", action="append", metavar="ID",
                   help="show the stores of these local agents only (repeat it; default: every agent dir in the "
                        "state dir, also those that appear later)")
    p.add_argument("--token-file", metavar="F",
                   help="require the token in this file (its first line, at least 16 characters), also on loopback; "
                        "without it a token is generated when --bind is not a loopback address")
    _broker(p, port=False)
    _common(p)


def _require_extra() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"swarmbus dashboard needs the dashboard extra ({exc.name or exc} is missing): "
                         "pip install 'swarmbus[dashboard]'") from None


def _read_token(path: str) -> str:
    from swarmbus.dashboard.server import MIN_TOKEN_CHARS

    file = Path(path).expanduser()
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--token-file {file}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    token = lines[0].strip() if lines else ""
    if len(token) < MIN_TOKEN_CHARS or not token.isascii() or not token.isprintable() or " " in token:
        raise UsageError(f"--token-file {file}: its first line must be a token of at least {MIN_TOKEN_CHARS} "
                         "printable ASCII characters without spaces",
                         hint="make one: python3 -c 'import secrets; print(secrets.token_urlsafe(24))' > FILE")
    return token


def run(args: argparse.Namespace) -> int:
    """Run the command; returns the exit code (0 after SIGTERM)."""
    from swarmbus.cli.common import load_settings_for
    from swarmbus.envelope import validate_agent_id

    _require_extra()
    agents = [validate_agent_id(a) for a in args.agent_ids] if args.agent_ids else None
    token = _read_token(args.token_file) if args.token_file else None
    settings = load_settings_for(args)

    from swarmbus.dashboard.server import serve

    serve(settings, bind=args.bind, port=args.http_port, agents=agents, token=token)
    return 0
