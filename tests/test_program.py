"""The whole program under Pulumi's mocks: which resources exist, with which inputs."""

from __future__ import annotations

import asyncio
import json
import subprocess
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pytest

from components import host as host_mod
from pure import host_scripts as hs
from pure import relay_container as rc
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
    published = {(p["external"], p["internal"]) for p in _container(run)["ports"]}
    assert {(2525, 587), (465, 465)} <= published, "both ports published"


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


HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMockHostKeyMockHostKeyMockHostKeyMock"
VPS: dict[str, Any] = {
    "domain": "example.com",
    "vpsIpv4": "203.0.113.25",
    "vpsIpv6": "2001:db8::25",
    "acmeEmail": "postmaster@example.com",
    "sshHostKey": HOST_KEY,
}
SSH_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nmock-ssh-key\n-----END OPENSSH PRIVATE KEY-----\n"
# What the port25 script prints on a VPS whose provider blocks port 25 over IPv4.
PORT25_OUT = (
    f'{hs.PORT25_PREFIX}{{"family": "ipv4", "probe": "mx.example.net", "address": "192.0.2.25", '
    '"status": "blocked", "source": "203.0.113.25", "detail": "no answer within 5 s"}\n'
    f'{hs.PORT25_PREFIX}{{"family": "ipv6", "probe": "mx.example.net", "address": "2001:db8::9", '
    '"status": "open", "source": "2001:db8::25", "detail": "connected"}\n'
)


@dataclass
class Vps:
    """The program's calls to the VPS, replaced: what they were asked, and what they say."""

    port25_stdout: str = PORT25_OUT
    agent: str | None = None  # what agent_problem reports
    commands: list[str] = field(default_factory=list)
    preflights: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@pytest.fixture(autouse=True)
def vps(monkeypatch: pytest.MonkeyPatch) -> Vps:
    """No test here reaches a VPS or reads this machine's ssh-agent."""
    fake = Vps()

    def run_over_ssh(target: Any, key: str, command: str, **_: Any) -> Any:
        fake.commands.append(command)
        return subprocess.CompletedProcess([], 0, fake.port25_stdout, "")

    def preflight_check(target: Any, key: str, timeout: float = 10) -> str:
        fake.preflights.append(target.host)
        return "Linux 6.1"

    monkeypatch.setattr(host_mod, "run_over_ssh", run_over_ssh)
    monkeypatch.setattr(host_mod, "preflight_check", preflight_check)
    monkeypatch.setattr(host_mod, "agent_problem", lambda key, env=None: fake.agent)
    monkeypatch.setattr(pulumi.log, "warn", lambda msg, *a, **kw: fake.warnings.append(msg))
    return fake


def _commands(run: Run) -> list[Any]:
    return run.of_type("command:")


def _container(run: Run, name: str = "relay-container") -> dict[str, Any]:
    return unwrap(run.named(name).inputs)


def _provider(run: Run) -> dict[str, Any]:
    inputs = unwrap(run.named("relay-engine").inputs)
    return {k: json.loads(v) if k == "sshOpts" else v for k, v in inputs.items()}


def test_vps_stack_wires_host_then_relay(monkeypatch: pytest.MonkeyPatch, vps: Vps) -> None:
    run = run_program(monkeypatch, VPS, secrets={"sshPrivateKey": SSH_KEY})
    types = {r.type for r in run.resources}
    assert {"dkimrelay:index:RelayHost", "dkimrelay:index:SmtpRelay"} <= types
    assert "dkimrelay:index:LocalSink" not in types
    remote = [r for r in _commands(run) if r.type == "command:remote:Command"]
    assert remote and not [r for r in _commands(run) if r.type == "command:local:Command"]
    hosts = {unwrap(r.inputs["connection"])["host"] for r in remote}
    assert hosts == {"203.0.113.25"}, "every step goes over the one SSH connection"
    assert {unwrap(r.inputs["connection"])["hostKey"] for r in remote} == {HOST_KEY}
    # The relay's Docker objects, on the VPS's engine over ssh:// with the host key pinned.
    docker = {r.type: r.name for r in run.of_type("docker:")}
    assert sorted(docker.values()) == [
        "relay-container",
        "relay-image",
        "relay-network",
        "relay-queue",
    ]
    for name in docker.values():
        assert run.provider_of(name) == "relay-engine", name
    provider = _provider(run)
    assert provider["host"] == "ssh://root@203.0.113.25:22"
    assert provider["sshOpts"] == rc.ssh_opts(HOST_KEY)
    # The relay waits for Docker, the certificate and the key files on the VPS.
    assert {"relay-host-docker", "relay-host-certificate", "relay-host-secrets"} <= run.deps(
        "relay-container"
    )
    assert {"relay-host-docker", "relay-host-certificate"} <= run.deps("relay-image")
    assert _container(run)["volumes"][2] == {
        "hostPath": hs.SECRETS_DIR,
        "readOnly": True,
        "containerPath": "/run/relay-secrets",
    }
    assert vps.preflights == ["203.0.113.25"], "the SSH preflight runs on up"


