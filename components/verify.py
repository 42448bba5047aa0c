"""Check a live dkim-relay deployment end to end: DNS, TLS, AUTH, relay refusal.

Usage::

    pulumi stack output --json --show-secrets | python -m components.verify
    python -m components.verify --outputs outputs.json [--nameserver IP[:PORT]] \\
        [--cafile CA.pem] [--timeout S] [--port N] [--host NAME] [--ipv4 ADDR] \\
        [--ipv6 ADDR] [--send-to ADDRESS]

Prints one line per check, ``PASS|FAIL|WARN <check>: <detail> [fix: ...]``, and exits
1 when any check failed (2 on unusable input). Passwords come only from the outputs
JSON (stdin or file); they are never printed, and never sent to a server whose
certificate did not verify.

Functional core: the ``evaluate_*`` functions and the relay battery are pure and take
plain values. The shell (``run_checks``/``main``) does the network I/O with timeouts.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import ipaddress
import json
import re
import smtplib
import socket
import ssl
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

PASS, FAIL, WARN = "PASS", "FAIL", "WARN"
EXPIRY_WARN_DAYS = 21
PROBES_PER_SESSION = 2
OUTSIDE = "example.net"  # a domain the relay must never relay to without AUTH


@dataclass(frozen=True)
class Result:
    status: str
    check: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status} {self.check}: {self.detail}"
        return f"{text} [fix: {self.fix}]" if self.fix and self.status != PASS else text


@dataclass(frozen=True)
class Target:
    """What to check, from the stack outputs plus command-line overrides."""

    domain: str
    relay_host: str
    ipv4: str | None  # the VPS addresses (stack outputs): what DNS and SPF must name
    ipv6: str | None
    port: int
    selector: str
    dkim_value: str
    credentials: tuple[tuple[str, str], ...] = ()  # (username, password); never printed
    usernames: tuple[str, ...] = ()
    connect_ipv4: str | None = None  # where to connect (--ipv4/--ipv6, else the VPS's)
    connect_ipv6: str | None = None


class InputError(Exception):
    """Outputs or flags that cannot be used."""


# ================================================================ pure core


def parse_nameserver(value: str) -> tuple[str, int]:
    """``IP``, ``IP:PORT``, ``[IPv6]:PORT`` or bare IPv6 -> (ip, port)."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?", value)
    if m:
        host, port = m.group(1), int(m.group(2) or 53)
    elif value.count(":") == 1:
        host, port_s = value.split(":")
        port = int(port_s)
    else:
        host, port = value, 53
    ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise ValueError(f"bad port {port}")
    return host, port


_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def unquote_txt(content: str) -> str:
    """``"a" "b"`` (TXT as published) -> ``ab``; unquoted text is returned as is."""
    parts = _QUOTED.findall(content)
    if not parts:
        return content.strip()
    return "".join(re.sub(r"\\(.)", r"\1", p) for p in parts)


