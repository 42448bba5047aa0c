"""Two domains on one real relay, end to end: the relay image signs mail From each domain
with that domain's own key (dkimpy verifies it against the value the stack publishes for
that domain), a user restricted to one domain is refused for the other (553 for the
envelope sender, 550 for the header From) and signed for its own, a plain user may send as
either; and the zone snippet of both domains, served by nsd on loopback, passes pyspf,
checkdmarc and `verify`'s DNS checks for each domain.

The relay's config and key files are those the stack renders (pure/postfix.py from the
config model's domains and sendAs; the records from pure/records.py with real keys).
Traffic goes only to loopback and the docker bridge this module creates.
"""

from __future__ import annotations

import contextlib
import email
import smtplib
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim
import pytest

from pure import postfix
from pure.config import RelayConfig, load_config
from pure.records import build_records, zone_snippet
from tests import relay_support as rs
from tests.verify_support import Nsd, zone_file
from tools.verify.dns_checks import dns_checks, make_resolver, spf_dns_through
from tools.verify.outputs import target_from_outputs

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

IMAGE = "dkim-relay:domains-e2e"
NET_V4 = "172.31.219.0/24"
NET_V6 = "fd00:d6b1:d19::/64"
NET_NAME = "dkimrelay-domains"
PRIMARY = rs.DOMAIN  # example.com: the relay's name, relay.example.com, is in it
OTHER = "example.org"
PASSWORDS = {"plain": "plain-pw-0123456789", "alice": "alice-pw-0123456789"}
LOOSE = postfix.RateLimits(
    auth_per_unit=10000, connections_per_unit=10000, concurrent_connections=100
)


def stack_config() -> RelayConfig:
    """The stack config a user would write: two domains, a plain and a restricted user."""
    return load_config(
        {
            "domain": PRIMARY,
            "relayHost": rs.RELAY_HOST,
            "vpsIpv4": "127.0.0.1",
            "deployTarget": "local",
            "tlsCertDir": "le",
            "dkimSelector": rs.SELECTOR,
            "dmarcRua": [f"mailto:dmarc@{PRIMARY}"],
            "extraDomains": [{"domain": OTHER, "dkimSelector": "other", "dmarcPolicy": "reject"}],
            "smtpUsers": ["plain", {"name": "alice", "sendAs": [f"@{PRIMARY}"]}],
        }
    )


@pytest.fixture(scope="module")
def cfg() -> RelayConfig:
    return stack_config()


@pytest.fixture(scope="module")
def keys(cfg: RelayConfig) -> dict[str, dict[str, str]]:
    """domain -> selector -> PEM, made as the stack makes them."""
    return {
        m.domain: {s: rs.generate_private_key_pem(2048) for s in m.all_selectors}
        for m in cfg.mail_domains
    }


