"""Pure renderers for the bash scripts that run the relay (and the local sink) with the
docker CLI. No Pulumi, no I/O: typed values in, script text and stdin payloads out.

``components/relay.py`` sends these scripts with ``pulumi_command`` (``local.Command``
for this machine's engine, ``remote.Command`` over SSH for a VPS); the tests run the
very same strings against a real Docker engine.

Every script starts with ``set -euo pipefail``, interpolates values only through
``shlex.quote`` in a header of variable assignments (the body is constant text), and
is idempotent: a run that changes nothing prints ``dkim-relay[relay]: no change``
(``[sink]`` for the sink) and leaves the container, its ID and every file alone.

The deploy script reads a payload on stdin: base64 of a deterministic tar.gz holding
``build/...`` (the image's build context) and ``config/...`` (the relay's rendered,
non-secret config files; see ``components/postfix.py``), then ``#`` comment lines the
script ignores (the component puts a non-secret "secrets generation" marker there so
the command re-runs when the key files change). Nothing secret is in the payload.

Host layout under ``work_dir``::

    build-<h16>/    build context, h16 = first 16 hex of sha256 over the build files
    config-<h16>/   config files, mounted read-only at postfix.CONFIG_DIR
    secrets/        (local engine only) key files written by host_scripts.render_secrets

Docker objects: image ``<image_repo>:<build h16>`` (built only if absent), a user
bridge network with IPv6 and fixed v4/v6 subnets and gateways, a named volume for
the queue, and the container, recreated only when its ``dkim-relay.fingerprint``
label differs. The fingerprint is sha256 over every ``docker run`` argument (image
tag, ports, mounts incl. the config dir's hash, ...) plus a revision of the secrets
directory that the script computes on the host (sha256 over the files' names and
sha256 sums), so no hash of secret material travels through Pulumi.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import ipaddress
import re
import shlex
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass

from components import postfix

FINGERPRINT_LABEL = "dkim-relay.fingerprint"
QUEUE_MOUNT = "/var/spool/postfix"
SINK_MAIL_MOUNT = "/mail"
DEFAULT_HEALTH_TIMEOUT = 90

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_REPO_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,126}[a-z0-9])?$")
_HOST_RE = re.compile(
    r"^(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
)
_REL_RE = re.compile(r"^[A-Za-z0-9_.+-]+(?:/[A-Za-z0-9_.+-]+)*$")


# --- validation --------------------------------------------------------------------
def _name(value: str, what: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(f"{what}: {value!r} is not a valid docker object name")
    return value


def _repo(value: str, what: str) -> str:
    if not isinstance(value, str) or not _REPO_RE.match(value):
        raise ValueError(f"{what}: {value!r} is not a valid image repository name")
    return value


def _port(value: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise ValueError(f"{what}: {value!r} is not a TCP port (1-65535)")
    return value


def _abs_path(value: str, what: str) -> str:
    # ':' and ',' would change the meaning of `-v SRC:DST:ro`; control chars are never ok.
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or value.rstrip("/") == ""
        or any(c in value for c in ":,")
        or any(ord(c) < 32 or ord(c) == 127 for c in value)
        or "/../" in f"{value}/"
    ):
        raise ValueError(f"{what}: {value!r} must be an absolute path without ':', ',' or '..'")
    return value.rstrip("/")


def _ip(value: str, version: int, what: str) -> str:
    try:
        addr = ipaddress.ip_address(value)
    except (ValueError, TypeError):
        raise ValueError(f"{what}: {value!r} is not an IP address") from None
    if addr.version != version:
        raise ValueError(f"{what}: {value!r} is not an IPv{version} address")
    return str(addr)


def _subnet(value: str, version: int, what: str) -> tuple[str, str]:
    """(normalized subnet, gateway = first host)."""
    try:
        net = ipaddress.ip_network(value, strict=True)
    except (ValueError, TypeError):
        raise ValueError(f"{what}: {value!r} is not a network address/prefix") from None
    if net.version != version:
        raise ValueError(f"{what}: {value!r} is not an IPv{version} subnet")
    if net.num_addresses < 8:
        raise ValueError(f"{what}: {value!r} is too small")
    return str(net), str(next(net.hosts()))


def _q(value: str | int) -> str:
    return shlex.quote(str(value))


# --- the stdin payload ---------------------------------------------------------------
@dataclass(frozen=True)
class Payload:
    """What the deploy script gets on stdin, and the hashes the script is rendered with."""

    stdin: str  # base64 lines of the tar.gz
    sha256: str  # of the tar.gz bytes
    build_hash: str  # sha256 over the build files (names, modes, contents)
    config_hash: str  # sha256 over the config files


def tree_hash(files: Mapping[str, tuple[int, bytes]]) -> str:
    h = hashlib.sha256()
    for rel in sorted(files):
        mode, data = files[rel]
        h.update(rel.encode() + b"\0" + oct(mode & 0o777).encode() + b"\0")
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()


def _check_rel(rel: str) -> None:
    if not _REL_RE.match(rel) or any(p in (".", "..") for p in rel.split("/")):
        raise ValueError(f"payload path {rel!r} must be relative, plain and without '..'")


def make_payload(
    build_files: Mapping[str, tuple[int, bytes]], config_files: Mapping[str, str] | None = None
) -> Payload:
    """Deterministic tar.gz (fixed mtimes/owners, sorted) of build/ and config/, base64'd.

    ``build_files``: relative path -> (mode, content) of the image's build context;
    ``config_files``: relative path -> text (``postfix.render_config``), or None for
    an image without config (the sink).
    """
    config = {rel: (0o644, text.encode()) for rel, text in (config_files or {}).items()}
    parts = {"build": dict(build_files), "config": config}
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=9) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for top, files in parts.items():
                dirs: set[str] = {top}
                for rel in files:
                    _check_rel(rel)
                    segs = rel.split("/")
                    dirs.update(f"{top}/{'/'.join(segs[:i])}" for i in range(1, len(segs)))
                for d in sorted(dirs):
                    info = tarfile.TarInfo(d)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                    tar.addfile(info)
                for rel in sorted(files):
                    mode, data = files[rel]
                    info = tarfile.TarInfo(f"{top}/{rel}")
                    info.size, info.mode, info.mtime = (
                        len(data),
                        0o755 if mode & 0o111 else 0o644,
                        0,
                    )
                    tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return Payload(
        stdin=base64.encodebytes(raw).decode(),
        sha256=hashlib.sha256(raw).hexdigest(),
        build_hash=tree_hash(build_files),
        config_hash=tree_hash(config),
    )


def with_marker(payload_stdin: str, marker: str) -> str:
    """Append a non-secret comment line (the deploy script ignores it)."""
    if any(c in marker for c in "\r\n"):
        raise ValueError("marker must be one line")
    return f"{payload_stdin}# {marker}\n"


# --- shared bash ---------------------------------------------------------------------
_PRELUDE = r"""
umask 022
log() { printf 'dkim-relay[%s]: %s\n' "${STEP}" "$*"; }
die() { printf 'dkim-relay[%s]: error: %s\n' "${STEP}" "$*" >&2; exit 1; }
command -v docker >/dev/null || die "the docker CLI is not installed"
docker info >/dev/null 2>&1 ||
  die "the Docker engine does not answer (is dockerd running, may this user use it?)"
