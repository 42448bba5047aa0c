#!/usr/bin/env bash
# Host step "firewall": ufw with SSH first, then the wanted ports (v4+v6), default deny
# incoming. Rules carry the comment "dkim-relay <role>"; rules of ours that are no
# longer wanted are removed, the SSH rule never is.
# Parameters: SSH_RULE (PORT/tcp), WANTED (array of PORT/PROTO:ROLE).
set -euo pipefail
# shellcheck source=lib.sh
declare -F finish >/dev/null || . "${BASH_SOURCE[0]%/*}/lib.sh"

apt_install ufw
load_rules
# IPv6 rules too (ufw adds both families only with IPV6=yes).
if ! grep -qx 'IPV6=yes' /etc/default/ufw; then
  sed -i -E 's/^IPV6=.*/IPV6=yes/' /etc/default/ufw
  grep -qx 'IPV6=yes' /etc/default/ufw || echo 'IPV6=yes' >>/etc/default/ufw
  log "enabled IPv6 in /etc/default/ufw"
  CHANGED=1
  if ufw_active; then ufw reload; fi
fi
# SSH before anything that could enable the firewall: never lock ourselves out.
allow_rule "${SSH_RULE}" ssh
for item in "${WANTED[@]}"; do
  allow_rule "${item%%:*}" "${item#*:}"
done
wanted_str=" ${WANTED[*]} "
RULES="$(ufw show added)"
while read -r spec role; do
  [[ -n "${spec}" && "${role}" != ssh ]] || continue
  case "${wanted_str}" in *" ${spec}:${role} "*) continue ;; esac
  ufw delete allow "${spec}"
  log "removed rule ${spec} (${role}) that is no longer configured"
  CHANGED=1
done < <(our_rules)
if ! grep -qx 'DEFAULT_INPUT_POLICY="DROP"' /etc/default/ufw; then
  ufw default deny incoming
  CHANGED=1
fi
if ! ufw_active; then
  ufw --force enable
  CHANGED=1
fi
allowed="$(ufw status | sed -nE 's/^([0-9]+\/tcp) .*ALLOW.*/\1/p' | sort -u | tr '\n' ' ')"
log "firewall allows: ${allowed}"
finish
