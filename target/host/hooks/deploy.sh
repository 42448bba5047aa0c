#!/usr/bin/env bash
# dkim-relay: make the relay load a renewed certificate.
# Parameters: LINEAGE (this relay's live/ directory), CONTAINER, RELOAD_COMMAND (a
# command line instead of `docker exec CONTAINER relay-reload`, or empty).
set -euo pipefail
[[ "${RENEWED_LINEAGE:-}" == "${LINEAGE}" ]] || exit 0
if [[ -n "${RELOAD_COMMAND}" ]]; then
  exec bash -c "${RELOAD_COMMAND}"
fi
if command -v docker >/dev/null &&
  [[ "$(docker inspect -f '{{.State.Running}}' "${CONTAINER}" 2>/dev/null)" == true ]]; then
  docker exec "${CONTAINER}" relay-reload
else
  echo "dkim-relay: container ${CONTAINER} not running; it reads the new certificate when it starts"
fi