def dkim_tags(value: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in value.split(";"):
        if "=" in part:
            k, v = part.split("=", 1)
            tags[k.strip().lower()] = re.sub(r"\s+", "", v)
    return tags


def evaluate_addresses(kind: str, host: str, expected: str | None, got: Sequence[str]) -> Result:
    check = f"dns.{kind.lower()}"
    fix = f"publish {kind} {host} -> {expected} (pulumi up, or the dnsRecords output)"
    if expected is None:
        if got:
            return Result(
                WARN,
                check,
                f"{host} has {kind} {', '.join(got)} but the stack has no address of that family",
                f"remove the {kind} record or set the VPS address in the stack",
            )
        return Result(PASS, check, f"{host} has no {kind}, as the stack expects")
    if not got:
        return Result(FAIL, check, f"no {kind} answer for {host}", fix)
    want = ipaddress.ip_address(expected)
    addrs = [ipaddress.ip_address(a) for a in got]
    if addrs == [want]:
        return Result(PASS, check, f"{host} {kind} {expected}")
    if want in addrs:
        return Result(
            WARN,
            check,
            f"{host} {kind} {', '.join(got)}: includes {expected} but also others",
            f"leave only {expected}",
        )
    return Result(FAIL, check, f"{host} {kind} is {', '.join(got)}, expected {expected}", fix)


def evaluate_spf(ip: str, domain: str, result: str, explanation: str) -> Result:
    check = f"dns.spf[{ip}]"
    if result == "pass":
        return Result(PASS, check, f"SPF of {domain} passes for {ip}")
    fix = f"add ip{ipaddress.ip_address(ip).version}:{ip} to the SPF record of {domain}"
    detail = f"SPF of {domain} gives '{result}' for {ip}"
    if explanation:
        detail += f" ({explanation})"
    if result in ("temperror",):
        return Result(FAIL, check, detail, "check the DNS server answers (--nameserver)")
    return Result(FAIL, check, detail, fix)


def evaluate_dkim(name: str, txt_records: Sequence[str], expected_value: str) -> Result:
    """``txt_records``: each TXT record's strings already joined."""
    check = "dns.dkim"
    fix = f"publish TXT {name} with the stack's dkimDnsValue (pulumi up, or dnsRecords)"
    if not txt_records:
        return Result(FAIL, check, f"no TXT record at {name}", fix)
    dkim = [t for t in txt_records if t.lower().startswith("v=dkim1") or "p=" in t]
    if len(dkim) > 1:
        return Result(FAIL, check, f"{len(dkim)} DKIM records at {name}; keep one", fix)
    if not dkim:
        return Result(FAIL, check, f"TXT at {name} is not a DKIM key record", fix)
    got = dkim[0]
    want = unquote_txt(expected_value)
    if got == want:
        return Result(PASS, check, f"{name} holds the signing key")
    got_p, want_p = dkim_tags(got).get("p", ""), dkim_tags(want).get("p", "")
    if got_p and got_p == want_p:
        return Result(PASS, check, f"{name} holds the signing key (same p=, other formatting)")
    if not got_p:
        return Result(FAIL, check, f"{name} has an empty or missing p= (key revoked)", fix)
    return Result(
        FAIL,
        check,
        f"{name} holds a different key (p={got_p[:12]}..., expected p={want_p[:12]}...)",
        fix,
    )


def evaluate_cert_name(host: str, dns_names: Sequence[str]) -> Result:
    check = "tls.cert-name"
    host_l = host.lower().rstrip(".")
    for n in dns_names:
        n_l = n.lower().rstrip(".")
        if n_l == host_l:
            return Result(PASS, check, f"certificate names {host}")
        if n_l.startswith("*.") and "." in host_l and host_l.split(".", 1)[1] == n_l[2:]:
            return Result(PASS, check, f"certificate names {host} (wildcard {n})")
    return Result(
        FAIL,
        check,
        f"certificate is for {', '.join(dns_names) or 'no DNS name'}, not {host}",
        f"issue the certificate for {host} (certbot -d {host}) and reload the relay",
    )


def evaluate_cert_expiry(not_after: dt.datetime, now: dt.datetime) -> Result:
    check = "tls.cert-expiry"
    days = (not_after - now).total_seconds() / 86400
    when = not_after.strftime("%Y-%m-%d %H:%M UTC")
    fix = "renew: certbot renew (the deploy hook reloads the relay), then check the timer"
    if days < 0:
        return Result(FAIL, check, f"certificate expired {int(-days)} day(s) ago ({when})", fix)
    if days < EXPIRY_WARN_DAYS:
        return Result(WARN, check, f"certificate expires in {int(days)} day(s) ({when})", fix)
    return Result(PASS, check, f"certificate valid for {int(days)} more day(s) ({when})")


def evaluate_plain_ehlo(features: Mapping[str, str], label: str) -> list[Result]:
    """Before STARTTLS: STARTTLS must be offered, AUTH must not."""
    out = []
    if "starttls" in features:
        out.append(Result(PASS, f"smtp.starttls[{label}]", "STARTTLS offered"))
    else:
        out.append(
            Result(
                FAIL,
                f"smtp.starttls[{label}]",
                "STARTTLS not offered",
                "set smtpd_tls_security_level=encrypt with a certificate on the submission port",
            )
        )
    if "auth" in features:
        out.append(
            Result(
                FAIL,
                f"smtp.auth-before-tls[{label}]",
                f"AUTH {features['auth'].strip()} offered before STARTTLS (passwords in clear)",
                "set smtpd_tls_auth_only=yes on the submission service",
            )
        )
    else:
        out.append(Result(PASS, f"smtp.auth-before-tls[{label}]", "AUTH not offered before TLS"))
    return out


@dataclass(frozen=True)
class RelayProbe:
    name: str
    mail_from: str
    rcpt_to: str


def relay_battery(domain: str, outside: str = OUTSIDE) -> list[RelayProbe]:
    """Envelopes an unauthenticated client must not get relayed (RFC 2505, RFC 5321)."""
    own = f"verify-relay-check@{domain}"
    victim = f"postmaster@{outside}"
    return [
        RelayProbe("outside-recipient", f"verify@{outside}", f"<{victim}>"),
        RelayProbe("own-domain-sender", own, f"<{victim}>"),
        RelayProbe("percent-hack", own, f"<postmaster%{outside}@{domain}>"),
        RelayProbe("quoted-local-part", own, f'<"{victim}"@{domain}>'),
        RelayProbe("source-route", own, f"<@{domain}:{victim}>"),
        RelayProbe("double-at", own, f"<{victim}@{domain}>"),
    ]


def evaluate_relay_reply(probe: RelayProbe, code: int, message: str, label: str) -> Result:
    check = f"relay.refused[{label}:{probe.name}]"
    msg = message.strip().replace("\n", " ")[:120]
    fix = (
        "on the submission service use smtpd_relay_restrictions="
        "permit_sasl_authenticated,reject (never permit_mynetworks)"
    )
    if 500 <= code < 600:
        return Result(PASS, check, f"RCPT {probe.rcpt_to} refused: {code} {msg}")
    if 400 <= code < 500:
        return Result(WARN, check, f"RCPT {probe.rcpt_to} deferred, not refused: {code} {msg}", fix)
    return Result(
        FAIL,
        check,
        f"OPEN RELAY: RCPT {probe.rcpt_to} accepted without AUTH: {code} {msg}",
        fix,
    )


def target_from_outputs(
    outputs: Mapping[str, Any],
    *,
    host: str | None = None,
    ipv4: str | None = None,
    ipv6: str | None = None,
    port: int | None = None,
) -> Target:
    def need(key: str) -> Any:
        if outputs.get(key) in (None, ""):
            raise InputError(f"stack output {key!r} is missing")
        return outputs[key]

    domain = str(need("domain")).rstrip(".")
    relay_host = host or str(outputs.get("relayHost") or outputs.get("smtpServer") or "")
    if not relay_host:
        raise InputError("stack output 'relayHost' is missing (or give --host)")
    usernames = [str(u) for u in (outputs.get("smtpUsernames") or [])]
    first = outputs.get("smtpUsername")
    if first and str(first) not in usernames:
        usernames.insert(0, str(first))
    creds: dict[str, str] = {}
    pw_map = outputs.get("smtpPasswords")
    if isinstance(pw_map, Mapping):
        for key, value in pw_map.items():
            if not _is_secret_value(value):
                continue
            login = str(key)
            # The map may be keyed by user name ("alice") while logins are "alice@domain".
            if login not in usernames and f"{login}@{domain}" in usernames:
                login = f"{login}@{domain}"
            creds[login] = str(value)
    pw = outputs.get("smtpPassword")
    if first and _is_secret_value(pw):
        creds.setdefault(str(first), str(pw))
    v4, v6 = outputs.get("vpsIpv4"), outputs.get("vpsIpv6")
    c4, c6 = ipv4 or v4, ipv6 or v6
    for a, fam in ((v4, 4), (v6, 6), (c4, 4), (c6, 6)):
        try:
            if a and ipaddress.ip_address(str(a)).version != fam:
                raise InputError(f"{a} is not an IPv{fam} address")
        except ValueError:
            raise InputError(f"{a!r} is not an IP address") from None
    return Target(
        domain=domain,
        relay_host=relay_host.rstrip("."),
        ipv4=str(v4) if v4 else None,
        ipv6=str(v6) if v6 else None,
        connect_ipv4=str(c4) if c4 else None,
        connect_ipv6=str(c6) if c6 else None,
        port=int(port or outputs.get("smtpPort") or 587),
        selector=str(need("dkimSelector")),
        dkim_value=str(need("dkimDnsValue")),
        credentials=tuple(creds.items()),
        usernames=tuple(usernames),
    )


def _is_secret_value(v: object) -> bool:
    # Without --show-secrets pulumi prints "[secret]".
    return isinstance(v, str) and v != "" and v != "[secret]"


# ================================================================ shell: DNS


def make_resolver(nameserver: tuple[str, int] | None, timeout: float) -> Any:
    import dns.resolver

    if nameserver is None:
        res = dns.resolver.Resolver()
    else:
        res = dns.resolver.Resolver(configure=False)
        res.nameservers = [nameserver[0]]
        res.port = nameserver[1]
    res.timeout = timeout
    res.lifetime = timeout
    return res


def _dns_error(exc: Exception) -> str:
    import dns.exception
    import dns.resolver

    if isinstance(exc, dns.resolver.NXDOMAIN):
        return "no such name (NXDOMAIN)"
    if isinstance(exc, dns.resolver.NoAnswer):
        return "no answer of that type"
    if isinstance(exc, dns.exception.Timeout):
        return "DNS timeout (is the nameserver reachable?)"
    if isinstance(exc, dns.resolver.NoNameservers):
        return f"no nameserver answered ({exc})"
    return f"{type(exc).__name__}: {exc}"


def resolve(res: Any, name: str, rtype: str) -> tuple[list[Any], str]:
    """Answers and an error text ('' when fine; NXDOMAIN/NoAnswer give [] with a note)."""
    import dns.exception
    import dns.resolver

    try:
        return list(res.resolve(name, rtype)), ""
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer) as exc:
        return [], _dns_error(exc)
    except dns.exception.DNSException as exc:
        return [], _dns_error(exc)


