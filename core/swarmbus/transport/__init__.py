"""Talking MQTT: the only package that imports paho-mqtt.

- :mod:`~swarmbus.transport.link`: :class:`MqttLink`, a supervised connection on a thread of its
  own (one-shot receives, presence scans, doctor);
- :mod:`~swarmbus.transport.aio_link`: :class:`AsyncMqttLink`, the same driven by an asyncio event
  loop (the daemon);
- :mod:`~swarmbus.transport.publish`: :func:`publish_once`, one synchronous publish for
  ``swarmbus send --direct`` (no thread, no pydantic).

Importing this package defers ``urllib.request`` (see :func:`defer_import`): paho-mqtt imports it
(with ``http.client`` and ``email``: ~25 ms and ~3 MB) but reads it only when PySocks is installed.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def defer_import(name: str) -> None:
    """Put a stand-in for the standard module ``name`` in ``sys.modules`` (unless it is imported
    already) that imports the real module the first time any attribute is read, so nothing
    breaks if paho (or anyone else) does use it.

    Why not ``importlib.util.LazyLoader``: on Python 3.11 an ``import urllib.request`` statement
    of an already lazily-loaded module reads its ``__spec__``, which makes LazyLoader load it right
    away (the C import code checks ``__spec__._initializing``), so paho's own imports would undo
    it. A stand-in module with a PEP 562 ``__getattr__`` has a real ``__spec__`` and stays unloaded.
    """
    if name in sys.modules:
        return
    import importlib
    import importlib.machinery
    import types

    stand_in = types.ModuleType(name, f"stand-in for {name}: imported on first use")
    stand_in.__spec__ = importlib.machinery.ModuleSpec(name, None)

    def __getattr__(attr: str) -> Any:  # PEP 562: only for attributes the stand-in lacks
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]  # the import below replaces it, here and on the parent package
        return getattr(importlib.import_module(name), attr)

    stand_in.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules[name] = stand_in
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(importlib.import_module(parent), child, stand_in)


if "paho.mqtt.client" not in sys.modules:
    defer_import("urllib.request")
