#!/usr/bin/env bash
# The whole test suite: lint, types, core tests, each plugin with the core, all together.
# Extra arguments go to tox (e.g. scripts/test.sh -e core -- -k presence).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
# tox reuses its environments (a second run installs nothing), but it cannot see a change behind
# `-e .` in their deps, such as a dependency added to a pyproject.toml: when bootstrap's stamp
# (every pyproject.toml, bootstrap.sh, the Python version) changed, start them afresh.
if [ -d .tox ] && ! cmp -s .venv/.bootstrap-stamp .tox/.bootstrap-stamp; then
  . scripts/say.sh
  say "a pyproject.toml changed since the last run: recreating the tox environments"
  rm -rf .tox
fi
mkdir -p .tox
cp .venv/.bootstrap-stamp .tox/.bootstrap-stamp
exec .venv/bin/tox "$@"
