"""The users' CI, read as data: actions are pinned, permissions are minimal, the three
workflows choose the state backend the same way, and the health check runs the verify
command that the end-to-end tests run. actionlint runs in tests/test_workflows_lint.py
(e2e: its set-up builds actionlint); the backend script's login and the health check's
steps run with the Pulumi engine in tests/test_workflows_engine.py.
"""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest
import yaml

from tests.verify_support import HEALTH_CHECK, WEBHOOK_ENV
from tests.workflow_support import (
    BACKEND_ENV,
    BACKEND_SCRIPT,
    NAMES,
    REPO,
    backend,
    load,
    read,
    step,
    steps,
)
from tools.verify.cli import WEBHOOK_ENV as VERIFY_WEBHOOK_ENV

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", NAMES)
def test_actions_pinned_to_commits_and_requirements_installed(name: str) -> None:
    text = read(name)
    uses = re.findall(r"uses:\s*(\S+)", text)
    assert uses, name
    for ref in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref), f"{name}: {ref} not pinned"
    assert "pip install -r requirements.txt" in text
    assert "secrets.CLOUDFLARE_API_TOKEN" in text
    # No token is written in the clear.
    assert not re.search(r"pul-[0-9a-f]{20,}", text)


@pytest.mark.parametrize("name", NAMES)
def test_every_workflow_chooses_the_backend_the_same_way(name: str) -> None:
    doc = load(name)
    env = {k: v for k, v in doc["env"].items() if k in BACKEND_ENV}
    assert env == BACKEND_ENV
    # Said at the top, before the first key.
    head = read(name).split("\nname:", 1)[0]
    for word in ("PULUMI_BACKEND_URL", "PULUMI_ACCESS_TOKEN", "PULUMI_CONFIG_PASSPHRASE"):
        assert word in head, f"{name}: the header does not name {word}"
    runs = [s.get("run", "") for s in steps(name)]
    assert any(r.startswith("bash .github/pulumi-backend.sh") for r in runs), name
    for s in steps(name):
        if str(s.get("uses", "")).startswith("pulumi/actions@") and "command" in s["with"]:
            assert s["with"]["cloud-url"] == "${{ env.PULUMI_BACKEND_URL }}", name
            assert s["with"]["stack-name"] == "${{ vars.PULUMI_STACK }}", name
            assert "PULUMI_ACCESS_TOKEN" not in s.get("env", {}), name  # the job's env has it


