#!/usr/bin/env bash
# Host step "secrets" on delete: removes the key material directory.
# Parameters: SECRETS_DIR.
set -euo pipefail
# shellcheck source=lib.sh
declare -F finish >/dev/null || . "${BASH_SOURCE[0]%/*}/lib.sh"

if [[ -d "${SECRETS_DIR}" ]]; then
  rm -rf -- "${SECRETS_DIR}"
  log "removed ${SECRETS_DIR}"
  CHANGED=1
fi
finish
