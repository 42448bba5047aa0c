#!/usr/bin/env bash
# Host step "certificate": certbot certonly --standalone for the relay's names, with the
# renewal hooks installed under HOOK_DIR/{pre,post,deploy}/dkim-relay.sh (certbot renew
# runs them too). The certificate is (re)requested only when missing, for other names,
# or from another ACME server; it is never deleted.
# Parameters: CERT_NAME, ACME_EMAIL, ACME_SERVER, ACME_CA_BUNDLE (a test CA on the host,
# or empty), DOMAINS (array), WANT_NAMES (sorted, space-separated), LIVE, RENEWAL,
# HOOK_DIR, HOOK_PRE, HOOK_POST, HOOK_DEPLOY (the hooks' text).
set -euo pipefail
# shellcheck source=lib.sh
declare -F finish >/dev/null || . "${BASH_SOURCE[0]%/*}/lib.sh"

if [[ -n "${ACME_CA_BUNDLE}" ]]; then
  export REQUESTS_CA_BUNDLE="${ACME_CA_BUNDLE}"
fi
apt_install certbot openssl
install_hook() { # install_hook KIND TEXT
  mkdir -p "${HOOK_DIR}/$1"
  install_file 0755 "${HOOK_DIR}/$1/dkim-relay.sh" < <(printf '%s' "$2")
}
install_hook pre "${HOOK_PRE}"
install_hook post "${HOOK_POST}"
install_hook deploy "${HOOK_DEPLOY}"
current_names() {
  openssl x509 -in "${LIVE}/cert.pem" -noout -ext subjectAltName 2>/dev/null |
    grep -oE 'DNS:[^, ]+' | sed 's/^DNS://' | sort | tr '\n' ' ' | sed 's/ $//'
}
need=""
if [[ ! -s "${LIVE}/fullchain.pem" || ! -s "${RENEWAL}" ]]; then
  need="no certificate yet"
elif [[ "$(current_names)" != "${WANT_NAMES}" ]]; then
  need="names changed to ${WANT_NAMES}"
elif ! grep -qxF "server = ${ACME_SERVER}" "${RENEWAL}"; then
  need="ACME server changed to ${ACME_SERVER}"
fi
if [[ -n "${need}" ]]; then
  log "requesting certificate for ${WANT_NAMES} (${need})"
  names=()
  for n in "${DOMAINS[@]}"; do names+=(-d "${n}"); done
  force=()
  [[ -s "${RENEWAL}" ]] && force=(--force-renewal)
  certbot certonly --standalone --non-interactive --agree-tos --no-eff-email \
    --email "${ACME_EMAIL}" --server "${ACME_SERVER}" --cert-name "${CERT_NAME}" \
    "${names[@]}" "${force[@]}" \
    --pre-hook "${HOOK_DIR}/pre/dkim-relay.sh" \
    --post-hook "${HOOK_DIR}/post/dkim-relay.sh" \
    --deploy-hook "${HOOK_DIR}/deploy/dkim-relay.sh"
  CHANGED=1
else
  not_after="$(openssl x509 -in "${LIVE}/cert.pem" -noout -enddate)"
  log "certificate for ${WANT_NAMES} present (${not_after})"
fi
if [[ -d /run/systemd/system ]] && systemctl list-unit-files certbot.timer >/dev/null 2>&1 &&
  ! systemctl is-enabled --quiet certbot.timer; then
  systemctl enable --now certbot.timer
  CHANGED=1
fi
finish
