"""HetznerServer: the VPS itself, created by the stack on Hetzner Cloud, with its SSH host
key (generated here and handed over at creation), the SSH key it lets in, its cloud
firewall and the reverse DNS (PTR) of both its addresses.

    host key ──> server (user data) ──> rdns-ipv4, rdns-ipv6
    ssh key  ──┘       ^
    firewall ──────────┘

The host key is made before the server exists, so SSH is pinned to it from the first
connection: nothing is trusted on first use. Its private half reaches the server only in
the cloud-init user data (a Pulumi secret); RelayHost's metadata step keeps the relay's
containers from the metadata service that serves it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi.dynamic
import pulumi_hcloud as hcloud
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from components.host import public_key_line
from pure import cloud_server as cs


def generate_host_key() -> tuple[str, str]:
    """A new ed25519 host key: (OpenSSH private key, "ssh-ed25519 AAAA..." line)."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return private, public


class _HostKeyProvider(pulumi.dynamic.ResourceProvider):
    """Generates the key on create only, and keeps it: a server keeps its host key."""

    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        private, public = generate_host_key()
        return pulumi.dynamic.CreateResult(
            id_=f"ssh-host-key-{props['server']}",
            outs={"server": props["server"], "private_key": private, "public_key": public},
        )

    def diff(
        self, _id: str, olds: dict[str, Any], news: dict[str, Any]
    ) -> pulumi.dynamic.DiffResult:
        changed = olds.get("server") != news.get("server")
        return pulumi.dynamic.DiffResult(changes=changed, replaces=["server"] if changed else [])

    def read(self, id_: str, props: dict[str, Any]) -> pulumi.dynamic.ReadResult:
        return pulumi.dynamic.ReadResult(id_=id_, outs=props)


class SshHostKey(pulumi.dynamic.Resource):
    """The server's SSH host key, kept in state (private half a secret)."""

    private_key: pulumi.Output[str]
    public_key: pulumi.Output[str]

    def __init__(self, name: str, server: str, opts: pulumi.ResourceOptions) -> None:
        super().__init__(
            _HostKeyProvider(),
            name,
            {"server": server, "private_key": None, "public_key": None},
            pulumi.ResourceOptions.merge(
                opts, pulumi.ResourceOptions(additional_secret_outputs=["private_key"])
            ),
        )


@dataclass
class HetznerServerArgs:
    """Config keys: name=relayHost, location=hetznerLocation, server_type=
    hetznerServerType, image=hetznerImage, ssh_allow_from=sshAllowFrom; ssh_private_key=
    sshPrivateKey (secret; only its public half is used here)."""

    name: str
    location: str
    server_type: str
    image: str
    ssh_private_key: pulumi.Input[str]
    ssh_allow_from: Sequence[str]
    submission_ports: Sequence[int]
    labels: dict[str, str]
    ssh_port: int = 22
    create_timeout: str = "15m"


class HetznerServer(pulumi.ComponentResource):
    """A Hetzner Cloud server reachable over SSH with the stack's key and pinned host key."""

    ipv4: pulumi.Output[str]
    ipv6: pulumi.Output[str]
    host_key: pulumi.Output[str]  # "ssh-ed25519 AAAA...", pinned by every SSH connection
    server_id: pulumi.Output[str]

    def __init__(
        self, name: str, args: HetznerServerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("dkimrelay:index:HetznerServer", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # Keyed by the component's name, not relayHost: renaming the relay renames the
        # server in place and keeps its host key (a new key would mean a new server).
        host_key = SshHostKey(f"{name}-host-key", name, child)
        public = pulumi.Output.unsecret(
            pulumi.Output.from_input(args.ssh_private_key).apply(_public_half)
        )
        # Names (and key fingerprints) are unique in a Hetzner project: a replacement
        # must delete the old one first.
        unique = pulumi.ResourceOptions(parent=self, delete_before_replace=True)
        ssh_key = hcloud.SshKey(
            f"{name}-ssh-key", name=args.name, public_key=public, labels=args.labels, opts=unique
        )
        firewall = hcloud.Firewall(
            f"{name}-firewall",
            name=args.name,
            labels=args.labels,
            rules=[
                hcloud.FirewallRuleArgs(
                    direction=r.direction,
                    protocol=r.protocol,
                    port=str(r.port),
                    source_ips=list(r.sources),
                    description=r.description,
                )
                for r in cs.firewall_rules(
                    args.ssh_port, args.ssh_allow_from, args.submission_ports
                )
            ],
            opts=child,
        )
        user_data: pulumi.Output[str] = pulumi.Output.secret(
            pulumi.Output.all(host_key.private_key, host_key.public_key).apply(
                lambda kp: cs.user_data(str(kp[0]), str(kp[1]))
            )
        )
        server = hcloud.Server(
            f"{name}-server",
            name=args.name,
            server_type=args.server_type,
            image=args.image,
            location=args.location,
            ssh_keys=[ssh_key.id],
            firewall_ids=[firewall.id.apply(int)],
            public_nets=[hcloud.ServerPublicNetArgs(ipv4_enabled=True, ipv6_enabled=True)],
            user_data=user_data,
            labels=args.labels,
            opts=pulumi.ResourceOptions(
                parent=self,
                delete_before_replace=True,
                custom_timeouts=pulumi.CustomTimeouts(create=args.create_timeout),
                # The SSH key is root's at creation only; a new sshPrivateKey would
                # otherwise replace the server (and its queue). docs/deploy.md says how
                # to rotate it.
                ignore_changes=["sshKeys"],
            ),
        )
        location = args.location

        def need_ipv6(values: list[Any]) -> str:
            address, status = values
            if address or pulumi.runtime.is_dry_run():
                return address or ""
            if status != "running":
                raise pulumi.RunError(
                    f"the server is not created yet (Hetzner reports it {status!r}, within "
                    "serverBootTimeout it was not running); nothing else was changed. Run "
                    "pulumi up again once the Hetzner Cloud Console shows it running"
                )
            raise pulumi.RunError(
                f"the server in hetznerLocation {location!r} got no IPv6 address; the "
                "relay publishes an AAAA record and sends over IPv6. Fix: pulumi config "
                "set hetznerLocation fsn1 (a location with IPv6), then pulumi up"
            )

        self.ipv6 = pulumi.Output.all(server.ipv6_address, server.status).apply(need_ipv6)
        # Everything that uses the server waits for that check: a server refused for want
        # of IPv6 gets no PTR and no SSH connection attempt.
        self.ipv4 = pulumi.Output.all(server.ipv4_address, self.ipv6).apply(lambda a: str(a[0]))
        self.host_key = host_key.public_key
        self.server_id = server.id
        server_id = server.id.apply(int)
        for family, address in (("ipv4", self.ipv4), ("ipv6", self.ipv6)):
            hcloud.Rdns(
                f"{name}-rdns-{family}",
                server_id=server_id,
                ip_address=address,
                dns_ptr=args.name,
                opts=child,
            )
        self.register_outputs(
            {
                "ipv4": self.ipv4,
                "ipv6": self.ipv6,
                "hostKey": self.host_key,
                "serverId": self.server_id,
            }
        )


def _public_half(private_key: str) -> str:
    line = public_key_line(private_key)
    if line is None:
        raise pulumi.RunError(
            "sshPrivateKey could not be read as a private key (the server's SSH key is its "
            "public half). Fix: pulumi config set --secret sshPrivateKey < ~/.ssh/id_ed25519"
        )
    return line
