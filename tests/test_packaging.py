"""How the project installs: requirements.txt holds the runtime only (the program and its
operator tools), requirements-dev.txt adds the tests and linters, and pyproject.toml
reads the runtime list and gives the `dkim-relay` command."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from tools import cli

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parent.parent
# What only tests and linters use; none of it may reach a user's venv.
DEV_ONLY = {"pytest", "pytest-timeout", "aiosmtpd", "moto", "boto3", "hcloud", "ruff", "mypy"}


def names(path: Path) -> dict[str, str]:
    """`name: version` of each pinned line (an `-r` include is not a package)."""
    pins = {}
    for line in path.read_text().splitlines():
        m = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(\S+)", line.strip())
        if m:
            assert m.group(1).lower() not in pins, f"{path.name} pins {m.group(1)} twice"
            pins[m.group(1).lower()] = m.group(2)
        else:
            assert not line.strip() or line.startswith(("#", "-r ")), f"{path.name}: {line!r}"
    return pins


def test_runtime_requirements_hold_no_test_or_lint_package() -> None:
    runtime = names(REPO / "requirements.txt")
    assert not DEV_ONLY & set(runtime), sorted(DEV_ONLY & set(runtime))
    # The program's and the tools' own imports are there.
    assert {"pulumi", "pulumi-command", "pydantic", "dnspython", "dkimpy"} <= set(runtime)


def test_dev_requirements_add_the_test_kit_to_the_runtime() -> None:
    dev_file = REPO / "requirements-dev.txt"
    assert "-r requirements.txt" in dev_file.read_text().splitlines()
    dev = names(dev_file)
    assert set(dev) == DEV_ONLY
    assert not set(dev) & set(names(REPO / "requirements.txt")), "pinned twice"


def test_pyproject_reads_the_runtime_list() -> None:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "dependencies" in meta["project"]["dynamic"]
    dyn = meta["tool"]["setuptools"]["dynamic"]["dependencies"]
    assert dyn == {"file": ["requirements.txt"]}


def test_pyproject_gives_the_dkim_relay_command_and_its_packages() -> None:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert meta["project"]["scripts"] == {"dkim-relay": "tools.cli:main"}
    packages = meta["tool"]["setuptools"]["packages"]
    # Every package the command imports is installed with it.
    for pkg in ("tools", "tools.verify", "pure"):
        assert pkg in packages and (REPO / pkg.replace(".", "/") / "__init__.py").is_file()


@pytest.mark.parametrize("command", ["verify", "dmarc-report"])
def test_each_command_is_an_argparse_subcommand_with_help(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: dkim-relay {command} ")


def test_top_level_help_lists_the_commands_and_usage_errors_exit_3(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "verify" in out and "dmarc-report" in out
    for argv, said in (([], "required: <command>"), (["nope"], "invalid choice: 'nope'")):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 3
        assert said in capsys.readouterr().err
