"""End to end: the real relay image on a real Docker engine (started by
scripts/docker-engine.sh from a fixture), deployed by the production scripts (the
secrets step and the relay's deploy script, see tests/relay_support.py), a throwaway
CA, a DKIM key from components/dkim.py, and an aiosmtpd sink on the test network's
gateway.

Clients reach the relay through its published ports on 127.0.0.1 and [::1] (as Gmail
reaches the VPS's IPv4 and IPv6); the relay delivers to the sink through `relayhost`.
"""

from __future__ import annotations

import base64
import contextlib
import email
import smtplib
import socket
import ssl
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest

from pure import postfix
from tests import relay_support as rs

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

IMAGE = "dkim-relay:e2e"
NET_V4 = "172.31.252.0/24"
NET_V6 = "fd00:d6b1:e2e::/64"
NET_NAME = "dkimrelay-e2e"
PASSWORDS = {"alice": "alice-Pw:with colon", "bob": "bob-pw-0123456789"}
USERS = (postfix.SmtpUser("alice"), postfix.SmtpUser("bob", ("bob@example.com",)))
LOOSE_LIMITS = postfix.RateLimits(
    auth_per_unit=10000,
    connections_per_unit=10000,
    concurrent_connections=100,
    messages_per_unit=10000,
)
HOSTS = {"v4": "127.0.0.1", "v6": "::1"}


# ------------------------------------------------------------------------ fixtures
@contextlib.contextmanager
def relay_running(
    name: str,
    net: rs.TestNetwork,
    ca: rs.CertbotDir,
    dkim_pem: str,
    workdir: Path,
    *,
    sink_port: int,
    port_587: int,
    port_465: int | None = None,
    secrets_host_dir: Path | None = None,
    cert_poll_seconds: int = 0,
) -> Iterator[rs.RelaySpec]:
    settings = postfix.PostfixSettings(
        domain=rs.DOMAIN,
        relay_host=rs.RELAY_HOST,
        dkim_selector=rs.SELECTOR,
        users=USERS,
        submissions_465=port_465 is not None,
        nexthop=f"{net.v4_gateway}:{sink_port}",
        rate_limits=LOOSE_LIMITS,
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
        port_587=port_587,
        port_465=port_465,
        secrets_host_dir=secrets_host_dir,
        cert_poll_seconds=cert_poll_seconds,
    )
    with rs.running(spec, workdir):
        yield spec


@pytest.fixture(scope="module")
def sink(net: rs.TestNetwork) -> Iterator[rs.Sink]:
    s = rs.Sink(net.v4_gateway, 2525)
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def relay(
    net: rs.TestNetwork, ca: rs.CertbotDir, dkim_pem: str, workdir: Path, sink: rs.Sink
) -> Iterator[rs.RelaySpec]:
    with relay_running(
        "dkimrelay-e2e-main",
        net,
        ca,
        dkim_pem,
        workdir,
        sink_port=2525,
        port_587=rs.free_port(),
        port_465=rs.free_port(),
    ) as spec:
        yield spec


def unique_subject() -> str:
    return f"e2e-{uuid.uuid4().hex}"


def find(sink: rs.Sink, subject: str) -> list[rs.Received]:
    return [m for m in sink.snapshot() if f"Subject: {subject}".encode() in m.data]


def assert_nothing_delivered(relay: rs.RelaySpec, sink: rs.Sink, before: int) -> None:
    """Nothing accepted: the relay's queue is empty and the sink got nothing new."""
    rs.wait_for("relay queue empty", lambda: rs.queue_is_empty(relay.name), 30)
    assert sink.count() == before, [m.data[:300] for m in sink.snapshot()[before:]]


def dkim_tags(msg: bytes) -> dict[str, str]:
    parsed = email.message_from_bytes(msg)
    sig = parsed["DKIM-Signature"]
    assert sig, "no DKIM-Signature header"
    flat = "".join(str(sig).split())
    return dict(t.split("=", 1) for t in flat.split(";") if "=" in t)


