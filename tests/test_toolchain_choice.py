"""How scripts/pulumi-toolchain.sh chooses the CLI (an official one, or a source build), with
stand-in CLIs: no engine is built or run here."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
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
    wanted_plugins,
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


WANTED = wanted_plugins()
SCRIPT = TOOLCHAIN.read_text()
PINNED = re.findall(r"\[([a-z0-9.-]+\.tar\.gz)\]=", SCRIPT)
DOCKER_ARCHIVES = ["pulumi-docker-v5.1.0.tar.gz", "terraform-provider-docker-v4.5.0.tar.gz"]
HCLOUD_ARCHIVES = ["pulumi-hcloud-v1.39.1.tar.gz", "terraform-provider-hcloud-v1.66.1.tar.gz"]
# The plugins built from two archives: the Pulumi provider and the Terraform provider it
# bridges.
PAIRS = {"docker": DOCKER_ARCHIVES, "hcloud": HCLOUD_ARCHIVES}
SOURCE_ARCHIVES = pathlib.Path(
    os.environ.get("DKIM_RELAY_SOURCE_ARCHIVES", REPO.parent / "shared" / "toolchain-src")
)


def script_value(name: str) -> str:
    m = re.search(rf"^{name}=\$?\{{?(?:[A-Z_]+:-)?v?([0-9.]+)", SCRIPT, re.M)
    assert m, name
    return m.group(1)


def built_cache(cache: pathlib.Path, tmp_path: pathlib.Path, plugins: dict[str, str]) -> None:
    """A cache where the CLI, the language host and PLUGINS (name: version) are "already
    built": stand-in binaries with the stamps the script checks, plugins registered."""
    bin_ = cache / "bin"
    bin_.mkdir(parents=True)
    (cache / "stamps").mkdir()
    cli = stand_in_cli(tmp_path / "built", script_value("PULUMI_CLI_VERSION"))
    (bin_ / "pulumi").symlink_to(cli)
    (cache / "stamps" / "cli").write_text(f"v{script_value('PULUMI_CLI_VERSION')}\n")
    for exe in (
        "pulumi-language-python",
        "pulumi-language-python-exec",
        "pulumi-resource-pulumi-python",
    ):
        (bin_ / exe).symlink_to(cli)
    (cache / "stamps" / "langhost").write_text(
        f"v{script_value('LANGHOST_TAG')}+pkg{script_value('PULUMI_CLI_VERSION')};"
        f"exec{SDK_VERSION}\n"
    )
    for name, version in plugins.items():
        (bin_ / f"pulumi-resource-{name}-v{version}").symlink_to(cli)
        (cache / "stamps" / f"plugin-{name}").write_text(f"{version}\n")
        home = cache / "pulumi-home" / "plugins" / f"resource-{name}-v{version}"
        home.mkdir(parents=True)
        (home / f"pulumi-resource-{name}").symlink_to(cli)


@pytest.mark.parametrize(
    ("plugin", "tampered"), [(p, a) for p, pair in PAIRS.items() for a in pair]
)
def test_a_bridged_plugin_archive_with_another_checksum_is_not_unpacked(
    tmp_path: pathlib.Path, plugin: str, tampered: str
) -> None:
    """Both archives of a bridged plugin are checked before either is unpacked: with the
    genuine Pulumi provider's archive beside a tampered Terraform provider (or the other way
    round), neither is unpacked."""
    assert set(PAIRS[plugin]) <= set(PINNED), PINNED
    cache, archives = tmp_path / "cache", tmp_path / "archives"
    built_cache(cache, tmp_path, {})
    archives.mkdir()
    for name in PAIRS[plugin]:
        if name == tampered:
            (archives / name).write_bytes(b"not the archive")
        elif (SOURCE_ARCHIVES / name).is_file():
            (archives / name).symlink_to(SOURCE_ARCHIVES / name)
        else:
            raise AssertionError(f"the genuine {name} is not in {SOURCE_ARCHIVES}")
    out = toolchain(
        cache,
        [],
        (plugin,),
        DKIM_RELAY_PULUMI="source",
        DKIM_RELAY_SOURCE_ARCHIVES=str(archives),
        GO="/bin/false",  # nothing may reach a build
    )
    assert out.returncode not in (0, 3)
    assert f"{tampered} has sha256" in out.stderr and "not unpacking" in out.stderr, out.stderr
    version = WANTED[plugin]
    assert f"pulumi-resource-{plugin} v{version}: not built yet" in out.stderr, out.stderr
    unpacked = cache / "src" / f"{plugin}-{version}"
    assert not (unpacked / f"pulumi-{plugin}").exists()
    assert not (unpacked / f"terraform-provider-{plugin}").exists()


