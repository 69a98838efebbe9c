"""Built-in plugin: the task board's service (docs/swarm.md, "The task board").

Every daemon has a task board (:mod:`swarmbus.board`): it is the arbiter of the tasks its agent
posts (``swarmbus task post``) and claims the offered tasks its agent can take: those of a type a
plugin registered a :class:`swarmbus.TaskHandler` for (``swarmbus_task_handlers``), and, when
the agent's host takes tasks (``[tasks] host``), every other type, as a wake for the host.
The daemon wires the board into its receive path, its link and its control socket; this plugin
runs the board's long-running part as the service ``tasks``: sending its protocol messages
through the daemon's durable outbox, expiring leases and offering open tasks again, renewing the
leases of the tasks held here, and running tasks with their plugin handlers.
"""

from __future__ import annotations

from collections.abc import Callable

from swarmbus.api import HandlerContext, Service
from swarmbus.hookspecs import hookimpl

SERVICE = "tasks"


@hookimpl(trylast=True)
def swarmbus_services(register: Callable[[Service], None], context: HandlerContext) -> None:
    board = context.board
    if board is not None:  # None outside a daemon (a test's context)
        register(Service(SERVICE, board.run, "the task board: offers, claims, leases, renewals and task runs"))
