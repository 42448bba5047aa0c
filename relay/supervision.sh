# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables are for the scripts that source this file
# Shared by the s6 services' run and finish scripts (sourced): the health status file and
# a log helper. The status file holds one line the health check prints:
#   "<state> <restarts> <epoch of last event> <reason>"  (relay/healthcheck.sh reads it)
HEALTH_DIR=/run/relay-health
STATUS="${HEALTH_DIR}/opendkim"
OPENDKIM_SOCKET=/run/opendkim/opendkim.sock # pure/postfix.py OPENDKIM_SOCKET
OPENDKIM_SERVICE=/run/service/opendkim

log() { printf '%s: %s\n' "${LOG_TAG:-relay}" "$*"; }

# read_status: sets state, restarts, at, reason (defaults before the first start).
read_status() {
  state=up restarts=0 at=0 reason=started
  if [[ -r "${STATUS}" ]]; then
    read -r state restarts at reason <"${STATUS}" || true
  fi
  [[ "${restarts}" =~ ^[0-9]+$ ]] || restarts=0
}

# write_status <state> <restarts> <reason>
write_status() {
  install -d -m 0755 "${HEALTH_DIR}"
  printf '%s %s %s %s\n' "$1" "$2" "$(date +%s)" "$3" >"${STATUS}.new"
  mv "${STATUS}.new" "${STATUS}"
}
