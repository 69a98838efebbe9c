"""The task board: tasks that exactly one eligible agent claims, with fenced, leased claims.

docs/swarm.md ("The task board") describes it for users. The modules, in the order a task
flows through them:

- :mod:`.wire`: what goes over MQTT: the topics (offers, retained state records), the offer,
  the protocol messages (``claim``, ``grant``, ``renew``, ``complete``, ``fail``, ``ack``,
  ``refuse``: bodies of messages with the content type ``application/vnd.swarmbus.task+json``)
  and their total parsers;
- :mod:`.ledger`: the board database beside the message store (``board.sqlite3``): the tasks an
  agent posted, their history, the tasks it claimed, applied message ids, outbound messages;
- :mod:`.arbiter`: the poster's side, one transaction per step: post, offer, claim (grant or
  refuse), renew, complete, fail, expire;
- :mod:`.claimer`: the claimer's side, one transaction per step: claim, grant, refusal, ack,
  finish (complete or fail);
- :mod:`.effects`: what a committed step leaves to do (publish, send, run, cancel, answer);
- :mod:`.runtime`: :class:`~swarmbus.board.runtime.TaskBoard`, the board inside a daemon: the
  receive path, offers, the control socket and the service the built-in ``tasks`` plugin runs.
"""
