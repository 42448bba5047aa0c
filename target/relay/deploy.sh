#!/usr/bin/env bash
# The relay's deploy (create and update): stdin is the payload (base64 of a tar.gz of
# build/ and config/, then '#' comment lines). Builds the image if absent, keeps the
# network and queue volume, (re)creates the container only when its fingerprint
# changed, waits for it to be healthy and prunes older build/config dirs and images.
# Parameters: WORK_DIR, PAYLOAD_SHA256, BUILD_H16, CONFIG_H16, IMAGE_REPO, IMAGE,
# CONTAINER, VOLUME, RELAY_HOST, SECRETS_DIR, CERT_DIR, QUEUE_MOUNT, CERT_MOUNT,
# SECRETS_MOUNT, CONFIG_MOUNT, CERT_POLL_SECONDS, HEALTH_TIMEOUT, NETWORK,
# NET_V4_SUBNET, NET_V4_GATEWAY, NET_V6_SUBNET, NET_V6_GATEWAY, PORTS (array).
set -euo pipefail
# shellcheck source=lib.sh
declare -F finish >/dev/null || . "${BASH_SOURCE[0]%/*}/lib.sh"

mkdir -p -- "${WORK_DIR}"
TMP="$(mktemp -d "${WORK_DIR}/.deploy.XXXXXX")"
trap 'rm -rf -- "${TMP}"' EXIT
unpack_payload "${TMP}"
BUILD_DIR="${WORK_DIR}/build-${BUILD_H16}"
CONFIG_HOST_DIR="${WORK_DIR}/config-${CONFIG_H16}"
place "${TMP}/build" "${BUILD_DIR}"
place "${TMP}/config" "${CONFIG_HOST_DIR}"

[[ -d "${SECRETS_DIR}" ]] || die "secrets directory ${SECRETS_DIR} does not exist"
[[ -f "${SECRETS_DIR}/smtp-users" ]] || die "no smtp-users file in ${SECRETS_DIR}"
compgen -G "${SECRETS_DIR}/dkim/*.private" >/dev/null || die "no DKIM key in ${SECRETS_DIR}/dkim"
[[ -d "${CERT_DIR}" ]] || die "certificate directory ${CERT_DIR} does not exist"
# Revision of the key files, computed here so no hash of them passes through Pulumi.
SECRETS_REVISION="$(cd "${SECRETS_DIR}" && find . -type f -print0 | LC_ALL=C sort -z |
  xargs -0 -r sha256sum | sha256sum)"
SECRETS_REVISION="${SECRETS_REVISION%% *}"

ensure_image
ensure_network
if ! docker volume inspect "${VOLUME}" >/dev/null 2>&1; then
  docker volume create --label dkim-relay.queue=1 "${VOLUME}" >/dev/null
  log "created volume ${VOLUME}"
  CHANGED=1
fi

RUN_ARGS=(--name "${CONTAINER}" --hostname "${RELAY_HOST}" --restart always --stop-timeout 30
  --log-driver json-file --log-opt max-size=10m --log-opt max-file=3
  --network "${NETWORK}")
for p in "${PORTS[@]}"; do RUN_ARGS+=(-p "${p}"); done
RUN_ARGS+=(-v "${VOLUME}:${QUEUE_MOUNT}"
  -v "${CERT_DIR}:${CERT_MOUNT}:ro"
  -v "${SECRETS_DIR}:${SECRETS_MOUNT}:ro"
  -v "${CONFIG_HOST_DIR}:${CONFIG_MOUNT}:ro"
  -e "RELAY_CERT_POLL_SECONDS=${CERT_POLL_SECONDS}"
  "${IMAGE}")
ensure_container
wait_healthy "${HEALTH_TIMEOUT}"
prune_dirs '^(build|config)-[0-9a-f]{16}$' "build-${BUILD_H16}" "config-${CONFIG_H16}"
prune_images
finish
