"""Several domains on one relay and who may send as what, under Pulumi's mocks: keys,
records (Cloudflare zones and the zone snippet), outputs, the relay's rendered config."""

from __future__ import annotations

import random
import string
from typing import Any

import pulumi
import pytest

from pure.config import ConfigError, load_config
from tests import pulumi_harness
from tests.pulumi_harness import Run, run_program, unwrap

pytestmark = pytest.mark.unit

LOCAL: dict[str, Any] = {
    "domain": "a.example",
    "vpsIpv4": "127.0.0.1",
    "deployTarget": "local",
    "tlsCertDir": "le",
}


def _domain_pair() -> tuple[str, str]:
    """Two domains made up for this run, so nothing depends on particular names."""
    rnd = random.Random()

    def label() -> str:
        return "".join(rnd.choice(string.ascii_lowercase) for _ in range(8))

    return f"{label()}.example", f"{label()}.test"


def _keys(run: Run) -> dict[str, dict[str, Any]]:
    return {
        r.name: r.inputs
        for r in run.of_type("pulumi-python:dynamic:Resource")
        if "bits" in r.inputs
    }


def _dns(run: Run) -> dict[str, dict[str, Any]]:
    return {r.name: unwrap(r.inputs) for r in run.of_type("cloudflare:index/dnsRecord:DnsRecord")}


def test_manual_snippet_has_a_block_and_records_per_domain(monkeypatch: pytest.MonkeyPatch) -> None:
    one, two = _domain_pair()
    run = run_program(
        monkeypatch,
        {
            **LOCAL,
            "domain": one,
            "extraDomains": [{"domain": two, "dkimSelector": "second", "dmarcPolicy": "reject"}],
        },
    )
    assert run.exports["domains"] == [one, two]
    assert run.exports["dkimDnsValuesByDomain"] == {
        one: {"relay": "v=DKIM1; k=rsa; p=MOCKrelay"},
        two: {"second": f"v=DKIM1; k=rsa; p=MOCKsecond-{two}"},
    }
    # The single-domain outputs keep meaning the primary.
    assert run.exports["dkimDnsValue"] == "v=DKIM1; k=rsa; p=MOCKrelay"
    assert run.exports["dkimSelector"] == "relay"
    snippet = run.exports["zoneSnippet"]
    assert f"$ORIGIN {one}." in snippet and f"$ORIGIN {two}." in snippet
    block_two = snippet.split(f"$ORIGIN {two}.")[1]
    assert f"second._domainkey.{two}.\t3600\tIN\tTXT" in block_two
    assert f'_dmarc.{two}.\t3600\tIN\tTXT\t"v=DMARC1; p=reject;' in block_two
    assert f'{two}.\t3600\tIN\tTXT\t"v=spf1 ip4:127.0.0.1 ~all"' in block_two
    # The relay's address lives in the domain that holds its name, once.
    assert snippet.count(f"smtp.{one}.\t3600\tIN\tA\t127.0.0.1") == 1
    names = {(r["type"], r["name"]) for r in run.exports["dnsRecords"]}
    assert {("TXT", two), ("TXT", f"_dmarc.{two}"), ("TXT", one), ("A", f"smtp.{one}")} <= names


