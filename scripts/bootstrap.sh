#!/usr/bin/env bash
# The project's Python: a virtualenv in ./venv (Pulumi.yaml's runtime.options.virtualenv)
# with the pinned requirements. Idempotent: reinstalls only when requirements.txt changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# apt's package lists, fetched once (installs and apt-cache need them).
if [[ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -n1)" ]]; then
  DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null
fi
if [[ ! -x venv/bin/python ]]; then
  python3 -m venv venv
fi
stamp=venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [[ "$(cat "${stamp}" 2>/dev/null)" != "${want}" ]]; then
  venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
  echo "${want}" >"${stamp}"
fi
