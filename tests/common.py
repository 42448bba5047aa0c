"""Small helpers every kind of test uses: one free port, free docker subnets, one docker
call, one wait, one test CA."""

from __future__ import annotations

import datetime as dt
import ipaddress
import random
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def free_port(host: str = "127.0.0.1", *, udp: bool = False) -> int:
    """A TCP port free on `host` now; on 127.0.0.1 also free on ::1 (the relay and the
    test servers listen on both loopbacks); with `udp`, free for UDP too (nsd)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    also = [(family, socket.SOCK_DGRAM, host)] if udp else []
    if host == "127.0.0.1":
        also.append((socket.AF_INET6, socket.SOCK_STREAM, "::1"))
    for _ in range(50):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        try:
            for fam, kind, addr in also:
                with socket.socket(fam, kind) as t:
                    t.bind((addr, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no free port on {host}")


def docker(*args: str, check: bool = True, timeout: float = 300) -> str:
    """`docker ARGS`, its stdout stripped; a failure (with `check`) names the command."""
    proc = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-2000:]}"
        )
    return proc.stdout.strip()


def exists(kind: str, name: str) -> bool:
    """Whether the docker object `name` of `kind` (container, network, volume, image) exists."""
    res = subprocess.run(
        ["docker", kind, "inspect", name], capture_output=True, stdin=subprocess.DEVNULL
    )
    return res.returncode == 0


def free_subnets(prefix: str = "172.29") -> tuple[str, str]:
    """An IPv4 /24 under `prefix` that no docker network uses now, and an IPv6 ULA /64
    numbered after it (random, so concurrent tests rarely pick the same)."""
    used: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for net in docker("network", "ls", "-q").split():
        out = docker(
            "network",
            "inspect",
            "-f",
            "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
            net,
            check=False,
        )
        used += [ipaddress.ip_network(s) for s in out.split()]
    for _ in range(200):
        n = random.randrange(1, 250)
        v4 = ipaddress.ip_network(f"{prefix}.{n}.0/24")
        if not any(v4.overlaps(u) for u in used if u.version == 4):
            return str(v4), f"fd00:d6b1:7d{n:02x}::/64"
    raise RuntimeError(f"no free {prefix}.N.0/24 subnet")


def run_script(
    script: str, stdin: str = "", check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a target script on this machine as the local target does (`bash -c`)."""
    proc = subprocess.run(
        ["bash", "-c", script, "dkim-relay"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"script exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
            f"stderr:\n{proc.stderr[-4000:]}"
        )
    return proc


def wait_for(
    what: str, pred: Callable[[], object], timeout: float = 60, every: float = 0.2
) -> None:
    """Poll until pred() is true; fail naming `what` after `timeout` (readiness, not timing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass(frozen=True)
class Leaf:
    serial: int
    key_pem: bytes
    cert_pem: bytes


# The key usages a CA certificate does not need.
_UNUSED = dict.fromkeys(
    ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement"), False
) | {"encipher_only": False, "decipher_only": False}


class TestCA:
    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dkim-relay test CA")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=400))
            .not_valid_after(now + dt.timedelta(days=400))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, **_UNUSED),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def client_context(self, **attrs: object) -> ssl.SSLContext:
        """A client TLS context that trusts this CA only; `attrs` set on it."""
        ctx = ssl.create_default_context(cadata=self.pem.decode())
        for k, v in attrs.items():
            setattr(ctx, k, v)
        return ctx

    def issue(self, names: Iterable[str], not_before: dt.datetime, not_after: dt.datetime) -> Leaf:
        key = ec.generate_private_key(ec.SECP256R1())
        names = list(names)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return Leaf(
            cert.serial_number,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            cert.public_bytes(serialization.Encoding.PEM),
        )
