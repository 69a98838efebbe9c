"""``swarmbus dashboard``: a live web page of agents, messages, jobs and tasks (issue 13).

One job per module, from the sources up:

- :mod:`~swarmbus.dashboard.records`: the broker's retained records (presence, jobs, tasks)
  parsed as the hostile input they are (pydantic models, extra fields allowed); pure, no I/O;
- :mod:`~swarmbus.dashboard.stores`: the agents' stores on this machine, read read-only with
  cursors (a poll costs one ``PRAGMA data_version`` while nothing changed);
- :mod:`~swarmbus.dashboard.broker`: a read-only MQTT client that subscribes to presence, jobs
  and tasks and hands each record over;
- :mod:`~swarmbus.dashboard.state`: the in-memory model both sources feed, its JSON snapshot and
  the change events fanned out to every open page;
- :mod:`~swarmbus.dashboard.app`: the Starlette (ASGI) app: the page, ``/api/state``,
  ``/api/events`` (Server-Sent Events), the token and the security headers;
- :mod:`~swarmbus.dashboard.page`: the page itself (``static/``: one HTML file, one plain
  script, one style sheet; no build step, nothing fetched from elsewhere);
- :mod:`~swarmbus.dashboard.server`: binding the socket and running uvicorn.

Only ``app`` and ``server`` import Starlette and uvicorn (the ``dashboard`` extra:
``pip install 'swarmbus[dashboard]'``); nothing here is imported by other commands.
"""
