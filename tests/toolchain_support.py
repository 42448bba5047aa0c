"""How tests run scripts/pulumi-toolchain.sh with a stand-in CLI and a cache of their own."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import pathlib
import re
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
    cache: pathlib.Path,
    path_dirs: list[pathlib.Path],
    plugins: tuple[str, ...] = (),
    /,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """Run the script on CACHE with only PATH_DIRS and the system folders on PATH; PLUGINS
    are its arguments (none: every plugin of requirements.txt)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PULUMI_", "DKIM_RELAY_"))}
    base.update(
        DKIM_RELAY_CACHE=str(cache),
        PATH=os.pathsep.join([*map(str, path_dirs), "/usr/local/bin", "/usr/bin", "/bin"]),
        **env,
    )
    return subprocess.run(
        ["bash", str(TOOLCHAIN), *plugins], env=base, capture_output=True, text=True, timeout=600
    )


def newer(version: str) -> str:
    major, minor, _ = (int(x) for x in version.split("."))
    return f"{major}.{minor + 1}.0"


def older(version: str) -> str:
    major, minor, _ = (int(x) for x in version.split("."))
    return f"{major}.{minor - 1}.9"


def wanted_plugins() -> dict[str, str]:
    """Resource plugins the project asks for: pulumi-NAME==X in requirements.txt,
    at the version in the installed package's pulumi-plugin.json."""
    wanted = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        m = re.match(r"\s*pulumi-([a-z0-9-]+)\s*==", line, re.I)
        if not m:
            continue
        mod = "pulumi_" + m.group(1).lower().replace("-", "_")
        spec = importlib.util.find_spec(mod)
        assert spec is not None and spec.origin is not None, f"{mod} is not installed"
        meta_file = pathlib.Path(spec.origin).parent / "pulumi-plugin.json"
        if meta_file.is_file():
            meta = json.loads(meta_file.read_text())
            if meta.get("resource"):
                wanted[str(meta["name"])] = str(meta["version"])
    return wanted
