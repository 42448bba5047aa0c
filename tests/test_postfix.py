"""The relay's config: the files every stack shares (relay/conf/) and the renderers of
each stack's values (pure functions), tested directly, no Docker.

The same files are run for real by tests/test_relay_e2e.py; here each policy is pinned
to the exact lines that implement it, in the config Postfix ends up with: the image's
main.cf and master.cf with the stack's values applied over them, as the entrypoint does
with postconf.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pure import postfix
from pure.postfix import PostfixSettings, SmtpUser

pytestmark = pytest.mark.unit


def settings(**kw: object) -> PostfixSettings:
    base: dict[str, object] = {
        "domain": "example.com",
        "relay_host": "smtp.example.com",
        "dkim_selector": "relay",
        "users": (SmtpUser("gmail"), SmtpUser("bob", ("bob@example.com", "@bob.example"))),
    }
    base.update(kw)
    return PostfixSettings(**base)  # type: ignore[arg-type]


CONF = Path(__file__).resolve().parent.parent / "relay" / "conf"


def conf(rel: str) -> str:
    return (CONF / rel).read_text()


def _pairs(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        assert not line[0].isspace(), f"continuation lines are not used: {line!r}"
        key, _, value = line.partition(" = ")
        if not _:
            key, value = line.rstrip(" ="), ""
        assert key not in out, f"{key} set twice"
        out[key] = value
    return out


def main_cf(**kw: object) -> dict[str, str]:
    """The effective main.cf: the image's, with the stack's values (postconf -e) over it."""
    return {**_pairs(conf("postfix/main.cf")), **_pairs(postfix.render_main_cf(settings(**kw)))}


def master(s: PostfixSettings) -> dict[str, list[str]]:
    """The effective master.cf: the image's, with the stack's ``postconf -P`` lines
    applied, and without the services main.cf's master_service_disable turns off."""
    svc = services(conf("postfix/master.cf"))
    for line in postfix.render_master_cf(s).splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, typ, assignment = line.split("/", 2)
        assert svc[name][0].split()[1] == typ, line
        param = assignment.split("=", 1)[0] + "="
        svc[name] = [o for o in svc[name] if not o.startswith(param)] + [assignment]
    cf = {**_pairs(conf("postfix/main.cf")), **_pairs(postfix.render_main_cf(s))}
    for off in cf.get("master_service_disable", "").replace(",", " ").split():
        name, typ = off.split("/")
        if name in svc and svc[name][0].split()[1] == typ:
            del svc[name]
    return svc


def services(master: str) -> dict[str, list[str]]:
    """service name -> its '-o' overrides (plus the service line itself first)."""
    out: dict[str, list[str]] = {}
    current = ""
    for line in master.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line.startswith(" "):
            out[current].append(line.strip().removeprefix("-o "))
        else:
            current = line.split()[0]
            out[current] = [line]
    return out


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("mydestination", ""),
        ("local_recipient_maps", ""),
        ("local_transport", "error:5.1.1 local delivery is disabled"),
        ("alias_maps", ""),
        ("relay_domains", ""),
        ("mynetworks", "127.0.0.0/8 [::1]/128"),
        ("smtpd_tls_security_level", "encrypt"),
        ("smtpd_tls_auth_only", "yes"),
        ("smtpd_tls_protocols", ">=TLSv1.2"),
        ("smtpd_tls_mandatory_protocols", ">=TLSv1.2"),
        ("smtp_tls_security_level", "may"),
        ("smtpd_sasl_auth_enable", "no"),
        ("smtpd_sasl_security_options", "noanonymous"),
        ("smtpd_relay_restrictions", "permit_sasl_authenticated, reject"),
        ("smtpd_sender_login_maps", "texthash:/etc/postfix/sender_login"),
        ("smtpd_milters", "unix:/run/opendkim/opendkim.sock"),
        ("milter_default_action", "tempfail"),
        ("smtpd_client_event_limit_exceptions", ""),
        # Successful logins are never counted: a user's burst is never throttled.
        ("smtpd_client_auth_rate_limit", "0"),
        ("smtpd_client_connection_rate_limit", "60"),
        # Wrong passwords: the third error in a session ends it; replies after the first wait.
        ("smtpd_hard_error_limit", "3"),
        ("smtpd_soft_error_limit", "1"),
        ("smtpd_error_sleep_time", "1s"),
        ("anvil_rate_time_unit", "60s"),
        ("allow_percent_hack", "no"),
        ("relayhost", ""),
        ("myhostname", "smtp.example.com"),
        ("maillog_file", "/dev/stdout"),
        (
            "smtpd_tls_chain_files",
            "/etc/letsencrypt/live/smtp.example.com/privkey.pem, "
            "/etc/letsencrypt/live/smtp.example.com/fullchain.pem",
        ),
    ],
)
def test_main_cf_policy(key: str, value: str) -> None:
    assert main_cf()[key] == value


