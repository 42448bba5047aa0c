"""The fixtures the relay image's end-to-end modules share (a pytest plugin, loaded by
tests/conftest.py). Each such module names what is its own: ``IMAGE`` (the tag to
build), ``NET_NAME``, ``NET_V4`` and ``NET_V6`` (its test network), and optionally
``CERT_NAMES`` (names the test CA issues certificates for; default the relay's)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import relay_support as rs


@pytest.fixture(scope="module")
def image(request: pytest.FixtureRequest) -> str:
    tag = str(request.module.IMAGE)
    rs.build_image(tag)
    return tag


@pytest.fixture(scope="module")
def net(request: pytest.FixtureRequest, image: str) -> Iterator[rs.TestNetwork]:
    mod = request.module
    n = rs.TestNetwork.create(mod.NET_NAME, mod.NET_V4, mod.NET_V6)
    yield n
    n.remove()


@pytest.fixture(scope="module")
def workdir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])


@pytest.fixture(scope="module")
def ca(request: pytest.FixtureRequest, workdir: Path) -> rs.CertbotDir:
    ca = rs.CertbotDir(workdir / "letsencrypt")
    for name in getattr(request.module, "CERT_NAMES", (rs.RELAY_HOST,)):
        ca.issue(name)
    return ca


@pytest.fixture(scope="module")
def dkim_pem() -> str:
    return rs.generate_private_key_pem(2048)


@pytest.fixture(scope="module")
def dns(dkim_pem: str) -> dict[str, str]:
    """The TXT record the stack would publish for the selector."""
    return {f"{rs.SELECTOR}._domainkey.{rs.DOMAIN}": rs.dkim_txt_value(dkim_pem)}


@pytest.fixture
def ctx(ca: rs.CertbotDir) -> ssl.SSLContext:
    c = ca.client_context()
    c.check_hostname = False  # we connect by address; the chain is still verified
    return c
