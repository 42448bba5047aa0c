"""verify's pure core: each evaluation passes the right thing and fails the wrong one."""

from __future__ import annotations

import datetime as dt
import json
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pure.txt import txt_content
from tools.verify import alert, cli
from tools.verify import dns_checks as d
from tools.verify import outputs as vo
from tools.verify import smtp_checks as s
from tools.verify.result import FAIL, PASS, WARN, Result

pytestmark = pytest.mark.unit

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
    assert d.parse_nameserver(value) == expected


@pytest.mark.parametrize("value", ["ns.example.com", "127.0.0.1:0", "[::1]:99999", "1.2.3"])
def test_parse_nameserver_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        d.parse_nameserver(value)


def test_addresses() -> None:
    assert d.evaluate_addresses("A", "h", "192.0.2.1", ["192.0.2.1"]).status == PASS
    r = d.evaluate_addresses("A", "h", "192.0.2.1", ["192.0.2.9"])
    assert r.status == FAIL and "expected 192.0.2.1" in r.detail and "publish A h" in r.fix
    assert d.evaluate_addresses("A", "h", "192.0.2.1", []).status == FAIL
    assert d.evaluate_addresses("AAAA", "h", "2001:db8::1", ["2001:db8:0::1"]).status == PASS
    assert d.evaluate_addresses("A", "h", "192.0.2.1", ["192.0.2.1", "192.0.2.2"]).status == WARN
    assert d.evaluate_addresses("AAAA", "h", None, []).status == PASS
    assert d.evaluate_addresses("AAAA", "h", None, ["2001:db8::1"]).status == WARN


def test_spf() -> None:
    assert d.evaluate_spf("192.0.2.1", "d", "pass", "").status == PASS
    r = d.evaluate_spf("2001:db8::1", "example.com", "softfail", "")
    assert r.status == FAIL and "ip6:2001:db8::1" in r.fix
    assert d.evaluate_spf("192.0.2.1", "d", "temperror", "DNS timeout").fix.startswith("check")


RELAY = "smtp.example.com"


@pytest.mark.parametrize(
    ("ip", "names", "forward", "status", "detail", "fix"),
    [
        (
            "192.0.2.25",
            ["smtp.example.com."],
            {"smtp.example.com": ["192.0.2.25"]},
            PASS,
            "PTR of 192.0.2.25 is smtp.example.com, which resolves back to 192.0.2.25",
            "",
        ),
        (  # names compare without case or final dot; the IPv6 forms compare as addresses
            "2001:db8::25",
            ["SMTP.Example.COM"],
            {"SMTP.Example.COM": ["2001:db8:0:0::25"]},
            PASS,
            "resolves back to 2001:db8::25",
            "",
        ),
        (
            "2001:db8::25",
            [],
            {},
            FAIL,
            "2001:db8::25 has no reverse DNS (PTR)",
            "set the reverse DNS (PTR) of 2001:db8::25 to smtp.example.com at your VPS "
            "provider (its control panel, or a support ticket)",
        ),
        (
            "192.0.2.25",
            ["vps-25.provider.test"],
            {"vps-25.provider.test": ["192.0.2.25"]},
            WARN,
            "PTR of 192.0.2.25 is vps-25.provider.test, which resolves back, but not "
            "smtp.example.com, the name the relay greets with (HELO)",
            "set the reverse DNS (PTR) of 192.0.2.25 to smtp.example.com at your VPS "
            "provider, in place of vps-25.provider.test",
        ),
        (
            "192.0.2.25",
            ["vps-25.provider.test"],
            {"vps-25.provider.test": ["192.0.2.99"]},
            FAIL,
            "PTR of 192.0.2.25 is vps-25.provider.test, which does not resolve back to "
            "192.0.2.25 (vps-25.provider.test has A 192.0.2.99)",
            "set the reverse DNS (PTR) of 192.0.2.25 to smtp.example.com at your VPS "
            "provider, in place of vps-25.provider.test, which does not resolve back to "
            "192.0.2.25",
        ),
        (  # the PTR is right, the forward record is not: fix the A record instead
            "2001:db8::25",
            ["smtp.example.com"],
            {"smtp.example.com": []},
            FAIL,
            "(smtp.example.com has AAAA none)",
            "publish AAAA smtp.example.com -> 2001:db8::25",
        ),
        (  # an A for the wrong family's address never confirms
            "192.0.2.25",
            ["smtp.example.com"],
            {"smtp.example.com": ["192.0.2.26"]},
            FAIL,
            "does not resolve back",
            "publish A smtp.example.com -> 192.0.2.25",
        ),
        (
            "192.0.2.25",
            ["smtp.example.com", "vps-25.provider.test"],
            {"smtp.example.com": ["192.0.2.25"], "vps-25.provider.test": ["192.0.2.25"]},
            WARN,
            "several PTR names (smtp.example.com, vps-25.provider.test)",
            "leave only the PTR smtp.example.com for 192.0.2.25 at your VPS provider",
        ),
        (  # the relay's name is there but does not confirm; another one does
            "192.0.2.25",
            ["smtp.example.com", "vps-25.provider.test"],
            {"smtp.example.com": [], "vps-25.provider.test": ["192.0.2.25"]},
            WARN,
            "but not smtp.example.com",
            "set the reverse DNS (PTR) of 192.0.2.25 to smtp.example.com",
        ),
    ],
)
def test_ptr(
    ip: str,
    names: list[str],
    forward: dict[str, list[str]],
    status: str,
    detail: str,
    fix: str,
) -> None:
    r = d.evaluate_ptr(ip, RELAY, names, forward)
    assert r.check == f"dns.ptr[{ip}]"
    assert r.status == status, r
    assert detail in r.detail, r
    assert r.fix.startswith(fix) if fix else r.fix == "", r


