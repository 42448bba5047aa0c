#!/usr/bin/env bash
# The test command (README): installs and starts what the tests need, then runs pytest.
# Every step is idempotent, so a second run only runs the tests. Extra arguments go to
# pytest (e.g. scripts/test.sh tests/test_config.py -x).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export DEBIAN_FRONTEND=noninteractive

scripts/bootstrap.sh

# Each part's services and tools: Docker engine, local VPS parts, Pulumi engine, linters.
for part in scripts/setup.d/*.sh; do
  echo "== setup: ${part}"
  # shellcheck source=/dev/null
  source "${part}"
done

echo "== tests"
venv/bin/python -m pytest -p no:cacheprovider "$@"
