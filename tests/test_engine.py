"""The whole program under the real Pulumi engine and plugins (no mocks).

Uses the toolchain from scripts/pulumi-toolchain.sh, a file backend in a temporary folder
and the passphrase secrets provider. The local stack deploys the real relay image on this
machine's Docker engine; mail goes through it and dkimpy checks the signature against the
stack's own dkimDnsValue output.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from scripts.local_ca import issue
from tests import engine_support
from tests.engine_support import REPO, Engine, Stack, local_stack_config

pytestmark = [pytest.mark.engine, pytest.mark.timeout(1200)]

FAKE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n-----END OPENSSH PRIVATE KEY-----\n"
)


def _ed25519_public_line() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    public = ed25519.Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine(tmp_path_factory.mktemp("engine"))


def _types(steps: list[dict[str, Any]], op: str | None = None) -> set[str]:
    return {s["urn"].split("::")[2].split("$")[-1] for s in steps if op in (None, s["op"])}


def test_preview_of_a_vps_stack_with_manual_dns(engine: Engine) -> None:
    stack = engine.stack(
        "vps-preview",
        {
            "domain": "example.com",
            "vpsIpv4": "203.0.113.25",
            "vpsIpv6": "2001:db8::25",
            "acmeEmail": "postmaster@example.com",
            "sshHostKey": _ed25519_public_line(),
        },
    )
    stack.set_secret("sshPrivateKey", FAKE_KEY)
    steps = stack.preview_steps()
    types = _types(steps, "create")
    assert {
        "dkimrelay:index:DkimKey",
        "dkimrelay:index:MailDns",
        "dkimrelay:index:SmtpCredentials",
        "dkimrelay:index:RelayHost",
        "dkimrelay:index:SmtpRelay",
        "command:remote:Command",
        "pulumi-python:dynamic:Resource",
    } <= types, types
    assert not [t for t in types if t.startswith("cloudflare")]
    text = stack.config_file.read_text()
    assert "not-a-real-key" not in text and "secure:" in text, "the key is stored encrypted"


def test_config_error_stops_before_any_resource(engine: Engine) -> None:
    stack = engine.stack(
        "bad-config",
        {
            "domain": "example.com",
            "vpsIpv4": "2001:db8::1",
            "dmarcPct": 300,
            "deployTarget": "local",
            "tlsCertDir": "/nonexistent",
        },
    )
    res = stack.run("up", "--yes")
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "vpsIpv4" in out and "dmarcPct" in out and "nothing was created or changed" in out
    exported = json.loads(stack.ok("stack", "export"))
    assert len(exported["deployment"].get("resources") or []) <= 1, "only the stack itself"


@pytest.fixture(scope="module")
def local_stack(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    certs = tmp_path_factory.mktemp("certs")
    issue(certs, "smtp.engine.test", [])
    name = f"enginetest{uuid.uuid4().hex[:6]}"
    config = local_stack_config(name, certs, 97)
    stack = engine.stack(name, config)
    stack.certs = certs  # type: ignore[attr-defined]
    try:
        stack.ok("up", "--yes", "--skip-preview")
        yield stack
    finally:
        stack.run("destroy", "--yes")
        shutil.rmtree(REPO / ".local" / name, ignore_errors=True)


def send_and_verify(stack: Stack) -> str:
    sink = REPO / ".local" / stack.name / "sink"
    return engine_support.send_and_verify(stack.outputs(), stack.certs, sink)  # type: ignore[attr-defined]


def test_local_stack_relays_signed_mail(local_stack: Stack) -> None:
    send_and_verify(local_stack)
    state = local_stack.ok("stack", "export")
    outputs = local_stack.outputs()
    assert outputs["smtpPassword"] not in state, "the password is encrypted in state"
    assert "BEGIN PRIVATE KEY" not in state, "the DKIM key is encrypted in state"


def test_second_up_changes_nothing(local_stack: Stack) -> None:
    local_stack.ok("preview", "--expect-no-changes")
    before = subprocess.run(
        ["docker", "inspect", "-f", "{{.Id}}", local_stack.name],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    out = local_stack.ok("up", "--yes", "--expect-no-changes")
    assert "unchanged" in out
    after = subprocess.run(
        ["docker", "inspect", "-f", "{{.Id}}", local_stack.name],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert before == after


def test_new_selector_changes_only_what_it_should(local_stack: Stack) -> None:
    old = local_stack.outputs()
    local_stack.write_config(
        {**local_stack.config, "dkimSelector": "two", "dkimRetiredSelectors": ["one"]}
    )
    steps = local_stack.preview_steps()
    changed = {(s["op"], s["urn"].split("::")[-1]) for s in steps if s["op"] != "same"}
    created = {n for op, n in changed if op == "create"}
    assert "dkim-two-key" in created, changed
    assert not [n for op, n in changed if op in ("delete", "replace") and "dkim-one" in n], changed
    assert not [n for _, n in changed if "smtp-credentials" in n], "passwords are kept"
    local_stack.ok("up", "--yes", "--skip-preview")
    new = local_stack.outputs()
    assert new["dkimSelector"] == "two" and new["dkimDnsValue"] != old["dkimDnsValue"]
    assert new["dkimDnsValues"]["one"] == old["dkimDnsValue"], "the retired key is kept"
    assert new["smtpPassword"] == old["smtpPassword"]
    send_and_verify(local_stack)


def test_destroy_removes_the_relay(engine: Engine, local_stack: Stack) -> None:
    local_stack.ok("destroy", "--yes")
    res = subprocess.run(["docker", "inspect", local_stack.name], capture_output=True)
    assert res.returncode != 0, "the relay container is gone"
    assert (local_stack.certs / "live" / "smtp.engine.test" / "fullchain.pem").exists()  # type: ignore[attr-defined]
