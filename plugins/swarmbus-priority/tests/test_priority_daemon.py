"""End to end with a real daemon on a private mosquitto: ``start --invoke`` and
``[plugins.priority]`` commands, what ``swarmbus inbox`` records about them, and ``--invoke``
without this plugin.

Self-contained (the core's ``tests/conftest.py`` fixtures are not visible here): each test
starts its own broker on a free port; every wait has a deadline (no sleeps as synchronisation).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swarmbus import testing
from swarmbus.testing import find_mosquitto, wait_for

AGENT = "coder"


class Bus(testing.DaemonBus):
    def send(self, subject: str, body: str = "the body") -> str:
        proc = self.cli("send", "--agent-id", "planner", "--to", AGENT, "--subject", subject, "--body", body, "--json")
        assert proc.returncode == 0, proc.stderr
        return str(json.loads(proc.stdout)["id"])

    def wake_delivery(self, message_id: str) -> dict[str, Any] | None:
        """The finished ``wake`` delivery of ``message_id`` in ``swarmbus inbox --json``, or None."""
        proc = self.cli("inbox", "--agent-id", AGENT, "--json")
        for message in json.loads(proc.stdout or "{}").get("messages", []):
            if message["id"] != message_id:
                continue
            for delivery in message["deliveries"]:
                if delivery["handler"] == "wake" and delivery["status"] not in ("pending", "running"):
                    return delivery  # type: ignore[no-any-return]
        return None


@pytest.fixture
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bus]:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed (apt-get install mosquitto): the daemon tests need it")
    b = Bus.open(Path(tmp_path_factory.mktemp("prio")), AGENT, plugins="priority",
                 overrides={"SWARMBUS_WAKE_POLICY": "all"})
    try:
        yield b
    finally:
        b.close()


def _toml_list(argv: list[str]) -> str:
    return json.dumps(argv)  # a JSON array of strings is a TOML array


DUMP = ("import json, os, sys; p = os.path.join(sys.argv[1], os.environ['SWARMBUS_ID']);"
        " json.dump({'env': dict(os.environ), 'stdin': sys.stdin.read()}, open(p + '.tmp', 'w'));"
        " os.rename(p + '.tmp', p + '.json')")
FAIL = "import sys; print('it broke: disk full', flush=True); sys.exit(3)"


def test_failing_command_is_recorded_and_the_daemon_keeps_serving(bus: Bus, tmp_path: Path) -> None:
    out = tmp_path / "woken"
    out.mkdir()
    bus.config(f'[plugins.priority]\n[[plugins.priority.rules]]\nsubject = "fail*"\n'
               f"command = {_toml_list([sys.executable, '-c', FAIL])}\n")
    secrets = {"MY_API_TOKEN": "tok-s3cret", "SWARMBUS_BROKER_PASSWORD": "pw-s3cret", "MQTT_PASSWORD": "pw-s3cret"}
    daemon = bus.start_daemon("--invoke", shlex.join([sys.executable, "-c", DUMP, str(out)]), **secrets)

    failing = bus.send("failing job")
    delivery = wait_for(lambda: bus.wake_delivery(failing), 20, "the failing command's wake to be recorded")
    assert delivery["status"] == "failed", delivery
    assert " exited 3 in " in delivery["detail"] and " ms; output: it broke: disk full" in delivery["detail"], delivery

    following = bus.send("next one", body="still there?")
    delivery = wait_for(lambda: bus.wake_delivery(following), 20, "the next message's wake")
    assert delivery["status"] == "ok" and " exited 0 in " in delivery["detail"], delivery
    assert daemon.poll() is None

    record = json.loads((out / f"{following}.json").read_text())
    assert record["stdin"] == "still there?"
    env = record["env"]
    assert (env["SWARMBUS_ID"], env["SWARMBUS_FROM"], env["SWARMBUS_SUBJECT"]) == (following, "planner", "next one")
    leaked = sorted(k for k, v in env.items() if "s3cret" in v)
    assert not leaked, f"secrets reached the wake command: {leaked}"
    assert not (out / f"{failing}.json").exists()  # the rule's command ran for it, not --invoke

    text = bus.cli("inbox", "--agent-id", AGENT)
    assert text.returncode == 0, text.stderr
    line = next(line for line in text.stdout.splitlines() if "'failing job'" in line)
    assert "wake: failed (" in line and "exited 3 in " in line and "it broke: disk full" in line, line


# -- --invoke without the plugin --------------------------------------------------------------
HIDE_PLUGIN = (
    "import importlib.metadata as md, sys\n"
    "real = md.entry_points\n"
    "md.entry_points = lambda **kw: [ep for ep in real(**kw) if ep.name != 'priority']\n"
    "from swarmbus.cli.main import main\n"
    "sys.argv[0] = 'swarmbus'\n"
    "sys.exit(main())\n"
)


def _without_plugin(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``swarmbus ARGS`` as if swarmbus-priority were not installed (its entry point hidden)."""
    return subprocess.run([sys.executable, "-c", HIDE_PLUGIN, *args], capture_output=True, text=True, timeout=60,
                          env={**env, "SWARMBUS_LOAD_PLUGINS": "priority"})


def test_invoke_without_the_plugin_fails_with_the_install_hint(bus: Bus) -> None:
    flags = ("--agent-id", AGENT, "--invoke", sys.executable)
    for args in (("start", *flags), ("start", *flags, "--detach")):
        proc = _without_plugin(bus.env, *args)
        assert proc.returncode == 2, testing.describe_run(proc)
        assert "--invoke / wake.command needs the priority plugin (swarmbus-priority), which is not installed" \
            in proc.stderr, proc.stderr
        assert "hint: pip install swarmbus-priority\n" in proc.stderr and "Traceback" not in proc.stderr

    blocked = bus.cli("start", *flags, SWARMBUS_LOAD_PLUGINS="")
    assert blocked.returncode == 2 and "hint: add priority to SWARMBUS_LOAD_PLUGINS" in blocked.stderr, blocked.stderr

    doctor = _without_plugin({**bus.env, "SWARMBUS_INVOKE": sys.executable}, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert "wake-command" not in checks  # that check is the plugin's
    assert checks["plugins"]["status"] == "fail" and checks["plugins"]["fix"] == "pip install swarmbus-priority"

    # installed and loaded: start --invoke runs
    bus.start_daemon("--invoke", sys.executable)
