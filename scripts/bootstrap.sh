#!/usr/bin/env bash
# The project's Python: a virtualenv in ./venv (Pulumi.yaml's runtime.options.virtualenv)
# with the pinned requirements: requirements.txt (the program and its operator tools), and
# with --dev also requirements-dev.txt (tests and linters). Idempotent: reinstalls only
# when the chosen files changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

files=(requirements.txt)
case "${1:-}" in
  --dev) files+=(requirements-dev.txt) ;;
  "") ;;
  *) echo "usage: scripts/bootstrap.sh [--dev]" >&2; exit 2 ;;
esac

# apt's package lists, fetched once (installs and apt-cache need them).
if [[ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -n1)" ]]; then
  DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null
fi
if [[ ! -x venv/bin/python ]]; then
  python3 -m venv venv
fi
# One stamp per set: a dev venv stays a dev venv when local-up.sh bootstraps it again.
stamp="venv/.requirements${1:+-dev}.sha256"
want=$(cat "${files[@]}" | sha256sum | cut -d' ' -f1)
if [[ "$(cat "${stamp}" 2>/dev/null)" != "${want}" ]]; then
  venv/bin/pip install --quiet --disable-pip-version-check "${files[@]/#/--requirement=}"
  echo "${want}" >"${stamp}"
fi
