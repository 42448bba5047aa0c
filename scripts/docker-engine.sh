#!/usr/bin/env bash
# Bring up a local Docker engine for dkim-relay's tests and local stacks, idempotently:
#   1. install Debian's docker.io and debootstrap if missing (no registry is needed);
#   2. merge IPv6 settings into /etc/docker/daemon.json (ip6tables: native IPv6 NAT,
#      replaces the robbertkl/ipv6nat container of hand-made setups; a ULA fixed-cidr-v6 for the default bridge);
#   3. start dockerd in the background if `docker info` does not answer, log to a file;
#   4. build `debian:bookworm-slim` offline (debootstrap --variant=minbase + docker import)
#      if the image is absent, caching the rootfs tarball.
# Safe to run again and again, from CI (CI=true, no stdin) or by hand, as root.
set -euo pipefail

CACHE_DIR="${DKIM_RELAY_CACHE:-${HOME:-/root}/.cache/dkim-relay}"
DOCKERD_LOG="${DKIM_RELAY_DOCKERD_LOG:-/var/log/dkim-relay-dockerd.log}"
BASE_IMAGE="debian:bookworm-slim"
SUITE="bookworm"
FIXED_CIDR_V6="${DKIM_RELAY_FIXED_CIDR_V6:-fd00:d0c:1::/64}"

log() { printf '[docker-engine] %s\n' "$*" >&2; }

need_root() {
  if [[ "$(id -u)" != "0" ]]; then
    log "must run as root (installs packages and starts dockerd)"
    exit 1
  fi
}

install_packages() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  if [[ ${#missing[@]} -eq 0 ]]; then
    return 0
  fi
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Other jobs on the machine may hold the dpkg lock: wait for it instead of failing.
  local apt=(apt-get -o DPkg::Lock::Timeout=600 -y --no-install-recommends)
  if ! "${apt[@]}" install "${missing[@]}" </dev/null; then
    "${apt[@]}" update </dev/null
    "${apt[@]}" install "${missing[@]}" </dev/null
  fi
}

merge_daemon_json() {
  # Merge, never overwrite: keep whatever else an operator put there.
  mkdir -p /etc/docker
  # Engines before 27 (Debian 12 ships 20.10) gate ip6tables behind experimental.
  local major
  major="$(dockerd --version | sed -E 's/^Docker version ([0-9]+).*/\1/')"
  python3 - "${FIXED_CIDR_V6}" "${major}" <<'PY'
import json, os, sys
path = "/etc/docker/daemon.json"
cfg = {}
if os.path.exists(path):
    with open(path) as f:
        text = f.read().strip()
    cfg = json.loads(text) if text else {}
want = {"ipv6": True, "ip6tables": True, "fixed-cidr-v6": cfg.get("fixed-cidr-v6") or sys.argv[1]}
if sys.argv[2].isdigit() and int(sys.argv[2]) < 27:
    want["experimental"] = True
if any(cfg.get(k) != v for k, v in want.items()):
    cfg.update(want)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    print("changed")
PY
}

engine_up() {
  docker info >/dev/null 2>&1
}

start_dockerd() {
  if engine_up; then
    log "dockerd already answering"
    return 0
  fi
  if [[ -S /var/run/docker.sock ]] && ! pgrep -x dockerd >/dev/null 2>&1; then
    rm -f /var/run/docker.sock
  fi
  if ! pgrep -x dockerd >/dev/null 2>&1; then
    log "starting dockerd (log: ${DOCKERD_LOG})"
    mkdir -p "$(dirname "${DOCKERD_LOG}")"
    # setsid + nohup: dockerd outlives this shell and the test run that started it.
    setsid nohup dockerd >>"${DOCKERD_LOG}" 2>&1 </dev/null &
  fi
  local i
  for ((i = 0; i < 120; i++)); do
    if engine_up; then
      log "dockerd is up"
      return 0
    fi
    sleep 0.5
  done
  log "dockerd did not answer within 60 s; last log lines:"
  tail -n 30 "${DOCKERD_LOG}" >&2 || true
  exit 1
}

# Slim a rootfs like Docker's official -slim images: no docs, man pages or locales
# (now, and for packages installed later through the dpkg path excludes), no apt caches.
slim_rootfs() {
  local root="${1:?rootfs dir}"
  mkdir -p "${root}/etc/dpkg/dpkg.cfg.d"
  cat >"${root}/etc/dpkg/dpkg.cfg.d/docker-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
CFG
  find "${root}/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
  rm -rf "${root}"/usr/share/man/* "${root}"/usr/share/info/* "${root}"/usr/share/locale/* \
    "${root}"/usr/share/lintian/* "${root}"/var/lib/apt/lists/* "${root}"/var/cache/apt/*.bin \
    "${root}"/var/cache/apt/archives/*.deb "${root}"/var/log/*.log "${root}"/var/log/apt/*
}

build_base_image() {
  if docker image inspect "${BASE_IMAGE}" >/dev/null 2>&1; then
    log "${BASE_IMAGE} present"
    return 0
  fi
  mkdir -p "${CACHE_DIR}"
  # Bump the suffix when slim_rootfs changes, so old caches are rebuilt.
  local tarball="${CACHE_DIR}/${SUITE}-minbase-slim1.tar"
  if [[ ! -s "${tarball}" ]]; then
    local root
    root="$(mktemp -d "${CACHE_DIR}/rootfs.XXXXXX")"
    log "debootstrap ${SUITE} (minbase) into ${root}"
    debootstrap --variant=minbase "${SUITE}" "${root}" http://deb.debian.org/debian >"${CACHE_DIR}/debootstrap.log" 2>&1 || {
      tail -n 30 "${CACHE_DIR}/debootstrap.log" >&2
      rm -rf "${root}"
      exit 1
    }
    slim_rootfs "${root}"
    tar -C "${root}" -cf "${tarball}.tmp" .
    mv "${tarball}.tmp" "${tarball}"
    rm -rf "${root}"
  fi
  log "importing ${tarball} as ${BASE_IMAGE}"
  docker import "${tarball}" "${BASE_IMAGE}" >/dev/null
}

main() {
  need_root
  install_packages
  local changed
  changed="$(merge_daemon_json)"
  if [[ "${changed}" == "changed" ]] && engine_up; then
    log "daemon.json changed while dockerd runs; IPv6 defaults apply after its next restart"
  fi
  start_dockerd
  build_base_image
}

main "$@"