def test_ptr_cases_are_told_apart() -> None:
    ip = "2001:db8::25"
    results = [
        d.evaluate_ptr(ip, RELAY, [RELAY], {RELAY: [ip]}),
        d.evaluate_ptr(ip, RELAY, [], {}),
        d.evaluate_ptr(ip, RELAY, ["other.test"], {"other.test": [ip]}),
        d.evaluate_ptr(ip, RELAY, ["other.test"], {"other.test": ["2001:db8::99"]}),
    ]
    assert [r.status for r in results] == [PASS, FAIL, WARN, FAIL]
    assert len({r.detail for r in results}) == 4
    assert len({r.fix for r in results}) == 4


def test_dkim_record_comparison() -> None:
    name = "relay._domainkey.example.com"
    assert d.evaluate_dkim(name, [DKIM], DKIM).status == PASS
    # The output may be given as published (quoted strings): still the same key.
    assert d.evaluate_dkim(name, [DKIM], txt_content(DKIM)).status == PASS
    assert d.evaluate_dkim(name, [DKIM.replace("; ", ";")], DKIM).status == PASS
    other = d.evaluate_dkim(name, [DKIM.replace("x" * 10, "y" * 10)], DKIM)
    assert other.status == FAIL and "different key" in other.detail
    assert d.evaluate_dkim(name, [], DKIM).detail.startswith("no TXT record")
    assert "revoked" in d.evaluate_dkim(name, ["v=DKIM1; p="], DKIM).detail
    assert "keep one" in d.evaluate_dkim(name, [DKIM, DKIM], DKIM).detail
    assert d.evaluate_dkim(name, ["hello"], DKIM).status == FAIL


def test_cert_name_and_wildcard() -> None:
    assert s.evaluate_cert_name("smtp.example.com", ["smtp.example.com"]).status == PASS
    assert s.evaluate_cert_name("SMTP.example.com.", ["smtp.example.com"]).status == PASS
    assert s.evaluate_cert_name("smtp.example.com", ["*.example.com"]).status == PASS
    assert s.evaluate_cert_name("a.smtp.example.com", ["*.example.com"]).status == FAIL
    r = s.evaluate_cert_name("smtp.example.com", ["mail.example.com"])
    assert r.status == FAIL and "certbot -d smtp.example.com" in r.fix


@pytest.mark.parametrize(
    ("days", "status", "text"),
    [
        (80, PASS, "valid for 80"),
        (20, WARN, "expires in 20"),
        (10, WARN, "expires in 10"),
        (6, FAIL, "expires in 6"),
        (-3, FAIL, "expired 3"),
    ],
)
def test_cert_expiry(days: int, status: str, text: str) -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    r = s.evaluate_cert_expiry(now + dt.timedelta(days=days, hours=1 if days > 0 else 0), now)
    assert r.status == status and text in r.detail


def test_cert_expiry_warning_threshold_is_21_days() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert s.evaluate_cert_expiry(now + dt.timedelta(days=21, hours=1), now).status == PASS
    assert s.evaluate_cert_expiry(now + dt.timedelta(days=20, hours=23), now).status == WARN
    assert s.evaluate_cert_expiry(now + dt.timedelta(days=7, hours=1), now).status == WARN
    assert s.evaluate_cert_expiry(now + dt.timedelta(days=6, hours=23), now).status == FAIL


def test_cert_expiry_thresholds_follow_warn_days() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    in_days = lambda n: now + dt.timedelta(days=n, hours=1)  # noqa: E731
    assert s.evaluate_cert_expiry(in_days(25), now, warn_days=30).status == WARN
    assert s.evaluate_cert_expiry(in_days(10), now, warn_days=5).status == PASS
    # Never warn, but still fail once expired or within the warning window if smaller.
    assert s.evaluate_cert_expiry(in_days(3), now, warn_days=5).status == FAIL
    assert s.evaluate_cert_expiry(in_days(1), now, warn_days=0).status == PASS
    assert s.evaluate_cert_expiry(now - dt.timedelta(hours=1), now, warn_days=0).status == FAIL


