"""Support for the relay's end-to-end tests: a real Docker engine, the real image
started as SmtpRelay's docker resources start it (the production secrets step, then the
container's addresses, ports, mounts and config files from pure/relay_container.py), a
throwaway CA laid out like /etc/letsencrypt (live/ symlinks into archive/), and an aiosmtpd
sink bound on the test network's gateway (reachable from the container, never from
outside).

Traffic only goes to loopback and the docker bridge this module creates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import email.utils
import io
import ipaddress
import os
import smtplib
import ssl
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as AioSMTP
from aiosmtpd.smtp import Envelope, Session

from components.dkim import dkim_txt_value, generate_private_key_pem
from pure import host_scripts as hs
from pure import postfix
from pure import relay_container as rc

# Re-exported: the relay tests call them as rs.docker, rs.free_port, rs.wait_for.
from tests.common import TestCA, run_script
from tests.common import docker as docker
from tests.common import free_port as free_port
from tests.common import wait_for as wait_for

REPO = Path(__file__).resolve().parent.parent
ENGINE_SCRIPT = REPO / "scripts" / "docker-engine.sh"
RELAY_DIR = REPO / "relay"

DOMAIN = "example.com"
RELAY_HOST = "relay.example.com"
SELECTOR = "relay"
SINK_HOSTNAME = "sink.test"  # not the relay's myhostname, or Postfix may see a loop

# Re-exported: the e2e tests make their keys as the stack does.
__all__ = ["dkim_txt_value", "generate_private_key_pem"]


# ---------------------------------------------------------------- docker helpers
def run(
    *args: str, check: bool = True, input: bytes | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(list(args), input=input, capture_output=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args[:4])}... exited {proc.returncode}: "
            f"{proc.stderr.decode(errors='replace')[-2000:]}"
        )
    return proc


_engine_lock = threading.Lock()
_engine_ready = False


def ensure_engine() -> None:
    """Start dockerd and the offline base image via scripts/docker-engine.sh (or fail)."""
    global _engine_ready
    with _engine_lock:
        if _engine_ready:
            return
        proc = subprocess.run(
            ["bash", str(ENGINE_SCRIPT)], capture_output=True, timeout=900, stdin=subprocess.DEVNULL
        )
        if proc.returncode != 0:
            raise RuntimeError(
                "scripts/docker-engine.sh failed:\n" + proc.stderr.decode(errors="replace")[-3000:]
            )
        _engine_ready = True


def build_image(tag: str, build_args: dict[str, str] | None = None) -> str:
    ensure_engine()
    cmd = ["build", "-q", "-t", tag]
    for k, v in (build_args or {}).items():
        cmd += ["--build-arg", f"{k}={v}"]
    docker(*cmd, str(RELAY_DIR), timeout=900)
    return docker("image", "inspect", "-f", "{{.Id}}", tag)


def health(container: str) -> str:
    return docker("inspect", "-f", "{{.State.Health.Status}}", container, check=False)


# ---------------------------------------------------------------- network
@dataclass
class TestNetwork:
    name: str
    v4_subnet: str
    v6_subnet: str
    v4_gateway: str
    v6_gateway: str

    @classmethod
    def create(cls, name: str, v4_subnet: str, v6_subnet: str) -> TestNetwork:
        ensure_engine()
        # leftovers of an interrupted run: containers on the network, then the network
        stale = docker("ps", "-aq", "--filter", f"network={name}", check=False).split()
        if stale:
            docker("rm", "-f", *stale, check=False)
        docker("network", "rm", name, check=False)
        v4 = str(next(ipaddress.ip_network(v4_subnet).hosts()))
        v6 = str(next(ipaddress.ip_network(v6_subnet).hosts()))
        docker(
            "network",
            "create",
            "--ipv6",
            "--subnet",
            v4_subnet,
            "--gateway",
            v4,
            "--subnet",
            v6_subnet,
            "--gateway",
            v6,
            name,
        )
        return cls(name, v4_subnet, v6_subnet, v4, v6)

    def remove(self) -> None:
        docker("network", "rm", self.name, check=False)


# ---------------------------------------------------------------- certificates
class CertbotDir:
    """An /etc/letsencrypt-like tree of certificates from a test CA, as certbot keeps
    it: live/<host>/<stem>.pem links into archive/<host>/<stem><n>.pem, flipped
    atomically by each issue (a renewal)."""

    def __init__(self, root: Path, ca: TestCA | None = None) -> None:
        self.root, self.ca, self.generation = root, ca or TestCA(), 0
        self.root.mkdir(parents=True, exist_ok=True)
        self.ca_pem = self.ca.pem
        (self.root / "test-ca.pem").write_bytes(self.ca_pem)

    def issue(self, hostname: str) -> int:
        """Issue a new cert for hostname like certbot renew does; return its serial."""
        self.generation += 1
        g = self.generation
        now = dt.datetime.now(dt.UTC)
        leaf = self.ca.issue([hostname], now - dt.timedelta(minutes=5), now + dt.timedelta(days=10))
        archive = self.root / "archive" / hostname
        live = self.root / "live" / hostname
        archive.mkdir(parents=True, exist_ok=True, mode=0o700)
        live.mkdir(parents=True, exist_ok=True, mode=0o755)
        files = {
            "cert": leaf.cert_pem,
            "chain": self.ca_pem,
            "fullchain": leaf.cert_pem + self.ca_pem,
            "privkey": leaf.key_pem,
        }
        for stem, data in files.items():
            path = archive / f"{stem}{g}.pem"
            fd = os.open(
                path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if stem == "privkey" else 0o644
            )
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            link = live / f"{stem}.pem"
            tmp = live / f".{stem}.pem.new"
            if tmp.is_symlink():
                tmp.unlink()
            tmp.symlink_to(f"../../archive/{hostname}/{stem}{g}.pem")
            os.replace(tmp, link)  # atomic flip, like certbot
        return leaf.serial

    def client_context(self, **attrs: object) -> ssl.SSLContext:
        return self.ca.client_context(**attrs)


# ---------------------------------------------------------------- the sink
@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    peer: str


class _Handler:
    def __init__(self, store: Sink) -> None:
        self.store = store

    async def handle_DATA(self, server: AioSMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        with self.store.lock:
            self.store.messages.append(
                Received(
                    str(envelope.mail_from),
                    [str(r) for r in envelope.rcpt_tos],
                    bytes(data),
                    str(session.peer),
                )
            )
        return "250 OK kept"


def smtp_server(
    handler: object, host: str, port: int, server_hostname: str, **kw: Any
) -> Controller:
    """An aiosmtpd server for `handler` on host:port, started (the tests' mail servers)."""
    controller = Controller(
        handler,
        hostname=host,
        port=port,
        server_hostname=server_hostname,
        ready_timeout=10,
        **kw,
    )
    controller.start()
    return controller


class Sink:
    """An aiosmtpd sink on a given address (the docker network gateway)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.messages: list[Received] = []
        self.lock = threading.Lock()
        self.controller: Controller | None = None

    def start(self) -> None:
        self.controller = smtp_server(_Handler(self), self.host, self.port, SINK_HOSTNAME)

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def snapshot(self) -> list[Received]:
        with self.lock:
            return list(self.messages)

    def count(self) -> int:
        with self.lock:
            return len(self.messages)


# ---------------------------------------------------------------- the relay under test
@dataclass(kw_only=True)
class RelaySpec:
    name: str
    image: str  # built by build_image
    network: TestNetwork  # the relay joins it at its fixed addresses (pure.relay_container)
    cert_root: Path
    volume: str
    settings: postfix.PostfixSettings
    passwords: dict[str, str]
    dkim_keys: dict[str, str]
    port_587: int
    port_465: int | None = None
    nexthop_password: str | None = None  # with settings.nexthop_user: the smarthost login
    secrets_host_dir: Path | None = None  # default: <tmp>/<name>/secrets
    cert_poll_seconds: int = 0
    publish_v4: str = "127.0.0.1"
    publish_v6: str = "::1"
    # Addresses on the test network; default: Docker picks them (several relays share one
    # test network, so the production's fixed host number would collide).
    ip4: str | None = None
    ip6: str | None = None
    # Each other domain's keys (settings.extra_domains): domain -> selector -> PEM.
    extra_dkim_keys: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)

    def container(self) -> rc.RelayContainerSpec:
        return rc.RelayContainerSpec(
            relay_host=self.settings.relay_host,
            container_name=self.name,
            publish_ipv4=self.publish_v4,
            publish_ipv6=self.publish_v6,
            submission_host_port=self.port_587,
            submissions_465=self.port_465 is not None,
            submissions_host_port=self.port_465 or 465,
            ipv4_subnet=self.network.v4_subnet,
            ipv6_subnet=self.network.v6_subnet,
            cert_poll_seconds=self.cert_poll_seconds,
        )


def _tar_of(files: dict[str, str]) -> bytes:
    """A tar of ``files`` (absolute container path -> text) to unpack at ``/``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def start_relay(spec: RelaySpec, tmp: Path) -> str:
    """A fresh relay container made as SmtpRelay's docker.Container makes it: the secrets
    step writes the key files, the container gets the same addresses, ports, mounts and
    environment (pure/relay_container.py), the rendered config is copied in before it
    starts (the resource's uploads), and then it must become healthy."""
    docker("rm", "-f", spec.name, check=False)
    base = tmp / spec.name
    secrets_dir = spec.secrets_host_dir or base / "secrets"
    login = None
    if spec.settings.nexthop and spec.settings.nexthop_user and spec.nexthop_password:
        login = (spec.settings.nexthop, spec.settings.nexthop_user, spec.nexthop_password)
    files = postfix.render_secrets(
        spec.settings.domain,
        spec.dkim_keys,
        spec.passwords,
        login,
        extra_dkim_keys=spec.extra_dkim_keys,
    )
    run_script(hs.render_secrets(str(secrets_dir)), hs.secrets_stdin(files))
    c = spec.container()
    args = ["create", "--name", spec.name, "--hostname", spec.settings.relay_host]
    args += ["--restart", "unless-stopped", "--network", spec.network.name]
    args += ["--log-driver", rc.LOG_DRIVER]
    args += [a for k, v in rc.LOG_OPTS.items() for a in ("--log-opt", f"{k}={v}")]
    args += ["--ip", spec.ip4] if spec.ip4 else []
    args += ["--ip6", spec.ip6] if spec.ip6 else []
    for p in c.ports():
        ip = f"[{p.ip}]" if ":" in p.ip else p.ip
        args += ["-p", f"{ip}:{p.external}:{p.internal}"]
    for m in c.mounts(str(spec.cert_root), str(secrets_dir)):
        source = spec.volume if m.volume else m.source
        args += ["-v", f"{source}:{m.target}" + (":ro" if m.read_only else "")]
    for e in c.env():
        args += ["-e", e]
    docker(*args, spec.image)
    # As SmtpRelay does: IPv6 listeners wherever the host's IPv6 address is published.
    settings = dataclasses.replace(spec.settings, ipv6_listeners=spec.publish_v6 is not None)
    uploads = c.uploads(postfix.render_config(settings))
    run("docker", "cp", "-", f"{spec.name}:/", input=_tar_of(uploads))
    docker("start", spec.name)
    return spec.name


def wait_healthy(container: str, timeout: float = 60) -> None:
    def ok() -> bool:
        st = health(container)
        if (
            st == "unhealthy"
            or docker("inspect", "-f", "{{.State.Running}}", container, check=False) != "true"
        ):
            raise AssertionError(f"{container} is {st}; logs:\n{logs(container)}")
        return st == "healthy"

    wait_for(f"{container} healthy", ok, timeout)


@contextlib.contextmanager
def running(spec: RelaySpec, workdir: Path) -> Iterator[RelaySpec]:
    """The relay of `spec`, started afresh (no container or queue left from before) and
    healthy; removed with its queue afterwards."""
    docker("rm", "-f", spec.name, check=False)
    docker("volume", "rm", "-f", spec.volume, check=False)
    try:
        start_relay(spec, workdir)
        wait_healthy(spec.name)
        yield spec
    finally:
        docker("rm", "-f", spec.name, check=False)
        docker("volume", "rm", "-f", spec.volume, check=False)


def logs(container: str) -> str:
    proc = run("docker", "logs", "--tail", "200", container, check=False)
    return (proc.stdout + proc.stderr).decode(errors="replace")


def queue_is_empty(container: str) -> bool:
    out = docker("exec", container, "postqueue", "-c", "/etc/postfix", "-j", check=False)
    return out == ""


def flush_queue(container: str) -> None:
    docker("exec", container, "postqueue", "-c", "/etc/postfix", "-f", check=False)


# ---------------------------------------------------------------- SMTP client
def make_message(sender: str, rcpt: str, subject: str) -> bytes:
    msgid = email.utils.make_msgid(domain=DOMAIN)
    return (
        f"From: Tester <{sender}>\r\n"
        f"To: <{rcpt}>\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {email.utils.formatdate()}\r\n"
        f"Message-ID: {msgid}\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"Hello from the dkim-relay tests ({subject}).\r\n"
    ).encode()


def submit(
    host: str,
    port: int,
    ctx: ssl.SSLContext,
    login: str | None,
    password: str | None,
    sender: str,
    rcpt: str,
    subject: str,
    implicit_tls: bool = False,
) -> None:
    msg = make_message(sender, rcpt, subject)
    if implicit_tls:
        with smtplib.SMTP_SSL(
            host, port, local_hostname="client.test", context=ctx, timeout=30
        ) as s:
            if login is not None and password is not None:
                s.login(login, password)
            s.sendmail(sender, [rcpt], msg)
        return
    with smtplib.SMTP(host, port, local_hostname="client.test", timeout=30) as s:
        s.starttls(context=ctx)
        if login is not None and password is not None:
            s.login(login, password)
        s.sendmail(sender, [rcpt], msg)


def dnsfunc_for(records: dict[str, str]) -> Callable[..., bytes]:
    """dkimpy's dnsfunc: name -> TXT value, from what the stack would publish."""

    def lookup(name: bytes | str, timeout: int = 5) -> bytes:
        key = name.decode() if isinstance(name, bytes) else name
        return records.get(key.rstrip(".").lower(), "").encode()

    return lookup