@pytest.fixture(scope="module")
def published(cfg: RelayConfig, keys: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Per domain the records and the zone snippet block, as __main__ builds them."""
    out: dict[str, Any] = {"records": {}, "snippets": {}, "values": {}}
    report_for: dict[str, list[str]] = {}
    for reported, report_domain in cfg.report_authorizations():
        holder = cfg.owned_domain_of(report_domain)
        if holder:
            report_for.setdefault(holder, []).append(reported)
    for m in cfg.mail_domains:
        values = {s: rs.dkim_txt_value(pem) for s, pem in keys[m.domain].items()}
        recs = build_records(
            cfg.for_domain(m.domain),
            values,
            relay_records=m.domain == cfg.relay_domain,
            report_for=report_for.get(m.domain, []),
        )
        out["records"][m.domain] = recs
        out["snippets"][m.domain] = zone_snippet(m.domain, recs)
        out["values"][m.domain] = values
    return out


@pytest.fixture(scope="module")
def sink(net: rs.TestNetwork) -> Iterator[rs.Sink]:
    s = rs.Sink(net.v4_gateway, 2525)
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def relay(
    cfg: RelayConfig,
    keys: dict[str, dict[str, str]],
    net: rs.TestNetwork,
    ca: rs.CertbotDir,
    workdir: Path,
    sink: rs.Sink,
) -> Iterator[rs.RelaySpec]:
    settings = postfix.PostfixSettings(
        domain=cfg.domain,
        relay_host=cfg.relay_fqdn,
        dkim_selector=cfg.dkim_selector,
        users=tuple(postfix.SmtpUser(u, tuple(cfg.send_as.get(u, ()))) for u in cfg.user_names),
        extra_domains=tuple(
            postfix.SigningDomain(m.domain, m.dkim_selector, m.dkim_retired_selectors)
            for m in cfg.mail_domains
            if not m.primary
        ),
        nexthop=f"{net.v4_gateway}:2525",
        rate_limits=LOOSE,
    )
    spec = rs.RelaySpec(
        name="dkimrelay-domains-e2e",
        image=IMAGE,
        network=net,
        cert_root=ca.root,
        volume="dkimrelay-domains-e2e-queue",
        settings=settings,
        passwords=PASSWORDS,
        dkim_keys=keys[PRIMARY],
        extra_dkim_keys={d: k for d, k in keys.items() if d != PRIMARY},
        port_587=rs.free_port(),
    )
    with rs.running(spec, workdir):
        yield spec


def _message(header_from: str, subject: str) -> bytes:
    return rs.make_message(header_from, "someone@other.test", subject)


def _send(
    relay: rs.RelaySpec, ctx: ssl.SSLContext, user: str, envelope: str, header_from: str
) -> str:
    subject = f"domains-{uuid.uuid4().hex}"
    with smtplib.SMTP("127.0.0.1", relay.port_587, local_hostname="client.test", timeout=30) as s:
        s.starttls(context=ctx)
        s.login(f"{user}@{PRIMARY}", PASSWORDS[user])
        s.sendmail(envelope, ["someone@other.test"], _message(header_from, subject))
    return subject


def _received(sink: rs.Sink, subject: str) -> bytes:
    def found() -> list[rs.Received]:
        return [m for m in sink.snapshot() if f"Subject: {subject}".encode() in m.data]

    rs.wait_for("message at the sink", lambda: len(found()) == 1, 60)
    return found()[0].data


def _txt(published: dict[str, Any]) -> dict[str, str]:
    """name -> TXT value as the zones publish it (quoted strings joined)."""
    out = {}
    for recs in published["records"].values():
        for r in recs:
            if r.type == "TXT":
                out[r.name] = "".join(part.strip('"') for part in r.content.split('" "'))
    return out


def _tags(msg: bytes) -> dict[str, str]:
    sig = email.message_from_bytes(msg)["DKIM-Signature"]
    assert sig, "no DKIM-Signature header"
    flat = "".join(str(sig).split())
    return dict(t.split("=", 1) for t in flat.split(";") if "=" in t)


@pytest.mark.parametrize(
    ("user", "domain"), [("plain", PRIMARY), ("plain", OTHER), ("alice", PRIMARY)]
)
def test_mail_from_each_domain_is_signed_with_that_domains_key(
    relay: rs.RelaySpec,
    sink: rs.Sink,
    ctx: ssl.SSLContext,
    published: dict[str, Any],
    user: str,
    domain: str,
) -> None:
    sender = f"{user}@{domain}"
    data = _received(sink, _send(relay, ctx, user, sender, sender))
    tags = _tags(data)
    m = stack_config().mail_domain(domain)
    assert (tags["d"], tags["s"]) == (domain, m.dkim_selector)
    assert dkim.verify(data, dnsfunc=rs.dnsfunc_for(_txt(published))), data[:600]
    # Against the other domain's published key it would not verify: each has its own.
    other = OTHER if domain == PRIMARY else PRIMARY
    swapped = {
        f"{m.dkim_selector}._domainkey.{domain}": published["values"][other][
            stack_config().mail_domain(other).dkim_selector
        ]
    }
    assert not dkim.verify(data, dnsfunc=rs.dnsfunc_for(swapped))


def test_restricted_user_is_refused_for_the_other_domain(
    relay: rs.RelaySpec, sink: rs.Sink, ctx: ssl.SSLContext
) -> None:
    before = sink.count()
    # Postfix answers the sender check at RCPT (smtpd_delay_reject): 553 5.7.1.
    with pytest.raises(smtplib.SMTPRecipientsRefused) as env_err:
        _send(relay, ctx, "alice", f"alice@{OTHER}", f"alice@{OTHER}")
    ((code, text),) = env_err.value.recipients.values()
    assert code == 553 and text.startswith(b"5.7.1"), text
    assert f"<alice@{OTHER}>: Sender address rejected".encode() in text
    with pytest.raises(smtplib.SMTPDataError) as hdr_err:
        _send(relay, ctx, "alice", f"alice@{PRIMARY}", f"alice@{OTHER}")
    assert hdr_err.value.smtp_code == 550, hdr_err.value
    raw = hdr_err.value.smtp_error
    reply = raw if isinstance(raw, bytes) else raw.encode()
    assert reply.startswith(b"5.7.1"), reply
    assert f"may not send with From: alice@{OTHER}".encode() in reply
    rs.wait_for("relay queue empty", lambda: rs.queue_is_empty(relay.name), 30)
    assert sink.count() == before


@contextlib.contextmanager
def _nsd(tmp: Path, published: dict[str, Any]) -> Iterator[Nsd]:
    # The zone snippet, one $ORIGIN block per domain, each in its own zone.
    zones = {d: zone_file(d, block) for d, block in published["snippets"].items()}
    nsd = Nsd(tmp / "nsd", zones)
    try:
        yield nsd
    finally:
        nsd.stop()


def test_zone_snippet_of_both_domains_passes_spf_dmarc_and_verify(
    tmp_path: Path, cfg: RelayConfig, published: dict[str, Any]
) -> None:
    import checkdmarc.dmarc as cd
    import spf

    with _nsd(tmp_path, published) as nsd:
        host, port = nsd.address.rsplit(":", 1)
        res = make_resolver((host, int(port)), 3)
        for domain in cfg.domains:
            with spf_dns_through(res):
                result, _code, _expl = spf.query(
                    i="127.0.0.1", s=f"postmaster@{domain}", h=rs.RELAY_HOST, querytime=0
                ).check()
            assert result == "pass", domain
            got = cd.get_dmarc_record(domain, resolver=res, timeout=3)
            policy = got["parsed"]["tags"]["p"]["value"]
            assert policy == cfg.mail_domain(domain).dmarc_policy, domain
        # verify's own DNS checks, from outputs shaped as the stack exports them.
        outputs = {
            "domain": cfg.domain,
            "domains": cfg.domains,
            "relayHost": cfg.relay_fqdn,
            "vpsIpv4": "127.0.0.1",
            "dkimSelector": cfg.dkim_selector,
            "dkimDnsValue": published["values"][cfg.domain][cfg.dkim_selector],
            "dkimDnsValuesByDomain": published["values"],
        }
        results = [
            r for r in dns_checks(target_from_outputs(outputs), res, 3) if "ptr" not in r.check
        ]
        checks = {r.check: r.status for r in results}
        lines = [r.line() for r in results]
        # p=none (the primary's default) is a checkdmarc warning, not a failure.
        assert all(s == "PASS" for c, s in checks.items() if "dmarc" not in c), lines
        assert all(s in ("PASS", "WARN") for s in checks.values()), lines
        assert checks[f"dns.dmarc[{OTHER}]"] == "PASS", lines
        assert {
            "dns.spf[127.0.0.1]",
            "dns.dkim",
            "dns.dmarc",
            f"dns.spf[{OTHER}/127.0.0.1]",
            f"dns.dkim[other._domainkey.{OTHER}]",
            f"dns.dmarc[{OTHER}]",
        } <= set(checks)
