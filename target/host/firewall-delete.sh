#!/usr/bin/env bash
# Host step "firewall" on delete: removes the rules this project added, except SSH;
# ufw itself stays as it is.
set -euo pipefail
# shellcheck source=lib.sh
declare -F finish >/dev/null || . "${BASH_SOURCE[0]%/*}/lib.sh"

if ! command -v ufw >/dev/null; then
  log "ufw not installed; nothing to remove"
  finish
  exit 0
fi
load_rules
while read -r spec role; do
  [[ -n "${spec}" ]] || continue
  if [[ "${role}" == ssh ]]; then
    log "keeping ${spec} (SSH is never closed)"
    continue
  fi
  ufw delete allow "${spec}"
  log "removed ${spec} (${role})"
  CHANGED=1
done < <(our_rules)
finish
