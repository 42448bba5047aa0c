"""The Gmail guide holds the exact values, manual-DNS steps only when asked, no secret."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pure.guide import (
    GuideInput,
    SendAs,
    render_dns_table,
    render_from_outputs,
    render_guide,
)
from tools.verify import dns_checks as d
from tools.verify.result import PASS

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-Pa55word-XYZ"
SECRET2 = "another-S3cret-QQQ"

RECORDS = [
    {"type": "A", "name": "mail.example.com.", "content": "203.0.113.10", "ttl": 300},
    {
        "type": "AAAA",
        "name": "mail.example.com.",
        "content": "2001:db8::10",
        "ttl": 300,
    },
    {
        "type": "TXT",
        "name": "example.com.",
        "content": '"v=spf1 ip4:203.0.113.10 -all"',
        "ttl": 300,
    },
    {
        "type": "TXT",
        "name": "relay._domainkey.example.com.",
        "content": '"v=DKIM1; k=rsa; p=MIIB" "AQAB"',
        "ttl": 300,
    },
    {
        "type": "TXT",
        "name": "_dmarc.example.com.",
        "content": '"v=DMARC1; p=quarantine"',
        "ttl": 300,
    },
]


def outputs(provider: str = "manual") -> dict[str, Any]:
    return {
        "domain": "example.com",
        "relayHost": "mail.example.com",
        "vpsIpv4": "203.0.113.10",
        "vpsIpv6": "2001:db8::10",
        "smtpServer": "mail.example.com",
        "smtpPort": 587,
        "smtpUsername": "me@example.com",
        "smtpUsernames": ["me@example.com", "shop"],
        "smtpPassword": SECRET,
        "smtpPasswords": {"me@example.com": SECRET, "shop": SECRET2},
        "dnsProvider": provider,
        "dnsRecords": RECORDS,
    }


def test_guide_has_exact_server_port_usernames_and_gmail_path() -> None:
    text = render_from_outputs(outputs("cloudflare"))
    assert "**SMTP Server:** `mail.example.com`" in text
    assert "**Port:** `587`" in text
    assert "**Username:** `me@example.com`" in text
    assert "**Username:** `shop`" in text
    # The second user's From address defaults to user@domain.
    assert "### `shop@example.com`" in text
    for step in (
        "Accounts and Import",
        '"Send mail as"',
        '"Add another email address"',
    ):
        assert step in text
    assert "Secured connection using TLS" in text and "STARTTLS" in text
    assert "DKIM: 'PASS' with domain example.com" in text
    assert "Show original" in text
    assert "pulumi stack output gmailGuide > GMAIL.md" in text
    assert "pulumi stack output --show-secrets smtpPassword" in text
    assert "smtpPasswords" in text  # how to read the second user's password


@pytest.mark.parametrize("provider", ["cloudflare", "manual"])
def test_no_secret_unless_asked(provider: str) -> None:
    text = render_from_outputs(outputs(provider))
    assert SECRET not in text
    assert SECRET2 not in text


def test_secret_only_when_explicitly_asked() -> None:
    text = render_from_outputs(outputs(), include_password=True)
    assert f"**Password:** `{SECRET}`" in text
    assert f"**Password:** `{SECRET2}`" in text


def test_manual_dns_mode_lists_every_record_and_zone_snippet() -> None:
    text = render_from_outputs(outputs("manual"))
    assert "Add these DNS records at your DNS host" in text
    assert "pulumi stack output zoneSnippet" in text
    table = render_dns_table(RECORDS)
    assert table in text
    for rec in RECORDS:
        assert f"| {rec['type']} | {rec['name']} | `{rec['content']}` | {rec['ttl']} |" in text
    # DNS first, then Gmail.
    assert text.index("DNS records") < text.index("Accounts and Import")


def test_managed_dns_mode_has_no_manual_records() -> None:
    text = render_from_outputs(outputs("cloudflare"))
    assert "Add these DNS records" not in text
    assert "zoneSnippet" not in text
    assert "| Type | Name | Content | TTL |" not in text and "| A |" not in text


def ptr_rows(text: str) -> list[tuple[str, str]]:
    """The (address, PTR name) rows of the guide's reverse DNS table."""
    section = text.split("Reverse DNS:", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)` \| `([^`]+)` \|$", section, re.M)


@pytest.mark.parametrize("provider", ["cloudflare", "manual"])
def test_reverse_dns_names_the_ptr_of_each_vps_address(provider: str) -> None:
    text = render_from_outputs(outputs(provider))
    step = 1 if provider == "cloudflare" else 2  # after the manual DNS records
    assert f"## {step}. Reverse DNS" in text
    rows = ptr_rows(text)
    assert rows == [("203.0.113.10", "mail.example.com"), ("2001:db8::10", "mail.example.com")]
    # The PTR the guide asks for is the one verify passes (once the A/AAAA resolve back).
    for addr, name in rows:
        assert d.evaluate_ptr(addr, "mail.example.com", [name], {name: [addr]}).status == PASS
    assert "at your VPS provider, not at your DNS host" in text
    assert "`PASS dns.ptr[203.0.113.10]` and `PASS dns.ptr[2001:db8::10]`" in text
    assert "pulumi stack output --json --show-secrets | bin/dkim-relay verify" in text
    # Before Gmail is set up: without it the mail does not arrive.
    assert text.index("Reverse DNS") < text.index("Accounts and Import")


def test_reverse_dns_without_ipv6_and_for_another_relay_host() -> None:
    outs = outputs("cloudflare") | {"vpsIpv6": None, "relayHost": "relay.example.com"}
    rows = ptr_rows(render_from_outputs(outs))
    assert rows == [("203.0.113.10", "relay.example.com")]
    # Without the addresses there is no table to fill in.
    plain = {k: v for k, v in outputs("cloudflare").items() if not k.startswith("vpsIp")}
    assert "Reverse DNS" not in render_from_outputs(plain)


def test_table_cells_escape_pipes() -> None:
    table = render_dns_table([{"type": "TXT", "name": "a.", "content": "x|y", "ttl": 1}])
    assert "x\\|y" in table


def test_stack_name_and_other_port() -> None:
    text = render_guide(
        GuideInput(
            smtp_server="relay.example.org",
            smtp_port=2525,
            identities=[SendAs("a@example.org", "a", "Alice")],
            domain="example.org",
            stack_name="prod",
        )
    )
    assert "**Port:** `2525`" in text
    assert "Name: `Alice`" in text
    assert "pulumi stack output --stack prod gmailGuide > GMAIL.md" in text


def test_render_is_deterministic_and_needs_an_identity() -> None:
    assert render_from_outputs(outputs()) == render_from_outputs(outputs())
    with pytest.raises(ValueError):
        render_guide(GuideInput("h", 587, [], "example.com"))


def test_password_map_keyed_by_user_name() -> None:
    outs = outputs("cloudflare")
    outs["smtpUsernames"] = ["me@example.com", "shop@example.com"]
    outs["smtpPasswords"] = {"me": SECRET, "shop": SECRET2}
    text = render_from_outputs(outs)
    assert 'print(json.load(sys.stdin)["shop"])' in text
    assert SECRET not in text and SECRET2 not in text
    asked = render_from_outputs(outs, include_password=True)
    assert f"**Password:** `{SECRET2}`" in asked and f"**Password:** `{SECRET}`" in asked


def test_verify_command_in_the_guide_runs() -> None:
    text = render_guide(
        GuideInput(
            "relay.example.org",
            587,
            [SendAs("a@example.org", "a")],
            "example.org",
            stack_name="prod",
            vps_addresses=["192.0.2.1"],
        )
    )
    pipes = re.findall(r"`(pulumi stack output --stack prod --json --show-secrets \| [^`]+)`", text)
    assert len(pipes) == 2, text  # in the reverse DNS step and the signature check
    assert len(set(pipes)) == 1, pipes
    argv = shlex.split(pipes[0].split("|", 1)[1])
    assert argv == ["bin/dkim-relay", "verify"]
    # The command the guide names exists in the repository and runs.
    res = subprocess.run(
        [str(REPO / argv[0]), *argv[1:], "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0 and "Check a deployed dkim-relay" in res.stdout, res.stderr


def test_port25_line_unknown_open_and_blocked() -> None:
    text = render_from_outputs(outputs())
    line = next(ln for ln in text.splitlines() if "Outbound port 25" in ln)
    assert "pulumi stack output outboundSmtp" in line, "not known yet: where to read it"
    open_ = {
        f: {"probe": "mx.test", "address": a, "status": "open", "source": s, "detail": "connected"}
        for f, a, s in (
            ("ipv4", "192.0.2.1", "203.0.113.10"),
            ("ipv6", "2001:db8::1", "2001:db8::10"),
        )
    }
    text = render_from_outputs({**outputs(), "outboundSmtp": open_})
    line = next(ln for ln in text.splitlines() if "Outbound port 25" in ln)
    assert "`mx.test`" in line
    assert "IPv4 open (from 203.0.113.10), IPv6 open (from 2001:db8::10)" in line
    assert "relayNexthop" not in line
    blocked = {**open_, "ipv6": {**open_["ipv6"], "status": "blocked", "detail": "refused"}}
    text = render_from_outputs({**outputs(), "outboundSmtp": blocked})
    line = next(ln for ln in text.splitlines() if "Outbound port 25" in ln)
    assert "IPv6 blocked (refused)" in line
    assert "ask your VPS provider to open outbound port 25" in line and "relayNexthop" in line
    # Before the Gmail steps: mail cannot leave while it is blocked.
    assert text.index("Outbound port 25") < text.index("Add the address in Gmail")


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("prefer-ipv4", "IPv6 may be used too: `pulumi config set outboundIpv6 any`"),
        ("any", "go back to IPv4: `pulumi config set outboundIpv6 prefer-ipv4`"),
        ("never", "never sends over IPv6"),
    ],
)
def test_ipv6_sending_note_names_the_ptr_check(policy: str, expected: str) -> None:
    text = render_from_outputs(outputs("cloudflare") | {"outboundIpv6": policy})
    assert expected in text
    if policy != "never":
        # The same check name verify prints for the IPv6 PTR.
        assert "(`PASS dns.ptr[2001:db8::10]`)" in text
    # Without an IPv6 address there is nothing to switch.
    v4 = render_from_outputs(outputs("cloudflare") | {"vpsIpv6": None, "outboundIpv6": policy})
    assert "outboundIpv6" not in v4


def test_notices_need_inbound_mail_for_the_domain() -> None:
    text = render_from_outputs(outputs("cloudflare") | {"delayWarningTime": "2h"})
    assert "Notices about undelivered mail" in text
    assert "after 2h (delayWarningTime)" in text
    assert "`MAILER-DAEMON@mail.example.com`" in text
    assert "without `forwardTo`" in text and "these notices are lost" in text
    forwarded = render_from_outputs(outputs("cloudflare") | {"forwardTo": "me@gmail.com"})
    assert "forwards mail for `@example.com` to `me@gmail.com`" in forwarded
    assert "these notices are lost" not in forwarded