CHANGED=0
finish() {
  if ((CHANGED)); then log "done (changed)"; else log "no change"; fi
}
exists_container() { docker container inspect "$1" >/dev/null 2>&1; }
# cget FORMAT: a field of CONTAINER; nget FORMAT: a field of NETWORK.
cget() { docker container inspect -f "$1" "${CONTAINER}"; }
nget() { docker network inspect -f "$1" "${NETWORK}"; }
exists_network() { docker network inspect "$1" >/dev/null 2>&1; }
# unpack_payload DIR: stdin (base64 lines, '#' comments) -> DIR/build, DIR/config.
unpack_payload() {
  local dir="$1" got
  grep -v '^#' | base64 -d >"${dir}/payload.tar.gz" || die "stdin is not the base64 payload"
  got="$(sha256sum "${dir}/payload.tar.gz")"
  [[ "${got%% *}" == "${PAYLOAD_SHA256}" ]] || die "payload checksum mismatch"
  tar -xzf "${dir}/payload.tar.gz" -C "${dir}" --no-same-owner
}
# place SRC DEST: move an unpacked tree into place unless it is there already.
place() {
  if [[ -d "$2" ]]; then return 0; fi
  mv -- "$1" "$2"
  log "unpacked $2"
  CHANGED=1
}
ensure_image() {
  if docker image inspect "${IMAGE}" >/dev/null 2>&1; then return 0; fi
  log "building ${IMAGE}"
  if ! docker build -t "${IMAGE}" "${BUILD_DIR}" >"${TMP}/build.log" 2>&1; then
    tail -n 60 "${TMP}/build.log" >&2
    die "docker build of ${IMAGE} failed"
  fi
  CHANGED=1
}
# ensure_network: a bridge with IPv6 on and exactly the given subnets/gateways.
ensure_network() {
  local have want="true ${NET_V4_SUBNET}@${NET_V4_GATEWAY} ${NET_V6_SUBNET}@${NET_V6_GATEWAY}"
  if exists_network "${NETWORK}"; then
    have="$(nget '{{.EnableIPv6}}{{range .IPAM.Config}} {{.Subnet}}@{{.Gateway}}{{end}}')"
    [[ "${have}" == "${want}" ]] && return 0
    log "network ${NETWORK} has '${have}', want '${want}': recreating it"
    remove_container "${CONTAINER}"
    local c
    # shellcheck disable=SC2016 # a Go template, not a shell expansion
    for c in $(nget '{{range $id, $e := .Containers}}{{$id}} {{end}}'); do
      log "disconnecting container ${c:0:12} from ${NETWORK}"
      docker network disconnect -f "${NETWORK}" "${c}" >/dev/null
    done
    docker network rm "${NETWORK}" >/dev/null
  fi
  docker network create --driver bridge --ipv6 \
    --subnet "${NET_V4_SUBNET}" --gateway "${NET_V4_GATEWAY}" \
    --subnet "${NET_V6_SUBNET}" --gateway "${NET_V6_GATEWAY}" \
    --label dkim-relay.network=1 "${NETWORK}" >/dev/null
  log "created network ${NETWORK}"
  CHANGED=1
}
remove_container() {
  exists_container "$1" || return 0
  docker stop -t 30 "$1" >/dev/null 2>&1 || true
  docker rm -f "$1" >/dev/null
  log "removed container $1"
  CHANGED=1
}
# ensure_container: recreate unless the fingerprint label matches and it sits on the
# current network; start it if it is stopped. RUN_ARGS must end with the image.
ensure_container() {
  local fp have netid nets
  fp="$({
    printf '%s\0' "${RUN_ARGS[@]}"
    printf 'secrets:%s\0' "${SECRETS_REVISION:-}"
  } | sha256sum)"
  fp="${fp%% *}"
  netid="$(nget '{{.Id}}')"
  if exists_container "${CONTAINER}"; then
    have="$(cget '{{index .Config.Labels "dkim-relay.fingerprint"}}')"
    nets="$(cget '{{range .NetworkSettings.Networks}}{{.NetworkID}} {{end}}')"
    if [[ "${have}" == "${fp}" && " ${nets}" == *" ${netid} "* ]]; then
      if [[ "$(cget '{{.State.Running}}')" != "true" ]]; then
        docker start "${CONTAINER}" >/dev/null
        log "started container ${CONTAINER}"
        CHANGED=1
      fi
      return 0
    fi
    log "container ${CONTAINER} is out of date: recreating it"
    remove_container "${CONTAINER}"
  fi
  docker run -d --label "dkim-relay.fingerprint=${fp}" "${RUN_ARGS[@]}" >/dev/null
  log "started container ${CONTAINER} from ${IMAGE}"
  CHANGED=1
}
show_logs() {
  printf '%s\n' "---- last log lines of ${CONTAINER} ----" >&2
  docker logs --tail 80 "${CONTAINER}" >&2 2>&1 || true
}
# wait_healthy SECONDS: the image's HEALTHCHECK must report healthy in time.
wait_healthy() {
  local limit="$1" i st restarts
  for ((i = 0; i < limit * 2; i++)); do
    st="$(cget '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}')"
    restarts="$(cget '{{.RestartCount}}')"
    case "${st}" in
      healthy) return 0 ;;
      unhealthy) show_logs; die "container ${CONTAINER} is unhealthy" ;;
      none) die "image ${IMAGE} has no health check" ;;
    esac
    if ((restarts > 0)); then show_logs; die "container ${CONTAINER} keeps exiting"; fi
    sleep 0.5
  done
  show_logs
  die "container ${CONTAINER} not healthy after ${limit} s"
}
# prune PATTERN KEEP...: remove work_dir entries named like PATTERN, except KEEP.
prune_dirs() {
  local pattern="$1" d base k keep
  shift
  for d in "${WORK_DIR}"/*; do
    [[ -d "${d}" ]] || continue
    base="${d##*/}"
    [[ "${base}" =~ ${pattern} ]] || continue
    keep=0
    for k in "$@"; do [[ "${base}" == "${k}" ]] && keep=1; done
    ((keep)) && continue
    rm -rf -- "${d}"
    log "pruned ${d}"
    CHANGED=1
  done
}
# prune_images: older content-tagged images of IMAGE_REPO that nothing uses.
prune_images() {
  local ref
  while IFS= read -r ref; do
    [[ "${ref##*:}" =~ ^[0-9a-f]{16}$ && "${ref}" != "${IMAGE}" ]] || continue
    if docker image rm "${ref}" >/dev/null 2>&1; then
      log "pruned image ${ref}"
      CHANGED=1
    fi
  done < <(docker image ls --format '{{.Repository}}:{{.Tag}}' "${IMAGE_REPO}")
}
"""


def _header(step: str, values: Mapping[str, str | int]) -> str:
    lines = ["#!/usr/bin/env bash", "set -euo pipefail", f"STEP={_q(step)}"]
    lines += [f"{k}={_q(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


# --- the relay -----------------------------------------------------------------------
@dataclass(frozen=True)
class RelaySpec:
    """Everything the relay's deploy/delete scripts depend on (no secrets)."""

    work_dir: str
    relay_host: str
    secrets_dir: str
    cert_dir: str = "/etc/letsencrypt"
    container_name: str = "dkim-relay"
    network_name: str = ""  # default: <container_name>-net
    volume_name: str = ""  # default: <container_name>-queue
    image_repo: str = "dkim-relay"
    publish_ipv4: str = "0.0.0.0"
    publish_ipv6: str | None = "::"
    submission_host_port: int = 587
    submissions_465: bool = False
    submissions_host_port: int = 465
    ipv4_subnet: str = "172.30.87.0/24"
    ipv6_subnet: str = "fd00:d6b1:587::/64"
    cert_poll_seconds: int = 300
    health_timeout: int = DEFAULT_HEALTH_TIMEOUT

    def __post_init__(self) -> None:
        _name(self.container_name, "container_name")
        _name(self.network, "network_name")
        _name(self.volume, "volume_name")
        _repo(self.image_repo, "image_repo")
        _abs_path(self.work_dir, "work_dir")
        _abs_path(self.secrets_dir, "secrets_dir")
        _abs_path(self.cert_dir, "cert_dir")
        if not _HOST_RE.match(self.relay_host):
            raise ValueError(f"relay_host: {self.relay_host!r} is not a host name")
        _ip(self.publish_ipv4, 4, "publish_ipv4")
        if self.publish_ipv6 is not None:
            _ip(self.publish_ipv6, 6, "publish_ipv6")
        _port(self.submission_host_port, "submission_host_port")
        _port(self.submissions_host_port, "submissions_host_port")
        if self.submissions_465 and self.submissions_host_port == self.submission_host_port:
            raise ValueError("submission and submissions host ports must differ")
        _subnet(self.ipv4_subnet, 4, "ipv4_subnet")
        _subnet(self.ipv6_subnet, 6, "ipv6_subnet")
        for label, n, lo, hi in (
            ("cert_poll_seconds", self.cert_poll_seconds, 0, 86400),
            ("health_timeout", self.health_timeout, 5, 3600),
        ):
            if not isinstance(n, int) or isinstance(n, bool) or not lo <= n <= hi:
                raise ValueError(f"{label}: {n!r} must be an integer in {lo}..{hi}")

    @property
    def network(self) -> str:
        return self.network_name or f"{self.container_name}-net"

    @property
    def volume(self) -> str:
        return self.volume_name or f"{self.container_name}-queue"

    def ports(self) -> list[str]:
        """The ``-p`` values."""
        pairs = [(self.submission_host_port, 587)]
        if self.submissions_465:
            pairs.append((self.submissions_host_port, 465))
        out = []
        for host_port, port in pairs:
            out.append(f"{_ip(self.publish_ipv4, 4, 'publish_ipv4')}:{host_port}:{port}")
            if self.publish_ipv6 is not None:
                out.append(f"[{_ip(self.publish_ipv6, 6, 'publish_ipv6')}]:{host_port}:{port}")
        return out