# ------------------------------------------------------------------------ signed mail
@pytest.mark.parametrize("family", ["v4", "v6"])
@pytest.mark.parametrize(
    ("user", "sender"), [("alice", "alice@example.com"), ("bob", "bob@example.com")]
)
def test_signed_mail_reaches_sink_and_verifies(
    relay: rs.RelaySpec,
    sink: rs.Sink,
    ctx: ssl.SSLContext,
    dns: dict[str, str],
    family: str,
    user: str,
    sender: str,
) -> None:
    subject = unique_subject()
    rs.submit(
        HOSTS[family],
        relay.port_587,
        ctx,
        f"{user}@{rs.DOMAIN}",
        PASSWORDS[user],
        sender,
        "someone@other.test",
        subject,
    )
    rs.wait_for("message at the sink", lambda: len(find(sink, subject)) == 1, 60)
    (msg,) = find(sink, subject)
    assert msg.rcpt_tos == ["someone@other.test"]
    assert msg.mail_from == sender
    assert dkim.verify(msg.data, dnsfunc=rs.dnsfunc_for(dns)), msg.data[:600]
    tags = dkim_tags(msg.data)
    assert tags["d"] == rs.DOMAIN
    assert tags["s"] == rs.SELECTOR
    assert tags["c"] == "relaxed/relaxed"
    signed = [h.lower() for h in tags["h"].split(":")]
    assert signed.count("from") == 2, "From must be oversigned"
    for h in ("to", "subject", "date", "message-id", "mime-version", "content-type"):
        assert h in signed


def test_signed_mail_over_implicit_tls_465(
    relay: rs.RelaySpec, sink: rs.Sink, ctx: ssl.SSLContext, dns: dict[str, str]
) -> None:
    assert relay.port_465 is not None
    for host in HOSTS.values():
        subject = unique_subject()
        rs.submit(
            host,
            relay.port_465,
            ctx,
            "alice@example.com",
            PASSWORDS["alice"],
            "alice@example.com",
            "x@other.test",
            subject,
            implicit_tls=True,
        )

        def arrived(s: str = subject) -> bool:
            return len(find(sink, s)) == 1

        rs.wait_for("message at the sink", arrived, 60)
        assert dkim.verify(find(sink, subject)[0].data, dnsfunc=rs.dnsfunc_for(dns))


def test_signature_fails_against_another_key(
    relay: rs.RelaySpec, sink: rs.Sink, ctx: ssl.SSLContext
) -> None:
    """The judge can fail: the same message does not verify against a different key."""
    other = rs.dkim_txt_value(rs.generate_private_key_pem(2048))
    subject = unique_subject()
    rs.submit(
        "127.0.0.1",
        relay.port_587,
        ctx,
        "alice@example.com",
        PASSWORDS["alice"],
        "alice@example.com",
        "x@other.test",
        subject,
    )
    rs.wait_for("message at the sink", lambda: len(find(sink, subject)) == 1, 60)
    wrong = rs.dnsfunc_for({f"{rs.SELECTOR}._domainkey.{rs.DOMAIN}": other})
    assert not dkim.verify(find(sink, subject)[0].data, dnsfunc=wrong)


# ------------------------------------------------------------------------ refusals
def _connect(family: str, port: int) -> smtplib.SMTP:
    s = smtplib.SMTP(HOSTS[family], port, local_hostname="client.test", timeout=30)
    s.ehlo()
    return s


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_mail_before_starttls_refused(relay: rs.RelaySpec, sink: rs.Sink, family: str) -> None:
    before = sink.count()
    with _connect(family, relay.port_587) as s:
        assert "auth" not in s.esmtp_features, "AUTH offered before STARTTLS"
        code, text = s.docmd("MAIL", "FROM:<alice@example.com>")
        assert code == 530, text
        assert b"STARTTLS" in text
    assert_nothing_delivered(relay, sink, before)


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_auth_before_starttls_refused(relay: rs.RelaySpec, sink: rs.Sink, family: str) -> None:
    before = sink.count()
    cred = base64.b64encode(b"\0alice@example.com\0" + PASSWORDS["alice"].encode()).decode()
    with _connect(family, relay.port_587) as s:
        code, text = s.docmd("AUTH", f"PLAIN {cred}")
        assert 500 <= code < 600, (code, text)
        code, text = s.docmd("MAIL", "FROM:<alice@example.com>")
        assert code == 530, text
    assert_nothing_delivered(relay, sink, before)


