#!/usr/bin/env bash
# Set up a development machine: mosquitto (when absent) and a virtualenv in .venv with
# swarmbus and every plugin under plugins/ installed editable, plus the test tools.
# Safe to re-run, and fast then: the pip install is skipped while a stamp in .venv says that
# nothing it depends on changed (every pyproject.toml, this script, the Python version); delete
# .venv/.bootstrap-stamp to force it. Used by scripts/demo.sh and scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/say.sh

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  say "installing mosquitto"
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
  elif command -v brew >/dev/null 2>&1; then
    brew install mosquitto
  else
    echo "mosquitto is missing and neither apt-get nor brew is available: install mosquitto (>= 2.0) yourself" >&2
    exit 1
  fi
fi
if ! command -v openssl >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openssl >/dev/null
fi

# The engine tests (tox env `engines`, tests_engines/) run swarmbus on NATS and RabbitMQ too. As
# root with apt-get (a CI container), install the missing servers from Debian without starting
# their services (a policy-rc.d that refuses, and RUNLEVEL=1); otherwise say how, and go on: those
# tests then skip, saying why. SWARMBUS_NO_ENGINES=1 skips this. (SWARMBUS_ENGINE_PATH, where to
# look for the servers, and SWARMBUS_POLICY_RC_D are for bootstrap's own tests.)
engine_path="${SWARMBUS_ENGINE_PATH:-$PATH:/usr/sbin:/usr/local/sbin:/usr/lib/rabbitmq/bin}"
engines=()
PATH="$engine_path" command -v nats-server >/dev/null 2>&1 || engines+=(nats-server)
PATH="$engine_path" command -v rabbitmq-server >/dev/null 2>&1 || engines+=(rabbitmq-server)
if [ "${#engines[@]}" -gt 0 ] && [ -z "${SWARMBUS_NO_ENGINES:-}" ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing ${engines[*]} for the engine tests (apt-get --no-install-recommends; their services are not started)"
    policy_rc_d="${SWARMBUS_POLICY_RC_D:-/usr/sbin/policy-rc.d}"
    made_policy=""
    if [ ! -e "$policy_rc_d" ]; then
      printf '#!/bin/sh\n# written by swarmbus scripts/bootstrap.sh while it installs packages: start no service\nexit 101\n' \
        > "$policy_rc_d" && chmod 755 "$policy_rc_d" && made_policy=1
      trap '[ -n "$made_policy" ] && rm -f "$policy_rc_d"' EXIT
    fi
    if apt-get update -qq && DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
        apt-get install -y -qq --no-install-recommends "${engines[@]}" >/dev/null; then
      say "installed ${engines[*]}"
    else
      say "could not install ${engines[*]} (see above): the engine tests will skip"
    fi
    if [ -n "$made_policy" ]; then
      rm -f "$policy_rc_d"
      made_policy=""
    fi
  else
    say "${engines[*]} not installed: the engine tests will skip (as root: apt-get install --no-install-recommends ${engines[*]})"
  fi
fi

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "swarmbus needs Python >= 3.11 (found: $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PYTHON" -m venv .venv
fi
plugin_args=()
pyprojects=(pyproject.toml)
for p in plugins/*/; do
  [ -f "$p/pyproject.toml" ] || continue
  plugin_args+=(-e "$p")
  pyprojects+=("${p}pyproject.toml")
done

# What the install depends on: the Python version, this script, and every pyproject.toml (names
# and contents), hashed by the venv's Python (sha256sum is not on macOS).
STAMP=.venv/.bootstrap-stamp
stamp=$(.venv/bin/python -c '
import hashlib, sys
h = hashlib.sha256(sys.version.encode())
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        h.update(b"\0" + path.encode() + b"\0" + f.read())
print(h.hexdigest())' scripts/bootstrap.sh "${pyprojects[@]}")
installed=1
for tool in swarmbus pytest tox ruff mypy lint-imports; do [ -x ".venv/bin/$tool" ] || installed=0; done
if [ "$installed" = 1 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$stamp" ]; then
  say ".venv is up to date (nothing changed since the last install)"
  exit 0
fi

say "installing swarmbus, its plugins and the dev tools into .venv"
rm -f "$STAMP"
# the dev tools: the `dev` dependency group in pyproject.toml (PEP 735), read here because the pip
# of a new venv (ensurepip's) is older than pip 25.1, the first with `pip install --group`
dev_group=$(.venv/bin/python -c '
import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["dependency-groups"]["dev"]))')
dev_tools=()
while IFS= read -r req; do dev_tools+=("$req"); done <<< "$dev_group"
# one pip call: the plugins pin swarmbus==<version>, which only this checkout provides
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[mcp,dashboard]" "${plugin_args[@]}" "${dev_tools[@]}"
.venv/bin/python -c 'import swarmbus' >/dev/null
printf '%s\n' "$stamp" > "$STAMP"