def image_tag(repo: str, build_hash: str) -> str:
    return f"{_repo(repo, 'image_repo')}:{build_hash[:16]}"


def _network_values(spec_v4: str, spec_v6: str, network: str) -> dict[str, str | int]:
    v4, g4 = _subnet(spec_v4, 4, "ipv4_subnet")
    v6, g6 = _subnet(spec_v6, 6, "ipv6_subnet")
    return {
        "NETWORK": network,
        "NET_V4_SUBNET": v4,
        "NET_V4_GATEWAY": g4,
        "NET_V6_SUBNET": v6,
        "NET_V6_GATEWAY": g6,
    }


_RELAY_DEPLOY = r"""
mkdir -p -- "${WORK_DIR}"
TMP="$(mktemp -d "${WORK_DIR}/.deploy.XXXXXX")"
trap 'rm -rf -- "${TMP}"' EXIT
unpack_payload "${TMP}"
BUILD_DIR="${WORK_DIR}/build-${BUILD_H16}"
CONFIG_HOST_DIR="${WORK_DIR}/config-${CONFIG_H16}"
place "${TMP}/build" "${BUILD_DIR}"
place "${TMP}/config" "${CONFIG_HOST_DIR}"

[[ -d "${SECRETS_DIR}" ]] || die "secrets directory ${SECRETS_DIR} does not exist"
[[ -f "${SECRETS_DIR}/smtp-users" ]] || die "no smtp-users file in ${SECRETS_DIR}"
compgen -G "${SECRETS_DIR}/dkim/*.private" >/dev/null || die "no DKIM key in ${SECRETS_DIR}/dkim"
[[ -d "${CERT_DIR}" ]] || die "certificate directory ${CERT_DIR} does not exist"
# Revision of the key files, computed here so no hash of them passes through Pulumi.
SECRETS_REVISION="$(cd "${SECRETS_DIR}" && find . -type f -print0 | LC_ALL=C sort -z |
  xargs -0 -r sha256sum | sha256sum)"
SECRETS_REVISION="${SECRETS_REVISION%% *}"

ensure_image
ensure_network
if ! docker volume inspect "${VOLUME}" >/dev/null 2>&1; then
  docker volume create --label dkim-relay.queue=1 "${VOLUME}" >/dev/null
  log "created volume ${VOLUME}"
  CHANGED=1
fi

RUN_ARGS=(--name "${CONTAINER}" --hostname "${RELAY_HOST}" --restart always --stop-timeout 30
  --log-driver json-file --log-opt max-size=10m --log-opt max-file=3
  --network "${NETWORK}")
for p in "${PORTS[@]}"; do RUN_ARGS+=(-p "${p}"); done
RUN_ARGS+=(-v "${VOLUME}:${QUEUE_MOUNT}"
  -v "${CERT_DIR}:${CERT_MOUNT}:ro"
  -v "${SECRETS_DIR}:${SECRETS_MOUNT}:ro"
  -v "${CONFIG_HOST_DIR}:${CONFIG_MOUNT}:ro"
  -e "RELAY_CERT_POLL_SECONDS=${CERT_POLL_SECONDS}"
  "${IMAGE}")
ensure_container
wait_healthy "${HEALTH_TIMEOUT}"
prune_dirs '^(build|config)-[0-9a-f]{16}$' "build-${BUILD_H16}" "config-${CONFIG_H16}"
prune_images
finish
"""


