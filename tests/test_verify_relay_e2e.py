"""`verify` against the project's real relay image on the local Docker engine.

The relay (relay/ image, config rendered by components.postfix, a certificate from a
test CA in the letsencrypt layout) is published on 127.0.0.1 and ::1; nsd serves the
zone components.dns renders for it. Every check passes, and the test message sent with
--send-to reaches the sink with a DKIM signature that dkimpy verifies against the
key nsd serves.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dkim
import dns.resolver
import pytest

from components import postfix
from components.dkim import dkim_txt_value, generate_private_key_pem
from components.dns import build_records, zone_snippet
from pure.config import load_config
from tests import relay_support as rs
from tests.verify_support import Nsd, free_port, zone_file

REPO = Path(__file__).resolve().parent.parent
DOMAIN = "good.test"
RELAY = f"smtp.{DOMAIN}"
pytestmark = pytest.mark.timeout(900)


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
        ca = rs.TestCA(tmp / "letsencrypt")
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
                "dmarcPolicy": "reject",
                "dmarcRua": [f"mailto:dmarc-reports@{DOMAIN}"],
                "dnsTtl": 300,
            },
            {"sshPrivateKey"},
        )
        recs = build_records(cfg, {"relay": value})
        snippet = zone_snippet(DOMAIN, recs)
        nsd = Nsd(tmp / "nsd", {DOMAIN: zone_file(DOMAIN, snippet)})
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
            sys.executable,
            "-m",
            "components.verify",
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
    assert res.returncode == 0, out + rs.logs(relay.container)
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
