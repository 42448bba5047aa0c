"""SmtpRelay: the DKIM-signing submission relay as Docker resources on one engine.

Children (all ``parent=self``): a ``docker.Provider`` for the engine (``ssh://user@host:port``
for a VPS, ``unix:///var/run/docker.sock`` for a local stack), the image built on that
engine from ``relay/`` (no registry, ``skip_push``), a user network with IPv6 on and
explicit v4/v6 subnets, a named volume for the queue, and the container.

What the container gets (see ``components/postfix.py`` for the file contract):

* config files as ``uploads`` under ``/etc/relay/config`` (not secret);
* secrets under ``/run/relay-secrets``: either ``uploads`` with secret content (0600), or,
  when ``secrets_host_dir`` is set (a VPS, where the host component writes the files
  0600/0400), that directory bind-mounted read-only. Layout::

      dkim/<selector>.private   PEM private key per selector
      smtp-users                "login:password" lines, login = <name>@<domain>

* ``<cert_host_dir>`` (default ``/etc/letsencrypt``) read-only at ``/etc/letsencrypt``;
  Postfix reads ``live/<relay_host>/{privkey,fullchain}.pem``;
* a label ``dkim-relay.secrets-sha256`` (a secret Output) over all secret material, so a
  new key or password replaces the container.

Contract for the host: container name (default ``dkim-relay``); certbot's deploy hook runs
``docker exec dkim-relay relay-reload``; Gmail's Username is ``<name>@<domain>``.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
import pulumi_docker as docker

from components import postfix

RELAY_DIR = Path(__file__).resolve().parent.parent / "relay"
DEFAULT_CONTAINER_NAME = "dkim-relay"
RELOAD_COMMAND = "relay-reload"
SECRETS_LABEL = "dkim-relay.secrets-sha256"


@dataclass
class SmtpUserSpec:
    """An SMTP login ``<name>@<domain>``; ``may_send_as``: addresses or ``@domain``s
    (empty: any address at the relay's domain)."""

    name: str
    may_send_as: Sequence[str] = ()


@dataclass
class SmtpRelayArgs:
    domain: str
    relay_host: str
    docker_host: str
    dkim_selector: str
    # selector -> PEM private key (secret Outputs); must contain dkim_selector.
    dkim_private_keys: Mapping[str, pulumi.Input[str]]
    smtp_users: Sequence[SmtpUserSpec]
    # user name -> password (secret Outputs).
    smtp_passwords: Mapping[str, pulumi.Input[str]]
    publish_ipv4: str = "0.0.0.0"
    publish_ipv6: str | None = "::"
    submission_host_port: int = 587
    submissions_465: bool = False
    submissions_host_port: int = 465
    ipv4_subnet: str = "172.30.87.0/24"
    ipv6_subnet: str = "fd00:d6b1:587::/64"
    nexthop: str | None = None
    cert_host_dir: str = "/etc/letsencrypt"
    secrets_host_dir: str | None = None
    container_name: str = DEFAULT_CONTAINER_NAME
    network_name: str | None = None  # default: "<container_name>-net"
    volume_name: str | None = None  # default: "<container_name>-queue"
    image_name: str = "dkim-relay"
    ssh_opts: Sequence[str] = ()
    cert_poll_seconds: int = 300
    builder_version: docker.BuilderVersion | None = None
    rate_limits: postfix.RateLimits = field(default_factory=postfix.RateLimits)


def context_digest(directory: Path) -> str:
    """sha256 over relative paths, modes and contents of the build context."""
    h = hashlib.sha256()
    for p in sorted(directory.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(directory)).encode() + b"\0")
            h.update(oct(p.stat().st_mode & 0o777).encode() + b"\0")
            h.update(p.read_bytes() + b"\0")
    return h.hexdigest()


def secrets_digest(files: Mapping[str, str]) -> str:
    h = hashlib.sha256()
    for k in sorted(files):
        h.update(k.encode() + b"\0" + files[k].encode() + b"\0")
    return h.hexdigest()


