"""The local stack's config file: made from stacks/local.yaml, the salt kept, git-ignored,
so that scripts/local-up.sh leaves the work tree clean."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "local_stack.py"
TEMPLATE = REPO / "stacks" / "local.yaml"
SALT = "v1:l6kwDooS+q0=:v1:dCGukyZgYbgYFxu2:7lVaBW4RcdFYXQt3C+iuEjh1RFSFEQ=="


def make(out: Path, export: str) -> dict:
    subprocess.run(
        [sys.executable, str(SCRIPT), str(TEMPLATE), str(out)],
        input=export,
        text=True,
        check=True,
        timeout=60,
    )
    return dict(yaml.safe_load(out.read_text()))


def export_with(salt: str) -> str:
    providers = {"type": "passphrase", "state": {"salt": salt}}
    return json.dumps({"version": 3, "deployment": {"secrets_providers": providers}})


def test_config_is_the_template_and_the_salt_comes_from_the_state(tmp_path: Path) -> None:
    doc = make(tmp_path / "Pulumi.local.yaml", export_with(SALT))
    assert doc["encryptionsalt"] == SALT
    assert doc["config"] == yaml.safe_load(TEMPLATE.read_text())["config"]
    assert doc["config"]["dkim-relay:smtpPort"] == 2587  # an int, as the template says


def test_the_salt_already_in_the_file_is_kept_and_the_config_refreshed(tmp_path: Path) -> None:
    out = tmp_path / "Pulumi.local.yaml"
    out.write_text(yaml.safe_dump({"encryptionsalt": SALT, "config": {"dkim-relay:old": 1}}))
    doc = make(out, "")  # a stack with no deployment yet exports no salt
    assert doc["encryptionsalt"] == SALT
    assert "dkim-relay:old" not in doc["config"]
    before = out.stat().st_mtime_ns
    make(out, export_with("v1:other"))
    assert out.stat().st_mtime_ns == before, "a second run must not rewrite the file"


def test_the_file_pulumi_writes_is_git_ignored() -> None:
    res = subprocess.run(["git", "check-ignore", "-q", "Pulumi.local.yaml"], cwd=REPO, timeout=30)
    assert res.returncode == 0, "Pulumi.local.yaml must be git-ignored"
    tracked = subprocess.run(
        ["git", "ls-files", "Pulumi.local.yaml"], cwd=REPO, capture_output=True, text=True
    )
    assert tracked.stdout == ""
