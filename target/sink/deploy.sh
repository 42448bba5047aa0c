#!/usr/bin/env bash
# The local sink's deploy: stdin is the payload (build/ = sink/). Builds the image if
# absent and runs the sink at SINK_IPV4 on the relay's network, keeping mail in MAIL_DIR.
# Parameters: WORK_DIR, MAIL_DIR, MAIL_MOUNT, PAYLOAD_SHA256, BUILD_H16, IMAGE_REPO,
# IMAGE, CONTAINER, NETWORK, SINK_IPV4, START_TIMEOUT.
set -euo pipefail
# shellcheck source=../relay/lib.sh
declare -F finish >/dev/null || . "${BASH_SOURCE[0]%/*}/../relay/lib.sh"

mkdir -p -- "${WORK_DIR}" "${MAIL_DIR}"
TMP="$(mktemp -d "${WORK_DIR}/.sink.XXXXXX")"
trap 'rm -rf -- "${TMP}"' EXIT
unpack_payload "${TMP}"
BUILD_DIR="${WORK_DIR}/sink-build-${BUILD_H16}"
place "${TMP}/build" "${BUILD_DIR}"
ensure_image
exists_network "${NETWORK}" || die "network ${NETWORK} does not exist (deploy the relay first)"
RUN_ARGS=(--name "${CONTAINER}" --restart unless-stopped
  --log-driver json-file --log-opt max-size=10m --log-opt max-file=3
  --network "${NETWORK}" --ip "${SINK_IPV4}"
  -v "${MAIL_DIR}:${MAIL_MOUNT}" "${IMAGE}")
ensure_container
ip="$(cget "{{with index .NetworkSettings.Networks \"${NETWORK}\"}}{{.IPAddress}}{{end}}")"
[[ "${ip}" == "${SINK_IPV4}" ]] || die "sink has address '${ip}', want ${SINK_IPV4}"
for ((i = 0; i < START_TIMEOUT * 2; i++)); do
  out="$(docker logs "${CONTAINER}" 2>&1 || true)"
  [[ "${out}" == *"sink: listening"* ]] && break
  if [[ "$(cget '{{.State.Running}}')" != "true" ]]; then
    show_logs
    die "sink exited"
  fi
  sleep 0.5
done
if [[ "${out}" != *"sink: listening"* ]]; then
  show_logs
  die "sink did not start listening"
fi
prune_dirs '^sink-build-[0-9a-f]{16}$' "sink-build-${BUILD_H16}"
prune_images
finish
