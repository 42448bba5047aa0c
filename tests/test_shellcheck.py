"""shellcheck over every shell file in the repository, as files (sources followed,
see .shellcheckrc), and the shape every script under target/ shares."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parent.parent
SKIP = {".git", "venv", ".local", "node_modules"}


def shell_files() -> list[Path]:
    scripts = [*REPO.rglob("*.sh"), *(REPO / "relay" / "s6").glob("*/run")]
    scripts += (REPO / "relay" / "s6").glob("*/finish")  # the s6 services: no .sh suffix
    return sorted(
        p for p in scripts if not SKIP.intersection(p.relative_to(REPO).parts) and p.is_file()
    )


def shellcheck(*files: Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("shellcheck")
    assert tool, "shellcheck missing: run scripts/setup.d/20-vps.sh"
    return subprocess.run(
        [tool, "--external-sources", *map(str, files)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )


def test_every_shell_file_is_clean() -> None:
    files = shell_files()
    rel = {str(p.relative_to(REPO)) for p in files}
    # The walk finds every family (so a lost directory cannot pass silently).
    for expected in (
        "target/host/lib.sh",
        "target/host/hooks/deploy.sh",
        "target/docker/retire.sh",
        "relay/entrypoint.sh",
        "relay/s6/opendkim/run",
        "relay/s6/opendkim/finish",
        "scripts/test.sh",
        "scripts/setup.d/20-vps.sh",
    ):
        assert expected in rel, expected
    res = shellcheck(*files)
    assert res.returncode == 0, res.stdout + res.stderr


def test_shellcheck_reports_a_fault(tmp_path: Path) -> None:
    """The check above can fail: an unquoted expansion is reported."""
    bad = tmp_path / "bad.sh"
    bad.write_text('#!/usr/bin/env bash\nset -euo pipefail\nx="a b"\nls $x\n')
    res = shellcheck(bad)
    assert res.returncode != 0 and "SC2086" in res.stdout


def test_target_scripts_are_strict_bash() -> None:
    for p in (REPO / "target").rglob("*.sh"):
        lines = p.read_text().splitlines()
        assert lines[0] == "#!/usr/bin/env bash", p
        head = [line for line in lines[1:] if not line.startswith("#")]
        assert head[0] == "set -euo pipefail", p
        subprocess.run(["bash", "-n", str(p)], check=True)
