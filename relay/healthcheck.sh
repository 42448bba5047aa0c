#!/usr/bin/env bash
# Container health: Postfix's master and OpenDKIM both alive, the milter socket
# present, and the submission service greeting. The process checks are cheap enough for
# every 2 s; the SMTP greeting (which logs a connect/disconnect pair) is checked on the
# first run and then at most every 30 s, and again after any failure. A master that is
# alive while every smtpd it starts dies on a config error is caught by the greeting.
set -euo pipefail

STAMP=/run/relay-health-smtp
PROBE_EVERY=30

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
greets() {
  local line
  exec 3<>/dev/tcp/127.0.0.1/587 || return 1
  IFS= read -r -t 1 line <&3 || line=""
  printf 'QUIT\r\n' >&3 2>/dev/null || true
  exec 3<&- 3>&-
  [[ "${line}" == 220* ]]
}

now="$(date +%s)"
last="$(cat "${STAMP}" 2>/dev/null || echo 0)"
if ((now - last >= PROBE_EVERY)); then
  if ! greets; then
    rm -f "${STAMP}"
    echo "the submission service on 587 does not greet"
    exit 1
  fi
  echo "${now}" >"${STAMP}"
fi
echo "ok"
