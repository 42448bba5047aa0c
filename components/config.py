"""The stack's configuration: one pydantic model, validated before any resource exists.

`load_config` reports every problem at once, each naming the config key, what is wrong
and how to fix it. Secrets (SSH key, SMTP passwords, API tokens) are not part of the
model: they stay Pulumi secrets, and the model only learns whether they are set.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from components.dkim import ALLOWED_KEY_BITS

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
CLOUDFLARE_EMAIL_ROUTING_SPF = "include:_spf.mx.cloudflare.net"
SECRET_KEYS = ("sshPrivateKey", "smtpPasswords")
# RFC 7208 4.6.4: terms that cost a DNS lookup; more than 10 is a permerror.
SPF_LOOKUP_TERMS = (
    "include:",
    "exists:",
    "redirect=",
    "a:",
    "a/",
    "mx:",
    "mx/",
    "ptr:",
)
SPF_LOOKUP_LIMIT = 10

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


def _is_hostname(name: str) -> bool:
    labels = name.rstrip(".").split(".")
    return (
        len(name) <= 253
        and len(labels) >= 2
        and all(_LABEL.match(label) for label in labels)
        and not labels[-1].isdigit()
    )


class ConfigError(Exception):
    """All problems of a stack config: each `(key, what is wrong and how to fix it)`."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = sorted(set(problems))
        lines = [f"  - {key}: {text}" for key, text in self.problems]
        n = len(self.problems)
        super().__init__(
            f"the stack config has {n} problem{'s' if n != 1 else ''}; "
            "nothing was created or changed:\n" + "\n".join(lines)
        )


