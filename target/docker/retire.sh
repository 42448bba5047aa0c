#!/usr/bin/env bash
# Retires what the earlier, docker-CLI-based deploy made, so that the pulumi-docker
# resources can take over the names, subnets and ports in the same `pulumi up`: the
# container CONTAINER (and any other container on NETWORK) carrying that deploy's
# fingerprint label, the network NETWORK if it carries that deploy's label, the build and
# config folders under WORK_DIR, and the images those containers ran.
# The queue volume is kept: the new container mounts it and delivers what it holds.
# Objects made by pulumi-docker carry none of these labels, so a second run changes nothing.
# Parameters: STEP, CONTAINER, NETWORK (may be empty), WORK_DIR, DIR_PATTERN.
set -euo pipefail
: "${STEP:?}" "${CONTAINER:?}" "${WORK_DIR:?}" "${DIR_PATTERN:?}" "${NETWORK?}"
log() { printf 'dkim-relay[%s]: %s\n' "${STEP}" "$*"; }
OLD_LABEL=dkim-relay.fingerprint
changed=0

if ! command -v docker >/dev/null || ! docker info >/dev/null 2>&1; then
  log "no Docker engine yet: nothing to retire"
  exit 0
fi
legacy=()
if [[ -n "$(docker ps -aq --filter "name=^${CONTAINER}\$" --filter "label=${OLD_LABEL}")" ]]; then
  legacy+=("${CONTAINER}")
fi
if [[ -n "${NETWORK}" ]]; then
  while IFS= read -r c; do
    [[ -n "${c}" ]] && legacy+=("${c}")
  done < <(docker ps -aq --filter "network=${NETWORK}" --filter "label=${OLD_LABEL}")
fi
images=()
for c in "${legacy[@]}"; do
  if docker container inspect "${c}" >/dev/null 2>&1; then
    images+=("$(docker container inspect -f '{{.Config.Image}}' "${c}")")
    docker stop -t 30 "${c}" >/dev/null 2>&1 || true
    docker rm -f "${c}" >/dev/null
    log "retired container ${c}"
    changed=1
  fi
done
if [[ -n "${NETWORK}" ]] &&
  [[ "$(docker network inspect -f '{{index .Labels "dkim-relay.network"}}' "${NETWORK}" 2>/dev/null)" == 1 ]]; then
  docker network rm "${NETWORK}" >/dev/null
  log "retired network ${NETWORK}"
  changed=1
fi
if [[ -d "${WORK_DIR}" ]]; then
  for d in "${WORK_DIR}"/*; do
    [[ -d "${d}" && "${d##*/}" =~ ${DIR_PATTERN} ]] || continue
    rm -rf -- "${d}"
    log "retired ${d}"
    changed=1
  done
fi
for ref in "${images[@]}"; do
  if docker image rm "${ref}" >/dev/null 2>&1; then
    log "retired image ${ref}"
  fi
done
if ((changed)); then log "done (changed)"; else log "no change"; fi
