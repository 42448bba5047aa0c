"""`verify` against the project's real relay image on the local Docker engine.

The relay (relay/ image, config rendered by pure.postfix, a certificate from a
test CA in the letsencrypt layout) is published on 127.0.0.1 and ::1; nsd serves the
zone components.dns renders for it, and the PTR of both addresses names the relay.
Every check passes, and the test message sent with --send-to reaches the sink with a
DKIM signature that dkimpy verifies against the key nsd serves. The scheduled health
check's command posts to a real HTTP server on a certificate 10 days from expiry and on
a stopped relay, never with the password.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dkim
import dns.resolver
import pytest

from components.dkim import dkim_txt_value, generate_private_key_pem
from pure import postfix
from pure.config import load_config
from pure.records import build_records, zone_snippet
from tests import relay_support as rs
from tests.verify_support import (
    REPO,
    Nsd,
    free_port,
    health_check,
    reverse_zones,
    webhook,
    zone_file,
)

DOMAIN = "good.test"
RELAY = f"smtp.{DOMAIN}"
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


@dataclass
class RelayEnv:
    nsd: Nsd
    ca_file: Path
    port: int
    login: str
    password: str
    dkim_value: str
    sink: rs.Sink
    records: list[dict[str, object]]
    snippet: str
    container: str


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayEnv]:
    tmp = tmp_path_factory.mktemp("verify-relay")
    tag = uuid.uuid4().hex[:8]
    image = rs.build_image("dkim-relay:verify")
    net = rs.TestNetwork.create(f"dkr-verify-{tag}", "172.29.213.0/24", "fd00:d6b1:213::/64")
    stack = contextlib.ExitStack()
    stack.callback(net.remove)
    with stack:
        sink = rs.Sink(net.v4_gateway, free_port())
        sink.start()
        stack.callback(sink.stop)
        ca = rs.CertbotDir(tmp / "letsencrypt")
        ca.issue(RELAY)
        pem = generate_private_key_pem(2048)
        value = dkim_txt_value(pem)
        password = secrets.token_urlsafe(18)
        settings = postfix.PostfixSettings(
            domain=DOMAIN,
            relay_host=RELAY,
            dkim_selector="relay",
            users=(postfix.SmtpUser("gmail"),),
            nexthop=f"{net.v4_gateway}:{sink.port}",
        )
        port = free_port()
        spec = rs.RelaySpec(
            name=f"dkr-verify-relay-{tag}",
            image=image,
            network=net,
            ip4="172.29.213.10",
            ip6="fd00:d6b1:213::10",
            cert_root=tmp / "letsencrypt",
            volume=f"dkr-verify-spool-{tag}",
            settings=settings,
            passwords={"gmail": password},
            dkim_keys={"relay": pem},
            port_587=port,
        )
        cfg = load_config(
            {
                "domain": DOMAIN,
                "relayHost": RELAY,
                "vpsIpv4": "127.0.0.1",
                "vpsIpv6": "::1",
                "acmeEmail": f"postmaster@{DOMAIN}",
                "sshHostKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoq"
                "KLsabgH5C9okWi0dh2l9GKJl",
                "dmarcPolicy": "reject",
                "dmarcRua": [f"mailto:dmarc-reports@{DOMAIN}"],
                "dnsTtl": 300,
            },
            {"sshPrivateKey"},
        )
        recs = build_records(cfg, {"relay": value})
        snippet = zone_snippet(DOMAIN, recs)
        ptrs = reverse_zones({"127.0.0.1": RELAY, "::1": RELAY})
        nsd = Nsd(tmp / "nsd", {DOMAIN: zone_file(DOMAIN, snippet)} | ptrs)
        stack.callback(nsd.stop)
        stack.callback(rs.docker, "volume", "rm", "-f", spec.volume, check=False)
        stack.callback(rs.docker, "rm", "-f", spec.name, check=False)
        rs.start_relay(spec, tmp)
        rs.wait_healthy(spec.name, timeout=120)
        yield RelayEnv(
            nsd,
            tmp / "letsencrypt" / "test-ca.pem",
            port,
            postfix.login_name(settings.users[0], DOMAIN),
            password,
            value,
            sink,
            [r.public() for r in recs],
            snippet,
            spec.name,
        )


def stack_outputs(env: RelayEnv) -> dict[str, Any]:
    """Shaped like `pulumi stack output --json --show-secrets` of the lead's program."""
    return {
        "domain": DOMAIN,
        "relayHost": RELAY,
        "vpsIpv4": "127.0.0.1",
        "vpsIpv6": "::1",
        "smtpServer": RELAY,
        "smtpPort": env.port,
        "smtpUsername": env.login,
        "smtpUsernames": [env.login],
        "smtpPassword": env.password,
        "smtpPasswords": {env.login: env.password},
        "dkimSelector": "relay",
        "dkimDnsValue": env.dkim_value,
        "dnsRecords": env.records,
        "zoneSnippet": env.snippet,
        "dnsProvider": "manual",
    }


