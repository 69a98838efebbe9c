"""Test helpers for swarmbus and its plugins' tests (not used at run time).

- :data:`FAKE_SYSTEMCTL`: the source of a fake ``systemctl`` (format it with ``python``, ``log``
  and ``state``) that records every call as JSON lines and emulates ``systemctl --user
  daemon-reload | enable | restart | disable --now | is-enabled | is-active`` for the units in
  ``$XDG_CONFIG_HOME/systemd/user``: ``restart`` really runs the unit's ``ExecStart=`` (detached,
  with its ``Environment=``), so ``swarmbus init`` can be tested end to end in a temporary HOME
  on a machine without a user systemd.
- :func:`install_fake_systemctl`: write it into a bin directory.
"""

from __future__ import annotations

from pathlib import Path

FAKE_SYSTEMCTL = '''\
#!{python}
"""A fake `systemctl --user` for tests: records argv, runs units' ExecStart= detached."""
import json, os, shlex, signal, subprocess, sys, time
from pathlib import Path

LOG = Path({log!r})
STATE = Path({state!r})


def unit_dir():
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "systemd" / "user"


def load():
    return json.loads(STATE.read_text()) if STATE.exists() else {{}}


def save(state):
    STATE.write_text(json.dumps(state))


def alive(pid):
    try:
        with open(f"/proc/{{pid}}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def stop(entry):
    pid = entry.pop("pid", None)
    if pid and alive(pid):
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive(pid):
            os.killpg(pid, signal.SIGKILL)


def unescape(word):
    return word.replace("%%", "%").replace("$$", "$")


def start(unit, entry):
    argv, env = None, {{k: os.environ[k] for k in ("HOME", "LANG", "XDG_RUNTIME_DIR") if k in os.environ}}
    for line in (unit_dir() / unit).read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "ExecStart":
            argv = [unescape(w) for w in shlex.split(value)]
        elif key == "Environment":
            for word in shlex.split(value):
                name, _, val = word.replace("%%", "%").partition("=")
                env[name] = val
    log = open(STATE.with_name(unit + ".log"), "ab")
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    entry["pid"] = proc.pid


def main(args):
    with LOG.open("a") as fh:
        fh.write(json.dumps(args) + "\\n")
    if args[:1] != ["--user"]:
        print("fake systemctl: only --user is emulated", file=sys.stderr)
        return 1
    args = [a for a in args[1:] if a != "--quiet"]
    if args == ["daemon-reload"]:
        return 0
    verb, unit = args[0], args[-1]
    state = load()
    entry = state.setdefault(unit, {{}})
    exists = (unit_dir() / unit).exists()
    try:
        if verb == "enable":
            if not exists:
                print(f"Failed to enable unit: Unit file {{unit}} does not exist.", file=sys.stderr)
                return 1
            entry["enabled"] = True
            return 0
        if verb == "restart":
            if not exists:
                print(f"Failed to restart {{unit}}: Unit {{unit}} not found.", file=sys.stderr)
                return 5
            stop(entry)
            start(unit, entry)
            return 0
        if verb == "disable" and "--now" in args:
            stop(entry)
            entry["enabled"] = False
            return 0
        if verb == "is-enabled":
            return 0 if entry.get("enabled") and exists else 1
        if verb == "is-active":
            return 0 if entry.get("pid") and alive(entry["pid"]) else 3
        print(f"fake systemctl: {{args}} not emulated", file=sys.stderr)
        return 1
    finally:
        save(state)


sys.exit(main(sys.argv[1:]))
'''


def install_fake_systemctl(bin_dir: Path, python: str, log: Path, state: Path) -> Path:
    """Write the fake ``systemctl`` (shebang ``python``) into ``bin_dir``; calls go to ``log``
    (JSON lines), unit state to ``state`` (JSON). Returns the script's path."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "systemctl"
    script.write_text(FAKE_SYSTEMCTL.format(python=python, log=str(log), state=str(state)))
    script.chmod(0o755)
    return script
