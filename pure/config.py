"""The stack's configuration: one pydantic model, validated before any resource exists.

This is the one schema: each key's type, default, description and check live here, and
`pure/config_schema.py` renders them as Pulumi.yaml's sections and docs/config.md. A bad
value is refused here, once; the renderers take the model's values and check nothing
again. `load_config` reports every problem at once, each naming the config key, what is
wrong and how to fix it. Secrets (SSH key, SMTP
passwords, API tokens) are not part of the model: they stay Pulumi secrets, and the
model only learns whether they are set.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WrapValidator,
    field_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

# ---- defaults ----------------------------------------------------------------------
DEFAULT_ACME_SERVER = "https://acme-v02.api.letsencrypt.org/directory"
DEFAULT_DKIM_SELECTOR = "relay"
DEFAULT_CONTAINER_NAME = "dkim-relay"
# The OpenSSH host key types sshHostKey may be (pure/relay_container.py pins each).
SSH_HOST_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
)
DEFAULT_SMTP_PORT = 587
DEFAULT_SUBMISSIONS_PORT = 465
DEFAULT_RELAY_IPV4_SUBNET = "172.30.87.0/24"
DEFAULT_RELAY_IPV6_SUBNET = "fd00:d6b1:587::/64"
# Where the VPS checks that outbound port 25 is open: one of gmail.com's MX hosts,
# resolved on the VPS at each run.
DEFAULT_PORT25_PROBE = "gmail-smtp-in.l.google.com"
DkimKeyBits = Literal[2048, 3072, 4096]
ALLOWED_KEY_BITS: tuple[int, ...] = get_args(DkimKeyBits)

CLOUDFLARE_EMAIL_ROUTING_SPF = "include:_spf.mx.cloudflare.net"
# RFC 7208 4.6.4: terms that cost a DNS lookup; more than 10 is a permerror.
SPF_LOOKUP_TERMS = ("include:", "exists:", "redirect=", "a:", "a/", "mx:", "mx/", "ptr:")
SPF_LOOKUP_LIMIT = 10

# ---- patterns (Python `re` syntax; the model validates with the same engine) --------
# Anchored with \Z, not $: `$` also matches before a final newline.
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
# One DNS label: a DKIM selector, or one part of a host name.
DNS_LABEL_PATTERN = rf"^{_LABEL}\Z"
# A fully qualified host name: two labels at least, the last not all digits (so not an
# IPv4 address), 253 characters at most, an optional final dot.
HOSTNAME_PATTERN = rf"^(?=.{{1,253}}\.?\Z)(?:{_LABEL}\.)+(?!\d+\.?\Z){_LABEL}\.?\Z"
CONTAINER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z"
SMTP_USER_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}\Z"
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\Z"
# RFC 7489 6.2: a mailto: URI, optionally with a size limit such as !10m.
MAILTO_PATTERN = r"^mailto:[^@\s!]+@[^@\s!]+(?:![0-9]+[kmgtKMGT]?)?\Z"
# A login at a smarthost: the password map's value is "user:password".
NEXTHOP_USER_PATTERN = r"^[^\s:]{1,256}\Z"
# Postfix's time syntax: a number and a unit (s, m, h, d, w).
DURATION_PATTERN = r"^[1-9][0-9]{0,5}[smhdw]\Z"
HTTPS_URL_PATTERN = r"^https://[^\s/]+(?:/\S*)?\Z"
NEXTHOP_PATTERN = r"^(?:\[[A-Za-z0-9.:-]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}\Z"


# ---- value types ---------------------------------------------------------------------
# A failed check raises one of two error types that `load_config` turns into text:
# "config_value" holds what the value is not (the input and a fix are added), and
# "config_advice" holds the whole explanation with its remedy.


def _explained(problem: str) -> WrapValidator:
    """Report any failure of the wrapped type as `problem`, instead of pydantic's text."""

    def wrap(value: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError("config_value", problem) from None

    return WrapValidator(wrap)


def _valid_as(kind: Any, at_least: int = 0) -> AfterValidator:
    """Check a text with pydantic's type `kind`, keeping the text as written (it goes to
    DNS records, Pulumi inputs and scripts as is). `at_least`: addresses in a network."""
    adapter: TypeAdapter[Any] = TypeAdapter(kind)

    def check(text: str) -> str:
        if getattr(adapter.validate_python(text), "num_addresses", at_least) < at_least:
            raise ValueError(f"fewer than {at_least} addresses")
        return text

    return AfterValidator(check)


def _advice(text: str) -> PydanticCustomError:
    return PydanticCustomError("config_advice", "{text}", {"text": text})


def _spf_term(term: str) -> str:
    t = term.lstrip("+-~?").lower()
    if t == "all":
        raise _advice(
            f"{term!r} is an `all` term; the record already ends with spfAll. "
            "Remove it and set spfAll (~all or -all) instead"
        )
    if t.startswith("redirect="):
        raise _advice(f"{term!r} would make spfAll unreachable. Remove it")
    if not re.match(r"^(ip4:|ip6:|include:|a\b|mx\b|ptr\b|exists:)", t):
        raise PydanticCustomError(
            "config_value", "is not an SPF mechanism (ip4:, ip6:, include:, a, mx, exists:)"
        )
    return term


Hostname = Annotated[
    str,
    Field(pattern=HOSTNAME_PATTERN),
    _explained(
        "is not a fully qualified domain name (letters, digits and hyphens in "
        "dot-separated labels; IDNs in their xn-- form)"
    ),
]
DnsLabel = Annotated[
    str,
    Field(pattern=DNS_LABEL_PATTERN),
    _explained(
        "is not a valid DNS label (1-63 letters, digits or hyphens, not starting or "
        "ending with a hyphen)"
    ),
]
EmailAddress = Annotated[str, Field(pattern=EMAIL_PATTERN), _explained("is not an email address")]
MailtoUri = Annotated[
    str,
    Field(pattern=MAILTO_PATTERN),
    _explained(
        "is not a mailto: URI. DMARC reports go to addresses written as mailto:dmarc@example.com"
    ),
]
SpfTerm = Annotated[str, AfterValidator(_spf_term)]
SmtpUser = Annotated[
    str,
    Field(pattern=SMTP_USER_PATTERN),
    _explained("is not a valid user name (lowercase letters, digits, . _ -)"),
]
Port = Annotated[int, Field(strict=True, ge=1, le=65535), _explained("is not a TCP port (1-65535)")]
# The relay's network needs room for the gateway, the relay and a sink.
Ipv4Subnet = Annotated[
    str,
    _valid_as(IPv4Network, at_least=8),
    _explained("is not an IPv4 subnet in CIDR form with room for the relay (/29 or larger)"),
]
Ipv6Subnet = Annotated[
    str,
    _valid_as(IPv6Network, at_least=8),
    _explained("is not an IPv6 subnet in CIDR form with room for the relay (/125 or larger)"),
]
Policy = Literal["none", "quarantine", "reject"]


def _nexthop_port(nexthop: str) -> str:
    if not 0 < int(nexthop.rpartition(":")[2]) < 65536:
        raise ValueError("port outside 1-65535")
    return nexthop


def _host_or_address(text: str) -> str:
    if not re.match(HOSTNAME_PATTERN, text):
        ip_address(text)  # ValueError when it is neither
    return text


HostOrAddress = Annotated[
    str,
    AfterValidator(_host_or_address),
    _explained("is not a host name or an IP address"),
]


# A sendAs entry: one address (alice@example.org) or a whole domain (@example.org).
SEND_AS_PATTERN = rf"^(?:[^@\s]+)?@{HOSTNAME_PATTERN[1:]}"
SendAs = Annotated[
    str,
    Field(pattern=SEND_AS_PATTERN),
    _explained("is not an address (alice@example.org) or a whole domain (@example.org)"),
]


class _Item(BaseModel):
    """An object inside a list key (camelCase in the stack file, like the top level)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        regex_engine="python-re",
    )


class SmtpUserObject(_Item):
    """A login restricted to some senders: ``{name, sendAs}``."""

    name: SmtpUser
    send_as: Annotated[list[SendAs], Field(min_length=1)]


def _user_kind(value: Any) -> str:
    return "object" if isinstance(value, Mapping) else "name"


SmtpUserEntry = Annotated[
    Annotated[SmtpUser, Tag("name")] | Annotated[SmtpUserObject, Tag("object")],
    Discriminator(_user_kind),
]


class ExtraDomain(_Item):
    """Another domain the relay signs for; a field left out takes the primary's value
    (dkimRetiredSelectors too, when dkimSelector is left out: the domain then rotates with
    the primary)."""

    domain: Hostname
    dkim_selector: DnsLabel | None = None
    dkim_retired_selectors: list[DnsLabel] | None = None
    dmarc_policy: Annotated[Policy, _explained("is not one of none, quarantine, reject")] | None = (
        None
    )
    dmarc_rua: list[MailtoUri] | None = None
    dmarc_ruf: list[MailtoUri] | None = None
    spf_extra: list[SpfTerm] | None = None
    cloudflare_zone_id: str | None = None

    @field_validator("dkim_retired_selectors")
    @classmethod
    def _retired_apart(cls, retired: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if retired is None:
            return None
        if info.data.get("dkim_selector") in retired:
            raise _advice(
                "retires the domain's own signing selector (dkimSelector). Remove it from "
                "dkimRetiredSelectors, or pick a new dkimSelector"
            )
        if len(set(retired)) != len(retired):
            raise _advice("lists a selector twice. Remove the duplicate")
        return retired


@dataclass(frozen=True)
class MailDomain:
    """One domain the relay signs for, every value resolved (the primary's where unset)."""

    domain: str
    dkim_selector: str
    dkim_retired_selectors: tuple[str, ...]
    dmarc_policy: str
    dmarc_rua: tuple[str, ...]
    dmarc_ruf: tuple[str, ...]
    spf_extra: tuple[str, ...]
    cloudflare_zone_id: str | None
    primary: bool

    @property
    def all_selectors(self) -> list[str]:
        return [self.dkim_selector, *self.dkim_retired_selectors]


def _bare(domain: str) -> str:
    return domain.lower().rstrip(".")


def within(name: str, domain: str) -> bool:
    """Whether ``name`` is ``domain`` or a name under it."""
    name, domain = _bare(name), _bare(domain)
    return name == domain or name.endswith("." + domain)


def mailto_domain(uri: str) -> str:
    """The domain of a ``mailto:`` URI (size limit dropped)."""
    return _bare(uri.split("!", 1)[0].rpartition("@")[2])


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
    """Every key of the `dkim-relay:` config namespace (camelCase in the stack file).

    Each field's example is the value an error message's `pulumi config set` fix uses.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        regex_engine="python-re",
    )

    # Identity and DNS
    domain: Hostname = Field(
        description="The domain you send mail from, e.g. example.com (IDNs in xn-- form)",
        examples=["example.com"],
    )
    relay_host: Hostname | None = Field(
        None,
        description=(
            'Fully qualified name of the relay, Gmail\'s "SMTP Server" (default smtp.<domain>)'
        ),
        examples=["smtp.example.com"],
    )
    vps_ipv4: (
        Annotated[
            str,
            _valid_as(IPv4Address),
            _explained("is not an IPv4 address (an IPv6 address goes in vpsIpv6)"),
        ]
        | None
    ) = Field(
        None,
        description=(
            "Public IPv4 address of the VPS (SPF ip4, A record, published port); "
            "required for an existing VPS, left empty with vpsProvider hetzner"
        ),
        examples=["203.0.113.25"],
    )
    vps_ipv6: (
        Annotated[
            str,
            _valid_as(IPv6Address),
            _explained("is not an IPv6 address (the IPv4 address goes in vpsIpv4)"),
        ]
        | None
    ) = Field(
        None,
        description="Public IPv6 address of the VPS (SPF ip6, AAAA record); empty for IPv4 only",
        examples=["2001:db8::25"],
    )
    dns_provider: Annotated[
        Literal["cloudflare", "manual"], _explained("is not cloudflare or manual")
    ] = Field(
        "manual",
        description=(
            "cloudflare: the stack publishes the records; manual: it prints them for you to add"
        ),
        examples=["manual"],
    )
    cloudflare_zone_id: str | None = Field(
        None,
        description="Cloudflare zone id of the domain (looked up by domain when empty)",
        examples=["<zone id>"],
    )
    cloudflare_account_id: str | None = Field(
        None,
        description=(
            "Cloudflare account id, for Email Routing's destination address (looked up when empty)"
        ),
        examples=["<account id>"],
    )
    dkim_selector: DnsLabel = Field(
        DEFAULT_DKIM_SELECTOR,
        description=(
            "The DKIM selector the relay signs with (a DNS label); change it to rotate the key"
        ),
        examples=["relay2026"],
    )
    dkim_retired_selectors: list[DnsLabel] = Field(
        default_factory=list,
        description=(
            "Old selectors whose keys stay published (for mail still in flight) but no longer sign"
        ),
        examples=["relay"],
    )
    dkim_key_bits: Annotated[
        DkimKeyBits,
        _explained(
            "is not an allowed RSA key size: use 2048, 3072 or 4096 (receivers treat keys "
            "under 2048 bits as weak)"
        ),
    ] = Field(
        2048, description="RSA key size of a new DKIM key, 2048, 3072 or 4096", examples=[2048]
    )
    dmarc_policy: Annotated[Policy, _explained("is not one of none, quarantine, reject")] = Field(
        "none",
        description="DMARC p=: none (monitor), quarantine or reject",
        examples=["quarantine"],
    )
    dmarc_subdomain_policy: (
        Annotated[
            Policy,
            _explained(
                "is not one of none, quarantine, reject (or unset it to follow dmarcPolicy)"
            ),
        ]
        | None
    ) = Field(
        None,
        description="DMARC sp=: none, quarantine or reject (empty: as dmarcPolicy)",
        examples=["quarantine"],
    )
    dmarc_pct: Annotated[
        int, Field(strict=True, ge=0, le=100), _explained("is outside 0-100 (a percentage)")
    ] = Field(
        100,
        description="DMARC pct=: share of failing mail the policy applies to, 0-100",
        examples=[100],
    )
    dmarc_rua: list[MailtoUri] = Field(
        default_factory=list,
        description="DMARC rua=: mailto: URIs that receive aggregate reports",
        examples=["mailto:dmarc@example.com"],
    )
    dmarc_ruf: list[MailtoUri] = Field(
        default_factory=list,
        description="DMARC ruf=: mailto: URIs that receive failure reports",
        examples=["mailto:dmarc@example.com"],
    )
    dmarc_alignment: Annotated[
        Literal["relaxed", "strict"], _explained("is not relaxed or strict")
    ] = Field(
        "relaxed", description="DMARC adkim= and aspf=: relaxed or strict", examples=["relaxed"]
    )
    spf_extra: list[SpfTerm] = Field(
        default_factory=list,
        description=(
            "Extra SPF mechanisms, e.g. include:_spf.google.com (10 DNS lookups at most in all)"
        ),
        examples=["include:_spf.google.com"],
    )
    spf_all: Annotated[Literal["~all", "-all"], _explained("is not ~all or -all")] = Field(
        "~all", description="How SPF ends: ~all (softfail) or -all (fail)", examples=["~all"]
    )
    forward_to: EmailAddress | None = Field(
        None,
        description=(
            "Forward inbound mail for the domain to this address with Cloudflare Email "
            "Routing (needs dnsProvider cloudflare)"
        ),
        examples=["me@gmail.com"],
    )
    dns_ttl: Annotated[
        Literal[1] | Annotated[int, Field(strict=True, ge=60, le=86400)],
        _explained("is not a TTL Cloudflare accepts: 1 (automatic) or 60 to 86400 seconds"),
    ] = Field(
        3600,
        description="TTL of the records, 1 (Cloudflare's automatic) or 60-86400 seconds",
        examples=[3600],
    )

    extra_domains: list[ExtraDomain] = Field(
        default_factory=list,
        description=(
            "More domains the relay signs for, each with its own DKIM key and SPF, DKIM and "
            "DMARC records: objects {domain, dkimSelector, dkimRetiredSelectors, dmarcPolicy, "
            "dmarcRua, dmarcRuf, spfExtra, cloudflareZoneId}, only domain required; a field "
            "left out takes the primary domain's value"
        ),
        examples=[{"domain": "example.org"}],
    )

    # Where the relay runs
    deploy_target: Annotated[Literal["vps", "local"], _explained("is not vps or local")] = Field(
        "vps",
        description="vps: a server reached over SSH; local: this machine's Docker engine (trials)",
        examples=["vps"],
    )
    vps_provider: Annotated[
        Literal["existing", "hetzner"], _explained("is not existing or hetzner")
    ] = Field(
        "existing",
        description=(
            "existing: a VPS you made (vpsIpv4, sshHostKey); hetzner: the stack creates a "
            "Hetzner Cloud server with its reverse DNS and firewall (needs the secret "
            "hcloud:token)"
        ),
        examples=["hetzner"],
    )
    hetzner_location: DnsLabel = Field(
        "fsn1",
        description="Hetzner Cloud location of the server (fsn1, nbg1, hel1, ash, hil, sin)",
        examples=["fsn1"],
    )
    hetzner_server_type: DnsLabel = Field(
        "cx22",
        description="Hetzner Cloud server type (the smallest is plenty for a relay)",
        examples=["cx22"],
    )
    hetzner_image: DnsLabel = Field(
        "debian-12",
        description="Hetzner Cloud image of the server (the host steps expect Debian or Ubuntu)",
        examples=["debian-12"],
    )
    ssh_allow_from: Annotated[
        list[
            Annotated[
                str,
                _valid_as(IPv4Network | IPv6Network),
                _explained("is not a network in CIDR form (203.0.113.0/24, 2001:db8::/32)"),
            ]
        ],
        Field(min_length=1),
    ] = Field(
        default_factory=lambda: ["0.0.0.0/0", "::/0"],
        description=(
            "vpsProvider hetzner: networks the cloud firewall lets reach SSH (default any: "
            "pull-request previews connect from CI runners)"
        ),
        examples=["203.0.113.0/24"],
    )
    server_boot_timeout: Annotated[
        int, Field(strict=True, ge=10, le=3600), _explained("is outside 10-3600 seconds")
    ] = Field(
        300,
        description=(
            "vpsProvider hetzner: how long a new server may take to be created, and then to "
            "answer SSH, in seconds"
        ),
        examples=[300],
    )
    docker_host: str | None = Field(
        None,
        description=(
            "Docker engine address (default ssh://<sshUser>@<sshHost>:<sshPort> for a "
            "VPS, the local socket for local)"
        ),
        examples=["ssh://root@203.0.113.25"],
    )
    ssh_host: str | None = Field(
        None,
        description="Address the stack reaches the VPS at over SSH (default vpsIpv4)",
        examples=["203.0.113.25"],
    )
    ssh_user: str = Field(
        "root",
        description="SSH user on the VPS (root, or a user with passwordless sudo)",
        examples=["root"],
    )
    ssh_port: Port = Field(
        22, description="SSH port of the VPS (kept open by the firewall)", examples=[22]
    )
    ssh_host_key: str | None = Field(
        None,
        description=(
            'The VPS\'s SSH host public key ("ssh-ed25519 AAAA...", from '
            "/etc/ssh/ssh_host_ed25519_key.pub), pinned; required for a VPS"
        ),
        examples=["ssh-ed25519 AAAA..."],
    )
    acme_email: EmailAddress | None = Field(
        None,
        description="Email for the Let's Encrypt account (expiry notices); required on a VPS",
        examples=["you@example.com"],
    )
    acme_server: Annotated[
        str,
        Field(pattern=HTTPS_URL_PATTERN),
        _explained("is not an https:// URL (an ACME directory)"),
    ] = Field(
        DEFAULT_ACME_SERVER,
        description="ACME directory URL (Let's Encrypt staging for trials)",
        examples=[DEFAULT_ACME_SERVER],
    )
    acme_extra_names: list[Hostname] = Field(
        default_factory=list,
        description="More names on the relay's certificate",
        examples=["mail.example.com"],
    )
    acme_ca_bundle: str | None = Field(
        None,
        description=(
            "Path on the VPS of a CA bundle that certbot trusts for acmeServer (test ACME"
            " servers only)"
        ),
        examples=["/etc/ssl/certs/test-ca.pem"],
    )
    tls_cert_dir: str | None = Field(
        None,
        description=(
            "Local stacks only, a folder laid out like /etc/letsencrypt with the relay's "
            "certificate"
        ),
        examples=[".local/letsencrypt"],
    )

    # The relay
    smtp_users: Annotated[list[SmtpUserEntry], Field(min_length=1)] = Field(
        default_factory=lambda: list[str | SmtpUserObject](["gmail"]),
        description=(
            "SMTP logins (<name>@<domain>), each with a generated password unless set in "
            "smtpPasswords: a name may send as any address of the stack's domains; an "
            "object {name, sendAs} only as the addresses (alice@example.org) and whole "
            "domains (@example.org) in sendAs"
        ),
        examples=["gmail"],
    )
    smtp_port: Port = Field(
        DEFAULT_SMTP_PORT,
        description="Published submission port (STARTTLS)",
        examples=[DEFAULT_SMTP_PORT],
    )
    submissions465: StrictBool = Field(
        False, description="Also publish 465 (implicit TLS)", examples=[True]
    )
    submissions_port: Port = Field(
        DEFAULT_SUBMISSIONS_PORT,
        description=(
            "Published host port for implicit-TLS submission (465) when submissions465 is on"
        ),
        examples=[DEFAULT_SUBMISSIONS_PORT],
    )
    relay_nexthop: (
        Annotated[
            str,
            Field(pattern=NEXTHOP_PATTERN),
            AfterValidator(_nexthop_port),
            _explained("is not a next hop such as [mail.example.net]:25"),
        ]
        | None
    ) = Field(
        None,
        description=(
            "Send all outbound mail to this [host]:port instead of the recipients' MX "
            "(local trials, smarthosts)"
        ),
        examples=["[smarthost.example.net]:587"],
    )
    port25_probe: HostOrAddress = Field(
        DEFAULT_PORT25_PROBE,
        description=(
            "Host (name or address) whose port 25 the VPS connects to on each deployment,"
            " to tell whether the provider blocks outbound SMTP (stack output "
            "outboundSmtp)"
        ),
        examples=[DEFAULT_PORT25_PROBE],
    )
    relay_nexthop_user: (
        Annotated[
            str,
            Field(pattern=NEXTHOP_USER_PATTERN),
            _explained("is not a smarthost login (no spaces or ':')"),
        ]
        | None
    ) = Field(
        None,
        description=(
            "SMTP AUTH login at relayNexthop (a smarthost, e.g. on 587 when the VPS's "
            "port 25 is blocked); needs the secret relayNexthopPassword, and makes TLS to"
            " the smarthost mandatory"
        ),
        examples=["relay@example.com"],
    )
    outbound_ipv6: Annotated[
        Literal["prefer-ipv4", "any", "never"],
        _explained("is not one of prefer-ipv4, any, never"),
    ] = Field(
        "prefer-ipv4",
        description=(
            "IPv6 toward recipients' mail servers: prefer-ipv4 (IPv6 only when a server "
            "has no IPv4), any (needs a PTR for vpsIpv6 that points back), never"
        ),
        examples=["any"],
    )
    delay_warning_time: Annotated[
        str,
        Field(pattern=DURATION_PATTERN),
        _explained("is not a duration such as 4h (a number and s, m, h, d or w)"),
    ] = Field(
        "4h",
        description=(
            "After how long a sender hears that a message is still queued (Postfix time, "
            "e.g. 4h); delay notices and bounces are DKIM-signed and go to the sender"
        ),
        examples=["4h"],
    )
    relay_container_name: Annotated[
        str,
        Field(pattern=CONTAINER_NAME_PATTERN),
        _explained("is not a container name (1-63 letters, digits, _ . -)"),
    ] = Field(
        DEFAULT_CONTAINER_NAME,
        description="Name of the relay container (the certbot deploy hook reloads it by this name)",
        examples=[DEFAULT_CONTAINER_NAME],
    )
    relay_ipv4_subnet: Ipv4Subnet = Field(
        DEFAULT_RELAY_IPV4_SUBNET,
        description="IPv4 subnet of the relay's Docker network",
        examples=[DEFAULT_RELAY_IPV4_SUBNET],
    )
    relay_ipv6_subnet: Ipv6Subnet = Field(
        DEFAULT_RELAY_IPV6_SUBNET,
        description="IPv6 subnet of the relay's Docker network (NATed by Docker's ip6tables)",
        examples=[DEFAULT_RELAY_IPV6_SUBNET],
    )

    @field_validator("smtp_users")
    @classmethod
    def _users_once(cls, users: list[str | SmtpUserObject]) -> list[str | SmtpUserObject]:
        names = [u if isinstance(u, str) else u.name for u in users]
        if len(set(names)) != len(names):
            raise _advice("lists a user twice. Remove the duplicate")
        return users

    @field_validator("dkim_retired_selectors")
    @classmethod
    def _retired_apart_from_signing(cls, retired: list[str], info: ValidationInfo) -> list[str]:
        selector = info.data.get("dkim_selector")
        if selector in retired:
            raise _advice(
                f"{selector!r} is the signing selector (dkimSelector) and cannot also be "
                "retired. Remove it from dkimRetiredSelectors, or pick a new dkimSelector"
            )
        if len(set(retired)) != len(retired):
            raise _advice("lists a selector twice. Remove the duplicate")
        return retired

    # ---- derived values -------------------------------------------------------------
    @property
    def relay_fqdn(self) -> str:
        return self.relay_host or f"smtp.{self.domain}"

    @property
    def ssh_target(self) -> str | None:
        """Where SSH goes (None with vpsProvider hetzner: the server's address)."""
        return self.ssh_host or self.vps_ipv4

    @property
    def cloud_server(self) -> bool:
        """The stack creates the VPS; its addresses are outputs, not config."""
        return self.deploy_target == "vps" and self.vps_provider == "hetzner"

    def with_addresses(self, ipv4: str, ipv6: str | None) -> RelayConfig:
        """This config with the VPS's addresses, once the created server has them."""
        return self.model_copy(update={"vps_ipv4": ipv4, "vps_ipv6": ipv6})

    @property
    def all_selectors(self) -> list[str]:
        return [self.dkim_selector, *self.dkim_retired_selectors]

    @property
    def user_names(self) -> list[str]:
        """The SMTP user names, in the order given (the login is <name>@<domain>)."""
        return [u if isinstance(u, str) else u.name for u in self.smtp_users]

    @property
    def send_as(self) -> dict[str, list[str]]:
        """user name -> its sendAs entries, lowercased; empty: any address of any domain."""
        return {
            u.name: [a.lower() for a in u.send_as]
            for u in self.smtp_users
            if isinstance(u, SmtpUserObject)
        }

    @property
    def domains(self) -> list[str]:
        """Every domain the relay signs for, the primary first."""
        return [self.domain, *(e.domain for e in self.extra_domains)]

    @property
    def mail_domains(self) -> list[MailDomain]:
        """Every domain with its values resolved, the primary first."""
        out = [
            MailDomain(
                self.domain,
                self.dkim_selector,
                tuple(self.dkim_retired_selectors),
                self.dmarc_policy,
                tuple(self.dmarc_rua),
                tuple(self.dmarc_ruf),
                tuple(self.spf_extra),
                self.cloudflare_zone_id,
                primary=True,
            )
        ]
        for e in self.extra_domains:
            own_selector = e.dkim_selector is not None
            retired = e.dkim_retired_selectors
            if retired is None:
                retired = [] if own_selector else self.dkim_retired_selectors
            out.append(
                MailDomain(
                    e.domain,
                    e.dkim_selector or self.dkim_selector,
                    tuple(retired),
                    e.dmarc_policy or self.dmarc_policy,
                    tuple(self.dmarc_rua if e.dmarc_rua is None else e.dmarc_rua),
                    tuple(self.dmarc_ruf if e.dmarc_ruf is None else e.dmarc_ruf),
                    tuple(self.spf_extra if e.spf_extra is None else e.spf_extra),
                    e.cloudflare_zone_id,
                    primary=False,
                )
            )
        return out

    def mail_domain(self, domain: str) -> MailDomain:
        return next(m for m in self.mail_domains if _bare(m.domain) == _bare(domain))

    @property
    def relay_domain(self) -> str:
        """The domain whose records hold the relay's A/AAAA (the longest that holds it)."""
        holders = [d for d in self.domains if within(self.relay_fqdn, d)]
        return max(holders, key=len) if holders else self.domain

    def for_domain(self, domain: str) -> RelayConfig:
        """This config as if ``domain`` were the only one (the records builder's view):
        its own selectors, DMARC and SPF values; forwarding stays with the primary."""
        m = self.mail_domain(domain)
        if m.primary:
            return self
        return self.model_copy(
            update={
                "domain": m.domain,
                "relay_host": self.relay_fqdn,  # not smtp.<this domain>
                "dkim_selector": m.dkim_selector,
                "dkim_retired_selectors": list(m.dkim_retired_selectors),
                "dmarc_policy": m.dmarc_policy,
                "dmarc_rua": list(m.dmarc_rua),
                "dmarc_ruf": list(m.dmarc_ruf),
                "spf_extra": list(m.spf_extra),
                "cloudflare_zone_id": m.cloudflare_zone_id,
                "forward_to": None,
                "extra_domains": [],
            }
        )

    def report_authorizations(self) -> list[tuple[str, str]]:
        """(reported domain, report domain) pairs that need RFC 7489 7.1's record
        ``<reported>._report._dmarc.<report domain>``: a rua/ruf address outside the
        reported domain (and not its parent or a name under it: the same organization)."""
        pairs: list[tuple[str, str]] = []
        for m in self.mail_domains:
            for uri in (*m.dmarc_rua, *m.dmarc_ruf):
                target = mailto_domain(uri)
                same_org = within(target, m.domain) or within(m.domain, target)
                if not same_org and (_bare(m.domain), target) not in pairs:
                    pairs.append((_bare(m.domain), target))
        return pairs

    def owned_domain_of(self, name: str) -> str | None:
        """The stack's domain (the longest) that ``name`` is in, if any."""
        holders = [d for d in self.domains if within(name, d)]
        return max(holders, key=len) if holders else None

    @property
    def spf_terms(self) -> list[str]:
        terms = [f"ip4:{self.vps_ipv4}"]
        if self.vps_ipv6:
            terms.append(f"ip6:{self.vps_ipv6}")
        terms += self.spf_extra
        if self.forward_to and CLOUDFLARE_EMAIL_ROUTING_SPF not in terms:
            terms.append(CLOUDFLARE_EMAIL_ROUTING_SPF)
        return terms


_FIELDS = {field.alias or name: field for name, field in RelayConfig.model_fields.items()}


def config_keys() -> list[str]:
    """Every config key of the model, camelCase, as in the stack file."""
    return list(_FIELDS)


@functools.cache
def config_types() -> dict[str, str]:
    """The JSON type of each key ("string", "integer", "boolean", "array"), as the model
    declares it: Pulumi.yaml declares the same, and the program picks its getter by it."""
    props = RelayConfig.model_json_schema(by_alias=True)["properties"]
    types = {}
    for key, schema in props.items():
        options = [schema, *schema.get("anyOf", [])]
        types[key] = next(o["type"] for o in options if o.get("type", "null") != "null")
    return types


def _fix(key: str, index: int | None = None) -> str:
    """`pulumi config set` with the key's example value."""
    value = _FIELDS[key].examples[0]  # type: ignore[index]
    example = shlex.quote(value if isinstance(value, str) else json.dumps(value))
    if index is not None:
        return f"Fix: pulumi config set --path '{key}[{index}]' {example}"
    return f"Fix: pulumi config set {key} {example}"


def _explain(error: Mapping[str, Any]) -> tuple[str, str]:
    """A pydantic error as (key, what is wrong and how to fix it)."""
    loc = error["loc"]
    key = str(loc[0]) if loc else "config"
    if key not in _FIELDS:
        return key, f"is not a dkim-relay config key (a typo?). Remove it: pulumi config rm {key}"
    field = _FIELDS[key]
    index = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else None
    if index is None and "array" == config_types()[key]:
        index = 0
    kind, value = error["type"], error.get("input")
    # smtpUsers' items carry the tag of their kind ("name" or "object") in the location.
    inner = list(loc[3:] if key == "smtpUsers" and len(loc) > 2 else loc[2:])
    if len(loc) > 2 and inner:
        # Inside an object item: name the item's field, the fix sets that field.
        path = f"{key}[{index}]" + "".join(
            f"[{p}]" if isinstance(p, int) else f".{p}" for p in inner
        )
        if kind == "extra_forbidden":
            return key, f"{path} is not a field of this object (a typo?). Remove it: " + (
                f"pulumi config rm --path '{path}'"
            )
        if kind == "missing":
            return key, f"{path} is required. Fix: pulumi config set --path '{path}' <value>"
        text = error["msg"] if kind in ("config_advice", "config_value") else error["msg"].lower()
        shown = "" if kind == "config_advice" else f"{value!r} "
        return key, f"{path}: {shown}{text}. Fix: pulumi config set --path '{path}' <value>"
    if kind == "missing":
        return key, f"is required: {field.description}. {_fix(key)}"
    if kind == "config_advice":
        return key, error["msg"]
    if kind == "config_value":
        return key, f"{value!r} {error['msg']}. {_fix(key, index)}"
    if kind == "too_short":
        return key, f"is empty; it needs one entry at least. {_fix(key, index)}"
    msg = error["msg"][:1].lower() + error["msg"][1:]
    return key, f"{value!r}: {msg}. {_fix(key, index)}"


def _cross_checks(raw: Mapping[str, Any], secrets_set: set[str]) -> list[tuple[str, str]]:
    """Rules between keys, on the raw values so that they are found whatever else is wrong."""
    problems: list[tuple[str, str]] = []
    domain = str(raw.get("domain") or "").lower().rstrip(".")
    extras = _extra_domain_names(raw)
    domains = [d for d in (domain, *extras) if re.match(HOSTNAME_PATTERN, d)]
    relay = str(raw.get("relayHost") or "").lower().rstrip(".")
    if relay and re.match(HOSTNAME_PATTERN, relay) and domains:
        if not any(within(relay, d) for d in domains):
            problems.append(
                (
                    "relayHost",
                    f"{raw['relayHost']!r} is outside {' and '.join(domains)}, so this stack "
                    f"cannot publish its address. Fix: pulumi config set relayHost smtp.{domain}",
                )
            )
    problems += _domain_list_checks(domain, extras)
    problems += _send_as_checks(raw.get("smtpUsers"), domains)
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
    if provider == "cloudflare":
        for i, item in enumerate(raw.get("extraDomains") or []):
            if (
                isinstance(item, Mapping)
                and item.get("domain")
                and not item.get("cloudflareZoneId")
            ):
                problems.append(
                    (
                        "extraDomains",
                        f"dnsProvider is cloudflare but no Cloudflare zone was found for "
                        f"{item['domain']!r} (the API token must reach that zone too). Fix: "
                        f"pulumi config set --path 'extraDomains[{i}].cloudflareZoneId' "
                        "<zone id>",
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
    spf_lists = [("spfExtra", raw.get("spfExtra") or [], bool(raw.get("forwardTo")))]
    for item in raw.get("extraDomains") or []:
        if isinstance(item, Mapping) and isinstance(item.get("spfExtra"), list):
            spf_lists.append(("extraDomains", item["spfExtra"], False))
    for key, extra, routing in spf_lists:
        if not isinstance(extra, list):
            continue
        terms = [str(t).lstrip("+-~?").lower() for t in extra]
        if routing and CLOUDFLARE_EMAIL_ROUTING_SPF not in terms:
            terms.append(CLOUDFLARE_EMAIL_ROUTING_SPF)
        lookups = sum(1 for t in terms if t in ("a", "mx", "ptr") or t.startswith(SPF_LOOKUP_TERMS))
        if lookups > SPF_LOOKUP_LIMIT:
            problems.append(
                (
                    key,
                    f"the SPF record would need {lookups} DNS lookups (include, a, mx, ptr, "
                    f"exists each cost one; Email Routing adds one); receivers stop at "
                    f"{SPF_LOOKUP_LIMIT} and fail SPF. Replace includes with ip4:/ip6: terms",
                )
            )
    problems += _smarthost_checks(raw, secrets_set)
    if raw.get("submissions465") is True and raw.get("submissionsPort", 465) == raw.get(
        "smtpPort", DEFAULT_SMTP_PORT
    ):
        problems.append(
            (
                "submissionsPort",
                "is the same host port as smtpPort; 587 and 465 need a port each. Fix: "
                "pulumi config set submissionsPort 465",
            )
        )
    if raw.get("vpsProvider") == "hetzner":
        problems += _cloud_server_checks(raw, secrets_set)
    elif not raw.get("vpsIpv4"):
        problems.append(
            (
                "vpsIpv4",
                "is required: the public IPv4 address of the VPS (SPF ip4, A record, "
                "published port). Fix: pulumi config set vpsIpv4 203.0.113.25 (or let the "
                "stack create a server: pulumi config set vpsProvider hetzner)",
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
        host_key = str(raw.get("sshHostKey") or "").split()
        if host_key and (len(host_key) < 2 or host_key[0] not in SSH_HOST_KEY_TYPES):
            problems.append(
                (
                    "sshHostKey",
                    f"{raw['sshHostKey']!r} is not one OpenSSH public key line ('ssh-ed25519 "
                    "AAAA...'). On the VPS: cat /etc/ssh/ssh_host_ed25519_key.pub. Fix: pulumi "
                    "config set sshHostKey 'ssh-ed25519 AAAA...'",
                )
            )
        if not raw.get("sshHostKey") and raw.get("vpsProvider") != "hetzner":
            problems.append(
                (
                    "sshHostKey",
                    "is needed to pin the VPS's SSH host key (the stack reaches its Docker "
                    "engine and runs its steps over SSH, and never trusts an unknown key). "
                    "On the VPS: cat /etc/ssh/ssh_host_ed25519_key.pub. Fix: pulumi config "
                    "set sshHostKey 'ssh-ed25519 AAAA...'",
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
    elif not raw.get("tlsCertDir"):
        problems.append(
            (
                "tlsCertDir",
                "a local stack needs a folder laid out like /etc/letsencrypt holding the "
                "relay's certificate. Fix: run scripts/local-up.sh, which makes one",
            )
        )
    return problems


# Keys an existing VPS is described by; a created server makes them outputs.
_SERVER_GIVES = {
    "vpsIpv4": "its IPv4 address",
    "vpsIpv6": "its IPv6 address",
    "sshHostKey": "its SSH host key (generated by the stack and handed to it at creation)",
    "sshHost": "the address SSH goes to",
}


def _cloud_server_checks(raw: Mapping[str, Any], secrets_set: set[str]) -> list[tuple[str, str]]:
    """vpsProvider hetzner: the server's addresses and host key come from the server."""
    problems: list[tuple[str, str]] = []
    for key, what in _SERVER_GIVES.items():
        if raw.get(key):
            problems.append(
                (
                    key,
                    f"is set, but with vpsProvider hetzner the stack creates the server and "
                    f"takes {what} from it (stack output). Remove it: pulumi config rm {key}",
                )
            )
    if raw.get("deployTarget", "vps") != "vps":
        problems.append(
            (
                "vpsProvider",
                "hetzner creates a VPS, but deployTarget is local. Fix: pulumi config set "
                "deployTarget vps (or pulumi config set vpsProvider existing)",
            )
        )
    if raw.get("sshUser", "root") != "root":
        problems.append(
            (
                "sshUser",
                "a new Hetzner Cloud server lets only root in with the stack's SSH key. "
                "Fix: pulumi config rm sshUser",
            )
        )
    if raw.get("sshPort", 22) != 22:
        problems.append(
            (
                "sshPort",
                "a new Hetzner Cloud server's sshd listens on 22. Fix: pulumi config rm sshPort",
            )
        )
    if "hcloud:token" not in secrets_set:
        problems.append(
            (
                "hcloud:token",
                "is needed to create the server (a Hetzner Cloud API token with Read & "
                "Write, from the project's Security > API tokens page). Fix: pulumi config "
                "set --secret hcloud:token",
            )
        )
    return problems


def _extra_domain_names(raw: Mapping[str, Any]) -> list[str]:
    items = raw.get("extraDomains") or []
    if not isinstance(items, list):
        return []
    return [
        str(i["domain"]).lower().rstrip(".")
        for i in items
        if isinstance(i, Mapping) and isinstance(i.get("domain"), str)
    ]


def _domain_list_checks(primary: str, extras: list[str]) -> list[tuple[str, str]]:
    problems = []
    for i, name in enumerate(extras):
        if name == primary:
            problems.append(
                (
                    "extraDomains",
                    f"{name!r} is the primary domain (domain); it is signed for already. "
                    f"Remove it: pulumi config rm --path 'extraDomains[{i}]'",
                )
            )
        elif name in extras[:i]:
            problems.append(
                (
                    "extraDomains",
                    f"lists {name!r} twice. Remove the second: pulumi config rm --path "
                    f"'extraDomains[{i}]'",
                )
            )
    return problems


def _send_as_checks(users: Any, domains: list[str]) -> list[tuple[str, str]]:
    """Each sendAs entry must be inside one of the stack's domains."""
    problems: list[tuple[str, str]] = []
    if not isinstance(users, list) or not domains:
        return problems
    for i, user in enumerate(users):
        entries = user.get("sendAs") if isinstance(user, Mapping) else None
        if not isinstance(entries, list):
            continue
        for j, entry in enumerate(entries):
            at = str(entry).rpartition("@")[2].lower().rstrip(".")
            if "@" in str(entry) and at and at not in domains:
                problems.append(
                    (
                        "smtpUsers",
                        f"{entry!r} (sendAs of {user.get('name')!r}) is outside the stack's "
                        f"domains ({', '.join(domains)}): the relay signs only for those. Add "
                        f"the domain to extraDomains, or Fix: pulumi config set --path "
                        f"'smtpUsers[{i}].sendAs[{j}]' @{domains[0]}",
                    )
                )
    return problems


def _smarthost_checks(raw: Mapping[str, Any], secrets_set: set[str]) -> list[tuple[str, str]]:
    """A smarthost login needs its user, its password and the smarthost itself."""
    user, password = raw.get("relayNexthopUser"), "relayNexthopPassword" in secrets_set
    if user and not password:
        return [
            (
                "relayNexthopPassword",
                "relayNexthopUser is set but its password is not. Fix: pulumi config set "
                "--secret relayNexthopPassword (it asks for the smarthost's password)",
            )
        ]
    if password and not user:
        return [
            (
                "relayNexthopUser",
                "relayNexthopPassword is set but the login it belongs to is not. Fix: "
                "pulumi config set relayNexthopUser relay@example.com (or pulumi config rm "
                "relayNexthopPassword)",
            )
        ]
    if user and not raw.get("relayNexthop"):
        return [
            (
                "relayNexthop",
                "relayNexthopUser is set but there is no smarthost to log in to. Fix: "
                "pulumi config set relayNexthop '[smarthost.example.net]:587'",
            )
        ]
    return []


def load_config(
    raw: Mapping[str, Any],
    secrets_set: set[str] | None = None,
    plain_secrets: set[str] | None = None,
) -> RelayConfig:
    """Validate raw stack config (camelCase keys); raise ConfigError listing every problem.

    An empty string means "not set": Pulumi.yaml cannot declare a null default.
    ``plain_secrets``: secret keys set without --secret (readable in the stack file).
    """
    raw = {k: v for k, v in raw.items() if v is not None and v != ""}
    problems = _cross_checks(raw, secrets_set or set())
    problems += [
        (
            key,
            "is stored in plain text in the stack file; it must be a secret. Fix: pulumi "
            f"config rm {key} && pulumi config set --secret {key}",
        )
        for key in sorted(plain_secrets or ())
    ]
    try:
        model = RelayConfig.model_validate(raw)
    except ValidationError as err:
        problems += [_explain(e) for e in err.errors()]
    if problems:
        raise ConfigError(problems)
    return model
