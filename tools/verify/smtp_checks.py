"""SMTP/TLS checks of the submission service: STARTTLS before AUTH, the certificate's
name, chain and expiry, no relaying without AUTH, and a login per user.

The ``evaluate_*`` functions and the relay battery are pure; ``smtp_checks`` holds the
sessions (smtplib, with timeouts). A password is sent only over a verified TLS session.
"""

from __future__ import annotations

import datetime as dt
import smtplib
import socket
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from tools.verify.outputs import Target
from tools.verify.result import FAIL, PASS, WARN, Result

CERT_WARN_DAYS = 21  # certbot renews at 30 days left: under 21, renewal has failed for 9 days
CERT_FAIL_DAYS = 7
PROBES_PER_SESSION = 2
OUTSIDE = "example.net"  # a domain the relay must never relay to without AUTH


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


def evaluate_cert_expiry(
    not_after: dt.datetime, now: dt.datetime, warn_days: int = CERT_WARN_DAYS
) -> Result:
    """WARN under ``warn_days`` left; FAIL once expired or under CERT_FAIL_DAYS left."""
    check = "tls.cert-expiry"
    days = (not_after - now).total_seconds() / 86400
    when = not_after.strftime("%Y-%m-%d %H:%M UTC")
    fix = "renew: certbot renew (the deploy hook reloads the relay), then check the timer"
    if days < 0:
        return Result(FAIL, check, f"certificate expired {int(-days)} day(s) ago ({when})", fix)
    if days < min(CERT_FAIL_DAYS, warn_days):
        return Result(FAIL, check, f"certificate expires in {int(days)} day(s) ({when})", fix)
    if days < warn_days:
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


@dataclass
class SmtpOptions:
    timeout: float = 10.0
    cafile: str | None = None
    warn_cert_days: int = CERT_WARN_DAYS
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


def cert_results(
    der: bytes, host: str, now: dt.datetime, warn_days: int = CERT_WARN_DAYS
) -> list[Result]:
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    return [
        evaluate_cert_name(host, names),
        evaluate_cert_expiry(cert.not_valid_after_utc, now, warn_days),
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
                for r in cert_results(der, t.relay_host, opts.now(), opts.warn_cert_days)
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
        "Sent by `dkim-relay verify --send-to`.\n"
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