def test_cloudflare_records_go_to_each_domains_own_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    one, two = _domain_pair()
    zones = {one: "zone-one", two: "zone-two"}

    def call(self: Any, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[Any]]:
        self.calls.append((args.token, dict(args.args)))
        name = args.args["filter"]["name"]
        return {"id": zones[name], "account": {"id": "acct"}}, []

    monkeypatch.setattr(pulumi_harness.Mocks, "call", call)
    run = run_program(
        monkeypatch,
        {
            **LOCAL,
            "domain": one,
            "vpsIpv4": "203.0.113.25",
            "dnsProvider": "cloudflare",
            "cloudflare:apiToken": "dummy-token-for-mocks",
            "forwardTo": "me@gmail.com",
            "extraDomains": [{"domain": two}],
        },
    )
    looked_up = sorted(c[1]["filter"]["name"] for c in run.calls)
    assert looked_up == sorted([one, two])
    by_zone: dict[str, set[tuple[str, str]]] = {}
    for rec in _dns(run).values():
        by_zone.setdefault(rec["zoneId"], set()).add((rec["type"], rec["name"]))
    assert by_zone["zone-one"] == {
        ("A", f"smtp.{one}"),
        ("TXT", one),
        ("TXT", f"relay._domainkey.{one}"),
        ("TXT", f"_dmarc.{one}"),
    }
    assert by_zone["zone-two"] == {
        ("TXT", two),
        ("TXT", f"relay._domainkey.{two}"),
        ("TXT", f"_dmarc.{two}"),
    }
    # Email Routing (forwardTo) stays the primary's: its SPF include too.
    routing = run.of_type("cloudflare:index/emailRouting")
    assert routing and {unwrap(r.inputs).get("zoneId") for r in routing} <= {"zone-one", None}
    spf = {r["name"]: r["content"] for r in _dns(run).values() if r["name"] in (one, two)}
    assert "_spf.mx.cloudflare.net" in spf[one] and "_spf.mx.cloudflare.net" not in spf[two]
    # The primary's resources keep the names a single-domain stack has.
    assert {"mail-dns-a-relay", "mail-dns-spf", "mail-dns-dkim-relay", "mail-dns-dmarc"} <= set(
        _dns(run)
    )
    assert f"mail-dns-{two}-dkim-relay" in _dns(run)


def _rotation_view(run: Run) -> tuple[dict[str, Any], dict[str, Any]]:
    keys = {n: (i.get("domain"), i["selector"]) for n, i in _keys(run).items()}
    return keys, run.exports["dkimDnsValuesByDomain"]


@pytest.mark.parametrize("rotated", ["primary", "extra"])
def test_rotating_one_domain_leaves_the_other_untouched(
    monkeypatch: pytest.MonkeyPatch, rotated: str
) -> None:
    one, two = _domain_pair()
    before: dict[str, Any] = {
        **LOCAL,
        "domain": one,
        "dkimSelector": "p1",
        "extraDomains": [{"domain": two, "dkimSelector": "e1"}],
    }
    after = dict(before)
    if rotated == "primary":
        after.update(dkimSelector="p2", dkimRetiredSelectors=["p1"])
    else:
        after["extraDomains"] = [
            {"domain": two, "dkimSelector": "e2", "dkimRetiredSelectors": ["e1"]}
        ]
    run0 = run_program(monkeypatch, before)
    run1 = run_program(monkeypatch, after)
    keys0, values0 = _rotation_view(run0)
    keys1, values1 = _rotation_view(run1)
    other, changed = (two, one) if rotated == "primary" else (one, two)
    assert values1[other] == values0[other], "the other domain's keys are the same"
    assert {n: k for n, k in keys1.items() if (k[0] or one) == other} == {
        n: k for n, k in keys0.items() if (k[0] or one) == other
    }
    assert set(values1[changed]) == set(values0[changed]) | {"p2" if changed == one else "e2"}
    snippet0, snippet1 = run0.exports["zoneSnippet"], run1.exports["zoneSnippet"]
    block = f"$ORIGIN {other}."
    assert (
        snippet1.split(block)[1].split("$ORIGIN")[0] == snippet0.split(block)[1].split("$ORIGIN")[0]
    )


def test_a_single_domain_stack_keeps_every_name_and_input(monkeypatch: pytest.MonkeyPatch) -> None:
    """What an upgraded single-domain stack registers: the names and inputs it had before
    there were several domains (the engine test previews the real upgrade)."""
    run = run_program(monkeypatch, {**LOCAL, "smtpUsers": ["gmail", "phone"]})
    keys = _keys(run)
    assert set(keys) == {"dkim-relay-key"}
    inputs = keys["dkim-relay-key"]
    assert {k: v for k, v in inputs.items() if v is not None and not k.startswith("__")} == {
        "selector": "relay",
        "bits": 2048,
    }
    components = {r.name for r in run.resources if r.type.startswith("dkimrelay:")}
    assert {"dkim-relay", "mail-dns", "smtp-credentials", "relay"} <= components
    assert not [n for n in components if n.startswith("mail-dns-")]
    assert "domains" in run.exports and run.exports["domains"] == ["a.example"]


