#!/usr/bin/env bash
# Host step "secrets": writes the key files from stdin (a JSON object
# {relative path: content}) with write_secrets.py: files FILE_MODE, directories 0700,
# owner OWNER_UID:OWNER_GID; files not in the payload are removed. Only file names are
# printed, never content. Prints a random "generation" each run, which the relay's
# deploy step carries on its stdin so Pulumi runs it after the key files changed.
# Parameters: SECRETS_DIR, FILE_MODE (octal digits), OWNER_UID, OWNER_GID,
# WRITE_SECRETS_PY (the program).
set -euo pipefail
# shellcheck source=lib.sh
declare -F finish >/dev/null || . "${BASH_SOURCE[0]%/*}/lib.sh"

command -v python3 >/dev/null || apt_install python3
parent="${SECRETS_DIR%/*}"
mkdir -p "${parent:-/}"
out="$(python3 -c "${WRITE_SECRETS_PY}" "${SECRETS_DIR}" "${FILE_MODE}" "${OWNER_UID}" "${OWNER_GID}")"
printf '%s\n' "${out}"
[[ "${out}" == *"dkim-relay[secrets]: key files unchanged" ]] || CHANGED=1
log "generation $(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
finish
