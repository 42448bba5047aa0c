"""How tests run scripts/pulumi-toolchain.sh with a stand-in CLI and a cache of their own."""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
import subprocess

REPO = pathlib.Path(__file__).resolve().parent.parent
TOOLCHAIN = REPO / "scripts" / "pulumi-toolchain.sh"
SDK_VERSION = importlib.metadata.version("pulumi")


def stand_in_cli(d: pathlib.Path, version: str) -> pathlib.Path:
    """A `pulumi` that only reports `version`, in its own folder to put on PATH."""
    d.mkdir(parents=True, exist_ok=True)
    exe = d / "pulumi"
    exe.write_text(f"#!/bin/sh\necho v{version}\n")
    exe.chmod(0o755)
    return exe


def toolchain(
    cache: pathlib.Path, path_dirs: list[pathlib.Path], **env: str
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PULUMI_", "DKIM_RELAY_"))}
    base.update(
        DKIM_RELAY_CACHE=str(cache),
        PATH=os.pathsep.join([*map(str, path_dirs), "/usr/local/bin", "/usr/bin", "/bin"]),
        **env,
    )
    return subprocess.run(
        ["bash", str(TOOLCHAIN)], env=base, capture_output=True, text=True, timeout=600
    )


def newer(version: str) -> str:
    major, minor, _ = (int(x) for x in version.split("."))
    return f"{major}.{minor + 1}.0"


def older(version: str) -> str:
    major, minor, _ = (int(x) for x in version.split("."))
    return f"{major}.{minor - 1}.9"
