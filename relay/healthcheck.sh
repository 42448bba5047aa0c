#!/usr/bin/env bash
# Container health: Postfix's master and OpenDKIM both alive, and the milter socket
# present. Cheap enough to run every 2 s (no postfix-script, no SMTP session, so no
# anvil counters or log noise).
set -euo pipefail

alive() {
  local pidfile="${1:?pidfile}" pid
  [[ -r "${pidfile}" ]] || return 1
  read -r pid <"${pidfile}" || return 1
  [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
  kill -0 "${pid}" 2>/dev/null
}

alive /var/spool/postfix/pid/master.pid || { echo "postfix master is down"; exit 1; }
alive /run/opendkim/opendkim.pid || { echo "opendkim is down"; exit 1; }
if [[ ! -S /run/opendkim/opendkim.sock ]]; then
  echo "opendkim milter socket is missing"
  exit 1
fi
echo "ok"