def test_restricted_user_reaches_the_relay_config(monkeypatch: pytest.MonkeyPatch) -> None:
    one, two = _domain_pair()
    run = run_program(
        monkeypatch,
        {
            **LOCAL,
            "domain": one,
            "extraDomains": [{"domain": two}],
            "smtpUsers": ["gmail", {"name": "alice", "sendAs": [f"@{one}", f"bob@{two}"]}],
        },
    )
    assert run.exports["smtpUsernames"] == [f"gmail@{one}", f"alice@{one}"]
    assert run.exports["smtpSendAs"] == {
        f"gmail@{one}": [f"@{one}", f"@{two}"],
        f"alice@{one}": [f"@{one}", f"bob@{two}"],
    }
    container = run.named("relay-container")
    uploads = {u["file"]: u["content"] for u in unwrap(container.inputs)["uploads"]}
    sender_login = uploads["/etc/relay/config/postfix/sender_login"]
    assert f"@{one} gmail@{one},alice@{one}\n" in sender_login
    assert f"@{two} gmail@{one}\n" in sender_login
    assert f"bob@{two} alice@{one},gmail@{one}\n" in sender_login
    assert f"*@{two} relay._domainkey.{two}\n" in uploads["/etc/relay/config/opendkim/SigningTable"]
    assert (
        f"/etc/opendkim/keys/relay._domainkey.{two}.private"
        in uploads["/etc/relay/config/opendkim/KeyTable"]
    )
    guide = run.exports["gmailGuide"]
    assert f"bob@{two}" in guide and f"alice@{one}" in guide


