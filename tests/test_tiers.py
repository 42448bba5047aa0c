"""Every test module names its tier (tests/conftest.py): one without is refused at
collection, so `-m unit` cannot silently leave a module out or take in a slow one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parent.parent


def test_a_test_module_without_a_tier_is_a_collection_error(tmp_path: Path) -> None:
    """tests/conftest.py's rule, run on modules outside the suite."""
    (tmp_path / "test_untiered.py").write_text("def test_x() -> None:\n    pass\n")
    (tmp_path / "test_tiered.py").write_text(
        "import pytest\n\npytestmark = pytest.mark.unit\n\n\ndef test_y() -> None:\n    pass\n"
    )

    def collect(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider"]
            + ["--collect-only", "-q", "--rootdir", str(tmp_path), str(tmp_path / name)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert collect("test_tiered.py").returncode == 0
    res = collect("test_untiered.py")
    assert res.returncode != 0
    assert "test_untiered.py::test_x: no tier" in res.stdout + res.stderr
