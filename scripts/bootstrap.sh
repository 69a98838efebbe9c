#!/usr/bin/env bash
# Set up a development machine: mosquitto (when absent) and a virtualenv in .venv with
# swarmbus and every plugin under plugins/ installed editable, plus the test tools.
# Safe to re-run. Used by scripts/demo.sh and scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

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

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "swarmbus needs Python >= 3.11 (found: $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PYTHON" -m venv .venv
fi
say "installing swarmbus, its plugins and the dev tools into .venv"
plugin_args=()
for p in plugins/*/; do [ -f "$p/pyproject.toml" ] && plugin_args+=(-e "$p"); done
# one pip call: the plugins pin swarmbus==<version>, which only this checkout provides
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[mcp]" "${plugin_args[@]}" \
  "pytest>=8" "pytest-xdist>=3.5" "hypothesis>=6.100" "tox>=4" "ruff>=0.5" "mypy>=1.10" "import-linter>=2.1"
.venv/bin/python -c 'import swarmbus' >/dev/null