def test_verify_passes_on_the_real_relay_and_the_mail_is_dkim_signed(relay: RelayEnv) -> None:
    before = relay.sink.count()
    res = subprocess.run(
        [
            str(REPO / "bin" / "dkim-relay"),
            "verify",
            "--nameserver",
            relay.nsd.address,
            "--cafile",
            str(relay.ca_file),
            "--timeout",
            "10",
            "--send-to",
            "someone@example.net",
        ],
        input=json.dumps(stack_outputs(relay)),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = res.stdout + res.stderr
    assert relay.password not in out
    assert res.returncode == 1, out + rs.logs(relay.container)  # warnings only
    lines = [
        ln for ln in res.stdout.splitlines() if ln.split(" ", 1)[0] in ("PASS", "FAIL", "WARN")
    ]
    # relay_support's test CA issues 10-day certificates, like a renewal overdue: the
    # expiry check warns (under 21 days), everything else passes.
    not_pass = [ln for ln in lines if not ln.startswith("PASS")]
    assert lines and all(ln.startswith("WARN tls.cert-expiry[") for ln in not_pass), out
    assert "WARN tls.cert-expiry[ipv4]: certificate expires in 9 day(s)" in out
    for family in ("ipv4", "ipv6"):
        assert f"PASS smtp.auth[{family}:{relay.login}]" in out
        assert f"PASS tls.chain[{family}]" in out
        assert out.count(f"PASS relay.refused[{family}:") == 6
    assert "PASS smtp.send[ipv4]" in out and "smtp.send[ipv6]" not in out

    rs.wait_for("the test message at the sink", lambda: relay.sink.count() > before, 60)
    msg = relay.sink.snapshot()[-1].data
    assert b"dkim-relay verify test" in msg

    res_ns = dns.resolver.Resolver(configure=False)
    host, port = relay.nsd.address.rsplit(":", 1)
    res_ns.nameservers = [host]
    res_ns.port = int(port)

    def dnsfunc(name: bytes | str, timeout: int = 5) -> bytes:
        qname = name.decode() if isinstance(name, bytes) else name
        answer = res_ns.resolve(qname, "TXT", lifetime=timeout)
        return b"".join(b"".join(r.strings) for r in answer)

    assert b"d=good.test" in msg and b"s=relay" in msg
    assert dkim.verify(msg, dnsfunc=dnsfunc), msg[:2000]


def loopback(env: RelayEnv) -> tuple[str, ...]:
    return ("--nameserver", env.nsd.address, "--cafile", str(env.ca_file), "--timeout", "5")


def test_health_check_posts_the_certificate_10_days_from_expiry(relay: RelayEnv) -> None:
    with webhook() as hook:
        run = health_check(stack_outputs(relay), hook.url, *loopback(relay))
    assert run.rc == 1, run.report
    not_passing = {k: v for k, v in run.statuses().items() if v != "PASS"}
    assert not_passing == {"tls.cert-expiry[ipv4]": "WARN"}, run.report
    assert run.statuses()[f"smtp.auth[ipv4:{relay.login}]"] == "PASS"
    assert len(hook.posts) == 1
    text = hook.posts[0].text
    assert "1 warning(s)" in text and "WARN tls.cert-expiry[ipv4]: certificate expires in 9" in text
    assert relay.password.encode() not in hook.posts[0].body
    # With a lower threshold this relay is healthy: nothing is posted.
    with webhook() as hook:
        run = health_check(
            stack_outputs(relay), hook.url, *loopback(relay), "--warn-cert-days", "5"
        )
    assert run.rc == 0 and hook.posts == [], run.report


def test_health_check_posts_when_the_relay_container_is_stopped(relay: RelayEnv) -> None:
    rs.docker("stop", relay.container)
    try:
        with webhook() as hook:
            run = health_check(stack_outputs(relay), hook.url, *loopback(relay))
    finally:
        rs.docker("start", relay.container)
        rs.wait_healthy(relay.container, timeout=120)
    assert run.rc == 2, run.report
    assert run.statuses()["smtp.connect[ipv4]"] == "FAIL", run.report
    assert run.statuses()["dns.dkim"] == "PASS"  # DNS is fine: the failure is the relay
    assert len(hook.posts) == 1
    text = hook.posts[0].text
    assert text.startswith(f"dkim-relay verify on {RELAY}: 1 failed"), text
    assert f"FAIL smtp.connect[ipv4]: 127.0.0.1:{relay.port}:" in text, text
    assert relay.password.encode() not in hook.posts[0].body
    assert relay.password not in run.stderr
