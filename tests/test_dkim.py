"""DKIM keys judged by dkimpy: sign with our private key, verify against the TXT as published."""

from __future__ import annotations

import dkim
import pytest

from components.dkim import dkim_txt_value, generate_private_key_pem
from pure.txt import join_txt, split_txt, txt_content

pytestmark = pytest.mark.unit

MESSAGE = (
    b"From: Me <me@example.com>\r\n"
    b"To: you@example.net\r\n"
    b"Subject: hello\r\n"
    b"Date: Sat, 28 Nov 2026 12:00:00 +0000\r\n"
    b"Message-ID: <1@example.com>\r\n"
    b"\r\n"
    b"Signed by a key the stack made.\r\n"
)


def published_lookup(records: dict[str, str]):
    """A dnsfunc that answers like a resolver: the quoted strings of the record, joined."""

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        content = records.get(name.decode().rstrip("."))
        return join_txt(content).encode() if content is not None else None

    return dnsfunc


@pytest.fixture(scope="module")
def keys() -> dict[int, str]:
    return {bits: generate_private_key_pem(bits) for bits in (2048, 3072, 4096)}


@pytest.mark.parametrize("bits", [2048, 3072, 4096])
def test_signature_verifies_against_published_record(keys: dict[int, str], bits: int) -> None:
    pem = keys[bits]
    content = txt_content(dkim_txt_value(pem))
    assert all(len(s) <= 255 for s in split_txt(dkim_txt_value(pem)))
    sig = dkim.sign(MESSAGE, b"relay", b"example.com", pem.encode())
    lookup = published_lookup({"relay._domainkey.example.com": content})
    assert dkim.verify(sig + MESSAGE, dnsfunc=lookup)


def test_signature_fails_against_another_key(keys: dict[int, str]) -> None:
    sig = dkim.sign(MESSAGE, b"relay", b"example.com", keys[2048].encode())
    other = txt_content(dkim_txt_value(keys[3072]))
    assert not dkim.verify(
        sig + MESSAGE, dnsfunc=published_lookup({"relay._domainkey.example.com": other})
    )


def test_tampered_message_fails(keys: dict[int, str]) -> None:
    sig = dkim.sign(MESSAGE, b"relay", b"example.com", keys[2048].encode())
    lookup = published_lookup(
        {"relay._domainkey.example.com": txt_content(dkim_txt_value(keys[2048]))}
    )
    assert not dkim.verify(sig + MESSAGE.replace(b"hello", b"hullo"), dnsfunc=lookup)


def test_long_value_splits_into_quoted_strings_and_joins_back(keys: dict[int, str]) -> None:
    value = dkim_txt_value(keys[4096])
    content = txt_content(value)
    assert content.startswith('"v=DKIM1; k=rsa; p=') and content.count('" "') == len(value) // 255
    assert join_txt(content) == value


def test_key_sizes() -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(generate_private_key_pem(3072).encode(), None)
    assert key.key_size == 3072  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        generate_private_key_pem(1024)


def test_escaped_quotes_round_trip() -> None:
    assert join_txt(txt_content('a "quoted" \\ value')) == 'a "quoted" \\ value'