def render_relay_deploy(spec: RelaySpec, payload: Payload) -> str:
    """The deploy script (create and update): stdin is ``payload.stdin``."""
    values: dict[str, str | int] = {
        "WORK_DIR": _abs_path(spec.work_dir, "work_dir"),
        "PAYLOAD_SHA256": payload.sha256,
        "BUILD_H16": payload.build_hash[:16],
        "CONFIG_H16": payload.config_hash[:16],
        "IMAGE_REPO": spec.image_repo,
        "IMAGE": image_tag(spec.image_repo, payload.build_hash),
        "CONTAINER": spec.container_name,
        "VOLUME": spec.volume,
        "RELAY_HOST": spec.relay_host,
        "SECRETS_DIR": _abs_path(spec.secrets_dir, "secrets_dir"),
        "CERT_DIR": _abs_path(spec.cert_dir, "cert_dir"),
        "QUEUE_MOUNT": QUEUE_MOUNT,
        "CERT_MOUNT": postfix.CERT_MOUNT,
        "SECRETS_MOUNT": postfix.SECRETS_DIR,
        "CONFIG_MOUNT": postfix.CONFIG_DIR,
        "CERT_POLL_SECONDS": spec.cert_poll_seconds,
        "HEALTH_TIMEOUT": spec.health_timeout,
        **_network_values(spec.ipv4_subnet, spec.ipv6_subnet, spec.network),
    }
    for h in (payload.sha256, payload.build_hash, payload.config_hash):
        if not re.fullmatch(r"[0-9a-f]{64}", h):
            raise ValueError("payload hashes must be sha256 hex digests")
    ports = "PORTS=(" + " ".join(_q(p) for p in spec.ports()) + ")\n"
    return _header("relay", values) + ports + _PRELUDE + _RELAY_DEPLOY


