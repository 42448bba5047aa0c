"""`pulumi new` with this repository as the template makes a project that previews.

From a `git clone` (what a user's `pulumi new <URL>` fetches), not this checkout: Pulumi
copies everything but `.git`, so a checkout's venv and state would travel with it. A full
`pulumi new` also installs the provider plugins the venv asks for, cloudflare among them,
which only the network has; offline it runs with --generate-only, and the test does the
rest the way `pulumi new -c KEY=VALUE` does it: `stack init`, then `config set` per prompt.
The preview runs the real engine on a local target (no VPS, no Cloudflare).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from pure.config_schema import TEMPLATE_PROMPTS
from tests.engine_support import PULUMI, REPO, engine_env, write_private

pytestmark = [pytest.mark.engine, pytest.mark.timeout(600)]

# The answers to the template's prompts.
ANSWERS = {
    "domain": "example.org",
    "vpsIpv4": "192.0.2.10",
    "acmeEmail": "postmaster@example.org",
    "sshHostKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAnswerAnswerAnswerAnswerAnswerAnswer",
}


def test_pulumi_new_from_a_clone_makes_a_project_that_previews(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    assert (clone / "Pulumi.prod.yaml").is_file(), "the example stack is committed"
    (tmp_path / "state").mkdir()
    write_private(tmp_path / "passphrase", uuid.uuid4().hex)
    env = engine_env(tmp_path / "state", tmp_path / "passphrase", ambient_plugins=True)
    project = tmp_path / "my-relay"

    def pulumi(*args: str, cwd: Path = project) -> str:
        res = subprocess.run(
            [str(PULUMI), *args, "--non-interactive"],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, f"pulumi {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
        return res.stdout

    venv = Path(sys.executable).parent.parent  # the project's dependencies, installed
    pulumi(
        *("new", str(clone), "--dir", str(project), "--stack", "prod", "--yes"),
        *("--generate-only", "--runtime-options", f"virtualenv={venv}"),
        cwd=tmp_path,
    )
    made = yaml.safe_load((project / "Pulumi.yaml").read_text())
    assert made["name"] == "dkim-relay", "the config namespace is the project's name"
    assert "template" not in made and made["runtime"]["options"]["virtualenv"] == str(venv)
    declared = {k: v for k, v in made["config"].items() if k != "pulumi:tags"}  # Pulumi's own
    assert declared == yaml.safe_load((REPO / "Pulumi.yaml").read_text())["config"]
    assert (project / "Pulumi.prod.yaml").read_text() == (clone / "Pulumi.prod.yaml").read_text()
    assert not (project / ".git").exists()

    template = yaml.safe_load((clone / "Pulumi.yaml").read_text())["template"]
    assert list(template["config"]) == list(TEMPLATE_PROMPTS) == list(ANSWERS)
    pulumi("stack", "init", "prod", "--secrets-provider", "passphrase")
    for key, value in ANSWERS.items():
        pulumi("config", "set", key, value)
    # The example's own values stay, the answers replace its values.
    stack_file = yaml.safe_load((project / "Pulumi.prod.yaml").read_text())
    assert stack_file["encryptionsalt"]
    assert stack_file["config"]["dkim-relay:dkimSelector"] == "relay2026"
    for key, value in ANSWERS.items():
        assert stack_file["config"][f"dkim-relay:{key}"] == value

    # A local target instead of the VPS, records printed instead of Cloudflare.
    certs = tmp_path / "letsencrypt"
    certs.mkdir()
    for key, value in (("deployTarget", "local"), ("dnsProvider", "manual")):
        pulumi("config", "set", key, value)
    pulumi("config", "set", "tlsCertDir", str(certs))
    for key in ("forwardTo", "cloudflareZoneId"):
        pulumi("config", "rm", key)
    preview = json.loads(pulumi("preview", "--stack", "prod", "--json"))
    types = {step["urn"].split("::")[2] for step in preview["steps"]}
    assert {"dkimrelay:index:DkimKey", "dkimrelay:index:MailDns"} <= types, types
    assert "dkimrelay:index:SmtpRelay" in types, types
    assert all(step["op"] == "create" for step in preview["steps"])

    # The relay is the answered domain's, deployed from the new project (not the clone).
    def inputs(name: str) -> dict[str, Any]:
        step = next(s for s in preview["steps"] if s["urn"].endswith(f"::{name}"))
        return dict(step["newState"]["inputs"])

    assert inputs("relay-container")["hostname"] == "smtp.example.org"
    assert inputs("relay-image")["build"]["context"] == "relay"  # read from the project
    secrets = inputs("relay-secrets")
    assert f"{project}/.local/prod/relay/secrets" in json.dumps(secrets)
    leaked = [m.start() for m in re.finditer(re.escape(f"{clone}/"), json.dumps(preview))]
    assert not leaked, json.dumps(preview)[leaked[0] - 300 : leaked[0] + 100] if leaked else ""
