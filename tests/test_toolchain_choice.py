"""How scripts/pulumi-toolchain.sh chooses the CLI (an official one, or a source build), with
stand-in CLIs: no engine is built or run here."""

from __future__ import annotations

import pathlib
import re
import subprocess

import pytest

from tests.toolchain_support import (
    REPO,
    SDK_VERSION,
    TOOLCHAIN,
    newer,
    older,
    stand_in_cli,
    toolchain,
)

pytestmark = pytest.mark.unit


def test_official_cli_at_least_the_sdk_version_is_used_as_it_is(tmp_path: pathlib.Path) -> None:
    exe = stand_in_cli(tmp_path / "official", newer(SDK_VERSION))
    cache = tmp_path / "cache"
    out = toolchain(cache, [exe.parent])
    assert out.returncode == 0, out.stderr
    assert str(exe) in out.stderr
    assert not (cache / "bin").exists(), "nothing is built when the CLI is usable"
    # What `source scripts/pulumi-env.sh` then gives: the official CLI, Pulumi's own
    # plugin installation left on, no PULUMI_HOME of ours.
    probe = subprocess.run(
        [
            "bash",
            "-c",
            'source "$1" && command -v pulumi && '
            'echo "acq=${PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION-unset}" && '
            'echo "home=${PULUMI_HOME-unset}"',
            "probe",
            str(REPO / "scripts" / "pulumi-env.sh"),
        ],
        env={
            "HOME": str(tmp_path),
            "DKIM_RELAY_CACHE": str(cache),
            "PATH": f"{exe.parent}:/usr/bin:/bin",
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == [str(exe), "acq=unset", "home=unset"]


def test_older_official_cli_is_refused_naming_the_minimum(tmp_path: pathlib.Path) -> None:
    exe = stand_in_cli(tmp_path / "official", older(SDK_VERSION))
    out = toolchain(tmp_path / "cache", [exe.parent], DKIM_RELAY_PULUMI="path")
    assert out.returncode not in (0, 3)
    assert f"at least v{SDK_VERSION}" in out.stderr, out.stderr
    assert not (tmp_path / "cache" / "toolchain.env").exists()


def test_older_official_cli_in_auto_falls_back_to_the_source_build(
    tmp_path: pathlib.Path,
) -> None:
    exe = stand_in_cli(tmp_path / "official", older(SDK_VERSION))
    # GO=/bin/false stops the build at its first step: this checks only the choice.
    out = toolchain(tmp_path / "cache", [exe.parent], GO="/bin/false")
    assert out.returncode not in (0, 3)
    assert f"older than the minimum v{SDK_VERSION}" in out.stderr, out.stderr
    assert "building pulumi CLI" in out.stderr


def test_a_source_archive_with_another_checksum_is_not_unpacked(tmp_path: pathlib.Path) -> None:
    cache, archives = tmp_path / "cache", tmp_path / "archives"
    (cache / "bin").mkdir(parents=True)
    (cache / "stamps").mkdir()
    # A CLI "already built", so that the run goes straight to the language host.
    cli = stand_in_cli(tmp_path / "built", "3.274.0")
    (cache / "bin" / "pulumi").symlink_to(cli)
    version = re.search(r"PULUMI_CLI_VERSION:-([0-9.]+)", TOOLCHAIN.read_text())
    assert version
    (cache / "stamps" / "cli").write_text(f"v{version.group(1)}\n")
    archives.mkdir()
    for name in re.findall(r"\[([a-z0-9.-]+\.tar\.gz)\]=", TOOLCHAIN.read_text()):
        (archives / name).write_bytes(b"not the archive")  # the language host's comes first
    out = toolchain(cache, [], DKIM_RELAY_PULUMI="source", DKIM_RELAY_SOURCE_ARCHIVES=str(archives))
    assert out.returncode not in (0, 3)
    assert "expected" in out.stderr and "not unpacking" in out.stderr, out.stderr
    assert not (cache / "src" / "language-python-v3.259.0" / "pulumi-language-python").exists()


def test_a_missing_source_archive_is_named_before_the_cli_build(tmp_path: pathlib.Path) -> None:
    out = toolchain(
        tmp_path / "cache",
        [],
        DKIM_RELAY_PULUMI="source",
        DKIM_RELAY_SOURCE_ARCHIVES=str(tmp_path / "none"),
        GO="/bin/false",  # a CLI build would fail at once; the archive check must come first
    )
    assert out.returncode not in (0, 3)
    assert "not found in" in out.stderr and "DKIM_RELAY_SOURCE_ARCHIVES" in out.stderr
    assert "building pulumi CLI" not in out.stderr
