"""Argument parsing, dispatch and error reporting for the ``swarmbus`` CLI.

Exit codes (stable, documented in ``docs/cli.md``): 0 success; 1 failure or timeout;
2 usage error, invalid configuration, or broker unreachable; 130 interrupted.
User mistakes print one line on stderr (``swarmbus: error: ...``) and never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from swarmbus import __version__

TYPE_CHECKING = False  # not from typing: importing typing costs the send fast path ~4 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, NoReturn

DESCRIPTION = """\
Reactive, durable messaging between AI agents over MQTT.

Every agent runs a listener daemon (`swarmbus start`) that keeps each message in a local
store before acknowledging it, and wakes its host agent when policy says so. Other commands
send, read, and inspect.

  swarmbus broker                       run a local development broker (mosquitto, or NATS)
  swarmbus start --agent-id coder       run coder's listener daemon
  swarmbus send --agent-id planner --to coder --subject hi --body "got a minute?"
  swarmbus read --agent-id coder        print coder's new messages
  swarmbus list                         who is online
  swarmbus doctor --agent-id coder      check everything, with a fix for each failure
"""

EPILOG = """\
Settings come from flags, then environment (SWARMBUS_*, MQTT_*), then the config file
(`swarmbus config path`), then defaults; `swarmbus config show` says which won.
Exit codes: 0 ok, 1 failure or timeout, 2 usage error or broker unreachable.
"""


SUB_EPILOG = "Exit codes: 0 ok, 1 failure or timeout, 2 usage error or broker unreachable."


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``, without importing shutil (~2 ms, with the
    compression modules it pulls in): $COLUMNS, else the terminal's width, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's RawDescriptionHelpFormatter, sized the same way but without ``shutil``:
    argparse makes one formatter per ``add_argument`` call, so ``swarmbus send`` makes dozens."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _terminal_columns() - 2 if width is None else width)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line plus a pointer to --help, exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"swarmbus: error: {message}\n(see `{self.prog} --help`)\n")
        raise SystemExit(2)


# -- argument groups shared by several commands -------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("general")
    g.add_argument("--config", metavar="PATH", help="config file (default: `swarmbus config path`; env SWARMBUS_CONFIG)")
    g.add_argument("--state-dir", metavar="DIR", help="local state directory (env SWARMBUS_STATE_DIR)")
    g.add_argument("--log-format", choices=("text", "json"), help="log format on stderr (default text)")
    g.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="log level (default info)")


def _agent(p: argparse.ArgumentParser, *, required_hint: str = "") -> None:
    p.add_argument("--agent-id", metavar="ID", help="this agent's id: 1-64 of a-z 0-9 _ - (env SWARMBUS_AGENT_ID)" + required_hint)


class _BrokerAction(argparse.Action):
    """``--broker`` given again adds a node: ``args.brokers`` keeps them all, ``args.broker`` the first."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        brokers = [*(getattr(namespace, "brokers", None) or []), values]
        namespace.brokers = brokers
        namespace.broker = brokers[0]


def _broker(p: argparse.ArgumentParser, *, port: bool = True) -> None:
    """The broker flags; ``port=False`` leaves out ``--port`` (for a command whose own port it is:
    the broker's then goes in ``--broker HOST:PORT``)."""
    g = p.add_argument_group("broker (env SWARMBUS_BROKER_* or MQTT_*)")
    g.add_argument("--broker", metavar="URL", action=_BrokerAction,
                   help="mqtt://, mqtts://, ws://, wss:// URL, or HOST[:PORT] (default localhost:1883); repeat it "
                        "for the nodes of a cluster, tried in order (env SWARMBUS_BROKER_HOSTS=a:1883,b:1883)")
    if port:
        g.add_argument("--port", type=int, help="broker port")
    g.add_argument("--username", help="broker user name")
    g.add_argument("--password", help="broker password (prefer --password-file: arguments are visible in ps)")
    g.add_argument("--password-file", metavar="PATH", help="file holding the broker password")
    g.add_argument("--tls", dest="tls", action="store_const", const=True, help="use TLS")
    g.add_argument("--no-tls", dest="tls", action="store_const", const=False, help="do not use TLS")
    g.add_argument("--ca-cert", metavar="PATH", help="CA bundle to verify the broker (implies --tls)")
    g.add_argument("--client-cert", metavar="PATH", help="client certificate for mTLS (with --client-key)")
    g.add_argument("--client-key", metavar="PATH", help="client private key for mTLS")
    g.add_argument("--client-id-prefix", metavar="PREFIX", help="MQTT client id prefix (default swarmbus)")
    g.add_argument("--mqtt-version", choices=("auto", "5", "3.1.1"), help="MQTT protocol (default auto: 5, else 3.1.1)")


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")


def _consumer(p: argparse.ArgumentParser) -> None:
    p.add_argument("--consumer", default="default", metavar="NAME",
                   help="cursor name: each consumer sees every message once (default: default)")