_RELAY_DELETE = r"""
if exists_container "${CONTAINER}"; then
  remove_container "${CONTAINER}"
fi
if exists_network "${NETWORK}"; then
  if docker network rm "${NETWORK}" >/dev/null 2>&1; then
    log "removed network ${NETWORK}"
    CHANGED=1
  else
    log "warning: network ${NETWORK} is still used by other containers; kept"
  fi
fi
if ((REMOVE_QUEUE)); then
  if docker volume inspect "${VOLUME}" >/dev/null 2>&1; then
    docker volume rm "${VOLUME}" >/dev/null
    log "removed volume ${VOLUME}"
    CHANGED=1
  fi
elif docker volume inspect "${VOLUME}" >/dev/null 2>&1; then
  log "kept volume ${VOLUME}: it may hold queued mail (docker volume rm ${VOLUME} to drop it)"
fi
if [[ -d "${WORK_DIR}" ]]; then
  prune_dirs '^(build|config)-[0-9a-f]{16}$'
fi
finish
"""


def render_relay_delete(spec: RelaySpec, remove_queue: bool = False) -> str:
    """Removes the container and the network; safe to run again. The queue volume is
    kept unless ``remove_queue``: it may hold mail not yet delivered (a destroy/up
    cycle, e.g. to move subnets, must not lose it)."""
    values: dict[str, str | int] = {
        "WORK_DIR": _abs_path(spec.work_dir, "work_dir"),
        "CONTAINER": spec.container_name,
        "NETWORK": spec.network,
        "VOLUME": spec.volume,
        "REMOVE_QUEUE": 1 if remove_queue else 0,
    }
    return _header("relay", values) + _PRELUDE + _RELAY_DELETE


