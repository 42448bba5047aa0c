"""End to end, outbound: a smarthost login (STARTTLS + AUTH), the relay's own delay
notices and bounces (signed with the domain's key), and the IPv6 sending policy, on the
real image deployed by the production scripts (tests/relay_support.py).

Every server is an aiosmtpd on the test network's gateway; signatures are judged by
dkimpy against the TXT value the stack would publish.
"""

from __future__ import annotations

import contextlib
import email
import email.utils
import functools
import re
import socket
import ssl
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dkim
import dns.flags as dns_flags
import dns.message as dns_message
import dns.rcode as dns_rcode
import dns.rdatatype as dns_rdatatype
import dns.rrset as dns_rrset
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as AioSMTP
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from pure import postfix
from tests import relay_support as rs

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

IMAGE = "dkim-relay:outbound"
NET_V4 = "172.31.247.0/24"
NET_V6 = "fd00:d6b1:b0::/64"
NET_NAME = "dkimrelay-out"
CERT_NAMES = (rs.RELAY_HOST, "smarthost.test")
PASSWORDS = {"alice": "alice-outbound-pw"}
USERS = (postfix.SmtpUser("alice"),)
SENDER = f"alice@{rs.DOMAIN}"
SMARTHOST_USER = "relay@smarthost.test"
SMARTHOST_PASSWORD = "smart:host pw-0123456789"
WRONG_PASSWORD = "not-the-smarthost-password-987"


# ------------------------------------------------------------------------ servers
@dataclass
class Got:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    authenticated: bool
    tls: bool
    peer: str


