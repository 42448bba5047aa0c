"""The mail records of a relay as plain data: one builder feeds Cloudflare, the
`dnsRecords` output and the BIND zone snippet, so what is published and what a user is
told to publish cannot drift apart. Pure: the config model and the DKIM values in,
records out (Mail-in-a-Box's tuples of name, type, value and why).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from pure.config import RelayConfig
from pure.txt import txt_content


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


def build_records(
    cfg: RelayConfig,
    dkim_values: Mapping[str, str],
    *,
    relay_records: bool = True,
    report_for: Sequence[str] = (),
) -> list[Record]:
    """Every record of ``cfg.domain`` (a view of one domain: ``RelayConfig.for_domain``),
    given each selector's DKIM TXT value. ``relay_records``: this domain holds the relay's
    A/AAAA. ``report_for``: domains whose DMARC reports go to an address here (RFC 7489
    7.1: this domain says it accepts them)."""
    domain = cfg.domain.lower().rstrip(".")
    relay = cfg.relay_fqdn.lower().rstrip(".")
    ttl = cfg.dns_ttl
    records = []
    if relay_records:
        assert cfg.vps_ipv4, "validated by load_config, or the created server's address"
        records.append(Record("a-relay", "A", relay, cfg.vps_ipv4, ttl, "the relay's IPv4 address"))
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
    for reported in report_for:
        records.append(report_authorization(reported, domain, ttl))
    return records


def report_authorization(reported: str, report_domain: str, ttl: int) -> Record:
    """RFC 7489 7.1: ``report_domain`` accepts DMARC reports about ``reported``."""
    reported = reported.lower().rstrip(".")
    return Record(
        f"dmarc-report-{reported}",
        "TXT",
        f"{reported}._report._dmarc.{report_domain.lower().rstrip('.')}",
        txt_content("v=DMARC1"),
        ttl,
        f"DMARC reports about {reported} may come here (RFC 7489 7.1)",
    )


def zone_snippet(domain: str, records: Sequence[Record]) -> str:
    """The records as BIND zone-file lines, to paste into any DNS host."""
    origin = domain.lower().rstrip(".") + "."
    lines = [f"; dkim-relay records for {origin}", f"$ORIGIN {origin}"]
    for r in records:
        lines.append(f"; {r.why}")
        lines.append(f"{r.name}.\t{r.ttl}\tIN\t{r.type}\t{r.content}")
    return "\n".join(lines) + "\n"
