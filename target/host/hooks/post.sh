#!/usr/bin/env bash
# dkim-relay: close port 80 again after certbot (only the rule the pre hook added).
set -euo pipefail
command -v ufw >/dev/null || exit 0
added="$(ufw show added)"
if grep -qxF "ufw allow 80/tcp comment 'dkim-relay acme'" <<<"${added}"; then
  ufw delete allow 80/tcp >/dev/null
  echo "dkim-relay: port 80 closed"
fi
