"""vpsProvider hetzner without a cloud: the config rules, the cloud-init user data (read
back by PyYAML and cryptography), the firewall rules, and the whole program under
Pulumi's mocks (which resources, wired to what, with which secrets)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pulumi
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from components import cloud_server
from components import host as host_mod
from pure import cloud_server as cs
from pure import relay_container as rc
from pure.config import ConfigError, load_config
from tests.pulumi_harness import (
    HOST_PRIVATE_MARKER,
    MOCK_SERVER_HOST_KEY,
    MOCK_SERVER_IPV4,
    MOCK_SERVER_IPV6,
    Mocks,
    Run,
    run_program,
    strip_secrets,
    unwrap,
)

pytestmark = pytest.mark.unit

HETZNER: dict[str, Any] = {
    "domain": "example.com",
    "vpsProvider": "hetzner",
    "acmeEmail": "postmaster@example.com",
}
CLIENT_KEY = ed25519.Ed25519PrivateKey.generate()
SSH_KEY = CLIENT_KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
).decode()
SSH_PUBLIC = (
    CLIENT_KEY.public_key()
    .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    .decode()
)
TOKEN = "t" * 64
SECRETS = {"sshPrivateKey": SSH_KEY, "hcloud:token": TOKEN}


def problems(raw: dict[str, Any], secrets: set[str]) -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        load_config(raw, secrets)
    return dict(err.value.problems)


# ---- config ---------------------------------------------------------------------------
def test_hetzner_needs_no_address_or_host_key() -> None:
    cfg = load_config(HETZNER, {"sshPrivateKey", "hcloud:token"})
    assert cfg.cloud_server and cfg.vps_ipv4 is None and cfg.ssh_host_key is None
    assert (cfg.hetzner_location, cfg.hetzner_server_type, cfg.hetzner_image) == (
        "fsn1",
        "cx22",
        "debian-12",
    )
    assert cfg.ssh_allow_from == ["0.0.0.0/0", "::/0"]
    assert cfg.with_addresses("192.0.2.1", "2001:db8::1").spf_terms == [
        "ip4:192.0.2.1",
        "ip6:2001:db8::1",
    ]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("vpsIpv4", "203.0.113.25"),
        ("vpsIpv6", "2001:db8::25"),
        ("sshHostKey", "ssh-ed25519 AAAA"),
        ("sshHost", "vps.example.net"),
    ],
)
def test_hetzner_refuses_what_the_server_gives(key: str, value: str) -> None:
    found = problems({**HETZNER, key: value}, {"sshPrivateKey", "hcloud:token"})
    assert list(found) == [key]
    assert "vpsProvider hetzner" in found[key] and f"pulumi config rm {key}" in found[key]


def test_hetzner_needs_the_token_and_the_ssh_key() -> None:
    found = problems(HETZNER, set())
    assert set(found) == {"hcloud:token", "sshPrivateKey"}
    assert "pulumi config set --secret hcloud:token" in found["hcloud:token"]


@pytest.mark.parametrize(
    ("over", "key"),
    [
        ({"sshUser": "deploy"}, "sshUser"),
        ({"sshPort": 2222}, "sshPort"),
        ({"deployTarget": "local", "tlsCertDir": "x"}, "vpsProvider"),
        ({"sshAllowFrom": ["10.0.0.0/33"]}, "sshAllowFrom"),
        ({"sshAllowFrom": []}, "sshAllowFrom"),
        ({"hetznerLocation": "fsn1 nbg1"}, "hetznerLocation"),
        ({"serverBootTimeout": 5}, "serverBootTimeout"),
        ({"vpsProvider": "aws"}, "vpsProvider"),
    ],
)
def test_hetzner_bad_values_name_the_key(over: dict[str, Any], key: str) -> None:
    assert key in problems({**HETZNER, **over}, {"sshPrivateKey", "hcloud:token"})


def test_an_existing_vps_still_needs_its_address_and_host_key() -> None:
    raw = {k: v for k, v in HETZNER.items() if k != "vpsProvider"}
    found = problems(raw, {"sshPrivateKey"})
    assert set(found) == {"vpsIpv4", "sshHostKey"}
    assert "pulumi config set vpsIpv4" in found["vpsIpv4"]


# ---- what the server is handed -----------------------------------------------------
def test_user_data_is_cloud_config_with_the_host_key() -> None:
    private, public = cloud_server.generate_host_key()
    text = cs.user_data(private, public)
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)  # cloud-init reads it with PyYAML too
    assert doc["ssh_deletekeys"] is True and doc["ssh_genkeytypes"] == []
    keys = doc["ssh_keys"]
    loaded = serialization.load_ssh_private_key(keys["ed25519_private"].encode(), None)
    derived = loaded.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    assert derived.decode() == keys["ed25519_public"] == public
    assert public.startswith("ssh-ed25519 ")
    # Each key is new.
    assert cloud_server.generate_host_key()[1] != public


def test_firewall_rules() -> None:
    rules = cs.firewall_rules(22, ["198.51.100.0/24"], [587, 465, 587])
    assert [(r.port, r.sources) for r in rules] == [
        (22, ("198.51.100.0/24",)),
        (587, cs.ANY),
        (465, cs.ANY),
        (80, cs.ANY),
    ]
    assert {r.direction for r in rules} == {"in"}, "no outbound rule: everything may go out"


def test_labels_are_valid_hetzner_label_values() -> None:
    labels = cs.labels("my stack/ü", "dkim-relay")
    assert labels["managed-by"] == "dkim-relay"
    assert all(c.isascii() and (c.isalnum() or c in "-_.") for c in labels["stack"])


# ---- the program under mocks ---------------------------------------------------------
@pytest.fixture(autouse=True)
def no_vps(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """No test here reaches a server: SSH calls are recorded, not made."""
    seen: list[str] = []

    def run_over_ssh(target: Any, key: str, command: str, **_: Any) -> Any:
        seen.append(f"ssh {target.host} {target.host_key}")
        return subprocess.CompletedProcess([], 0, "", "")

    monkeypatch.setattr(host_mod, "run_over_ssh", run_over_ssh)

    def preflight_check(target: Any, key: str, timeout: float = 10) -> str:
        seen.append(f"pre {target.host}")
        return "Linux"

    monkeypatch.setattr(host_mod, "preflight_check", preflight_check)
    monkeypatch.setattr(
        host_mod, "wait_for_boot", lambda t, s: seen.append(f"boot {t.host} {t.port} {s}")
    )
    monkeypatch.setattr(host_mod, "agent_problem", lambda key, env=None: None)
    monkeypatch.setattr(pulumi.log, "warn", lambda msg, *a, **kw: None)
    return seen


def hetzner_run(monkeypatch: pytest.MonkeyPatch, **over: Any) -> Run:
    return run_program(monkeypatch, {**HETZNER, **over}, secrets=SECRETS)


def test_the_server_and_what_it_is_made_of(monkeypatch: pytest.MonkeyPatch) -> None:
    run = hetzner_run(monkeypatch, smtpPort=2587, submissionsPort=2465)
    assert sorted(r.name for r in run.of_type("hcloud:")) == [
        "vps-firewall",
        "vps-rdns-ipv4",
        "vps-rdns-ipv6",
        "vps-server",
        "vps-ssh-key",
    ]
    for r in run.of_type("hcloud:"):
        assert run.parent(r.name) == "vps"
    key = unwrap(run.named("vps-ssh-key").inputs)
    assert key["publicKey"] == SSH_PUBLIC, "the server lets in the stack's own SSH key"
    server = run.named("vps-server").inputs
    plain = strip_secrets(server)
    assert plain["userData"] == "<secret>", "the host key's private half is a secret"
    assert yaml.safe_load(unwrap(server)["userData"])["ssh_keys"] == {
        "ed25519_private": HOST_PRIVATE_MARKER + "\n",
        "ed25519_public": MOCK_SERVER_HOST_KEY,
    }
    assert (plain["name"], plain["location"], plain["serverType"], plain["image"]) == (
        "smtp.example.com",
        "fsn1",
        "cx22",
        "debian-12",
    )
    assert plain["publicNets"] == [{"ipv4Enabled": True, "ipv6Enabled": True}]
    assert plain["sshKeys"] == ["vps-ssh-key-id"] or plain["sshKeys"][0].isdigit()
    assert plain["firewallIds"] and plain["labels"]["managed-by"] == "dkim-relay"
    # Names are unique at Hetzner: replaced delete-first. A new sshPrivateKey does not
    # replace the server (ssh_keys is create-only there).
    srv = run.named("vps-server")
    assert srv.delete_before_replace and srv.ignore_changes == ["sshKeys"]
    assert run.named("vps-ssh-key").delete_before_replace
    assert unwrap(run.named("vps-host-key").inputs)["server"] == "vps", "not relayHost"
    fw = unwrap(run.named("vps-firewall").inputs)
    assert [(r["port"], r["sourceIps"]) for r in fw["rules"]] == [
        ("22", ["0.0.0.0/0", "::/0"]),
        ("2587", ["0.0.0.0/0", "::/0"]),
        ("2465", ["0.0.0.0/0", "::/0"]),
        ("80", ["0.0.0.0/0", "::/0"]),
    ]
    ptrs = {
        unwrap(run.named(n).inputs)["ipAddress"]: unwrap(run.named(n).inputs)["dnsPtr"]
        for n in ("vps-rdns-ipv4", "vps-rdns-ipv6")
    }
    assert ptrs == {MOCK_SERVER_IPV4: "smtp.example.com", MOCK_SERVER_IPV6: "smtp.example.com"}
    assert {
        unwrap(run.named(n).inputs)["serverId"] for n in ("vps-rdns-ipv4", "vps-rdns-ipv6")
    } == {4711}


def test_the_relay_goes_onto_the_created_server(
    monkeypatch: pytest.MonkeyPatch, no_vps: list[str]
) -> None:
    run = hetzner_run(monkeypatch)
    remote = [r for r in run.of_type("command:remote:Command")]
    conns = {
        (unwrap(r.inputs["connection"])["host"], unwrap(r.inputs["connection"])["hostKey"])
        for r in remote
    }
    assert conns == {(MOCK_SERVER_IPV4, MOCK_SERVER_HOST_KEY)}, "pinned from the first connection"
    for r in remote:
        assert "vps-server" in run.deps(r.name) or "vps-host-key" in run.deps(r.name), r.name
    provider = unwrap(run.named("relay-engine").inputs)
    assert provider["host"] == f"ssh://root@{MOCK_SERVER_IPV4}:22"
    assert MOCK_SERVER_HOST_KEY.split()[1] in provider["sshOpts"]
    container = unwrap(run.named("relay-container").inputs)
    assert {p["ip"] for p in container["ports"]} == {MOCK_SERVER_IPV4, MOCK_SERVER_IPV6}
    # The metadata step keeps the relay's containers from the host key's private half.
    step = run.named("relay-host-metadata")
    assert cs.METADATA_ADDRESS in unwrap(step.inputs)["create"]
    assert "relay-host-metadata" in run.deps("relay-container")
    # The records and the outputs take the server's addresses.
    records = {(r["type"], r["name"]): r["content"] for r in run.exports["dnsRecords"]}
    assert records[("A", "smtp.example.com")] == MOCK_SERVER_IPV4
    assert records[("AAAA", "smtp.example.com")] == MOCK_SERVER_IPV6
    assert f"ip4:{MOCK_SERVER_IPV4} ip6:{MOCK_SERVER_IPV6}" in records[("TXT", "example.com")]
    assert (run.exports["vpsIpv4"], run.exports["vpsIpv6"]) == (MOCK_SERVER_IPV4, MOCK_SERVER_IPV6)
    assert run.exports["sshHostKey"] == MOCK_SERVER_HOST_KEY
    assert "Reverse DNS: set by the stack" in run.exports["gmailGuide"]
    assert "unblock port 25" in run.exports["gmailGuide"]
    # Before the first command: wait for the boot, on port 22, as long as configured.
    assert no_vps[0] == f"boot {MOCK_SERVER_IPV4} 22 300"
    assert f"pre {MOCK_SERVER_IPV4}" in no_vps
    # No secret in any plain input.
    for r in run.resources:
        text = str(strip_secrets(r.inputs))
        assert "PRIVATE KEY" not in text and TOKEN not in text, r.name


def test_cloudflare_records_take_the_server_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_program(
        monkeypatch,
        {
            **HETZNER,
            "dnsProvider": "cloudflare",
            "cloudflareZoneId": "zone123",
            "cloudflare:apiToken": "dummy-token-for-mocks",
        },
        secrets=SECRETS,
    )
    recs = {
        (r.inputs["type"], r.inputs["name"]): unwrap(r.inputs)["content"]
        for r in run.of_type("cloudflare:index/dnsRecord:DnsRecord")
    }
    assert recs[("A", "smtp.example.com")] == MOCK_SERVER_IPV4
    assert recs[("AAAA", "smtp.example.com")] == MOCK_SERVER_IPV6
    assert recs[("TXT", "example.com")] == (
        f'"v=spf1 ip4:{MOCK_SERVER_IPV4} ip6:{MOCK_SERVER_IPV6} ~all"'
    )


def test_a_refused_token_stops_before_any_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(m: Mocks) -> None:
        m.hcloud_error = "unable to authenticate (unauthorized, 401)"

    with pytest.raises(Exception, match=r"hcloud:token was refused.*nothing was created") as err:
        run_program(monkeypatch, HETZNER, secrets=SECRETS, mocks=refuse)
    assert TOKEN not in str(err.value)


def test_an_unknown_location_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(m: Mocks) -> None:
        m.hcloud_error = "no location found with name xyz1"

    with pytest.raises(Exception, match=r"hetznerLocation 'xyz1'.*did not find it"):
        run_program(
            monkeypatch, {**HETZNER, "hetznerLocation": "xyz1"}, secrets=SECRETS, mocks=missing
        )


def test_a_server_without_ipv6_is_an_error_naming_the_location(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_ipv6(m: Mocks) -> None:
        m.server_without_ipv6 = True

    with pytest.raises(Exception, match=r"hetznerLocation 'fsn1' got no IPv6 address"):
        run_program(monkeypatch, HETZNER, secrets=SECRETS, mocks=no_ipv6)


def test_a_server_not_yet_created_is_said_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def initializing(m: Mocks) -> None:
        m.server_initializing = True

    with pytest.raises(Exception, match=r"not created yet \(Hetzner reports it 'initializing'"):
        run_program(monkeypatch, HETZNER, secrets=SECRETS, mocks=initializing)


def test_an_existing_vps_stack_creates_no_cloud_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_program(
        monkeypatch,
        {
            "domain": "example.com",
            "vpsIpv4": "203.0.113.25",
            "acmeEmail": "postmaster@example.com",
            "sshHostKey": MOCK_SERVER_HOST_KEY,
        },
        secrets={"sshPrivateKey": SSH_KEY},
    )
    assert not run.of_type("hcloud:") and not run.calls
    assert not [r for r in run.resources if r.name == "relay-host-metadata"]
    assert unwrap(run.named("relay-engine").inputs)["host"] == "ssh://root@203.0.113.25:22"
    assert unwrap(run.named("relay-engine").inputs)["sshOpts"] == json.dumps(
        rc.ssh_opts(MOCK_SERVER_HOST_KEY)
    )


def test_a_secret_set_in_plain_text_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """`pulumi config set hcloud:token X` without --secret leaves it readable in the stack
    file: refused, naming the key and the fix, before anything is made."""
    with pytest.raises(Exception, match=r"hcloud:token: is stored in plain text") as err:
        run_program(monkeypatch, {**HETZNER, "hcloud:token": TOKEN}, {"sshPrivateKey": SSH_KEY})
    assert "pulumi config set --secret hcloud:token" in str(err.value)
    assert TOKEN not in str(err.value)
