"""`pip install .` in a fresh venv gives a working `dkim-relay` command (pyproject.toml),
from a copy of the project's files, so nothing of this checkout's venv helps it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent


def project_copy(dest: Path) -> Path:
    """The files git knows of (tracked, or new and not ignored), as a clone would have them."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "-co", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = REPO / name.decode()
        if src.is_file():
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            (dest / name.decode()).write_bytes(src.read_bytes())
    return dest


def test_pip_install_gives_the_dkim_relay_command(tmp_path: Path) -> None:
    src = project_copy(tmp_path / "src")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", str(src)],
        capture_output=True,
        text=True,
        timeout=800,
    )
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for command in ("verify", "dmarc-report"):
        res = subprocess.run(
            [str(venv / "bin" / "dkim-relay"), command, "--help"],
            cwd=elsewhere,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith(f"usage: dkim-relay {command} ")
    # A real run, not only the help: unusable outputs exit 3 and say why.
    res = subprocess.run(
        [str(venv / "bin" / "dkim-relay"), "verify"],
        cwd=elsewhere,
        input="{}",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 3, res.stdout + res.stderr
    # Only the runtime came with it: no test or lint package.
    freeze = subprocess.run(
        [str(venv / "bin" / "pip"), "freeze"], capture_output=True, text=True, check=True
    ).stdout.lower()
    for dev in ("pytest", "ruff", "mypy", "moto", "boto3", "aiosmtpd"):
        assert f"\n{dev}==" not in f"\n{freeze}", dev
