#!/usr/bin/env bash
# Shared by the relay's and the sink's docker-CLI scripts; pure/relay_deploy.py puts it
# after the script's header (STEP and the parameters the functions below read:
# CONTAINER, NETWORK, IMAGE, IMAGE_REPO, WORK_DIR, PAYLOAD_SHA256, NET_*, RUN_ARGS ...).
set -euo pipefail
umask 022
log() { printf 'dkim-relay[%s]: %s\n' "${STEP}" "$*"; }
die() {
  printf 'dkim-relay[%s]: error: %s\n' "${STEP}" "$*" >&2
  exit 1
}
command -v docker >/dev/null || die "the docker CLI is not installed"
docker info >/dev/null 2>&1 ||
  die "the Docker engine does not answer (is dockerd running, may this user use it?)"
CHANGED=0
finish() {
  if ((CHANGED)); then log "done (changed)"; else log "no change"; fi
}
exists_container() { docker container inspect "$1" >/dev/null 2>&1; }
# cget FORMAT: a field of CONTAINER; nget FORMAT: a field of NETWORK.
cget() { docker container inspect -f "$1" "${CONTAINER}"; }
nget() { docker network inspect -f "$1" "${NETWORK}"; }
exists_network() { docker network inspect "$1" >/dev/null 2>&1; }
# unpack_payload DIR: stdin (base64 lines, '#' comments) -> DIR/build, DIR/config.
unpack_payload() {
  local dir="$1" got
  grep -v '^#' | base64 -d >"${dir}/payload.tar.gz" || die "stdin is not the base64 payload"
  got="$(sha256sum "${dir}/payload.tar.gz")"
  [[ "${got%% *}" == "${PAYLOAD_SHA256}" ]] || die "payload checksum mismatch"
  tar -xzf "${dir}/payload.tar.gz" -C "${dir}" --no-same-owner
}
# place SRC DEST: move an unpacked tree into place unless it is there already.
place() {
  if [[ -d "$2" ]]; then return 0; fi
  mv -- "$1" "$2"
  log "unpacked $2"
  CHANGED=1
}
ensure_image() {
  if docker image inspect "${IMAGE}" >/dev/null 2>&1; then return 0; fi
  log "building ${IMAGE}"
  if ! docker build -t "${IMAGE}" "${BUILD_DIR}" >"${TMP}/build.log" 2>&1; then
    tail -n 60 "${TMP}/build.log" >&2
    die "docker build of ${IMAGE} failed"
  fi
  CHANGED=1
}
# ensure_network: a bridge with IPv6 on and exactly the given subnets/gateways.
ensure_network() {
  local have want="true ${NET_V4_SUBNET}@${NET_V4_GATEWAY} ${NET_V6_SUBNET}@${NET_V6_GATEWAY}"
  if exists_network "${NETWORK}"; then
    have="$(nget '{{.EnableIPv6}}{{range .IPAM.Config}} {{.Subnet}}@{{.Gateway}}{{end}}')"
    [[ "${have}" == "${want}" ]] && return 0
    log "network ${NETWORK} has '${have}', want '${want}': recreating it"
    remove_container "${CONTAINER}"
    local c
    # shellcheck disable=SC2016 # a Go template, not a shell expansion
    for c in $(nget '{{range $id, $e := .Containers}}{{$id}} {{end}}'); do
      log "disconnecting container ${c:0:12} from ${NETWORK}"
      docker network disconnect -f "${NETWORK}" "${c}" >/dev/null
    done
    docker network rm "${NETWORK}" >/dev/null
  fi
  docker network create --driver bridge --ipv6 \
    --subnet "${NET_V4_SUBNET}" --gateway "${NET_V4_GATEWAY}" \
    --subnet "${NET_V6_SUBNET}" --gateway "${NET_V6_GATEWAY}" \
    --label dkim-relay.network=1 "${NETWORK}" >/dev/null
  log "created network ${NETWORK}"
  CHANGED=1
}
remove_container() {
  exists_container "$1" || return 0
  docker stop -t 30 "$1" >/dev/null 2>&1 || true
  docker rm -f "$1" >/dev/null
  log "removed container $1"
  CHANGED=1
}
# ensure_container: recreate unless the fingerprint label matches and it sits on the
# current network; start it if it is stopped. RUN_ARGS must end with the image.
ensure_container() {
  local fp have netid nets
  fp="$({
    printf '%s\0' "${RUN_ARGS[@]}"
    printf 'secrets:%s\0' "${SECRETS_REVISION:-}"
  } | sha256sum)"
  fp="${fp%% *}"
  netid="$(nget '{{.Id}}')"
  if exists_container "${CONTAINER}"; then
    have="$(cget '{{index .Config.Labels "dkim-relay.fingerprint"}}')"
    nets="$(cget '{{range .NetworkSettings.Networks}}{{.NetworkID}} {{end}}')"
    if [[ "${have}" == "${fp}" && " ${nets}" == *" ${netid} "* ]]; then
      if [[ "$(cget '{{.State.Running}}')" != "true" ]]; then
        docker start "${CONTAINER}" >/dev/null
        log "started container ${CONTAINER}"
        CHANGED=1
      fi
      return 0
    fi
    log "container ${CONTAINER} is out of date: recreating it"
    remove_container "${CONTAINER}"
  fi
  docker run -d --label "dkim-relay.fingerprint=${fp}" "${RUN_ARGS[@]}" >/dev/null
  log "started container ${CONTAINER} from ${IMAGE}"
  CHANGED=1
}
show_logs() {
  printf '%s\n' "---- last log lines of ${CONTAINER} ----" >&2
  docker logs --tail 80 "${CONTAINER}" >&2 2>&1 || true
}
# wait_healthy SECONDS: the image's HEALTHCHECK must report healthy in time.
wait_healthy() {
  local limit="$1" i st restarts
  for ((i = 0; i < limit * 2; i++)); do
    st="$(cget '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}')"
    restarts="$(cget '{{.RestartCount}}')"
    case "${st}" in
      healthy) return 0 ;;
      unhealthy)
        show_logs
        die "container ${CONTAINER} is unhealthy"
        ;;
      none) die "image ${IMAGE} has no health check" ;;
    esac
    if ((restarts > 0)); then
      show_logs
      die "container ${CONTAINER} keeps exiting"
    fi
    sleep 0.5
  done
  show_logs
  die "container ${CONTAINER} not healthy after ${limit} s"
}
# prune_dirs PATTERN KEEP...: remove WORK_DIR entries named like PATTERN, except KEEP.
prune_dirs() {
  local pattern="$1" d base k keep
  shift
  for d in "${WORK_DIR}"/*; do
    [[ -d "${d}" ]] || continue
    base="${d##*/}"
    [[ "${base}" =~ ${pattern} ]] || continue
    keep=0
    for k in "$@"; do [[ "${base}" == "${k}" ]] && keep=1; done
    ((keep)) && continue
    rm -rf -- "${d}"
    log "pruned ${d}"
    CHANGED=1
  done
}
# prune_images: older content-tagged images of IMAGE_REPO that nothing uses.
prune_images() {
  local ref
  while IFS= read -r ref; do
    [[ "${ref##*:}" =~ ^[0-9a-f]{16}$ && "${ref}" != "${IMAGE}" ]] || continue
    if docker image rm "${ref}" >/dev/null 2>&1; then
      log "pruned image ${ref}"
      CHANGED=1
    fi
  done < <(docker image ls --format '{{.Repository}}:{{.Tag}}' "${IMAGE_REPO}")
}