def test_main_cf_never_permits_mynetworks() -> None:
    text = conf("postfix/main.cf") + conf("postfix/master.cf")
    text += postfix.render_main_cf(settings()) + postfix.render_master_cf(settings())
    assert "permit_mynetworks" not in text


def test_sender_restrictions_check_ownership_before_permitting() -> None:
    rules = [r.strip() for r in main_cf()["smtpd_sender_restrictions"].split(",")]
    assert rules.index("reject_sender_login_mismatch") < rules.index("permit_sasl_authenticated")
    assert rules[-1] == "reject"


def test_nexthop_becomes_relayhost_without_mx_lookup() -> None:
    assert main_cf(nexthop="172.30.0.1:2525")["relayhost"] == "[172.30.0.1]:2525"
    assert main_cf(nexthop="[fd00::1]:25")["relayhost"] == "[fd00::1]:25"
    assert main_cf(nexthop="sink.test:25")["relayhost"] == "[sink.test]:25"


def test_rate_limits_are_configurable() -> None:
    cf = main_cf(rate_limits=postfix.RateLimits(auth_per_unit=3, time_unit="1h"))
    assert cf["smtpd_client_auth_rate_limit"] == "3"
    assert cf["anvil_rate_time_unit"] == "1h"


def test_master_cf_has_submission_only_by_default() -> None:
    svc = master(settings())
    inet = [n for n, lines in svc.items() if lines[0].split()[1] == "inet"]
    assert inet == ["submission"]
    assert "smtp" in svc and svc["smtp"][0].split()[1] == "unix"  # outbound client only
    assert "local" not in svc and "virtual" not in svc


def test_master_cf_submission_overrides() -> None:
    svc = master(settings(submissions_465=True))
    for name in ("submission", "submissions"):
        opts = svc[name][1:]
        assert "smtpd_tls_security_level=encrypt" in opts
        assert "smtpd_tls_auth_only=yes" in opts
        assert "smtpd_sasl_auth_enable=yes" in opts
        assert "smtpd_relay_restrictions=permit_sasl_authenticated,reject" in opts
        assert "smtpd_client_restrictions=permit_sasl_authenticated,reject" in opts
        assert "milter_macro_daemon_name=ORIGINATING" in opts
    assert "smtpd_tls_wrappermode=yes" in svc["submissions"]
    assert "smtpd_tls_wrappermode=yes" not in svc["submission"]


def test_no_service_is_chrooted() -> None:
    # a chrooted smtpd cannot read the sasldb (field notes): every chroot column is n
    for line in conf("postfix/master.cf").splitlines():
        if line and not line.startswith(("#", " ")):
            assert line.split()[4] == "n", line


def test_sender_login_map() -> None:
    text = postfix.render_sender_login_map(settings())
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert lines == [
        "@bob.example bob@example.com",
        "@example.com gmail@example.com",
        # an address key also names the owners of its domain (first match wins)
        "bob@example.com bob@example.com,gmail@example.com",
    ]


