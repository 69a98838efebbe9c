"""The engine tests' fixtures live in engines.py (NATS single node and 3-node cluster, RabbitMQ,
each private on free loopback ports); this loads them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
pytest.register_assert_rewrite("engines")

from engines import *  # noqa: E402,F403 - the fixtures