class RelayConfig(BaseModel):
    """Every key of the `dkim-relay:` config namespace (camelCase in the stack file)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    # Identity and DNS
    domain: str
    relay_host: str | None = None
    vps_ipv4: str
    vps_ipv6: str | None = None
    dns_provider: Literal["cloudflare", "manual"] = "manual"
    cloudflare_zone_id: str | None = None
    cloudflare_account_id: str | None = None
    dkim_selector: str = "relay"
    dkim_retired_selectors: list[str] = Field(default_factory=list)
    dkim_key_bits: int = 2048
    dmarc_policy: Literal["none", "quarantine", "reject"] = "none"
    dmarc_subdomain_policy: Literal["none", "quarantine", "reject"] | None = None
    dmarc_pct: int = 100
    dmarc_rua: list[str] = Field(default_factory=list)
    dmarc_ruf: list[str] = Field(default_factory=list)
    dmarc_alignment: Literal["relaxed", "strict"] = "relaxed"
    spf_extra: list[str] = Field(default_factory=list)
    spf_all: Literal["~all", "-all"] = "~all"
    forward_to: str | None = None
    dns_ttl: int = 3600

    # Where the relay runs
    deploy_target: Literal["vps", "local"] = "vps"
    docker_host: str | None = None
    ssh_host: str | None = None
    ssh_user: str = "root"
    ssh_port: int = 22
    ssh_host_key: str | None = None
    acme_email: str | None = None
    acme_server: str = LETS_ENCRYPT
    acme_extra_names: list[str] = Field(default_factory=list)
    acme_ca_bundle: str | None = None
    tls_cert_dir: str | None = None

    # The relay
    smtp_users: list[str] = Field(default_factory=lambda: ["gmail"])
    smtp_port: int = 587
    submissions465: bool = False
    relay_nexthop: str | None = None
    relay_container_name: str = "dkim-relay"
    relay_ipv4_subnet: str = "172.30.87.0/24"
    relay_ipv6_subnet: str = "fd00:d6b1:587::/64"

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: Any) -> Any:
        # Pulumi.yaml cannot declare a null default, so "" stands for "not set".
        return None if v == "" else v

    # ---- derived values -------------------------------------------------------------
    @property
    def relay_fqdn(self) -> str:
        return self.relay_host or f"smtp.{self.domain}"

    @property
    def ssh_target(self) -> str:
        return self.ssh_host or self.vps_ipv4

    @property
    def all_selectors(self) -> list[str]:
        return [self.dkim_selector, *self.dkim_retired_selectors]

    @property
    def spf_terms(self) -> list[str]:
        terms = [f"ip4:{self.vps_ipv4}"]
        if self.vps_ipv6:
            terms.append(f"ip6:{self.vps_ipv6}")
        terms += self.spf_extra
        if self.forward_to and CLOUDFLARE_EMAIL_ROUTING_SPF not in terms:
            terms.append(CLOUDFLARE_EMAIL_ROUTING_SPF)
        return terms


# ---- per-key checks on raw values ---------------------------------------------------
# Each returns a message (what is wrong and the fix) or None. They run on the raw config
# so that every problem is found in one pass, whatever else is wrong.


def _fix(key: str, example: str) -> str:
    return f"Fix: pulumi config set {key} {example}"


def _check_hostname(key: str, example: str) -> Any:
    def check(v: Any) -> str | None:
        if not isinstance(v, str) or not _is_hostname(v.lower()):
            return (
                f"{v!r} is not a fully qualified domain name (letters, digits and hyphens in "
                f"dot-separated labels; IDNs in their xn-- form). {_fix(key, example)}"
            )
        return None

    return check


def _check_ip(key: str, family: int, example: str) -> Any:
    def check(v: Any) -> str | None:
        try:
            addr = ipaddress.ip_address(str(v))
        except ValueError:
            return f"{v!r} is not an IP address. {_fix(key, example)}"
        if addr.version != family:
            return f"{v} is an IPv{addr.version} address; this key takes IPv{family}. " + _fix(
                key, example
            )
        return None

    return check


def _check_label(key: str) -> Any:
    def check(v: Any) -> str | None:
        if not isinstance(v, str) or not _LABEL.match(v.lower()):
            return (
                f"{v!r} is not a valid DNS label (1-63 letters, digits or hyphens, not "
                f"starting or ending with a hyphen). {_fix(key, 'relay2026')}"
            )
        return None

    return check


def _check_mailto_list(key: str) -> Any:
    def check(v: Any) -> str | None:
        bad = [
            u
            for u in (v or [])
            if not (
                isinstance(u, str) and u.startswith("mailto:") and _EMAIL.match(u[7:].split("!")[0])
            )
        ]
        if bad:
            return (
                f"{', '.join(map(repr, bad))} is not a mailto: URI. DMARC reports go to "
                f"addresses written as mailto:dmarc@example.com. "
                f"Fix: pulumi config set --path '{key}[0]' mailto:dmarc@example.com"
            )
        return None

    return check


def _check_ttl(v: Any) -> str | None:
    if not isinstance(v, int) or not (v == 1 or 60 <= v <= 86400):
        return (
            f"{v!r} is not a TTL Cloudflare accepts: 1 (automatic) or 60 to 86400 seconds. "
            f"{_fix('dnsTtl', '3600')}"
        )
    return None


def _check_email(key: str) -> Any:
    def check(v: Any) -> str | None:
        if not isinstance(v, str) or not _EMAIL.match(v):
            return f"{v!r} is not an email address. {_fix(key, 'me@gmail.com')}"
        return None

    return check


def _check_spf_extra(v: Any) -> str | None:
    problems = []
    for term in v or []:
        t = str(term).lstrip("+-~?").lower()
        if t == "all":
            problems.append(
                f"{term!r} is an `all` term; the record already ends with spfAll. "
                "Remove it and set spfAll (~all or -all) instead"
            )
        elif t.startswith("redirect="):
            problems.append(f"{term!r} would make spfAll unreachable. Remove it")
        elif not re.match(r"^(ip4:|ip6:|include:|a\b|mx\b|ptr\b|exists:)", t):
            problems.append(
                f"{term!r} is not an SPF mechanism (ip4:, ip6:, include:, a, mx, exists:)"
            )
    return "; ".join(problems) + "." if problems else None


def _check_subnet(key: str, family: int, example: str) -> Any:
    def check(v: Any) -> str | None:
        try:
            net = ipaddress.ip_network(str(v), strict=True)
        except ValueError:
            return f"{v!r} is not a subnet in CIDR form. {_fix(key, example)}"
        if net.version != family or net.num_addresses < 8:
            return f"{v} is not an IPv{family} subnet with room for the relay. {_fix(key, example)}"
        return None

    return check


def _check_pattern(key: str, pattern: str, what: str, example: str) -> Any:
    def check(v: Any) -> str | None:
        if not isinstance(v, str) or not re.fullmatch(pattern, v):
            return f"{v!r} is not {what}. {_fix(key, example)}"
        return None

    return check


CHECKS: dict[str, Any] = {
    "domain": _check_hostname("domain", "example.com"),
    "relayHost": _check_hostname("relayHost", "smtp.example.com"),
    "vpsIpv4": _check_ip("vpsIpv4", 4, "203.0.113.25"),
    "vpsIpv6": _check_ip("vpsIpv6", 6, "2001:db8::25"),
    "dkimSelector": _check_label("dkimSelector"),
    "dmarcRua": _check_mailto_list("dmarcRua"),
    "dmarcRuf": _check_mailto_list("dmarcRuf"),
    "dnsTtl": _check_ttl,
    "forwardTo": _check_email("forwardTo"),
    "acmeEmail": _check_email("acmeEmail"),
    "spfExtra": _check_spf_extra,
    "relayIpv4Subnet": _check_subnet("relayIpv4Subnet", 4, "172.30.87.0/24"),
    "relayIpv6Subnet": _check_subnet("relayIpv6Subnet", 6, "fd00:d6b1:587::/64"),
    "relayContainerName": _check_pattern(
        "relayContainerName", r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}", "a container name", "dkim-relay"
    ),
    "relayNexthop": _check_pattern(
        "relayNexthop",
        r"\[[A-Za-z0-9.:-]+\]:\d{1,5}|[A-Za-z0-9.-]+:\d{1,5}",
        "a next hop such as [mail.example.net]:25",
        "'[smarthost.example.net]:587'",
    ),
}

_HINTS = {
    "dmarcPolicy": "one of none, quarantine, reject. Fix: pulumi config set dmarcPolicy quarantine",
    "dmarcSubdomainPolicy": "one of none, quarantine, reject (or unset to follow dmarcPolicy)",
    "dmarcAlignment": "relaxed or strict. Fix: pulumi config set dmarcAlignment relaxed",
    "dnsProvider": "cloudflare or manual. Fix: pulumi config set dnsProvider manual",
    "spfAll": "~all or -all. Fix: pulumi config set spfAll ~all",
    "deployTarget": "vps or local. Fix: pulumi config set deployTarget vps",
    "domain": "the domain you send mail from. Fix: pulumi config set domain example.com",
    "vpsIpv4": "the VPS's public IPv4 address. Fix: pulumi config set vpsIpv4 203.0.113.25",
}


def _cross_checks(raw: Mapping[str, Any], secrets_set: set[str]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    pct = raw.get("dmarcPct", 100)
    if not isinstance(pct, int) or isinstance(pct, bool) or not 0 <= pct <= 100:
        problems.append(("dmarcPct", f"{pct!r} is outside 0-100. {_fix('dmarcPct', '100')}"))
    bits = raw.get("dkimKeyBits", 2048)
    if bits not in ALLOWED_KEY_BITS:
        why = (
            "is under 2048 bits, which receivers treat as weak"
            if isinstance(bits, int) and bits < 2048
            else "is not an allowed size"
        )
        problems.append(
            (
                "dkimKeyBits",
                f"{bits!r} {why}; use 2048, 3072 or 4096. {_fix('dkimKeyBits', '2048')}",
            )
        )
    selector = raw.get("dkimSelector", "relay")
    retired = raw.get("dkimRetiredSelectors") or []
    if isinstance(retired, list):
        for s in retired:
            if msg := _check_label("dkimRetiredSelectors")(s):
                problems.append(("dkimRetiredSelectors", msg))
        if selector in retired:
            problems.append(
                (
                    "dkimRetiredSelectors",
                    f"{selector!r} is the signing selector (dkimSelector) and cannot also be "
                    "retired. Remove it from dkimRetiredSelectors, or pick a new dkimSelector",
                )
            )
        if len(set(retired)) != len(retired):
            problems.append(
                ("dkimRetiredSelectors", "lists a selector twice. Remove the duplicate")
            )
    domain = str(raw.get("domain") or "").lower().rstrip(".")
    relay = raw.get("relayHost")
    if relay and domain and _is_hostname(str(relay).lower()) and _is_hostname(domain):
        r = str(relay).lower().rstrip(".")
        if r != domain and not r.endswith("." + domain):
            problems.append(
                (
                    "relayHost",
                    f"{relay!r} is outside {domain}, so this stack cannot publish its address. "
                    f"Fix: pulumi config set relayHost smtp.{domain}",
                )
            )
    provider = raw.get("dnsProvider", "manual")
    if provider == "cloudflare" and not raw.get("cloudflareZoneId"):
        problems.append(
            (
                "cloudflareZoneId",
                "dnsProvider is cloudflare but no zone is given and none was found for the "
                "domain. Copy the Zone ID from the zone's Overview page in the Cloudflare "
                "dashboard. Fix: pulumi config set cloudflareZoneId <zone id>",
            )
        )
    if raw.get("forwardTo") and provider != "cloudflare":
        problems.append(
            (
                "forwardTo",
                "needs dnsProvider cloudflare (inbound forwarding uses Cloudflare Email "
                "Routing). Set dnsProvider to cloudflare, or remove it: pulumi config rm forwardTo",
            )
        )
    extra = raw.get("spfExtra") or []
    if isinstance(extra, list):
        terms = [str(t).lstrip("+-~?").lower() for t in extra]
        if raw.get("forwardTo") and CLOUDFLARE_EMAIL_ROUTING_SPF not in terms:
            terms.append(CLOUDFLARE_EMAIL_ROUTING_SPF)
        lookups = sum(1 for t in terms if t in ("a", "mx", "ptr") or t.startswith(SPF_LOOKUP_TERMS))
        if lookups > SPF_LOOKUP_LIMIT:
            problems.append(
                (
                    "spfExtra",
                    f"the SPF record would need {lookups} DNS lookups (include, a, mx, ptr, "
                    f"exists each cost one; Email Routing adds one); receivers stop at "
                    f"{SPF_LOOKUP_LIMIT} and fail SPF. Replace includes with ip4:/ip6: terms",
                )
            )
    if raw.get("deployTarget", "vps") == "vps":
        if not raw.get("acmeEmail"):
            problems.append(
                (
                    "acmeEmail",
                    "is needed to request the relay's Let's Encrypt certificate (expiry "
                    "notices go there). Fix: pulumi config set acmeEmail you@example.com",
                )
            )
        if "sshPrivateKey" not in secrets_set:
            problems.append(
                (
                    "sshPrivateKey",
                    "is needed to reach the VPS. Fix: pulumi config set --secret "
                    "sshPrivateKey < ~/.ssh/id_ed25519",
                )
            )
    else:
        if not raw.get("tlsCertDir"):
            problems.append(
                (
                    "tlsCertDir",
                    "a local stack needs a folder laid out like /etc/letsencrypt holding the "
                    "relay's certificate. Fix: run scripts/local-up.sh, which makes one",
                )
            )
    users = raw.get("smtpUsers", ["gmail"])
    if isinstance(users, list):
        if not users:
            problems.append(
                (
                    "smtpUsers",
                    "is empty; Gmail needs one user. "
                    "Fix: pulumi config set --path 'smtpUsers[0]' gmail",
                )
            )
        for u in users:
            if not (isinstance(u, str) and re.match(r"^[a-z0-9][a-z0-9._-]{0,63}$", u)):
                problems.append(
                    (
                        "smtpUsers",
                        f"{u!r} is not a valid user name (lowercase letters, digits, . _ -)",
                    )
                )
    for port_key in ("sshPort", "smtpPort"):
        port = raw.get(port_key)
        if port is not None and (not isinstance(port, int) or not 1 <= port <= 65535):
            problems.append((port_key, f"{port!r} is not a TCP port (1-65535)"))
    return problems


def load_config(raw: Mapping[str, Any], secrets_set: set[str] | None = None) -> RelayConfig:
    """Validate raw stack config (camelCase keys); raise ConfigError listing every problem."""
    raw = {k: v for k, v in raw.items() if v is not None and v != ""}
    problems: list[tuple[str, str]] = []
    for key, check in CHECKS.items():
        if key in raw and (msg := check(raw[key])):
            problems.append((key, msg))
    problems += _cross_checks(raw, secrets_set or set())
    try:
        model = RelayConfig.model_validate(raw)
    except ValidationError as err:
        for e in err.errors():
            key = str(e["loc"][0]) if e["loc"] else "config"
            if any(k == key for k, _ in problems):
                continue  # already explained above, in our own words
            if e["type"] == "missing":
                text = f"is required. {_HINTS.get(key, '')}".strip()
            elif e["type"] == "extra_forbidden":
                text = (
                    "is not a dkim-relay config key (a typo?). Remove it: pulumi config rm " + key
                )
            else:
                text = f"{e.get('input')!r}: {e['msg']}. {_HINTS.get(key, '')}".strip()
            problems.append((key, text))
    if problems:
        raise ConfigError(problems)
    return model


def raw_from_strings(values: Mapping[str, str | None]) -> dict[str, Any]:
    """Pulumi hands config to programs as strings; lists, numbers and booleans come as JSON.

    Only keys whose type is not a string are decoded, so a selector such as "2024" stays
    a string. A value that does not decode is passed on as is, for validation to report.
    """
    decoded = {}
    for name, field in RelayConfig.model_fields.items():
        key = field.alias or name
        value = values.get(key)
        if value is None:
            continue
        if "str" in str(field.annotation) and "list" not in str(field.annotation):
            decoded[key] = value
            continue
        try:
            decoded[key] = json.loads(value)
        except ValueError:
            decoded[key] = value
    return decoded


def config_keys() -> list[str]:
    """Every config key of the model, camelCase, as in the stack file."""
    return [f.alias or n for n, f in RelayConfig.model_fields.items()]