@dataclass
class Server:
    """An aiosmtpd server on the gateway. Per recipient domain: ``defer.test`` gets 451,
    ``reject.test`` 550, anything else 250. With ``auth`` it needs STARTTLS and AUTH."""

    host: str
    port: int
    tls: ssl.SSLContext | None = None
    auth: tuple[str, str] | None = None
    got: list[Got] = field(default_factory=list)
    attempts: list[str] = field(default_factory=list)
    helos: list[str] = field(default_factory=list)
    auth_failures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    controller: Controller | None = None

    async def handle_EHLO(
        self, server: AioSMTP, session: Session, envelope: Envelope, hostname: str, responses: list
    ) -> list:
        with self.lock:
            self.helos.append(hostname)
        session.host_name = hostname
        return responses

    async def handle_RCPT(
        self, server: AioSMTP, session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        with self.lock:
            self.attempts.append(address)
        dom = address.rpartition("@")[2].lower()
        if dom == "defer.test":
            return "451 4.3.0 try again later"
        if dom == "reject.test":
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: AioSMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            self.got.append(
                Got(
                    str(envelope.mail_from),
                    [str(r) for r in envelope.rcpt_tos],
                    bytes(envelope.original_content or b""),
                    bool(session.authenticated),
                    session.ssl is not None,
                    str(session.peer),
                )
            )
        return "250 OK kept"

    def _authenticator(
        self, server: AioSMTP, session: Session, envelope: Envelope, mechanism: str, data: object
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and self.auth is not None
            and (data.login.decode(), data.password.decode()) == self.auth
        )
        if not ok:
            with self.lock:
                self.auth_failures += 1
        # handled=False: aiosmtpd then answers 535 itself.
        return AuthResult(success=ok, handled=False)

    def start(self) -> None:
        kw: dict[str, Any] = {}
        if self.auth is not None:
            kw = dict(
                tls_context=self.tls,
                require_starttls=True,
                auth_require_tls=True,
                authenticator=self._authenticator,
            )
        self.controller = rs.smtp_server(self, self.host, self.port, "mx.test", **kw)

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def find(self, needle: bytes) -> list[Got]:
        with self.lock:
            return [g for g in self.got if needle in g.data]


# ------------------------------------------------------------------------ fixtures
@contextlib.contextmanager
def relay_running(
    name: str,
    net: rs.TestNetwork,
    ca: rs.CertbotDir,
    dkim_pem: str,
    workdir: Path,
    *,
    nexthop: str | None,
    nexthop_user: str | None = None,
    nexthop_password: str | None = None,
    outbound_ipv6: str = "prefer-ipv4",
    delay_warning_time: str = "4h",
) -> Iterator[rs.RelaySpec]:
    settings = postfix.PostfixSettings(
        domain=rs.DOMAIN,
        relay_host=rs.RELAY_HOST,
        dkim_selector=rs.SELECTOR,
        users=USERS,
        nexthop=nexthop,
        nexthop_user=nexthop_user,
        outbound_ipv6=outbound_ipv6,
        delay_warning_time=delay_warning_time,
    )
    spec = rs.RelaySpec(
        name=name,
        image=IMAGE,
        network=net,
        cert_root=ca.root,
        volume=f"{name}-queue",
        settings=settings,
        passwords=PASSWORDS,
        dkim_keys={rs.SELECTOR: dkim_pem},
        port_587=rs.free_port(),
        nexthop_password=nexthop_password,
    )
    with rs.running(spec, workdir):
        yield spec


def send(relay: rs.RelaySpec, ctx: ssl.SSLContext, rcpt: str) -> str:
    subject = f"outbound-{uuid.uuid4().hex}"
    rs.submit("127.0.0.1", relay.port_587, ctx, SENDER, PASSWORDS["alice"], SENDER, rcpt, subject)
    return subject


def signature_tags(msg: bytes) -> dict[str, str]:
    sig = email.message_from_bytes(msg)["DKIM-Signature"]
    assert sig, f"no DKIM-Signature:\n{msg[:800]!r}"
    flat = "".join(str(sig).split())
    return dict(t.split("=", 1) for t in flat.split(";") if "=" in t)


def queue_ids(container: str) -> list[str]:
    out = rs.docker("exec", container, "postqueue", "-c", "/etc/postfix", "-j", check=False)
    return re.findall(r'"queue_id":\s*"([0-9A-Za-z]+)"', out)


def queue_json(container: str) -> str:
    return rs.docker("exec", container, "postqueue", "-c", "/etc/postfix", "-j", check=False)


# ------------------------------------------------------------------------ smarthost
@pytest.fixture(scope="module")
def smarthost(net: rs.TestNetwork, ca: rs.CertbotDir) -> Iterator[Server]:
    live = ca.root / "live" / "smarthost.test"
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(live / "fullchain.pem", live / "privkey.pem")
    s = Server(net.v4_gateway, 2587, tls=tls, auth=(SMARTHOST_USER, SMARTHOST_PASSWORD))
    s.start()
    yield s
    s.stop()


def test_smarthost_gets_signed_mail_over_tls_with_auth(
    net: rs.TestNetwork,
    ca: rs.CertbotDir,
    dkim_pem: str,
    workdir: Path,
    smarthost: Server,
    ctx: ssl.SSLContext,
    dns: dict[str, str],
) -> None:
    with relay_running(
        "dkimrelay-out-smart",
        net,
        ca,
        dkim_pem,
        workdir,
        nexthop=f"[{net.v4_gateway}]:2587",
        nexthop_user=SMARTHOST_USER,
        nexthop_password=SMARTHOST_PASSWORD,
    ) as relay:
        subject = send(relay, ctx, "friend@elsewhere.test")
        rs.wait_for(
            "the smarthost got the mail", lambda: len(smarthost.find(subject.encode())) == 1, 60
        )
        (got,) = smarthost.find(subject.encode())
        assert got.authenticated and got.tls, got
        assert got.rcpt_tos == ["friend@elsewhere.test"]
        # The HELO name is the relay's name (the one its PTR should give).
        assert smarthost.helos and set(smarthost.helos) == {rs.RELAY_HOST}, smarthost.helos
        assert dkim.verify(got.data, dnsfunc=rs.dnsfunc_for(dns)), got.data[:600]
        assert signature_tags(got.data)["d"] == rs.DOMAIN
        assert_no_password_shown(relay.name, SMARTHOST_PASSWORD)


def test_wrong_smarthost_password_keeps_the_mail_queued(
    net: rs.TestNetwork,
    ca: rs.CertbotDir,
    dkim_pem: str,
    workdir: Path,
    smarthost: Server,
    ctx: ssl.SSLContext,
) -> None:
    failures = smarthost.auth_failures
    with relay_running(
        "dkimrelay-out-wrongpw",
        net,
        ca,
        dkim_pem,
        workdir,
        nexthop=f"[{net.v4_gateway}]:2587",
        nexthop_user=SMARTHOST_USER,
        nexthop_password=WRONG_PASSWORD,
    ) as relay:
        subject = send(relay, ctx, "friend@elsewhere.test")
        rs.wait_for("an AUTH attempt", lambda: smarthost.auth_failures > failures, 60)
        try:
            rs.wait_for("a deferral", lambda: "status=deferred" in rs.logs(relay.name), 60)
        except AssertionError:
            raise AssertionError(rs.logs(relay.name)[-4000:]) from None
        log = rs.logs(relay.name)
        lines = [x for x in log.splitlines() if "status=deferred" in x]
        print("log line:", lines)
        assert any("SASL authentication failed" in x for x in lines), log[-3000:]
        queue = queue_json(relay.name)
        assert len(queue_ids(relay.name)) == 1, queue
        assert "SASL authentication failed" in queue, queue
        assert not smarthost.find(subject.encode()), "mail went out without a login"
        # Unsigned? Nothing left at all: the smarthost never got a DATA.
        assert not [g for g in smarthost.got if not g.authenticated]
        assert_no_password_shown(relay.name, WRONG_PASSWORD)


def assert_no_password_shown(container: str, password: str) -> None:
    inspect = rs.docker("inspect", container)
    assert password not in inspect, "the smarthost password shows in docker inspect"
    top = rs.docker("top", container, "-eo", "pid,args")
    assert password not in top, "the smarthost password is on a command line in the container"
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert password not in ps, "the smarthost password is on a command line on the host"
    assert password not in rs.logs(container), "the smarthost password is in the logs"
    env = rs.docker("exec", container, "cat", "/proc/1/environ")
    assert password not in env
    # It is where Postfix reads it, root-only.
    mode = rs.docker("exec", container, "stat", "-c", "%a %U", postfix.NEXTHOP_AUTH_PATH)
    assert mode == "600 root", mode


# ------------------------------------------------------------------------ notices
@pytest.fixture(scope="module")
def mx(net: rs.TestNetwork) -> Iterator[Server]:
    s = Server(net.v4_gateway, 2526)
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def notices_relay(
    net: rs.TestNetwork, ca: rs.CertbotDir, dkim_pem: str, workdir: Path, mx: Server
) -> Iterator[rs.RelaySpec]:
    with relay_running(
        "dkimrelay-out-notices",
        net,
        ca,
        dkim_pem,
        workdir,
        nexthop=f"[{net.v4_gateway}]:2526",
        delay_warning_time="1m",
    ) as relay:
        yield relay


def notices_to_sender(mx: Server, subject: str, kind: str) -> list[Got]:
    """Postfix's notices about `subject`, at the sender's domain's server."""
    found = []
    with mx.lock:
        for g in mx.got:
            if g.mail_from in ("", "<>") and g.rcpt_tos == [SENDER] and subject.encode() in g.data:
                report = email.message_from_bytes(g.data)
                if kind in str(report["Subject"]).lower():
                    found.append(g)
    return found


def check_notice(got: Got, dns: dict[str, str]) -> None:
    assert dkim.verify(got.data, dnsfunc=rs.dnsfunc_for(dns)), got.data[:1500]
    tags = signature_tags(got.data)
    assert tags["d"] == rs.DOMAIN, tags
    from_addr = email.utils.parseaddr(str(email.message_from_bytes(got.data)["From"]))[1]
    assert from_addr.lower() == f"mailer-daemon@{rs.RELAY_HOST}", from_addr
    # DMARC (relaxed): the From domain is under d=.
    assert from_addr.lower().endswith("." + tags["d"])


def test_bounce_reaches_the_sender_signed(
    notices_relay: rs.RelaySpec, mx: Server, ctx: ssl.SSLContext, dns: dict[str, str]
) -> None:
    subject = send(notices_relay, ctx, "nobody@reject.test")
    rs.wait_for("the bounce", lambda: len(notices_to_sender(mx, subject, "undelivered")) == 1, 60)
    (bounce,) = notices_to_sender(mx, subject, "undelivered")
    check_notice(bounce, dns)
    assert b"550 5.1.1 no such user here" in bounce.data
    rs.wait_for("queue empty", lambda: rs.queue_is_empty(notices_relay.name), 30)


def test_delay_notice_reaches_the_sender_signed(
    notices_relay: rs.RelaySpec, mx: Server, ctx: ssl.SSLContext, dns: dict[str, str]
) -> None:
    subject = send(notices_relay, ctx, "later@defer.test")
    rs.wait_for("a first attempt", lambda: "later@defer.test" in mx.attempts, 60)

    def warned() -> bool:
        rs.flush_queue(notices_relay.name)
        return len(notices_to_sender(mx, subject, "delayed")) >= 1

    # delay_warning_time is 1m: the warning goes out at the first attempt after it.
    rs.wait_for("the delay notice", warned, 180, every=10)
    notice = notices_to_sender(mx, subject, "delayed")[0]
    check_notice(notice, dns)
    assert b"451 4.3.0 try again later" in notice.data
    # The message itself stays queued for later attempts.
    assert len(queue_ids(notices_relay.name)) == 1, queue_json(notices_relay.name)


# ------------------------------------------------------------------------ IPv6 policy
@pytest.mark.parametrize(("policy", "tried"), [("never", False), ("any", True)])
def test_never_does_not_try_an_ipv6_only_server(
    net: rs.TestNetwork,
    ca: rs.CertbotDir,
    dkim_pem: str,
    workdir: Path,
    ctx: ssl.SSLContext,
    policy: str,
    tried: bool,
) -> None:
    """An IPv6-only server (the nexthop is an IPv6 literal): `never` does not connect to
    it and keeps the mail queued; `any` (the control) delivers to it."""
    server = Server(net.v6_gateway, 2527)
    server.start()
    try:
        with relay_running(
            f"dkimrelay-out-v6{policy}",
            net,
            ca,
            dkim_pem,
            workdir,
            nexthop=f"[{net.v6_gateway}]:2527",
            outbound_ipv6=policy,
        ) as relay:
            subject = send(relay, ctx, "v6only@elsewhere.test")
            if tried:
                rs.wait_for("delivery over IPv6", lambda: len(server.find(subject.encode())) == 1)
                assert ":" in server.find(subject.encode())[0].peer
                return
            rs.wait_for(
                "a deferral", lambda: "status=deferred" in rs.logs(relay.name), 60, every=0.5
            )
            print("log:", [x for x in rs.logs(relay.name).splitlines() if "status=" in x])
            assert not server.helos, "the relay connected to an IPv6-only server"
            assert len(queue_ids(relay.name)) == 1, queue_json(relay.name)
    finally:
        server.stop()


# ------------------------------------------------------------------------ IPv6 and MX
class Zone:
    """A tiny authoritative DNS server (dnspython) on the gateway, UDP, for MX lookups."""

    def __init__(self, host: str, records: dict[tuple[str, str], list[str]]) -> None:
        self.records = records
        self.queries: list[tuple[str, str]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 53))
        self.sock.settimeout(0.5)
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.running:
            try:
                wire, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            query = dns_message.from_wire(wire)
            reply = dns_message.make_response(query)
            reply.flags |= dns_flags.AA
            q = query.question[0]
            name, kind = q.name.to_text().rstrip(".").lower(), dns_rdatatype.to_text(q.rdtype)
            self.queries.append((name, kind))
            if not any(n == name for n, _ in self.records):
                reply.set_rcode(dns_rcode.NXDOMAIN)
            values = self.records.get((name, kind), [])
            if values:
                reply.answer.append(dns_rrset.from_text_list(name + ".", 60, "IN", kind, values))
            self.sock.sendto(reply.to_wire(), peer)

    def stop(self) -> None:
        self.running = False
        self.sock.close()
        self.thread.join(5)


