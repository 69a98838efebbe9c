"""Talking MQTT: the only package that imports paho-mqtt.

- :mod:`~swarmbus.transport.link`: :class:`MqttLink`, a supervised long-lived connection.
"""