def _legacy_tls_client() -> ssl.SSLContext:
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    c.set_ciphers("DEFAULT:@SECLEVEL=0")
    c.minimum_version = ssl.TLSVersion.TLSv1
    c.maximum_version = ssl.TLSVersion.TLSv1_1
    return c


def test_legacy_tls_client_works_against_a_permissive_server(ca: rs.CertbotDir) -> None:
    """Control for the TLS 1.0/1.1 refusal: this client can speak TLS 1.1 at all."""
    live = ca.root / "live" / rs.RELAY_HOST
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.set_ciphers("DEFAULT:@SECLEVEL=0")
    server.minimum_version = ssl.TLSVersion.TLSv1
    server.load_cert_chain(live / "fullchain.pem", live / "privkey.pem")
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]

    def serve() -> None:
        conn, _ = lsock.accept()
        with contextlib.suppress(OSError), server.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with _legacy_tls_client().wrap_socket(raw) as tls:
            assert tls.version() in ("TLSv1", "TLSv1.1")
    t.join(10)
    lsock.close()


@pytest.mark.parametrize("family", ["v4", "v6"])
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_old_tls_refused(
    relay: rs.RelaySpec, sink: rs.Sink, family: str, version: ssl.TLSVersion
) -> None:
    before = sink.count()
    legacy = _legacy_tls_client()
    legacy.minimum_version = version
    legacy.maximum_version = version
    s = _connect(family, relay.port_587)
    try:
        with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
            s.starttls(context=legacy)
    finally:
        s.close()
    assert relay.port_465 is not None
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with socket.create_connection((HOSTS[family], relay.port_465), timeout=10) as raw:
            with legacy.wrap_socket(raw):
                pass
    assert_nothing_delivered(relay, sink, before)


@pytest.mark.parametrize("family", ["v4", "v6"])
@pytest.mark.parametrize(
    ("login", "password"),
    [
        ("alice@example.com", "wrong-password"),
        ("alice@example.com", PASSWORDS["bob"]),
        ("mallory@example.com", "anything"),
        ("alice@other.test", PASSWORDS["alice"]),
    ],
    ids=["wrong-password", "other-users-password", "unknown-user", "wrong-realm"],
)
def test_bad_credentials_refused(
    relay: rs.RelaySpec, sink: rs.Sink, ctx: ssl.SSLContext, family: str, login: str, password: str
) -> None:
    before = sink.count()
    with pytest.raises(smtplib.SMTPAuthenticationError) as err:
        rs.submit(
            HOSTS[family],
            relay.port_587,
            ctx,
            login,
            password,
            "alice@example.com",
            "x@other.test",
            unique_subject(),
        )
    assert err.value.smtp_code == 535
    assert_nothing_delivered(relay, sink, before)


@pytest.mark.parametrize("family", ["v4", "v6"])
@pytest.mark.parametrize(
    ("user", "sender"),
    [
        ("bob", "alice@example.com"),  # bob owns only bob@example.com
        ("bob", "postmaster@example.com"),
        ("alice", "alice@other.test"),  # outside the domain
        ("bob", "bob@other.test"),
    ],
)
def test_sender_not_owned_refused(
    relay: rs.RelaySpec, sink: rs.Sink, ctx: ssl.SSLContext, family: str, user: str, sender: str
) -> None:
    before = sink.count()
    with pytest.raises((smtplib.SMTPSenderRefused, smtplib.SMTPRecipientsRefused)) as err:
        rs.submit(
            HOSTS[family],
            relay.port_587,
            ctx,
            f"{user}@example.com",
            PASSWORDS[user],
            sender,
            "x@other.test",
            unique_subject(),
        )
    text = str(err.value)
    assert "553" in text or "554" in text or "550" in text, text
    assert_nothing_delivered(relay, sink, before)


