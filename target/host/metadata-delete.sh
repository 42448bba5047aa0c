#!/usr/bin/env bash
# Host step "metadata" on delete: removes the block and the rule it added.
set -euo pipefail
# shellcheck source=lib.sh
declare -F finish >/dev/null || . "${BASH_SOURCE[0]%/*}/lib.sh"

rules=/etc/ufw/after.rules
begin="# BEGIN dkim-relay metadata"
end="# END dkim-relay metadata"
if [[ -f "${rules}" ]] && grep -qxF "${begin}" "${rules}"; then
  sed "/^${begin}\$/,/^${end}\$/d" "${rules}" | install_file 0640 "${rules}"
fi
rule=(-d "${METADATA}/32" -m comment --comment "dkim-relay metadata" -j REJECT)
while iptables -D DOCKER-USER "${rule[@]}" 2>/dev/null; do
  CHANGED=1
done
finish
