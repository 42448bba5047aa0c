"""The backend script's login and the health check's steps, run as GitHub runs them, with
the Pulumi engine on a local file:// backend."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.workflow_support import CACHE, REPO, backend, passphrase_file, step

pytestmark = pytest.mark.engine


def test_backend_script_logs_in_to_a_self_managed_url(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    env = {
        "PULUMI_HOME": str(tmp_path / "home"),
        "PULUMI_BACKEND_URL": f"file://{state}",
        "PULUMI_CONFIG_PASSPHRASE_FILE": passphrase_file(tmp_path),
    }
    res = backend(env, "login")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "state backend: self-managed, file://" in res.stdout
    who = subprocess.run(
        [str(CACHE / "bin" / "pulumi"), "whoami", "-v"],
        env={"PATH": os.environ["PATH"], "HOME": os.environ["HOME"], **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert f"Backend URL: file://{state}" in who.stdout, who.stdout + who.stderr


def test_health_check_steps_fail_when_the_stack_outputs_cannot_be_read(tmp_path: Path) -> None:
    """The login and verify steps, run as GitHub runs them, on a stack that is not there."""
    state = tmp_path / "state"
    state.mkdir()
    env = {
        "PATH": f"{CACHE / 'bin'}:{os.environ['PATH']}",
        "HOME": os.environ["HOME"],
        "PULUMI_HOME": str(tmp_path / "home"),
        "PULUMI_BACKEND_URL": f"file://{state}",
        "PULUMI_CONFIG_PASSPHRASE_FILE": passphrase_file(tmp_path),
        "PULUMI_STACK": "no-such-stack",
        "DKIM_RELAY_ALERT_WEBHOOK": "",
    }
    for title in ("Log in to the state backend", "Verify the live relay"):
        script = tmp_path / "step.sh"
        script.write_text(step("health.yml", title)["run"])
        res = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if title.startswith("Log in"):
            assert res.returncode == 0, res.stdout + res.stderr
    assert res.returncode == 3, res.stdout + res.stderr
    assert "no-such-stack" in res.stderr and "outputs are empty" in res.stderr
