#!/usr/bin/env bash
# relay-entrypoint: install the config and secrets the stack delivered, then run
# OpenDKIM and Postfix and supervise both (tini is PID 1). Stops cleanly on SIGTERM.
# Postfix gone: the container exits and `restart: always` brings it back. OpenDKIM dead
# or hung (no milter answer): it is killed and restarted here with a back-off of 1 s
# doubling to at most 30 s; meanwhile Postfix answers 4xx (milter_default_action).
#
# Inputs (see pure/postfix.py for the full contract):
#   /etc/relay/config/{postfix,opendkim}/...   rendered config (uploads, not secret)
#   /run/relay-secrets/dkim/<selector>.private DKIM private keys (PEM)
#   /run/relay-secrets/smtp-users              "login:password" lines
#   /run/relay-secrets/nexthop-auth            optional: "[host]:port user:password"
#   /etc/letsencrypt (read-only)               TLS cert, path named in main.cf
# Optional, not secret: RELAY_CERT_POLL_SECONDS (default 300; 0 disables the watcher).
set -euo pipefail

CONFIG_DIR=/etc/relay/config
SECRETS_DIR=/run/relay-secrets
POLL="${RELAY_CERT_POLL_SECONDS:-300}"
OPENDKIM_SOCKET=/run/opendkim/opendkim.sock  # pure/postfix.py OPENDKIM_SOCKET
# What the supervisor saw, for the health check (relay/healthcheck.sh reads it).
STATUS=/run/relay-health/opendkim
PROBE_EVERY=2        # seconds between milter probes
PROBE_TIMEOUT=2      # seconds a probe may wait for an answer
HUNG_AFTER=2         # failed probes in a row before OpenDKIM counts as hung
BACKOFF_MAX=30       # seconds, the longest wait before a restart
STABLE_AFTER=60      # seconds of answering after which the back-off starts again at 1 s

log() { printf 'relay-entrypoint: %s\n' "$*"; }
die() { log "FATAL: $*"; exit 1; }

# 1. Config files, root-owned and back-dated: Postfix waits ~2 s on a main.cf that was
#    modified in the last second (field notes).
install_config() {
  [[ -f "${CONFIG_DIR}/postfix/main.cf" ]] || die "no ${CONFIG_DIR}/postfix/main.cf"
  [[ -f "${CONFIG_DIR}/opendkim/opendkim.conf" ]] || die "no opendkim.conf"
  install -d -o root -g root -m 0755 /etc/postfix/sasl /etc/opendkim
  local f rel
  while IFS= read -r -d '' f; do
    rel="${f#"${CONFIG_DIR}"/}"
    install -D -o root -g root -m 0644 "${f}" "/etc/${rel}"
    touch -d '-1 minute' "/etc/${rel}"
  done < <(find "${CONFIG_DIR}/postfix" "${CONFIG_DIR}/opendkim" -type f -print0)
}

