"""SmtpRelay: the DKIM-signing submission relay, run with the docker CLI through
pulumi-command (``local.Command`` on this machine, ``remote.Command`` over SSH on a VPS).

The scripts come from ``components/relay_deploy.py`` (pure renderers); this module only
wires them into Pulumi. Children (all ``parent=self``, all after ``depends_on``)::

    [secrets]  (only with secret_files) writes the key files 0600 under
               <work_dir>/secrets with host_scripts.render_secrets; stdin = the files
               as JSON (secret), logging NONE, stdin/stdout/stderr secret outputs.
    deploy     create = update = the deploy script, delete = the delete script,
               stdin = base64 tar.gz of relay/ and the rendered config (not secret).

What the container gets (see ``components/postfix.py`` for the file contract): the
config files read-only at ``postfix.CONFIG_DIR``; the secrets directory read-only at
``postfix.SECRETS_DIR`` (layout ``dkim/<selector>.private``, ``smtp-users``);
``cert_dir`` read-only at ``/etc/letsencrypt`` (Postfix reads
``live/<relay_host>/{privkey,fullchain}.pem``); the queue volume at
``/var/spool/postfix``; ``RELAY_CERT_POLL_SECONDS``.

Re-deploy when key files change: the deploy script fingerprints the secrets directory
itself (on the engine's host), so a run after a key change recreates the container.
To make Pulumi *run* it, the deploy stdin carries a non-secret comment line that
changes with the key files: with ``secret_files``, a random "generation" the secrets
writer prints each time it runs (it runs only when its stdin, the key files, changed);
otherwise ``secrets_revision`` if given (a secret value there makes the whole stdin
secret in the state, which works but hides the payload diff).

Contract for the host: container name (default ``dkim-relay``); certbot's deploy hook
runs ``docker exec dkim-relay relay-reload``; Gmail's Username is ``<name>@<domain>``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi_command import local, remote

from components import host_scripts as hs
from components import postfix
from components import relay_deploy as rd

RELAY_DIR = Path(__file__).resolve().parent.parent / "relay"
DEFAULT_CONTAINER_NAME = "dkim-relay"
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


@dataclass
class RemoteEngine:
    """A VPS's Docker engine over SSH (scripts run as root, or via ``sudo -n``)."""

    connection: remote.ConnectionArgs
    sudo: bool = False
    work_dir: str = "/var/lib/dkim-relay"


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
    submission_host_port: int = 587
    submissions_465: bool = False
    submissions_host_port: int = 465
    ipv4_subnet: str = "172.30.87.0/24"
    ipv6_subnet: str = "fd00:d6b1:587::/64"
    nexthop: str | None = None
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
        rate_limits=args.rate_limits,
    )


def read_tree(directory: Path) -> dict[str, tuple[int, bytes]]:
    """relative path -> (mode, content) of every file under ``directory``."""
    return {
        str(p.relative_to(directory)): (p.stat().st_mode & 0o777, p.read_bytes())
        for p in sorted(directory.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def relay_image_tag(image_repo: str = "dkim-relay") -> str:
    """The tag the deploy script builds (``<repo>:<16 hex of the relay/ tree hash>``).

    An engine that cannot build (no package mirror) can be given this image in
    advance (``docker save | docker load``); the script then skips ``docker build``.
    """
    return rd.image_tag(image_repo, rd.tree_hash(read_tree(RELAY_DIR)))


def engine_command(engine: Engine, script: str) -> str:
    """The command line that runs ``script`` on the engine's host (stdin stays free)."""
    sudo = isinstance(engine, RemoteEngine) and engine.sudo
    return hs.remote_command(script, sudo)


def engine_work_dir(engine: Engine) -> str:
    return rd._abs_path(engine.work_dir, "engine.work_dir")


# Printed after the secrets writer: a random value per run, so the deploy re-runs.
GENERATION_PREFIX = "dkim-relay[secrets]: generation "
_GENERATION_CMD = (
    f"od -An -N16 -tx1 /dev/urandom | tr -d ' \\n' | sed 's/^/{GENERATION_PREFIX}/'; echo"
)


def parse_generation(stdout: str | None) -> str:
    for line in reversed((stdout or "").splitlines()):
        if line.startswith(GENERATION_PREFIX):
            return line[len(GENERATION_PREFIX) :].strip()
    return "unknown"


def make_command(
    engine: Engine, name: str, opts: pulumi.ResourceOptions, **kw: Any
) -> local.Command | remote.Command:
    if isinstance(engine, RemoteEngine):
        return remote.Command(name, connection=engine.connection, opts=opts, **kw)
    return local.Command(name, opts=opts, **kw)


def _logging(engine: Engine, quiet: bool) -> Any:
    mod: Any = remote if isinstance(engine, RemoteEngine) else local
    return mod.Logging.NONE if quiet else mod.Logging.STDOUT_AND_STDERR


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
        work_dir = engine_work_dir(args.engine)
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
        static = spec("/etc/letsencrypt", f"{work_dir}/secrets")
        deps = list(args.depends_on)
        marker: pulumi.Input[str] | None = args.secrets_revision
        self.secrets_step: local.Command | remote.Command | None = None
        secrets_dir: pulumi.Input[str]
        if args.secret_files is not None:
            secrets_dir = f"{work_dir}/secrets"
            files = pulumi.Output.from_input(args.secret_files)
            writer = hs.render_secrets(secrets_dir)
            self.secrets_step = make_command(
                args.engine,
                f"{name}-secrets",
                pulumi.ResourceOptions(
                    parent=self,
                    depends_on=list(deps),
                    delete_before_replace=True,
                    additional_secret_outputs=["stdin", "stdout", "stderr"],
                ),
                create=engine_command(args.engine, writer) + " && " + _GENERATION_CMD,
                delete=engine_command(args.engine, hs.render_secrets_delete(secrets_dir)),
                stdin=pulumi.Output.secret(files.apply(hs.secrets_stdin)),
                logging=_logging(args.engine, quiet=True),
                add_previous_output_in_env=False,
            )
            # A random value, not derived from the secrets: safe to keep plain.
            marker = pulumi.Output.unsecret(self.secrets_step.stdout.apply(parse_generation))
            deps.append(self.secrets_step)
        else:
            assert args.secrets_dir is not None
            secrets_dir = args.secrets_dir

        both = pulumi.Output.all(pulumi.Output.from_input(args.cert_dir), secrets_dir)
        deploy_script = both.apply(
            lambda v: engine_command(args.engine, rd.render_relay_deploy(spec(v[0], v[1]), payload))
        )
        delete_script = engine_command(args.engine, rd.render_relay_delete(static))
        stdin: pulumi.Input[str] = payload.stdin
        if marker is not None:
            stdin = pulumi.Output.from_input(marker).apply(
                lambda m: rd.with_marker(payload.stdin, f"secrets generation {m}")
            )
        self.deploy_step = make_command(
            args.engine,
            f"{name}-deploy",
            pulumi.ResourceOptions(
                parent=self,
                depends_on=deps,
                # New names or another work dir: remove the old ones first (ports!).
                delete_before_replace=True,
            ),
            create=deploy_script,
            update=deploy_script,
            delete=delete_script,
            stdin=stdin,
            # Only a change of these names replaces (delete old, then create).
            triggers=[static.container_name, static.network, static.volume, work_dir],
            logging=_logging(args.engine, quiet=False),
            add_previous_output_in_env=False,
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
            lambda c: f"docker exec {c} {RELOAD_COMMAND}"
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
