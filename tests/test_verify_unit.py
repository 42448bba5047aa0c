"""verify's pure core: each evaluation passes the right thing and fails the wrong one."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from components import verify as v
from components.dkim import txt_content

REPO = Path(__file__).resolve().parent.parent
P_KEY = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA" + "x" * 300 + "IDAQAB"
DKIM = f"v=DKIM1; k=rsa; p={P_KEY}"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.53", ("127.0.0.53", 53)),
        ("127.0.0.53:5353", ("127.0.0.53", 5353)),
        ("::1", ("::1", 53)),
        ("[::1]:5353", ("::1", 5353)),
        ("2001:db8::1", ("2001:db8::1", 53)),
    ],
)
def test_parse_nameserver(value: str, expected: tuple[str, int]) -> None:
    assert v.parse_nameserver(value) == expected


@pytest.mark.parametrize("value", ["ns.example.com", "127.0.0.1:0", "[::1]:99999", "1.2.3"])
def test_parse_nameserver_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        v.parse_nameserver(value)


def test_unquote_txt_joins_published_strings() -> None:
    published = txt_content(DKIM)
    assert published.count('" "') >= 1  # long: split into 255-char strings
    assert v.unquote_txt(published) == DKIM
    assert v.unquote_txt(DKIM) == DKIM
    assert v.unquote_txt(r'"a\"b" "c"') == 'a"bc'


def test_addresses() -> None:
    assert v.evaluate_addresses("A", "h", "192.0.2.1", ["192.0.2.1"]).status == v.PASS
    r = v.evaluate_addresses("A", "h", "192.0.2.1", ["192.0.2.9"])
    assert r.status == v.FAIL and "expected 192.0.2.1" in r.detail and "publish A h" in r.fix
    assert v.evaluate_addresses("A", "h", "192.0.2.1", []).status == v.FAIL
    assert v.evaluate_addresses("AAAA", "h", "2001:db8::1", ["2001:db8:0::1"]).status == v.PASS
    assert v.evaluate_addresses("A", "h", "192.0.2.1", ["192.0.2.1", "192.0.2.2"]).status == v.WARN
    assert v.evaluate_addresses("AAAA", "h", None, []).status == v.PASS
    assert v.evaluate_addresses("AAAA", "h", None, ["2001:db8::1"]).status == v.WARN


def test_spf() -> None:
    assert v.evaluate_spf("192.0.2.1", "d", "pass", "").status == v.PASS
    r = v.evaluate_spf("2001:db8::1", "example.com", "softfail", "")
    assert r.status == v.FAIL and "ip6:2001:db8::1" in r.fix
    assert v.evaluate_spf("192.0.2.1", "d", "temperror", "DNS timeout").fix.startswith("check")


def test_dkim_record_comparison() -> None:
    name = "relay._domainkey.example.com"
    assert v.evaluate_dkim(name, [DKIM], DKIM).status == v.PASS
    # The output may be given as published (quoted strings): still the same key.
    assert v.evaluate_dkim(name, [DKIM], txt_content(DKIM)).status == v.PASS
    assert v.evaluate_dkim(name, [DKIM.replace("; ", ";")], DKIM).status == v.PASS
    other = v.evaluate_dkim(name, [DKIM.replace("x" * 10, "y" * 10)], DKIM)
    assert other.status == v.FAIL and "different key" in other.detail
    assert v.evaluate_dkim(name, [], DKIM).detail.startswith("no TXT record")
    assert "revoked" in v.evaluate_dkim(name, ["v=DKIM1; p="], DKIM).detail
    assert "keep one" in v.evaluate_dkim(name, [DKIM, DKIM], DKIM).detail
    assert v.evaluate_dkim(name, ["hello"], DKIM).status == v.FAIL


def test_cert_name_and_wildcard() -> None:
    assert v.evaluate_cert_name("smtp.example.com", ["smtp.example.com"]).status == v.PASS
    assert v.evaluate_cert_name("SMTP.example.com.", ["smtp.example.com"]).status == v.PASS
    assert v.evaluate_cert_name("smtp.example.com", ["*.example.com"]).status == v.PASS
    assert v.evaluate_cert_name("a.smtp.example.com", ["*.example.com"]).status == v.FAIL
    r = v.evaluate_cert_name("smtp.example.com", ["mail.example.com"])
    assert r.status == v.FAIL and "certbot -d smtp.example.com" in r.fix


@pytest.mark.parametrize(
    ("days", "status", "text"),
    [(80, v.PASS, "valid for 80"), (20, v.WARN, "expires in 20"), (-3, v.FAIL, "expired 3")],
)
def test_cert_expiry(days: int, status: str, text: str) -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    r = v.evaluate_cert_expiry(now + dt.timedelta(days=days, hours=1 if days > 0 else 0), now)
    assert r.status == status and text in r.detail


def test_cert_expiry_warning_threshold_is_21_days() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert v.evaluate_cert_expiry(now + dt.timedelta(days=21, hours=1), now).status == v.PASS
    assert v.evaluate_cert_expiry(now + dt.timedelta(days=20, hours=23), now).status == v.WARN


def test_plain_ehlo() -> None:
    good = {r.check: r.status for r in v.evaluate_plain_ehlo({"starttls": ""}, "ipv4")}
    assert good == {"smtp.starttls[ipv4]": v.PASS, "smtp.auth-before-tls[ipv4]": v.PASS}
    bad = {r.check: r for r in v.evaluate_plain_ehlo({"auth": " PLAIN LOGIN"}, "ipv6")}
    assert bad["smtp.starttls[ipv6]"].status == v.FAIL
    assert bad["smtp.auth-before-tls[ipv6]"].status == v.FAIL
    assert "AUTH PLAIN LOGIN offered" in bad["smtp.auth-before-tls[ipv6]"].detail


def test_relay_battery_has_every_trick() -> None:
    probes = {p.name: p for p in v.relay_battery("example.com", "example.net")}
    rcpts = {p.rcpt_to for p in probes.values()}
    assert rcpts == {
        "<postmaster@example.net>",
        "<postmaster%example.net@example.com>",
        '<"postmaster@example.net"@example.com>',
        "<@example.com:postmaster@example.net>",
        "<postmaster@example.net@example.com>",
    }
    assert probes["own-domain-sender"].mail_from.endswith("@example.com")
    assert probes["outside-recipient"].mail_from.endswith("@example.net")


@pytest.mark.parametrize(
    ("code", "status"), [(554, v.PASS), (550, v.PASS), (501, v.PASS), (450, v.WARN), (250, v.FAIL)]
)
def test_relay_reply(code: int, status: str) -> None:
    probe = v.relay_battery("example.com")[0]
    r = v.evaluate_relay_reply(probe, code, "msg", "ipv4")
    assert r.status == status
    if status == v.FAIL:
        assert "OPEN RELAY" in r.detail and "permit_sasl_authenticated" in r.fix


def outputs(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "domain": "example.com",
        "relayHost": "smtp.example.com",
        "vpsIpv4": "203.0.113.10",
        "vpsIpv6": None,
        "smtpServer": "smtp.example.com",
        "smtpPort": 587,
        "smtpUsername": "gmail",
        "smtpUsernames": ["gmail", "shop"],
        "smtpPassword": "pw-one",
        "smtpPasswords": {"gmail": "pw-one", "shop": "pw-two"},
        "dkimSelector": "relay",
        "dkimDnsValue": DKIM,
    }
    base.update(changes)
    return base


def test_target_from_outputs() -> None:
    t = v.target_from_outputs(outputs())
    assert (t.domain, t.relay_host, t.ipv4, t.ipv6, t.port) == (
        "example.com",
        "smtp.example.com",
        "203.0.113.10",
        None,
        587,
    )
    assert dict(t.credentials) == {"gmail": "pw-one", "shop": "pw-two"}
    o = v.target_from_outputs(outputs(), host="relay.test", ipv4="127.0.0.1", ipv6="::1", port=2525)
    assert (o.relay_host, o.connect_ipv4, o.connect_ipv6, o.port) == (
        "relay.test",
        "127.0.0.1",
        "::1",
        2525,
    )
    # DNS and SPF still judge the VPS addresses from the outputs.
    assert (o.ipv4, o.ipv6) == ("203.0.113.10", None)
    assert (t.connect_ipv4, t.connect_ipv6) == ("203.0.113.10", None)


def test_password_map_keyed_by_user_name_maps_to_logins() -> None:
    t = v.target_from_outputs(
        outputs(
            smtpUsername="gmail@example.com",
            smtpUsernames=["gmail@example.com", "shop@example.com"],
            smtpPassword="pw-one",
            smtpPasswords={"gmail": "pw-one", "shop": "pw-two"},
        )
    )
    assert dict(t.credentials) == {"gmail@example.com": "pw-one", "shop@example.com": "pw-two"}


def test_target_without_show_secrets_has_no_credentials() -> None:
    t = v.target_from_outputs(outputs(smtpPassword="[secret]", smtpPasswords="[secret]"))
    assert t.credentials == ()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"domain": None}, "'domain' is missing"),
        ({"dkimDnsValue": ""}, "'dkimDnsValue' is missing"),
        ({"vpsIpv4": "2001:db8::1"}, "not an IPv4"),
        ({"vpsIpv6": "nope"}, "not an IP address"),
    ],
)
def test_target_input_errors(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(v.InputError, match=message):
        v.target_from_outputs(outputs(**changes))


def test_result_line_format() -> None:
    assert v.Result(v.PASS, "dns.a", "ok", "never shown").line() == "PASS dns.a: ok"
    assert v.Result(v.FAIL, "dns.a", "bad", "do x").line() == "FAIL dns.a: bad [fix: do x]"
    assert v.Result(v.WARN, "c", "d").line() == "WARN c: d"


def run_cli(stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "components.verify", *args],
        input=stdin,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_bad_input_exit_2() -> None:
    res = run_cli("not json")
    assert res.returncode == 2 and "not JSON" in res.stderr
    res = run_cli(json.dumps(outputs(domain=None)))
    assert res.returncode == 2 and "'domain' is missing" in res.stderr
    res = run_cli(json.dumps(outputs()), "--nameserver", "dns.example")
    assert res.returncode == 2 and "--nameserver" in res.stderr


def test_cli_closed_port_fails_fast_and_never_prints_passwords(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends
    f = tmp_path / "outputs.json"
    f.write_text(json.dumps(outputs(vpsIpv4="127.0.0.1")))
    res = run_cli("", "--outputs", str(f), "--skip-dns", "--port", str(port), "--timeout", "2")
    assert res.returncode == 1
    assert f"FAIL smtp.connect[ipv4]: 127.0.0.1:{port}: connection refused" in res.stdout
    assert "verify FAILED: 1 check(s) fail" in res.stdout
    assert "pw-one" not in res.stdout + res.stderr and "pw-two" not in res.stdout + res.stderr


def test_cli_silent_listener_is_no_greeting_not_a_firewall(tmp_path: Path) -> None:
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)  # the kernel completes the handshake; nobody ever speaks
        port = listener.getsockname()[1]
        f = tmp_path / "outputs.json"
        f.write_text(json.dumps(outputs(vpsIpv4="127.0.0.1")))
        res = run_cli("", "--outputs", str(f), "--skip-dns", "--port", str(port), "--timeout", "1")
    assert res.returncode == 1
    assert "FAIL smtp.connect[ipv4]" in res.stdout
    assert "connected, but no SMTP greeting within 1 s" in res.stdout
    assert "docker logs" in res.stdout and "ufw" not in res.stdout
