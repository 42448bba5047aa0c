#!/usr/bin/env bash
# dkim-relay: open port 80 for the certbot standalone challenge (closed by post hook).
set -euo pipefail
command -v ufw >/dev/null || exit 0
status="$(ufw status)"
[[ "${status}" == *"Status: active"* ]] || exit 0
added="$(ufw show added)"
if grep -qxF "ufw allow 80/tcp comment 'dkim-relay acme'" <<<"${added}"; then exit 0; fi
# A rule the admin made themselves: leave it (and the post hook leaves it too).
if grep -qE '^ufw allow (80|80/tcp|http|www)( |$)' <<<"${added}"; then exit 0; fi
ufw allow 80/tcp comment 'dkim-relay acme' >/dev/null
echo "dkim-relay: port 80 opened for the ACME challenge"
