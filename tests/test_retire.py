"""target/docker/retire.sh against a real Docker engine: it removes what the earlier
docker-CLI deploy made (containers with its fingerprint label, its labelled network, its
build folders and images), keeps the queue volume, leaves objects without those labels
(what pulumi-docker makes) alone, and changes nothing on a second run."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from pure.shell import script
from tests.common import docker, run_script
from tests.relay_support import ensure_engine

pytestmark = pytest.mark.e2e

BASE = "debian:bookworm-slim"


def retire(container: str, network: str, work_dir: Path, pattern: str) -> str:
    values = {
        "STEP": "relay-deploy",
        "CONTAINER": container,
        "NETWORK": network,
        "WORK_DIR": str(work_dir),
        "DIR_PATTERN": pattern,
    }
    return run_script(script(values, "docker/retire.sh")).stdout


def exists(kind: str, name: str) -> bool:
    res = subprocess.run(["docker", kind, "inspect", name], capture_output=True, check=False)
    return res.returncode == 0


def test_retires_the_old_deploy_and_nothing_else(tmp_path: Path) -> None:
    ensure_engine()
    tag = uuid.uuid4().hex[:8]
    relay, sink, net, vol = f"rt-{tag}", f"rt-{tag}-sink", f"rt-{tag}-net", f"rt-{tag}-queue"
    other = f"rt-{tag}-new"
    old_image = f"rt-{tag}-img:0123456789abcdef"
    docker("tag", BASE, old_image)
    try:
        docker("network", "create", "--label", "dkim-relay.network=1", net)
        docker("volume", "create", vol)
        for name in (relay, sink):
            docker(
                "run", "-d", "--name", name, "--network", net, "-v", f"{vol}:/q",
                "--init", "--label", "dkim-relay.fingerprint=abc", old_image, "sleep", "infinity",
            )  # fmt: skip
        # What pulumi-docker makes carries no such label: kept.
        docker("run", "-d", "--name", other, BASE, "sleep", "infinity")
        work = tmp_path / "work"
        for d in ("build-0123456789abcdef", "config-fedcba9876543210", "secrets"):
            (work / d).mkdir(parents=True)

        out = retire(relay, net, work, "^(build|config)-[0-9a-f]{16}$")
        assert f"retired container {relay}" in out and f"retired network {net}" in out, out
        assert not exists("container", relay) and not exists("container", sink)
        assert not exists("network", net) and not exists("image", old_image)
        assert exists("volume", vol), "the queue volume must be kept"
        assert exists("container", other)
        assert sorted(p.name for p in work.iterdir()) == ["secrets"]

        again = retire(relay, net, work, "^(build|config)-[0-9a-f]{16}$")
        assert again.strip().endswith("no change"), again

        # A network of the same name without the old deploy's label is not touched.
        docker("network", "create", net)
        assert retire(relay, net, work, "^x$").strip().endswith("no change")
        assert exists("network", net)
    finally:
        docker("rm", "-f", relay, sink, other, check=False)
        docker("network", "rm", net, check=False)
        docker("volume", "rm", "-f", vol, check=False)
        docker("image", "rm", old_image, check=False)
