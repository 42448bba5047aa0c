"""The users' workflows as data (.github/workflows), and how tests run their scripts."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / ".github" / "workflows"
CACHE = Path(os.environ.get("DKIM_RELAY_CACHE", Path.home() / ".cache" / "dkim-relay"))
BACKEND_SCRIPT = REPO / ".github" / "pulumi-backend.sh"
NAMES = ["preview.yml", "deploy.yml", "health.yml"]
BACKEND_ENV = {
    "PULUMI_BACKEND_URL": "${{ secrets.PULUMI_BACKEND_URL || vars.PULUMI_BACKEND_URL }}",
    "PULUMI_CONFIG_PASSPHRASE": "${{ secrets.PULUMI_CONFIG_PASSPHRASE }}",
    "AWS_ACCESS_KEY_ID": "${{ secrets.AWS_ACCESS_KEY_ID }}",
    "AWS_SECRET_ACCESS_KEY": "${{ secrets.AWS_SECRET_ACCESS_KEY }}",
    "AWS_REGION": "${{ vars.AWS_REGION }}",
    "PULUMI_ACCESS_TOKEN": "${{ secrets.PULUMI_ACCESS_TOKEN }}",
}


def read(name: str) -> str:
    return (WORKFLOWS / name).read_text()


def load(name: str) -> dict[str, Any]:
    doc = yaml.safe_load(read(name))
    assert isinstance(doc, dict)
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as true
    return doc


def steps(name: str) -> list[dict[str, Any]]:
    return [step for job in load(name)["jobs"].values() for step in job["steps"]]


def step(name: str, title: str) -> dict[str, Any]:
    found = [s for s in steps(name) if s.get("name") == title]
    assert len(found) == 1, f"{name}: no single step {title!r}"
    return found[0]


def backend(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    path = f"{CACHE / 'bin'}:{os.environ['PATH']}"
    return subprocess.run(
        ["bash", str(BACKEND_SCRIPT), *args],
        env={"PATH": path, "HOME": os.environ["HOME"], **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def passphrase_file(tmp_path: Path) -> str:
    f = tmp_path / "passphrase"
    f.write_text("correct horse battery staple\n")
    f.chmod(0o600)
    return str(f)


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
