"""Bad input gets one clear error naming every bad key, with the fix."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pure.config import (
    DNS_LABEL_PATTERN,
    HOSTNAME_PATTERN,
    ConfigError,
    RelayConfig,
    config_keys,
    config_types,
    load_config,
)
from pure.config_schema import MARKER, TEMPLATE_PROMPTS, config_reference, pulumi_yaml_section

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMockHostKeyMockHostKeyMockHostKeyMock"
GOOD: dict[str, Any] = {
    "domain": "example.com",
    "vpsIpv4": "203.0.113.25",
    "vpsIpv6": "2001:db8::25",
    "acmeEmail": "postmaster@example.com",
    "sshHostKey": HOST_KEY,
}
SECRETS = {"sshPrivateKey"}


def problems(**changes: Any) -> dict[str, str]:
    raw = {**GOOD, **changes}
    with pytest.raises(ConfigError) as info:
        load_config({k: v for k, v in raw.items() if v is not None}, SECRETS)
    return dict(info.value.problems)


def test_good_config_loads_with_defaults() -> None:
    cfg = load_config(GOOD, SECRETS)
    assert cfg.relay_fqdn == "smtp.example.com"
    assert cfg.ssh_target == "203.0.113.25"
    assert cfg.dkim_key_bits == 2048 and cfg.smtp_users == ["gmail"]
    assert cfg.port25_probe == "gmail-smtp-in.l.google.com"
    assert cfg.ssh_host_key == HOST_KEY
    assert cfg.submissions465 is False and cfg.submissions_port == 465


@pytest.mark.parametrize("probe", ["mx.example.net", "192.0.2.25", "2001:db8::25"])
def test_port25_probe_takes_a_host_name_or_an_address(probe: str) -> None:
    assert load_config({**GOOD, "port25Probe": probe}, SECRETS).port25_probe == probe


BAD_CASES = [
    ("domain", {"domain": "not a domain"}, "not a fully qualified domain name"),
    ("domain", {"domain": "localhost"}, "not a fully qualified domain name"),
    ("relayHost", {"relayHost": "smtp"}, "not a fully qualified domain name"),
    ("relayHost", {"relayHost": "smtp.other.org"}, "outside example.com"),
    ("dkimSelector", {"dkimSelector": "bad_selector!"}, "not a valid DNS label"),
    ("dkimSelector", {"dkimSelector": "-lead"}, "not a valid DNS label"),
    ("dkimSelector", {"dkimSelector": "relay\n"}, "not a valid DNS label"),
    ("domain", {"domain": "example.com\n"}, "not a fully qualified domain name"),
    ("vpsIpv4", {"vpsIpv4": "203.0.113.999"}, "not an IPv4 address"),
    ("vpsIpv4", {"vpsIpv4": "2001:db8::1"}, "IPv6 address goes in vpsIpv6"),
    ("vpsIpv6", {"vpsIpv6": "203.0.113.7"}, "IPv4 address goes in vpsIpv4"),
    ("port25Probe", {"port25Probe": "mx example"}, "not a host name or an IP address"),
    ("port25Probe", {"port25Probe": "203.0.113.999"}, "not a host name or an IP address"),
    ("port25Probe", {"port25Probe": "$(id)"}, "not a host name or an IP address"),
    ("dmarcPolicy", {"dmarcPolicy": "block"}, "one of none, quarantine, reject"),
    ("dmarcSubdomainPolicy", {"dmarcSubdomainPolicy": "drop"}, "none, quarantine, reject"),
    ("dmarcPct", {"dmarcPct": 150}, "outside 0-100"),
    ("dmarcPct", {"dmarcPct": -1}, "outside 0-100"),
    ("dmarcRua", {"dmarcRua": ["dmarc@example.com"]}, "not a mailto: URI"),
    ("dmarcRuf", {"dmarcRuf": ["https://example.com/r"]}, "not a mailto: URI"),
    ("dnsTtl", {"dnsTtl": 30}, "not a TTL Cloudflare accepts"),
    ("dnsTtl", {"dnsTtl": 100000}, "not a TTL Cloudflare accepts"),
    ("cloudflareZoneId", {"dnsProvider": "cloudflare"}, "no zone is given"),
    ("dkimKeyBits", {"dkimKeyBits": 1024}, "under 2048 bits as weak"),
    ("dkimKeyBits", {"dkimKeyBits": 2500}, "not an allowed RSA key size"),
    (
        "dkimRetiredSelectors",
        {"dkimSelector": "s1", "dkimRetiredSelectors": ["s0", "s1"]},
        "signing selector",
    ),
    ("spfExtra", {"spfExtra": ["include:_spf.google.com", "-all"]}, "`all` term"),
    ("spfExtra", {"spfExtra": [f"include:s{i}.example.net" for i in range(11)]}, "11 DNS lookups"),
    ("spfExtra", {"spfExtra": ["redirect=_spf.example.net"]}, "spfAll unreachable"),
    ("spfAll", {"spfAll": "+all"}, "~all or -all"),
    ("forwardTo", {"forwardTo": "me@gmail.com"}, "needs dnsProvider cloudflare"),
    (
        "forwardTo",
        {"forwardTo": "not-an-address", "dnsProvider": "cloudflare", "cloudflareZoneId": "z"},
        "not an email address",
    ),
    ("acmeEmail", {"acmeEmail": None}, "Let's Encrypt"),
    ("sshHostKey", {"sshHostKey": None}, "pin the VPS's SSH host key"),
    ("sshHostKey", {"sshHostKey": ""}, "pulumi config set sshHostKey 'ssh-ed25519 AAAA...'"),
    ("submissionsPort", {"submissionsPort": 70000}, "not a TCP port"),
    ("submissionsPort", {"submissionsPort": 0}, "not a TCP port"),
    ("submissionsPort", {"submissionsPort": "465"}, "not a TCP port"),
    (
        "submissionsPort",
        {"submissions465": True, "smtpPort": 2525, "submissionsPort": 2525},
        "same host port as smtpPort",
    ),
    ("submissionsPort", {"submissions465": True, "smtpPort": 465}, "same host port as smtpPort"),
    ("smtpUsers", {"smtpUsers": ["Bad User"]}, "not a valid user name"),
    ("sshPort", {"sshPort": 70000}, "not a TCP port"),
    ("acmeServer", {"acmeServer": "http://insecure/dir"}, "not an https:// URL"),
    ("acmeServer", {"acmeServer": "https://acme.example/dir\n"}, "not an https:// URL"),
    ("acmeEmail", {"acmeEmail": "nobody"}, "not an email address"),
    ("acmeExtraNames", {"acmeExtraNames": ["bad_name!"]}, "not a fully qualified domain name"),
    ("sshPort", {"sshPort": True}, "not a TCP port"),
    ("smtpUsers", {"smtpUsers": []}, "is empty"),
    ("acmeExtraNames", {"acmeExtraNames": ["mail"]}, "not a fully qualified domain name"),
    ("dkimRetiredSelectors", {"dkimRetiredSelectors": ["old", "old"]}, "twice"),
    ("dnsProvider", {"dnsProvider": "route53"}, "cloudflare or manual"),
    ("domain", {"domain": None}, "is required"),
    ("dmarcPolicyy", {"dmarcPolicyy": "none"}, "not a dkim-relay config key"),
    ("relayIpv4Subnet", {"relayIpv4Subnet": "10.0.0.0/33"}, "not an IPv4 subnet"),
    ("relayIpv6Subnet", {"relayIpv6Subnet": "172.30.0.0/24"}, "not an IPv6 subnet"),
    ("relayContainerName", {"relayContainerName": "bad name"}, "not a container name"),
    ("relayNexthop", {"relayNexthop": "smtp.example.net"}, "not a next hop"),
    ("relayNexthop", {"relayNexthop": "192.0.2.4:0"}, "not a next hop"),
    ("relayNexthop", {"relayNexthop": "192.0.2.4:99999"}, "not a next hop"),
    ("relayNexthop", {"relayNexthop": "a b:25"}, "not a next hop"),
    ("relayNexthop", {"relayNexthop": ":25"}, "not a next hop"),
    ("relayNexthop", {"relayNexthop": "[smart.example.net]:587\n"}, "not a next hop"),
    ("smtpUsers", {"smtpUsers": ["gmail", "gmail"]}, "lists a user twice"),
    ("relayNexthopUser", {"relayNexthopUser": "a b"}, "not a smarthost login"),
    ("outboundIpv6", {"outboundIpv6": "ipv6"}, "prefer-ipv4, any, never"),
    ("delayWarningTime", {"delayWarningTime": "4 hours"}, "a duration such as 4h"),
    ("delayWarningTime", {"delayWarningTime": "4"}, "a duration such as 4h"),
    (
        "relayNexthopUser",
        {"relayNexthop": "[smart.example.net]:587", "relayNexthopUser": "a:b"},
        "not a smarthost login",
    ),
    (
        "relayNexthopPassword",
        {"relayNexthop": "[smart.example.net]:587", "relayNexthopUser": "relay@example.com"},
        "pulumi config set --secret relayNexthopPassword",
    ),
]


@pytest.mark.parametrize(
    ("key", "change", "expected"), BAD_CASES, ids=[f"{c[0]}:{c[2][:20]}" for c in BAD_CASES]
)
def test_each_bad_input_names_its_key(key: str, change: dict[str, Any], expected: str) -> None:
    found = problems(**change)
    assert key in found, found
    assert expected in found[key]


@pytest.mark.parametrize(
    ("name", "host", "label"),
    [
        ("example.com", True, False),
        ("smtp.Example.COM.", True, False),
        ("xn--bcher-kva.example", True, False),
        ("relay", False, True),
        ("r2024-a", False, True),
        ("a" * 63, False, True),
        ("a" * 64, False, False),
        ("-lead.example.com", False, False),
        ("trail-", False, False),
        ("under_score.example.com", False, False),
        ("192.0.2.1", False, False),
        ("a." * 126 + "com", False, False),  # 255 characters
        ("example.com\n", False, False),
        ("", False, False),
    ],
)
def test_shared_patterns(name: str, host: bool, label: bool) -> None:
    # Other modules check names with these patterns through `re`, so test them that way.
    assert bool(re.match(HOSTNAME_PATTERN, name)) is host
    assert bool(re.match(DNS_LABEL_PATTERN, name)) is label


def test_spf_lookups_count_email_routing_include() -> None:
    ten = [f"include:s{i}.example.net" for i in range(10)]
    load_config({**GOOD, "spfExtra": ten}, SECRETS)  # exactly ten is allowed
    found = problems(
        spfExtra=ten, forwardTo="me@gmail.com", dnsProvider="cloudflare", cloudflareZoneId="z"
    )
    assert "11 DNS lookups" in found["spfExtra"]


def test_every_problem_reported_at_once_with_a_fix() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(
            {**GOOD, "domain": "bad domain", "dmarcPct": 101, "vpsIpv4": "::1", "dnsTtl": 5},
            set(),
        )
    keys = [k for k, _ in info.value.problems]
    assert set(keys) == {"domain", "dmarcPct", "vpsIpv4", "dnsTtl", "sshPrivateKey"}
    text = str(info.value)
    assert "5 problems" in text and "nothing was created or changed" in text
    for key, msg in info.value.problems:
        assert f"{key}:" in text and ("Fix:" in msg or "pulumi config" in msg), (key, msg)


def test_ssh_host_key_required_for_a_vps_with_where_to_find_it() -> None:
    found = problems(sshHostKey=None)
    assert list(found) == ["sshHostKey"], found
    text = found["sshHostKey"]
    assert "cat /etc/ssh/ssh_host_ed25519_key.pub" in text
    assert "Fix: pulumi config set sshHostKey" in text


def test_submissions_port_is_free_unless_465_is_published() -> None:
    cfg = load_config({**GOOD, "submissions465": True, "submissionsPort": 2465}, SECRETS)
    assert cfg.submissions_port == 2465 and cfg.smtp_port == 587
    # 465 off: its host port is not published, so it may equal smtpPort.
    cfg = load_config({**GOOD, "smtpPort": 465}, SECRETS)
    assert cfg.smtp_port == 465 and cfg.submissions465 is False
    found = problems(submissions465=True, smtpPort=2465, submissionsPort=2465)
    assert list(found) == ["submissionsPort"], found
    assert "Fix: pulumi config set submissionsPort" in found["submissionsPort"]


def test_local_target_needs_a_cert_dir_but_no_ssh() -> None:
    raw = {"domain": "example.com", "vpsIpv4": "127.0.0.1", "deployTarget": "local"}
    with pytest.raises(ConfigError) as info:
        load_config(raw, set())
    assert [k for k, _ in info.value.problems] == ["tlsCertDir"]
    load_config({**raw, "tlsCertDir": "/tmp/le"}, set())


def test_each_bad_list_item_is_named_with_its_index() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({**GOOD, "dmarcRua": ["mailto:ok@example.com!10m", "a@b", "mailto:c"]}, SECRETS)
    texts = [t for k, t in info.value.problems if k == "dmarcRua"]
    assert len(texts) == 2, texts
    assert "'a@b' is not a mailto: URI" in texts[0] and "'dmarcRua[1]'" in texts[0]
    assert "'mailto:c' is not a mailto: URI" in texts[1] and "'dmarcRua[2]'" in texts[1]


def test_values_pulumi_could_not_decode_are_reported_as_given() -> None:
    # What the program passes on when Pulumi's typed getter fails: the text as written.
    found = problems(smtpPort="abc", submissions465="yes", spfExtra="mx", dkimKeyBits="2048")
    assert "'abc' is not a TCP port" in found["smtpPort"]
    assert "'yes'" in found["submissions465"] and "submissions465 true" in found["submissions465"]
    assert "'mx'" in found["spfExtra"] and "valid list" in found["spfExtra"]
    assert "'2048' is not an allowed RSA key size" in found["dkimKeyBits"]


def test_outbound_defaults() -> None:
    cfg = load_config(GOOD, SECRETS)
    assert cfg.outbound_ipv6 == "prefer-ipv4"
    assert cfg.delay_warning_time == "4h"
    assert cfg.relay_nexthop_user is None


def test_smarthost_login_needs_user_password_and_smarthost() -> None:
    smart = {**GOOD, "relayNexthop": "[smart.example.net]:587"}
    with_pw = SECRETS | {"relayNexthopPassword"}
    cfg = load_config({**smart, "relayNexthopUser": "relay@example.com"}, with_pw)
    assert cfg.relay_nexthop_user == "relay@example.com"
    # a password without its user
    with pytest.raises(ConfigError) as info:
        load_config(smart, with_pw)
    found = dict(info.value.problems)
    assert "pulumi config set relayNexthopUser" in found["relayNexthopUser"]
    # a user with no smarthost to log in to
    with pytest.raises(ConfigError) as info:
        load_config({**GOOD, "relayNexthopUser": "relay@example.com"}, with_pw)
    assert "pulumi config set relayNexthop " in dict(info.value.problems)["relayNexthop"]


def test_pulumi_yaml_declares_every_key_with_the_model_default() -> None:
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    assert sorted(declared) == sorted(config_keys())
    kinds = {"string": str, "integer": int, "boolean": bool, "array": list}
    types = config_types()
    for name, field in RelayConfig.model_fields.items():
        key = field.alias or name
        spec = declared[key]
        assert spec.get("description"), key
        # A list that may hold objects has no type: Pulumi.yaml cannot describe objects.
        assert spec.get("type", "array") == types[key], key
        assert field.examples, f"{key}: error messages take their fix from the example"
        if field.is_required():
            assert "default" not in spec, key
            continue
        default = field.get_default(call_default_factory=True)
        assert spec["default"] == ("" if default is None else default), key
        assert isinstance(spec["default"], kinds[spec.get("type", "array")]), key


def test_example_prod_stack_is_valid_and_holds_no_secret_value() -> None:
    stack = yaml.safe_load((ROOT / "Pulumi.prod.yaml").read_text())["config"]
    raw = {k.split(":", 1)[1]: v for k, v in stack.items() if k.startswith("dkim-relay:")}
    assert not set(raw) & {"sshPrivateKey", "smtpPasswords"}
    assert not any(isinstance(v, dict) and "secure" in v for v in stack.values())
    cfg = load_config(raw, SECRETS)
    assert cfg.dns_provider == "cloudflare" and cfg.forward_to


def test_pulumi_yaml_and_the_config_reference_are_generated_from_the_model() -> None:
    """Stale when the model changed and scripts/gen_config_schema.py was not run."""
    pulumi_yaml = (ROOT / "Pulumi.yaml").read_text()
    assert MARKER in pulumi_yaml
    assert pulumi_yaml.split(MARKER, 1)[1] == pulumi_yaml_section().split(MARKER, 1)[1], (
        "Pulumi.yaml is stale: run scripts/gen_config_schema.py"
    )
    assert (ROOT / "docs" / "config.md").read_text() == config_reference(), (
        "docs/config.md is stale: run scripts/gen_config_schema.py"
    )


def test_the_generator_check_names_a_stale_file(tmp_path: Path) -> None:
    # A copy of the project's generated files and the script, one of them made stale.
    (tmp_path / "scripts").mkdir()
    (tmp_path / "docs").mkdir()
    for name in ("scripts/gen_config_schema.py", "Pulumi.yaml", "docs/config.md"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    (tmp_path / "pure").symlink_to(ROOT / "pure")
    script = [sys.executable, str(tmp_path / "scripts" / "gen_config_schema.py")]
    assert subprocess.run([*script, "--check"], capture_output=True).returncode == 0
    doc = tmp_path / "docs" / "config.md"
    doc.write_text(doc.read_text().replace("| `dkimSelector` | string | `relay` |", "| x |"))
    res = subprocess.run([*script, "--check"], capture_output=True, text=True)
    assert res.returncode == 1 and "docs/config.md is stale" in res.stderr
    assert subprocess.run(script, capture_output=True).returncode == 0
    assert doc.read_text() == (ROOT / "docs" / "config.md").read_text()


def test_every_key_is_described_in_the_model_and_the_reference() -> None:
    reference = (ROOT / "docs" / "config.md").read_text()
    for name, field in RelayConfig.model_fields.items():
        key = field.alias or name
        assert field.description, f"{key}: give it Field(description=...)"
        assert f"| `{key}` |" in reference, key


def test_the_template_prompts_for_what_a_vps_stack_needs() -> None:
    template = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["template"]
    assert template["description"]
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    assert list(template["config"]) == list(TEMPLATE_PROMPTS)
    for key, prompt in template["config"].items():
        assert prompt["description"] == declared[key]["description"], key
    # Without them a vps stack is refused (the others have defaults).
    found = problems(domain=None, vpsIpv4=None, acmeEmail=None)
    assert {"domain", "vpsIpv4", "acmeEmail"} <= set(found)


@pytest.mark.parametrize(
    "users", [["gmail\n"], ["Gmail"], ["gmail+x"], ["gmail", "bad user"], ["\ngmail"]]
)
def test_a_bad_smtp_user_name_is_refused_by_the_config_naming_smtp_users(
    users: list[str],
) -> None:
    found = problems(smtpUsers=users)
    assert list(found) == ["smtpUsers"], found
    assert "is not a valid user name" in found["smtpUsers"]
    assert "pulumi config set --path 'smtpUsers[" in found["smtpUsers"]


@pytest.mark.parametrize("value", ["30", "4h\n", "0h", "4 h", "h"])
def test_a_bad_delay_warning_time_is_refused_by_the_config(value: str) -> None:
    found = problems(delayWarningTime=value)
    assert list(found) == ["delayWarningTime"], found
    assert "is not a duration such as 4h" in found["delayWarningTime"]


def test_submissions_port_is_a_port_with_default_465() -> None:
    assert load_config(GOOD, SECRETS).submissions_port == 465
    assert load_config({**GOOD, "submissionsPort": 10465}, SECRETS).submissions_port == 10465
    assert "not a TCP port" in problems(submissionsPort=0)["submissionsPort"]


@pytest.mark.parametrize("bad", ["SHA256:abc", "ssh-ed25519", "ssh-dss AAAAB3Nza"])
def test_malformed_ssh_host_key_is_named(bad: str) -> None:
    raw = {
        "domain": "example.com",
        "vpsIpv4": "198.51.100.7",
        "acmeEmail": "me@example.com",
        "sshHostKey": bad,
    }
    with pytest.raises(ConfigError) as err:
        load_config(raw, {"sshPrivateKey"})
    assert "sshHostKey" in str(err.value) and "not one OpenSSH public key line" in str(err.value)
