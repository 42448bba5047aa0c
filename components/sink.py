"""`LocalSink`: the local stack's stand-in for the recipients' mail servers.

A container on the relay's own network, at a fixed IPv4 address the relay sends
everything to (`relayNexthop`), that keeps each message as an .eml file in a host
folder. Only local stacks have it; it publishes no port. One ``local.Command`` (made by
``components/target.py``) runs the sink scripts of ``pure/relay_deploy.py`` (build
``sink/`` as ``dkim-relay-sink:<hash16>``, run it idempotently; delete removes the
container and keeps the mail folder).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi

from components.target import Target
from pure import relay_deploy as rd
from pure.relay_deploy import SINK_DIR, read_tree


@dataclass
class LocalSinkArgs:
    network_name: pulumi.Input[str]  # SmtpRelay.network_name (waits for the relay)
    ipv4_address: str
    mail_dir: str  # absolute path on this machine
    work_dir: str  # absolute path; the sink's build context goes to sink-build-<h16>
    name: str = "dkim-relay-sink"
    image_repo: str = "dkim-relay-sink"
    depends_on: Sequence[pulumi.Resource] = ()


class LocalSink(pulumi.ComponentResource):
    container_name: pulumi.Output[str]
    mail_dir: pulumi.Output[str]

    def __init__(
        self, name: str, args: LocalSinkArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("dkimrelay:index:LocalSink", name, None, opts)
        payload = rd.make_payload(read_tree(SINK_DIR))

        def spec(network: str) -> rd.SinkSpec:
            return rd.SinkSpec(
                work_dir=args.work_dir,
                network_name=network,
                ipv4_address=args.ipv4_address,
                mail_dir=args.mail_dir,
                container_name=args.name,
                image_repo=args.image_repo,
            )

        static = spec("placeholder")  # validates the plain values now
        network = pulumi.Output.from_input(args.network_name)
        deploy = network.apply(lambda n: rd.render_sink_deploy(spec(n), payload))
        self.deploy_step = Target().step(
            f"{name}-deploy",
            deploy,
            pulumi.ResourceOptions(
                parent=self, depends_on=list(args.depends_on), delete_before_replace=True
            ),
            update=deploy,
            delete=rd.render_sink_delete(static),
            stdin=payload.stdin,
            triggers=[static.container_name, static.work_dir],
        )
        self.container_name = self.deploy_step.stdout.apply(lambda _: args.name)
        self.mail_dir = pulumi.Output.from_input(args.mail_dir)
        self.register_outputs({"containerName": self.container_name, "mailDir": self.mail_dir})
