"""SmtpRelay: the DKIM-signing submission relay, run with the docker CLI through
pulumi-command (``local.Command`` on this machine, ``remote.Command`` over SSH on a VPS;
``components/target.py`` picks).

The scripts come from ``pure/relay_deploy.py``; this module only wires them into
Pulumi. Children (all ``parent=self``, all after ``depends_on``)::

    [secrets]  (only with secret_files) writes the key files 0600 under
               <work_dir>/secrets with ``target.key_files`` (the step RelayHost uses
               on a VPS); stdin = the files as JSON (secret), logging NONE,
               stdin/stdout/stderr secret outputs.
    deploy     create = update = the deploy script, delete = the delete script,
               stdin = base64 tar.gz of relay/ and the rendered config (not secret).

What the container gets (see ``pure/postfix.py`` for the file contract): the
config files read-only at ``postfix.CONFIG_DIR``; the secrets directory read-only at
``postfix.SECRETS_DIR`` (layout ``dkim/<selector>.private``, ``smtp-users``);
``cert_dir`` read-only at ``/etc/letsencrypt`` (Postfix reads
``live/<relay_host>/{privkey,fullchain}.pem``); the queue volume at
``/var/spool/postfix``; ``RELAY_CERT_POLL_SECONDS``.

Re-deploy when key files change: the deploy script fingerprints the secrets directory
itself (on the engine's host), so a run after a key change recreates the container.
To make Pulumi *run* it, the deploy stdin carries a non-secret comment line that
changes with the key files: the random "generation" the secrets writer prints each time
it runs (it runs only when its stdin, the key files, changed); with ``secret_files``
that of the relay's own secrets step, otherwise ``secrets_revision`` if given (RelayHost
passes its step's generation; a secret value there makes the whole stdin secret in the
state, which works but hides the payload diff).

Contract for the host: container name (default ``dkim-relay``); certbot's deploy hook
runs ``docker exec dkim-relay relay-reload``; Gmail's Username is ``<name>@<domain>``.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
from pulumi_command import local, remote

from components.target import Target, key_files
from pure import postfix
from pure import relay_deploy as rd
from pure.config import (
    DEFAULT_CONTAINER_NAME,
    DEFAULT_RELAY_IPV4_SUBNET,
    DEFAULT_RELAY_IPV6_SUBNET,
    DEFAULT_SMTP_PORT,
)
from pure.relay_deploy import RELAY_DIR, read_tree

RELOAD_COMMAND = "relay-reload"


@dataclass
class SmtpUserSpec:
    """An SMTP login ``<name>@<domain>``; ``may_send_as``: addresses or ``@domain``s
    (empty: any address at the relay's domain)."""

    name: str
    may_send_as: Sequence[str] = ()


@dataclass
class LocalEngine:
    """This machine's Docker engine; ``work_dir`` (absolute) holds build/config/secrets."""

    work_dir: str

    @property
    def target(self) -> Target:
        return Target()


@dataclass
class RemoteEngine:
    """A VPS's Docker engine over SSH (scripts run as root, or via ``sudo -n``)."""

    connection: remote.ConnectionArgs
    sudo: bool = False
    work_dir: str = "/var/lib/dkim-relay"

    @property
    def target(self) -> Target:
        return Target(self.connection, self.sudo)


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
    # relative path -> content (postfix.render_secrets); a secret Output. SmtpRelay
    # writes them under <work_dir>/secrets on the engine's host.
    secret_files: pulumi.Input[Mapping[str, str]] | None = None
    # Where the key files already are (the VPS: RelayHost wrote /etc/dkim-relay/secrets).
    secrets_dir: pulumi.Input[str] | None = None
    # Optional, with secrets_dir: a value that changes when the key files change.
    secrets_revision: pulumi.Input[str] | None = None
    cert_dir: pulumi.Input[str] = "/etc/letsencrypt"
    publish_ipv4: str = "0.0.0.0"
    publish_ipv6: str | None = "::"
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
    network_name: str | None = None  # default: "<container_name>-net"
    volume_name: str | None = None  # default: "<container_name>-queue"
    image_repo: str = "dkim-relay"
    cert_poll_seconds: int = 300
    health_timeout: int = rd.DEFAULT_HEALTH_TIMEOUT
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
    )


