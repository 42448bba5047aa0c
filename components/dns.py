"""DNS for the relay: the `MailDns` component publishes the records that
`pure/records.py` builds (on Cloudflare, or as outputs to add by hand)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi

from pure.config import RelayConfig
from pure.records import Record, build_records, zone_snippet
from pure.txt import txt_content

COMMENT = "managed by dkim-relay (pulumi)"


@dataclass
class MailDnsArgs:
    cfg: RelayConfig
    dkim_values: Mapping[str, pulumi.Input[str]]
    zone_id: str | None = None
    account_id: pulumi.Input[str] | None = None
    # This domain holds the relay's A/AAAA records (one domain of the stack does).
    relay_records: bool = True
    # Domains whose DMARC reports come to an address at this domain (RFC 7489 7.1).
    report_for: Sequence[str] = ()
    # The VPS's (IPv4, IPv6) when the stack creates it, instead of cfg's vpsIpv4/vpsIpv6.
    addresses: pulumi.Input[Sequence[str | None]] | None = None


class MailDns(pulumi.ComponentResource):
    """One domain's records on Cloudflare (or, in manual mode, only as outputs to publish by
    hand). ``cfg`` is the view of that domain (``RelayConfig.for_domain``)."""

    records: pulumi.Output[list[dict[str, object]]]
    zone_snippet: pulumi.Output[str]

    def __init__(
        self, name: str, args: MailDnsArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("dkimrelay:index:MailDns", name, None, opts)
        cfg = args.cfg
        selectors = cfg.all_selectors
        relay_records, report_for = args.relay_records, tuple(args.report_for)
        addresses = pulumi.Output.from_input(args.addresses)

        def build(values: list[Any]) -> list[Record]:
            ips, dkim = values[0], values[1:]
            view = cfg if ips is None else cfg.with_addresses(ips[0], ips[1])
            return build_records(
                view,
                dict(zip(selectors, dkim, strict=True)),
                relay_records=relay_records,
                report_for=report_for,
            )

        planned: pulumi.Output[list[Record]] = pulumi.Output.all(
            addresses, *[args.dkim_values[s] for s in selectors]
        ).apply(build)
        self.records = planned.apply(lambda rs: [r.public() for r in rs])
        self.zone_snippet = planned.apply(lambda rs: zone_snippet(cfg.domain, rs))

        if cfg.dns_provider == "cloudflare":
            assert args.zone_id, "validated by load_config"
            self._cloudflare(name, cfg, args, planned)
        self.register_outputs({"records": self.records, "zoneSnippet": self.zone_snippet})

    def _cloudflare(
        self,
        name: str,
        cfg: RelayConfig,
        args: MailDnsArgs,
        planned: pulumi.Output[list[Record]],
    ) -> None:
        import pulumi_cloudflare as cloudflare  # only a cloudflare stack loads the provider

        child = pulumi.ResourceOptions(parent=self)
        # The set of records is known from config; only DKIM content waits on the keys.
        # A created server's addresses are not known yet: stand-ins give the same shape.
        shape_cfg = cfg if args.addresses is None else cfg.with_addresses("0.0.0.0", "::")
        shape = build_records(
            shape_cfg,
            {s: "" for s in cfg.all_selectors},
            relay_records=args.relay_records,
            report_for=args.report_for,
        )
        for rec in shape:
            content: pulumi.Input[str] = rec.content
            if rec.role.startswith("dkim-"):
                selector = rec.role.removeprefix("dkim-")
                content = pulumi.Output.from_input(args.dkim_values[selector]).apply(txt_content)
            elif args.addresses is not None and rec.role in ("a-relay", "aaaa-relay", "spf"):
                content = planned.apply(functools.partial(_content_of, rec.role))
            cloudflare.DnsRecord(
                f"{name}-{rec.role}",
                zone_id=args.zone_id,
                name=rec.name,
                type=rec.type,
                content=content,
                ttl=rec.ttl,
                proxied=False if rec.type in ("A", "AAAA") else None,
                comment=COMMENT,
                opts=child,
            )
        if cfg.forward_to:
            account_id = args.account_id
            assert account_id is not None
            routing = cloudflare.EmailRoutingSettings(
                f"{name}-email-routing", zone_id=args.zone_id, opts=child
            )
            cloudflare.EmailRoutingDns(
                f"{name}-email-routing-mx",
                zone_id=args.zone_id,
                name=cfg.domain,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[routing]),
            )
            destination = cloudflare.EmailRoutingAddress(
                f"{name}-forward-to", account_id=account_id, email=cfg.forward_to, opts=child
            )
            cloudflare.EmailRoutingCatchAll(
                f"{name}-catch-all",
                zone_id=args.zone_id,
                name=f"forward all of {cfg.domain} to {cfg.forward_to}",
                enabled=True,
                matchers=[cloudflare.EmailRoutingCatchAllMatcherArgs(type="all")],
                actions=[
                    cloudflare.EmailRoutingCatchAllActionArgs(
                        type="forward", values=[destination.email]
                    )
                ],
                opts=pulumi.ResourceOptions(parent=self, depends_on=[routing]),
            )


def _content_of(role: str, records: Sequence[Record]) -> str:
    return next(r.content for r in records if r.role == role)
