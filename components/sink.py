"""`LocalSink`: the local stack's stand-in for the recipients' mail servers.

A container on the relay's own network, at a fixed IPv4 address the relay sends
everything to (`relayNexthop`), that keeps each message as an .eml file in a host
folder. Only local stacks have it; it publishes no port. Like the relay, it is
pulumi-docker resources on the relay's provider: the image built from ``sink/``, and the
container; ``pulumi destroy`` removes both and keeps the mail folder. The ``deploy`` step
retires the container of the earlier docker-CLI deploy (see ``components/relay.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from components.relay import image_build, read_tree, retire_step
from components.target import Target
from pure import relay_container as rc


@dataclass
class LocalSinkArgs:
    provider: docker.Provider  # SmtpRelay.provider: the same engine
    network_id: pulumi.Input[str]  # SmtpRelay.network.id
    ipv4_address: str
    mail_dir: str  # absolute path on this machine
    work_dir: str  # absolute path; where the earlier deploy kept its build folders
    name: str = "dkim-relay-sink"
    image_repo: str | None = None  # default: the container's name
    build_context: str = "sink"
    depends_on: Sequence[pulumi.Resource] = ()


class LocalSink(pulumi.ComponentResource):
    container_name: pulumi.Output[str]
    mail_dir: pulumi.Output[str]

    def __init__(
        self, name: str, args: LocalSinkArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("dkimrelay:index:LocalSink", name, None, opts)
        deps = list(args.depends_on)
        self.image_step = image_build(
            f"{name}-image",
            args.image_repo or args.name.lower(),
            args.build_context,
            read_tree(rc.SINK_DIR),
            pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=deps),
        )
        self.retire_step = retire_step(
            Target(),
            f"{name}-deploy",
            pulumi.ResourceOptions(parent=self, depends_on=[self.image_step, *deps]),
            container=args.name,
            network="",
            work_dir=args.work_dir,
            dir_pattern="^sink-build-[0-9a-f]{16}$",
            triggers=[args.name, args.work_dir],
        )
        self.container = docker.Container(
            f"{name}-container",
            name=args.name,
            image=self.image_step.image_id,
            restart="unless-stopped",
            must_run=True,
            wait=True,
            wait_timeout=60,
            log_driver=rc.LOG_DRIVER,
            log_opts=rc.LOG_OPTS,
            networks_advanced=[
                docker.ContainerNetworksAdvancedArgs(
                    name=args.network_id, ipv4_address=args.ipv4_address
                )
            ],
            volumes=[
                docker.ContainerVolumeArgs(
                    host_path=args.mail_dir, container_path=rc.SINK_MAIL_MOUNT
                )
            ],
            opts=pulumi.ResourceOptions(
                parent=self,
                provider=args.provider,
                depends_on=[self.retire_step, *deps],
                delete_before_replace=True,
            ),
        )
        self.container_name = self.container.name
        self.mail_dir = pulumi.Output.from_input(args.mail_dir)
        self.register_outputs({"containerName": self.container_name, "mailDir": self.mail_dir})