@contextmanager
def spf_dns_through(res: Any) -> Iterator[None]:
    """Point pyspf's lookups at our resolver (pyspf reads a module-level DNSLookup)."""
    import dns.exception
    import dns.resolver
    import spf

    def lookup(name: str, qtype: str, strict: bool = True, timeout: float = 20) -> list[Any]:
        out: list[Any] = []
        try:
            answers = res.resolve(name, qtype, lifetime=min(timeout, res.lifetime))
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            return out
        except dns.exception.DNSException as exc:
            raise spf.TempError(f"DNS {_dns_error(exc)}") from exc
        for rdata in answers:
            if qtype in ("A", "AAAA"):
                out.append(((name, qtype), rdata.address))
            elif qtype == "MX":
                out.append(((name, qtype), (rdata.preference, rdata.exchange)))
            elif qtype == "PTR":
                out.append(((name, qtype), rdata.target.to_text(True)))
            elif qtype in ("TXT", "SPF"):
                out.append(((name, qtype), rdata.strings))
        return out

    saved = spf.DNSLookup
    spf.DNSLookup = lookup
    try:
        yield
    finally:
        spf.DNSLookup = saved


def dns_checks(t: Target, res: Any, timeout: float) -> Iterator[Result]:
    for kind, expected in (("A", t.ipv4), ("AAAA", t.ipv6)):
        answers, err = resolve(res, t.relay_host, kind)
        if not answers and ("timeout" in err or err.startswith("no nameserver")):
            yield Result(
                FAIL, f"dns.{kind.lower()}", f"{t.relay_host}: {err}", "check --nameserver"
            )
            continue
        yield evaluate_addresses(kind, t.relay_host, expected, [a.address for a in answers])

    import spf

    with spf_dns_through(res):
        for ip in (t.ipv4, t.ipv6):
            if not ip:
                continue
            try:
                q = spf.query(
                    i=ip, s=f"postmaster@{t.domain}", h=t.relay_host, timeout=timeout, querytime=0
                )
                result, _code, expl = q.check()
            except Exception as exc:  # noqa: BLE001 - pyspf raises assorted errors
                result, expl = "temperror", f"{type(exc).__name__}: {exc}"
            yield evaluate_spf(ip, t.domain, str(result), str(expl))

    name = f"{t.selector}._domainkey.{t.domain}"
    answers, err = resolve(res, name, "TXT")
    if err and not answers and ("timeout" in err or err.startswith("no nameserver")):
        yield Result(FAIL, "dns.dkim", f"{name}: {err}", "check --nameserver")
    else:
        txts = [b"".join(a.strings).decode("utf-8", "replace") for a in answers]
        yield evaluate_dkim(name, txts, t.dkim_value)

    yield dmarc_check(t.domain, res, timeout)
    return