def _pick(rel: str) -> Callable[[Mapping[str, str]], str]:
    def pick(files: Mapping[str, str]) -> str:
        return files[rel]

    return pick


def _gateway(subnet: str) -> str:
    return str(next(ipaddress.ip_network(subnet, strict=True).hosts()))


def settings_from_args(args: SmtpRelayArgs) -> postfix.PostfixSettings:
    return postfix.PostfixSettings(
        domain=args.domain,
        relay_host=args.relay_host,
        dkim_selector=args.dkim_selector,
        dkim_selectors=tuple(args.dkim_private_keys),
        users=tuple(postfix.SmtpUser(u.name, tuple(u.may_send_as)) for u in args.smtp_users),
        submissions_465=args.submissions_465,
        nexthop=args.nexthop,
        rate_limits=args.rate_limits,
    )


class SmtpRelay(pulumi.ComponentResource):
    """The relay container with its image, IPv6 network and queue volume."""

    container_name: pulumi.Output[str]
    container_id: pulumi.Output[str]
    image_id: pulumi.Output[str]
    image_name: pulumi.Output[str]
    network_name: pulumi.Output[str]
    volume_name: pulumi.Output[str]
    reload_command: pulumi.Output[str]

    def __init__(
        self, name: str, args: SmtpRelayArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("dkimrelay:index:SmtpRelay", name, None, opts)
        if args.dkim_selector not in args.dkim_private_keys:
            raise ValueError(f"no private key for the active selector {args.dkim_selector!r}")
        missing = {u.name for u in args.smtp_users} - set(args.smtp_passwords)
        if missing:
            raise ValueError(f"no password for SMTP user(s) {sorted(missing)}")
        settings = settings_from_args(args)
        config_files = postfix.render_config(settings)
        child = pulumi.ResourceOptions(parent=self)

        provider = docker.Provider(
            f"{name}-docker",
            host=args.docker_host,
            ssh_opts=list(args.ssh_opts) or None,
            opts=child,
        )
        on_engine = pulumi.ResourceOptions(parent=self, provider=provider)

        # Tag by content: a changed relay/ gives a new tag, so the container is replaced.
        tag = f"{args.image_name}:{context_digest(RELAY_DIR)[:16]}"
        image = docker.Image(
            f"{name}-image",
            image_name=tag,
            build=docker.DockerBuildArgs(
                context=str(RELAY_DIR),
                dockerfile=str(RELAY_DIR / "Dockerfile"),
                platform="linux/amd64",
                builder_version=args.builder_version,
            ),
            skip_push=True,
            opts=on_engine,
        )

        network = docker.Network(
            f"{name}-net",
            name=args.network_name or f"{args.container_name}-net",
            driver="bridge",
            ipv6=True,
            ipam_configs=[
                docker.NetworkIpamConfigArgs(
                    subnet=args.ipv4_subnet, gateway=_gateway(args.ipv4_subnet)
                ),
                docker.NetworkIpamConfigArgs(
                    subnet=args.ipv6_subnet, gateway=_gateway(args.ipv6_subnet)
                ),
            ],
            opts=on_engine,
        )

        volume = docker.Volume(
            f"{name}-queue",
            name=args.volume_name or f"{args.container_name}-queue",
            opts=pulumi.ResourceOptions(parent=self, provider=provider, protect=False),
        )

        # Secret material: one Output (secret) for uploads and for the replacement label.
        def _render(kv: list[dict[str, str]]) -> dict[str, str]:
            return postfix.render_secrets(args.domain, kv[0], kv[1])

        both: pulumi.Output[list[dict[str, str]]] = pulumi.Output.all(
            pulumi.Output.from_input(dict(args.dkim_private_keys)),
            pulumi.Output.from_input(dict(args.smtp_passwords)),
        )
        secret_files: pulumi.Output[dict[str, str]] = pulumi.Output.secret(both.apply(_render))
        digest: pulumi.Output[str] = pulumi.Output.secret(secret_files.apply(secrets_digest))

        uploads: list[docker.ContainerUploadArgs] = [
            docker.ContainerUploadArgs(
                file=f"{postfix.CONFIG_DIR}/{rel}", content=content, permissions="0644"
            )
            for rel, content in sorted(config_files.items())
        ]
        volumes = [
            docker.ContainerVolumeArgs(
                volume_name=volume.name, container_path="/var/spool/postfix"
            ),
            docker.ContainerVolumeArgs(
                host_path=args.cert_host_dir, container_path=postfix.CERT_MOUNT, read_only=True
            ),
        ]
        if args.secrets_host_dir is None:
            secret_paths = [f"dkim/{sel}.private" for sel in args.dkim_private_keys]
            secret_paths.append("smtp-users")
            uploads += [
                docker.ContainerUploadArgs(
                    file=f"{postfix.SECRETS_DIR}/{rel}",
                    content=pulumi.Output.secret(secret_files.apply(_pick(rel))),
                    permissions="0600",
                )
                for rel in secret_paths
            ]
        else:
            volumes.append(
                docker.ContainerVolumeArgs(
                    host_path=args.secrets_host_dir,
                    container_path=postfix.SECRETS_DIR,
                    read_only=True,
                )
            )

        ports = [
            docker.ContainerPortArgs(
                internal=587, external=args.submission_host_port, ip=args.publish_ipv4
            )
        ]
        if args.publish_ipv6:
            ports.append(
                docker.ContainerPortArgs(
                    internal=587, external=args.submission_host_port, ip=args.publish_ipv6
                )
            )
        if args.submissions_465:
            ports.append(
                docker.ContainerPortArgs(
                    internal=465, external=args.submissions_host_port, ip=args.publish_ipv4
                )
            )
            if args.publish_ipv6:
                ports.append(
                    docker.ContainerPortArgs(
                        internal=465, external=args.submissions_host_port, ip=args.publish_ipv6
                    )
                )

        container = docker.Container(
            f"{name}-container",
            name=args.container_name,
            image=image.image_name,
            hostname=args.relay_host,
            restart="always",
            log_driver="json-file",
            log_opts={"max-size": "10m", "max-file": "3"},
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=network.name)],
            ports=ports,
            volumes=volumes,
            uploads=uploads,
            # Not secret: how often the entrypoint looks at the cert files' mtime.
            envs=[f"RELAY_CERT_POLL_SECONDS={args.cert_poll_seconds}"],
            labels=[
                docker.ContainerLabelArgs(label=SECRETS_LABEL, value=digest),
                docker.ContainerLabelArgs(label="dkim-relay.relay-host", value=args.relay_host),
            ],
            # OpenDKIM takes ~4 s to exit on SIGTERM; let Postfix finish its queue writes.
            destroy_grace_seconds=30,
            stop_timeout=30,
            wait=True,
            wait_timeout=120,
            opts=pulumi.ResourceOptions(
                parent=self,
                provider=provider,
                # A fixed container name cannot exist twice: delete, then create.
                delete_before_replace=True,
                additional_secret_outputs=["uploads", "labels"],
            ),
        )

        self.container_name = container.name
        self.container_id = container.id
        self.image_id = container.image
        self.image_name = image.image_name
        self.network_name = network.name
        self.volume_name = volume.name
        self.reload_command = pulumi.Output.concat(
            "docker exec ", container.name, " ", RELOAD_COMMAND
        )
        self.register_outputs(
            {
                "containerName": self.container_name,
                "containerId": self.container_id,
                "imageId": self.image_id,
                "imageName": self.image_name,
                "networkName": self.network_name,
                "volumeName": self.volume_name,
                "reloadCommand": self.reload_command,
            }
        )