def test_plain_ehlo() -> None:
    good = {r.check: r.status for r in s.evaluate_plain_ehlo({"starttls": ""}, "ipv4")}
    assert good == {"smtp.starttls[ipv4]": PASS, "smtp.auth-before-tls[ipv4]": PASS}
    bad = {r.check: r for r in s.evaluate_plain_ehlo({"auth": " PLAIN LOGIN"}, "ipv6")}
    assert bad["smtp.starttls[ipv6]"].status == FAIL
    assert bad["smtp.auth-before-tls[ipv6]"].status == FAIL
    assert "AUTH PLAIN LOGIN offered" in bad["smtp.auth-before-tls[ipv6]"].detail


def test_relay_battery_has_every_trick() -> None:
    probes = {p.name: p for p in s.relay_battery("example.com", "example.net")}
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
    ("code", "status"), [(554, PASS), (550, PASS), (501, PASS), (450, WARN), (250, FAIL)]
)
def test_relay_reply(code: int, status: str) -> None:
    probe = s.relay_battery("example.com")[0]
    r = s.evaluate_relay_reply(probe, code, "msg", "ipv4")
    assert r.status == status
    if status == FAIL:
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
    t = vo.target_from_outputs(outputs())
    assert (t.domain, t.relay_host, t.ipv4, t.ipv6, t.port) == (
        "example.com",
        "smtp.example.com",
        "203.0.113.10",
        None,
        587,
    )
    assert dict(t.credentials) == {"gmail": "pw-one", "shop": "pw-two"}
    o = vo.target_from_outputs(
        outputs(), host="relay.test", ipv4="127.0.0.1", ipv6="::1", port=2525
    )
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
    t = vo.target_from_outputs(
        outputs(
            smtpUsername="gmail@example.com",
            smtpUsernames=["gmail@example.com", "shop@example.com"],
            smtpPassword="pw-one",
            smtpPasswords={"gmail": "pw-one", "shop": "pw-two"},
        )
    )
    assert dict(t.credentials) == {"gmail@example.com": "pw-one", "shop@example.com": "pw-two"}


def test_target_without_show_secrets_has_no_credentials() -> None:
    t = vo.target_from_outputs(outputs(smtpPassword="[secret]", smtpPasswords="[secret]"))
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
    with pytest.raises(vo.InputError, match=message):
        vo.target_from_outputs(outputs(**changes))


def test_result_line_format() -> None:
    assert Result(PASS, "dns.a", "ok", "never shown").line() == "PASS dns.a: ok"
    assert Result(FAIL, "dns.a", "bad", "do x").line() == "FAIL dns.a: bad [fix: do x]"
    assert Result(WARN, "c", "d").line() == "WARN c: d"


BIN = REPO / "bin" / "dkim-relay"


def run_cli(
    stdin: str, *args: str, cwd: Path = REPO, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), "verify", *args],
        input=stdin,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the block ends


def test_cli_bad_input_exit_3() -> None:
    res = run_cli("not json")
    assert res.returncode == 3 and "not JSON" in res.stderr
    res = run_cli("")
    assert res.returncode == 3 and "outputs are empty" in res.stderr
    res = run_cli(json.dumps(outputs(domain=None)))
    assert res.returncode == 3 and "'domain' is missing" in res.stderr
    res = run_cli(json.dumps(outputs()), "--nameserver", "dns.example")
    assert res.returncode == 3 and "--nameserver" in res.stderr
    res = run_cli(json.dumps(outputs()), "--no-such-flag")
    assert res.returncode == 3 and "unrecognized arguments" in res.stderr
    res = run_cli(json.dumps(outputs()), "--alert-webhook", "file:///etc/passwd")
    assert res.returncode == 3 and "http:// or https://" in res.stderr
    res = run_cli("not json", "--json")
    assert res.returncode == 3 and json.loads(res.stdout)["verdict"] == "ERROR"


def test_cli_closed_port_fails_fast_and_never_prints_passwords(tmp_path: Path) -> None:
    port = closed_port()
    f = tmp_path / "outputs.json"
    f.write_text(json.dumps(outputs(vpsIpv4="127.0.0.1")))
    res = run_cli("", "--outputs", str(f), "--skip-dns", "--port", str(port), "--timeout", "2")
    assert res.returncode == 2
    assert f"FAIL smtp.connect[ipv4]: 127.0.0.1:{port}: connection refused" in res.stdout
    assert "verify FAILED: 1 check(s) fail" in res.stdout
    assert "pw-one" not in res.stdout + res.stderr and "pw-two" not in res.stdout + res.stderr