# --- the local sink ------------------------------------------------------------------
@dataclass(frozen=True)
class SinkSpec:
    work_dir: str
    network_name: str
    ipv4_address: str
    mail_dir: str
    container_name: str = "dkim-relay-sink"
    image_repo: str = "dkim-relay-sink"
    start_timeout: int = 30

    def __post_init__(self) -> None:
        _abs_path(self.work_dir, "work_dir")
        _abs_path(self.mail_dir, "mail_dir")
        _name(self.network_name, "network_name")
        _name(self.container_name, "container_name")
        _repo(self.image_repo, "image_repo")
        _ip(self.ipv4_address, 4, "ipv4_address")
        if not isinstance(self.start_timeout, int) or not 1 <= self.start_timeout <= 600:
            raise ValueError("start_timeout must be 1..600 seconds")


_SINK_DEPLOY = r"""
mkdir -p -- "${WORK_DIR}" "${MAIL_DIR}"
TMP="$(mktemp -d "${WORK_DIR}/.sink.XXXXXX")"
trap 'rm -rf -- "${TMP}"' EXIT
unpack_payload "${TMP}"
BUILD_DIR="${WORK_DIR}/sink-build-${BUILD_H16}"
place "${TMP}/build" "${BUILD_DIR}"
ensure_image
exists_network "${NETWORK}" || die "network ${NETWORK} does not exist (deploy the relay first)"
RUN_ARGS=(--name "${CONTAINER}" --restart unless-stopped
  --log-driver json-file --log-opt max-size=10m --log-opt max-file=3
  --network "${NETWORK}" --ip "${SINK_IPV4}"
  -v "${MAIL_DIR}:${MAIL_MOUNT}" "${IMAGE}")
ensure_container
ip="$(cget "{{with index .NetworkSettings.Networks \"${NETWORK}\"}}{{.IPAddress}}{{end}}")"
[[ "${ip}" == "${SINK_IPV4}" ]] || die "sink has address '${ip}', want ${SINK_IPV4}"
for ((i = 0; i < START_TIMEOUT * 2; i++)); do
  out="$(docker logs "${CONTAINER}" 2>&1 || true)"
  [[ "${out}" == *"sink: listening"* ]] && break
  [[ "$(cget '{{.State.Running}}')" == "true" ]] ||
    { show_logs; die "sink exited"; }
  sleep 0.5
done
[[ "${out}" == *"sink: listening"* ]] || { show_logs; die "sink did not start listening"; }
prune_dirs '^sink-build-[0-9a-f]{16}$' "sink-build-${BUILD_H16}"
prune_images
finish
"""


