"""The main job, end to end on this machine: two agents exchange messages through their daemons.

1. start a private mosquitto (generated config, loopback, free port) in a temporary state dir;
2. start the listener daemons of `planner` and `coder` (`swarmbus start`);
3. planner asks coder something (directed), coder answers in the thread, planner broadcasts;
4. print what each agent received (`swarmbus read --json` against its daemon's store);
5. stop both daemons cleanly and show their presence turned offline.

Everything runs through the real CLI, as a user would type it. Nothing is left running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from swarmbus.dev_broker import BrokerConfig, free_port, start_broker


def swarmbus(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "swarmbus", *args], env=env, capture_output=True, text=True,
                          timeout=60)
    if proc.returncode != 0:
        raise SystemExit(f"swarmbus {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def wait_connected(env: dict[str, str], agent: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    from swarmbus.control import daemon_status
    from swarmbus.paths import AgentPaths

    socket = AgentPaths.for_agent(agent, env["SWARMBUS_STATE_DIR"]).socket
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{agent}'s daemon exited:\n{log.read_text()}")
        status = daemon_status(socket)
        if status and status.get("connected"):
            return
        time.sleep(0.05)
    raise SystemExit(f"{agent}'s daemon did not connect within 20 s:\n{log.read_text()}")


def wait_stored(env: dict[str, str], agent: str, count: int) -> None:
    from swarmbus.paths import AgentPaths
    from swarmbus.store import Store

    path = AgentPaths.for_agent(agent, env["SWARMBUS_STATE_DIR"]).store
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with Store(path) as store:
            if store.count_messages() >= count:
                return
        time.sleep(0.05)
    raise SystemExit(f"{agent} did not receive {count} messages within 20 s")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="swarmbus-demo-") as tmp:
        root = Path(tmp)
        port = free_port()
        print(f"== starting a private mosquitto on 127.0.0.1:{port} (state in {root})")
        broker = start_broker(BrokerConfig(state_dir=root / "broker", port=port))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SWARMBUS_", "MQTT_"))}
        env.update(SWARMBUS_STATE_DIR=str(root / "state"), SWARMBUS_CONFIG=str(root / "config.toml"),
                   SWARMBUS_BROKER_URL=broker.url, SWARMBUS_HEARTBEAT_INTERVAL="5")
        (root / "config.toml").write_text("# demo: everything comes from the environment\n")
        daemons: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for agent in ("planner", "coder"):
                log = root / f"{agent}.log"
                print(f"== swarmbus start --agent-id {agent}")
                daemons[agent] = subprocess.Popen(
                    [sys.executable, "-m", "swarmbus", "start", "--agent-id", agent],
                    env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
                wait_connected(env, agent, daemons[agent], log)
            print(swarmbus(env, "list"), end="")

            print("== planner -> coder (directed)")
            sent = json.loads(swarmbus(env, "send", "--agent-id", "planner", "--to", "coder", "--subject",
                                       "review request", "--body", "Can you review the parser change?",
                                       "--reply-to", "planner", "--json"))
            wait_stored(env, "coder", 1)
            print("== coder -> planner (reply in the thread, priority high)")
            swarmbus(env, "send", "--agent-id", "coder", "--to", "planner", "--subject", "re: review request",
                     "--body", "Looks good, one nit in tokenize().", "--in-reply-to", sent["id"],
                     "--priority", "high")
            print("== planner -> broadcast")
            swarmbus(env, "send", "--agent-id", "planner", "--to", "broadcast", "--subject", "standup",
                     "--body", "Standup in 5 minutes.")
            wait_stored(env, "planner", 1)
            wait_stored(env, "coder", 2)

            for agent in ("planner", "coder"):
                received = json.loads(swarmbus(env, "read", "--agent-id", agent, "--json"))
                print(f"\n== {agent} received {len(received)} message(s):")
                for m in received:
                    thread = f" (in reply to {m['in_reply_to'][:8]}...)" if m.get("in_reply_to") else ""
                    print(f"   from {m['from']} to {m['to']} [{m['priority']}] {m['subject']!r}{thread}: {m['body']}")
            print("\n   (planner did not receive its own broadcast)")
        finally:
            for proc in daemons.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(15)
        print("\n== after a clean stop (SIGTERM), presence is offline:")
        print(swarmbus(env, "list", "--all"), end="")
        broker.stop()
    print("\nDemo finished: every message was stored by the receiving daemon before it was acknowledged.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