def test_cli_json_has_one_object_per_check() -> None:
    port = closed_port()
    res = run_cli(
        json.dumps(outputs(vpsIpv4="127.0.0.1", vpsIpv6="::1")),
        *("--json", "--skip-dns", "--port", str(port), "--timeout", "2"),
    )
    assert res.returncode == 2, res.stderr
    report = json.loads(res.stdout)  # the whole of stdout is one JSON document
    assert report["verdict"] == "FAILED" and report["exit_code"] == 2
    assert [c["name"] for c in report["checks"]] == ["smtp.connect[ipv4]", "smtp.connect[ipv6]"]
    for c in report["checks"]:
        assert set(c) == {"name", "status", "detail", "fix"} and c["status"] == FAIL
        assert "connection refused" in c["detail"] and "ufw allow" in c["fix"]
    skipped = run_cli(
        json.dumps(outputs(vpsIpv4="127.0.0.1", vpsIpv6="::1")),
        *("--json", "--skip-dns", "--skip-ipv6", "--port", str(port), "--timeout", "2"),
    )
    assert [c["name"] for c in json.loads(skipped.stdout)["checks"]] == ["smtp.connect[ipv4]"]


def test_cli_silent_listener_is_no_greeting_not_a_firewall(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)  # the kernel completes the handshake; nobody ever speaks
        port = listener.getsockname()[1]
        f = tmp_path / "outputs.json"
        f.write_text(json.dumps(outputs(vpsIpv4="127.0.0.1")))
        res = run_cli("", "--outputs", str(f), "--skip-dns", "--port", str(port), "--timeout", "1")
    assert res.returncode == 2
    assert "FAIL smtp.connect[ipv4]" in res.stdout
    assert "connected, but no SMTP greeting within 1 s" in res.stdout
    assert "docker logs" in res.stdout and "ufw" not in res.stdout


def test_exit_codes_tell_ok_warnings_and_failures_apart() -> None:
    ok, warn, fail = Result(PASS, "a", "x"), Result(WARN, "b", "y"), Result(FAIL, "c", "z")
    assert cli.exit_code([ok]) == 0
    assert cli.exit_code([ok, warn]) == 1
    assert cli.exit_code([warn, fail, ok]) == 2


def test_alert_text_names_problems_failures_first_and_holds_no_secret() -> None:
    assert alert.alert_text([Result(PASS, "a", "x")], "smtp.example.com", ["pw"]) is None
    results = [
        Result(PASS, "dns.a", "fine"),
        Result(WARN, "tls.cert-expiry[ipv4]", "certificate expires in 9 day(s)"),
        Result(FAIL, "smtp.auth[ipv4:gmail]", "server said: bad password pw-one", "fix it"),
    ]
    text = alert.alert_text(results, "smtp.example.com", ["pw-one", ""])
    assert text is not None
    assert text.splitlines() == [
        "dkim-relay verify on smtp.example.com: 1 failed, 1 warning(s)",
        "FAIL smtp.auth[ipv4:gmail]: server said: bad password [secret]",
        "WARN tls.cert-expiry[ipv4]: certificate expires in 9 day(s)",
    ]
    many = [Result(FAIL, f"c{i}", "d") for i in range(30)]
    lines = (alert.alert_text(many, "h", []) or "").splitlines()
    assert len(lines) == alert.MAX_LINES + 2 and lines[-1].startswith("... and 18 more")


def test_bin_script_runs_from_any_directory_and_through_a_symlink(tmp_path: Path) -> None:
    # A tools/ package in the caller's directory must not shadow ours.
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "__init__.py").write_text("raise SystemExit('wrong tools package')\n")
    (tmp_path / "tools" / "__main__.py").write_text("raise SystemExit('wrong tools package')\n")
    (tmp_path / "out.json").write_text(json.dumps(outputs(vpsIpv4="127.0.0.1")))
    link = tmp_path / "dkim-relay"
    link.symlink_to(BIN)
    port = str(closed_port())
    for exe in (str(BIN), str(link)):
        res = subprocess.run(
            [exe, "verify", "--outputs", "out.json", "--skip-dns", "--port", port],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert res.returncode == 2, res.stdout + res.stderr
        assert "FAIL smtp.connect[ipv4]" in res.stdout
    res = subprocess.run([str(link), "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0 and "verify" in res.stdout and "dmarc-report" in res.stdout
    res = subprocess.run([str(link), "nope"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 3 and "invalid choice: 'nope'" in res.stderr
    res = subprocess.run([str(link)], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 3 and "required: <command>" in res.stderr


def test_bin_script_is_shellcheck_clean() -> None:
    res = subprocess.run(["shellcheck", str(BIN)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout


def test_the_old_module_path_is_gone() -> None:
    assert not (REPO / "components" / "verify.py").exists()
    assert not (REPO / "components" / "dmarc_reports.py").exists()
