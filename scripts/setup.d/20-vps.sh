#!/usr/bin/env bash
# Packages the local-VPS tests (tests/test_host_vps.py) need: an SSH server,
# ufw, certbot, Let's Encrypt's pebble test CA, iproute2 for the namespace,
# shellcheck for the rendered scripts. Idempotent; starts no service.
set -euo pipefail

_vps_pkgs=(openssh-server openssh-client ufw certbot pebble iproute2 iptables shellcheck python3 openssl procps)
_vps_missing=()
for _p in "${_vps_pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "${_p}" 2>/dev/null | grep -q "install ok installed"; then
    _vps_missing+=("${_p}")
  fi
done
if ((${#_vps_missing[@]})); then
  echo "20-vps: installing ${_vps_missing[*]}"
  # No service may start during install (CI containers have no init; the tests
  # start their own sshd inside a network namespace).
  _vps_rc_created=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    _vps_rc_created=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${_vps_missing[@]}" </dev/null
  if ((_vps_rc_created)); then rm -f /usr/sbin/policy-rc.d; fi
else
  echo "20-vps: all packages present (no change)"
fi
unset _vps_pkgs _vps_missing _p _vps_rc_created
