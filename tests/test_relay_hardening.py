"""The relay's hardening, end to end on the real image: OpenDKIM supervised (killed and
SIGSTOPped), long lines, the header From held to the domain and to the login, the null
sender, bare newlines, the TLS suites and versions (judged by openssl s_client), and one
AUTH budget across 587 and 465.

Judges: dkimpy against the TXT value the stack would publish, openssl s_client, the
sink's copy of each message, and the relay's queue. Traffic goes only to loopback and
the docker network this module creates.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import functools
import json
import smtplib
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dkim
import pytest

from pure import postfix
from tests import relay_support as rs

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

IMAGE = "dkim-relay:hardening-test"
NET_V4 = "172.31.254.0/24"
NET_V6 = "fd00:d6b1:4a4d::/64"
NET_NAME = "dkimrelay-hard"
PASSWORDS = {"alice": "alice-pw-0123456789", "bob": "bob-pw-0123456789"}
# alice may use any address at the domain; bob only his own.
USERS = (postfix.SmtpUser("alice"), postfix.SmtpUser("bob", ("bob@example.com",)))
LOOSE_LIMITS = postfix.RateLimits(
    auth_per_unit=10000,
    connections_per_unit=10000,
    concurrent_connections=100,
    messages_per_unit=10000,
)
RCPT = "someone@other.test"
# A dead OpenDKIM is seen within 2 s and restarted after 1 s; a hung one is killed after
# two unanswered probes (about 6 to 8 s). Both must sign again well within this.
RECOVERY_BOUND = 30.0


# ------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def sink(net: rs.TestNetwork) -> Iterator[rs.Sink]:
    s = rs.Sink(net.v4_gateway, 2625)
    s.start()
    yield s
    s.stop()


@contextlib.contextmanager
def relay_running(
    name: str,
    net: rs.TestNetwork,
    ca: rs.CertbotDir,
    dkim_pem: str,
    workdir: Path,
    *,
    octet: int,
    limits: postfix.RateLimits = LOOSE_LIMITS,
) -> Iterator[rs.RelaySpec]:
    settings = postfix.PostfixSettings(
        domain=rs.DOMAIN,
        relay_host=rs.RELAY_HOST,
        dkim_selector=rs.SELECTOR,
        users=USERS,
        submissions_465=True,
        nexthop=f"{net.v4_gateway}:2625",
        rate_limits=limits,
    )
    spec = rs.RelaySpec(
        name=name,
        image=IMAGE,
        network=net,
        ip4=NET_V4.replace(".0/24", f".{octet}"),
        ip6=NET_V6.replace("::/64", f"::{octet}"),
        cert_root=ca.root,
        volume=f"{name}-queue",
        settings=settings,
        passwords=PASSWORDS,
        dkim_keys={rs.SELECTOR: dkim_pem},
        port_587=rs.free_port(),
        port_465=rs.free_port(),
    )
    with rs.running(spec, workdir):
        yield spec


@pytest.fixture(scope="module")
def relay(
    net: rs.TestNetwork, ca: rs.CertbotDir, dkim_pem: str, workdir: Path, sink: rs.Sink
) -> Iterator[rs.RelaySpec]:
    with relay_running("dkimrelay-hard-main", net, ca, dkim_pem, workdir, octet=10) as spec:
        yield spec


# ------------------------------------------------------------------------ helpers
def subject() -> str:
    return f"hard-{uuid.uuid4().hex}"


def message(
    subj: str, *, from_headers: tuple[str, ...], body: bytes = b"", extra: str = ""
) -> bytes:
    head = "".join(f"From: {f}\r\n" for f in from_headers)
    head += (
        f"To: <{RCPT}>\r\n"
        f"Subject: {subj}\r\n"
        f"Date: {email.utils.formatdate()}\r\n"
        f"Message-ID: {email.utils.make_msgid(domain=rs.DOMAIN)}\r\n"
        "MIME-Version: 1.0\r\n"
        f"{extra}"
    )
    if "Content-Type" not in extra:
        head += "Content-Type: text/plain; charset=utf-8\r\n"
    return head.encode() + b"\r\n" + (body or f"Hello ({subj}).\r\n".encode())


def session(
    relay: rs.RelaySpec,
    ctx: ssl.SSLContext,
    user: str,
    *,
    port465: bool = False,
    timeout: float = 30,
) -> smtplib.SMTP:
    """An authenticated session on 587 (STARTTLS) or 465 (implicit TLS)."""
    s: smtplib.SMTP
    if port465:
        assert relay.port_465 is not None
        s = smtplib.SMTP_SSL(
            "127.0.0.1", relay.port_465, local_hostname="client.test", context=ctx, timeout=timeout
        )
    else:
        s = smtplib.SMTP("127.0.0.1", relay.port_587, local_hostname="client.test", timeout=timeout)
        s.starttls(context=ctx)
    s.login(f"{user}@{rs.DOMAIN}", PASSWORDS[user])
    return s


def send(s: smtplib.SMTP, sender: str, msg: bytes) -> tuple[int, bytes]:
    """MAIL, RCPT, DATA on an open session; the first refusal or the final reply."""
    for verb, arg in (("MAIL", f"FROM:<{sender}>"), ("RCPT", f"TO:<{RCPT}>")):
        code, text = s.docmd(verb, arg)
        if code >= 400:
            s.docmd("RSET")
            return code, text
    return s.data(msg)


def submit(
    relay: rs.RelaySpec, ctx: ssl.SSLContext, user: str, sender: str, msg: bytes, **kw: bool
) -> tuple[int, bytes]:
    with session(relay, ctx, user, **kw) as s:
        return send(s, sender, msg)


def copies(sink: rs.Sink, subj: str) -> list[rs.Received]:
    return [m for m in sink.snapshot() if f"Subject: {subj}".encode() in m.data]


def delivered_and_verified(sink: rs.Sink, dns: dict[str, str], subj: str) -> bytes:
    rs.wait_for(f"{subj} at the sink", lambda: len(copies(sink, subj)) == 1, 60)
    data = copies(sink, subj)[0].data
    assert dkim.verify(data, dnsfunc=rs.dnsfunc_for(dns)), data[:800]
    return data


def refused_and_not_delivered(
    relay: rs.RelaySpec, sink: rs.Sink, reply: tuple[int, bytes], subj: str
) -> None:
    code, text = reply
    assert 500 <= code < 600, f"expected a 5xx refusal, got {code} {text!r}"
    rs.wait_for("relay queue empty", lambda: rs.queue_is_empty(relay.name), 30)
    time.sleep(0.5)
    assert copies(sink, subj) == []


# ------------------------------------------------------------------------ header From
def test_ordinary_mail_signed_and_verified(
    relay: rs.RelaySpec, sink: rs.Sink, ctx: ssl.SSLContext, dns: dict[str, str]
) -> None:
    cases = [
        ("alice", "alice@example.com", "Alice <alice@example.com>", False),
        ("alice", "alice@example.com", "postmaster@example.com", True),  # any @domain address
        ("bob", "bob@example.com", "Bob <BOB@Example.COM>", False),
        # a display name may hold "@", "," and "<" inside quotes or a comment
        (
            "bob",
            "bob@example.com",
            '"Smith, Bob <x@other.test>" <bob@example.com> (a@b.test)',
            True,
        ),
    ]
    for user, sender, from_, on465 in cases:
        subj = subject()
        reply = submit(
            relay, ctx, user, sender, message(subj, from_headers=(from_,)), port465=on465
        )
        assert reply[0] == 250, (from_, reply)
        delivered_and_verified(sink, dns, subj)


FROM_REFUSALS = [
    ("foreign-domain", "alice", "alice@example.com", ("alice@other.test",)),
    ("subdomain", "alice", "alice@example.com", ("alice@sub.example.com",)),
    (
        "two-from-ours-and-foreign",
        "alice",
        "alice@example.com",
        ("alice@example.com", "x@other.test"),
    ),
    ("two-from-both-ours", "alice", "alice@example.com", ("alice@example.com", "bob@example.com")),
    (
        "two-mailboxes-in-one-from",
        "alice",
        "alice@example.com",
        ("alice@example.com, x@other.test",),
    ),
    (
        "display-name-looks-ours",
        "alice",
        "alice@example.com",
        ('"alice@example.com" <x@other.test>',),
    ),
    ("restricted-user-as-other-user", "bob", "bob@example.com", ("Alice <alice@example.com>",)),
    ("restricted-user-other-domain", "bob", "bob@example.com", ("bob@other.test",)),
    ("no-from", "alice", "alice@example.com", ()),
    ("from-without-domain", "alice", "alice@example.com", ("alice",)),
    ("from-empty-address", "alice", "alice@example.com", ("<>",)),
    ("from-empty-local-part", "alice", "alice@example.com", ("<@example.com>",)),
    ("group-syntax", "alice", "alice@example.com", ("undisclosed: alice@example.com;",)),
]


@pytest.mark.parametrize(
    ("case", "user", "sender", "froms"), FROM_REFUSALS, ids=[c[0] for c in FROM_REFUSALS]
)
def test_header_from_not_owned_refused(
    relay: rs.RelaySpec,
    sink: rs.Sink,
    ctx: ssl.SSLContext,
    case: str,
    user: str,
    sender: str,
    froms: tuple[str, ...],
) -> None:
    subj = subject()
    reply = submit(relay, ctx, user, sender, message(subj, from_headers=froms))
    refused_and_not_delivered(relay, sink, reply, subj)
    assert reply[0] == 550 and b"5.7.1" in reply[1], reply


@pytest.mark.parametrize("port465", [False, True], ids=["587", "465"])
def test_null_sender_after_auth_refused(
    relay: rs.RelaySpec, sink: rs.Sink, ctx: ssl.SSLContext, port465: bool
) -> None:
    subj = subject()
    reply = submit(
        relay, ctx, "bob", "", message(subj, from_headers=("bob@example.com",)), port465=port465
    )
    refused_and_not_delivered(relay, sink, reply, subj)


# ------------------------------------------------------------------------ long lines
def _lines_body(length: int, count: int = 1, char: bytes = b"x") -> bytes:
    line = (char * length)[:length]
    return b"".join(line + b"\r\n" for _ in range(count))


def test_line_of_998_bytes_delivered_intact_and_verified(
    relay: rs.RelaySpec, sink: rs.Sink, ctx: ssl.SSLContext, dns: dict[str, str]
) -> None:
    subj = subject()
    body = b"start\r\n" + _lines_body(998) + b"end\r\n"
    reply = submit(
        relay,
        ctx,
        "alice",
        "alice@example.com",
        message(subj, from_headers=("alice@example.com",), body=body),
    )
    assert reply[0] == 250, reply
    data = delivered_and_verified(sink, dns, subj)
    assert b"\r\n" + b"x" * 998 + b"\r\n" in data, "the 998-byte line was altered"


def test_folded_long_header_delivered_and_verified(
    relay: rs.RelaySpec, sink: rs.Sink, ctx: ssl.SSLContext, dns: dict[str, str]
) -> None:
    """Only physical lines count: a References header of 3000 bytes folded into short
    lines is ordinary mail."""
    subj = subject()
    refs = "\r\n ".join(f"<{uuid.uuid4().hex}@{rs.DOMAIN}>" for _ in range(70))
    msg = message(subj, from_headers=("alice@example.com",), extra=f"References: {refs}\r\n")
    assert len(refs) > 2500
    assert submit(relay, ctx, "alice", "alice@example.com", msg)[0] == 250
    delivered_and_verified(sink, dns, subj)


LONG = [
    ("body-5000", b"", _lines_body(5000)),
    ("body-999", b"", _lines_body(999)),
    # 333 x a 3-byte character: 999 bytes, 333 characters. Postfix's client folds bytes.
    ("body-999-bytes-utf8", b"", _lines_body(999, char="\u20ac".encode())),
    (
        "base64-long-lines",
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n",
        _lines_body(4000, count=3, char=b"QUJD"),
    ),
    ("header-1200", ("X-Long: " + "h" * 1200 + "\r\n").encode(), b""),
]


@pytest.mark.parametrize(("case", "extra", "body"), LONG, ids=[c[0] for c in LONG])
def test_line_over_998_bytes_refused_at_submission(
    relay: rs.RelaySpec,
    sink: rs.Sink,
    ctx: ssl.SSLContext,
    dns: dict[str, str],
    case: str,
    extra: bytes,
    body: bytes,
) -> None:
    """Never delivered broken: refused with a 5xx at the end of DATA (5.6.0). Were it ever
    accepted, the delivered copy would still have to verify."""
    subj = subject()
    msg = message(subj, from_headers=("alice@example.com",), body=body, extra=extra.decode())
    code, text = submit(relay, ctx, "alice", "alice@example.com", msg)
    if code == 250:
        delivered_and_verified(sink, dns, subj)
        pytest.fail(f"{case}: delivered (and verified) instead of refused")
    refused_and_not_delivered(relay, sink, (code, text), subj)
    assert b"5.6.0" in text, text


BARE_LF = [
    # Under "normalize" the LF would end the line, ".\r\n" the message, and it would go out
    # (250). Under "reject" only <CR><LF>.<CR><LF> ends it, and then comes the 550.
    # The session goes on.
    ("in-body", b"smuggled\n.\r\nafter the smuggled end\r\n.\r\n", False),
    # A command line ended by a bare LF: "normalize" would take it as a command. Postfix
    # answers 550 and hangs up.
    ("in-command", None, True),
]


@pytest.mark.parametrize(("case", "tail", "hangs_up"), BARE_LF, ids=[c[0] for c in BARE_LF])
def test_bare_newline_refused(
    relay: rs.RelaySpec,
    sink: rs.Sink,
    ctx: ssl.SSLContext,
    case: str,
    tail: bytes | None,
    hangs_up: bool,
) -> None:
    """SMTP smuggling: a bare LF is refused with 550 5.5.2 (smtpd_forbid_bare_newline =
    reject; "yes" would mean normalize: 250 and delivered)."""
    subj = subject()
    s = session(relay, ctx, "alice")
    try:
        if tail is None:
            s.send(b"MAIL FROM:<alice@example.com>\n")
        else:
            assert s.docmd("MAIL", "FROM:<alice@example.com>")[0] == 250
            assert s.docmd("RCPT", f"TO:<{RCPT}>")[0] == 250
            assert s.docmd("DATA")[0] == 354
            s.send(message(subj, from_headers=("alice@example.com",)) + tail)
        code, text = s.getreply()
        assert (code, text.split(b" ", 1)[0]) == (550, b"5.5.2"), (code, text)
        assert b"bare <LF>" in text, text
        if hangs_up:
            with pytest.raises(smtplib.SMTPServerDisconnected):
                s.docmd("NOOP")
        else:
            assert s.docmd("NOOP")[0] == 250
    finally:
        s.close()
    refused_and_not_delivered(relay, sink, (code, text), subj)


# ------------------------------------------------------------------------ TLS
@dataclass
class Handshake:
    ok: bool
    output: str


def s_client(port: int, *args: str, starttls: bool) -> Handshake:
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-brief", *args]
    if starttls:
        cmd += ["-starttls", "smtp", "-name", "client.test"]
    proc = subprocess.run(cmd, input=b"", capture_output=True, timeout=30)
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    return Handshake(proc.returncode == 0 and "CONNECTION ESTABLISHED" in out, out)


BAD_TLS = [
    ("aNULL", ("-tls1_2", "-cipher", "aNULL:@SECLEVEL=0")),
    ("eNULL", ("-tls1_2", "-cipher", "eNULL:@SECLEVEL=0")),
    ("CBC-SHA1", ("-tls1_2", "-cipher", "SHA1:@SECLEVEL=0")),
    ("tls1_1", ("-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")),
]


@pytest.mark.parametrize("port_name", ["587", "465"])
@pytest.mark.parametrize(("case", "args"), BAD_TLS, ids=[c[0] for c in BAD_TLS])
def test_weak_tls_refused(
    relay: rs.RelaySpec, port_name: str, case: str, args: tuple[str, ...]
) -> None:
    port = relay.port_587 if port_name == "587" else relay.port_465
    assert port is not None
    hs = s_client(port, *args, starttls=port_name == "587")
    assert not hs.ok, f"{case} accepted on {port_name}:\n{hs.output}"


@pytest.mark.parametrize("port_name", ["587", "465"])
def test_tls12_with_aead_suite_accepted(relay: rs.RelaySpec, port_name: str) -> None:
    """Control for the refusals: the same client gets TLS 1.2 with an AEAD suite."""
    port = relay.port_587 if port_name == "587" else relay.port_465
    assert port is not None
    hs = s_client(port, "-tls1_2", starttls=port_name == "587")
    assert hs.ok, hs.output
    assert "Protocol version: TLSv1.2" in hs.output
    assert any(a in hs.output for a in ("GCM", "CHACHA20")), hs.output


@pytest.mark.parametrize(("case", "args"), BAD_TLS, ids=[c[0] for c in BAD_TLS])
def test_weak_tls_client_works_against_a_permissive_server(
    ca: rs.CertbotDir, case: str, args: tuple[str, ...]
) -> None:
    """Control: each refused handshake is one this client can complete at all."""
    live = ca.root / "live" / rs.RELAY_HOST
    port = rs.free_port()
    cmd = "s_server -quiet -cipher ALL:eNULL:aNULL:@SECLEVEL=0 -min_protocol TLSv1.1".split()
    cmd += ["-accept", f"127.0.0.1:{port}", "-cert", str(live / "fullchain.pem")]
    cmd += ["-key", str(live / "privkey.pem")]
    server = subprocess.Popen(
        ["openssl", *cmd],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        rs.wait_for("s_server", lambda: _listening(port), 10, every=0.1)
        hs = s_client(port, *args, starttls=False)
        assert hs.ok, hs.output
    finally:
        server.kill()
        server.wait()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# ------------------------------------------------------------------------ one AUTH budget
def test_one_auth_budget_across_587_and_465(
    net: rs.TestNetwork, ca: rs.CertbotDir, dkim_pem: str, workdir: Path, ctx: ssl.SSLContext
) -> None:
    limits = postfix.RateLimits(
        auth_per_unit=4,
        connections_per_unit=1000,
        concurrent_connections=50,
        messages_per_unit=1000,
    )
    with relay_running(
        "dkimrelay-hard-anvil", net, ca, dkim_pem, workdir, octet=11, limits=limits
    ) as spec:

        def auth(port465: bool) -> tuple[int, bytes]:
            s: smtplib.SMTP
            if port465:
                assert spec.port_465 is not None
                s = smtplib.SMTP_SSL(
                    "127.0.0.1",
                    spec.port_465,
                    local_hostname="client.test",
                    context=ctx,
                    timeout=30,
                )
            else:
                s = smtplib.SMTP(
                    "127.0.0.1", spec.port_587, local_hostname="client.test", timeout=30
                )
                s.starttls(context=ctx)
            with s:
                s.ehlo()
                cred = base64.b64encode(b"\0alice@example.com\0wrong").decode()
                return s.docmd("AUTH", f"PLAIN {cred}")

        # Keep trying on both ports until both refuse: what gets through in total is
        # the client's budget (4), not the budget per port (8 before the split).
        answered = {False: 0, True: 0}
        refused = {False: b"", True: b""}
        for _ in range(10):
            for port465 in (False, True):
                if refused[port465]:
                    continue
                code, text = auth(port465)
                if code == 535:
                    answered[port465] += 1
                else:
                    refused[port465] = text
        assert all(b"too many AUTH" in t for t in refused.values()), refused
        assert answered[False] + answered[True] == 4, answered


# ------------------------------------------------------------------------ key cache
def test_opendkim_parses_the_key_once(
    relay: rs.RelaySpec, sink: rs.Sink, ctx: ssl.SSLContext, dns: dict[str, str]
) -> None:
    """relay/preload: libkeycache keeps the parsed key (after several signed messages the
    log names one parse per OpenDKIM start, here one) and libnovbr skipped the VBR
    resolver; the signatures verify."""
    for _ in range(3):
        subj = subject()
        msg = message(subj, from_headers=("alice@example.com",))
        assert submit(relay, ctx, "alice", "alice@example.com", msg)[0] == 250
        delivered_and_verified(sink, dns, subj)
    log = rs.run("docker", "logs", relay.name).stdout.decode(errors="replace")
    assert log.count("libkeycache: DKIM key 1 parsed and kept") == 1, log[-3000:]
    assert "libkeycache: DKIM key 2" not in log
    assert log.count("libnovbr: no VBR resolver (sign-only OpenDKIM)") == 1, log[-3000:]


# ------------------------------------------------------------------------ AUTH limits
def test_a_burst_of_logins_is_never_throttled(
    net: rs.TestNetwork,
    ca: rs.CertbotDir,
    dkim_pem: str,
    workdir: Path,
    sink: rs.Sink,
    ctx: ssl.SSLContext,
    dns: dict[str, str],
) -> None:
    """30 messages in one minute from one address, each on its own connection with its
    own AUTH (as Gmail submits), under the default limits: all accepted, signed, delivered.
    (Postfix's smtpd_client_auth_rate_limit, 10 before, counted these logins.)"""
    with relay_running(
        "dkimrelay-hard-burst", net, ca, dkim_pem, workdir, octet=12, limits=postfix.RateLimits()
    ) as spec:
        start = time.monotonic()
        subjects = []
        for _ in range(30):
            subj = subject()
            subjects.append(subj)
            msg = message(subj, from_headers=("alice@example.com",))
            reply = submit(spec, ctx, "alice", "alice@example.com", msg)
            assert reply[0] == 250, f"message {len(subjects)} of the burst: {reply}"
        assert time.monotonic() - start < 60, "the burst must fit in one anvil time unit"
        for subj in subjects:
            delivered_and_verified(sink, dns, subj)


def guess(port: int, ctx: ssl.SSLContext, host: str = "127.0.0.1") -> list[int]:
    """One attacker connection: wrong passwords until the relay stops answering 535.
    The codes it got (a 421 at connect means the address is out of connections)."""
    codes: list[int] = []
    try:
        s = smtplib.SMTP(host, port, local_hostname="client.test", timeout=30)
    except smtplib.SMTPConnectError as e:
        return [e.smtp_code]
    with contextlib.closing(s):
        try:
            s.starttls(context=ctx)
            s.ehlo()
            for i in range(10):
                cred = base64.b64encode(f"\0alice@example.com\0wrong-{i}".encode()).decode()
                code, _ = s.docmd("AUTH", f"PLAIN {cred}")
                codes.append(code)
                if code != 535:
                    break
        except smtplib.SMTPServerDisconnected:
            codes.append(421)
    return codes


def test_wrong_passwords_bounded_per_session_and_address(
    net: rs.TestNetwork, ca: rs.CertbotDir, dkim_pem: str, workdir: Path, ctx: ssl.SSLContext
) -> None:
    """Each connection gets AUTH_FAILURES_PER_SESSION wrong passwords, then 421; each
    address gets connections_per_unit connections per time unit. The same user's right
    password still works from another address (here [::1], seen as the v6 gateway)."""
    limits = postfix.RateLimits(connections_per_unit=5)
    with relay_running(
        "dkimrelay-hard-guess", net, ca, dkim_pem, workdir, octet=13, limits=limits
    ) as spec:
        per_session = postfix.AUTH_FAILURES_PER_SESSION
        sessions = [guess(spec.port_587, ctx) for _ in range(limits.connections_per_unit)]
        for codes in sessions:
            assert codes == [535] * per_session + [421], sessions
        # The next connection from this address is refused before any AUTH.
        assert guess(spec.port_587, ctx)[0] == 421
        refused = rs.logs(spec.name)
        assert "too many connections" in refused or "Connection rate limit" in refused, refused
        # Another address is not affected: the user's own login works over IPv6.
        with smtplib.SMTP("::1", spec.port_587, local_hostname="client.test", timeout=30) as s:
            s.starttls(context=ctx)
            assert s.login("alice@example.com", PASSWORDS["alice"])[0] == 235


# ------------------------------------------------------------------------ OpenDKIM faults
def health_log(container: str) -> list[dict[str, object]]:
    out = rs.docker("inspect", "-f", "{{json .State.Health.Log}}", container)
    return list(json.loads(out) or [])


class HealthWatch:
    """Collects every health check result (docker keeps only the last five)."""

    def __init__(self, container: str) -> None:
        self.container = container
        self.seen: dict[str, tuple[int, str]] = {}
        self.statuses: set[str] = set()

    def poll(self) -> None:
        for entry in health_log(self.container):
            self.seen[str(entry["Start"])] = (int(str(entry["ExitCode"])), str(entry["Output"]))
        self.statuses.add(rs.health(self.container))

    def outputs(self) -> list[str]:
        return [out for _, (code, out) in sorted(self.seen.items())]

    def failures(self) -> list[str]:
        return [out for _, (code, out) in sorted(self.seen.items()) if code != 0]


def opendkim_pid(container: str) -> str:
    return rs.docker("exec", container, "cat", "/run/opendkim/opendkim.pid").strip()


def until_signing(
    relay: rs.RelaySpec,
    sink: rs.Sink,
    ctx: ssl.SSLContext,
    dns: dict[str, str],
    watch: HealthWatch,
    start: float,
) -> float:
    """Submit as Gmail would (retry on 4xx) until a message is accepted; it must arrive
    signed. Returns the seconds from `start` until the relay accepted it."""
    deadline = start + RECOVERY_BOUND + 20
    while time.monotonic() < deadline:
        watch.poll()
        subj = subject()
        try:
            code, text = submit(
                relay,
                ctx,
                "alice",
                "alice@example.com",
                message(subj, from_headers=("alice@example.com",)),
            )
        except (smtplib.SMTPException, OSError) as e:
            code, text = 421, str(e).encode()
        if code == 250:
            took = time.monotonic() - start
            delivered_and_verified(sink, dns, subj)
            return took
        assert 400 <= code < 500, f"a permanent refusal during the outage: {code} {text!r}"
        time.sleep(0.5)
    raise AssertionError("the relay did not sign again by itself")


def outage_submission(
    relay: rs.RelaySpec, ctx: ssl.SSLContext, s: smtplib.SMTP
) -> tuple[str, tuple[int, bytes]]:
    """Send on a session opened before the fault: its milter connection is the one that
    broke, so the answer must be a 4xx."""
    subj = subject()
    try:
        reply = send(s, "alice@example.com", message(subj, from_headers=("alice@example.com",)))
    except smtplib.SMTPServerDisconnected:
        reply = (421, b"disconnected")
    return subj, reply


@pytest.mark.parametrize("fault", ["KILL", "STOP"])
def test_opendkim_fault_recovers_by_itself(
    net: rs.TestNetwork,
    ca: rs.CertbotDir,
    dkim_pem: str,
    workdir: Path,
    sink: rs.Sink,
    ctx: ssl.SSLContext,
    dns: dict[str, str],
    fault: str,
) -> None:
    octet = 20 if fault == "KILL" else 21
    with relay_running(
        f"dkimrelay-hard-{fault.lower()}", net, ca, dkim_pem, workdir, octet=octet
    ) as spec:
        watch = HealthWatch(spec.name)
        before = opendkim_pid(spec.name)
        early = session(spec, ctx, "alice", timeout=60)
        start = time.monotonic()
        rs.docker("exec", spec.name, "bash", "-c", f"kill -{fault} {before}")
        during, reply = outage_submission(spec, ctx, early)
        early.close()
        assert 400 <= reply[0] < 500, f"during the outage: {reply}"
        took = until_signing(spec, sink, ctx, dns, watch, start)
        assert took < RECOVERY_BOUND, f"signing again only after {took:.1f} s"
        after = opendkim_pid(spec.name)
        assert after != before
        # The health status tells what happened: a restart and why, once healthy again.
        reason = "died (signal 9)" if fault == "KILL" else "hung (no milter answer"

        def reported() -> bool:
            watch.poll()
            outs = watch.outputs()
            return (
                rs.health(spec.name) == "healthy"
                and bool(outs)
                and outs[-1].startswith("ok")
                and ("restarted 1 time(s)" in outs[-1] and reason in outs[-1])
            )

        rs.wait_for("health reports the restart", reported, 30)
        if fault == "STOP":
            # the hung milter was caught by the health check itself, not only the restart
            assert any("opendkim does not answer" in f for f in watch.failures()), watch.outputs()
        # Nothing submitted during the outage went out unsigned (or at all).
        rs.flush_queue(spec.name)
        rs.wait_for("relay queue empty", lambda: rs.queue_is_empty(spec.name), 60)
        assert copies(sink, during) == []
        print(
            f"\n{fault}: signing again {took:.1f} s after the fault; "
            f"health outputs: {watch.outputs()}; statuses seen: {sorted(watch.statuses)}"
        )


def test_healthy_relay_reports_no_restart(relay: rs.RelaySpec) -> None:
    """Control for the fault test: the restart note is not there without a fault."""
    rs.wait_for("a health result", lambda: bool(health_log(relay.name)), 30)
    out = str(health_log(relay.name)[-1]["Output"]).strip()
    assert out == "ok", out


def test_repeated_opendkim_deaths_back_off(
    net: rs.TestNetwork,
    ca: rs.CertbotDir,
    dkim_pem: str,
    workdir: Path,
    sink: rs.Sink,
    ctx: ssl.SSLContext,
    dns: dict[str, str],
) -> None:
    """Each death in a row waits twice as long before the restart (1, 2, 4 s; at most
    30 s), and the relay still comes back and signs."""
    with relay_running("dkimrelay-hard-backoff", net, ca, dkim_pem, workdir, octet=22) as spec:
        for n in (1, 2, 3):
            pid = opendkim_pid(spec.name)
            rs.docker("exec", spec.name, "bash", "-c", f"kill -KILL {pid}")
            rs.wait_for(f"restart {n}", functools.partial(_restarted, spec.name, n), 60)
        log = rs.logs(spec.name)
        for n, delay in ((1, 1), (2, 2), (3, 4)):
            assert f"opendkim died (signal 9); restart {n} in {delay} s" in log, log
        watch = HealthWatch(spec.name)
        until_signing(spec, sink, ctx, dns, watch, time.monotonic())


def test_postfix_master_killed_is_restarted_in_place(
    net: rs.TestNetwork,
    ca: rs.CertbotDir,
    dkim_pem: str,
    workdir: Path,
    sink: rs.Sink,
    ctx: ssl.SSLContext,
    dns: dict[str, str],
) -> None:
    """s6 starts a killed Postfix master again inside the same container (no container
    restart), mail is signed and delivered afterwards, and docker stop reaches it."""
    with relay_running("dkimrelay-hard-master", net, ca, dkim_pem, workdir, octet=23) as spec:
        started = rs.docker("inspect", "-f", "{{.State.StartedAt}}", spec.name)
        pidfile = "/var/spool/postfix/pid/master.pid"
        before = rs.docker("exec", spec.name, "sh", "-c", f"head -1 {pidfile}").strip()
        rs.docker("exec", spec.name, "sh", "-c", f"kill -KILL {before}")

        def new_master() -> bool:
            now = rs.docker("exec", spec.name, "sh", "-c", f"head -1 {pidfile}", check=False)
            return now.strip() not in ("", before)

        rs.wait_for("a new Postfix master", new_master, 60)
        until_signing(spec, sink, ctx, dns, HealthWatch(spec.name), time.monotonic())
        assert rs.docker("inspect", "-f", "{{.State.StartedAt}}", spec.name) == started
        assert rs.docker("inspect", "-f", "{{.RestartCount}}", spec.name) == "0"
        log = rs.run("docker", "logs", spec.name).stdout.decode(errors="replace")
        # s6 watched the master itself (not postfix-script): it saw the signal.
        assert "postfix master exited (code 256, signal 9); s6 restarts it" in log, log[-3000:]
        # docker stop: s6 hands the master its SIGTERM, and it shuts Postfix down itself.
        rs.docker("stop", "-t", "30", spec.name)
        log = rs.run("docker", "logs", spec.name).stdout.decode(errors="replace")
        assert "postfix master stopped (code 256, signal 15)" in log, log[-3000:]


def _restarted(container: str, n: int) -> bool:
    """The entrypoint logged restart n and OpenDKIM's socket came up after it."""
    _, found, after = rs.logs(container).partition(f"; restart {n} in ")
    return bool(found) and "opendkim up again" in after
