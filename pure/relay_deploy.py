"""The relay's and the local sink's docker-CLI scripts (``target/relay/``,
``target/sink/``) with their parameters, and the deploy payload. No Pulumi, no side
effects (it reads the project's ``relay/``, ``sink/`` and ``target/`` files).

``components/relay.py`` and ``components/sink.py`` run these scripts through
``components/target.py`` (this machine's engine, or a VPS's over SSH); the tests run
the very same scripts against a real Docker engine.

Every script starts with ``set -euo pipefail``, gets its values only as a header of
``shlex.quote``d assignments (the files' text is constant), and is idempotent: a run
that changes nothing prints ``dkim-relay[relay]: no change`` (``[sink]`` for the
sink) and leaves the container, its ID and every file alone.

The deploy script reads a payload on stdin: base64 of a deterministic tar.gz holding
``build/...`` (the image's build context) and ``config/...`` (the relay's rendered,
non-secret config files; see ``pure/postfix.py``), then ``#`` comment lines the
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
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pure import postfix, shell
from pure.config import (
    DEFAULT_CONTAINER_NAME,
    DEFAULT_RELAY_IPV4_SUBNET,
    DEFAULT_RELAY_IPV6_SUBNET,
    DEFAULT_SMTP_PORT,
    HOSTNAME_PATTERN,
)

FINGERPRINT_LABEL = "dkim-relay.fingerprint"
QUEUE_MOUNT = "/var/spool/postfix"
SINK_MAIL_MOUNT = "/mail"
DEFAULT_HEALTH_TIMEOUT = 90
RELAY_DIR = Path(__file__).resolve().parent.parent / "relay"  # the image's build context
SINK_DIR = Path(__file__).resolve().parent.parent / "sink"  # the local sink's

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_REPO_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,126}[a-z0-9])?$")
_HOST_RE = re.compile(HOSTNAME_PATTERN)
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


def abs_path(value: str, what: str) -> str:
    """``value`` without a trailing ``/``, if it is an absolute path fit for ``-v``."""
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


# --- the stdin payload ---------------------------------------------------------------
@dataclass(frozen=True)
class Payload:
    """What the deploy script gets on stdin, and the hashes the script is rendered with."""

    stdin: str  # base64 lines of the tar.gz
    sha256: str  # of the tar.gz bytes
    build_hash: str  # sha256 over the build files (names, modes, contents)
    config_hash: str  # sha256 over the config files


def read_tree(directory: Path) -> dict[str, tuple[int, bytes]]:
    """relative path -> (mode, content) of every file under ``directory``."""
    return {
        str(p.relative_to(directory)): (p.stat().st_mode & 0o777, p.read_bytes())
        for p in sorted(directory.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


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


def _script(step: str, values: Mapping[str, shell.Value], body: str) -> str:
    """The header (STEP + values), target/relay/lib.sh, then the body file."""
    return shell.script({"STEP": step, **values}, "relay/lib.sh", body)


# --- the relay -----------------------------------------------------------------------
@dataclass(frozen=True)
class RelaySpec:
    """Everything the relay's deploy/delete scripts depend on (no secrets)."""

    work_dir: str
    relay_host: str
    secrets_dir: str
    cert_dir: str = "/etc/letsencrypt"
    container_name: str = DEFAULT_CONTAINER_NAME
    network_name: str = ""  # default: <container_name>-net
    volume_name: str = ""  # default: <container_name>-queue
    image_repo: str = "dkim-relay"
    publish_ipv4: str = "0.0.0.0"
    publish_ipv6: str | None = "::"
    submission_host_port: int = DEFAULT_SMTP_PORT
    submissions_465: bool = False
    submissions_host_port: int = 465
    ipv4_subnet: str = DEFAULT_RELAY_IPV4_SUBNET
    ipv6_subnet: str = DEFAULT_RELAY_IPV6_SUBNET
    cert_poll_seconds: int = 300
    health_timeout: int = DEFAULT_HEALTH_TIMEOUT

    def __post_init__(self) -> None:
        _name(self.container_name, "container_name")
        _name(self.network, "network_name")
        _name(self.volume, "volume_name")
        _repo(self.image_repo, "image_repo")
        abs_path(self.work_dir, "work_dir")
        abs_path(self.secrets_dir, "secrets_dir")
        abs_path(self.cert_dir, "cert_dir")
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


def render_relay_deploy(spec: RelaySpec, payload: Payload) -> str:
    """The deploy script (create and update): stdin is ``payload.stdin``."""
    values: dict[str, str | int] = {
        "WORK_DIR": abs_path(spec.work_dir, "work_dir"),
        "PAYLOAD_SHA256": payload.sha256,
        "BUILD_H16": payload.build_hash[:16],
        "CONFIG_H16": payload.config_hash[:16],
        "IMAGE_REPO": spec.image_repo,
        "IMAGE": image_tag(spec.image_repo, payload.build_hash),
        "CONTAINER": spec.container_name,
        "VOLUME": spec.volume,
        "RELAY_HOST": spec.relay_host,
        "SECRETS_DIR": abs_path(spec.secrets_dir, "secrets_dir"),
        "CERT_DIR": abs_path(spec.cert_dir, "cert_dir"),
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
    return _script("relay", {**values, "PORTS": spec.ports()}, "relay/deploy.sh")


def render_relay_delete(spec: RelaySpec, remove_queue: bool = False) -> str:
    """Removes the container and the network; safe to run again. The queue volume is
    kept unless ``remove_queue``: it may hold mail not yet delivered (a destroy/up
    cycle, e.g. to move subnets, must not lose it)."""
    values: dict[str, str | int] = {
        "WORK_DIR": abs_path(spec.work_dir, "work_dir"),
        "CONTAINER": spec.container_name,
        "NETWORK": spec.network,
        "VOLUME": spec.volume,
        "REMOVE_QUEUE": 1 if remove_queue else 0,
    }
    return _script("relay", values, "relay/delete.sh")


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
        abs_path(self.work_dir, "work_dir")
        abs_path(self.mail_dir, "mail_dir")
        _name(self.network_name, "network_name")
        _name(self.container_name, "container_name")
        _repo(self.image_repo, "image_repo")
        _ip(self.ipv4_address, 4, "ipv4_address")
        if not isinstance(self.start_timeout, int) or not 1 <= self.start_timeout <= 600:
            raise ValueError("start_timeout must be 1..600 seconds")


def render_sink_deploy(spec: SinkSpec, payload: Payload) -> str:
    values: dict[str, str | int] = {
        "WORK_DIR": abs_path(spec.work_dir, "work_dir"),
        "MAIL_DIR": abs_path(spec.mail_dir, "mail_dir"),
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
    return _script("sink", values, "sink/deploy.sh")


def render_sink_delete(spec: SinkSpec) -> str:
    """Removes the sink container (the kept mail in mail_dir stays)."""
    values: dict[str, str | int] = {
        "WORK_DIR": abs_path(spec.work_dir, "work_dir"),
        "CONTAINER": spec.container_name,
    }
    return _script("sink", values, "sink/delete.sh")
