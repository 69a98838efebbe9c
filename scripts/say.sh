# shellcheck shell=bash
# `say MESSAGE...`: a progress line on stderr, for the scripts here (sourced, not run). Bold only
# when stderr is a terminal, and never with NO_COLOR set (https://no-color.org) or TERM=dumb.
if [ -t 2 ] && [ -z "${NO_COLOR:-}" ] && [ "${TERM:-}" != "dumb" ]; then
  say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
else
  say() { printf '==> %s\n' "$*" >&2; }
fi
