#!/usr/bin/env bash
# The test command (README): installs and starts what the tests need, lints every file,
# then runs pytest. Every step is idempotent, so a second run only lints and tests.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/test_config.py -x).
# `scripts/test.sh -m unit` runs the fast tier only (pure and mock tests, under a minute)
# and needs no service, so it skips the set-up of Docker, the VPS parts and the engine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export DEBIAN_FRONTEND=noninteractive

unit_only=false
prev=""
for arg in "$@"; do
  if [[ "${prev}" == "-m" && "${arg}" == "unit" ]] || [[ "${arg}" == "-m=unit" ]]; then
    unit_only=true
  fi
  prev=${arg}
done

scripts/bootstrap.sh --dev
if [[ "${unit_only}" == false ]]; then
  # Each part's services and tools: Docker engine, local VPS parts, Pulumi engine, linters.
  for part in scripts/setup.d/*.sh; do
    echo "== setup: ${part}"
    # shellcheck source=/dev/null
    source "${part}"
  done
fi

echo "== lint"
command -v shellcheck >/dev/null || apt-get install -y -q shellcheck </dev/null >/dev/null
mapfile -t shell_files < <(git ls-files -co --exclude-standard '*.sh')
shellcheck -x "${shell_files[@]}"
venv/bin/ruff check --quiet .
venv/bin/ruff format --check --quiet .
venv/bin/mypy --no-error-summary .

echo "== tests"
venv/bin/python -m pytest -p no:cacheprovider "$@"
