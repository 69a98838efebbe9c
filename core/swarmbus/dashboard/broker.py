"""The dashboard's read-only broker client: presence, jobs and tasks as they change.

One :class:`~swarmbus.transport.link.MqttLink` with a client id of its own
(``<prefix>-<agent or anon>-dashboard-<hex>``, a clean session: it never takes an agent's
session over), subscribed at QoS 1 to :data:`~swarmbus.dashboard.records.FILTERS` (and, by exact
topic, to the presence of the agents known on this machine, for brokers that send no retained
records to wildcards). It never publishes. Each publish is classified in the link's thread
(:func:`~swarmbus.dashboard.records.classify`, which never raises) and handed to ``sink``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from swarmbus.dashboard.records import FILTERS, Item, classify
from swarmbus.settings import Settings
from swarmbus.topics import QOS, heartbeat_topic, presence_topic
from swarmbus.transport.link import MqttLink, Subscription, one_shot_client_id
from swarmbus.transport.negotiated import ProtocolMemory

log = logging.getLogger("swarmbus.dashboard")


class BrokerWatcher:
    """Subscribe and hand over. ``sink(item)`` and ``on_status(connected, error)`` are called in
    the link's thread and must be quick (the dashboard hands them to its event loop)."""

    def __init__(self, settings: Settings, sink: Callable[[Item], None],
                 on_status: Callable[[bool, str | None], None], known: Iterable[str] = ()) -> None:
        broker = settings.broker
        self._sink = sink
        self._on_status = on_status
        subs = [Subscription(f, QOS) for f in FILTERS]
        subs += [Subscription(t, QOS) for a in dict.fromkeys(known) for t in (presence_topic(a), heartbeat_topic(a))]
        self.link = MqttLink(
            broker,
            client_id=one_shot_client_id(broker.client_id_prefix, settings.agent_id, "dashboard"),
            subscriptions=subs,
            on_message=self._message,
            on_connected=lambda _present: self._on_status(True, None),
            on_disconnected=lambda why: self._on_status(False, why),
            reconnect_min=0.5,
            reconnect_max=5.0,
            logger=log,
            protocol_memory=ProtocolMemory.in_state_dir(settings.state_dir),
        )
        self.link.retry_log_level = logging.DEBUG

    @property
    def url(self) -> str:
        return self.link.url

    def _message(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        item = classify(topic, payload)
        if item is not None:
            self._sink(item)

    def start(self, connect_timeout: float) -> None:
        """Connect (and keep reconnecting until :meth:`stop`).

        :raises BrokerUnreachable: no connection within ``connect_timeout`` seconds, or refused.
        """
        self.link.start()
        try:
            self.link.wait_connected(connect_timeout)
        except BaseException:
            self.link.stop(timeout=2.0)
            raise

    def refused(self) -> list[str]:
        """The topic filters the broker refused to subscribe us to (an ACL), sorted."""
        return sorted(self.link.refused_subscriptions)

    def stop(self) -> None:
        self.link.stop(timeout=2.0)