OPEN_RELAY_BATTERY = [
    ("plain", "alice@example.com", "victim@other.test"),
    ("percent-hack", "alice@example.com", "victim%other.test@example.com"),
    ("quoted-local", "alice@example.com", '"victim@other.test"@example.com'),
    ("source-route", "alice@example.com", "@example.com:victim@other.test"),
    ("double-at", "alice@example.com", "victim@other.test@example.com"),
    ("bang-path", "alice@example.com", "other.test!victim@example.com"),
    ("outside-sender", "someone@other.test", "victim@other.test"),
    ("null-sender", "", "victim@other.test"),
    ("local-domain", "alice@example.com", "alice@example.com"),
]


@pytest.mark.parametrize("family", ["v4", "v6"])
@pytest.mark.parametrize("mode", ["587-plain", "587-starttls", "465-tls"])
@pytest.mark.parametrize(
    ("case", "sender", "rcpt"), OPEN_RELAY_BATTERY, ids=[c[0] for c in OPEN_RELAY_BATTERY]
)
def test_open_relay_battery_without_auth(
    relay: rs.RelaySpec,
    sink: rs.Sink,
    ctx: ssl.SSLContext,
    family: str,
    mode: str,
    case: str,
    sender: str,
    rcpt: str,
) -> None:
    before = sink.count()
    assert relay.port_465 is not None
    s: smtplib.SMTP
    if mode == "465-tls":
        s = smtplib.SMTP_SSL(
            HOSTS[family], relay.port_465, local_hostname="client.test", context=ctx, timeout=30
        )
        s.ehlo()
    else:
        s = _connect(family, relay.port_587)
        if mode == "587-starttls":
            s.starttls(context=ctx)
            s.ehlo()
    with s:
        code, text = s.docmd("MAIL", f"FROM:<{sender}>")
        refused = code >= 400
        if not refused:
            code, text = s.docmd("RCPT", f"TO:<{rcpt}>")
            refused = code >= 400
        assert refused, f"{case} over {mode}/{family} was accepted: {code} {text!r}"
        assert 500 <= code < 600, f"{case}: expected a permanent refusal, got {code} {text!r}"
    assert_nothing_delivered(relay, sink, before)


# ------------------------------------------------------------------------ hygiene
def test_config_parses_cleanly_in_the_image(relay: rs.RelaySpec) -> None:
    proc = rs.run("docker", "exec", relay.name, "postconf", "-c", "/etc/postfix", "-n", check=False)
    assert proc.returncode == 0, proc.stderr
    assert b"warning" not in proc.stderr.lower(), proc.stderr
    assert b"permit_mynetworks" not in proc.stdout
    proc = rs.run(
        "docker", "exec", relay.name, "postfix", "-c", "/etc/postfix", "check", check=False
    )
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def test_secret_files_are_tight_and_nowhere_else(relay: rs.RelaySpec, dkim_pem: str) -> None:
    stat = rs.docker(
        "exec",
        relay.name,
        "stat",
        "-c",
        "%n %U:%G %a",
        "/etc/sasldb2",
        "/etc/opendkim/keys",
        f"/etc/opendkim/keys/{rs.SELECTOR}.private",
        "/run/relay-secrets",
    )
    lines = stat.splitlines()
    assert lines[0] == "/etc/sasldb2 root:postfix 640"
    assert lines[1] == "/etc/opendkim/keys root:opendkim 750"
    assert lines[2] == f"/etc/opendkim/keys/{rs.SELECTOR}.private opendkim:opendkim 400"
    assert lines[3].endswith(" 700"), lines[3]
    inspect = rs.docker("inspect", relay.name)
    log_text = rs.logs(relay.name)
    key_body = dkim_pem.splitlines()[1]
    for secret in (*PASSWORDS.values(), key_body):
        assert secret not in inspect, "a secret shows in docker inspect"
        assert secret not in log_text, "a secret shows in the container log"


def test_queue_volume_and_log_rotation(relay: rs.RelaySpec) -> None:
    fmt = (
        "{{json .HostConfig.LogConfig}} {{range .Mounts}}{{.Destination}}={{.Name}}{{.RW}} {{end}}"
    )
    out = rs.docker("inspect", "-f", fmt, relay.name)
    assert '"max-file":"3"' in out and '"max-size":"10m"' in out, out
    assert f"/var/spool/postfix={relay.volume}true" in out, out
    assert f"{postfix.CERT_MOUNT}=false" in out, out


