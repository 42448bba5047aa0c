#!/usr/bin/env bash
# Container health: Postfix's master alive, OpenDKIM alive and answering a milter
# handshake on its socket (relay-milter-probe, 1 s), and the submission service greeting.
# The process and milter checks are cheap enough for every 2 s and log nothing; the SMTP
# greeting (which logs a connect/disconnect pair) is checked on the first run and then at
# most every 30 s, and again after any failure. A master that is alive while every smtpd
# it starts dies on a config error is caught by the greeting.
# The output ends with what the supervision did (relay/s6): OpenDKIM restarts and why.
set -euo pipefail

STAMP=/run/relay-health/smtp
STATUS=/run/relay-health/opendkim  # written by relay/s6 (supervision.sh)
PROBE_EVERY=30

alive() {
  local pidfile="${1:?pidfile}" pid
  [[ -r "${pidfile}" ]] || return 1
  read -r pid <"${pidfile}" || return 1
  [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
  kill -0 "${pid}" 2>/dev/null
}

# "; opendkim <state>, restarted N time(s), last <age> s ago: <reason>" (empty before any
# restart). [state]: what this check just saw, else what the supervisor last recorded.
history() {
  local state n at reason
  [[ -r "${STATUS}" ]] || return 0
  read -r state n at reason <"${STATUS}" || return 0
  [[ "${n}" =~ ^[0-9]+$ ]] && ((n > 0)) || return 0
  printf '; opendkim %s, restarted %s time(s), last %s s ago: %s' \
    "${1:-${state}}" "${n}" "$(($(date +%s) - at))" "${reason}"
}

unhealthy() {
  echo "$1$(history)"
  exit 1
}

alive /var/spool/postfix/pid/master.pid || unhealthy "postfix master is down"
alive /run/opendkim/opendkim.pid || unhealthy "opendkim is down"
if ! why="$(relay-milter-probe /run/opendkim/opendkim.sock 1)"; then
  unhealthy "opendkim does not answer (${why})"
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
    unhealthy "the submission service on 587 does not greet"
  fi
  mkdir -p "${STAMP%/*}"
  echo "${now}" >"${STAMP}"
fi
echo "ok$(history up)"