def test_report_address_in_another_domain_needs_its_authorization(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    one, two = _domain_pair()
    run = run_program(
        monkeypatch,
        {
            **LOCAL,
            "domain": one,
            # The extra domain reports to the primary (owned: published), the primary to
            # an outside service (not owned: the guide says what its owner must publish).
            "dmarcRua": ["mailto:dmarc@reports.example.net"],
            "extraDomains": [{"domain": two, "dmarcRua": [f"mailto:dmarc@{one}"]}],
        },
    )
    records = {(r["type"], r["name"]): r["content"] for r in run.exports["dnsRecords"]}
    assert records[("TXT", f"{two}._report._dmarc.{one}")] == '"v=DMARC1"'
    assert f"{two}._report._dmarc.{one}." in run.exports["zoneSnippet"].split(f"$ORIGIN {two}.")[0]
    assert run.exports["dmarcReportAuthorizations"] == [
        {
            "domain": one,
            "reportDomain": "reports.example.net",
            "name": f"{one}._report._dmarc.reports.example.net",
            "value": "v=DMARC1",
        }
    ]
    assert f"{one}._report._dmarc.reports.example.net" in run.exports["gmailGuide"]


def test_same_domain_reports_need_no_authorization() -> None:
    cfg = load_config(
        {**LOCAL, "dmarcRua": ["mailto:d@a.example", "mailto:d@sub.a.example"]},
    )
    assert cfg.report_authorizations() == []


@pytest.mark.parametrize(
    ("extra", "key", "words"),
    [
        ({"extraDomains": [{"domain": "a.example"}]}, "extraDomains", "is the primary domain"),
        (
            {"extraDomains": [{"domain": "b.example"}, {"domain": "B.example."}]},
            "extraDomains",
            "twice",
        ),
        (
            {"smtpUsers": [{"name": "alice", "sendAs": ["alice@c.example"]}]},
            "smtpUsers",
            "outside the stack's domains",
        ),
        ({"relayHost": "smtp.c.example"}, "relayHost", "is outside a.example"),
        (
            {"smtpUsers": [{"name": "alice", "sendAs": ["alice"]}]},
            "smtpUsers",
            "smtpUsers[0].sendAs[0]",
        ),
        (
            {"extraDomains": [{"domain": "b.example", "dkimSelector": "-"}]},
            "extraDomains",
            "DNS label",
        ),
    ],
)
def test_bad_domains_and_senders_are_refused_naming_the_key(
    extra: dict[str, Any], key: str, words: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_config({**LOCAL, "extraDomains": [{"domain": "b.example"}], **extra})
    assert any(
        k == key and words in text and ("Fix" in text or "Remove" in text)
        for k, text in err.value.problems
    ), err.value.problems


def test_relay_host_may_be_in_an_extra_domain(monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_program(
        monkeypatch,
        {**LOCAL, "relayHost": "smtp.b.example", "extraDomains": [{"domain": "b.example"}]},
    )
    snippet = run.exports["zoneSnippet"]
    block_b = snippet.split("$ORIGIN b.example.")[1]
    assert "smtp.b.example.\t3600\tIN\tA\t127.0.0.1" in block_b
    assert "\tA\t" not in snippet.split("$ORIGIN b.example.")[0]


def test_readme_example_has_two_domains_and_a_restricted_user() -> None:
    import re

    import yaml

    readme = (pulumi_harness.ROOT / "README.md").read_text()
    section = readme.split("### Several domains, and who may send as what", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block, "the README's example"
    raw = yaml.safe_load(block.group(1))["config"]
    cfg = load_config(
        {
            **{k.split(":", 1)[1]: v for k, v in raw.items()},
            "vpsIpv4": "203.0.113.25",
            "deployTarget": "local",
            "tlsCertDir": "le",
        }
    )
    assert len(cfg.domains) == 2
    assert cfg.send_as == {"alice": ["alice@example.org", "@example.com"]}
    assert cfg.report_authorizations() == [("example.org", "example.com")]


def test_key_files_of_every_domain_in_one_flat_folder_the_entrypoint_reads() -> None:
    from pure import postfix

    pem = "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n"
    files = postfix.render_secrets(
        "a.example",
        {"relay": pem},
        {"gmail": "pw"},
        extra_dkim_keys={"b.example": {"two": pem, "one": pem}},
    )
    dkim = sorted(f for f in files if f.startswith("dkim/"))
    # relay/entrypoint.sh installs dkim/*.private (no sub-folders); the primary's name
    # is the one it had before there were several domains.
    assert dkim == [
        "dkim/one._domainkey.b.example.private",
        "dkim/relay.private",
        "dkim/two._domainkey.b.example.private",
    ]
    settings = postfix.PostfixSettings(
        domain="a.example",
        relay_host="smtp.a.example",
        dkim_selector="relay",
        users=(postfix.SmtpUser("gmail"),),
        extra_domains=(postfix.SigningDomain("b.example", "two", ("one",)),),
    )
    table = postfix.render_key_table(settings)
    for f in dkim:
        assert f"/etc/opendkim/keys/{f.removeprefix('dkim/')}\n" in table


def test_host_layout_names_the_same_key_files_as_the_relay() -> None:
    from pure import host_scripts as hs
    from pure import postfix

    assert hs.secret_file_path("dkim_key", "relay") == "dkim/" + postfix.key_file("a", "relay")
    assert hs.secret_file_path(
        "extra_domain_dkim_key", "two", "B.example"
    ) == "dkim/" + postfix.key_file("B.example", "two", primary=False)


def test_notices_are_signed_by_the_domain_that_holds_the_relays_name() -> None:
    from pure import postfix

    settings = postfix.PostfixSettings(
        domain="a.example",
        relay_host="smtp.b.example",
        dkim_selector="relay",
        users=(postfix.SmtpUser("gmail"),),
        extra_domains=(postfix.SigningDomain("b.example", "two"),),
    )
    # MAILER-DAEMON@smtp.b.example aligns (relaxed) with d=b.example, not with a.example.
    assert postfix.render_signing_table(settings).splitlines() == [
        "*@a.example relay._domainkey.a.example",
        "*@b.example two._domainkey.b.example",
        "*@smtp.b.example two._domainkey.b.example",
    ]