def test_opendkim_conf() -> None:
    lines = set(conf("opendkim/opendkim.conf").splitlines())
    assert "Canonicalization relaxed/relaxed" in lines
    assert "OversignHeaders From" in lines
    assert "Mode s" in lines
    assert "MTA ORIGINATING" in lines
    assert "Socket local:/run/opendkim/opendkim.sock" in lines
    assert "RequireSafeKeys yes" in lines
    sign = next(ln for ln in lines if ln.startswith("SignHeaders "))
    headers = sign.split(" ", 1)[1].split(",")
    for h in (
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Date",
        "Message-Id",
        "Subject",
        "From",
        "Sender",
        "To",
        "Cc",
        "Reply-To",
        "In-Reply-To",
        "References",
    ):
        assert h in headers
    assert any(h.startswith("Resent-") for h in headers)


def test_key_and_signing_tables() -> None:
    s = settings(dkim_selector="r2024", dkim_selectors=("r2023",))
    assert postfix.render_key_table(s) == (
        "r2024._domainkey.example.com example.com:r2024:/etc/opendkim/keys/r2024.private\n"
        "r2023._domainkey.example.com example.com:r2023:/etc/opendkim/keys/r2023.private\n"
    )
    # The relay's own notices (From MAILER-DAEMON@<relay host>) are signed with d=domain.
    assert postfix.render_signing_table(s) == (
        "*@example.com r2024._domainkey.example.com\n"
        "*@smtp.example.com r2024._domainkey.example.com\n"
    )
    apex = settings(relay_host="example.com")
    assert postfix.render_signing_table(apex) == "*@example.com relay._domainkey.example.com\n"


def test_sasl_conf() -> None:
    assert conf("postfix/sasl/smtpd.conf").splitlines() == [
        "pwcheck_method: auxprop",
        "auxprop_plugin: sasldb",
        "mech_list: PLAIN LOGIN",
        "sasldb_path: /etc/sasldb2",
    ]


def test_render_config_paths() -> None:
    """Only what a stack changes is rendered; the rest is in the image (relay/conf)."""
    assert sorted(postfix.render_config(settings())) == [
        "opendkim/KeyTable",
        "opendkim/SigningTable",
        "opendkim/from_policy_values.lua",
        "postfix/main-stack.cf",
        "postfix/master-stack.cf",
        "postfix/milter_headers",
        "postfix/sender_login",
    ]


def test_stack_values_are_only_what_varies() -> None:
    """Two very different stacks differ in every rendered main.cf key or could: no
    constant policy hides in the stack file (it belongs in relay/conf/postfix/main.cf)."""
    a = _pairs(postfix.render_main_cf(settings()))
    b = _pairs(
        postfix.render_main_cf(
            settings(
                domain="other.test",
                relay_host="mx.other.test",
                nexthop="smart.other.test:587",
                nexthop_user="u",
                outbound_ipv6="any",
                submissions_465=True,
                delay_warning_time="1h",
                message_size_limit=1000,
                rate_limits=postfix.RateLimits(1, 2, 3, 4, "1h"),
            )
        )
    )
    same = {k for k in a if a[k] == b.get(k)}
    assert same == set(), same


def test_config_never_contains_secrets() -> None:
    rendered = "".join(postfix.render_config(settings()).values())
    assert "PRIVATE KEY" not in rendered
    assert not re.search(r"password", rendered, re.I)


def test_secrets_layout() -> None:
    pem = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"
    files = postfix.render_secrets("example.com", {"relay": pem}, {"gmail": "p:w d", "bob": "x"})
    assert files == {
        "smtp-users": "bob@example.com:x\ngmail@example.com:p:w d\n",
        "dkim/relay.private": pem + "\n",
    }


@pytest.mark.parametrize("pw", ["", "a\nb", "a\rb"])
def test_bad_password_refused(pw: str) -> None:
    with pytest.raises(ValueError):
        postfix.render_smtp_users("example.com", {"gmail": pw})


def test_login_name_is_full_address() -> None:
    assert postfix.login_name(SmtpUser("gmail"), "example.com") == "gmail@example.com"


