#!/usr/bin/env bash
# The whole test suite: lint, types, core tests, each plugin with the core, all together.
# Extra arguments go to tox (e.g. scripts/test.sh -e core -- -k presence).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/tox "$@"
