#!/usr/bin/env bash
# Sourced by scripts/test.sh before pytest. Packages the local-VPS tests
# (tests/test_host_vps.py) need: an SSH server, ufw, certbot, Let's Encrypt's
# pebble test CA, iproute2 for the namespace, shellcheck for the rendered
# scripts, lua-check (luacheck) for the relay's OpenDKIM policy scripts. Idempotent;
# starts no service. Runs in a subshell so its strict mode stays contained; a failure
# still returns non-zero to the caller.
(
  set -euo pipefail
  pkgs=(openssh-server openssh-client ufw certbot pebble iproute2 iptables shellcheck lua-check
    python3 openssl procps sudo)
  missing=()
  for p in "${pkgs[@]}"; do
    if [[ "$(dpkg-query -W -f='${Status}' "${p}" 2>/dev/null || true)" != "install ok installed" ]]; then
      missing+=("${p}")
    fi
  done
  if ((${#missing[@]} == 0)); then
    echo "20-vps: all packages present (no change)"
    exit 0
  fi
  echo "20-vps: installing ${missing[*]}"
  # No service may start during install (CI containers have no init; the tests
  # start their own sshd inside a network namespace).
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}" </dev/null; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      "${missing[@]}" </dev/null
  fi
)