# ------------------------------------------------------------------------ hardening
@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("smtpd_tls_exclude_ciphers", "aNULL, eNULL, SHA1"),
        ("smtpd_tls_mandatory_exclude_ciphers", "aNULL, eNULL, SHA1"),
        ("smtpd_tls_ciphers", "high"),
        ("smtpd_tls_mandatory_ciphers", "high"),
        ("smtp_tls_exclude_ciphers", "aNULL, eNULL"),
        # "yes" is "normalize" (accepts and delivers); only "reject" refuses.
        ("smtpd_forbid_bare_newline", "reject"),
        ("smtpd_forbid_bare_newline_exclusions", ""),
        ("header_checks", "regexp:/etc/postfix/long_lines"),
        ("body_checks", "regexp:/etc/postfix/long_lines"),
        ("milter_header_checks", "regexp:/etc/postfix/milter_headers"),
        ("milter_connect_timeout", "10s"),
        ("milter_command_timeout", "10s"),
    ],
)
def test_main_cf_hardening(key: str, value: str) -> None:
    assert main_cf()[key] == value


def test_null_sender_refused_before_permitting() -> None:
    check = "check_sender_access texthash:/etc/postfix/sender_access"
    main = main_cf()["smtpd_sender_restrictions"]
    assert main.index(check) < main.index("permit_sasl_authenticated")
    svc = master(settings(submissions_465=True))
    for name in ("submission", "submissions"):
        (opt,) = [o for o in svc[name] if o.startswith("smtpd_sender_restrictions=")]
        rules = opt.split("=", 1)[1].split(",")
        i = rules.index("check_sender_access")
        assert rules[i + 1] == "texthash:/etc/postfix/sender_access"
        assert i < rules.index("permit_sasl_authenticated")
    (rule,) = [ln for ln in conf("postfix/sender_access").splitlines() if ln.startswith("<>")]
    assert rule.startswith("<> REJECT 5.7.1 ")


def _long_line_pattern() -> re.Pattern[str]:
    (rule,) = [ln for ln in conf("postfix/long_lines").splitlines() if ln.startswith("/")]
    m = re.match(r"^/(.*)/(\w*) REJECT 5\.6\.0 ", rule)
    assert m, rule
    assert m.group(2) == "m"  # each physical line of a folded header on its own
    return re.compile(m.group(1), re.MULTILINE)


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ("x" * 998, False),
        ("x" * 999, True),
        ("x" * 5000, True),
        ("References: " + "\n ".join(["<id@example.com>"] * 200), False),
        ("References: <a@b>\n " + "y" * 999, True),
    ],
)
def test_long_line_rule(text: str, refused: bool) -> None:
    """The regexp table, read as POSIX ERE with REG_NEWLINE (Python's MULTILINE)."""
    assert bool(_long_line_pattern().search(text)) is refused


def test_milter_headers_refuse_opendkim_malformed_marker() -> None:
    text = postfix.render_milter_headers(settings())
    (rule,) = [ln for ln in text.splitlines() if ln.startswith("/")]
    assert rule.startswith("/^Authentication-Results:/ REJECT 5.7.1 ")
    assert "example.com" in rule


@pytest.mark.parametrize(
    ("auth", "with_465", "per_service"),
    [(10, False, 10), (10, True, 5), (9, True, 5), (1, True, 1), (0, True, 0)],
)
def test_auth_budget_split_across_587_and_465(auth: int, with_465: bool, per_service: int) -> None:
    s = settings(submissions_465=with_465, rate_limits=postfix.RateLimits(auth_per_unit=auth))
    assert postfix.auth_limit_per_service(s) == per_service
    svc = master(s)
    names = ("submission", "submissions") if with_465 else ("submission",)
    for name in names:
        opts = [o for o in svc[name] if o.startswith("smtpd_client_auth_rate_limit=")]
        assert opts == (
            [] if per_service == auth else [f"smtpd_client_auth_rate_limit={per_service}"]
        )
    assert main_cf(rate_limits=s.rate_limits)["smtpd_client_auth_rate_limit"] == str(auth)


def test_opendkim_runs_the_from_policy() -> None:
    lines = set(conf("opendkim/opendkim.conf").splitlines())
    assert "SetupPolicyScript /etc/opendkim/from_policy.lua" in lines
    assert "FinalPolicyScript /etc/opendkim/from_refusal.lua" in lines