@pytest.mark.parametrize(("plugin", "missing"), [(p, a) for p, pair in PAIRS.items() for a in pair])
def test_a_missing_bridged_plugin_archive_is_named_before_the_cli_build(
    tmp_path: pathlib.Path, plugin: str, missing: str
) -> None:
    archives = tmp_path / "archives"
    archives.mkdir()
    for name in PINNED:
        if name != missing:
            (archives / name).write_bytes(b"present")  # only their presence is checked first
    out = toolchain(
        tmp_path / "cache",
        [],
        DKIM_RELAY_PULUMI="source",
        DKIM_RELAY_SOURCE_ARCHIVES=str(archives),
        GO="/bin/false",
    )
    assert out.returncode not in (0, 3)
    assert "not found in" in out.stderr and f"{missing} (for the {plugin} plugin)" in out.stderr
    assert "building pulumi CLI" not in out.stderr
    assert [n for n in PINNED if n in out.stderr] == [missing], out.stderr


def test_archives_are_needed_only_for_parts_still_to_build(tmp_path: pathlib.Path) -> None:
    cache = tmp_path / "cache"
    built_cache(cache, tmp_path, {"command": WANTED["command"]})
    none = str(tmp_path / "none")
    out = toolchain(
        cache, [], DKIM_RELAY_PULUMI="source", DKIM_RELAY_SOURCE_ARCHIVES=none, GO="/bin/false"
    )
    assert out.returncode not in (0, 3)
    named = [n for n in PINNED if n in out.stderr]
    assert sorted(named) == sorted(DOCKER_ARCHIVES + HCLOUD_ARCHIVES), out.stderr
    # Once the docker and hcloud plugins are built too, no archive is needed: only
    # cloudflare is left, which has no source build (3).
    shutil.rmtree(cache)
    built = {n: WANTED[n] for n in ("command", "docker", "hcloud")}
    built_cache(cache, tmp_path / "again", built)
    out = toolchain(
        cache, [], DKIM_RELAY_PULUMI="source", DKIM_RELAY_SOURCE_ARCHIVES=none, GO="/bin/false"
    )
    assert out.returncode == 3, out.stderr
    assert "not found" not in out.stderr
    assert re.search(r"plugin docker: +v5\.1\.0 \(cached\)", out.stderr), out.stderr


def test_archives_are_needed_only_for_the_plugins_asked_for(tmp_path: pathlib.Path) -> None:
    """Named plugins narrow the archive check before the CLI build: with the command plugin
    built and no archive at all, `docker` names docker's archives and not hcloud's, and
    `command` needs none."""
    cache = tmp_path / "cache"
    built_cache(cache, tmp_path, {"command": WANTED["command"]})
    env = {
        "DKIM_RELAY_PULUMI": "source",
        "DKIM_RELAY_SOURCE_ARCHIVES": str(tmp_path / "none"),
        "GO": "/bin/false",
    }
    out = toolchain(cache, [], ("docker",), **env)
    assert out.returncode not in (0, 3)
    assert sorted(n for n in PINNED if n in out.stderr) == sorted(DOCKER_ARCHIVES), out.stderr
    out = toolchain(cache, [], ("command",), **env)
    assert out.returncode == 0, out.stderr
    assert re.search(r"plugin command: +v1\.2\.1 \(cached\)", out.stderr), out.stderr
    assert not re.search(r"plugin (docker|hcloud|cloudflare)", out.stderr), out.stderr


@pytest.mark.parametrize("asked", [("nope",), ("command", "hetzner"), ("pulumi-hcloud",)])
def test_an_unknown_plugin_name_is_refused(tmp_path: pathlib.Path, asked: tuple[str, ...]) -> None:
    """A name that is no plugin of requirements.txt stops the script before anything is
    built or chosen, naming it and the plugins there are."""
    unknown = asked[-1]
    cache = tmp_path / "cache"
    out = toolchain(cache, [], asked, DKIM_RELAY_PULUMI="source", GO="/bin/false")
    assert out.returncode not in (0, 3)
    assert f"no resource plugin '{unknown}' in requirements.txt" in out.stderr, out.stderr
    assert " ".join(WANTED) in out.stderr, out.stderr
    assert "building pulumi CLI" not in out.stderr
    assert not (cache / "toolchain.env").exists()