def relay_image_tag(image_repo: str = "dkim-relay") -> str:
    """The tag the deploy script builds (``<repo>:<16 hex of the relay/ tree hash>``).

    An engine that cannot build (no package mirror) can be given this image in
    advance (``docker save | docker load``); the script then skips ``docker build``.
    """
    return rd.image_tag(image_repo, rd.tree_hash(read_tree(RELAY_DIR)))


class SmtpRelay(pulumi.ComponentResource):
    """The relay container with its image, IPv6 network and queue volume."""

    container_name: pulumi.Output[str]
    network_name: pulumi.Output[str]
    volume_name: pulumi.Output[str]
    image: pulumi.Output[str]
    reload_command: pulumi.Output[str]
    work_dir: pulumi.Output[str]

    def __init__(
        self, name: str, args: SmtpRelayArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("dkimrelay:index:SmtpRelay", name, None, opts)
        if (args.secret_files is None) == (args.secrets_dir is None):
            raise ValueError("give exactly one of secret_files (written here) and secrets_dir")
        settings = settings_from_args(args)
        target = args.engine.target
        work_dir = rd.abs_path(args.engine.work_dir, "engine.work_dir")
        payload = rd.make_payload(read_tree(RELAY_DIR), postfix.render_config(settings))

        def spec(cert_dir: str, secrets_dir: str) -> rd.RelaySpec:
            return rd.RelaySpec(
                work_dir=work_dir,
                relay_host=args.relay_host,
                secrets_dir=secrets_dir,
                cert_dir=cert_dir,
                container_name=args.container_name,
                network_name=args.network_name or "",
                volume_name=args.volume_name or "",
                image_repo=args.image_repo,
                publish_ipv4=args.publish_ipv4,
                publish_ipv6=args.publish_ipv6,
                submission_host_port=args.submission_host_port,
                submissions_465=args.submissions_465,
                submissions_host_port=args.submissions_host_port,
                ipv4_subnet=args.ipv4_subnet,
                ipv6_subnet=args.ipv6_subnet,
                cert_poll_seconds=args.cert_poll_seconds,
                health_timeout=args.health_timeout,
            )

        # Validate everything now (plain values), not only inside an apply.
        static = spec("/etc/letsencrypt", work_dir + "/secrets")
        deps = list(args.depends_on)
        marker: pulumi.Input[str] | None = args.secrets_revision
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

        both = pulumi.Output.all(pulumi.Output.from_input(args.cert_dir), secrets_dir)
        deploy_script = both.apply(lambda v: rd.render_relay_deploy(spec(v[0], v[1]), payload))
        stdin: pulumi.Input[str] = payload.stdin
        if marker is not None:
            stdin = pulumi.Output.from_input(marker).apply(
                lambda m: rd.with_marker(payload.stdin, "secrets generation " + m)
            )
        self.deploy_step = target.step(
            f"{name}-deploy",
            deploy_script,
            pulumi.ResourceOptions(
                parent=self,
                depends_on=deps,
                # New names or another work dir: remove the old ones first (ports!).
                delete_before_replace=True,
            ),
            update=deploy_script,
            delete=rd.render_relay_delete(static),
            stdin=stdin,
            # Only a change of these names replaces (delete old, then create).
            triggers=[static.container_name, static.network, static.volume, work_dir],
        )

        def after(value: str) -> pulumi.Output[str]:
            # Known only once the deploy ran, so users of it wait for the container.
            return self.deploy_step.stdout.apply(lambda _: value)

        self.container_name = after(static.container_name)
        self.network_name = after(static.network)
        self.volume_name = after(static.volume)
        self.image = after(rd.image_tag(static.image_repo, payload.build_hash))
        self.work_dir = pulumi.Output.from_input(work_dir)
        self.reload_command = self.container_name.apply(
            lambda c: shlex.join(["docker", "exec", c, RELOAD_COMMAND])
        )
        self.register_outputs(
            {
                "containerName": self.container_name,
                "networkName": self.network_name,
                "volumeName": self.volume_name,
                "image": self.image,
                "workDir": self.work_dir,
                "reloadCommand": self.reload_command,
            }
        )
