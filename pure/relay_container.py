"""The relay's and the local sink's Docker objects as plain values: the image name, the
network's addresses, the container's published ports, mounts and environment, and the
SSH options that pin the VPS's host key for the Docker provider. No Pulumi, no I/O.

``components/relay.py`` and ``components/sink.py`` turn these into pulumi-docker
resources; the relay image's end-to-end tests start the image with the same values.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pure import postfix
from pure.config import (
    DEFAULT_CONTAINER_NAME,
    DEFAULT_RELAY_IPV4_SUBNET,
    DEFAULT_RELAY_IPV6_SUBNET,
    DEFAULT_SMTP_PORT,
    SSH_HOST_KEY_TYPES,
)

RELAY_DIR = Path(__file__).resolve().parent.parent / "relay"  # the image's build context
SINK_DIR = Path(__file__).resolve().parent.parent / "sink"  # the local sink's
QUEUE_MOUNT = "/var/spool/postfix"
SINK_MAIL_MOUNT = "/mail"
# Fixed host numbers in the relay's subnets (the gateway is the first host).
RELAY_HOST_NUMBER = 10
SINK_HOST_NUMBER = 25
LOCAL_DOCKER_HOST = "unix:///var/run/docker.sock"
# The container log, rotated (Postfix logs every session).
LOG_DRIVER = "json-file"
LOG_OPTS = {"max-size": "10m", "max-file": "3"}

# The ssh client's algorithms for each host key type (an RSA key signs with SHA-2).
HOSTKEY_ALGORITHMS: dict[str, str] = {
    "ssh-ed25519": "ssh-ed25519",
    "ssh-rsa": "rsa-sha2-512,rsa-sha2-256,ssh-rsa",
    "ecdsa-sha2-nistp256": "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384": "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521": "ecdsa-sha2-nistp521",
}
assert set(HOSTKEY_ALGORITHMS) == set(SSH_HOST_KEY_TYPES)


def tree_hash(files: Mapping[str, tuple[bool, bytes]]) -> str:
    """sha256 over the files' names, executable bits and contents: what git keeps, so two
    clones of one commit agree whatever their umask or folder."""
    h = hashlib.sha256()
    for rel in sorted(files):
        executable, data = files[rel]
        h.update(rel.encode() + b"\0" + (b"x" if executable else b"-") + b"\0")
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()


def image_name(repo: str, files: Mapping[str, tuple[bool, bytes]]) -> str:
    """``<repo>:<16 hex of the build context's hash>``: a changed context is a new name,
    so the image is rebuilt exactly when ``relay/`` (or ``sink/``) changes."""
    return f"{repo}:{tree_hash(files)[:16]}"


def host_address(subnet: str, number: int) -> str:
    return str(ipaddress.ip_network(subnet)[number])


def gateway(subnet: str) -> str:
    return host_address(subnet, 1)


@dataclass(frozen=True)
class PublishedPort:
    ip: str
    external: int
    internal: int


@dataclass(frozen=True)
class Mount:
    """A bind mount (``volume=False``: ``source`` is a host path) or a named volume."""

    source: str
    target: str
    read_only: bool
    volume: bool = False


@dataclass(frozen=True)
class RelayContainerSpec:
    """Everything the relay container is made of except its image, its config files and
    where the key files and the certificate are on the engine's host."""

    relay_host: str
    container_name: str = DEFAULT_CONTAINER_NAME
    publish_ipv4: str = "0.0.0.0"
    publish_ipv6: str | None = "::"
    submission_host_port: int = DEFAULT_SMTP_PORT
    submissions_465: bool = False
    submissions_host_port: int = 465
    ipv4_subnet: str = DEFAULT_RELAY_IPV4_SUBNET
    ipv6_subnet: str = DEFAULT_RELAY_IPV6_SUBNET
    cert_poll_seconds: int = 300

    @property
    def network(self) -> str:
        return f"{self.container_name}-net"

    @property
    def volume(self) -> str:
        return f"{self.container_name}-queue"

    @property
    def ipv4_address(self) -> str:
        return host_address(self.ipv4_subnet, RELAY_HOST_NUMBER)

    @property
    def ipv6_address(self) -> str:
        return host_address(self.ipv6_subnet, RELAY_HOST_NUMBER)

    def ports(self) -> list[PublishedPort]:
        """The published ports: IPv4 to 587 (465), IPv6 to postfix.IPV6_PORTS, one host
        binding per container port (Docker reports several bindings of one port in an
        order of its own); sorted by container port, as Docker reports them back."""
        pairs = [(self.submission_host_port, 587)]
        if self.submissions_465:
            pairs.append((self.submissions_host_port, 465))
        ports = [PublishedPort(self.publish_ipv4, ext, internal) for ext, internal in pairs]
        if self.publish_ipv6:
            ports += [
                PublishedPort(self.publish_ipv6, ext, postfix.IPV6_PORTS[internal])
                for ext, internal in pairs
            ]
        return sorted(ports, key=lambda p: p.internal)

    def mounts(self, cert_dir: str, secrets_dir: str) -> list[Mount]:
        """The queue volume; the certificate (laid out like /etc/letsencrypt) and the key
        files, read-only, from folders of the engine's host."""
        return [
            Mount(self.volume, QUEUE_MOUNT, read_only=False, volume=True),
            Mount(cert_dir, postfix.CERT_MOUNT, read_only=True),
            Mount(secrets_dir, postfix.SECRETS_DIR, read_only=True),
        ]

    def env(self) -> list[str]:
        return [f"RELAY_CERT_POLL_SECONDS={self.cert_poll_seconds}"]

    def uploads(self, config_files: Mapping[str, str]) -> dict[str, str]:
        """Container path -> content of the rendered, non-secret config files."""
        return {f"{postfix.CONFIG_DIR}/{rel}": text for rel, text in sorted(config_files.items())}


def ssh_opts(host_key: str) -> list[str]:
    """ssh options for the Docker provider's ``ssh://`` connection: the host key pinned by
    value (``KnownHostsCommand`` prints it; no known_hosts file is read or written), strict
    checking, and no prompt. The private key comes from the user's ssh-agent."""
    parts = host_key.split()
    if len(parts) < 2 or parts[0] not in HOSTKEY_ALGORITHMS:
        raise ValueError("sshHostKey must be one OpenSSH public key line ('ssh-ed25519 AAAA...')")
    ktype, blob = parts[0], parts[1]
    return [
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        f"KnownHostsCommand=/bin/echo '* {ktype} {blob}'",
        "-o",
        f"HostKeyAlgorithms={HOSTKEY_ALGORITHMS[ktype]}",
        "-o",
        "ConnectTimeout=15",
        "-o",
        "ServerAliveInterval=15",
    ]
