"""The whole program under Pulumi's mocks: which resources exist, with which inputs."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pulumi
import pytest

from pure import host_scripts as hs
from pure.shell import command_line
from tests import pulumi_harness
from tests.pulumi_harness import PRIVATE_MARKER, Run, run_program, strip_secrets, unwrap

pytestmark = pytest.mark.unit

LOCAL: dict[str, Any] = {
    "domain": "example.com",
    "vpsIpv4": "127.0.0.1",
    "deployTarget": "local",
    "tlsCertDir": "/tmp/le",
}
CLOUDFLARE: dict[str, Any] = {
    **LOCAL,
    "vpsIpv4": "203.0.113.25",
    "vpsIpv6": "2001:db8::25",
    "dnsProvider": "cloudflare",
    "cloudflareZoneId": "zone123",
    "cloudflare:apiToken": "dummy-token-for-mocks",
}


def dns_records(run: Run) -> list[Any]:
    return run.of_type("cloudflare:index/dnsRecord:DnsRecord")


def test_manual_mode_creates_nothing_on_cloudflare(monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_program(monkeypatch, LOCAL)
    assert not [r for r in run.resources if "cloudflare" in r.type], run.resources
    assert not run.calls
    records = run.exports["dnsRecords"]
    assert {(r["type"], r["name"]) for r in records} == {
        ("A", "smtp.example.com"),
        ("TXT", "example.com"),
        ("TXT", "relay._domainkey.example.com"),
        ("TXT", "_dmarc.example.com"),
    }
    assert "relay._domainkey.example.com.\t3600\tIN\tTXT" in run.exports["zoneSnippet"]
    assert run.exports["dkimDnsValue"] == "v=DKIM1; k=rsa; p=MOCKrelay"


def test_cloudflare_records_with_ipv6(monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_program(monkeypatch, CLOUDFLARE)
    recs = {(r.inputs["type"], r.inputs["name"]): r.inputs for r in dns_records(run)}
    assert set(recs) == {
        ("A", "smtp.example.com"),
        ("AAAA", "smtp.example.com"),
        ("TXT", "example.com"),
        ("TXT", "relay._domainkey.example.com"),
        ("TXT", "_dmarc.example.com"),
    }
    for r in recs.values():
        assert r["zoneId"] == "zone123" and r["ttl"] == 3600
    assert recs[("A", "smtp.example.com")]["content"] == "203.0.113.25"
    assert recs[("A", "smtp.example.com")]["proxied"] is False, "mail must not go through the CDN"
    assert (
        recs[("TXT", "example.com")]["content"] == '"v=spf1 ip4:203.0.113.25 ip6:2001:db8::25 ~all"'
    )
    assert (
        recs[("TXT", "relay._domainkey.example.com")]["content"] == '"v=DKIM1; k=rsa; p=MOCKrelay"'
    )
    # what is exported is exactly what is published
    exported = {(r["type"], r["name"]): r["content"] for r in run.exports["dnsRecords"]}
    assert exported == {k: v["content"] for k, v in recs.items()}
    assert not run.of_type("cloudflare:index/emailRouting")


def test_cloudflare_without_ipv6_has_no_aaaa(monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_program(monkeypatch, {**CLOUDFLARE, "vpsIpv6": ""})
    assert "AAAA" not in {r.inputs["type"] for r in dns_records(run)}


def test_forwarding_sets_up_email_routing(monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_program(monkeypatch, {**CLOUDFLARE, "forwardTo": "me@gmail.com"})
    types = {r.type for r in run.of_type("cloudflare:index/emailRouting")}
    assert types == {
        "cloudflare:index/emailRoutingSettings:EmailRoutingSettings",
        "cloudflare:index/emailRoutingDns:EmailRoutingDns",
        "cloudflare:index/emailRoutingAddress:EmailRoutingAddress",
        "cloudflare:index/emailRoutingCatchAll:EmailRoutingCatchAll",
    }
    address = run.of_type("cloudflare:index/emailRoutingAddress")[0].inputs
    assert address == {"accountId": "account-from-lookup", "email": "me@gmail.com"}
    catch_all = run.of_type("cloudflare:index/emailRoutingCatchAll")[0].inputs
    assert catch_all["actions"] == [{"type": "forward", "values": ["me@gmail.com"]}]
    spf = [r.inputs["content"] for r in dns_records(run) if r.inputs["name"] == "example.com"]
    assert spf == ['"v=spf1 ip4:203.0.113.25 ip6:2001:db8::25 include:_spf.mx.cloudflare.net ~all"']


def test_zone_looked_up_by_domain_when_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = {k: v for k, v in CLOUDFLARE.items() if k != "cloudflareZoneId"}
    run = run_program(monkeypatch, cfg)
    assert run.calls[0][0] == "cloudflare:index/getZone:getZone"
    assert run.calls[0][1]["filter"]["name"] == "example.com"
    assert {r.inputs["zoneId"] for r in dns_records(run)} == {"zone-from-lookup"}


def test_retired_selector_keeps_its_key_and_record(monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_program(
        monkeypatch, {**CLOUDFLARE, "dkimSelector": "new", "dkimRetiredSelectors": ["old"]}
    )
    keys = [r for r in run.of_type("pulumi-python:dynamic:Resource") if "bits" in r.inputs]
    assert sorted(r.name for r in keys) == ["dkim-new-key", "dkim-old-key"]
    names = {r.inputs["name"] for r in dns_records(run)}
    assert {"new._domainkey.example.com", "old._domainkey.example.com"} <= names
    assert run.exports["dkimSelector"] == "new"
    assert run.exports["dkimDnsValue"] == "v=DKIM1; k=rsa; p=MOCKnew"


def test_secrets_stay_secret_and_private_key_is_never_exported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = run_program(monkeypatch, {**LOCAL, "smtpUsers": ["gmail", "phone"]})
    assert {"smtpPassword", "smtpPasswords"} <= run.secret_exports
    assert "dkimDnsValue" not in run.secret_exports
    assert run.exports["smtpPasswords"] == {
        "gmail@example.com": "generated-gmail",
        "phone@example.com": "generated-phone",
    }
    assert run.exports["smtpUsername"] == "gmail@example.com"
    assert PRIVATE_MARKER not in json.dumps(run.exports)


def test_given_password_is_used_and_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_program(monkeypatch, LOCAL, secrets={"smtpPasswords": {"gmail": "my-own-password"}})
    assert run.exports["smtpPassword"] == "my-own-password"
    assert "smtpPassword" in run.secret_exports


def test_config_is_decoded_by_the_type_the_model_declares(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pulumi hands every value over as text; "2024" must stay a string, 50 an integer.
    run = run_program(
        monkeypatch,
        {
            **LOCAL,
            "dkimSelector": "2024",
            "dmarcPct": 50,
            "spfExtra": ["mx"],
            "smtpPort": 2525,
            "submissions465": True,
        },
    )
    assert run.exports["dkimSelector"] == "2024" and run.exports["smtpPort"] == 2525
    txt = {r["name"]: r["content"] for r in run.exports["dnsRecords"] if r["type"] == "TXT"}
    assert "pct=50" in txt["_dmarc.example.com"]
    assert " mx " in txt["example.com"]
    assert "2024._domainkey.example.com" in txt
    scripts = json.dumps([r.inputs for r in _commands(run)], default=str)
    assert "2525:587" in scripts and "465:465" in scripts, "both ports published"


def test_bad_config_registers_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[Run] = []

    def recorded_run() -> Run:
        runs.append(Run())
        return runs[-1]

    monkeypatch.setattr(pulumi_harness, "Run", recorded_run)
    bad = {
        "dmarcPct": 300,
        "dkimSelector": "no good",
        "smtpPort": "abc",
        "submissions465": "yes",
        "spfExtra": "mx",
    }
    with pytest.raises(pulumi.RunError) as info:
        run_program(monkeypatch, {**LOCAL, **bad})
    text = str(info.value)
    assert f"has {len(bad)} problems; nothing was created or changed" in text
    assert "smtpPort: 'abc' is not a TCP port" in text
    for key in bad:
        assert f"  - {key}: " in text, key
    # Let any registration already started reach the mocks before looking.
    loop = asyncio.get_event_loop()
    loop.run_until_complete(asyncio.gather(*asyncio.all_tasks(loop), return_exceptions=True))
    assert runs and not runs[0].resources, runs[0].resources


VPS: dict[str, Any] = {
    "domain": "example.com",
    "vpsIpv4": "203.0.113.25",
    "vpsIpv6": "2001:db8::25",
    "acmeEmail": "postmaster@example.com",
}
SSH_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nmock-ssh-key\n-----END OPENSSH PRIVATE KEY-----\n"


def _commands(run: Run) -> list[Any]:
    return run.of_type("command:")


def test_vps_stack_wires_host_then_relay(monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_program(monkeypatch, VPS, secrets={"sshPrivateKey": SSH_KEY}, preview=True)
    types = {r.type for r in run.resources}
    assert {"dkimrelay:index:RelayHost", "dkimrelay:index:SmtpRelay"} <= types
    assert "dkimrelay:index:LocalSink" not in types
    remote = [r for r in _commands(run) if r.type == "command:remote:Command"]
    assert remote and not [r for r in _commands(run) if r.type == "command:local:Command"]
    hosts = {unwrap(r.inputs["connection"])["host"] for r in remote}
    assert hosts == {"203.0.113.25"}, "every step goes over the one SSH connection"
    assert "relay-deploy" in {r.name for r in remote}, "the relay runs on the VPS engine"


def test_no_secret_in_any_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_program(
        monkeypatch,
        VPS,
        secrets={"sshPrivateKey": SSH_KEY, "smtpPasswords": {"gmail": "pw-Secret-42"}},
        preview=True,
    )
    for r in _commands(run):
        for field in ("create", "update", "delete", "environment", "triggers"):
            text = json.dumps(r.inputs.get(field), default=str)
            for secret in ("mock-ssh-key", "pw-Secret-42", "generated-gmail", "mock-----END"):
                assert secret not in text, f"{secret} in {r.name}.{field}"


def test_local_stack_has_a_sink_the_relay_sends_to(monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_program(monkeypatch, LOCAL)
    types = {r.type for r in run.resources}
    assert "dkimrelay:index:LocalSink" in types and "dkimrelay:index:RelayHost" not in types
    scripts = json.dumps([r.inputs for r in _commands(run)], default=str)
    assert "172.30.87.25" in scripts, "the sink sits at .25 of the relay network"


def test_guide_is_plain_and_names_the_login(monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_program(monkeypatch, LOCAL)
    guide = run.exports["gmailGuide"]
    assert "gmailGuide" not in run.secret_exports
    assert "smtp.example.com" in guide and "gmail@example.com" in guide
    assert "generated-gmail" not in guide
    assert "relay._domainkey.example.com" in guide, "manual DNS: the records to add"


def test_guide_names_the_ptr_of_each_vps_address(monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_program(monkeypatch, {**LOCAL, "vpsIpv6": "::1"})
    guide = run.exports["gmailGuide"]
    assert "Reverse DNS" in guide
    for key in ("vpsIpv4", "vpsIpv6"):
        address = run.exports[key]
        line = next((ln for ln in guide.splitlines() if address in ln and "|" in ln), "")
        assert "smtp.example.com" in line, f"no PTR row for {key} {address}"


def test_vps_stack_checks_outbound_port_25(monkeypatch: pytest.MonkeyPatch) -> None:
    config = {**VPS, "port25Probe": "mx.example.net"}
    run = run_program(monkeypatch, config, secrets={"sshPrivateKey": SSH_KEY}, preview=True)
    step = next(r for r in _commands(run) if r.name == "relay-host-port25")
    assert step.inputs["create"] == command_line(hs.render_port25("mx.example.net", True))
    assert "outboundSmtp" in run.exports
    local = run_program(monkeypatch, LOCAL)
    assert "outboundSmtp" not in local.exports, "nothing checked on this machine"
    assert "Outbound port 25" in local.exports["gmailGuide"]


def test_smarthost_password_is_a_secret_key_file(monkeypatch: pytest.MonkeyPatch) -> None:
    password = "smart-Host-pw-77"
    smart = {**LOCAL, "relayNexthop": "[smart.example.net]:587", "relayNexthopUser": "me@x.net"}
    run = run_program(monkeypatch, smart, secrets={"relayNexthopPassword": password})
    (writer,) = [r for r in _commands(run) if r.name == "relay-secrets"]
    assert strip_secrets(writer.inputs["stdin"]) == "<secret>"
    files = json.loads(unwrap(writer.inputs["stdin"]))
    assert files["nexthop-auth"] == f"[smart.example.net]:587 me@x.net:{password}\n"
    for r in run.resources:
        assert password not in json.dumps(strip_secrets(r.inputs), default=str), r.name
    assert password not in json.dumps(run.exports, default=str)


def test_smarthost_user_without_password_registers_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    smart = {**LOCAL, "relayNexthop": "[smart.example.net]:587", "relayNexthopUser": "me@x.net"}
    with pytest.raises(pulumi.RunError) as info:
        run_program(monkeypatch, smart)
    assert "relayNexthopPassword" in str(info.value)
    assert "pulumi config set --secret relayNexthopPassword" in str(info.value)