def use_resolver(container: str, nameserver: str) -> None:
    """Point the container's resolver at the test zone (Postfix's smtp reads it anew)."""
    rs.docker("exec", container, "sh", "-c", f"echo 'nameserver {nameserver}' > /etc/resolv.conf")


@pytest.mark.parametrize(
    ("policy", "domain", "family"),
    [
        ("prefer-ipv4", "dual.test", "v4"),
        ("never", "dual.test", "v4"),
        ("never", "v6only.test", None),
        ("any", "v6only.test", "v6"),
    ],
)
def test_mx_delivery_follows_the_ipv6_policy(
    net: rs.TestNetwork,
    ca: rs.CertbotDir,
    dkim_pem: str,
    workdir: Path,
    ctx: ssl.SSLContext,
    dns: dict[str, str],
    policy: str,
    domain: str,
    family: str | None,
) -> None:
    """Delivery by MX (no nexthop): a dual-stack MX gets the mail over IPv4 with
    `prefer-ipv4`; an IPv6-only MX is not tried with `never`, and is used with `any`."""
    v4, v6 = net.v4_gateway, net.v6_gateway
    records = {
        ("dual.test", "MX"): ["10 mx.dual.test."],
        ("mx.dual.test", "A"): [v4],
        ("mx.dual.test", "AAAA"): [v6],
        ("v6only.test", "MX"): ["10 mx.v6only.test."],
        ("mx.v6only.test", "AAAA"): [v6],
        # The sender's domain, for the bounce.
        ("example.com", "MX"): ["10 mx.dual.test."],
    }
    with contextlib.ExitStack() as stack:
        relay = stack.enter_context(
            relay_running(
                f"dkimrelay-out-mx-{policy}",
                net,
                ca,
                dkim_pem,
                workdir,
                nexthop=None,
                outbound_ipv6=policy,
            )
        )
        # Started once the relay is on the bridge: before that the bridge's IPv6 address
        # may still be tentative and cannot be bound.
        zone = Zone(v4, records)
        stack.callback(zone.stop)
        servers = [Server(v4, 25), Server(v6, 25)]
        for server in servers:
            rs.wait_for(f"{server.host} bindable", functools.partial(_try_start, server), 30, 0.5)
            stack.callback(server.stop)
        use_resolver(relay.name, v4)
        subject = send(relay, ctx, f"someone@{domain}")
        if family is None:
            # Nothing to try: Postfix bounces at once (5.4.4), and the sender hears it.
            try:
                rs.wait_for("the bounce", lambda: bool(notices_to_sender(servers[0], subject, "")))
            except AssertionError:
                raise AssertionError(rs.logs(relay.name)[-3000:]) from None
            lines = [x for x in rs.logs(relay.name).splitlines() if "status=" in x]
            print(policy, domain, "->", lines)
            assert any("someone@v6only.test" in x and "status=bounced" in x for x in lines)
            assert not servers[1].helos, "the IPv6-only server was tried"
            assert f"someone@{domain}" not in servers[0].attempts + servers[1].attempts
            check_notice(notices_to_sender(servers[0], subject, "")[0], dns)
            return
        index = 0 if family == "v4" else 1

        def arrived() -> bool:
            return len(servers[index].find(subject.encode())) == 1

        rs.wait_for(f"delivery over {family}", arrived, 60)
        lines = [x for x in rs.logs(relay.name).splitlines() if "status=sent" in x]
        print(policy, domain, "->", lines)
        (got,) = servers[index].find(subject.encode())
        assert dkim.verify(got.data, dnsfunc=rs.dnsfunc_for(dns))
        assert not servers[1 - index].helos, "the other family was tried first"
        assert (domain, "MX") in zone.queries


def _try_start(server: Server) -> bool:
    try:
        server.start()
    except OSError:
        server.controller = None
        return False
    return True