# 2. DKIM keys: a tree only root can write (OpenDKIM refuses anything looser), files
#    readable by the opendkim user only. Must come before OpenDKIM starts.
install_dkim_keys() {
  local src="${SECRETS_DIR}/dkim" dst=/etc/opendkim/keys key n=0
  [[ -d "${src}" ]] || die "no ${src}"
  rm -rf "${dst}.new"
  install -d -o root -g opendkim -m 0750 "${dst}.new"
  for key in "${src}"/*.private; do
    [[ -f "${key}" ]] || continue
    install -o opendkim -g opendkim -m 0400 "${key}" "${dst}.new/$(basename "${key}")"
    n=$((n + 1))
  done
  ((n > 0)) || die "no DKIM key in ${src}"
  rm -rf "${dst}"
  mv "${dst}.new" "${dst}"
}

# 3. SASL users into a fresh sasldb (root:postfix 0640). Passwords go through stdin
#    only, never argv or the log.
build_sasldb() {
  local users="${SECRETS_DIR}/smtp-users" db=/etc/sasldb2 tmp=/etc/sasldb2.new
  local line login pw user realm n=0
  [[ -f "${users}" ]] || die "no ${users}"
  rm -f "${tmp}"
  while IFS= read -r line || [[ -n "${line}" ]]; do
    [[ -z "${line}" || "${line}" == \#* ]] && continue
    login="${line%%:*}"
    pw="${line#*:}"
    [[ "${login}" == *@* && -n "${pw}" && "${login}" != "${line}" ]] || die "bad line in smtp-users"
    user="${login%@*}"
    realm="${login##*@}"
    printf '%s' "${pw}" | saslpasswd2 -p -c -f "${tmp}" -u "${realm}" "${user}"
    n=$((n + 1))
  done <"${users}"
  ((n > 0)) || die "no SMTP user in ${users}"
  chown root:postfix "${tmp}"
  chmod 0640 "${tmp}"
  mv "${tmp}" "${db}"
  log "sasldb has ${n} user(s)"
}

# 3b. The smarthost login, when main.cf asks for one: the map Postfix's smtp client
#    reads (texthash, opened as root before it drops privileges), root 0600.
install_nexthop_auth() {
  local src="${SECRETS_DIR}/nexthop-auth" dst=/etc/postfix/nexthop_auth
  rm -f "${dst}"
  [[ "$(postconf -c /etc/postfix -h smtp_sasl_auth_enable)" == yes ]] || return 0
  [[ -s "${src}" ]] || die "smtp_sasl_auth_enable is on but ${src} is missing"
  install -o root -g root -m 0600 "${src}" "${dst}"
  log "smarthost login installed"
}

# 4. Secrets delivered as uploads land world-readable; tighten them (a read-only bind
#    mount is already tight on the host, and chmod fails there harmlessly).
tighten_secrets() {
  chmod -R go-rwx "${SECRETS_DIR}" 2>/dev/null || true
}

# 5. The queue volume: Postfix needs the top directory root-owned 0755; it creates
#    the rest and fixes ownership of what a previous container left.
prepare_spool() {
  install -d -o root -g root -m 0755 /var/spool/postfix /var/lib/postfix
  chown postfix:postfix /var/lib/postfix
  # postfix is in the opendkim group (Dockerfile): it reaches the socket, nobody else.
  install -d -o opendkim -g opendkim -m 0750 /run/opendkim
  rm -f /var/spool/postfix/pid/master.pid /run/opendkim/opendkim.pid "${OPENDKIM_SOCKET}"
  postfix -c /etc/postfix check
}

wait_socket() {
  local path="${1:?socket path}" tries="${2:-100}" i
  for ((i = 0; i < tries; i++)); do
    if [[ -S "${path}" ]]; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

opendkim_pid=""
postfix_pid=""
watcher_pid=""

stop_helpers() {
  if [[ -n "${watcher_pid}" ]]; then
    kill "${watcher_pid}" 2>/dev/null || true
  fi
  if [[ -n "${opendkim_pid}" ]]; then
    kill -TERM "${opendkim_pid}" 2>/dev/null || true
  fi
}

# shellcheck disable=SC2317  # invoked through the TERM/INT trap
stop_all() {
  log "stopping"
  stop_helpers
  postfix -c /etc/postfix stop 2>/dev/null || true
  wait 2>/dev/null || true
  log "stopped"
  exit 0
}

# 6. OpenDKIM first: with milter_default_action=tempfail Postfix would answer 451
#    until the milter is up.
launch_opendkim() {
  rm -f /run/opendkim/opendkim.pid "${OPENDKIM_SOCKET}"
  opendkim -f -x /etc/opendkim/opendkim.conf &
  opendkim_pid=$!
  wait_socket "${OPENDKIM_SOCKET}"
}

start_opendkim() {
  launch_opendkim || die "opendkim did not open its socket"
  log "opendkim up (pid ${opendkim_pid})"
}

start_postfix() {
  postfix -c /etc/postfix start-fg &
  postfix_pid=$!
  log "postfix started"
}

# 7. Renewed certificate: reload when the files' mtime changes (the certbot deploy
#    hook's `relay-reload` does the same at once).
cert_stamp() {
  local chain f out=""
  chain="$(postconf -c /etc/postfix -h smtpd_tls_chain_files)"
  for f in ${chain//,/ }; do
    out+="$(stat -L -c '%Y%s' "${f}" 2>/dev/null || echo missing) "
  done
  printf '%s' "${out}"
}

start_cert_watcher() {
  [[ "${POLL}" =~ ^[0-9]+$ ]] || die "RELAY_CERT_POLL_SECONDS must be a number"
  ((POLL > 0)) || return 0
  (
    trap 'exit 0' TERM
    last="$(cert_stamp)"
    while true; do
      # In the background and waited for, so that TERM ends the watcher at once (bash
      # runs a trap only after a foreground child has exited: `docker stop` took 30 s).
      sleep "${POLL}" &
      wait "$!"
      now="$(cert_stamp)"
      if [[ "${now}" != "${last}" ]]; then
        log "certificate files changed"
        /usr/local/bin/relay-reload || true
        last="${now}"
      fi
    done
  ) &
  watcher_pid=$!
}

# 8. Supervision. The status file holds one line the health check prints:
#    "<state> <restarts> <epoch of last event> <reason>".
restarts=0
set_status() {
  install -d -m 0755 "$(dirname "${STATUS}")"
  printf '%s %s %s %s\n' "$1" "${restarts}" "$(date +%s)" "$2" >"${STATUS}.new"
  mv "${STATUS}.new" "${STATUS}"
}

# Sleep in the background and wait for it: bash runs the TERM trap only between
# foreground commands, so this keeps `docker stop` quick.
nap() {
  sleep "$1" &
  wait "$!" || true
}

# OpenDKIM is gone (already reaped) or was just killed: wait out the back-off, start it
# again, and leave the next back-off in ${delay}.
delay=1
restart_opendkim() {
  local reason="$1"
  restarts=$((restarts + 1))
  log "opendkim ${reason}; restart ${restarts} in ${delay} s"
  set_status down "${reason}"
  nap "${delay}"
  kill -0 "${postfix_pid}" 2>/dev/null || return 0
  delay=$((delay * 2 > BACKOFF_MAX ? BACKOFF_MAX : delay * 2))
  if launch_opendkim; then
    log "opendkim up again (pid ${opendkim_pid})"
    set_status up "${reason}"
  else
    log "opendkim did not open its socket"
    set_status down "did not open its socket after: ${reason}"
  fi
  up_since="$(date +%s)"
}

supervise() {
  local rc fails=0 now
  up_since="$(date +%s)"
  while kill -0 "${postfix_pid}" 2>/dev/null; do
    if ! kill -0 "${opendkim_pid}" 2>/dev/null; then
      rc=0
      wait "${opendkim_pid}" 2>/dev/null || rc=$?
      if ((rc > 128)); then
        restart_opendkim "died (signal $((rc - 128)))"
      else
        restart_opendkim "died (exit ${rc})"
      fi
      fails=0
      continue
    fi
    if relay-milter-probe "${OPENDKIM_SOCKET}" "${PROBE_TIMEOUT}" >/dev/null; then
      fails=0
      now="$(date +%s)"
      if ((delay > 1 && now - up_since >= STABLE_AFTER)); then
        delay=1
      fi
    else
      fails=$((fails + 1))
      if ((fails >= HUNG_AFTER)); then
        kill -KILL "${opendkim_pid}" 2>/dev/null || true
        wait "${opendkim_pid}" 2>/dev/null || true
        restart_opendkim "hung (no milter answer to ${fails} probes of ${PROBE_TIMEOUT} s)"
        fails=0
        continue
      fi
    fi
    nap "${PROBE_EVERY}"
  done
}

main() {
  trap stop_all TERM INT
  install_config
  tighten_secrets
  install_dkim_keys
  build_sasldb
  install_nexthop_auth
  prepare_spool
  start_opendkim
  set_status up started
  start_postfix
  start_cert_watcher
  supervise
  # Postfix gone means the relay is gone: exit so `restart: always` brings it back.
  local rc=0
  wait "${postfix_pid}" || rc=$?
  log "postfix exited (${rc})"
  stop_helpers
  wait 2>/dev/null || true
  exit "${rc}"
}

main "$@"