def test_from_policy_tables() -> None:
    lua = postfix.render_from_policy(settings())
    assert 'local DOMAIN = "example.com"' in lua
    assert 'local KEY = "relay._domainkey.example.com"' in lua
    # no may_send_as: any address at the domain; otherwise exactly the listed ones
    assert '["gmail@example.com"] = {"@example.com"},' in lua
    assert '["bob@example.com"] = {"bob@example.com", "@bob.example"},' in lua
    refusal = conf("opendkim/from_refusal.lua")
    assert 'odkim.set_reply(ctx, "550", "5.7.1", REFUSE)' in refusal
    assert "odkim.set_result(ctx, SMFIS_REJECT)" in refusal


def test_from_policy_lowercases_and_escapes() -> None:
    s = settings(users=(SmtpUser("Carol", ('"c\\x"@Example.com',)),))
    lua = postfix.render_from_policy(s)
    assert '["carol@example.com"] = {"\\"c\\\\x\\"@example.com"},' in lua


# ------------------------------------------------------------------ outbound
@pytest.mark.parametrize(
    ("policy", "preference", "v4_only"),
    [("prefer-ipv4", "ipv4", False), ("any", "any", False), ("never", "ipv4", True)],
)
def test_outbound_ipv6_policy(policy: str, preference: str, v4_only: bool) -> None:
    cf = main_cf(outbound_ipv6=policy)
    assert cf["smtp_address_preference"] == preference
    # The whole Postfix keeps both families (inbound 587 on IPv6 stays); only the
    # outbound services are limited.
    assert cf["inet_protocols"] == "all"
    svc = master(settings(outbound_ipv6=policy))
    for name in ("smtp", "relay"):
        assert ("inet_protocols=ipv4" in svc[name]) is v4_only, svc[name]
    for name in ("submission", "bounce", "cleanup"):
        assert not any("inet_protocols" in o for o in svc[name][1:])


def test_outbound_ipv6_default_prefers_ipv4() -> None:
    assert settings().outbound_ipv6 == "prefer-ipv4"
    assert main_cf()["smtp_address_preference"] == "ipv4"


def test_helo_name_is_the_relay_host() -> None:
    cf = main_cf(relay_host="mail.example.com")
    assert cf["smtp_helo_name"] == "mail.example.com"
    assert cf["myhostname"] == "mail.example.com"


def test_smarthost_login_turns_on_sasl_and_mandatory_tls() -> None:
    cf = main_cf(nexthop="smart.example.net:587", nexthop_user="relay@example.com")
    assert cf["relayhost"] == "[smart.example.net]:587"
    assert cf["smtp_sasl_auth_enable"] == "yes"
    assert cf["smtp_sasl_password_maps"] == f"texthash:{postfix.NEXTHOP_AUTH_PATH}"
    assert cf["smtp_sasl_security_options"] == "noanonymous"
    assert cf["smtp_sasl_tls_security_options"] == "noanonymous"
    assert cf["smtp_tls_security_level"] == "encrypt"


@pytest.mark.parametrize("nexthop", [None, "172.30.87.25:25"])
def test_no_smarthost_login_stays_opportunistic(nexthop: str | None) -> None:
    cf = main_cf(nexthop=nexthop)
    assert cf["smtp_tls_security_level"] == "may"
    assert not any(k.startswith("smtp_sasl") for k in cf)


def test_smarthost_password_is_a_secret_file_in_postfix_map_form() -> None:
    pem = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"
    files = postfix.render_secrets(
        "example.com",
        {"relay": pem},
        {"gmail": "x"},
        ("[2001:db8::5]:587", "relay@example.com", "s3cret:with space"),
    )
    assert files["nexthop-auth"] == "[2001:db8::5]:587 relay@example.com:s3cret:with space\n"
    assert "nexthop-auth" not in postfix.render_secrets("example.com", {"relay": pem}, {"g": "x"})
    rendered = "".join(
        postfix.render_config(
            settings(nexthop="[2001:db8::5]:587", nexthop_user="relay@example.com")
        ).values()
    )
    assert "s3cret" not in rendered


