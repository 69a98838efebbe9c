"""Fixtures for the dashboard's browser tests: a private mosquitto (tests/brokers.py), an isolated
swarmbus environment with real daemons, ``swarmbus dashboard`` on a free port, a raw MQTT
publisher, and a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven by
Selenium. The Chromium tests skip, saying why, when the browser, its driver or Selenium is absent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from brokers import *  # noqa: E402,F403 - the private mosquitto fixtures (broker, broker_factory)
from swarmbus import testing  # noqa: E402

CHROMIUM = os.environ.get("SWARMBUS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = os.environ.get("SWARMBUS_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
INSTALL = "as root: apt-get install -y --no-install-recommends chromium chromium-driver"


class Env:
    """An isolated swarmbus (its own state dir and config) on the private broker, and its daemons."""

    def __init__(self, root: Path, running: Any) -> None:
        self.root = root
        self.broker = running
        self.env = testing.isolated_env(root, running.url, heartbeat=1, reconnect=(0.1, 0.5))
        (root / "config.toml").write_text("# browser test config\n")
        self.daemons: list[subprocess.Popen[bytes]] = []

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = testing.run_cli(self.env, *args)
        assert proc.returncode == 0, f"swarmbus {' '.join(args)}: {proc.stderr}"
        return proc

    def start_daemon(self, agent_id: str) -> None:
        proc = testing.start_daemon(self.env, agent_id, log_path=self.root / f"{agent_id}.log")
        self.daemons.append(proc)
        testing.wait_daemon_connected(self.env, agent_id, proc, 20, log_path=self.root / f"{agent_id}.log")


Dashboard = testing.DashboardProcess


class Publisher:
    """A plain paho-mqtt client on the test broker that publishes at QoS 1 and waits for the PUBACK."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=f"browser-test-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        testing.wait_for(self.client.is_connected, 10, "the test publisher's connection")

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        assert info.is_published(), f"no PUBACK for {topic}"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def env(tmp_path_factory: pytest.TempPathFactory, broker: Any) -> Iterator[Env]:
    e = Env(Path(tmp_path_factory.mktemp("sbb")), broker)
    yield e
    for proc in e.daemons:
        testing.kill_process_group(proc.pid)
        proc.wait(10)


@pytest.fixture
def dashboard(env: Env) -> Iterator[Dashboard]:
    dash = Dashboard(env.env)
    yield dash
    dash.stop()


@pytest.fixture
def publisher(env: Env) -> Iterator[Publisher]:
    pub = Publisher(env.broker.port)
    yield pub
    pub.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A real headless Chromium (Debian's package) under Selenium, with the browser's console log."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    for path, what in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromedriver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            pytest.skip(f"{what} not found at {path}: {INSTALL}")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium refuses to run its sandbox as root
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    started = time.monotonic()
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")),
                              options=options)
    driver.startup_seconds = time.monotonic() - started
    try:
        yield driver
    finally:
        driver.quit()
