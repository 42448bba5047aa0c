"""DNS for the relay: the records as plain data (pure), and the `MailDns` component.

One builder feeds Cloudflare, the `dnsRecords` output and the BIND zone snippet, so what
is published and what a user is told to publish cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import pulumi

from components.dkim import txt_content
from pure.config import RelayConfig

COMMENT = "managed by dkim-relay (pulumi)"


@dataclass(frozen=True)
class Record:
    """One record, named fully qualified, TXT content as quoted strings."""

    role: str  # stable identity of the record in the stack: "a-relay", "dkim-<sel>", ...
    type: str
    name: str
    content: str
    ttl: int
    why: str = ""

    def public(self) -> dict[str, object]:
        d = asdict(self)
        return {k: d[k] for k in ("type", "name", "content", "ttl")}


def spf_value(cfg: RelayConfig) -> str:
    return " ".join(["v=spf1", *cfg.spf_terms, cfg.spf_all])


def dmarc_value(cfg: RelayConfig) -> str:
    align = "s" if cfg.dmarc_alignment == "strict" else "r"
    tags = [("v", "DMARC1"), ("p", cfg.dmarc_policy)]
    if cfg.dmarc_subdomain_policy:
        tags.append(("sp", cfg.dmarc_subdomain_policy))
    if cfg.dmarc_pct != 100:
        tags.append(("pct", str(cfg.dmarc_pct)))
    if cfg.dmarc_rua:
        tags.append(("rua", ",".join(cfg.dmarc_rua)))
    if cfg.dmarc_ruf:
        tags.append(("ruf", ",".join(cfg.dmarc_ruf)))
        tags.append(("fo", "1"))  # a failure report for any failed mechanism
    tags += [("adkim", align), ("aspf", align)]
    return "; ".join(f"{k}={v}" for k, v in tags)


def build_records(cfg: RelayConfig, dkim_values: Mapping[str, str]) -> list[Record]:
    """Every record the relay needs, given each selector's DKIM TXT value."""
    domain = cfg.domain.lower().rstrip(".")
    relay = cfg.relay_fqdn.lower().rstrip(".")
    ttl = cfg.dns_ttl
    records = [Record("a-relay", "A", relay, cfg.vps_ipv4, ttl, "the relay's IPv4 address")]
    if cfg.vps_ipv6:
        records.append(
            Record("aaaa-relay", "AAAA", relay, cfg.vps_ipv6, ttl, "the relay's IPv6 address")
        )
    records.append(
        Record(
            "spf",
            "TXT",
            domain,
            txt_content(spf_value(cfg)),
            ttl,
            "SPF: the relay may send for the domain",
        )
    )
    for selector in cfg.all_selectors:
        role = "signing" if selector == cfg.dkim_selector else "retired, still published"
        records.append(
            Record(
                f"dkim-{selector}",
                "TXT",
                f"{selector}._domainkey.{domain}",
                txt_content(dkim_values[selector]),
                ttl,
                f"DKIM public key ({role})",
            )
        )
    records.append(
        Record(
            "dmarc",
            "TXT",
            f"_dmarc.{domain}",
            txt_content(dmarc_value(cfg)),
            ttl,
            "DMARC policy",
        )
    )
    return records


def zone_snippet(domain: str, records: Sequence[Record]) -> str:
    """The records as BIND zone-file lines, to paste into any DNS host."""
    origin = domain.lower().rstrip(".") + "."
    lines = [f"; dkim-relay records for {origin}", f"$ORIGIN {origin}"]
    for r in records:
        lines.append(f"; {r.why}")
        lines.append(f"{r.name}.\t{r.ttl}\tIN\t{r.type}\t{r.content}")
    return "\n".join(lines) + "\n"


@dataclass
class MailDnsArgs:
    cfg: RelayConfig
    dkim_values: Mapping[str, pulumi.Input[str]]
    zone_id: str | None = None
    account_id: pulumi.Input[str] | None = None


class MailDns(pulumi.ComponentResource):
    """The records on Cloudflare (or, in manual mode, only as outputs to publish by hand)."""

    records: pulumi.Output[list[dict[str, object]]]
    zone_snippet: pulumi.Output[str]

    def __init__(
        self, name: str, args: MailDnsArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("dkimrelay:index:MailDns", name, None, opts)
        cfg = args.cfg
        selectors = cfg.all_selectors
        planned: pulumi.Output[list[Record]] = pulumi.Output.all(
            *[args.dkim_values[s] for s in selectors]
        ).apply(lambda vals: build_records(cfg, dict(zip(selectors, vals, strict=True))))
        self.records = planned.apply(lambda rs: [r.public() for r in rs])
        self.zone_snippet = planned.apply(lambda rs: zone_snippet(cfg.domain, rs))

        if cfg.dns_provider == "cloudflare":
            assert args.zone_id, "validated by load_config"
            self._cloudflare(name, cfg, args)
        self.register_outputs({"records": self.records, "zoneSnippet": self.zone_snippet})

    def _cloudflare(
        self,
        name: str,
        cfg: RelayConfig,
        args: MailDnsArgs,
    ) -> None:
        import pulumi_cloudflare as cloudflare  # only a cloudflare stack loads the provider

        child = pulumi.ResourceOptions(parent=self)
        # The set of records is known from config; only DKIM content waits on the keys.
        shape = build_records(cfg, {s: "" for s in cfg.all_selectors})
        for rec in shape:
            content: pulumi.Input[str] = rec.content
            if rec.role.startswith("dkim-"):
                selector = rec.role.removeprefix("dkim-")
                content = pulumi.Output.from_input(args.dkim_values[selector]).apply(txt_content)
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