@pytest.mark.parametrize("pw", ["", " lead", "trail ", "a\nb", "a\rb", "a\0b"])
def test_bad_smarthost_password_refused(pw: str) -> None:
    with pytest.raises(ValueError):
        postfix.render_nexthop_auth("smart.example.net:587", "relay@example.com", pw)


def test_notices_are_warned_filtered_and_signed() -> None:
    cf = main_cf(delay_warning_time="2h")
    assert cf["delay_warning_time"] == "2h"
    assert main_cf()["delay_warning_time"] == "4h"
    # Postfix's own bounces and delay notices pass through the milter (signing).
    assert cf["internal_mail_filter_classes"] == "bounce"
    assert cf["non_smtpd_milters"] == "$smtpd_milters"
    lua = postfix.render_from_policy(settings())
    assert 'local NOTICE_FROM = "mailer-daemon@smtp.example.com"' in lua
    # Only without a login and with the null envelope sender.
    assert 'if login == "" and (envfrom == "<>" or envfrom == "") and addr == NOTICE_FROM' in conf(
        "opendkim/from_policy.lua"
    )


# ------------------------------------------------------------------ files in the image
def test_shared_values_match_the_module_constants() -> None:
    cf = main_cf()
    assert cf["smtpd_tls_exclude_ciphers"] == postfix.TLS_EXCLUDED_CIPHERS
    assert cf["smtpd_milters"] == f"unix:{postfix.OPENDKIM_SOCKET}"
    assert cf["smtpd_hard_error_limit"] == str(postfix.AUTH_FAILURES_PER_SESSION)
    assert f"/^.{{{postfix.MAX_LINE + 1}}}/m REJECT" in conf("postfix/long_lines")
    sign = next(
        ln for ln in conf("opendkim/opendkim.conf").splitlines() if ln.startswith("SignHeaders ")
    )
    assert tuple(sign.split(" ", 1)[1].split(",")) == postfix.SIGNED_HEADERS
    assert f"sasldb_path: {postfix.SASLDB_PATH}" in conf("postfix/sasl/smtpd.conf")


def test_opendkim_signs_only_and_never_resolves() -> None:
    """relay/preload/novbr.c gives OpenDKIM no VBR resolver: safe only while it signs only
    and no setting hands that resolver work (a verify mode, VBR, resolver settings)."""
    keys = {ln.split()[0] for ln in conf("opendkim/opendkim.conf").splitlines() if ln.strip()}
    assert "Mode s" in conf("opendkim/opendkim.conf").splitlines()
    used = {"Nameservers", "TrustAnchorFile", "ResolverConfiguration"} & keys
    assert used == set() and not [k for k in keys if k.startswith("VBR-")], keys


def luacheck(*files: Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("luacheck")
    assert tool, "luacheck missing: run scripts/setup.d/20-vps.sh (Debian's lua-check)"
    return subprocess.run(
        [tool, "--no-color", "--config", str(CONF / "opendkim" / ".luacheckrc"), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_lua_policy_scripts_lint_clean(tmp_path: Path) -> None:
    """The scripts as files, and from_policy.lua as OpenDKIM gets it: behind the values."""
    scripts = [CONF / "opendkim" / "from_policy.lua", CONF / "opendkim" / "from_refusal.lua"]
    s = settings(users=(SmtpUser("Carol", ('"c\\x"@Example.com',)), SmtpUser("gmail")))
    whole = tmp_path / "from_policy.lua"
    whole.write_text(postfix.render_from_policy(s) + scripts[0].read_text())
    res = luacheck(*scripts, whole)
    assert res.returncode == 0, res.stdout + res.stderr


def test_luacheck_reports_a_fault(tmp_path: Path) -> None:
    """The lint above can fail: a misspelt OpenDKIM call (an unknown global) is reported."""
    bad = tmp_path / "bad.lua"
    bad.write_text('odkm.set_reply(ctx, "550", "5.7.1", "x")\n')
    res = luacheck(bad)
    assert res.returncode != 0 and "odkm" in res.stdout, res.stdout
