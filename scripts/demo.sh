#!/usr/bin/env bash
# One command for a fresh machine: set everything up, then watch two agents talk.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python scripts/demo.py "$@"
