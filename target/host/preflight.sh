#!/usr/bin/env bash
# Host step "preflight": the OS check (lib.sh) plus the tools every later step needs
# (python3 for JSON).
set -euo pipefail
# shellcheck source=lib.sh
declare -F finish >/dev/null || . "${BASH_SOURCE[0]%/*}/lib.sh"

command -v python3 >/dev/null || apt_install python3
# shellcheck source=/dev/null
. /etc/os-release
log "host OK: ${PRETTY_NAME:-${ID} ${VERSION_ID}}"
finish