# ------------------------------------------------------------------------ no mail lost
def test_no_mail_lost_across_recreation_with_sink_down(
    net: rs.TestNetwork, ca: rs.CertbotDir, dkim_pem: str, workdir: Path, dns: dict[str, str]
) -> None:
    sink = rs.Sink(net.v4_gateway, 2526)  # not started: the recipient's MX is down
    secrets_dir = workdir / "host-secrets"  # the key files stay on the host across recreation
    ctx = ca.client_context()
    ctx.check_hostname = False
    subjects = [unique_subject() for _ in range(5)]
    with relay_running(
        "dkimrelay-e2e-persist",
        net,
        ca,
        dkim_pem,
        workdir,
        sink_port=2526,
        port_587=rs.free_port(),
        secrets_host_dir=secrets_dir,
    ) as spec:
        for i, subject in enumerate(subjects):
            rs.submit(
                HOSTS["v4" if i % 2 else "v6"],
                spec.port_587,
                ctx,
                "alice@example.com",
                PASSWORDS["alice"],
                "alice@example.com",
                f"r{i}@other.test",
                subject,
            )
        rs.wait_for(
            "5 deferred messages",
            lambda: (
                rs.docker("exec", spec.name, "postqueue", "-c", "/etc/postfix", "-j").count(
                    '"queue_name": "deferred"'
                )
                == 5
            ),
            60,
        )
        # Recreate as `pulumi up` would on an image change: stop gracefully, remove, create.
        rs.docker("stop", "-t", "30", spec.name)
        rs.docker("rm", spec.name)
        rs.start_relay(spec, workdir)
        rs.wait_healthy(spec.name)
        sink.start()
        try:
            rs.flush_queue(spec.name)
            rs.wait_for("queue drained", lambda: rs.queue_is_empty(spec.name), 120, every=0.5)
            got = sink.snapshot()
            for subject in subjects:
                matches = [m for m in got if f"Subject: {subject}".encode() in m.data]
                assert len(matches) == 1, f"{subject}: {len(matches)} copies"
                assert dkim.verify(matches[0].data, dnsfunc=rs.dnsfunc_for(dns))
            assert len(got) == len(subjects)
        finally:
            sink.stop()


# ------------------------------------------------------------------------ cert renewal
def _served_serial(port: int) -> int:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as s:
        c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        c.check_hostname = False
        c.verify_mode = ssl.CERT_NONE
        s.starttls(context=c)
        sock = s.sock
        assert isinstance(sock, ssl.SSLSocket)
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


def test_renewed_cert_served_after_reload_and_queue_kept(
    net: rs.TestNetwork, dkim_pem: str, workdir: Path, dns: dict[str, str]
) -> None:
    ca = rs.CertbotDir(workdir / "letsencrypt-renew")
    first = ca.issue(rs.RELAY_HOST)
    sink = rs.Sink(net.v4_gateway, 2527)
    with relay_running(
        "dkimrelay-e2e-renew",
        net,
        ca,
        dkim_pem,
        workdir,
        sink_port=2527,
        port_587=rs.free_port(),
        cert_poll_seconds=1,
    ) as spec:
        ctx = ca.client_context()
        ctx.check_hostname = False
        assert _served_serial(spec.port_587) == first
        subjects = [unique_subject() for _ in range(2)]
        for subject in subjects:
            rs.submit(
                "127.0.0.1",
                spec.port_587,
                ctx,
                "alice@example.com",
                PASSWORDS["alice"],
                "alice@example.com",
                "r@other.test",
                subject,
            )
        # certbot renew + deploy hook: new files behind the live/ symlinks, then relay-reload
        second = ca.issue(rs.RELAY_HOST)
        out = rs.docker("exec", spec.name, "relay-reload")
        assert "reloaded" in out
        rs.wait_for("renewed cert served", lambda: _served_serial(spec.port_587) == second, 30)
        # no hook at all: the entrypoint's watcher notices the changed files by itself
        third = ca.issue(rs.RELAY_HOST)
        rs.wait_for("watcher reload", lambda: _served_serial(spec.port_587) == third, 60)
        sink.start()
        try:
            rs.flush_queue(spec.name)
            rs.wait_for("queue drained", lambda: rs.queue_is_empty(spec.name), 120, every=0.5)
            for subject in subjects:
                matches = [m for m in sink.snapshot() if f"Subject: {subject}".encode() in m.data]
                assert len(matches) == 1
                assert dkim.verify(matches[0].data, dnsfunc=rs.dnsfunc_for(dns))
        finally:
            sink.stop()