def dmarc_check(domain: str, res: Any, timeout: float) -> Result:
    import checkdmarc.dmarc as cd

    try:
        got = cd.get_dmarc_record(domain, resolver=res, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - checkdmarc's errors all derive from Exception
        name = type(exc).__name__
        if "NotFound" in name:
            fix = f'publish TXT _dmarc.{domain} "v=DMARC1; p=none; ..." (pulumi up)'
        else:
            fix = "correct the DMARC record (see the dnsRecords output)"
        return Result(FAIL, "dns.dmarc", f"_dmarc.{domain}: {name}: {exc}", fix)
    parsed = got.get("parsed", {})
    tags = parsed.get("tags", {}) if isinstance(parsed, Mapping) else {}
    p = tags.get("p", {}).get("value", "?") if isinstance(tags, Mapping) else "?"
    warnings = parsed.get("warnings", []) if isinstance(parsed, Mapping) else []
    detail = f"_dmarc.{domain} parses: p={p}"
    if warnings:
        return Result(WARN, "dns.dmarc", f"{detail}; warnings: {'; '.join(warnings)}")
    return Result(PASS, "dns.dmarc", detail)


# ================================================================ shell: SMTP/TLS


@dataclass
class SmtpOptions:
    timeout: float = 10.0
    cafile: str | None = None
    send_to: str | None = None
    send_from: str | None = None
    outside: str = OUTSIDE
    now: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))


