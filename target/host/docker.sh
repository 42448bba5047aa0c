#!/usr/bin/env bash
# Host step "docker": installs Docker if missing and merges the IPv6 settings into
# daemon.json (merge_daemon_json.py); RESTART_COMMAND runs only when the file changed.
# A non-root SSH_USER joins the docker group: the Docker provider's ssh:// connection runs
# `docker system dial-stdio` as that user.
# Parameters: DAEMON_JSON, IPV6_CIDR, RESTART_COMMAND, SSH_USER, MERGE_DAEMON_JSON_PY (the
# program).
set -euo pipefail
# shellcheck source=lib.sh
declare -F finish >/dev/null || . "${BASH_SOURCE[0]%/*}/lib.sh"

if ! command -v dockerd >/dev/null; then
  apt_install docker.io
fi
command -v python3 >/dev/null || apt_install python3
engine="$(dockerd --version | sed -nE 's/^Docker version ([0-9]+)\..*/\1/p')"
[[ -n "${engine}" ]] || die "cannot read the Docker engine version from 'dockerd --version'"
log "docker engine major version ${engine}"
merged="$(python3 -c "${MERGE_DAEMON_JSON_PY}" "${DAEMON_JSON}" "${engine}" "${IPV6_CIDR}")"
if [[ "${merged}" == changed ]]; then
  log "merged IPv6 settings into ${DAEMON_JSON}; restarting docker"
  CHANGED=1
  bash -c "${RESTART_COMMAND}"
else
  log "${DAEMON_JSON} already has the IPv6 settings"
fi
if [[ -d /run/systemd/system ]] && ! systemctl is-active --quiet docker; then
  systemctl enable --now docker
  CHANGED=1
fi
if [[ "${SSH_USER}" != root ]]; then
  getent group docker >/dev/null || groupadd --system docker
  if id -nG "${SSH_USER}" | tr ' ' '\n' | grep -qx docker; then
    log "${SSH_USER} is in the docker group"
  else
    usermod -aG docker "${SSH_USER}"
    log "added ${SSH_USER} to the docker group"
    CHANGED=1
  fi
fi
finish