def test_docker_host_config_is_the_provider_host(monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_program(
        monkeypatch,
        {**VPS, "sshUser": "deploy", "sshPort": 2222, "dockerHost": "ssh://deploy@vps.example.net"},
        secrets={"sshPrivateKey": SSH_KEY},
        preview=True,
    )
    assert _provider(run)["host"] == "ssh://deploy@vps.example.net"
    run = run_program(
        monkeypatch,
        {**VPS, "sshUser": "deploy", "sshPort": 2222},
        secrets={"sshPrivateKey": SSH_KEY},
        preview=True,
    )
    assert _provider(run)["host"] == "ssh://deploy@203.0.113.25:2222"


def test_no_secret_in_any_plain_input(monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_program(
        monkeypatch,
        VPS,
        secrets={"sshPrivateKey": SSH_KEY, "smtpPasswords": {"gmail": "pw-Secret-42"}},
    )
    secrets = ("mock-ssh-key", "pw-Secret-42", "generated-gmail", "mock-----END")
    for r in run.resources:
        plain = json.dumps(strip_secrets(r.inputs), default=str)
        for secret in secrets:
            assert secret not in plain, f"{secret} in a plain input of {r.name}"
    # They are in the inputs, wrapped: the search above would have seen them plain.
    everything = json.dumps([unwrap(r.inputs) for r in run.resources], default=str)
    assert "pw-Secret-42" in everything and "mock-ssh-key" in everything
    assert "mock-ssh-key" not in json.dumps(unwrap(run.named("relay-engine").inputs))


def test_local_stack_has_a_sink_the_relay_sends_to(monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_program(monkeypatch, LOCAL)
    types = {r.type for r in run.resources}
    assert "dkimrelay:index:LocalSink" in types and "dkimrelay:index:RelayHost" not in types
    assert _provider(run)["host"] == "unix:///var/run/docker.sock"
    sink = _container(run, "sink-container")
    assert sink["networksAdvanced"] == [{"name": "relay-network-id", "ipv4Address": "172.30.87.25"}]
    main_cf = next(
        u["content"]
        for u in _container(run)["uploads"]
        if u["file"].endswith("postfix/main-stack.cf")
    )
    assert "relayhost = [172.30.87.25]:25" in main_cf.splitlines(), "the sink is the next hop"
    assert run.provider_of("sink-container") == "relay-engine"


def test_local_stack_publishes_on_loopback_with_both_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_program(
        monkeypatch,
        {
            **LOCAL,
            "vpsIpv6": "::1",
            "smtpPort": 2587,
            "submissions465": True,
            "submissionsPort": 2465,
        },
    )
    assert _container(run)["ports"] == [
        {"ip": "127.0.0.1", "external": 2465, "internal": 465},
        {"ip": "127.0.0.1", "external": 2587, "internal": 587},
        {"ip": "::1", "external": 2465, "internal": 1465},
        {"ip": "::1", "external": 2587, "internal": 1587},
    ]


def test_submissions_port_is_the_published_465_host_port(monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_program(
        monkeypatch,
        {**VPS, "submissions465": True, "submissionsPort": 1465},
        secrets={"sshPrivateKey": SSH_KEY},
        preview=True,
    )
    ports = {(p["ip"], p["external"], p["internal"]) for p in _container(run)["ports"]}
    assert ("203.0.113.25", 1465, 465) in ports and ("2001:db8::25", 1465, 1465) in ports
    assert not [p for p in ports if p[1] == 465], "465 itself stays free for another stack"
    # The firewall opens the published host port, not 465.
    wanted = next(
        line
        for line in str(run.named("relay-host-firewall").inputs["create"]).split("\\n")
        + str(run.named("relay-host-firewall").inputs["create"]).splitlines()
        if "WANTED=(" in line
    )
    assert "1465/tcp" in wanted and "'465/tcp" not in wanted and " 465/tcp" not in wanted, wanted
    run = run_program(monkeypatch, {**VPS}, secrets={"sshPrivateKey": SSH_KEY}, preview=True)
    assert {p["internal"] for p in _container(run)["ports"]} == {587, 1587}, "465 is off"


def test_queue_volume_outputs_say_what_destroy_keeps(monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_program(monkeypatch, {**LOCAL, "relayContainerName": "relay2"})
    assert run.exports["relayContainer"] == "relay2"
    assert run.exports["queueVolume"] == "relay2-queue"
    kept = run.exports["keptOnDestroy"]
    assert "relay2-queue" in kept and "docker volume rm relay2-queue" in kept
    assert run.named("relay-queue").retain_on_delete is True


def test_vps_needs_the_ssh_host_key(monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[Run] = []

    def recorded_run() -> Run:
        runs.append(Run())
        return runs[-1]

    monkeypatch.setattr(pulumi_harness, "Run", recorded_run)
    cfg = {k: v for k, v in VPS.items() if k != "sshHostKey"}
    with pytest.raises(pulumi.RunError) as info:
        run_program(monkeypatch, cfg, secrets={"sshPrivateKey": SSH_KEY})
    text = str(info.value)
    assert "sshHostKey" in text and "pulumi config set sshHostKey" in text
    assert "ssh_host_ed25519_key.pub" in text
    assert runs and not runs[0].resources


def test_missing_ssh_agent_stops_a_vps_stack(monkeypatch: pytest.MonkeyPatch, vps: Vps) -> None:
    vps.agent = "no ssh-agent (SSH_AUTH_SOCK is not set): Fix: ssh-add"
    with pytest.raises(pulumi.RunError, match="SSH_AUTH_SOCK"):
        run_program(monkeypatch, VPS, secrets={"sshPrivateKey": SSH_KEY}, preview=True)
    vps.agent = None
    run_program(monkeypatch, VPS, secrets={"sshPrivateKey": SSH_KEY}, preview=True)


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


def test_vps_stack_checks_outbound_port_25_on_up(monkeypatch: pytest.MonkeyPatch, vps: Vps) -> None:
    config = {**VPS, "port25Probe": "mx.example.net"}
    run = run_program(monkeypatch, config, secrets={"sshPrivateKey": SSH_KEY})
    # No resource: a converged stack previews clean.
    assert not [r for r in run.resources if "port25" in r.name]
    assert vps.commands == [command_line(hs.render_port25("mx.example.net", True))]
    assert run.exports["outboundSmtp"] == hs.parse_port25(PORT25_OUT)
    assert run.exports["outboundSmtp"]["ipv4"]["status"] == "blocked"
    assert "outboundSmtp" not in run.secret_exports
    blocked = [w for w in vps.warnings if "outbound port 25 over IPv4 is blocked" in w]
    assert len(blocked) == 1 and "relayNexthop" in blocked[0]
    assert "Outbound port 25** (checked from the VPS" in run.exports["gmailGuide"]
    assert "IPv4 blocked" in run.exports["gmailGuide"]


def test_port25_not_checked_in_preview(monkeypatch: pytest.MonkeyPatch, vps: Vps) -> None:
    run = run_program(monkeypatch, VPS, secrets={"sshPrivateKey": SSH_KEY}, preview=True)
    assert vps.commands == [] and vps.preflights == []
    assert run.exports["outboundSmtp"] is None
    assert not [w for w in vps.warnings if "port 25" in w]
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
    assert "dkimrelay:index:LocalSink" not in {r.type for r in run.resources}


def test_smarthost_user_without_password_registers_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    smart = {**LOCAL, "relayNexthop": "[smart.example.net]:587", "relayNexthopUser": "me@x.net"}
    with pytest.raises(pulumi.RunError) as info:
        run_program(monkeypatch, smart)
    assert "relayNexthopPassword" in str(info.value)
    assert "pulumi config set --secret relayNexthopPassword" in str(info.value)
