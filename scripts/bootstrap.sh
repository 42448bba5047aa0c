#!/usr/bin/env bash
# The project's Python: a virtualenv in ./venv (Pulumi.yaml's runtime.options.virtualenv)
# with the pinned requirements. Idempotent: reinstalls only when requirements.txt changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ ! -x venv/bin/python ]]; then
  python3 -m venv venv
fi
stamp=venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [[ "$(cat "${stamp}" 2>/dev/null)" != "${want}" ]]; then
  venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
  echo "${want}" >"${stamp}"
fi
