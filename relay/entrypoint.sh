#!/usr/bin/env bash
# relay-entrypoint: install the config and secrets the stack delivered, then run
# OpenDKIM and Postfix in the foreground (tini is PID 1). Stops cleanly on SIGTERM.
#
# Inputs (see components/postfix.py for the full contract):
#   /etc/relay/config/{postfix,opendkim}/...   rendered config (uploads, not secret)
#   /run/relay-secrets/dkim/<selector>.private DKIM private keys (PEM)
#   /run/relay-secrets/smtp-users              "login:password" lines
#   /etc/letsencrypt (read-only)               TLS cert, path named in main.cf
# Optional, not secret: RELAY_CERT_POLL_SECONDS (default 300; 0 disables the watcher).
set -euo pipefail

CONFIG_DIR=/etc/relay/config
SECRETS_DIR=/run/relay-secrets
POLL="${RELAY_CERT_POLL_SECONDS:-300}"
OPENDKIM_SOCKET=/run/opendkim/opendkim.sock  # components/postfix.py OPENDKIM_SOCKET

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
start_opendkim() {
  opendkim -f -x /etc/opendkim/opendkim.conf &
  opendkim_pid=$!
  wait_socket "${OPENDKIM_SOCKET}" || die "opendkim did not open its socket"
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

main() {
  trap stop_all TERM INT
  install_config
  tighten_secrets
  install_dkim_keys
  build_sasldb
  prepare_spool
  start_opendkim
  start_postfix
  start_cert_watcher
  # Postfix gone means the relay is gone: exit so `restart: always` brings it back.
  # OpenDKIM gone is reported by the health check (mail tempfails, senders retry).
  local rc=0
  wait "${postfix_pid}" || rc=$?
  log "postfix exited (${rc})"
  stop_helpers
  wait 2>/dev/null || true
  exit "${rc}"
}

main "$@"