# -- one builder per core command: only the one being run is called ----------------------------------


WAIT_STEPS = ("stored", "surfaced", "replied")


def _wait_value(text: str) -> float | str:
    """``send --wait``: a number of seconds (the PUBACK) or a delivery step."""
    if text in WAIT_STEPS:
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"use a number of seconds or one of {', '.join(WAIT_STEPS)}") from None


def _retire(p: argparse.ArgumentParser) -> None:
    p.add_argument("retired", metavar="AGENT_ID", help="the agent id that is gone")
    p.add_argument("--force", action="store_true",
                   help="even when its presence says it is online (its daemon would be disconnected and stop)")
    _json(p)
    _broker(p)
    _common(p)


def _trace(p: argparse.ArgumentParser) -> None:
    p.add_argument("message_id", metavar="MSG_ID", help="the message's id")
    _agent(p)
    _json(p)
    _common(p)


def _send(p: argparse.ArgumentParser) -> None:
    _agent(p)
    p.add_argument("--to", required=True, metavar="ID", help="recipient agent id, or `broadcast`")
    p.add_argument("--subject", required=True, help="one line, at most 256 characters")
    body = p.add_mutually_exclusive_group(required=True)
    body.add_argument("--body", help="message text (at most 64 KiB of UTF-8)")
    body.add_argument("--body-file", metavar="PATH", help="read the body from a file, or `-` for stdin")
    p.add_argument("--priority", default="normal", type=str.lower, choices=("low", "normal", "high"),
                   help="high wakes agents under the default wake policy (default normal)")
    p.add_argument("--content-type", default="text/plain", help="rendering hint: text/plain, text/markdown, application/json")
    p.add_argument("--reply-to", metavar="ID", help="agent id replies should go to")
    p.add_argument("--in-reply-to", metavar="MESSAGE_ID", help="id of the message this answers (threads)")
    p.add_argument("--expires-in", type=float, metavar="SECONDS", help="receivers keep but do not act on it after this")
    p.add_argument("--outbox", metavar="PATH", help="append to this archive file ({agent_id} expands); env SWARMBUS_OUTBOX_<ID>, SWARMBUS_OUTBOX")
    p.add_argument("--wait", type=_wait_value, default=5.0, metavar="SECONDS|STEP",
                   help="SECONDS: how long to wait for the broker's PUBACK (default 5); stored, surfaced or replied: "
                        "block until the recipient reached that step (needs the daemon; exit 1 on --timeout)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="with --wait STEP: give up after this long (default 60)")
    p.add_argument("--direct", action="store_true", help="bypass the local daemon and connect to the broker directly")
    _json(p)
    _broker(p)
    _common(p)


def _start(p: argparse.ArgumentParser) -> None:
    _agent(p)
    p.add_argument("--inbox", metavar="PATH", help="markdown inbox archive ({agent_id} expands; default in the state dir)")
    p.add_argument("--no-archive", dest="archive", action="store_const", const=False, help="do not write the inbox file")
    p.add_argument("--wake-policy", choices=("high", "all", "none", "priority-high"), help="when to wake the host (default high)")
    p.add_argument("--invoke", metavar="CMD", help="command to run per wake, body on stdin (split like a shell, never run by one)")
    p.add_argument("--handler-timeout", type=float, metavar="SECONDS", help="per-handler timeout (default 600)")
    p.add_argument("--handler-concurrency", type=int, metavar="N", help="concurrent runs per handler (default 8)")
    p.add_argument("--heartbeat-interval", type=float, metavar="SECONDS", help="presence heartbeat (default 60)")
    p.add_argument("--session-expiry", type=int, metavar="SECONDS", help="MQTT 5 session expiry (default 604800)")
    p.add_argument("--detach", action="store_true",
                   help="run in the background (log and pid in the agent's state dir); if it already runs, say so, exit 0")
    class _Joined(argparse.Action):
        """Repeated values as one comma-separated string (`start --detach` forwards it as one flag)."""

        def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                     option_string: str | None = None) -> None:
            before = getattr(namespace, self.dest, None)
            setattr(namespace, self.dest, f"{before},{values}" if before else str(values))

    g = p.add_argument_group("swarm (docs/swarm.md; shown in presence, used by the task board)")
    g.add_argument("--role", metavar="R", help="this agent's role, e.g. reviewer (env SWARMBUS_ROLE)")
    g.add_argument("--capability", metavar="C", action=_Joined,
                   help="a capability, e.g. python; repeat it (at most 32; env SWARMBUS_CAPABILITIES=a,b)")
    g.add_argument("--swarm", metavar="NAME", help="the swarm this agent belongs to (env SWARMBUS_SWARM)")
    p.description = (p.description or "") + (
        "\n\n--role, --capability and --swarm declare what this agent is in its swarm: its presence\n"
        "shows them (`swarmbus list --role R`), and the task board offers it the tasks they fit\n"
        "(docs/swarm.md).\n\n"
        "  swarmbus start --agent-id rev-1 --swarm ci --role reviewer --capability python --detach")
    _broker(p)
    _common(p)


