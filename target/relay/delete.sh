#!/usr/bin/env bash
# The relay's delete: removes the container and the network; safe to run again. The
# queue volume is kept unless REMOVE_QUEUE=1: it may hold mail not yet delivered.
# Parameters: WORK_DIR, CONTAINER, NETWORK, VOLUME, REMOVE_QUEUE (0 or 1).
set -euo pipefail
# shellcheck source=lib.sh
declare -F finish >/dev/null || . "${BASH_SOURCE[0]%/*}/lib.sh"

if exists_container "${CONTAINER}"; then
  remove_container "${CONTAINER}"
fi
if exists_network "${NETWORK}"; then
  if docker network rm "${NETWORK}" >/dev/null 2>&1; then
    log "removed network ${NETWORK}"
    CHANGED=1
  else
    log "warning: network ${NETWORK} is still used by other containers; kept"
  fi
fi
if ((REMOVE_QUEUE)); then
  if docker volume inspect "${VOLUME}" >/dev/null 2>&1; then
    docker volume rm "${VOLUME}" >/dev/null
    log "removed volume ${VOLUME}"
    CHANGED=1
  fi
elif docker volume inspect "${VOLUME}" >/dev/null 2>&1; then
  log "kept volume ${VOLUME}: it may hold queued mail (docker volume rm ${VOLUME} to drop it)"
fi
if [[ -d "${WORK_DIR}" ]]; then
  prune_dirs '^(build|config)-[0-9a-f]{16}$'
fi
finish
