"""The records, judged by pyspf and checkdmarc rather than by re-reading our rendering."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import checkdmarc.dmarc
import dns.resolver
import pytest
import spf

from pure.config import load_config
from pure.records import build_records, zone_snippet
from pure.txt import join_txt

pytestmark = pytest.mark.unit

BASE: dict[str, Any] = {
    "domain": "example.com",
    "vpsIpv4": "203.0.113.25",
    "vpsIpv6": "2001:db8::25",
    "deployTarget": "local",
    "tlsCertDir": "/tmp/le",
}
DKIM = {"relay": "v=DKIM1; k=rsa; p=" + "A" * 392, "old": "v=DKIM1; k=rsa; p=" + "B" * 392}


def records_for(**changes: Any) -> list[Any]:
    cfg = load_config({**BASE, **changes})
    return build_records(cfg, DKIM)


@pytest.fixture
def zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[tuple[str, str], list[str]]]:
    """Serve pyspf's lookups from a dict; any name not in it is NXDOMAIN-like (empty)."""
    data: dict[tuple[str, str], list[str]] = {}

    def lookup(name: str, qtype: str, *args: Any, **kwargs: Any) -> list[Any]:
        return [((name, qtype), [v.encode()]) for v in data.get((name.lower(), qtype), [])]

    monkeypatch.setattr(spf, "DNSLookup", lookup)
    yield data


def publish(zone: dict[tuple[str, str], list[str]], records: list[Any]) -> None:
    for r in records:
        zone.setdefault((r.name, r.type), []).append(
            join_txt(r.content) if r.type == "TXT" else r.content
        )


@pytest.mark.parametrize("ipv6", [True, False])
def test_spf_passes_for_each_vps_address_and_not_others(zone: Any, ipv6: bool) -> None:
    recs = records_for() if ipv6 else records_for(vpsIpv6=None)
    publish(zone, recs)
    res = lambda ip: spf.check2(i=ip, s="me@example.com", h="smtp.example.com")[0]  # noqa: E731
    assert res("203.0.113.25") == "pass"
    assert res("203.0.113.26") == "softfail"
    assert res("2001:db8::25") == ("pass" if ipv6 else "softfail")
    assert res("2001:db8::26") == "softfail"


def test_spf_hard_fail_and_extras(zone: Any) -> None:
    recs = records_for(spfAll="-all", spfExtra=["ip4:198.51.100.0/24"])
    publish(zone, recs)
    assert spf.check2(i="198.51.100.7", s="x@example.com", h="h")[0] == "pass"
    assert spf.check2(i="192.0.2.1", s="x@example.com", h="h")[0] == "fail"


def test_only_one_spf_record_and_email_routing_include() -> None:
    recs = records_for(forwardTo="me@gmail.com", dnsProvider="cloudflare", cloudflareZoneId="z")
    spfs = [r for r in recs if r.type == "TXT" and join_txt(r.content).startswith("v=spf1")]
    assert len(spfs) == 1 and spfs[0].name == "example.com"
    assert "include:_spf.mx.cloudflare.net" in join_txt(spfs[0].content)


def _offline_resolver() -> dns.resolver.Resolver:
    # checkdmarc looks up the rua domain's MX; point it at a closed loopback port.
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = ["127.0.0.1"]
    r.port = 9  # discard: nothing answers, so nothing leaves this machine
    r.lifetime = 0.2
    return r


def test_dmarc_parses_with_configured_tags() -> None:
    recs = records_for(
        dmarcPolicy="quarantine",
        dmarcSubdomainPolicy="reject",
        dmarcPct=50,
        dmarcRua=["mailto:dmarc@example.com"],
        dmarcRuf=["mailto:forensic@example.com"],
        dmarcAlignment="strict",
    )
    (rec,) = [r for r in recs if r.name == "_dmarc.example.com"]
    parsed = checkdmarc.dmarc.parse_dmarc_record(
        join_txt(rec.content), "example.com", resolver=_offline_resolver()
    )
    tags = {k: v["value"] for k, v in parsed["tags"].items()}
    assert tags["p"] == "quarantine" and tags["sp"] == "reject"
    assert tags["adkim"] == "s" and tags["aspf"] == "s"
    assert [u["address"] for u in tags["rua"]] == ["dmarc@example.com"]
    assert [u["address"] for u in tags["ruf"]] == ["forensic@example.com"]
    # RFC 9989 (DMARCbis) dropped pct; checkdmarc still sees it and says so. RFC 7489
    # receivers apply it, so it is published when set.
    assert any("pct" in w for w in parsed["warnings"]), parsed["warnings"]


def test_default_dmarc_is_monitoring_and_relaxed() -> None:
    (rec,) = [r for r in records_for() if r.name == "_dmarc.example.com"]
    parsed = checkdmarc.dmarc.parse_dmarc_record(
        join_txt(rec.content), "example.com", resolver=_offline_resolver()
    )
    tags = {k: v["value"] for k, v in parsed["tags"].items()}
    assert tags["p"] == "none" and tags["adkim"] == "r" and tags["aspf"] == "r"


def test_dkim_records_for_signing_and_retired_selectors() -> None:
    recs = records_for(dkimSelector="relay", dkimRetiredSelectors=["old"])
    dkims = {r.name: join_txt(r.content) for r in recs if "._domainkey." in r.name}
    assert dkims == {
        "relay._domainkey.example.com": DKIM["relay"],
        "old._domainkey.example.com": DKIM["old"],
    }


def test_address_records_follow_ipv6_config() -> None:
    names = {(r.type, r.name) for r in records_for()}
    assert ("A", "smtp.example.com") in names and ("AAAA", "smtp.example.com") in names
    assert ("AAAA", "smtp.example.com") not in {(r.type, r.name) for r in records_for(vpsIpv6=None)}


def test_zone_snippet_is_read_by_dnspython_as_published() -> None:
    import dns.zone

    recs = records_for(dkimRetiredSelectors=["old"])
    text = zone_snippet("example.com", recs)
    z = dns.zone.from_text(text, origin="example.com.", check_origin=False)
    txt = z.find_rdataset("relay._domainkey", "TXT")[0]
    assert b"".join(txt.strings).decode() == DKIM["relay"]
    assert z.find_rdataset("smtp", "A")[0].address == "203.0.113.25"
    assert z.find_rdataset("smtp", "AAAA")[0].address == "2001:db8::25"
    spf_txt = b"".join(z.find_rdataset("@", "TXT")[0].strings).decode()
    assert spf_txt == "v=spf1 ip4:203.0.113.25 ip6:2001:db8::25 ~all"
