"""The users' CI: actionlint passes, actions are pinned, permissions are minimal.

actionlint is built by scripts/setup.d/40-actionlint.sh; a missing binary fails here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / ".github" / "workflows"
CACHE = Path(os.environ.get("DKIM_RELAY_CACHE", Path.home() / ".cache" / "dkim-relay"))


def actionlint() -> str:
    found = shutil.which("actionlint") or str(CACHE / "bin" / "actionlint")
    assert Path(found).is_file(), (
        "actionlint is missing: run scripts/setup.d/40-actionlint.sh (builds it from the Go proxy)"
    )
    return found


def run_actionlint(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [actionlint(), "-no-color", *map(str, files)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_actionlint_passes_on_the_workflows() -> None:
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {f.name for f in files} >= {"preview.yml", "deploy.yml"}
    res = run_actionlint(*files)
    assert res.returncode == 0, res.stdout + res.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: pull_request\n"
        "jobs:\n"
        "  x:\n"
        "    runs-on: ubuntu-24.04\n"
        "    steps:\n"
        "      - run: echo ${{ secrets.NOPE.bad }}\n"
        "      - uses: actions/checkout@v4\n"
        "        with:\n"
        "          no-such-input: 1\n"
    )
    res = run_actionlint(bad)
    assert res.returncode != 0
    assert "no-such-input" in res.stdout


def read(name: str) -> str:
    return (WORKFLOWS / name).read_text()


@pytest.mark.parametrize("name", ["preview.yml", "deploy.yml"])
def test_actions_pinned_to_commits_and_requirements_installed(name: str) -> None:
    text = read(name)
    uses = re.findall(r"uses:\s*(\S+)", text)
    assert uses, name
    for ref in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref), f"{name}: {ref} not pinned"
    assert "pip install -r requirements.txt" in text
    assert "secrets.PULUMI_ACCESS_TOKEN" in text
    assert "secrets.CLOUDFLARE_API_TOKEN" in text
    assert "stack-name: ${{ vars.PULUMI_STACK }}" in text
    # No token is written in the clear.
    assert not re.search(r"pul-[0-9a-f]{20,}", text)


def test_preview_on_pull_requests_comments_with_minimal_permissions() -> None:
    text = read("preview.yml")
    assert re.search(r"^on:\n  pull_request:", text, re.M)
    assert "command: preview" in text
    assert "comment-on-pr: true" in text
    perms = re.search(r"^permissions:\n((?:  .*\n)+)", text, re.M)
    assert perms is not None
    assert sorted(line.split("#")[0].strip() for line in perms.group(1).splitlines()) == [
        "contents: read",
        "pull-requests: write",
    ]


def test_deploy_on_push_to_main_read_only() -> None:
    text = read("deploy.yml")
    assert re.search(r"^on:\n  push:\n    branches: \[main\]", text, re.M)
    assert "command: up" in text
    perms = re.search(r"^permissions:\n((?:  .*\n)+)", text, re.M)
    assert perms is not None and perms.group(1).strip() == "contents: read"
    assert "cancel-in-progress: false" in text
