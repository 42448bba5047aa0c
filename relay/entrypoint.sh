#!/usr/bin/env bash
# relay-entrypoint: install the config and secrets the stack delivered (once, in the
# order below), then exec s6-svscan as PID 1, which runs and supervises the services in
# /run/service (from relay/s6/): OpenDKIM, Postfix, the hung-milter watchdog and the
# certificate watcher. s6 restarts whatever exits; on SIGTERM (docker stop) it stops
# every service and exits.
#
# Inputs (see pure/postfix.py for the full contract):
#   /etc/relay/config/{postfix,opendkim}/...   this stack's config (uploads, not secret)
#   /usr/local/share/relay/conf/...            what every stack shares (relay/conf)
#   /run/relay-secrets/dkim/<selector>.private DKIM private keys (PEM)
#   /run/relay-secrets/smtp-users              "login:password" lines
#   /run/relay-secrets/nexthop-auth            optional: "[host]:port user:password"
#   /etc/letsencrypt (read-only)               TLS cert, path named in main.cf
# Optional, not secret: RELAY_CERT_POLL_SECONDS (default 300; 0 disables the watcher).
set -euo pipefail

CONFIG_DIR=/etc/relay/config
SECRETS_DIR=/run/relay-secrets
POLL="${RELAY_CERT_POLL_SECONDS:-300}"

log() { printf 'relay-entrypoint: %s\n' "$*"; }
die() { log "FATAL: $*"; exit 1; }

# 1. Config: the image's shared files (relay/conf, in /usr/local/share/relay/conf), then
#    this stack's files over them, then this stack's values applied with postconf
#    (main-stack.cf: `postconf -e` lines; master-stack.cf: `postconf -P` lines), and the
#    From policy's values put in front of its script. All root-owned and back-dated:
#    Postfix waits ~2 s on a main.cf that was modified in the last second (field notes).
install_config() {
  local base=/usr/local/share/relay/conf stack f rel
  local -a lines
  for f in postfix/main-stack.cf postfix/master-stack.cf opendkim/from_policy_values.lua; do
    [[ -f "${CONFIG_DIR}/${f}" ]] || die "no ${CONFIG_DIR}/${f}"
  done
  install -d -o root -g root -m 0755 /etc/postfix/sasl /etc/opendkim
  while IFS= read -r -d '' f; do
    rel="${f#"${base}"/}"
    install -D -o root -g root -m 0644 "${f}" "/etc/${rel}"
  done < <(find "${base}" -type f ! -name '.*' -print0)
  while IFS= read -r -d '' f; do
    rel="${f#"${CONFIG_DIR}"/}"
    case "${rel}" in
      postfix/main-stack.cf | postfix/master-stack.cf | opendkim/from_policy_values.lua) ;;
      *) install -D -o root -g root -m 0644 "${f}" "/etc/${rel}" ;;
    esac
  done < <(find "${CONFIG_DIR}/postfix" "${CONFIG_DIR}/opendkim" -type f -print0)
  stack="${CONFIG_DIR}/postfix/main-stack.cf"
  mapfile -t lines < <(grep -v -e '^#' -e '^[[:space:]]*$' "${stack}")
  ((${#lines[@]} == 0)) || postconf -c /etc/postfix -e "${lines[@]}"
  stack="${CONFIG_DIR}/postfix/master-stack.cf"
  mapfile -t lines < <(grep -v -e '^#' -e '^[[:space:]]*$' "${stack}")
  ((${#lines[@]} == 0)) || postconf -c /etc/postfix -P "${lines[@]}"
  cat "${CONFIG_DIR}/opendkim/from_policy_values.lua" "${base}/opendkim/from_policy.lua" \
    >/etc/opendkim/from_policy.lua
  find /etc/postfix /etc/opendkim -type f -exec touch -d '-1 minute' {} +
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
  rm -f /var/spool/postfix/pid/master.pid /run/opendkim/opendkim.pid /run/opendkim/opendkim.sock
  postfix -c /etc/postfix check
}

# 6. The services: a fresh copy of relay/s6 (s6 keeps its state beside each service),
#    the certificate watcher only when polling is on. Must come last: s6 starts them all.
install_services() {
  [[ "${POLL}" =~ ^[0-9]+$ ]] || die "RELAY_CERT_POLL_SECONDS must be a number"
  export RELAY_CERT_POLL_SECONDS="${POLL}"
  rm -rf /run/service /run/relay-health
  install -d -m 0755 /run/relay-health
  cp -a /etc/relay/s6 /run/service
  ((POLL > 0)) || rm -rf /run/service/certwatch
  printf 'up 0 %s started\n' "$(date +%s)" >/run/relay-health/opendkim
}

main() {
  install_config
  tighten_secrets
  install_dkim_keys
  build_sasldb
  install_nexthop_auth
  prepare_spool
  install_services
  log "starting the services under s6"
  exec s6-svscan /run/service
}

main "$@"