def _stop(p: argparse.ArgumentParser) -> None:
    _agent(p)
    p.add_argument("--timeout", type=float, default=20.0, metavar="SECONDS",
                   help="wait this long after SIGTERM before SIGKILL (default 20)")
    p.add_argument("--remove-log", action="store_true",
                   help="also remove the detached daemon's log (daemon.log) and its keeper's record (keeper.json); "
                        "`swarmbus uninit` uses it")
    _common(p)


def _status(p: argparse.ArgumentParser) -> None:
    _agent(p)
    _json(p)
    _common(p)


def _reader(extra: Callable[[argparse.ArgumentParser], None]) -> Callable[[argparse.ArgumentParser], None]:
    def build(p: argparse.ArgumentParser) -> None:
        _agent(p)
        _consumer(p)
        extra(p)
        _json(p)
        _broker(p)
        _common(p)

    return build


def _read_extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max", type=int, default=10, metavar="N", help="at most N messages (default 10)")
    p.add_argument("--peek", action="store_true", help="do not advance the cursor")


def _watch_extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS", help="give up after this (exit 1; default 30)")


def _tail_extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new messages until interrupted")
    p.add_argument("--reset", action="store_true", help="start again from the first stored message")


def _wait(p: argparse.ArgumentParser) -> None:
    _agent(p)
    _consumer(p)
    p.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS", help="give up after this (exit 1; default 3600)")
    p.add_argument("--max", type=int, default=20, metavar="N", help="at most N messages in one prompt (default 20)")
    p.add_argument("--json", action="store_true", help="print one JSON message object per line instead of the prompt")
    p.add_argument("--stderr", action="store_true", help="write the messages to stderr instead of stdout")
    p.add_argument("--exit-code", type=int, default=0, metavar="N", help="exit code when messages were printed (default 0)")
    _common(p)


def _agent_broker(p: argparse.ArgumentParser) -> None:
    _agent(p)
    _broker(p)
    _common(p)


def _list(p: argparse.ArgumentParser) -> None:
    p.add_argument("--all", action="store_true", help="include offline agents")
    p.add_argument("--role", dest="filter_role", metavar="R", help="only agents with this role")
    p.add_argument("--capability", dest="filter_capabilities", metavar="C", action="append",
                   help="only agents with this capability (repeat it: all of them)")
    p.add_argument("--swarm", dest="filter_swarm", metavar="S", help="only agents of this swarm")
    p.description = (p.description or "") + (
        "\n\n--role, --capability and --swarm keep only the agents whose presence declares them\n"
        "(`swarmbus start --role R --capability C --swarm S`); --json shows them for each agent.\n\n"
        "  swarmbus list --swarm ci --role reviewer --capability python --json")
    p.add_argument("--timeout", type=float, metavar="S", default=None,
                   help="keep asking a broker that does not answer the scan (a cluster electing a leader) "
                        "for up to S seconds (default 30); an unreachable broker fails at once")
    _agent(p)
    _json(p)
    _broker(p)
    _common(p)


def _inbox(p: argparse.ArgumentParser) -> None:
    _agent(p)
    p.add_argument("--quarantined", action="store_true", help="show quarantined (rejected) publishes and why")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="newest N (default 20)")
    _json(p)
    _common(p)


def _wake(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("test",), help="test: probe and prove each of the host's wake paths")
    _agent(p)
    _json(p)
    _common(p)


def _policy(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("explain", "hold", "release"),
                   help="explain: the effective wake chain, and a message's verdicts; hold: hold every wake of the "
                        "agent (its daemon keeps it); release: end that hold and wake what it held")
    _agent(p)
    p.add_argument("--message", metavar="MSG_ID", help="a stored message's id (or #SEQ): each rule's verdict for it now")
    p.add_argument("--for", dest="duration", metavar="DURATION",
                   help="hold: only this long (90s, 10m, 2h, 1d; default: until `swarmbus policy release`)")
    p.add_argument("--reason", help="hold: why (shown with each held message)")
    _json(p)
    _common(p)


def _config(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("show", "check", "path"), help="show: values and sources; check: validate; path: the config file")
    _agent(p)
    _json(p)
    _broker(p)
    _common(p)


def _plugins(p: argparse.ArgumentParser) -> None:
    p.add_argument("--all", action="store_true", help="include built-in plugins")
    _json(p)


def _doctor(p: argparse.ArgumentParser) -> None:
    _agent(p)
    _json(p)
    _broker(p)
    _common(p)


