"""actionlint passes on the users' workflows, and catches a broken one. actionlint is
built by scripts/setup.d/40-actionlint.sh (e2e set-up); a missing binary fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.workflow_support import NAMES, WORKFLOWS, run_actionlint

pytestmark = pytest.mark.e2e


def test_actionlint_passes_on_the_workflows() -> None:
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {f.name for f in files} >= set(NAMES)
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
