"""SmtpRelay: the DKIM-signing submission relay as pulumi-docker resources on the target's
engine (this machine's, or the VPS's over ``ssh://`` with the host key pinned), so that
``refresh`` sees a removed or changed container, network or image and ``up`` repairs it.

Children (all ``parent=self``)::

    engine      docker.Provider: the unix socket, or ssh://user@host:port (host key pinned)
    [secrets]   (only with secret_files) the key files, 0600, written by ``target.key_files``
                (RelayHost writes them on a VPS and passes secrets_dir instead)
    image       docker.RemoteImage built on the engine from ``relay/``; its name carries the
                hash of the build context, so an unchanged ``relay/`` never rebuilds
    deploy      a command that retires what the earlier docker-CLI deploy of this relay made
                (same name and type as that deploy, so its stored delete, which removed the
                container by name, is replaced by a no-op instead of running after the new
                container exists); a no-op on a stack that never had it
    network     docker.Network, IPv6 on, fixed IPv4 and IPv6 subnets
    queue       docker.Volume for /var/spool/postfix, kept by ``pulumi destroy`` (retain_on_delete)
    container   docker.Container: fixed addresses, published ports, the config files uploaded
                at creation, the key files and certificate mounted read-only, health checked
                (``wait``), restart unless-stopped

Secrets never reach the container's env, labels or command: the key files are mounted, and
the only label is the random generation of the secrets step (it changes when the key files
were written again, which recreates the container so that it reads them).

Contract for the host: container name (default ``dkim-relay``); certbot's deploy hook
runs ``docker exec dkim-relay relay-reload``; Gmail's Username is ``<name>@<domain>``.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pulumi
import pulumi_docker as docker
from pulumi_command import local, remote

from components.target import Target, key_files
from pure import postfix
from pure import relay_container as rc
from pure.config import (
    DEFAULT_CONTAINER_NAME,
    DEFAULT_RELAY_IPV4_SUBNET,
    DEFAULT_RELAY_IPV6_SUBNET,
    DEFAULT_SMTP_PORT,
)
from pure.shell import script

RELOAD_COMMAND = "relay-reload"
DEFAULT_HEALTH_TIMEOUT = 90
SECRETS_GENERATION_LABEL = "dkim-relay.secrets-generation"


def read_tree(directory: Path) -> dict[str, tuple[bool, bytes]]:
    """relative path -> (executable, content) of every file under ``directory``."""
    return {
        str(p.relative_to(directory)): (bool(p.stat().st_mode & 0o111), p.read_bytes())
        for p in sorted(directory.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


@dataclass
class SmtpUserSpec:
    """An SMTP login ``<name>@<domain>``; ``may_send_as``: addresses or ``@domain``s
    (empty: any address at any of the relay's domains)."""

    name: str
    may_send_as: Sequence[str] = ()


@dataclass
class LocalEngine:
    """This machine's Docker engine; ``work_dir`` (absolute) holds the key files."""

    work_dir: str
    docker_host: str = rc.LOCAL_DOCKER_HOST

    @property
    def target(self) -> Target:
        return Target()

    @property
    def ssh_opts(self) -> pulumi.Output[list[str]]:
        return pulumi.Output.from_input([])


@dataclass
class RemoteEngine:
    """A VPS's Docker engine over ``ssh://`` (``docker_host``), its host key pinned by
    ``host_key``; the few host steps run over ``connection`` (as root, or via ``sudo -n``)."""

    connection: remote.ConnectionArgs
    docker_host: pulumi.Input[str]
    # One OpenSSH public key line; may be another resource's output.
    host_key: pulumi.Input[str]
    sudo: bool = False
    work_dir: str = "/var/lib/dkim-relay"

    @property
    def target(self) -> Target:
        return Target(self.connection, self.sudo)

    @property
    def ssh_opts(self) -> pulumi.Output[list[str]]:
        return pulumi.Output.from_input(self.host_key).apply(rc.ssh_opts)


Engine = LocalEngine | RemoteEngine


@dataclass
class SmtpRelayArgs:
    domain: str
    relay_host: str
    dkim_selector: str
    smtp_users: Sequence[SmtpUserSpec]
    engine: Engine
    # Selectors whose keys are in the secrets dir (the active one is added if missing).
    dkim_selectors: Sequence[str] = ()
    # More domains signed for, their keys in the secrets dir too (postfix.key_file).
    extra_domains: Sequence[postfix.SigningDomain] = ()
    # relative path -> content (postfix.render_secrets); a secret Output. SmtpRelay
    # writes them under <work_dir>/secrets on the engine's host.
    secret_files: pulumi.Input[Mapping[str, str]] | None = None
    # Where the key files already are (the VPS: RelayHost wrote /etc/dkim-relay/secrets).
    secrets_dir: pulumi.Input[str] | None = None
    # Optional, with secrets_dir: a value that changes when the key files change.
    secrets_revision: pulumi.Input[str] | None = None
    cert_dir: pulumi.Input[str] = "/etc/letsencrypt"
    # Outputs when the stack creates the VPS; None: no IPv6 listeners.
    publish_ipv4: pulumi.Input[str] = "0.0.0.0"
    publish_ipv6: pulumi.Input[str] | None = "::"
    submission_host_port: int = DEFAULT_SMTP_PORT
    submissions_465: bool = False
    submissions_host_port: int = 465
    ipv4_subnet: str = DEFAULT_RELAY_IPV4_SUBNET
    ipv6_subnet: str = DEFAULT_RELAY_IPV6_SUBNET
    nexthop: str | None = None
    # A smarthost login (its password is in the key files: postfix.render_secrets).
    nexthop_user: str | None = None
    outbound_ipv6: str = "prefer-ipv4"
    delay_warning_time: str = "4h"
    container_name: str = DEFAULT_CONTAINER_NAME
    # Default: the container's name, so that two stacks on one engine never share an
    # image (a destroy removes its own image only).
    image_repo: str | None = None
    # The image's build context, as the Docker provider reads it (relative: to the
    # project folder, so that the state is the same from any clone).
    build_context: str = "relay"
    cert_poll_seconds: int = 300
    health_timeout: int = DEFAULT_HEALTH_TIMEOUT
    rate_limits: postfix.RateLimits = field(default_factory=postfix.RateLimits)
    depends_on: Sequence[pulumi.Resource] = ()


def settings_from_args(args: SmtpRelayArgs) -> postfix.PostfixSettings:
    return postfix.PostfixSettings(
        domain=args.domain,
        relay_host=args.relay_host,
        dkim_selector=args.dkim_selector,
        dkim_selectors=tuple(dict.fromkeys((args.dkim_selector, *args.dkim_selectors))),
        users=tuple(postfix.SmtpUser(u.name, tuple(u.may_send_as)) for u in args.smtp_users),
        submissions_465=args.submissions_465,
        nexthop=args.nexthop,
        nexthop_user=args.nexthop_user,
        outbound_ipv6=args.outbound_ipv6,
        delay_warning_time=args.delay_warning_time,
        rate_limits=args.rate_limits,
        ipv6_listeners=args.publish_ipv6 is not None,
        extra_domains=tuple(args.extra_domains),
    )


def docker_provider(name: str, engine: Engine, parent: pulumi.Resource) -> docker.Provider:
    """The Docker provider for ``engine``. Its settings are fixed values (no file paths), so
    a refresh that runs before the program, from the state alone, reaches the same engine.
    The daemon is not pinged when the provider starts: on a new VPS it is installed by an
    earlier step of the same ``up``."""
    return docker.Provider(
        name,
        host=engine.docker_host,
        ssh_opts=engine.ssh_opts,
        disable_docker_daemon_check=True,
        opts=pulumi.ResourceOptions(parent=parent),
    )


def retire_step(
    target: Target,
    name: str,
    opts: pulumi.ResourceOptions,
    *,
    container: str,
    network: str,
    work_dir: str,
    dir_pattern: str,
    triggers: Sequence[str],
) -> local.Command | remote.Command:
    """The command that takes the place of the earlier docker-CLI deploy step ``name`` (same
    name, type and triggers: an update, not a replacement); its delete does nothing."""
    values = {
        "STEP": name,
        "CONTAINER": container,
        "NETWORK": network,
        "WORK_DIR": work_dir,
        "DIR_PATTERN": dir_pattern,
    }
    retire = script(values, "docker/retire.sh")
    return target.step(name, retire, opts, update=retire, delete="true", triggers=list(triggers))


def image_build(
    name: str,
    repo: str,
    context: str,
    files: Mapping[str, tuple[bool, bytes]],
    opts: pulumi.ResourceOptions,
) -> docker.RemoteImage:
    """The image built on the engine from ``context``, named by the hash of ``files``. An
    image of that name already on the engine is used as the build cache."""
    image = rc.image_name(repo, files)
    return docker.RemoteImage(
        name,
        name=image,
        build=docker.RemoteImageBuildArgs(context=context, cache_froms=[image], remove=True),
        keep_locally=False,
        opts=opts,
    )


def volume_args(mounts: Sequence[rc.Mount]) -> list[docker.ContainerVolumeArgs]:
    return [
        docker.ContainerVolumeArgs(
            container_path=m.target,
            read_only=m.read_only or None,
            **({"volume_name": m.source} if m.volume else {"host_path": m.source}),
        )
        for m in mounts
    ]


class SmtpRelay(pulumi.ComponentResource):
    """The relay container with its image, IPv6 network and queue volume."""

    container_name: pulumi.Output[str]
    network_name: pulumi.Output[str]
    volume_name: pulumi.Output[str]
    image: pulumi.Output[str]
    reload_command: pulumi.Output[str]
    provider: docker.Provider

    def __init__(
        self, name: str, args: SmtpRelayArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("dkimrelay:index:SmtpRelay", name, None, opts)
        if (args.secret_files is None) == (args.secrets_dir is None):
            raise ValueError("give exactly one of secret_files (written here) and secrets_dir")
        settings = settings_from_args(args)
        target = args.engine.target
        work_dir = args.engine.work_dir.rstrip("/")
        self.provider = provider = docker_provider(f"{name}-engine", args.engine, self)

        def child(*deps: pulumi.Resource, **kw: object) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(
                parent=self,
                provider=provider,
                depends_on=list(deps),
                **kw,  # type: ignore[arg-type]
            )

        deps = list(args.depends_on)
        marker: pulumi.Input[str] = args.secrets_revision or "none"
        self.secrets_step: local.Command | remote.Command | None = None
        secrets_dir: pulumi.Input[str]
        if args.secret_files is not None:
            secrets_dir = work_dir + "/secrets"
            self.secrets_step, marker = key_files(
                target,
                f"{name}-secrets",
                args.secret_files,
                pulumi.ResourceOptions(parent=self, depends_on=list(deps)),
                secrets_dir,
            )
            deps.append(self.secrets_step)
        else:
            assert args.secrets_dir is not None
            secrets_dir = args.secrets_dir

        spec = rc.RelayContainerSpec(
            relay_host=args.relay_host,
            container_name=args.container_name,
            submission_host_port=args.submission_host_port,
            submissions_465=args.submissions_465,
            submissions_host_port=args.submissions_host_port,
            ipv4_subnet=args.ipv4_subnet,
            ipv6_subnet=args.ipv6_subnet,
            cert_poll_seconds=args.cert_poll_seconds,
        )
        self.image_step = image_build(
            f"{name}-image",
            args.image_repo or args.container_name.lower(),
            args.build_context,
            read_tree(rc.RELAY_DIR),
            child(*deps),
        )
        # Runs after the new image exists, so the old relay serves until the last moment.
        self.retire_step = retire_step(
            target,
            f"{name}-deploy",
            pulumi.ResourceOptions(parent=self, depends_on=[self.image_step, *deps]),
            container=spec.container_name,
            network=spec.network,
            work_dir=work_dir,
            dir_pattern="^(build|config)-[0-9a-f]{16}$",
            triggers=[spec.container_name, spec.network, spec.volume, work_dir],
        )
        self.network = docker.Network(
            f"{name}-network",
            name=spec.network,
            driver="bridge",
            ipv6=True,
            ipam_configs=[
                docker.NetworkIpamConfigArgs(subnet=s, gateway=rc.gateway(s))
                for s in (args.ipv4_subnet, args.ipv6_subnet)
            ],
            opts=child(self.retire_step),
        )
        # Kept by `pulumi destroy`: it may hold mail not yet delivered. A later `up` adopts it.
        self.volume = docker.Volume(
            f"{name}-queue",
            name=spec.volume,
            # The label the earlier deploy gave it: a volume it made is adopted unchanged.
            labels=[docker.VolumeLabelArgs(label="dkim-relay.queue", value="1")],
            opts=child(self.retire_step, retain_on_delete=True),
        )
        mounts = pulumi.Output.all(
            pulumi.Output.from_input(args.cert_dir), pulumi.Output.from_input(secrets_dir)
        ).apply(lambda cs: volume_args(spec.mounts(cs[0], cs[1])))
        uploads = spec.uploads(postfix.render_config(settings))
        ports = pulumi.Output.all(args.publish_ipv4, args.publish_ipv6).apply(
            lambda ips: [
                docker.ContainerPortArgs(internal=p.internal, external=p.external, ip=p.ip)
                for p in replace(spec, publish_ipv4=ips[0], publish_ipv6=ips[1]).ports()
            ]
        )
        self.container = docker.Container(
            f"{name}-container",
            name=spec.container_name,
            image=self.image_step.image_id,
            hostname=args.relay_host,
            restart="unless-stopped",
            must_run=True,
            wait=True,
            wait_timeout=args.health_timeout,
            destroy_grace_seconds=30,
            log_driver=rc.LOG_DRIVER,
            log_opts=rc.LOG_OPTS,
            envs=spec.env(),
            labels=[docker.ContainerLabelArgs(label=SECRETS_GENERATION_LABEL, value=marker)],
            networks_advanced=[
                docker.ContainerNetworksAdvancedArgs(
                    # The id: a network made anew replaces the container that used the old one.
                    name=self.network.id,
                    ipv4_address=spec.ipv4_address,
                    ipv6_address=spec.ipv6_address,
                )
            ],
            ports=ports,
            volumes=mounts,
            uploads=[docker.ContainerUploadArgs(file=f, content=c) for f, c in uploads.items()],
            opts=child(
                self.network,
                self.volume,
                self.retire_step,
                *deps,
                # One name, one set of ports: the old container goes first.
                delete_before_replace=True,
            ),
        )
        self.container_name = self.container.name
        self.network_name = self.network.name
        self.volume_name = self.volume.name
        self.image = self.image_step.name
        self.reload_command = self.container_name.apply(
            lambda c: shlex.join(["docker", "exec", c, RELOAD_COMMAND])
        )
        self.register_outputs(
            {
                "containerName": self.container_name,
                "networkName": self.network_name,
                "volumeName": self.volume_name,
                "image": self.image,
                "reloadCommand": self.reload_command,
            }
        )
