#!/usr/bin/env bash
# Shared by every host step; pure/host_scripts.py puts it after the step's header
# (STEP, the step's name, and its parameters). Refuses to go on unless root on a
# supported OS.
set -euo pipefail
umask 077
export DEBIAN_FRONTEND=noninteractive
log() { printf 'dkim-relay[%s]: %s\n' "${STEP}" "$*"; }
die() {
  printf 'dkim-relay[%s]: error: %s\n' "${STEP}" "$*" >&2
  exit 1
}
[[ "$(id -u)" -eq 0 ]] || die "must run as root (use sshUser=root or a user with passwordless sudo)"
require_supported_os() {
  local supported="dkim-relay supports Ubuntu 22.04/24.04 and Debian 12"
  [[ -r /etc/os-release ]] || die "unsupported OS: /etc/os-release missing; ${supported}"
  local id ver
  # shellcheck source=/dev/null
  id="$(. /etc/os-release && printf '%s' "${ID:-}")"
  # shellcheck source=/dev/null
  ver="$(. /etc/os-release && printf '%s' "${VERSION_ID:-}")"
  case "${id}:${ver}" in
    ubuntu:22.04 | ubuntu:24.04 | debian:12) ;;
    *) die "unsupported OS '${id} ${ver}': ${supported}" ;;
  esac
}
require_supported_os
apt_install() {
  # Installs the named packages only when one is missing.
  local missing=() p
  for p in "$@"; do
    [[ "$(dpkg-query -W -f='${Status}' "${p}" 2>/dev/null || true)" == "install ok installed" ]] ||
      missing+=("${p}")
  done
  ((${#missing[@]})) || return 0
  log "installing ${missing[*]}"
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
  CHANGED=1
}
# install_file MODE PATH: writes stdin to PATH only if content or mode differ.
install_file() {
  # Compares in a scratch file outside the target directory, so an unchanged
  # file leaves even the directory's mtime alone.
  local mode="$1" path="$2" scratch tmp
  scratch="$(mktemp)"
  cat >"${scratch}"
  if [[ -f "${path}" ]] && cmp -s "${scratch}" "${path}" &&
    [[ "$(stat -c %a "${path}")" == "${mode#0}" ]]; then
    rm -f "${scratch}"
    return 0
  fi
  tmp="$(mktemp "${path}.XXXXXX")"
  cat "${scratch}" >"${tmp}"
  rm -f "${scratch}"
  chmod "${mode}" "${tmp}"
  mv -f "${tmp}" "${path}"
  log "wrote ${path}"
  CHANGED=1
}
CHANGED=0
finish() {
  if ((CHANGED)); then log "done (changed)"; else log "no change"; fi
}
# ufw_active: true when ufw filters traffic (no pipe into grep -q: pipefail+SIGPIPE).
ufw_active() {
  local s
  s="$(ufw status)"
  [[ "${s}" == *"Status: active"* ]]
}
# The firewall steps' view of ufw: RULES holds `ufw show added` (load_rules).
load_rules() { RULES="$(ufw show added 2>/dev/null || true)"; }
has_rule() { grep -qxF -- "$1" <<<"${RULES}"; }
allow_rule() { # allow_rule PORT/PROTO ROLE
  local spec="$1" comment="dkim-relay ${2}"
  if has_rule "ufw allow ${spec} comment '${comment}'"; then return 0; fi
  ufw allow "${spec}" comment "${comment}"
  RULES="$(ufw show added)"
  CHANGED=1
}
our_rules() { # prints "PORT/PROTO ROLE" for every rule this project added
  sed -nE "s/^ufw allow ([0-9]+\/(tcp|udp)) comment 'dkim-relay ([a-z0-9-]+)'$/\1 \3/p" \
    <<<"${RULES}"
}
