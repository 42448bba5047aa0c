"""Real parts for verify's end-to-end test: a test CA, nsd, a loopback Postfix, and an
HTTP server standing in for a chat's incoming webhook.

nsd serves zones built from the stack's own zone snippet (components.dns), and reverse
zones with the PTR records a VPS provider would publish for the test addresses. One Postfix
instance (its own config dir, `postfix -c DIR`) runs several submission services on
loopback ports, one per scenario: the good relay, and relays broken on purpose (AUTH
before TLS, an open relay through permit_mynetworks, a wrong-name and an expired
certificate). Debian packages: nsd, postfix, sasl2-bin, libsasl2-modules
(scripts/setup.d/40-actionlint.sh installs them).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# Re-exported: the verify tests take the CA from here.
from tests.common import Leaf as Leaf
from tests.common import TestCA as TestCA
from tests.common import free_port, wait_for

REPO = Path(__file__).resolve().parent.parent
# What .github/workflows/health.yml runs (tests/test_workflows.py holds it to that), with
# the stack outputs on stdin and the webhook in DKIM_RELAY_ALERT_WEBHOOK. The tests add
# only the flags that point it at loopback parts (--nameserver, --cafile, --timeout).
HEALTH_CHECK = ("bin/dkim-relay", "verify", "--json", "--skip-ipv6")
WEBHOOK_ENV = "DKIM_RELAY_ALERT_WEBHOOK"

NSD = shutil.which("nsd") or "/usr/sbin/nsd"
POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
SASLPASSWD2 = shutil.which("saslpasswd2") or "/usr/sbin/saslpasswd2"


# ------------------------------------------------------------------- test CA


# ------------------------------------------------------------------- nsd


def zone_file(origin: str, snippet: str) -> str:
    """A complete zone: SOA and NS added in front of the stack's zone snippet."""
    origin = origin.rstrip(".") + "."
    head = (
        f"$ORIGIN {origin}\n$TTL 300\n"
        f"@ IN SOA ns1.{origin} hostmaster.{origin} 1 3600 600 86400 300\n"
        f"@ IN NS ns1.{origin}\n"
        f"@ IN MX 10 ns1.{origin}\n"  # the DMARC rua address must be deliverable
        f"ns1 IN A 127.0.0.1\n"
    )
    return head + snippet


def reverse_zones(ptrs: Mapping[str, str]) -> dict[str, str]:
    """The zones ``in-addr.arpa`` and ``ip6.arpa`` holding a PTR for each address.

    Both zones are always served, so an address without a PTR gets NXDOMAIN, as from a
    VPS provider's reverse zone, rather than a refusal.
    """
    import dns.reversename

    lines: dict[str, list[str]] = {"in-addr.arpa": [], "ip6.arpa": []}
    for ip, name in ptrs.items():
        rev = dns.reversename.from_address(ip).to_text()
        origin = "ip6.arpa" if rev.endswith(".ip6.arpa.") else "in-addr.arpa"
        lines[origin].append(f"{rev} IN PTR {name.rstrip('.')}.")
    return {
        origin: zone_file(origin, "".join(f"{ln}\n" for ln in ls)) for origin, ls in lines.items()
    }


