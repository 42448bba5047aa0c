"""Pure renderers for every file the relay container needs.

No Pulumi, no I/O: plain typed arguments in, ``dict[str, str]`` (path -> content) out.
``components/relay.py`` ships the result into the container; the tests feed it to the
real image.

Contract with the image (``relay/entrypoint.sh``):

* What every stack shares is in the image, as files a mail administrator reviews:
  ``relay/conf/postfix/`` (``main.cf``, ``master.cf``, ``sender_access``,
  ``long_lines``, ``sasl/smtpd.conf``) and ``relay/conf/opendkim/`` (``opendkim.conf``,
  ``TrustedHosts``, ``from_policy.lua``, ``from_refusal.lua``; the Lua linted by
  luacheck). This module renders only what a stack changes, delivered under
  ``CONFIG_DIR`` (``/etc/relay/config``) with the relative paths returned by
  :func:`render_config`: ``postfix/main-stack.cf`` (``postconf -e`` lines),
  ``postfix/master-stack.cf`` (``postconf -P`` lines), ``postfix/sender_login``,
  ``postfix/milter_headers``, ``opendkim/KeyTable``, ``opendkim/SigningTable`` and
  ``opendkim/from_policy_values.lua`` (put in front of ``from_policy.lua``).
* Secrets are delivered under ``SECRETS_DIR`` (``/run/relay-secrets``), either as
  container uploads or as a host directory bind-mounted read-only. Layout
  (rendered by :func:`render_secrets` for uploads; the host writes the same layout):

  - ``dkim/<selector>.private``: the PEM private key of each selector of the primary
    domain; ``dkim/<selector>._domainkey.<domain>.private`` of each other domain's;
  - ``smtp-users``: one ``login:password`` line per SMTP user, where ``login`` is the
    full login (``alice@example.com``); the password runs to the end of the line;
  - ``nexthop-auth`` (only with a smarthost login): Postfix's ``smtp_sasl_password_maps``
    line ``[host]:port user:password``.

  The entrypoint copies both trees into place with tight modes (keys root-owned tree,
  key files ``opendkim`` 0400; the sasldb ``root:postfix`` 0640) and never echoes them.
* TLS: Postfix reads ``<cert_dir>/live/<relay_host>/privkey.pem`` and
  ``fullchain.pem``; the host's ``/etc/letsencrypt`` is mounted read-only at
  ``/etc/letsencrypt`` (live/ holds symlinks into archive/, so the whole tree).
* SMTP users log in with ``<name>@<domain>`` (what Gmail's "Send mail as" dialog
  wants in its Username field).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

CONFIG_DIR = "/etc/relay/config"
SECRETS_DIR = "/run/relay-secrets"
CERT_MOUNT = "/etc/letsencrypt"
#: OpenDKIM's milter socket. A unix socket, not TCP: over loopback TCP the milter's small
#: writes meet Nagle + delayed ACK and each message stalls ~80 ms (measured: 10 msg/s).
OPENDKIM_SOCKET = "/run/opendkim/opendkim.sock"
SASLDB_PATH = "/etc/sasldb2"
#: RFC 5322 2.1.1: at most 998 bytes per line, CRLF excluded.
MAX_LINE = 998
#: TLS suites no level may offer: anonymous, unencrypted, and the CBC suites with SHA-1 MACs.
TLS_EXCLUDED_CIPHERS = "aNULL, eNULL, SHA1"
NEXTHOP_AUTH_PATH = "/etc/postfix/nexthop_auth"
#: smtpd_hard_error_limit: errors (a wrong password is one) before smtpd hangs up.
AUTH_FAILURES_PER_SESSION = 3
#: The From of Postfix's own notices (bounces, delay warnings): MAILER-DAEMON@$myhostname.
MAILER_DAEMON = "MAILER-DAEMON"
#: outboundIpv6 -> smtp_address_preference ("never" also limits the smtp services to IPv4).
OUTBOUND_IPV6 = ("prefer-ipv4", "any", "never")
OPENDKIM_DIR = "/etc/opendkim"
DKIM_KEY_DIR = f"{OPENDKIM_DIR}/keys"

#: The values below are what relay/conf/ holds (tests/test_postfix.py pins them there).
#: The signed-header list of the original hand-made setup (panubo/postfix defaults),
#: Resent-* expanded because OpenDKIM's SignHeaders takes names, not patterns.
SIGNED_HEADERS: tuple[str, ...] = (
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
    "Resent-Date",
    "Resent-From",
    "Resent-Sender",
    "Resent-To",
    "Resent-Cc",
    "Resent-Message-Id",
    "In-Reply-To",
    "References",
)


@dataclass(frozen=True)
class SmtpUser:
    """One SMTP login.

    ``name`` is the local part (``alice``); the login is ``alice@<domain>``.
    ``may_send_as`` lists addresses (``alice@example.com``) or whole domains
    (``@example.com``); empty means any address at any of the relay's domains.
    """

    name: str
    may_send_as: tuple[str, ...] = ()


@dataclass(frozen=True)
class SigningDomain:
    """Another domain the relay signs for, with its own keys: ``dkim_selector`` signs,
    ``dkim_selectors`` (retired ones) stay in the key table."""

    domain: str
    dkim_selector: str
    dkim_selectors: tuple[str, ...] = ()

    @property
    def all_selectors(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.dkim_selector, *self.dkim_selectors)))


def key_file(domain: str, selector: str, primary: bool = True) -> str:
    """A key's file under ``dkim/``: ``<selector>.private`` for the primary domain (as
    before there were several), ``<selector>._domainkey.<domain>.private`` for another.
    One flat folder: the entrypoint installs every ``dkim/*.private``."""
    return f"{selector}.private" if primary else f"{selector}._domainkey.{domain.lower()}.private"


@dataclass(frozen=True)
class RateLimits:
    """Anvil limits per client IP per ``time_unit`` (Postfix's anvil service)."""

    #: Postfix's smtpd_client_auth_rate_limit: every AUTH counts, accepted or not, so a
    #: burst of a user's own logins would be throttled. 0 (off) by default: wrong
    #: passwords are bounded per session (``AUTH_FAILURES_PER_SESSION``) and per address
    #: by the connection rate instead.
    auth_per_unit: int = 0
    connections_per_unit: int = 60
    concurrent_connections: int = 10
    messages_per_unit: int = 100
    time_unit: str = "60s"


@dataclass(frozen=True)
class PostfixSettings:
    """Everything the relay's config files depend on (no secrets)."""

    domain: str
    relay_host: str
    dkim_selector: str
    users: tuple[SmtpUser, ...]
    dkim_selectors: tuple[str, ...] = ()
    submissions_465: bool = False
    nexthop: str | None = None
    cert_dir: str = CERT_MOUNT
    rate_limits: RateLimits = field(default_factory=RateLimits)
    message_size_limit: int = 36_700_160
    # IPv6 toward recipients' MX: "prefer-ipv4", "any", or "never" (IPv4 only).
    outbound_ipv6: str = "prefer-ipv4"
    # SMTP AUTH login at the nexthop (a smarthost); its password is a secret file.
    nexthop_user: str | None = None
    # When the sender hears that a message is still queued (Postfix time syntax).
    delay_warning_time: str = "4h"
    # Also listen on IPV6_PORTS: Docker publishes the host's IPv6 address to these (one
    # host binding per container port, see pure/relay_container.py).
    ipv6_listeners: bool = False
    # More domains signed for, each with its own keys (``domain`` is the primary).
    extra_domains: tuple[SigningDomain, ...] = ()

    @property
    def all_selectors(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.dkim_selector, *self.dkim_selectors)))

    @property
    def domains(self) -> tuple[str, ...]:
        """Every domain signed for, lowercase, the primary first."""
        return (self.domain.lower(), *(d.domain.lower() for d in self.extra_domains))

    @property
    def signing_domains(self) -> tuple[tuple[SigningDomain, bool], ...]:
        """(domain, is the primary) for every domain signed for."""
        primary = SigningDomain(self.domain.lower(), self.dkim_selector, self.all_selectors)
        return ((primary, True), *((d, False) for d in self.extra_domains))

    @property
    def notice_domain(self) -> SigningDomain:
        """The domain whose key signs the relay's own notices: the one holding relay_host
        (DMARC alignment of MAILER-DAEMON@<relay_host>), else the primary."""
        host = self.relay_host.lower()
        holders = [
            d for d, _ in self.signing_domains if host == d.domain or host.endswith("." + d.domain)
        ]
        return max(holders, key=lambda d: len(d.domain), default=self.signing_domains[0][0])


def relayhost(nexthop: str) -> str:
    """Postfix's ``relayhost`` for ``nexthop`` (also the key of the SASL password map)."""
    host, port = parse_nexthop(nexthop)
    return f"[{host}]:{port}"


def parse_nexthop(nexthop: str) -> tuple[str, int]:
    """(host, port) of ``host:port`` or ``[host]:port``, as the config model accepts it."""
    host, _, port = nexthop.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def login_name(user: SmtpUser, domain: str) -> str:
    """The SMTP AUTH username of ``user`` (what Gmail's Username field gets)."""
    return f"{user.name}@{domain}"


def cert_paths(settings: PostfixSettings) -> tuple[str, str]:
    """(privkey, fullchain) paths inside the container."""
    live = f"{settings.cert_dir}/live/{settings.relay_host}"
    return f"{live}/privkey.pem", f"{live}/fullchain.pem"


def _lines(pairs: Sequence[tuple[str, str]]) -> str:
    return "".join(f"{k} = {v}\n" if v else f"{k} =\n" for k, v in pairs)


def render_main_cf(s: PostfixSettings) -> str:
    """``postfix/main-stack.cf``: this stack's main.cf values, ``key = value`` lines the
    entrypoint applies with ``postconf -e`` over the image's ``relay/conf/postfix/main.cf``
    (which holds the policy every stack shares)."""
    privkey, fullchain = cert_paths(s)
    rl = s.rate_limits
    pairs: list[tuple[str, str]] = [
        ("myhostname", s.relay_host),
        ("mydomain", s.domain),
        ("relayhost", relayhost(s.nexthop) if s.nexthop else ""),
        ("message_size_limit", str(s.message_size_limit)),
        ("smtpd_tls_chain_files", f"{privkey}, {fullchain}"),
        # Outbound. The HELO name is the relay's name, the one its PTR should give.
        ("smtp_helo_name", s.relay_host),
        # IPv6 only when asked: Gmail refuses IPv6 mail from an address without a PTR.
        ("smtp_address_preference", "any" if s.outbound_ipv6 == "any" else "ipv4"),
        # Opportunistic TLS to the recipient's MX; TLS required toward a smarthost login.
        ("smtp_tls_security_level", "encrypt" if s.nexthop_user else "may"),
        *_smarthost_auth(s),
        ("delay_warning_time", s.delay_warning_time),
        # Anvil: rate limits per client (relay/conf/postfix/main.cf: no exemption).
        ("anvil_rate_time_unit", rl.time_unit),
        ("smtpd_client_auth_rate_limit", str(rl.auth_per_unit)),
        ("smtpd_client_connection_rate_limit", str(rl.connections_per_unit)),
        ("smtpd_client_connection_count_limit", str(rl.concurrent_connections)),
        ("smtpd_client_message_rate_limit", str(rl.messages_per_unit)),
        # master.cf has every submission service; each listens only when asked for.
        ("master_service_disable", " ".join(disabled_services(s))),
    ]
    return "# dkim-relay: this stack's values over relay/conf/postfix/main.cf\n" + _lines(pairs)


def _smarthost_auth(s: PostfixSettings) -> list[tuple[str, str]]:
    if not s.nexthop_user:
        return []
    # The map is root 0600, opened before the smtp client drops privileges.
    return [
        ("smtp_sasl_auth_enable", "yes"),
        ("smtp_sasl_password_maps", f"texthash:{NEXTHOP_AUTH_PATH}"),
        ("smtp_sasl_security_options", "noanonymous"),
        ("smtp_sasl_tls_security_options", "noanonymous"),
    ]


def auth_limit_per_service(s: PostfixSettings) -> int:
    """Each submission service's share of the AUTH budget per client and time unit.

    anvil counts per service *and* client, so with 465 on a client would get the budget
    twice. Postfix cannot share one counter: anvil's key is the master.cf service name,
    and giving 465 the name of 587 (``smtpd -n submission``) also gives it 587's accept
    lock (``pid/inet.submission``), so 465 stops answering (tried). Each port gets half
    instead (rounded up; 0 stays "no limit"), so both together allow at most the budget
    plus one.
    """
    n = s.rate_limits.auth_per_unit
    if not s.submissions_465 or n == 0:
        return n
    return (n + 1) // 2


# Where Docker sends the host's IPv6 address: Docker reports two host bindings of one
# container port in an order of its own (20.10 reverses them), which a refresh would see
# as a changed container; with one binding per container port there is no order. An
# IPv6 client only ever reaches these, so anvil's per-client counters are not split.
IPV6_PORTS = {587: 1587, 465: 1465}


def disabled_services(s: PostfixSettings) -> list[str]:
    """The submission services of master.cf this stack does not listen on: 465 unless
    asked for, the IPv6 ones (IPV6_PORTS) unless the host's IPv6 address is published."""
    wanted = {("submission", True), ("submissions", s.submissions_465)}
    wanted |= {(str(IPV6_PORTS[587]), s.ipv6_listeners)}
    wanted |= {(str(IPV6_PORTS[465]), s.ipv6_listeners and s.submissions_465)}
    return sorted(f"{name}/inet" for name, on in wanted if not on)


def render_master_cf(s: PostfixSettings) -> str:
    """``postfix/master-stack.cf``: this stack's service overrides over the image's
    ``relay/conf/postfix/master.cf``, one ``service/type/parameter=value`` per line (what
    ``postconf -P`` takes): each port's share of the AUTH budget when 465 is on, and the
    smtp client held to IPv4 with ``outbound_ipv6="never"``."""
    out = ["# dkim-relay: this stack's overrides over relay/conf/postfix/master.cf\n"]
    auth = auth_limit_per_service(s)
    if auth != s.rate_limits.auth_per_unit:
        for name in ("submission", "submissions", *map(str, IPV6_PORTS.values())):
            out.append(f"{name}/inet/smtpd_client_auth_rate_limit={auth}\n")
    if s.outbound_ipv6 == "never":
        # The smtp client then neither looks up nor tries IPv6 addresses.
        out.extend(f"{name}/unix/inet_protocols=ipv4\n" for name in ("smtp", "relay"))
    return "".join(out)


def render_sender_login_map(s: PostfixSettings) -> str:
    """texthash map: envelope sender (address or @domain) -> logins that own it.

    An address key also lists the owners of its whole domain, because Postfix stops at
    the first key that matches (address before @domain).
    """
    owners: dict[str, list[str]] = {}
    for user in s.users:
        login = login_name(user, s.domain)
        patterns = user.may_send_as or tuple(f"@{d}" for d in s.domains)
        for pat in patterns:
            owners.setdefault(pat.lower(), [])
            if login not in owners[pat.lower()]:
                owners[pat.lower()].append(login)
    for key in list(owners):
        if not key.startswith("@"):
            dom_owners = owners.get("@" + key.rpartition("@")[2], [])
            owners[key].extend(o for o in dom_owners if o not in owners[key])
    body = "".join(f"{key} {','.join(logins)}\n" for key, logins in sorted(owners.items()))
    return "# envelope sender -> SASL logins allowed to use it\n" + body


def render_milter_headers(s: PostfixSettings) -> str:
    """regexp table for milter_header_checks (headers OpenDKIM adds)."""
    return (
        "# Rendered by dkim-relay pure/postfix.py; do not edit.\n"
        "/^Authentication-Results:/ REJECT 5.7.1 the message needs exactly one From: "
        f"header with one address at {_either((s.domain, *s.domains[1:]))}\n"
    )


def _lua_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _domains_table(s: PostfixSettings) -> str:
    """With several domains, DOMAINS: the "@domain" of each (from_policy.lua checks the
    From against it; with one domain it checks DOMAIN, as before there were several)."""
    if not s.extra_domains:
        return ""
    items = ", ".join(f"[{_lua_str('@' + d)}] = true" for d in s.domains)
    return f"local DOMAINS = {{{items}}}\n"


def render_from_policy(s: PostfixSettings) -> str:
    """``opendkim/from_policy_values.lua``: the values ``relay/conf/opendkim/from_policy.lua``
    reads (the entrypoint puts them in front of it). That script lets a message through
    only with one From at the domain that the SASL login owns: a ``may_send_as`` entry
    (address or ``@domain``) of the login, or any address at the domain for users
    without ``may_send_as``; else OpenDKIM answers 550 at the end of DATA
    (``from_refusal.lua``), before anything is queued or signed.
    """
    # One domain renders as before there were several (an upgraded relay's config files
    # stay the same, so its container is not recreated).
    rows = []
    for user in s.users:
        patterns = [p.lower() for p in user.may_send_as] or [f"@{d}" for d in s.domains]
        items = ", ".join(_lua_str(p) for p in patterns)
        rows.append(f"  [{_lua_str(login_name(user, s.domain).lower())}] = {{{items}}},\n")
    return (
        "-- dkim-relay: this stack's values for relay/conf/opendkim/from_policy.lua\n"
        f"local DOMAIN = {_lua_str(' or '.join(s.domains))}\n"
        f"local KEY = {_lua_str(f'{s.dkim_selector}._domainkey.{s.domain}')}\n"
        f"local NOTICE_FROM = {_lua_str(notice_from(s).lower())}\n"
        "local MAY_SEND_AS = {\n" + "".join(rows) + "}\n" + _domains_table(s)
    )


def _either(domains: Sequence[str]) -> str:
    return " or ".join(domains)


def render_key_table(s: PostfixSettings) -> str:
    """One row per key: the primary domain's as before, then each other domain's."""
    rows = []
    for d, primary in s.signing_domains:
        name = s.domain if primary else d.domain
        for sel in d.all_selectors:
            path = f"{DKIM_KEY_DIR}/{key_file(name, sel, primary)}"
            rows.append(f"{sel}._domainkey.{name} {name}:{sel}:{path}\n")
    return "".join(rows)


def notice_from(s: PostfixSettings) -> str:
    """The From of the relay's own notices (Postfix: MAILER-DAEMON@$myhostname)."""
    return f"{MAILER_DAEMON}@{s.relay_host}"


def render_signing_table(s: PostfixSettings) -> str:
    """Every sender address at each domain is signed with that domain's active selector,
    and the relay's own notices with the key of the domain holding the relay's name
    (d= that domain: relaxed DMARC alignment holds)."""
    rows = []
    for d, primary in s.signing_domains:
        name = s.domain if primary else d.domain
        rows.append(f"*@{name} {d.dkim_selector}._domainkey.{name}\n")
    notice = s.notice_domain
    notice_name = s.domain if notice.domain == s.domain.lower() else notice.domain
    if s.relay_host.lower() not in s.domains:
        # The whole host: refile's case handling varies, and from_policy.lua refuses
        # submitted mail at the host anyway.
        rows.append(f"*@{s.relay_host} {notice.dkim_selector}._domainkey.{notice_name}\n")
    return "".join(rows)


def render_config(s: PostfixSettings) -> dict[str, str]:
    """This stack's non-secret files, relative to ``CONFIG_DIR``. What every stack shares
    is in the image (``relay/conf/``); the entrypoint combines the two."""
    return {
        "postfix/main-stack.cf": render_main_cf(s),
        "postfix/master-stack.cf": render_master_cf(s),
        "postfix/sender_login": render_sender_login_map(s),
        "postfix/milter_headers": render_milter_headers(s),
        "opendkim/KeyTable": render_key_table(s),
        "opendkim/SigningTable": render_signing_table(s),
        "opendkim/from_policy_values.lua": render_from_policy(s),
    }


def render_smtp_users(domain: str, passwords: Mapping[str, str]) -> str:
    """The ``smtp-users`` secret file: ``login:password`` lines (login = name@domain)."""
    out = []
    for name in sorted(passwords):
        pw = passwords[name]
        if not pw or any(c in pw for c in "\r\n\0"):
            raise ValueError(f"password of {name!r} is empty or has a line break")
        out.append(f"{name}@{domain}:{pw}\n")
    return "".join(out)


def render_nexthop_auth(nexthop: str, user: str, password: str) -> str:
    """The ``nexthop-auth`` secret file: the smarthost's SASL password map (texthash)."""
    # texthash drops the whitespace around a value and ends it at the line break.
    if not password or password != password.strip() or any(c in password for c in "\r\n\0"):
        raise ValueError(
            "the nexthop password is empty, starts or ends with a space, or has a line break"
        )
    return f"{relayhost(nexthop)} {user}:{password}\n"


def render_secrets(
    domain: str,
    dkim_keys: Mapping[str, str],
    passwords: Mapping[str, str],
    nexthop_auth: tuple[str, str, str] | None = None,
    *,
    extra_dkim_keys: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, str]:
    """All secret files, relative to ``SECRETS_DIR`` (the layout the host also writes).

    ``dkim_keys``: the primary domain's keys by selector; ``extra_dkim_keys``: each other
    domain's (``key_file`` names the files). ``nexthop_auth``: (nexthop, user, password)
    of a smarthost login.
    """
    files = {"smtp-users": render_smtp_users(domain, passwords)}
    if nexthop_auth is not None:
        files["nexthop-auth"] = render_nexthop_auth(*nexthop_auth)
    for sel, pem in dkim_keys.items():
        if "PRIVATE KEY-----" not in pem:
            raise ValueError(f"DKIM key for selector {sel!r} is not a PEM private key")
        files[f"dkim/{sel}.private"] = pem if pem.endswith("\n") else pem + "\n"
    for other, keys in (extra_dkim_keys or {}).items():
        for sel, pem in keys.items():
            if "PRIVATE KEY-----" not in pem:
                raise ValueError(f"DKIM key for {sel!r} of {other} is not a PEM private key")
            path = f"dkim/{key_file(other, sel, primary=False)}"
            files[path] = pem if pem.endswith("\n") else pem + "\n"
    return files