def render_sink_deploy(spec: SinkSpec, payload: Payload) -> str:
    values: dict[str, str | int] = {
        "WORK_DIR": _abs_path(spec.work_dir, "work_dir"),
        "MAIL_DIR": _abs_path(spec.mail_dir, "mail_dir"),
        "MAIL_MOUNT": SINK_MAIL_MOUNT,
        "PAYLOAD_SHA256": payload.sha256,
        "BUILD_H16": payload.build_hash[:16],
        "IMAGE_REPO": spec.image_repo,
        "IMAGE": image_tag(spec.image_repo, payload.build_hash),
        "CONTAINER": spec.container_name,
        "NETWORK": spec.network_name,
        "SINK_IPV4": _ip(spec.ipv4_address, 4, "ipv4_address"),
        "START_TIMEOUT": spec.start_timeout,
    }
    return _header("sink", values) + _PRELUDE + _SINK_DEPLOY


_SINK_DELETE = r"""
remove_container "${CONTAINER}"
if [[ -d "${WORK_DIR}" ]]; then
  prune_dirs '^sink-build-[0-9a-f]{16}$'
fi
finish
"""


def render_sink_delete(spec: SinkSpec) -> str:
    """Removes the sink container (the kept mail in mail_dir stays)."""
    values: dict[str, str | int] = {
        "WORK_DIR": _abs_path(spec.work_dir, "work_dir"),
        "CONTAINER": spec.container_name,
    }
    return _header("sink", values) + _PRELUDE + _SINK_DELETE
