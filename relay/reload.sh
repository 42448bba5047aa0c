#!/usr/bin/env bash
# relay-reload: pick up a renewed TLS certificate without touching the queue.
# Run by the host's certbot deploy hook: `docker exec dkim-relay relay-reload`;
# also run by the certwatch service (relay/s6/certwatch) when the certificate files change.
# `postfix reload` makes new smtpd processes load the files; sessions in progress
# finish on the old ones; queued mail stays where it is and keeps being delivered.
set -euo pipefail

log() { printf 'relay-reload: %s\n' "$*"; }

chain="$(postconf -c /etc/postfix -h smtpd_tls_chain_files)"
IFS=', ' read -r -a files <<<"${chain}"
for f in "${files[@]}"; do
  [[ -z "${f}" ]] && continue
  if [[ ! -s "${f}" ]]; then
    log "missing or empty ${f}; keeping the running certificate"
    exit 1
  fi
done
postfix -c /etc/postfix reload >/dev/null 2>&1
log "postfix reloaded (certificate files re-read by new sessions)"