def test_backend_script_is_shellcheck_clean() -> None:
    res = subprocess.run(["shellcheck", str(BACKEND_SCRIPT)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


@pytest.mark.parametrize(
    ("env", "rc", "said"),
    [
        ({}, 1, "no state backend: set the secret PULUMI_ACCESS_TOKEN"),
        ({"PULUMI_ACCESS_TOKEN": "", "PULUMI_BACKEND_URL": ""}, 1, "no state backend"),
        ({"PULUMI_ACCESS_TOKEN": "pul-x"}, 0, "state backend: Pulumi Cloud"),
        (
            {"PULUMI_BACKEND_URL": "s3://state?region=auto&endpoint=r2.example", "AWS_REGION": ""},
            1,
            "not: PULUMI_CONFIG_PASSPHRASE AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY",
        ),
        (
            {
                "PULUMI_BACKEND_URL": "s3://state?region=auto",
                "PULUMI_CONFIG_PASSPHRASE": "passphrase-XYZ",
                "AWS_ACCESS_KEY_ID": "key-id-XYZ",
                "AWS_SECRET_ACCESS_KEY": "secret-XYZ",
                "PULUMI_ACCESS_TOKEN": "pul-x",  # the bucket wins when both are set
            },
            0,
            "state backend: self-managed, s3://state\n",
        ),
    ],
)
def test_backend_script_names_the_choice_or_what_is_missing(
    env: dict[str, str], rc: int, said: str
) -> None:
    res = backend(env)
    assert res.returncode == rc, res.stdout + res.stderr
    assert said in res.stdout
    assert "XYZ" not in res.stdout + res.stderr  # no secret is echoed


def verify_commands(text: str) -> list[list[str]]:
    """Each `bin/dkim-relay ...` command in a workflow's run scripts, as argv."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
        while "bin/dkim-relay" in tokens:
            tokens = tokens[tokens.index("bin/dkim-relay") :]
            end = next((i for i, t in enumerate(tokens) if t in ("|", "||", "&&", ";")), None)
            out.append(tokens[:end])
            tokens = tokens[end:] if end else []
    return out


def test_health_check_runs_the_verify_command_the_tests_run() -> None:
    runs = "\n".join(s.get("run", "") for s in steps("health.yml"))
    assert verify_commands(runs) == [list(HEALTH_CHECK)]
    for name in NAMES:  # and no workflow runs verify any other way
        for command in verify_commands(read(name)):
            assert command == list(HEALTH_CHECK), f"{name}: {command}"
    verify = step("health.yml", "Verify the live relay")
    assert verify["shell"] == "bash"  # -eo pipefail: a failed `pulumi stack output` fails
    assert verify["env"] == {WEBHOOK_ENV: "${{ secrets.ALERT_WEBHOOK }}"}
    assert WEBHOOK_ENV == VERIFY_WEBHOOK_ENV
    piped = verify["run"].replace("\\\n", " ")
    assert re.search(
        r'pulumi stack output --stack "\$\{PULUMI_STACK\}" --json --show-secrets\s*\|\s*'
        + re.escape(shlex.join(HEALTH_CHECK)),
        piped,
    ), piped


def test_health_check_schedule_dispatch_drift_and_permissions() -> None:
    doc = load("health.yml")
    assert doc["on"]["schedule"] and "workflow_dispatch" in doc["on"]
    minute, hour, *rest = doc["on"]["schedule"][0]["cron"].split()
    assert hour.startswith("*/") and rest == ["*", "*", "*"]
    assert doc["permissions"] == {"contents": "read"}
    assert doc["env"]["PULUMI_STACK"] == "${{ vars.PULUMI_STACK }}"
    (drift,) = [s for s in steps("health.yml") if s.get("run", "").startswith("pulumi preview")]
    assert drift["name"].startswith("Drift")
    assert "vars.DRIFT_CHECK == 'true'" in drift["if"] and "inputs.drift" in drift["if"]
    argv = shlex.split(drift["run"])
    assert argv[:2] == ["pulumi", "preview"]
    assert {"--expect-no-changes", "--non-interactive"} <= set(argv)
    # A converged stack previews clean as it is: nothing left out.
    assert not [a for a in argv if a.startswith("--exclude") or a.startswith("--target")], argv
    # The preview compares with what is there now: the project refreshes first (Pulumi.yaml).
    project = yaml.safe_load((REPO / "Pulumi.yaml").read_text())
    assert "--refresh" in argv or project.get("options", {}).get("refresh") == "always"
    install = [s for s in steps("health.yml") if str(s.get("uses", "")).startswith("pulumi/")]
    assert len(install) == 1 and "command" not in install[0]["with"]  # the CLI only


AGENT_STEP = "bash .github/ssh-agent.sh"


@pytest.mark.parametrize("name", NAMES)
def test_the_ssh_agent_is_loaded_before_the_stack_is_read(name: str) -> None:
    """The Docker provider reaches a VPS's engine over ssh:// with the key from an
    ssh-agent: every workflow that previews or deploys loads it first, after the login
    (it reads sshPrivateKey from the stack)."""
    runs = [str(s.get("run", "")) for s in steps(name)]
    uses = [str(s.get("uses", "")) + str(s.get("with", {}).get("command", "")) for s in steps(name)]
    login = runs.index("bash .github/pulumi-backend.sh login")
    agent = runs.index(AGENT_STEP)
    stack = [
        i
        for i, (r, u) in enumerate(zip(runs, uses, strict=True))
        if r.startswith("pulumi preview") or u.endswith(("preview", "up"))
    ]
    assert stack, f"{name}: no step reads the stack"
    assert login < agent < min(stack), (name, login, agent, stack)
    assert "--exclude" not in read(name) and "port25" not in read(name)


def test_ssh_agent_script_keeps_the_key_off_command_lines_and_disk() -> None:
    text = (REPO / ".github" / "ssh-agent.sh").read_text()
    assert re.search(r"pulumi config get sshPrivateKey [^|\n]*\| ssh-add -q -$", text, re.M)
    assert "GITHUB_ENV" in text and "SSH_AUTH_SOCK" in text
    assert not re.search(r">\s*\S*(id_|key)", text), "no key file is written"


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
