#!/usr/bin/env bash
# The whole test suite: lint, types, core tests, each plugin with the core, all together.
# Extra arguments go to tox (e.g. scripts/test.sh -e core -- -k presence).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
. scripts/say.sh
# The dashboard's browser tests (tox env `dashboard`, tests_browser/) drive a real headless Chromium.
# As root with apt-get (a CI container), install Debian's chromium and chromium-driver when missing;
# otherwise say how, and go on: those tests then skip, saying why. SWARMBUS_NO_BROWSER=1 skips this.
if { ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; } \
    && [ -z "${SWARMBUS_NO_BROWSER:-}" ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing chromium and chromium-driver for the dashboard's browser tests (apt-get --no-install-recommends)"
    if apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; then
      say "installed chromium and chromium-driver"
    else
      say "could not install chromium and chromium-driver (see above): the browser tests will skip"
    fi
  else
    say "chromium or chromedriver not installed: the dashboard's browser tests will skip (as root: apt-get install --no-install-recommends chromium chromium-driver)"
  fi
fi
# tox reuses its environments (a second run installs nothing), but it cannot see a change behind
# `-e .` in their deps, such as a dependency added to a pyproject.toml: when bootstrap's stamp
# (every pyproject.toml, bootstrap.sh, the Python version) changed, start them afresh.
if [ -d .tox ] && ! cmp -s .venv/.bootstrap-stamp .tox/.bootstrap-stamp; then
  say "a pyproject.toml changed since the last run: recreating the tox environments"
  rm -rf .tox
fi
mkdir -p .tox
cp .venv/.bootstrap-stamp .tox/.bootstrap-stamp
exec .venv/bin/tox "$@"
