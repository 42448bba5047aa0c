"""Pure renderers for every file the relay container needs.

No Pulumi, no I/O: plain typed arguments in, ``dict[str, str]`` (path -> content) out.
``components/relay.py`` ships the result into the container; the tests feed it to the
real image.

Contract with the image (``relay/entrypoint.sh``):

* Non-secret config is delivered under ``CONFIG_DIR`` (``/etc/relay/config``) with the
  relative paths returned by :func:`render_config`:
  ``postfix/main.cf``, ``postfix/master.cf``, ``postfix/sender_login``,
  ``postfix/sender_access``, ``postfix/long_lines``, ``postfix/milter_headers``,
  ``postfix/sasl/smtpd.conf``, ``opendkim/opendkim.conf``, ``opendkim/KeyTable``,
  ``opendkim/SigningTable``, ``opendkim/TrustedHosts``, ``opendkim/from_policy.lua``,
  ``opendkim/from_refusal.lua``.
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
#: The From of Postfix's own notices (bounces, delay warnings): MAILER-DAEMON@$myhostname.
MAILER_DAEMON = "MAILER-DAEMON"
#: outboundIpv6 -> smtp_address_preference ("never" also limits the smtp services to IPv4).
OUTBOUND_IPV6 = ("prefer-ipv4", "any", "never")
#: reject_sender_login_mismatch lets ``MAIL FROM:<>`` through; a user never needs it.
_NULL_SENDER_CHECK = "check_sender_access texthash:/etc/postfix/sender_access"
OPENDKIM_DIR = "/etc/opendkim"
DKIM_KEY_DIR = f"{OPENDKIM_DIR}/keys"

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

    auth_per_unit: int = 10
    connections_per_unit: int = 30
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
    """Postfix main.cf: a submission-only relay that never delivers locally."""
    privkey, fullchain = cert_paths(s)
    rl = s.rate_limits
    pairs: list[tuple[str, str]] = [
        ("compatibility_level", "3.6"),
        ("myhostname", s.relay_host),
        ("mydomain", s.domain),
        ("myorigin", "$myhostname"),
        # No local delivery at all: nothing is "local", the local transport is an error.
        ("mydestination", ""),
        ("local_recipient_maps", ""),
        ("local_transport", "error:5.1.1 local delivery is disabled"),
        ("alias_maps", ""),
        ("alias_database", ""),
        ("relay_domains", ""),
        ("relayhost", relayhost(s.nexthop) if s.nexthop else ""),
        # Loopback only; and the submission services never consult it.
        ("mynetworks", "127.0.0.0/8 [::1]/128"),
        ("inet_interfaces", "all"),
        ("inet_protocols", "all"),
        ("smtpd_banner", "$myhostname ESMTP"),
        ("biff", "no"),
        ("append_dot_mydomain", "no"),
        ("readme_directory", "no"),
        ("disable_vrfy_command", "yes"),
        ("smtpd_helo_required", "yes"),
        ("message_size_limit", str(s.message_size_limit)),
        ("maillog_file", "/dev/stdout"),
        # Server TLS: 1.2 or newer only, cert+key loaded together (atomic on renewal).
        ("smtpd_tls_chain_files", f"{privkey}, {fullchain}"),
        ("smtpd_tls_security_level", "encrypt"),
        ("smtpd_tls_auth_only", "yes"),
        ("smtpd_tls_protocols", ">=TLSv1.2"),
        ("smtpd_tls_mandatory_protocols", ">=TLSv1.2"),
        ("smtpd_tls_mandatory_ciphers", "high"),
        ("smtpd_tls_ciphers", "high"),
        # Both lists: the mandatory one applies at "encrypt" (587 and 465), the other at
        # every level, so a later change of level cannot bring these suites back.
        ("smtpd_tls_exclude_ciphers", TLS_EXCLUDED_CIPHERS),
        ("smtpd_tls_mandatory_exclude_ciphers", TLS_EXCLUDED_CIPHERS),
        ("smtpd_tls_loglevel", "1"),
        ("smtpd_tls_received_header", "yes"),
        ("smtpd_tls_session_cache_database", "btree:${data_directory}/smtpd_scache"),
        # Outbound. The HELO name is the relay's name, the one its PTR should give.
        ("smtp_helo_name", s.relay_host),
        # IPv6 only when asked: Gmail refuses IPv6 mail from an address without a PTR.
        ("smtp_address_preference", "any" if s.outbound_ipv6 == "any" else "ipv4"),
        # Opportunistic TLS to the recipient's MX; TLS required toward a smarthost login.
        ("smtp_tls_security_level", "encrypt" if s.nexthop_user else "may"),
        # Outbound drops only anonymous and null suites: with opportunistic TLS a failed
        # handshake falls back to plaintext, so refusing CBC-SHA1 to an old MX is worse.
        ("smtp_tls_exclude_ciphers", "aNULL, eNULL"),
        ("smtp_tls_loglevel", "1"),
        ("smtp_tls_session_cache_database", "btree:${data_directory}/smtp_scache"),
        *_smarthost_auth(s),
        # The relay's own notices (delays, bounces) go to the sender, through the milter,
        # so they leave signed with the domain's key like the user's mail.
        ("delay_warning_time", s.delay_warning_time),
        ("internal_mail_filter_classes", "bounce"),
        # SASL (Cyrus, sasldb); config in $config_directory/sasl/smtpd.conf.
        ("smtpd_sasl_type", "cyrus"),
        ("smtpd_sasl_path", "smtpd"),
        ("smtpd_sasl_auth_enable", "no"),
        ("smtpd_sasl_security_options", "noanonymous"),
        ("smtpd_sasl_tls_security_options", "noanonymous"),
        ("smtpd_sasl_authenticated_header", "no"),
        ("broken_sasl_auth_clients", "no"),
        ("smtpd_sasl_local_domain", "$mydomain"),
        ("smtpd_sender_login_maps", "texthash:/etc/postfix/sender_login"),
        # Default restrictions: deny everything not authenticated (submission repeats it).
        ("smtpd_client_restrictions", "permit_sasl_authenticated, reject"),
        ("smtpd_helo_restrictions", ""),
        (
            "smtpd_sender_restrictions",
            f"reject_non_fqdn_sender, reject_sender_login_mismatch, {_NULL_SENDER_CHECK}, "
            "permit_sasl_authenticated, reject",
        ),
        ("smtpd_relay_restrictions", "permit_sasl_authenticated, reject"),
        (
            "smtpd_recipient_restrictions",
            "reject_non_fqdn_recipient, permit_sasl_authenticated, reject",
        ),
        ("smtpd_data_restrictions", "reject_unauth_pipelining"),
        ("allow_percent_hack", "no"),
        ("swap_bangpath", "no"),
        ("strict_rfc821_envelopes", "yes"),
        # SMTP smuggling: a bare LF (or "<LF>.<LF>") must not end a message on one hop and
        # not on the next. Reject ("yes" replies 521 and hangs up), with no exemption.
        ("smtpd_forbid_bare_newline", "yes"),
        ("smtpd_forbid_bare_newline_exclusions", ""),
        # Lines over MAX_LINE bytes are refused at submission (5.6.0): Postfix's SMTP
        # client would otherwise fold them after OpenDKIM signed, breaking the signature.
        ("header_checks", "regexp:/etc/postfix/long_lines"),
        ("body_checks", "regexp:/etc/postfix/long_lines"),
        # OpenDKIM lets a message through unsigned, before any policy script runs, when it
        # finds no From: or cannot parse it; in sign mode its only trace is the
        # Authentication-Results header it adds then. Refuse such mail here.
        ("milter_header_checks", "regexp:/etc/postfix/milter_headers"),
        # Anvil: rate limits per client, mynetworks not exempt.
        ("anvil_rate_time_unit", rl.time_unit),
        ("smtpd_client_auth_rate_limit", str(rl.auth_per_unit)),
        ("smtpd_client_connection_rate_limit", str(rl.connections_per_unit)),
        ("smtpd_client_connection_count_limit", str(rl.concurrent_connections)),
        ("smtpd_client_message_rate_limit", str(rl.messages_per_unit)),
        ("smtpd_client_event_limit_exceptions", ""),
        ("smtpd_soft_error_limit", "3"),
        ("smtpd_hard_error_limit", "10"),
        # DKIM: OpenDKIM milter; with it down, clients get a temporary failure.
        ("smtpd_milters", f"unix:{OPENDKIM_SOCKET}"),
        ("non_smtpd_milters", "$smtpd_milters"),
        ("milter_default_action", "tempfail"),
        ("milter_protocol", "6"),
        # A hung OpenDKIM holds each session this long before the 4xx (default 30 s); the
        # entrypoint restarts it sooner than that.
        ("milter_connect_timeout", "10s"),
        ("milter_command_timeout", "10s"),
    ]
    return "# Rendered by dkim-relay pure/postfix.py; do not edit.\n" + _lines(pairs)


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


_SUBMISSION_OPTS: tuple[str, ...] = (
    "smtpd_tls_security_level=encrypt",
    "smtpd_tls_auth_only=yes",
    "smtpd_sasl_auth_enable=yes",
    "smtpd_client_restrictions=permit_sasl_authenticated,reject",
    "smtpd_helo_restrictions=",
    "smtpd_sender_restrictions=reject_non_fqdn_sender,reject_sender_login_mismatch,"
    f"{_NULL_SENDER_CHECK.replace(' ', ',')},permit_sasl_authenticated,reject",
    "smtpd_relay_restrictions=permit_sasl_authenticated,reject",
    "smtpd_recipient_restrictions=reject_non_fqdn_recipient,permit_sasl_authenticated,reject",
    "milter_macro_daemon_name=ORIGINATING",
)

# Postfix's internal services, chroot off (a chrooted smtpd cannot see the sasldb).
_INTERNAL_SERVICES: tuple[tuple[str, str, str, str, str, str, str], ...] = (
    ("pickup", "unix", "n", "-", "n", "60", "1 pickup"),
    ("cleanup", "unix", "n", "-", "n", "-", "0 cleanup"),
    ("qmgr", "unix", "n", "-", "n", "300", "1 qmgr"),
    ("tlsmgr", "unix", "-", "-", "n", "1000?", "1 tlsmgr"),
    ("rewrite", "unix", "-", "-", "n", "-", "- trivial-rewrite"),
    ("bounce", "unix", "-", "-", "n", "-", "0 bounce"),
    ("defer", "unix", "-", "-", "n", "-", "0 bounce"),
    ("trace", "unix", "-", "-", "n", "-", "0 bounce"),
    ("verify", "unix", "-", "-", "n", "-", "1 verify"),
    ("flush", "unix", "n", "-", "n", "1000?", "0 flush"),
    ("proxymap", "unix", "-", "-", "n", "-", "- proxymap"),
    ("proxywrite", "unix", "-", "-", "n", "-", "1 proxymap"),
    ("smtp", "unix", "-", "-", "n", "-", "- smtp"),
    ("relay", "unix", "-", "-", "n", "-", "- smtp"),
    ("showq", "unix", "n", "-", "n", "-", "- showq"),
    ("error", "unix", "-", "-", "n", "-", "- error"),
    ("retry", "unix", "-", "-", "n", "-", "- error"),
    ("discard", "unix", "-", "-", "n", "-", "- discard"),
    ("anvil", "unix", "-", "-", "n", "-", "1 anvil"),
    ("scache", "unix", "-", "-", "n", "-", "1 scache"),
    ("postlog", "unix-dgram", "n", "-", "n", "-", "1 postlogd"),
)


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


def render_master_cf(s: PostfixSettings) -> str:
    """master.cf: no port 25, submission on 587, optional implicit TLS on 465 (and the
    same services on IPV6_PORTS with ``ipv6_listeners``)."""
    out = ["# Rendered by dkim-relay pure/postfix.py; do not edit.\n"]
    out.append("# service type  private unpriv  chroot  wakeup  maxproc command\n")
    auth = auth_limit_per_service(s)
    services: list[tuple[str, int, list[str]]] = [("submission", 587, [])]
    if s.submissions_465:
        services.append(("submissions", 465, ["smtpd_tls_wrappermode=yes"]))
    for syslog, port, extra in services:
        names = [syslog] + ([str(IPV6_PORTS[port])] if s.ipv6_listeners else [])
        for name in names:
            out.append(f"{name:<10} inet n       -       n       -       -       smtpd\n")
            out.append(f"  -o syslog_name=postfix/{syslog}\n")
            out.extend(f"  -o {opt}\n" for opt in extra)
            out.extend(f"  -o {opt}\n" for opt in _SUBMISSION_OPTS)
            if auth != s.rate_limits.auth_per_unit:
                out.append(f"  -o smtpd_client_auth_rate_limit={auth}\n")
    for name, typ, private, unpriv, chroot, wakeup, rest in _INTERNAL_SERVICES:
        maxproc, command = rest.split(" ", 1)
        out.append(
            f"{name:<10} {typ:<5} {private:<7} {unpriv:<7} {chroot:<7} {wakeup:<7} "
            f"{maxproc:<7} {command}\n"
        )
        if command == "smtp" and s.outbound_ipv6 == "never":
            # The smtp client then neither looks up nor tries IPv6 addresses.
            out.append("  -o inet_protocols=ipv4\n")
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


def render_sender_access() -> str:
    """texthash access map for the sender check (``<>`` is Postfix's null-sender key)."""
    return "<> REJECT 5.7.1 submitted mail needs a sender address, not the null sender\n"


def render_milter_headers(s: PostfixSettings) -> str:
    """regexp table for milter_header_checks (headers OpenDKIM adds)."""
    return (
        "# Rendered by dkim-relay pure/postfix.py; do not edit.\n"
        "/^Authentication-Results:/ REJECT 5.7.1 the message needs exactly one From: "
        f"header with one address at {_either((s.domain, *s.domains[1:]))}\n"
    )


def render_long_lines() -> str:
    """regexp table for header_checks and body_checks: refuse any line over MAX_LINE bytes.

    ``m``: in a folded header, each physical line counts on its own.
    """
    return (
        "# Rendered by dkim-relay pure/postfix.py; do not edit.\n"
        f"/^.{{{MAX_LINE + 1}}}/m REJECT 5.6.0 line longer than {MAX_LINE} bytes; "
        "wrap it or use quoted-printable or base64 with short lines\n"
    )


def render_sasl_smtpd_conf() -> str:
    """Cyrus SASL config for Postfix's smtpd ($config_directory/sasl/smtpd.conf)."""
    return (
        "pwcheck_method: auxprop\n"
        "auxprop_plugin: sasldb\n"
        "mech_list: PLAIN LOGIN\n"
        f"sasldb_path: {SASLDB_PATH}\n"
    )


def render_opendkim_conf(s: PostfixSettings) -> str:
    """opendkim.conf: sign-only, relaxed/relaxed, the usual header list, From oversigned."""
    pairs = [
        ("Syslog", "no"),
        ("LogWhy", "no"),
        ("UMask", "007"),
        ("Mode", "s"),
        ("Canonicalization", "relaxed/relaxed"),
        ("SignatureAlgorithm", "rsa-sha256"),
        ("SignHeaders", ",".join(SIGNED_HEADERS)),
        ("OversignHeaders", "From"),
        ("KeyTable", "file:/etc/opendkim/KeyTable"),
        ("SigningTable", "refile:/etc/opendkim/SigningTable"),
        ("InternalHosts", "refile:/etc/opendkim/TrustedHosts"),
        ("ExternalIgnoreList", "refile:/etc/opendkim/TrustedHosts"),
        # Postfix's submission services tag their mail with this daemon name.
        ("MTA", "ORIGINATING"),
        ("Socket", f"local:{OPENDKIM_SOCKET}"),
        ("PidFile", "/run/opendkim/opendkim.pid"),
        ("UserID", "opendkim:opendkim"),
        ("RequireSafeKeys", "yes"),
        ("SoftwareHeader", "no"),
        # Refuses, before signing, a header From that is not one address the login owns.
        ("SetupPolicyScript", f"{OPENDKIM_DIR}/from_policy.lua"),
        ("FinalPolicyScript", f"{OPENDKIM_DIR}/from_refusal.lua"),
    ]
    head = "# Rendered by dkim-relay pure/postfix.py; do not edit.\n"
    return head + "".join(f"{k} {v}\n" for k, v in pairs)


def _lua_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_FROM_POLICY = r"""
-- Mail whose From is not ours would go out unsigned, or signed for a sender the login
-- does not own. Postfix checks only the envelope (reject_sender_login_mismatch).
-- OpenDKIM's setup hook has no set_reply, so the reason is handed to the final script
-- (from_refusal.lua), which refuses with it before the signature is made. The sign
-- request keeps OpenDKIM on the message until then: without one (a foreign From) it
-- would accept the message at the end of the headers and never run the final script.
local function refuse(why)
  odkim.export(ctx, "REFUSE", why)
  odkim.sign(ctx, KEY)
end

-- The addr-spec of a From value holding exactly one mailbox, else nil. Quoted strings
-- and comments are dropped first (a display name may hold "@", "," or "<").
local function mailbox(value)
  local out, quoted, depth, escaped = {}, false, 0, false
  for c in value:gmatch(".") do
    if escaped then
      escaped = false
    elseif c == "\\" and (quoted or depth > 0) then
      escaped = true
    elseif quoted then
      if c == '"' then quoted = false end
    elseif depth > 0 then
      if c == "(" then depth = depth + 1 elseif c == ")" then depth = depth - 1 end
    elseif c == '"' then
      quoted = true
    elseif c == "(" then
      depth = 1
    else
      out[#out + 1] = c
    end
  end
  if quoted or depth > 0 then return nil end
  local rest = table.concat(out):gsub("%s+", " ")
  if rest:find("[,;:]") then return nil end
  local addr = rest:match("^[^<>]*<([^<>]*)>%s*$") or rest:match("^%s*([^%s<>]+)%s*$")
  if addr == nil then return nil end
  addr = addr:lower()
  if addr:match("^[^@%s]+@[^@%s]+$") == nil then return nil end
  return addr
end

-- OpenDKIM also runs this once at start-up with a null ctx to check it, where the
-- odkim functions return their own names: stop there.
if odkim.get_envfrom(ctx) == "dkimf_xs_getenvfrom"
    and odkim.get_mtasymbol(ctx, "{auth_authen}") == "dkimf_xs_getmtasymbol" then
  return
end

local from = odkim.get_header(ctx, "From", 0)
if from == nil or odkim.get_header(ctx, "From", 1) ~= nil then
  refuse("the message needs exactly one From: header")
  return
end
local addr = mailbox(from)
if addr == nil then
  refuse("the From: header must hold exactly one address")
  return
end
local login = (odkim.get_mtasymbol(ctx, "{auth_authen}") or ""):lower()
-- Postfix's own notices (bounces, delay warnings): no login, the null envelope sender,
-- From MAILER-DAEMON@<relay host>. They are signed (the signing table has the host).
-- Submitted mail always has a login, and the null sender is refused there.
local envfrom = odkim.get_envfrom(ctx) or ""
if login == "" and (envfrom == "<>" or envfrom == "") and addr == NOTICE_FROM then
  return
end
local at_domain = addr:match("(@[^@]+)$")
if at_domain ~= "@" .. DOMAIN then
  refuse("From: " .. addr .. " is not at " .. DOMAIN)
  return
end
for _, pattern in ipairs(MAY_SEND_AS[login] or {}) do
  if pattern == addr or pattern == at_domain then
    return
  end
end
refuse("login " .. login .. " may not send with From: " .. addr)
"""


_ONE_DOMAIN_CHECK = 'if at_domain ~= "@" .. DOMAIN then'
assert _ONE_DOMAIN_CHECK in _FROM_POLICY


def _domains_table(s: PostfixSettings) -> str:
    """With several domains, DOMAINS: the "@domain" of each (DOMAIN names them all)."""
    if not s.extra_domains:
        return ""
    items = ", ".join(f"[{_lua_str('@' + d)}] = true" for d in s.domains)
    return f"local DOMAINS = {{{items}}}\n"


def render_from_policy(s: PostfixSettings) -> str:
    """OpenDKIM setup script (Lua): one From, at the domain, owned by the SASL login.

    The owner is a ``may_send_as`` entry (address or ``@domain``) of the login, or any
    address at the domain for users without ``may_send_as``. OpenDKIM answers 550 at the
    end of DATA (:func:`render_from_refusal`), before anything is queued or signed.
    """
    # One domain renders as before there were several (an upgraded relay's config files
    # stay the same, so its container is not recreated).
    body = _FROM_POLICY
    if s.extra_domains:
        body = body.replace(_ONE_DOMAIN_CHECK, "if not DOMAINS[at_domain] then", 1)
    rows = []
    for user in s.users:
        patterns = [p.lower() for p in user.may_send_as] or [f"@{d}" for d in s.domains]
        items = ", ".join(_lua_str(p) for p in patterns)
        rows.append(f"  [{_lua_str(login_name(user, s.domain).lower())}] = {{{items}}},\n")
    return (
        "-- Rendered by dkim-relay pure/postfix.py; do not edit.\n"
        f"local DOMAIN = {_lua_str(' or '.join(s.domains))}\n"
        + _domains_table(s)
        + f"local KEY = {_lua_str(f'{s.dkim_selector}._domainkey.{s.domain}')}\n"
        f"local NOTICE_FROM = {_lua_str(notice_from(s).lower())}\n"
        "local MAY_SEND_AS = {\n" + "".join(rows) + "}\n" + body
    )


def render_from_refusal() -> str:
    """OpenDKIM final script (Lua): refuse with the reason from_policy.lua exported."""
    return (
        "-- Rendered by dkim-relay pure/postfix.py; do not edit.\n"
        "if REFUSE ~= nil then\n"
        '  odkim.set_reply(ctx, "550", "5.7.1", REFUSE)\n'
        "  odkim.set_result(ctx, SMFIS_REJECT)\n"
        "end\n"
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


def render_trusted_hosts() -> str:
    return "127.0.0.1\n::1\n"


def render_config(s: PostfixSettings) -> dict[str, str]:
    """All non-secret files, relative to ``CONFIG_DIR``."""
    return {
        "postfix/main.cf": render_main_cf(s),
        "postfix/master.cf": render_master_cf(s),
        "postfix/sender_login": render_sender_login_map(s),
        "postfix/sender_access": render_sender_access(),
        "postfix/long_lines": render_long_lines(),
        "postfix/milter_headers": render_milter_headers(s),
        "postfix/sasl/smtpd.conf": render_sasl_smtpd_conf(),
        "opendkim/opendkim.conf": render_opendkim_conf(s),
        "opendkim/KeyTable": render_key_table(s),
        "opendkim/SigningTable": render_signing_table(s),
        "opendkim/TrustedHosts": render_trusted_hosts(),
        "opendkim/from_policy.lua": render_from_policy(s),
        "opendkim/from_refusal.lua": render_from_refusal(),
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