class Nsd:
    """nsd in the foreground, on loopback, with its own config dir."""

    def __init__(self, workdir: Path, zones: Mapping[str, str], host: str = "127.0.0.1") -> None:
        self.dir = workdir
        self.host = host
        self.port = free_port(host, udp=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        zone_conf = ""
        for origin, text in zones.items():
            (self.dir / f"{origin}.zone").write_text(text)
            zone_conf += f'zone:\n  name: "{origin}"\n  zonefile: "{origin}.zone"\n'
        conf = self.dir / "nsd.conf"
        conf.write_text(
            "server:\n"
            f"  ip-address: {host}@{self.port}\n"
            f"  port: {self.port}\n"
            '  username: ""\n'
            '  chroot: ""\n'
            f'  zonesdir: "{self.dir}"\n'
            f'  pidfile: "{self.dir}/nsd.pid"\n'
            '  database: ""\n'
            f'  xfrdfile: "{self.dir}/xfrd.state"\n'
            f'  zonelistfile: "{self.dir}/zone.list"\n'
            f'  logfile: "{self.dir}/nsd.log"\n'
            "  server-count: 1\n"
            "  verbosity: 1\n"
            "  hide-version: yes\n"
            "remote-control:\n"
            "  control-enable: no\n" + zone_conf
        )
        check = subprocess.run(
            ["nsd-checkconf", str(conf)], capture_output=True, text=True, check=False
        )
        if check.returncode != 0:
            raise RuntimeError(f"nsd.conf: {check.stderr}")
        self.proc = subprocess.Popen(
            [NSD, "-d", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=(self.dir / "nsd.stderr").open("wb"),
        )
        first = next(iter(zones))
        try:
            wait_for("nsd", lambda: self._answers(first), 15, every=0.05)
        except AssertionError:
            self.stop()
            raise RuntimeError(f"nsd did not start: {self.log()}") from None

    def _answers(self, origin: str) -> bool:
        import dns.message
        import dns.query

        if self.proc.poll() is not None:
            raise RuntimeError(f"nsd exited {self.proc.returncode}: {self.log()}")
        q = dns.message.make_query(origin, "SOA")
        try:
            r = dns.query.udp(q, self.host, port=self.port, timeout=0.5)
        except (OSError, dns.exception.Timeout):
            return False
        return bool(r.answer)

    def log(self) -> str:
        out = []
        for name in ("nsd.log", "nsd.stderr"):
            p = self.dir / name
            if p.exists():
                out.append(p.read_text(errors="replace")[-2000:])
        return "\n".join(out)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# ------------------------------------------------------------------- Postfix


@dataclass(frozen=True)
class Service:
    """One submission service on its own port; ``overrides`` are master.cf -o settings."""

    name: str
    overrides: tuple[tuple[str, str], ...] = ()
    ipv6: bool = False


class Postfix:
    """A loopback Postfix from Debian's package, config in its own dir, several smtpd ports.

    The base settings are the relay's: TLS required, AUTH only after STARTTLS, relay only
    for SASL-authenticated clients. Each Service may override them to break one thing.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        hostname: str,
        sasl_domain: str,
        users: Mapping[str, str],
        tls_files: Mapping[str, Leaf],
        services: Iterable[Service],
        relayhost: str = "",
    ) -> None:
        # Postfix opens data_directory files as mail_owner, who cannot walk into pytest's
        # 0700 tmp tree: keep the instance in a 0755 dir of its own (removed by stop()).
        self.dir = Path(tempfile.mkdtemp(prefix=f"dkr-postfix-{workdir.name}-"))
        cfg = self.dir / "etc"
        spool = self.dir / "spool"
        data = self.dir / "data"
        for d in (cfg, cfg / "sasl", spool, data):
            d.mkdir(parents=True, exist_ok=True)
        # Postfix refuses a queue/config tree others can write; pytest's tmp dirs are 0700.
        for d in (self.dir, cfg, spool, data):
            os.chmod(d, 0o755)
        shutil.chown(data, "postfix")
        self.log_file = self.dir / "postfix.log"

        tls_params = ""
        for label, leaf in tls_files.items():
            (cfg / f"{label}.key").write_bytes(leaf.key_pem)
            (cfg / f"{label}.crt").write_bytes(leaf.cert_pem)
            os.chmod(cfg / f"{label}.key", 0o600)
            tls_params += f"tls_chain_{label} = {cfg}/{label}.key, {cfg}/{label}.crt\n"

        sasldb = cfg / "sasl" / "sasldb2"
        for user, password in users.items():
            subprocess.run(
                [SASLPASSWD2, "-p", "-c", "-f", str(sasldb), "-u", sasl_domain, user],
                input=password.encode(),
                check=True,
                timeout=20,
            )
        shutil.chown(sasldb, "root", "postfix")
        os.chmod(sasldb, 0o640)
        (cfg / "sasl" / "smtpd.conf").write_text(
            f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\n"
            f"sasldb_path: {sasldb}\n"
        )

        self.ports: dict[str, int] = {}
        master = [
            line
            for line in Path("/etc/postfix/master.cf").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        # Only the core services, unchrooted (the sasldb lives outside any chroot).
        keep: list[str] = []
        skipping = False
        for line in master:
            if line[0].isspace():
                if not skipping:
                    keep.append(line)
                continue
            fields = line.split()
            skipping = len(fields) < 8 or fields[1] == "inet" or fields[7] not in {
                "pickup", "cleanup", "qmgr", "tlsmgr", "trivial-rewrite", "bounce", "verify",
                "flush", "proxymap", "smtp", "showq", "error", "discard", "anvil", "scache",
                "postlogd",
            }  # fmt: skip
            if not skipping:
                fields[4] = "n"
                keep.append(" ".join(fields))
        for svc in services:
            port = free_port()
            self.ports[svc.name] = port
            opts = "".join(f"\n  -o {{ {k} = {v} }}" for k, v in svc.overrides)
            opts += f"\n  -o syslog_name=postfix/{svc.name}"
            keep.append(f"127.0.0.1:{port} inet n - n - - smtpd{opts}")
            if svc.ipv6:
                keep.append(f"[::1]:{port} inet n - n - - smtpd{opts}")
        (cfg / "master.cf").write_text("\n".join(keep) + "\n")
        (cfg / "main.cf").write_text(
            f"""compatibility_level = 3.6
queue_directory = {spool}
data_directory = {data}
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = {hostname}
mydomain = {sasl_domain}
myorigin = $myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = loopback-only
inet_protocols = all
mynetworks = 127.0.0.0/8 [::1]/128
maillog_file = {self.log_file}
maillog_file_prefixes = {self.dir}
biff = no
smtputf8_enable = no
relayhost = {relayhost}
smtp_tls_security_level = none
smtp_dns_support_level = disabled
{tls_params}smtpd_tls_chain_files = $tls_chain_good
smtpd_tls_security_level = encrypt
smtpd_tls_auth_only = yes
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
smtpd_sasl_local_domain = {sasl_domain}
smtpd_client_restrictions =
# As on the relay: a client is slowed down after 3 errors and dropped after 10.
smtpd_soft_error_limit = 3
smtpd_hard_error_limit = 10
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions = permit_sasl_authenticated, reject
"""
        )
        # Postfix waits for a just-written main.cf to settle: back-date the files.
        old = time.time() - 60
        for p in cfg.iterdir():
            if p.is_file():
                os.utime(p, (old, old))
        self.cfg = cfg
        check = subprocess.run(
            [POSTFIX, "-c", str(cfg), "check"], capture_output=True, text=True, check=False
        )
        if check.returncode != 0:
            raise RuntimeError(f"postfix check: {check.stderr}")
        start = subprocess.run(
            [POSTFIX, "-c", str(cfg), "start"], capture_output=True, text=True, check=False
        )
        if start.returncode != 0:
            raise RuntimeError(f"postfix start: {start.stderr} {self.log()}")
        try:
            for port in self.ports.values():
                wait_for(f"postfix port {port}", functools.partial(_banner, "127.0.0.1", port), 20)
        except AssertionError:
            self.stop()
            raise RuntimeError(f"postfix did not answer: {self.log()}") from None

    def log(self) -> str:
        if self.log_file.exists():
            return self.log_file.read_text(errors="replace")[-4000:]
        return ""

    def stop(self) -> None:
        subprocess.run(
            [POSTFIX, "-c", str(self.cfg), "stop"], capture_output=True, check=False, timeout=60
        )
        shutil.rmtree(self.dir, ignore_errors=True)


def _banner(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.settimeout(2)
            return s.recv(64).startswith(b"220")
    except OSError:
        return False


# ------------------------------------------------------------------- webhook


@dataclass(frozen=True)
class Post:
    path: str
    content_type: str
    body: bytes

    @property
    def text(self) -> str:
        payload = json.loads(self.body)
        assert isinstance(payload, dict) and set(payload) == {"text"}, payload
        return str(payload["text"])


class Webhook:
    """An HTTP server on loopback that records every POST, as a chat's incoming webhook."""

    def __init__(self, status: int = 200) -> None:
        posts: list[Post] = []
        self.posts = posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                posts.append(Post(self.path, self.headers.get("Content-Type", ""), body))
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        port = self.server.server_address[1]
        # Shaped like a Slack URL: the path is the secret part.
        self.url = f"http://127.0.0.1:{port}/services/T0/B0/{secrets.token_hex(12)}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@contextlib.contextmanager
def webhook(status: int = 200) -> Iterator[Webhook]:
    hook = Webhook(status)
    try:
        yield hook
    finally:
        hook.stop()


@contextlib.contextmanager
def silent_webhook() -> Iterator[str]:
    """A URL whose server accepts the connection (the kernel does) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/never-answers"


@dataclass
class HealthRun:
    rc: int
    report: dict[str, object]
    stderr: str
    seconds: float

    def statuses(self) -> dict[str, str]:
        checks = self.report.get("checks", [])
        assert isinstance(checks, list)
        return {c["name"]: c["status"] for c in checks}


def health_check(
    outputs: Mapping[str, object], webhook_url: str | None, *loopback: str, timeout: float = 120
) -> HealthRun:
    """Run HEALTH_CHECK as the workflow does: outputs on stdin, the webhook in the env."""
    env = {k: v for k, v in os.environ.items() if k != WEBHOOK_ENV and "proxy" not in k.lower()}
    if webhook_url:
        env[WEBHOOK_ENV] = webhook_url
    start = time.monotonic()
    res = subprocess.run(
        [str(REPO / HEALTH_CHECK[0]), *HEALTH_CHECK[1:], *loopback],
        input=json.dumps(outputs),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    seconds = time.monotonic() - start
    try:
        report = json.loads(res.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"not JSON: {res.stdout!r} {res.stderr}") from None
    if webhook_url:
        assert webhook_url not in res.stdout + res.stderr  # the URL is a secret too
    return HealthRun(res.returncode, report, res.stderr, seconds)
