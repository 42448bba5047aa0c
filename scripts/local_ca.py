"""A throwaway CA and a certificate for the relay, laid out like /etc/letsencrypt.

Used by the local stack (and tests) where Let's Encrypt cannot reach this machine:
  python scripts/local_ca.py DIR HOSTNAME [NAME...]
writes DIR/ca.pem and DIR/live/HOSTNAME/{cert,chain,fullchain,privkey}.pem. Idempotent: a
certificate for the same names valid for 30 more days is kept.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def issue(
    directory: Path,
    hostname: str,
    extra: list[str],
    *,
    days: int = 90,
    not_before: dt.datetime | None = None,
) -> Path:
    """Make (or keep) the CA and the host certificate; return the live/HOSTNAME folder."""
    live = directory / "live" / hostname
    names = [hostname, *extra]
    now = dt.datetime.now(dt.UTC)
    if (live / "fullchain.pem").exists() and not_before is None:
        cert = x509.load_pem_x509_certificate((live / "cert.pem").read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        have = [str(v) for v in san.get_values_for_type(x509.DNSName)]
        if have == names and cert.not_valid_after_utc > now + dt.timedelta(days=30):
            return live

    ca_key_path, ca_path = directory / "ca.key", directory / "ca.pem"
    if ca_path.exists() and ca_key_path.exists():
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
        ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (
            x509.CertificateBuilder()
            .subject_name(_name("dkim-relay local test CA"))
            .issuer_name(_name("dkim-relay local test CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write(ca_key_path, _pem_key(ca_key), 0o600)  # type: ignore[arg-type]
        _write(ca_path, ca.public_bytes(serialization.Encoding.PEM), 0o644)

    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or now - dt.timedelta(minutes=5)
    alt: list[x509.GeneralName] = []
    for n in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            alt.append(x509.DNSName(n))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hostname))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    chain_pem = ca.public_bytes(serialization.Encoding.PEM)
    _write(live / "privkey.pem", _pem_key(key), 0o600)
    _write(live / "cert.pem", cert_pem, 0o644)
    _write(live / "chain.pem", chain_pem, 0o644)
    _write(live / "fullchain.pem", cert_pem + chain_pem, 0o644)
    return live


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    print(issue(Path(sys.argv[1]).resolve(), sys.argv[2], sys.argv[3:]))
