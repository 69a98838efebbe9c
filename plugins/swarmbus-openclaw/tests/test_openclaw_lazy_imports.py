"""Loading the plugin stays cheap: the gateway client and its dependencies load on first use.

Every swarmbus process loads every installed plugin (settings sections, ``--help``, the daemon
of any host type). A daemon whose host type is not ``openclaw`` must not carry ``websockets``
and ``cryptography`` (about 12 MiB of resident memory measured here); they load on the first
wake, doctor check or init step of host type ``openclaw``.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("websockets", "cryptography", "swarmbus_openclaw.gateway", "swarmbus_openclaw.identity")


def _modules_after(code: str) -> set[str]:
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_loading_the_plugin_and_its_settings_imports_no_gateway_client() -> None:
    loaded = _modules_after(
        "from swarmbus.plugins import HookRelay, get_plugin_manager\n"
        "pm = get_plugin_manager()\n"
        "assert 'openclaw' in HookRelay(pm).settings_sections()\n"
        "HookRelay(pm).host_types()\n"
    )
    assert "swarmbus_openclaw" in loaded
    assert not loaded.intersection(HEAVY), sorted(loaded.intersection(HEAVY))


def test_the_init_steps_load_the_client_when_asked_for() -> None:
    loaded = _modules_after(
        "from swarmbus.plugins import HookRelay, get_plugin_manager\n"
        "from swarmbus.settings import build_settings\n"
        "from swarmbus.config import load_raw\n"
        "relay = HookRelay(get_plugin_manager())\n"
        "host = relay.host_types()['openclaw']\n"
        "settings = build_settings(load_raw({'agent_id': ('lazy', '--agent-id')}, env={}, config_path=None), relay.settings_sections())\n"
        "assert host.init_steps(settings)\n"
    )
    assert "swarmbus_openclaw.gateway" in loaded
