"""Talking MQTT: the only package that imports paho-mqtt.

- :mod:`~swarmbus.transport.link`: :class:`MqttLink`, a supervised connection on a thread of its
  own (one-shot receives, presence scans, doctor);
- :mod:`~swarmbus.transport.aio_link`: :class:`AsyncMqttLink`, the same driven by an asyncio event
  loop (the daemon);
- :mod:`~swarmbus.transport.publish`: :func:`publish_once`, one synchronous publish for
  ``swarmbus send --direct`` (no thread, no pydantic).
"""
