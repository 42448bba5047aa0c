#!/usr/bin/env bash
# Host step "port25": can the VPS open a connection to port 25 of PROBE (a host name,
# resolved here, or an address), for each family in FAMILIES (ipv4, ipv6)? Prints one
# JSON result per family: the address tried, "open" / "blocked" (refused or no answer
# within TIMEOUT seconds) / "no route" (no address or route of that family), and the
# source address the kernel picks toward it (what SPF must name). A blocked port is
# not an error: mail waits in the queue until it is open.
# Parameters: PROBE, FAMILIES (ipv4 [ipv6]), TIMEOUT, RESULT_PREFIX (starts each result).
set -euo pipefail
# shellcheck source=lib.sh
declare -F finish >/dev/null || . "${BASH_SOURCE[0]%/*}/lib.sh"

command -v ip >/dev/null || apt_install iproute2
# getent follows nsswitch (hosts file, then DNS) as the relay's lookups would; bounded,
# as a resolver that does not answer would otherwise hold the deployment.
addresses="$(timeout 20 getent ahosts "${PROBE}" | awk '$2 == "STREAM" { print $1 }' || true)"
for family in "${FAMILIES[@]}"; do
  address="" source="" status="no route" detail="no ${family} address for ${PROBE}"
  for a in ${addresses}; do
    if [[ "${a}" == *:* ]]; then f=ipv6; else f=ipv4; fi
    if [[ "${f}" == "${family}" ]]; then
      address="${a}"
      break
    fi
  done
  if [[ -n "${address}" ]]; then
    route="$(ip -o route get "${address}" 2>&1 || true)"
    if [[ "${route}" == *" src "* ]]; then
      source="$(sed -nE '1s/.* src ([^ ]+).*/\1/p' <<<"${route}")"
      # shellcheck disable=SC2016 # $1 is expanded by the inner bash
      if timeout "${TIMEOUT}" bash -c 'exec 3<>"/dev/tcp/$1/25"' port25 "${address}" 2>/dev/null; then
        status="open" detail="connected"
      else
        rc=$?
        status="blocked"
        if ((rc == 124)); then detail="no answer within ${TIMEOUT} s"; else detail="refused"; fi
      fi
    else
      detail="${route//[^A-Za-z0-9 .:_-]/}"
    fi
  fi
  printf '%s{"family": "%s", "probe": "%s", "address": "%s", "status": "%s", "source": "%s", "detail": "%s"}\n' \
    "${RESULT_PREFIX}" "${family}" "${PROBE}" "${address}" "${status}" "${source}" "${detail}"
done
finish
