"""`bin/dkim-relay verify` against real parts on loopback.

DNS: nsd (Debian) serving zones built by components.dns from the stack's own records,
and reverse zones with the PTR records a VPS provider would publish (the test addresses
are only names there: SMTP connections go to loopback).
SMTP: a Postfix from Debian's package with the relay's submission settings, plus
services broken on purpose, each on its own port. All checks pass on the good setup;
each broken setup fails the check it breaks, with its message. The scheduled health
check's command posts to a real HTTP server when something fails or warns, and only then.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.resolver
import pytest

from components.dkim import dkim_txt_value, generate_private_key_pem
from pure.config import load_config
from pure.records import Record, build_records, zone_snippet
from tests.verify_support import (
    REPO,
    HealthRun,
    Leaf,
    Nsd,
    Postfix,
    Service,
    TestCA,
    free_port,
    health_check,
    reverse_zones,
    silent_webhook,
    webhook,
    zone_file,
)
from tools.verify.result import FAIL, PASS, WARN

pytestmark = pytest.mark.e2e

USER = "gmail"
LOOPBACK = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class PtrCase:
    """A domain whose VPS addresses have reverse DNS set up one way."""

    domain: str
    ipv4: str
    ipv6: str
    ptr: str | None  # the PTR name of both addresses, None for no PTR


# A provider's default name, whose A/AAAA is the "elsewhere" case's addresses only.
PROVIDER_NAME = "vps.provider.test"
PTR_CASES = {
    "right": PtrCase("ptr-right.test", "127.0.0.2", "2001:db8::2", "smtp.ptr-right.test"),
    "missing": PtrCase("ptr-missing.test", "127.0.0.3", "2001:db8::3", None),
    "elsewhere": PtrCase("ptr-elsewhere.test", "127.0.0.4", "2001:db8::4", PROVIDER_NAME),
    "unconfirmed": PtrCase("ptr-unconfirmed.test", "127.0.0.5", "2001:db8::5", PROVIDER_NAME),
}
# Each domain's VPS addresses: what its A/AAAA/SPF records and the outputs name.
ADDRESSES = {
    "good.test": LOOPBACK,
    "baddkim.test": LOOPBACK,
    "badspf.test": LOOPBACK,
    **{c.domain: (c.ipv4, c.ipv6) for c in PTR_CASES.values()},
}
DOMAINS = tuple(ADDRESSES)
# The reverse zones: the loopback addresses name the good relay, so that it passes.
PTRS = {ip: "smtp.good.test" for ip in LOOPBACK} | {
    ip: c.ptr for c in PTR_CASES.values() if c.ptr for ip in (c.ipv4, c.ipv6)
}
PROVIDER_ZONE = f"{PROVIDER_NAME}. IN A 127.0.0.4\n{PROVIDER_NAME}. IN AAAA 2001:db8::4\n"


@dataclass
class Env:
    nsd: Nsd
    postfix: Postfix
    ca_file: Path
    password: str
    dkim_value: str
    records: dict[str, list[Record]]
    snippets: dict[str, str]
    sink_messages: list[bytes]
    closed_port: int


def cfg_for(domain: str) -> Any:
    return load_config(
        {
            "domain": domain,
            "vpsIpv4": ADDRESSES[domain][0],
            "vpsIpv6": ADDRESSES[domain][1],
            "acmeEmail": f"postmaster@{domain}",
            "sshHostKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoq"
            "KLsabgH5C9okWi0dh2l9GKJl",
            "dmarcPolicy": "quarantine",
            "dmarcRua": [f"mailto:dmarc-reports@{domain}"],
            "dnsTtl": 300,
        },
        {"sshPrivateKey"},
    )


def start_sink() -> tuple[Any, list[bytes]]:
    from aiosmtpd.controller import Controller

    got: list[bytes] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            got.append(envelope.original_content or envelope.content)
            return "250 stored"

    ctl = Controller(Handler(), hostname="127.0.0.1", port=free_port(), server_hostname="sink.test")
    ctl.start()
    return ctl, got


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("verify-e2e")
    signing = dkim_txt_value(generate_private_key_pem(2048))
    other = dkim_txt_value(generate_private_key_pem(2048))
    records: dict[str, list[Record]] = {}
    snippets: dict[str, str] = {}
    for domain in DOMAINS:
        cfg = cfg_for(domain)
        recs = build_records(
            cfg, {cfg.dkim_selector: other if domain == "baddkim.test" else signing}
        )
        if domain == "badspf.test":
            recs = [
                Record(r.role, r.type, r.name, '"v=spf1 ip4:192.0.2.7 -all"', r.ttl, r.why)
                if r.role == "spf"
                else r
                for r in recs
            ]
        records[domain] = recs
        snippets[domain] = zone_snippet(domain, recs)

    ca = TestCA()
    ca_file = base / "ca.pem"
    ca_file.write_bytes(ca.pem)
    now = dt.datetime.now(dt.UTC)
    relay_names = [f"smtp.{d}" for d in DOMAINS]
    tls: dict[str, Leaf] = {
        "good": ca.issue(relay_names, now - dt.timedelta(days=1), now + dt.timedelta(days=80)),
        "wrongname": ca.issue(
            ["smtp.other.test"], now - dt.timedelta(days=1), now + dt.timedelta(days=80)
        ),
        "expired": ca.issue(relay_names, now - dt.timedelta(days=100), now - dt.timedelta(days=10)),
        "expiring": ca.issue(
            relay_names, now - dt.timedelta(days=80), now + dt.timedelta(days=10, hours=1)
        ),
    }
    password = secrets.token_urlsafe(18)
    cleanup = contextlib.ExitStack()
    with cleanup:
        zones = {d: zone_file(d, snippets[d]) for d in DOMAINS}
        zones["provider.test"] = zone_file("provider.test", PROVIDER_ZONE)
        nsd = Nsd(base / "nsd", zones | reverse_zones(PTRS))
        cleanup.callback(nsd.stop)
        sink, got = start_sink()
        cleanup.callback(sink.stop)
        postfix = Postfix(
            base / "postfix",
            hostname="relay.good.test",
            sasl_domain="good.test",
            users={USER: password},
            tls_files=tls,
            relayhost=f"[127.0.0.1]:{sink.port}",
            services=[
                Service("good", ipv6=True),
                Service(
                    "authplain",
                    (("smtpd_tls_security_level", "may"), ("smtpd_tls_auth_only", "no")),
                    ipv6=True,
                ),
                Service(
                    "openrelay",
                    (
                        (
                            "smtpd_relay_restrictions",
                            "permit_mynetworks, permit_sasl_authenticated, reject",
                        ),
                        ("smtpd_recipient_restrictions", "permit_mynetworks, reject"),
                    ),
                    ipv6=True,
                ),
                Service(
                    "wrongname", (("smtpd_tls_chain_files", "$tls_chain_wrongname"),), ipv6=True
                ),
                Service("expired", (("smtpd_tls_chain_files", "$tls_chain_expired"),), ipv6=True),
                Service("expiring", (("smtpd_tls_chain_files", "$tls_chain_expiring"),)),
            ],
        )
        cleanup.callback(postfix.stop)
        yield Env(nsd, postfix, ca_file, password, signing, records, snippets, got, free_port())


def outputs(env: Env, domain: str = "good.test", service: str = "good") -> dict[str, Any]:
    port = env.closed_port if service == "closed" else env.postfix.ports[service]
    return {
        "domain": domain,
        "relayHost": f"smtp.{domain}",
        "vpsIpv4": ADDRESSES[domain][0],
        "vpsIpv6": ADDRESSES[domain][1],
        "smtpServer": f"smtp.{domain}",
        "smtpPort": port,
        "smtpUsername": USER,
        "smtpUsernames": [USER],
        "smtpPassword": env.password,
        "smtpPasswords": {USER: env.password},
        "dkimSelector": "relay",
        "dkimDnsValue": env.dkim_value,
        "dnsRecords": [r.public() for r in env.records[domain]],
        "zoneSnippet": env.snippets[domain],
        "dnsProvider": "manual",
    }


@dataclass
class Run:
    rc: int
    lines: list[str]
    out: str
    seconds: float

    def status(self, prefix: str) -> set[str]:
        return {line.split()[0] for line in self.lines if line.split()[1].startswith(prefix)}

    def failing(self) -> list[str]:
        return [line for line in self.lines if line.startswith("FAIL")]


def verify(env: Env, outs: dict[str, Any], *extra: str, nameserver: str | None = None) -> Run:
    start = time.monotonic()
    res = subprocess.run(
        [
            str(REPO / "bin" / "dkim-relay"),
            "verify",
            "--nameserver",
            nameserver or env.nsd.address,
            "--cafile",
            str(env.ca_file),
            "--timeout",
            "5",
            *extra,
        ],
        input=json.dumps(outs),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    text = res.stdout + res.stderr
    # The password goes in on stdin only and never comes out.
    assert env.password not in text
    lines = [
        line
        for line in res.stdout.splitlines()
        if line.split(" ", 1)[0] in ("PASS", "FAIL", "WARN")
    ]
    return Run(res.returncode, lines, text, time.monotonic() - start)


def test_good_setup_passes_every_check(env: Env) -> None:
    run = verify(env, outputs(env))
    assert run.rc == 0, run.out + env.postfix.log()
    assert all(line.startswith("PASS") for line in run.lines), run.out
    checks = {line.split()[1].split("[")[0].rstrip(":") for line in run.lines}
    assert checks >= {
        "dns.a",
        "dns.aaaa",
        "dns.spf",
        "dns.dkim",
        "dns.dmarc",
        "dns.ptr",
        "smtp.connect",
        "smtp.starttls",
        "smtp.auth-before-tls",
        "tls.cert-name",
        "tls.cert-expiry",
        "tls.chain",
        "relay.refused",
        "smtp.auth",
    }, run.out
    for family in ("ipv4", "ipv6"):
        assert f"PASS smtp.connect[{family}]" in run.out, run.out
        assert f"PASS smtp.auth[{family}:{USER}]" in run.out, run.out
    assert run.out.count("PASS relay.refused[") == 12  # six probes, two families
    # Postfix slows a client after 3 refusals (smtpd_soft_error_limit, as on the relay):
    # the battery spreads its probes over sessions, so a good run stays quick.
    assert run.seconds < 12, run.seconds


def test_send_to_goes_through_the_relay(env: Env) -> None:
    before = len(env.sink_messages)
    run = verify(env, outputs(env), "--send-to", "someone@example.net")
    assert run.rc == 0, run.out
    assert "PASS smtp.send[ipv4]" in run.out, run.out
    deadline = time.monotonic() + 20
    while len(env.sink_messages) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(env.sink_messages) > before, env.postfix.log()
    assert b"dkim-relay verify test" in env.sink_messages[-1]


def only_failures(run: Run, *prefixes: str) -> None:
    for line in run.failing():
        assert line.split()[1].startswith(prefixes), f"unexpected failure: {line}\n{run.out}"


def test_dkim_txt_for_another_key_fails(env: Env) -> None:
    run = verify(env, outputs(env, "baddkim.test"))
    assert run.rc == 2, run.out
    assert "FAIL dns.dkim: relay._domainkey.baddkim.test holds a different key" in run.out, run.out
    assert "[fix: publish TXT relay._domainkey.baddkim.test" in run.out, run.out
    only_failures(run, "dns.dkim")
    assert run.status("smtp.auth") == {"PASS"}


def test_spf_without_the_vps_address_fails(env: Env) -> None:
    run = verify(env, outputs(env, "badspf.test"))
    assert run.rc == 2, run.out
    assert "FAIL dns.spf[127.0.0.1]: SPF of badspf.test gives 'fail' for 127.0.0.1" in run.out, (
        run.out
    )
    assert "FAIL dns.spf[::1]" in run.out, run.out
    assert "add ip4:127.0.0.1 to the SPF record of badspf.test" in run.out, run.out
    only_failures(run, "dns.spf")


def test_auth_offered_before_tls_fails(env: Env) -> None:
    run = verify(env, outputs(env, service="authplain"))
    assert run.rc == 2, run.out
    assert "FAIL smtp.auth-before-tls[ipv4]: AUTH PLAIN LOGIN offered before STARTTLS" in run.out, (
        run.out
    )
    assert "smtpd_tls_auth_only=yes" in run.out, run.out
    only_failures(run, "smtp.auth-before-tls")


def test_open_relay_fails(env: Env) -> None:
    run = verify(env, outputs(env, service="openrelay"))
    assert run.rc == 2, run.out
    assert "FAIL relay.refused[ipv4:outside-recipient]: OPEN RELAY" in run.out, run.out
    assert "FAIL relay.refused[ipv6:own-domain-sender]: OPEN RELAY" in run.out, run.out
    assert "never permit_mynetworks" in run.out, run.out
    only_failures(run, "relay.refused")


def test_wrong_name_certificate_fails(env: Env) -> None:
    run = verify(env, outputs(env, service="wrongname"))
    assert run.rc == 2, run.out
    assert (
        "FAIL tls.cert-name[ipv4]: certificate is for smtp.other.test, not smtp.good.test"
        in run.out
    ), run.out
    assert "FAIL tls.chain[ipv4]: certificate not trusted" in run.out, run.out
    assert "FAIL smtp.auth[ipv4]: not tried" in run.out  # no password to a wrong server
    assert "PASS relay.refused[ipv4:outside-recipient]" in run.out, run.out
    only_failures(run, "tls.", "smtp.auth")


def test_expired_certificate_fails(env: Env) -> None:
    run = verify(env, outputs(env, service="expired"))
    assert run.rc == 2, run.out
    assert "FAIL tls.cert-expiry[ipv4]: certificate expired 10 day(s) ago" in run.out, run.out
    assert "FAIL tls.chain[ipv4]: certificate not trusted: certificate has expired" in run.out, (
        run.out
    )
    assert "PASS tls.cert-name[ipv4]" in run.out, run.out
    only_failures(run, "tls.", "smtp.auth")


def test_closed_port_fails(env: Env) -> None:
    run = verify(env, outputs(env, service="closed"))
    assert run.rc == 2, run.out
    assert "FAIL smtp.connect[ipv4]: 127.0.0.1:" in run.out, run.out
    assert "connection refused" in run.out, run.out
    assert "FAIL smtp.connect[ipv6]: [::1]:" in run.out, run.out
    assert "ufw allow" in run.out, run.out
    only_failures(run, "smtp.connect")
    assert run.status("dns.") == {"PASS"}


# ------------------------------------------------ reverse DNS


def dns_truth(env: Env, ip: str) -> tuple[list[str], list[str]]:
    """dnspython's view: the PTR names of ip, and the addresses those names resolve to."""
    host, port = env.nsd.address.rsplit(":", 1)
    res = dns.resolver.Resolver(configure=False)
    res.nameservers, res.port = [host], int(port)
    try:
        names = [r.target.to_text(omit_final_dot=True) for r in res.resolve_address(ip)]
    except dns.resolver.NXDOMAIN:
        names = []
    kind = "AAAA" if ":" in ip else "A"
    forward = []
    for name in names:
        with contextlib.suppress(dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            forward += [str(ipaddress.ip_address(a.address)) for a in res.resolve(name, kind)]
    return names, forward


# case -> exit code, and for each address: status, the start of the detail and of the fix
PTR_EXPECTED = {
    "right": (0, PASS, "PTR of {ip} is smtp.ptr-right.test, which resolves back to {ip}", ""),
    "missing": (
        2,
        FAIL,
        "{ip} has no reverse DNS (PTR)",
        "set the reverse DNS (PTR) of {ip} to smtp.ptr-missing.test at your VPS provider "
        "(its control panel",
    ),
    "elsewhere": (
        1,
        WARN,
        "PTR of {ip} is vps.provider.test, which resolves back, but not smtp.ptr-elsewhere.test",
        "set the reverse DNS (PTR) of {ip} to smtp.ptr-elsewhere.test at your VPS provider, "
        "in place of vps.provider.test",
    ),
    "unconfirmed": (
        2,
        FAIL,
        "PTR of {ip} is vps.provider.test, which does not resolve back to {ip}",
        "set the reverse DNS (PTR) of {ip} to smtp.ptr-unconfirmed.test at your VPS provider, "
        "in place of vps.provider.test, which does not resolve back",
    ),
}


def test_reverse_dns_right_missing_elsewhere_and_not_forward_confirmed(env: Env) -> None:
    # (case, IP version) -> status, detail and fix, with the address and relay host generic
    seen: dict[tuple[str, int], tuple[str, str, str]] = {}
    for case, c in PTR_CASES.items():
        rc, status, detail, fix = PTR_EXPECTED[case]
        for ip in (c.ipv4, c.ipv6):
            # The zones hold what the case says, as dnspython sees them.
            names, forward = dns_truth(env, ip)
            assert names == ([c.ptr] if c.ptr else []), (case, ip, names)
            assert (ip in forward) == (case in ("right", "elsewhere")), (case, ip, forward)

        # SMTP goes to the loopback relay; the addresses are only looked up in DNS.
        outs = outputs(env, c.domain)
        run = verify(env, outs, "--ipv4", "127.0.0.1", "--skip-ipv6")
        assert run.rc == rc, (case, run.out)
        # Nothing but the PTR is wrong: the rest passes, so the exit code is the PTR's.
        not_pass = [ln for ln in run.lines if not ln.startswith("PASS")]
        assert all(ln.split()[1].startswith("dns.ptr[") for ln in not_pass), (case, run.out)
        assert len(not_pass) == (0 if status == PASS else 2), (case, run.out)
        with webhook() as hook:
            health = health_check(outs, hook.url, *loopback(env), "--ipv4", "127.0.0.1")
        assert health.rc == rc, (case, health.report)
        report_checks = health.report["checks"]
        assert isinstance(report_checks, list)
        checks = {ch["name"]: ch for ch in report_checks}
        for ip in (c.ipv4, c.ipv6):
            name = f"dns.ptr[{ip}]"
            line = next(ln for ln in run.lines if ln.split()[1] == f"{name}:")
            assert line.startswith(f"{status} {name}: {detail.format(ip=ip)}"), (case, line)
            if fix:
                assert f" [fix: {fix.format(ip=ip)}" in line, (case, line)
            else:
                assert "[fix:" not in line, (case, line)
            got = checks[name]
            assert (got["status"], got["fix"].startswith(fix.format(ip=ip))) == (status, True)
            assert got["detail"] in line
            generic = {k: got[k].replace(ip, "IP").replace(outs["relayHost"], "RELAY") for k in got}
            seen[case, ipaddress.ip_address(ip).version] = (
                generic["status"],
                generic["detail"],
                generic["fix"],
            )
        # The alert names the PTR problem, and is sent only when there is one.
        if status == PASS:
            assert hook.posts == [], (case, hook.posts)
        else:
            assert len(hook.posts) == 1, (case, hook.posts)
            assert f"{status} dns.ptr[{c.ipv4}]: {detail.format(ip=c.ipv4)}" in hook.posts[0].text
    # Four cases, four different results for each family (detail and fix both differ).
    for version in (4, 6):
        results = [v for k, v in seen.items() if k[1] == version]
        assert len(results) == 4
        assert len({detail for _s, detail, _f in results}) == 4, results
        assert len({fix for _s, _d, fix in results}) == 4, results
        assert sorted(st for st, _d, _f in results) == [FAIL, FAIL, PASS, WARN]


def test_no_dns_answer_is_a_clear_failure(env: Env) -> None:
    dead = f"127.0.0.1:{free_port()}"
    run = verify(env, outputs(env), "--timeout", "1", nameserver=dead)
    assert run.rc == 2, run.out
    assert "FAIL dns.a: smtp.good.test: DNS timeout" in run.out, run.out
    assert "FAIL dns.dkim: relay._domainkey.good.test: DNS timeout" in run.out, run.out
    assert "FAIL dns.dmarc" in run.out, run.out
    assert "FAIL dns.ptr[127.0.0.1]: PTR of 127.0.0.1: DNS timeout" in run.out, run.out
    # SMTP checks do not need DNS: they still pass.
    assert run.status("smtp.connect") == {"PASS"}


def test_wrong_password_fails_without_echoing_it(env: Env) -> None:
    outs = outputs(env)
    outs["smtpPassword"] = "not-the-password-123"
    outs["smtpPasswords"] = {USER: "not-the-password-123"}
    run = verify(env, outs, "--skip-dns")
    assert run.rc == 2, run.out
    assert f"FAIL smtp.auth[ipv4:{USER}]: login as {USER} refused: 535" in run.out, run.out
    assert "not-the-password-123" not in run.out, run.out


# ------------------------------------------------ the scheduled health check's command


def loopback(env: Env) -> tuple[str, ...]:
    return ("--nameserver", env.nsd.address, "--cafile", str(env.ca_file), "--timeout", "3")


def assert_no_secret(run: HealthRun, body: bytes, env: Env) -> None:
    assert env.password.encode() not in body
    assert env.password not in json.dumps(run.report) + run.stderr


def test_health_check_does_not_post_on_a_healthy_relay(env: Env) -> None:
    with webhook() as hook:
        run = health_check(outputs(env), hook.url, *loopback(env))
    assert run.rc == 0, run.report
    assert run.report["verdict"] == "OK" and set(run.statuses().values()) == {"PASS"}
    assert "smtp.auth[ipv4:gmail]" in run.statuses()
    assert not any(name.endswith("[ipv6]") for name in run.statuses())  # --skip-ipv6
    assert hook.posts == []


def test_health_check_posts_when_the_relay_port_is_closed(env: Env) -> None:
    with webhook() as hook:
        run = health_check(outputs(env, service="closed"), hook.url, *loopback(env))
    assert run.rc == 2, run.report
    assert run.statuses()["smtp.connect[ipv4]"] == "FAIL"
    assert len(hook.posts) == 1, hook.posts
    post = hook.posts[0]
    assert post.content_type == "application/json"
    assert hook.url.endswith(post.path)
    lines = post.text.splitlines()
    assert lines[0] == "dkim-relay verify on smtp.good.test: 1 failed, 0 warning(s)", post.text
    assert lines[1].startswith("FAIL smtp.connect[ipv4]: 127.0.0.1:"), post.text
    assert "connection refused" in lines[1]
    assert_no_secret(run, post.body, env)
    assert "alert: posted" in run.stderr


def test_health_check_posts_a_warning_for_a_certificate_10_days_from_expiry(env: Env) -> None:
    with webhook() as hook:
        run = health_check(outputs(env, service="expiring"), hook.url, *loopback(env))
    assert run.rc == 1, run.report  # warnings only
    assert run.report["verdict"] == "WARN"
    not_passing = {k: v for k, v in run.statuses().items() if v != "PASS"}
    assert not_passing == {"tls.cert-expiry[ipv4]": "WARN"}, run.report
    assert len(hook.posts) == 1
    text = hook.posts[0].text
    assert "0 failed, 1 warning(s)" in text
    assert "WARN tls.cert-expiry[ipv4]: certificate expires in 10 day(s)" in text, text
    assert_no_secret(run, hook.posts[0].body, env)
    # Under a smaller threshold the same certificate is healthy: no post, exit 0.
    with webhook() as hook:
        run = health_check(
            outputs(env, service="expiring"), hook.url, *loopback(env), "--warn-cert-days", "7"
        )
    assert run.rc == 0 and hook.posts == [], run.report


def test_health_check_gives_up_cleanly_on_a_webhook_that_never_answers(env: Env) -> None:
    with silent_webhook() as url:
        run = health_check(outputs(env, service="closed"), url, *loopback(env))
    assert run.rc == 2, run.report
    assert run.report["verdict"] == "FAILED"  # the report is whole despite the dead webhook
    assert "alert: not posted: the webhook did not answer within 3 s" in run.stderr
    assert run.seconds < 20, run.seconds


def test_health_check_fails_when_the_webhook_refuses_the_alert(env: Env) -> None:
    with webhook(status=404) as hook:
        run = health_check(outputs(env, service="expiring"), hook.url, *loopback(env))
    assert len(hook.posts) == 1
    assert "alert: not posted: the webhook answered HTTP 404" in run.stderr
    assert run.rc == 2  # warnings only, but nobody was told: the job must fail


def test_health_check_posts_when_the_outputs_cannot_be_read(env: Env) -> None:
    with webhook() as hook:
        # `pulumi stack output` gave no usable outputs: nothing can be checked.
        run = health_check({}, hook.url, *loopback(env))
    assert run.rc == 3 and run.report["verdict"] == "ERROR", run.report
    assert [p.text for p in hook.posts] == [
        "dkim-relay verify could not run: stack output 'domain' is missing"
    ]
