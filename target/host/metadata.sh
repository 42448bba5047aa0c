#!/usr/bin/env bash
# Host step "metadata" (servers the stack created): the cloud's metadata service serves the
# server's user data, which holds the SSH host key's private half, to anything that reaches
# it. The relay's containers must not: Docker's DOCKER-USER chain (its hook for the admin's
# own rules, consulted before Docker's) rejects their packets to it. The rule is kept in
# /etc/ufw/after.rules, which ufw loads at boot and on reload, and applied now.
# Parameters: METADATA (the service's address).
set -euo pipefail
# shellcheck source=lib.sh
declare -F finish >/dev/null || . "${BASH_SOURCE[0]%/*}/lib.sh"

rules=/etc/ufw/after.rules
begin="# BEGIN dkim-relay metadata"
end="# END dkim-relay metadata"
rule=(-d "${METADATA}/32" -m comment --comment "dkim-relay metadata" -j REJECT)
[[ -f "${rules}" ]] || die "${rules} missing (the firewall step installs ufw first)"
block="${begin}
*filter
:DOCKER-USER - [0:0]
-A DOCKER-USER -d ${METADATA}/32 -m comment --comment \"dkim-relay metadata\" -j REJECT
COMMIT
${end}"
# The file without our block, then the block at its end.
current="$(cat "${rules}")"
others="$(sed "/^${begin}\$/,/^${end}\$/d" "${rules}")"
printf '%s\n%s\n' "${others}" "${block}" | install_file 0640 "${rules}"
if [[ "${current}" != "$(cat "${rules}")" ]] && ufw_active; then
  ufw reload >/dev/null
fi
if ! iptables -C DOCKER-USER "${rule[@]}" 2>/dev/null; then
  iptables -N DOCKER-USER 2>/dev/null || true
  iptables -I DOCKER-USER 1 "${rule[@]}"
  log "the relay's containers cannot reach ${METADATA} any more"
  CHANGED=1
fi
finish