def test_reload_refuses_missing_cert(net: rs.TestNetwork, dkim_pem: str, workdir: Path) -> None:
    ca = rs.CertbotDir(workdir / "letsencrypt-missing")
    serial = ca.issue(rs.RELAY_HOST)
    with relay_running(
        "dkimrelay-e2e-missing",
        net,
        ca,
        dkim_pem,
        workdir,
        sink_port=2528,
        port_587=rs.free_port(),
    ) as spec:
        link = ca.root / "live" / rs.RELAY_HOST / "fullchain.pem"
        target = link.readlink()
        link.unlink()  # a broken renewal
        proc = rs.run("docker", "exec", spec.name, "relay-reload", check=False)
        assert proc.returncode != 0
        assert b"keeping the running certificate" in proc.stdout
        assert rs.health(spec.name) == "healthy"  # Postfix was not reloaded onto nothing
        link.symlink_to(target)
        assert _served_serial(spec.port_587) == serial


# ------------------------------------------------------------------------ health
def test_opendkim_restarted_when_it_dies(
    net: rs.TestNetwork, ca: rs.CertbotDir, dkim_pem: str, workdir: Path
) -> None:
    with relay_running(
        "dkimrelay-e2e-health",
        net,
        ca,
        dkim_pem,
        workdir,
        sink_port=2529,
        port_587=rs.free_port(),
    ) as spec:
        assert rs.health(spec.name) == "healthy"
        rs.docker("exec", spec.name, "bash", "-c", 'kill -KILL "$(cat /run/opendkim/opendkim.pid)"')

        # The entrypoint restarts it; the health output then says so (and why).
        def restarted() -> bool:
            out = rs.docker("inspect", "-f", "{{json .State.Health.Log}}", spec.name)
            return rs.health(spec.name) == "healthy" and "restarted 1 time(s)" in out

        rs.wait_for("restart reported", restarted, 60)
        out = rs.docker("inspect", "-f", "{{json .State.Health.Log}}", spec.name)
        assert "died (signal 9)" in out


def test_unhealthy_when_the_submission_service_cannot_start(
    net: rs.TestNetwork, ca: rs.CertbotDir, dkim_pem: str, workdir: Path
) -> None:
    """Master and OpenDKIM alive, but every smtpd dies on a config error: not healthy."""
    with relay_running(
        "dkimrelay-e2e-health-smtpd",
        net,
        ca,
        dkim_pem,
        workdir,
        sink_port=2530,
        port_587=rs.free_port(),
    ) as spec:
        assert rs.health(spec.name) == "healthy"
        # Postfix refuses these restrictions at smtpd start-up (an open relay otherwise).
        rs.docker(
            "exec",
            spec.name,
            "bash",
            "-c",
            "postconf -c /etc/postfix -P 'submission/inet/smtpd_relay_restrictions=permit' "
            "'submission/inet/smtpd_recipient_restrictions=permit' "
            "&& postfix -c /etc/postfix reload",
        )

        # During the reload a check may time out and an old smtpd may still greet; what
        # must follow is a steady "unhealthy" for the right reason.
        def failing_for_the_greeting() -> bool:
            log = rs.docker("inspect", "-f", "{{json .State.Health.Log}}", spec.name)
            return rs.health(spec.name) == "unhealthy" and "does not greet" in log

        rs.wait_for("unhealthy: no greeting", failing_for_the_greeting, 120)