def _connect_error(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens, or a firewall rejects)"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out (a firewall drops the traffic, or the host is down)"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return f"server closed the connection ({exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"


class _SMTP(smtplib.SMTP):
    """smtplib.SMTP connected to an address, with TLS (SNI and name check) for a host name."""

    def __init__(self, addr: str, port: int, tls_name: str, timeout: float) -> None:
        super().__init__(local_hostname="verify.invalid", timeout=timeout)
        code, msg = self.connect(addr, port)
        if code != 220:
            self.close()
            raise smtplib.SMTPConnectError(code, msg)
        self._host = tls_name  # starttls() uses it as server_hostname


def _features(s: smtplib.SMTP) -> dict[str, str]:
    return {k.lower(): v for k, v in s.esmtp_features.items()}


def _peer_cert_der(addr: str, port: int, host: str, timeout: float) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with _SMTP(addr, port, host, timeout) as s:
        s.ehlo()
        s.starttls(context=ctx)
        sock = s.sock
        assert isinstance(sock, ssl.SSLSocket)
        der = sock.getpeercert(binary_form=True)
        if not der:
            raise ssl.SSLError("no peer certificate")
        return der


def cert_results(der: bytes, host: str, now: dt.datetime) -> list[Result]:
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    return [
        evaluate_cert_name(host, names),
        evaluate_cert_expiry(cert.not_valid_after_utc, now),
    ]


