#!/usr/bin/env bash
# Container health: Postfix's master and OpenDKIM both alive, and the milter socket
# answering. Cheap enough to run every 2 s (no postfix-script, no SMTP session, so no
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
if ! exec 3<>/dev/tcp/127.0.0.1/8891; then
  echo "opendkim milter socket does not answer"
  exit 1
fi
exec 3>&-
echo "ok"
