"""Two domains on the local stack under the real Pulumi engine: `pulumi up` deploys the
relay with a key per domain, mail From each domain reaches the sink signed d= that domain
and dkimpy verifies it against the value the stack publishes for that domain
(dkimDnsValuesByDomain); a second preview changes nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.local_ca import issue
from tests.engine_support import REPO, Engine, Stack, local_stack_config

pytestmark = [pytest.mark.engine, pytest.mark.timeout(1200)]

OTHER = "second.test"


@pytest.fixture(scope="module")
def two_domains(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path]]:
    certs = tmp_path_factory.mktemp("certs")
    issue(certs, "smtp.engine.test", [])
    engine = Engine(tmp_path_factory.mktemp("engine"))
    name = f"domains{uuid.uuid4().hex[:6]}"
    config = {
        **local_stack_config(name, certs, 92),
        "extraDomains": [{"domain": OTHER, "dkimSelector": "two"}],
        "smtpUsers": ["gmail", {"name": "alice", "sendAs": ["@engine.test"]}],
    }
    stack = engine.stack(name, config)
    try:
        stack.ok("up", "--yes", "--skip-preview")
        yield stack, certs
    finally:
        stack.run("destroy", "--yes")
        # `destroy` keeps the queue volume (mail not yet delivered): a test's has none.
        subprocess.run(["docker", "volume", "rm", "-f", f"{name}-queue"], check=False)
        shutil.rmtree(REPO / ".local" / name, ignore_errors=True)


def _send(stack: Stack, certs: Path, sender: str) -> str:
    res = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "send_test_mail.py"),
            "--cafile",
            str(certs / "ca.pem"),
            "--sink-dir",
            str(REPO / ".local" / stack.name / "sink"),
            "--from",
            sender,
        ],
        input=json.dumps(stack.outputs()),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return res.stdout + res.stderr


@pytest.mark.parametrize(
    ("sender", "record"),
    [
        ("gmail@engine.test", "one._domainkey.engine.test"),
        (f"me@{OTHER}", f"two._domainkey.{OTHER}"),
    ],
)
def test_mail_from_each_domain_is_signed_with_its_own_key(
    two_domains: tuple[Stack, Path], sender: str, record: str
) -> None:
    stack, certs = two_domains
    out = _send(stack, certs, sender)
    assert f"DKIM signature: PASS (dkimpy, against the value published at {record})" in out, out


def test_outputs_name_both_domains_and_the_preview_is_clean(
    two_domains: tuple[Stack, Path],
) -> None:
    stack, _ = two_domains
    outputs = stack.outputs()
    assert outputs["domains"] == ["engine.test", OTHER]
    by_domain = outputs["dkimDnsValuesByDomain"]
    assert set(by_domain) == {"engine.test", OTHER}
    assert by_domain["engine.test"]["one"] == outputs["dkimDnsValue"]
    assert by_domain[OTHER]["two"] != outputs["dkimDnsValue"]
    assert outputs["smtpSendAs"]["alice@engine.test"] == ["@engine.test"]
    assert f"$ORIGIN {OTHER}." in outputs["zoneSnippet"]
    stack.ok("preview", "--expect-no-changes")