def _broker_command(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=("mosquitto", "nats"), default="mosquitto",
                   help="mosquitto (default), or nats: nats-server with JetStream and its MQTT 3.1.1 listener")
    p.add_argument("--nodes", type=int, metavar="N",
                   help="with --engine nats: a loopback cluster of N nodes, MQTT on --port, --port+1, ... (default 1)")
    p.add_argument("--port", type=int, default=1883, help="listen port (default 1883)")
    p.add_argument("--bind", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--print-config", action="store_true", help="print the generated config and exit")
    what.add_argument("--detach", action="store_true",
                      help="run it in the background, restarted if it crashes (files in <state>/broker/PORT); "
                           "if a broker already answers on the port, say so, exit 0")
    what.add_argument("--stop", action="store_true", help="stop the broker --detach started on --port")
    what.add_argument("--status", action="store_true", help="say whether a detached broker runs on --port")
    p.add_argument("--timeout", type=float, default=20.0, metavar="SECONDS",
                   help="with --stop: wait this long after SIGTERM before SIGKILL (default 20)")
    p.add_argument("--secure", metavar="DIR",
                   help="require the users and ACL made by `swarmbus broker acl --dir DIR` (anonymous refused; TLS "
                        "with the listener files it recorded); mosquitto: in the foreground or with --print-config "
                        "only; --engine nats: with every action")
    _json(p)
    _common(p)
    actions = p.add_subparsers(dest="broker_action", metavar="[acl]", parser_class=Parser, required=False,
                               title="actions (optional; `swarmbus broker acl --help`)")
    acl = actions.add_parser("acl", help=BROKER_ACL_HELP, description=BROKER_ACL_DESCRIPTION,
                             formatter_class=HelpFormatter)
    _broker_acl(acl)


BROKER_ACL_HELP = "write the password file, ACL and per-agent credentials for a list of agents"
BROKER_ACL_DESCRIPTION = """\
Write a least-privilege mosquitto set-up for AGENTs into DIR (mode 0700): the password file
(through mosquitto_passwd; passwords never in argv), the ACL (one user block per agent: it
sends only under its own id, reads only its own inbox, receipts, broadcasts and everyone's
presence; observers read presence, broadcasts, jobs and task states), and for each one
agents/<id>/password (0600) and agents/<id>/swarmbus.toml (for `swarmbus start --config`).
registry.json (no secrets) records who exists; mosquitto.conf is a snippet for a system broker;
nats-users.conf holds the same users and permissions for nats-server (it includes passwords: 0600).

Safe to re-run: ids already there keep their passwords; a run that changes nothing says so and
rewrites no file. Then reload the broker: kill -HUP <mosquitto pid>, or restart
`swarmbus broker --secure DIR`. --observer, --rotate and --remove take one or more ids (so put
the AGENTs first); --remove of an id that is not there does nothing and says so.

  swarmbus broker acl planner coder --observer dash --dir ~/bus-auth
  swarmbus broker acl --dir ~/bus-auth --rotate coder
  swarmbus broker acl --dir ~/bus-auth --remove planner
  swarmbus broker acl coder --dir ~/bus-auth --broker mqtts://bus.example:8883 --ca-cert ca.pem \\
      --server-cert server.pem --server-key server.key
  swarmbus broker --secure ~/bus-auth --port 8883 --bind 0.0.0.0

Exit codes: 0 done (or nothing to change), 1 mosquitto_passwd missing or failing, 2 usage error
(an invalid id, --rotate of an unknown id, a missing certificate file)."""


def _broker_acl(p: argparse.ArgumentParser) -> None:
    p.add_argument("agents", nargs="*", metavar="AGENT", help="agent ids to have (1-64 of a-z 0-9 _ -)")
    p.add_argument("--dir", required=True, metavar="DIR", help="where everything is written (created mode 0700)")
    p.add_argument("--observer", action="extend", nargs="+", metavar="NAME",
                   help="read-only principals (dashboards, cut-over checks): presence, broadcasts, jobs, task states")
    p.add_argument("--rotate", action="extend", nargs="+", metavar="ID", help="give an existing id a new password")
    p.add_argument("--remove", action="extend", nargs="+", metavar="ID",
                   help="delete an id: its password file entry, its ACL block and agents/<id>/")
    trust = p.add_mutually_exclusive_group()
    trust.add_argument("--verified", dest="verified", action="store_const", const=True, default=None,
                       help="agents may send only under their own id (the default for a new DIR)")
    trust.add_argument("--allow-unverified", dest="verified", action="store_const", const=False,
                       help="also let agents send on the plain topics (a fleet with senders too old to name themselves)")
    p.add_argument("--broker", dest="broker_url", metavar="URL",
                   help="the broker URL written into each agent's config (e.g. mqtts://broker.example:8883)")
    p.add_argument("--ca-cert", metavar="PATH",
                   help="the CA agents verify the broker with (written into their config; implies TLS)")
    tls = p.add_argument_group("the broker's TLS listener (recorded for `swarmbus broker --secure` and mosquitto.conf)")
    tls.add_argument("--server-cert", metavar="PATH", help="the broker's certificate (with --server-key)")
    tls.add_argument("--server-key", metavar="PATH", help="the broker's private key")
    tls.add_argument("--server-ca", metavar="PATH", help="the CA client certificates are checked against (optional)")
    _json(p)


def _init(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host-type", metavar="TYPE", help="host integration: cc, openclaw, ... or none (see `swarmbus plugins`)")
    p.add_argument("--remove", action="store_true", help="undo what init wrote (same as `swarmbus uninit`)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--service", choices=("auto", "systemd", "launchd", "none"), default="auto",
                   help="how the daemon runs: auto (default: a systemd/launchd user service when one works here, "
                        "else detached), systemd, launchd, or none (nothing started)")
    _uninit(p)


def _uninit(p: argparse.ArgumentParser) -> None:
    _agent(p)
    p.add_argument("--dry-run", action="store_true", help="print every file and command, change nothing")
    _broker(p)
    _common(p)


def _completion(p: argparse.ArgumentParser) -> None:
    p.add_argument("shell", choices=("bash", "zsh", "fish"), metavar="SHELL", help="bash, zsh or fish")


def _builder_in(module: str) -> Callable[[argparse.ArgumentParser], None]:
    """A builder that lives beside its command: ``swarmbus.cli.<module>.configure(parser)``, which
    sets the description and arguments. Imported only when that command is the one being run."""

    def build(p: argparse.ArgumentParser) -> None:
        __import__(f"swarmbus.cli.{module}", fromlist=["configure"]).configure(p)

    return build


_READER_DESCRIPTION = (
    ".\n\nReads the daemon's store when a daemon runs for --agent-id; otherwise takes\n"
    "the agent's session for a moment to fetch what the broker queued, without ever\n"
    "racing a running daemon. Each --consumer has its own cursor."
)

# name -> (one-line help, description or None for the help line, builder), in --help order
COMMANDS: dict[str, tuple[str, str | None, Callable[[argparse.ArgumentParser], None]]] = {
    "send": (
        "send a message to an agent or to everyone",
        "Send a message. Through the local daemon when one runs for --agent-id (fast, and\n"
        "spooled durably while the broker is down); otherwise over a direct connection.\n"
        "Broker flags (--broker, --port, ...) that name another broker than the daemon's send\n"
        "directly to the named broker (a note on stderr says so).\n\n"
        "  swarmbus send --agent-id planner --to coder --subject hi --body 'got a minute?'\n"
        "  git diff | swarmbus send --agent-id planner --to coder --subject review --body-file -\n"
        "  swarmbus send --agent-id planner --to broadcast --subject standup --body 'in 5'",
        _send,
    ),
    "start": (
        "run the listener daemon for an agent",
        "Run the listener daemon: the single MQTT receive owner for --agent-id. It stores\n"
        "every message before acknowledging it, archives it to the inbox file, and wakes\n"
        "the host agent when the wake policy says so. Stop it with SIGINT or SIGTERM.\n\n"
        "--detach runs it in the background instead, without a service manager, under a keeper\n"
        "that restarts it when it crashes (backoff 1 s doubling to 30 s; it gives up after 5\n"
        "restarts within 5 minutes; exit 2, a configuration error, is not restarted): output\n"
        "appended to <state>/agents/<id>/daemon.log, pid in daemon.pid; it waits until the daemon\n"
        "answers (up to 10 s). When the agent's daemon already runs it only says so (fast, exit 0).\n"
        "A detached daemon does not survive a reboot. Exit codes with --detach: 0 it runs,\n"
        "1 it could not be started (the reason and the log's last lines on stderr), 2 usage error\n"
        "(a bad flag or config, an --invoke program that cannot run).\n\n"
        "  swarmbus start --agent-id coder --detach\n"
        "  swarmbus status --agent-id coder\n"
        "  swarmbus stop --agent-id coder",
        _start,
    ),
    "stop": (
        "stop an agent's daemon",
        "Stop the agent's daemon: SIGTERM (it publishes its offline presence), then SIGKILL after\n"
        "--timeout. A detached daemon's keeper is stopped with it (it does not restart the daemon).\n"
        "Only processes the daemon's socket or locks confirm are signalled, never a pid from a\n"
        "stale pid file. A daemon run by systemd is stopped with `systemctl --user stop`\n"
        "(it starts again at the next login; `swarmbus uninit` removes the service).\n\n"
        "Exit codes: 0 stopped, or it was not running; 1 it could not be stopped; 2 usage error.",
        _stop,
    ),
    "status": (
        "say whether an agent's daemon runs, since when, and how",
        "Whether the agent's daemon runs: its pid, since when, what supervises it (systemd,\n"
        "launchd, detached with its keeper and how often it restarted the daemon, foreground), where\n"
        "its log is, and whether it is connected to the broker.\n\n"
        "Exit codes: 0 running, 1 not running, 2 usage error.",
        _status,
    ),
    "read": ("print new messages and advance the cursor",
             "print new messages and advance the cursor" + _READER_DESCRIPTION, _reader(_read_extra)),
    "watch": ("wait for the next message and print it",
              "wait for the next message and print it" + _READER_DESCRIPTION, _reader(_watch_extra)),
    "tail": ("print new messages; --follow keeps streaming",
             "print new messages; --follow keeps streaming" + _READER_DESCRIPTION, _reader(_tail_extra)),
    "wait": (
        "block until new messages arrive, print them as a wake prompt (for host hooks)",
        "Block until --consumer has at least one new message in the daemon's store, print the new\n"
        "messages as one wake prompt (or JSON lines), advance the cursor past them, and exit\n"
        "--exit-code. Needs a running daemon for --agent-id (exit 1 without one); it never takes\n"
        "the agent's MQTT session. A timeout exits 1 and prints nothing on stdout.\n\n"
        "  # Claude Code Stop hook with asyncRewake: exit 2 wakes the model and feeds it stderr\n"
        "  swarmbus wait --agent-id coder --consumer rewake --stderr --exit-code 2 --timeout 86400",
        _wait,
    ),
    "mcp-server": (
        "serve this agent's messaging to an MCP host over stdio (needs swarmbus[mcp])",
        "Run an MCP server on stdin/stdout with the tools send_message, read_inbox and list_agents,\n"
        "for --agent-id. It sends and reads through the agent's daemon (its local socket): it is\n"
        "never a second MQTT subscriber for the id. read_inbox is non-destructive until its\n"
        "messages are acknowledged (ack_ids). Needs: pip install 'swarmbus[mcp]'.\n\n"
        "  claude mcp add swarmbus -- swarmbus mcp-server --agent-id coder",
        _agent_broker,
    ),
    "list": (
        "list agents and their presence",
        "List agents from their retained presence records: online, offline, or stale\n"
        "(online but no heartbeat for three intervals: a crashed agent whose Last Will was lost\n"
        "with a broker node shows stale, never online), with when each was last seen. Agents known\n"
        "on this machine (its agent dirs and the peers their stores know) are also asked for by\n"
        "name, for brokers that list no retained records to wildcards (RabbitMQ before 3.13).",
        _list,
    ),
    "inbox": ("show the stored messages, their handler outcomes, and the quarantine", None, _inbox),
    "retire": (
        "remove a retired agent's broker session and retained presence",
        "Remove what an agent that is gone left on the broker: its persistent session (queued\n"
        "messages, subscriptions: a queue or consumer on NATS and RabbitMQ, where MQTT 3.1.1\n"
        "sessions never expire) and its retained presence record and heartbeat, so `list` stops\n"
        "showing it. Refused while its daemon runs here, or while its presence says it is online\n"
        "elsewhere (unless --force). `swarmbus uninit` does this for the agent it removes.\n\n"
        "  swarmbus retire old-worker-7\n\n"
        "Exit codes: 0 done, 1 refused (the agent is alive), 2 usage error or broker unreachable.",
        _retire,
    ),
    "trace": (
        "show a message's delivery ladder: published, stored, woken, surfaced, acknowledged, replied",
        "Show the delivery ladder of a message this agent sent or received, from its store (no daemon\n"
        "needed): when it was spooled and published, each receipt (stored, wake, surfaced,\n"
        "acknowledged, replied, with the agent that reported it), and its redelivery (attempts, how\n"
        "it ended). See docs/protocol.md, \"Delivery receipts\".\n\n"
        "  swarmbus trace --agent-id planner 25a7e691-8322-4685-a71f-c66c774b7e73 --json\n\n"
        "Exit codes: 0 shown, 1 this agent's store has no such message, 2 usage error.",
        _trace,
    ),
    "wake": (
        "say which of the host's wake paths would wake the agent now, proving each one",
        "test: ask the agent's daemon to probe each wake path its host plugin offers, in the\n"
        "configured order (Claude Code: session, rewake, resume), and to prove the ones that are\n"
        "ready end to end without a model call where the host allows it (the session's inbox:\n"
        "a connection, no post). Prints each path, ready or why not, and the one that would fire\n"
        "now (docs/hosts.md, \"The wake router\").\n\n"
        "  swarmbus wake test --agent-id coder\n\n"
        "Exit codes: 0 a path would fire, 1 none would (or no daemon runs for the agent), 2 usage.",
        _wake,
    ),
    "policy": (
        "explain the wake policy, or hold and release an agent's wakes",
        "explain: print the effective wake chain (the base decision, then every wake rule, with its\n"
        "configuration) and, with --message, each rule's verdict for that stored message now, the\n"
        "combined verdict, its stored hold and what was recorded (docs/policies.md).\n"
        "hold: the agent's daemon holds every wake (rule `manual`) until `release`, or for --for;\n"
        "release: ends it, and the messages it held are asked about again and woken.\n\n"
        "  swarmbus policy explain --agent-id coder\n"
        "  swarmbus policy explain --agent-id coder --message 5f0c...  --json\n"
        "  swarmbus policy hold --agent-id coder --for 2h --reason \"deploy freeze\"\n"
        "  swarmbus policy release --agent-id coder\n\n"
        "Exit codes: 0 explained, held or released; 1 no such message, or no daemon runs for the\n"
        "agent here (hold, release); 2 usage or configuration error.",
        _policy,
    ),
    "config": ("show or check the effective configuration", None, _config),
    "plugins": ("list plugins, their versions and hooks", None, _plugins),
    "doctor": (
        "check configuration, broker, daemon, store and plugins",
        "Run every check (core and installed plugins) and print a fix for each failure.\n"
        "Exit 0 when nothing failed (warnings allowed), 1 otherwise.",
        _doctor,
    ),
    "broker": (
        "run a local mosquitto (or NATS) for development and single-machine use",
        "Run mosquitto in the foreground with a generated config: loopback only,\n"
        "persistence with a 1 s autosave, no per-client queue cap, TCP_NODELAY.\n\n"
        "--detach runs it in the background instead, under a keeper that restarts it if it crashes\n"
        "(no service manager needed; config, database, pid and logs in <state>/broker/PORT/); it\n"
        "does not survive a reboot. When a broker already answers on the port it only says so.\n"
        "--stop stops that broker (never one swarmbus did not start), --status says if it runs.\n\n"
        "  swarmbus broker --port 1884 --detach\n"
        "  swarmbus broker --port 1884 --status\n"
        "  swarmbus broker --port 1884 --stop\n\n"
        "--engine nats runs nats-server instead (JetStream keeps the MQTT sessions; MQTT 3.1.1 only,\n"
        "which swarmbus falls back to by itself), one node or, with --nodes 3, a loopback cluster\n"
        "whose MQTT streams have 3 replicas, on ports --port, --port+1, ...; the daemon fails over\n"
        "between the nodes when given all of them (SWARMBUS_BROKER_HOSTS, or [broker] hosts in the config\n"
        "file; the command prints the line). Files in <state>/broker/nats-PORT/; see docs/brokers.md.\n\n"
        "  swarmbus broker --engine nats --nodes 3 --port 4301 --detach\n"
        "  swarmbus broker --engine nats --port 4301 --status\n"
        "  swarmbus broker --engine nats --port 4301 --stop\n\n"
        "`swarmbus broker acl AGENT ... --dir DIR` writes a least-privilege set-up (password file, ACL,\n"
        "per-agent credentials); `swarmbus broker acl --help` says more. --secure DIR then runs\n"
        "mosquitto with it: anonymous clients refused, and TLS when DIR records the listener files\n"
        "(in the foreground or with --print-config; not with --detach, --stop or --status), or\n"
        "nats-server (--engine nats, any action) with its users and per-subject permissions.\n\n"
        "  swarmbus broker acl planner coder --dir ~/bus-auth\n"
        "  swarmbus broker --secure ~/bus-auth --port 1884\n\n"
        "Exit codes: --detach 0 it runs, 1 it could not be started, 2 the port is taken by another\n"
        "program; --stop 0 stopped or none ran, 1 it would not stop; --status 0 runs, 1 does not.",
        _broker_command,
    ),
    "init": (
        "set this machine up as a swarmbus agent (daemon service, host integration)",
        "Set up an agent: check or start a broker, write the config file (agent id, host type,\n"
        "broker settings; your comments are kept), run the daemon, run the host type's setup (e.g.\n"
        "Claude Code: skill, MCP server, hooks), then run doctor. Re-running changes nothing that is\n"
        "already right; `swarmbus uninit` undoes it (also after an init that stopped half-way).\n\n"
        "The daemon (--service): auto runs it as a systemd (Linux) or launchd (macOS) user service\n"
        "when one works here, else detached and kept (`swarmbus start --detach`: no user bus in\n"
        "containers, root shells, WSL, CI), which does not survive a reboot (init says how to make\n"
        "it); systemd/launchd insist on that manager (a detached daemon is stopped first); none\n"
        "starts nothing. With no broker on the configured local port, init starts one too: a user\n"
        "service, or without one `swarmbus broker --detach` (uninit stops it if init started it).\n\n"
        "  swarmbus init --agent-id coder --host-type cc --dry-run\n"
        "  swarmbus init --agent-id coder --host-type openclaw --broker mqtt://broker.lan:1883",
        _init,
    ),
    "uninit": ("undo what `swarmbus init` wrote for an agent", None, _uninit),
    "job": ("submit a delegated job, report its events, wait for its outcome", None, _builder_in("job")),
    "task": ("post tasks to a board that exactly one eligible agent claims", None, _builder_in("task")),
    "swarm": ("start or stop a swarm of agents described in a file", None, _builder_in("swarm")),
    "dashboard": ("serve a live web page of agents, messages, jobs and tasks", None, _builder_in("dashboard")),
    "completion": (
        "print a shell completion script (bash, zsh, fish)",
        "Print a tab-completion script for SHELL on stdout: every command and option, plugin\n"
        "commands included. Put it where the shell loads completions, once, and again after\n"
        "upgrading swarmbus or adding a plugin:\n\n"
        "  bash  swarmbus completion bash > ~/.local/share/bash-completion/completions/swarmbus\n"
        "        (loaded by the bash-completion package; without it, add to ~/.bashrc:\n"
        "        eval \"$(swarmbus completion bash)\")\n"
        "  zsh   mkdir -p ~/.zfunc && swarmbus completion zsh > ~/.zfunc/_swarmbus\n"
        "        and in ~/.zshrc, before compinit: fpath=(~/.zfunc $fpath)\n"
        "  fish  swarmbus completion fish > ~/.config/fish/completions/swarmbus.fish\n\n"
        "Open a new shell afterwards.",
        _completion,
    ),
}

CORE_COMMANDS = tuple(COMMANDS)


def build_parser(plugin_commands: dict[str, Any] | None = None, only: str | None = None) -> Parser:
    """The full parser (every core command, then ``plugin_commands``), or with ``only`` a
    parser that knows just that one command: only its builder runs, so ``swarmbus send``
    does not pay for the ~260 ``add_argument`` calls of the others."""
    parser = Parser(prog="swarmbus", description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="store_true", help="print the version of swarmbus and of each plugin")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def add(name: str, help_text: str, description: str | None) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=description or help_text, epilog=SUB_EPILOG,
                              formatter_class=HelpFormatter)

    for name, (help_text, description, build) in COMMANDS.items():
        if only in (None, name):
            build(add(name, help_text, description))
    for command in (plugin_commands or {}).values():
        if only in (None, command.name):
            p = add(command.name, command.help, None)
            command.configure(p)
            _common(p)
    return parser


def _plugin_commands() -> dict[str, Any]:
    from swarmbus.plugins import HookRelay, get_plugin_manager

    return HookRelay(get_plugin_manager()).commands(frozenset(CORE_COMMANDS))


def _version() -> int:
    print(f"swarmbus {__version__}")
    from swarmbus.plugins import get_plugin_manager

    for info in get_plugin_manager().infos.values():
        if not info.builtin:
            state = "" if info.status == "loaded" else f" ({info.status})"
            print(f"  {info.distribution} {info.version} [{info.name}]{state}")
    return 0


def run(argv: Sequence[str]) -> int:
    wants_plugins = bool(argv) and argv[0] not in CORE_COMMANDS and not argv[0].startswith("-")
    wants_help = not argv or argv[0] in ("-h", "--help")
    plugin_commands = _plugin_commands() if (wants_plugins or wants_help) else {}
    only = argv[0] if argv and (argv[0] in CORE_COMMANDS or argv[0] in plugin_commands) else None
    parser = build_parser(plugin_commands, only=only)
    args = parser.parse_args(argv)
    if args.version:
        return _version()
    if not args.command:
        parser.print_help()
        return 0
    if args.command in plugin_commands:
        from swarmbus.cli.common import load_settings_for
        from swarmbus.plugins import get_plugin_manager

        settings = load_settings_for(args, pm=get_plugin_manager())
        return int(plugin_commands[args.command].run(args, settings))
    module = {
        "send": "send", "start": "start", "read": "reading", "watch": "reading", "tail": "reading",
        "inbox": "reading", "list": "presence", "config": "admin", "plugins": "admin",
        "doctor": "doctor", "broker": "admin", "init": "init", "uninit": "init", "wait": "reading",
        "mcp-server": "mcpserver", "completion": "completion", "stop": "detach", "status": "detach",
        "policy": "policy", "trace": "trace", "retire": "presence", "wake": "wake",
        "job": "job", "task": "task", "swarm": "swarm", "dashboard": "dashboard",
    }[args.command]
    handler = __import__(f"swarmbus.cli.{module}", fromlist=["run"])  # importlib would cost an import
    return int(handler.run(args))


def _escape_unencodable(stream: Any) -> None:
    """Make ``stream`` write what its encoding cannot hold (``PYTHONIOENCODING=ascii``, a Latin-1
    locale; e.g. a peer's subject) as backslash escapes instead of failing halfway through."""
    if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
        stream.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point. Returns the exit code (see the module docstring)."""
    from swarmbus.envelope import EnvelopeError
    from swarmbus.errors import SwarmbusError

    _escape_unencodable(sys.stdout)
    try:
        return run(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        sys.stderr.write("swarmbus: interrupted\n")
        return 130
    except SwarmbusError as exc:
        sys.stderr.write(f"swarmbus: error: {exc}\n")
        if exc.hint:
            sys.stderr.write(f"  hint: {exc.hint}\n")
        return exc.exit_code
    except EnvelopeError as exc:
        sys.stderr.write(f"swarmbus: error: {exc}\n")
        return 2
    except BrokenPipeError:
        return 1
    except Exception as exc:
        if os.environ.get("SWARMBUS_DEBUG"):
            raise
        sys.stderr.write(
            f"swarmbus: internal error: {type(exc).__name__}: {exc}\n"
            "  (this is a bug; run with SWARMBUS_DEBUG=1 for a traceback and report it)\n"
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
