"""The listener daemon (``swarmbus start``) and its long-lived pieces, one job per module:

- :mod:`~swarmbus.daemon.listener`: the :class:`Daemon` itself: wiring and lifecycle;
- :mod:`~swarmbus.daemon.dispatch`: running handlers for stored messages, off the receive path.
"""