def _tls_error(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    return _connect_error(exc)


def smtp_checks(t: Target, addr: str, label: str, opts: SmtpOptions) -> Iterator[Result]:
    check_conn = f"smtp.connect[{label}]"
    where = f"[{addr}]:{t.port}" if ":" in addr else f"{addr}:{t.port}"
    try:
        s = _SMTP(addr, t.port, t.relay_host, opts.timeout)
    except (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError) as exc:
        # TCP got through (often to docker's port proxy) but no SMTP greeting came.
        yield Result(
            FAIL,
            check_conn,
            f"{where}: connected, but no SMTP greeting within {opts.timeout:g} s ({exc})",
            "the relay's smtpd is not answering: read `docker logs` of the relay "
            "container (a fatal config error throttles smtpd)",
        )
        return
    except OSError as exc:
        yield Result(
            FAIL,
            check_conn,
            f"{where}: {_connect_error(exc)}",
            f"open {t.port}/tcp in the VPS firewall (ufw allow {t.port}/tcp) "
            "and check the relay container runs",
        )
        return
    try:
        yield Result(PASS, check_conn, f"{where} answers")
        code, _ = s.ehlo()
        features = _features(s)
        yield from evaluate_plain_ehlo(features, label)
        if "starttls" not in features:
            return

        # 1. The certificate, read without trusting it, so name and dates can be judged.
        try:
            der = _peer_cert_der(addr, t.port, t.relay_host, opts.timeout)
            yield from [
                Result(r.status, f"{r.check}[{label}]", r.detail, r.fix)
                for r in cert_results(der, t.relay_host, opts.now())
            ]
        except (OSError, smtplib.SMTPException, ValueError) as exc:
            yield Result(FAIL, f"tls.handshake[{label}]", _tls_error(exc), "")
            return

        # 2. The same connection, now verifying chain and name as a real client does.
        ctx = ssl.create_default_context(cafile=opts.cafile)
        trusted = True
        try:
            s.starttls(context=ctx)
            yield Result(PASS, f"tls.chain[{label}]", f"certificate for {t.relay_host} verifies")
        except (OSError, smtplib.SMTPException) as exc:
            trusted = False
            yield Result(
                FAIL,
                f"tls.chain[{label}]",
                _tls_error(exc),
                "serve the full chain (fullchain.pem) from a trusted CA for the relay host"
                + (" (is --cafile right?)" if opts.cafile else ""),
            )
            # Continue without TLS trust only for the relay battery (no password sent).
            s.close()
            s = _tls_session(addr, t, opts, trusted=False)
        else:
            s.ehlo()

        # 3. No relaying without AUTH, over TLS (the path a stranger would take). A fresh
        # session every PROBES_PER_SESSION probes: Postfix slows down a client after
        # smtpd_soft_error_limit refusals (3 on the relay), which would outlast --timeout.
        for index, probe in enumerate(relay_battery(t.domain, opts.outside)):
            if index and index % PROBES_PER_SESSION == 0:
                _close(s)
                s = _tls_session(addr, t, opts, trusted)
            yield _probe(s, probe, label)

        # 4. AUTH with each login we have a password for.
        yield from _auth_checks(t, addr, label, opts, trusted)
    except (OSError, smtplib.SMTPException) as exc:
        yield Result(FAIL, f"smtp.session[{label}]", _connect_error(exc))
    finally:
        _close(s)


def _close(s: smtplib.SMTP) -> None:
    try:
        s.quit()
    except (OSError, smtplib.SMTPException):
        s.close()


def _tls_session(addr: str, t: Target, opts: SmtpOptions, trusted: bool) -> _SMTP:
    """A new session after STARTTLS; unverified only when the chain already failed."""
    s = _SMTP(addr, t.port, t.relay_host, opts.timeout)
    try:
        s.ehlo()
        if trusted:
            ctx = ssl.create_default_context(cafile=opts.cafile)
        else:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        s.starttls(context=ctx)
        s.ehlo()
    except BaseException:
        s.close()
        raise
    return s


def _probe(s: smtplib.SMTP, probe: RelayProbe, label: str) -> Result:
    s.rset()
    code, msg = s.docmd("MAIL", f"FROM:<{probe.mail_from}>")
    if code >= 400:
        return evaluate_relay_reply(probe, code, msg.decode("utf-8", "replace"), label)
    code, msg = s.docmd("RCPT", f"TO:{probe.rcpt_to}")
    res = evaluate_relay_reply(probe, code, msg.decode("utf-8", "replace"), label)
    s.rset()  # never DATA: nothing is ever sent by the battery
    return res


def _auth_checks(
    t: Target, addr: str, label: str, opts: SmtpOptions, trusted: bool
) -> list[Result]:
    if not t.credentials:
        return [
            Result(
                WARN,
                f"smtp.auth[{label}]",
                "no password in the outputs: AUTH not tried",
                "pipe `pulumi stack output --json --show-secrets`",
            )
        ]
    if not trusted:
        return [
            Result(
                FAIL,
                f"smtp.auth[{label}]",
                "not tried: the certificate did not verify, so no password is sent",
                "fix the certificate first",
            )
        ]
    out = []
    for index, (user, password) in enumerate(t.credentials):
        check = f"smtp.auth[{label}:{user}]"
        try:
            with _SMTP(addr, t.port, t.relay_host, opts.timeout) as s:
                s.ehlo()
                s.starttls(context=ssl.create_default_context(cafile=opts.cafile))
                s.ehlo()
                if "auth" not in _features(s):
                    out.append(
                        Result(
                            FAIL,
                            check,
                            "AUTH not offered after STARTTLS",
                            "set smtpd_sasl_auth_enable=yes on the submission service",
                        )
                    )
                    continue
                s.login(user, password)
                out.append(Result(PASS, check, f"login as {user} accepted"))
                if opts.send_to and index == 0:
                    out.append(_send(s, t, user, opts, label))
        except smtplib.SMTPAuthenticationError as exc:
            err = exc.smtp_error
            reply = err.decode("utf-8", "replace") if isinstance(err, bytes) else str(err)
            out.append(
                Result(
                    FAIL,
                    check,
                    f"login as {user} refused: {exc.smtp_code} {reply}".strip(),
                    "the password is the smtpPasswords output; redeploy if the relay's "
                    "credentials file is stale",
                )
            )
        except (OSError, smtplib.SMTPException) as exc:
            out.append(Result(FAIL, check, _tls_error(exc)))
    return out


def _send(s: smtplib.SMTP, t: Target, user: str, opts: SmtpOptions, label: str) -> Result:
    assert opts.send_to
    sender = opts.send_from or (user if "@" in user else f"{user}@{t.domain}")
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = opts.send_to
    msg["Subject"] = f"dkim-relay verify test via {t.relay_host}"
    msg["Date"] = format_datetime(opts.now())
    msg["Message-ID"] = make_msgid(domain=t.domain)
    msg.set_content(
        "Sent by `python -m components.verify --send-to`.\n"
        f"Show original should say: DKIM: 'PASS' with domain {t.domain}.\n"
    )
    check = f"smtp.send[{label}]"
    try:
        refused = s.send_message(msg, from_addr=sender, to_addrs=[opts.send_to])
    except smtplib.SMTPException as exc:
        return Result(FAIL, check, f"message to {opts.send_to} refused: {exc}")
    if refused:
        return Result(FAIL, check, f"recipient refused: {refused}")
    return Result(
        PASS,
        check,
        f"test message from {sender} to {opts.send_to} accepted; check its DKIM in Show original",
    )


def run_checks(
    t: Target,
    *,
    nameserver: tuple[str, int] | None,
    timeout: float,
    opts: SmtpOptions,
    skip_dns: bool = False,
) -> Iterator[Result]:
    """Every check, each result as soon as it is known."""
    if not skip_dns:
        yield from dns_checks(t, make_resolver(nameserver, timeout), timeout)
    for addr, label in ((t.connect_ipv4, "ipv4"), (t.connect_ipv6, "ipv6")):
        if addr:
            sent = False
            for r in smtp_checks(t, addr, label, opts):
                sent = sent or r.check.startswith("smtp.send[")
                yield r
            if sent:
                opts = dataclasses.replace(opts, send_to=None)  # one test message is enough


# ================================================================ CLI


def _read_outputs(path: str | None) -> dict[str, Any]:
    if path:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    else:
        if sys.stdin.isatty():
            raise InputError(
                "no outputs: pipe `pulumi stack output --json --show-secrets` or use --outputs"
            )
        text = sys.stdin.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"the outputs are not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise InputError("the outputs JSON is not an object")
    return data


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m components.verify",
        description="Check a deployed dkim-relay: DNS, TLS, AUTH, no open relay.",
    )
    ap.add_argument("--outputs", metavar="FILE", help="stack outputs JSON (default: stdin)")
    ap.add_argument("--nameserver", metavar="IP[:PORT]", help="DNS server to ask")
    ap.add_argument("--cafile", help="CA bundle to trust for the relay's certificate")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per operation")
    ap.add_argument("--port", type=int, help="SMTP port (default: smtpPort output or 587)")
    ap.add_argument("--host", help="relay host name (default: relayHost output)")
    ap.add_argument("--ipv4", help="connect to this IPv4 address (default: vpsIpv4)")
    ap.add_argument("--ipv6", help="connect to this IPv6 address (default: vpsIpv6)")
    ap.add_argument("--send-to", metavar="ADDRESS", help="also send a test message")
    ap.add_argument("--send-from", metavar="ADDRESS", help="From of the test message")
    ap.add_argument("--skip-dns", action="store_true", help="only the SMTP/TLS checks")
    args = ap.parse_args(argv)

    try:
        nameserver = parse_nameserver(args.nameserver) if args.nameserver else None
    except ValueError as exc:
        print(f"error: --nameserver {args.nameserver}: {exc}", file=sys.stderr)
        return 2
    try:
        outputs = _read_outputs(args.outputs)
        target = target_from_outputs(
            outputs, host=args.host, ipv4=args.ipv4, ipv6=args.ipv6, port=args.port
        )
    except (InputError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    opts = SmtpOptions(
        timeout=args.timeout,
        cafile=args.cafile,
        send_to=args.send_to,
        send_from=args.send_from,
    )
    results = []
    for r in run_checks(
        target, nameserver=nameserver, timeout=args.timeout, opts=opts, skip_dns=args.skip_dns
    ):
        results.append(r)
        print(r.line(), flush=True)
    failed = sum(r.status == FAIL for r in results)
    warned = sum(r.status == WARN for r in results)
    verdict = "FAILED" if failed else "OK"
    print(f"verify {verdict}: {failed} check(s) fail, {warned} warn, of {len(results)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
