"""The upgrade of a single-domain stack to the program with several domains, under the
real Pulumi engine: a local stack deployed by the last single-domain program previews no
change at all with this tree (no DKIM key, password, record or container replaced), and
adding an extra domain afterwards adds its key and leaves the primary's key, records and
passwords alone. And the CLI itself takes object items in smtpUsers and extraDomains.

Both programs run from the same folder (the local stack's work dir is under it), the old
one unpacked by `git archive` from the repository's history, the new one copied from
this work tree.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.local_ca import issue
from tests.engine_support import REPO, Engine, Stack, local_stack_config

pytestmark = [pytest.mark.engine, pytest.mark.timeout(1500)]

# The last program with one domain only (the parent of the several-domains work);
# DKIM_RELAY_UPGRADE_FROM names another commit to upgrade from.
SINGLE_DOMAIN_COMMIT = "6b23e20608d102367fb3c4c31026b861cbed09bb"
KEEP = (".local", "venv")


def _git(*args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, check=True).stdout


def _unpack_commit(commit: str, dest: Path) -> None:
    data = _git("archive", "--format=tar", commit)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")


def _copy_work_tree(dest: Path) -> None:
    """This tree's files (tracked and new, as git sees them) over an emptied `dest`."""
    for p in dest.iterdir():
        if p.name in KEEP:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    names = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard").split(b"\0")
    for raw in names:
        if not raw:
            continue
        src = REPO / raw.decode()
        if src.is_file():
            target = dest / raw.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


@pytest.fixture(scope="module")
def upgraded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    commit = os.environ.get("DKIM_RELAY_UPGRADE_FROM", SINGLE_DOMAIN_COMMIT)
    tmp = tmp_path_factory.mktemp("upgrade")
    project = tmp / "project"
    project.mkdir()
    _unpack_commit(commit, project)
    (project / "venv").symlink_to(REPO / "venv")
    certs = tmp / "certs"
    certs.mkdir()
    issue(certs, "smtp.engine.test", [])
    engine = Engine(tmp, project=project, ambient_plugins=True)
    name = f"upgrade{uuid.uuid4().hex[:6]}"
    config = {**local_stack_config(name, certs, 93), "smtpUsers": ["gmail", "phone"]}
    stack = engine.stack(name, config)
    try:
        stack.ok("up", "--yes", "--skip-preview")
        assert "extraDomains" not in (project / "pure" / "config.py").read_text(), commit
        _copy_work_tree(project)
        assert "extraDomains" in (project / "pure" / "config.py").read_text()
        yield stack
    finally:
        stack.run("destroy", "--yes")
        # `destroy` keeps the queue volume (mail not yet delivered): a test's has none.
        subprocess.run(["docker", "volume", "rm", "-f", f"{name}-queue"], check=False)


def test_upgrade_of_a_single_domain_stack_previews_no_change(upgraded: Stack) -> None:
    out = upgraded.ok("preview", "--expect-no-changes")
    assert "error" not in out.lower(), out


def test_adding_a_domain_later_keeps_the_primarys_key_records_and_passwords(
    upgraded: Stack,
) -> None:
    upgraded.write_config(
        {**upgraded.config, "extraDomains": [{"domain": "second.test", "dkimSelector": "two"}]}
    )
    try:
        steps = upgraded.preview_steps()
    finally:
        upgraded.write_config({k: v for k, v in upgraded.config.items() if k != "extraDomains"})
    changed = {
        (s["op"], s["urn"].split("::")[-1]) for s in steps if s["op"] not in ("same", "refresh")
    }
    created = {n for op, n in changed if op == "create"}
    assert {"dkim-second.test-two", "dkim-second.test-two-key"} <= created, changed
    kept = ("dkim-one", "mail-dns", "smtp-credentials")
    touched = [n for op, n in changed if op != "create" and n.startswith(kept)]
    assert not touched, changed


def test_the_cli_takes_object_items_and_the_program_reads_them(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Pulumi.yaml declares smtpUsers and extraDomains without a type: `pulumi config set
    --path` writes objects into them, and the preview sees both domains and the user."""
    certs = tmp_path_factory.mktemp("certs-cli")
    engine = Engine(tmp_path_factory.mktemp("cli"))
    name = f"objects{uuid.uuid4().hex[:6]}"
    stack = engine.stack(name, {**local_stack_config(name, certs, 94), "dnsProvider": "manual"})
    for path, value in (
        ("extraDomains[0].domain", "second.test"),
        ("extraDomains[0].dmarcPolicy", "reject"),
        ("smtpUsers[0]", "gmail"),
        ("smtpUsers[1].name", "alice"),
        ("smtpUsers[1].sendAs[0]", "@second.test"),
    ):
        stack.ok("config", "set", "--path", f"dkim-relay:{path}", value)
    steps = stack.preview_steps()
    created = {s["urn"].split("::")[-1] for s in steps if s["op"] == "create"}
    assert {"dkim-second.test-one-key", "mail-dns-second.test", "smtp-credentials-alice"} <= (
        created
    ), created
    stack.ok("config", "set", "--path", "dkim-relay:smtpUsers[1].sendAs[0]", "@elsewhere.test")
    res = stack.run("preview")
    assert res.returncode != 0
    assert "'@elsewhere.test' (sendAs of 'alice') is outside" in res.stdout + res.stderr
