"""Upgrade in place of a local stack from the docker-CLI deploy, under the real engine and the real
Docker engine: a stack deployed by the previous main (45ba3a9, the relay and the sink as
docker-CLI scripts run by pulumi-command) takes one ``pulumi up`` of the current tree in
the same project folder, as after a ``git pull``.

Checks: the same DKIM key (dkimDnsValue) and passwords; the queue volume kept (the same
volume, not a new one) and a message queued before the upgrade (the sink stopped)
delivered after it, signed; no container, network or build folder of the old deploy left
behind; the relay healthy after the upgrade ``up`` and after a second ``up`` (which keeps
the container); ``preview --expect-no-changes`` clean; new mail relayed and signed.
Prints the downtime: the longest time the published port gave no SMTP greeting, probed
every 0.1 s during the upgrade ``up``.
"""

from __future__ import annotations

import shutil
import smtplib
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scripts.local_ca import issue
from tests import engine_support
from tests.common import docker, wait_for
from tests.engine_support import (
    REPO,
    Engine,
    GreetingProbe,
    Stack,
    flush,
    local_stack_config,
    queue,
    submit,
    wait_signed,
)

pytestmark = [pytest.mark.engine, pytest.mark.timeout(1500)]

OLD = "45ba3a9"  # the previous main: the command-based relay
OLD_LABEL = "dkim-relay.fingerprint"  # what its deploy put on its containers
OLD_NETWORK_LABEL = "dkim-relay.network"
SUBNET = 98  # 172.30.98.0/24, fd00:d6b1:62::/64: no other test's
RELAY_HOST = "smtp.engine.test"
# What the upgrade `up` prints when a step that matters for the downtime starts or ends.
TIMELINE = (
    "relay-image created",
    "relay-deploy updating (0s)",
    "retired container",
    "relay-deploy updated",
    "relay-network created",
    "relay-container created",
)


def git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, check=True)


def old_files() -> list[str]:
    out = git("ls-tree", "-r", "-z", "--name-only", OLD).stdout.decode()
    return [p for p in out.split("\0") if p]


def current_files() -> list[str]:
    """The current tree as a checkout has it: tracked and untracked, not ignored."""
    out = git("ls-files", "-z", "-co", "--exclude-standard").stdout.decode()
    return sorted({p for p in out.split("\0") if p and (REPO / p).is_file()})


def pull(project: Path) -> None:
    """What `git pull` does to the project folder: the old tree's files go, the current
    tree's come; git-ignored things (venv, .local, the stack's files) stay."""
    for rel in old_files():
        (project / rel).unlink(missing_ok=True)
    for rel in current_files():
        dest = project / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest, follow_symlinks=False)


@dataclass
class Old:
    stack: Stack
    project: Path
    certs: Path

    @property
    def name(self) -> str:
        return self.stack.name

    @property
    def work(self) -> Path:
        return self.project / ".local" / self.name

    def labelled(self, label: str, kind: str = "container") -> str:
        if kind == "container":
            return docker(
                "ps", "-aq", "--filter", f"label={label}", "--filter", f"name={self.name}"
            )
        return docker(
            "network", "ls", "-q", "--filter", f"label={label}", "--filter", f"name={self.name}"
        )

    def build_dirs(self) -> list[str]:
        relay = [
            p.name for p in (self.work / "relay").glob("*") if p.name[:6] in ("build-", "config")
        ]
        sink = [p.name for p in (self.work / "sink-build").glob("sink-build-*")]
        return sorted(relay + sink)

    def cid(self, name: str) -> str:
        return docker("inspect", "-f", "{{.Id}}", name)

    def health(self) -> str:
        return docker("inspect", "-f", "{{.State.Health.Status}}", self.name)

    def new_images(self) -> list[str]:
        return engine_support.local_stack_images(self.name)

    def cleanup(self) -> None:
        engine_support.remove_local_stack(self.name)


@pytest.fixture
def old(tmp_path: Path) -> Iterator[Old]:
    subprocess.run(["bash", str(REPO / "scripts" / "docker-engine.sh")], check=True)
    project = tmp_path / "project"
    project.mkdir()
    archive = git("archive", OLD).stdout
    subprocess.run(["tar", "-x", "-C", str(project)], input=archive, check=True)
    (project / "venv").symlink_to(REPO / "venv")  # Pulumi.yaml: virtualenv: venv
    certs = tmp_path / "certs"
    issue(certs, RELAY_HOST, [])
    (tmp_path / "engine").mkdir()
    engine = Engine(tmp_path / "engine", project=project, ambient_plugins=True)
    name = f"upgradetest{uuid.uuid4().hex[:6]}"
    o = Old(engine.stack(name, local_stack_config(name, certs, SUBNET)), project, certs)
    try:
        yield o
    finally:
        o.stack.run("destroy", "--yes", "--skip-preview")
        o.cleanup()


def timed(stack: Stack, *args: str) -> tuple[str, float]:
    t = time.monotonic()
    out = stack.ok(*args)
    return out, time.monotonic() - t


def test_upgrade_in_place_from_the_command_based_relay(old: Old) -> None:
    st, name = old.stack, old.name
    _, took = timed(st, "up", "--yes", "--skip-preview")
    print(f"\nold tree ({OLD}) first up: {took:.1f} s")
    before: dict[str, Any] = st.outputs()
    engine_support.send_and_verify(before, old.certs, old.work / "sink")
    assert old.labelled(OLD_LABEL), "the old deploy made the containers"
    assert old.labelled(f"{OLD_NETWORK_LABEL}=1", "network")
    assert old.build_dirs(), "the old deploy made build folders"
    old_ids = {c: old.cid(c) for c in (name, f"{name}-sink")}
    volume = f"{name}-queue"
    volume_created = docker("volume", "inspect", "-f", "{{.CreatedAt}}", volume)

    # A message accepted while the next hop is down: it waits in the queue volume.
    docker("stop", f"{name}-sink")
    token = submit(before, old.certs, "queued before the upgrade")
    wait_for(
        "the message deferred in the old relay's queue",
        lambda: [m for m in queue(name) if m["queue_name"] == "deferred"],
        timeout=120,
        every=1,
    )

    pull(old.project)
    port = int(before["smtpPort"])
    with GreetingProbe(port, RELAY_HOST) as probe:
        t = time.monotonic()
        code, lines = st.run_lines("up", "--yes")
        took = time.monotonic() - t
        probe.stop_when_served()
    out = "\n".join(line for _, line in lines)
    assert code == 0, out[-10000:]
    gap, start, end = probe.longest_gap()
    print(
        f"upgrade up: {took:.1f} s; downtime (longest time without an SMTP greeting on "
        f"port {port}, probed every 0.1 s): {gap:.1f} s, from {start:.1f} s to {end:.1f} s "
        f"after the probe started; probes by answer {probe.counts()}"
    )
    t0 = probe.samples[0][0]
    for when, line in lines:
        if any(k in line for k in TIMELINE):
            print(f"  {when - t0:5.1f} s  {' '.join(line.split())[:150]}")
    assert "retired container" in out, out[-6000:]
    assert gap < 60, "the relay was down for a minute or more"

    # Healthy, and nothing of the old deploy is left.
    assert old.health() == "healthy"
    assert docker("inspect", "-f", "{{.State.Running}}", f"{name}-sink") == "true"
    assert not old.labelled(OLD_LABEL), "an old container is left"
    assert not old.labelled(OLD_NETWORK_LABEL, "network"), "the old network is left"
    assert not old.build_dirs(), old.build_dirs()
    for c, cid in old_ids.items():
        assert old.cid(c) != cid, f"{c} is the old container"
    assert docker("volume", "inspect", "-f", "{{.CreatedAt}}", volume) == volume_created

    after = st.outputs()
    assert after["dkimDnsValue"] == before["dkimDnsValue"], "the DKIM key is kept"
    assert after["smtpPasswords"] == before["smtpPasswords"], "the passwords are kept"
    assert after["queueVolume"] == volume

    # The message queued before the upgrade is delivered, signed with the same key.
    flush(name)
    wait_signed(after, old.work / "sink", token)
    wait_for("an empty queue", lambda: not queue(name), timeout=60, every=1)

    cid = old.cid(name)
    _, took = timed(st, "up", "--yes")
    print(f"second up: {took:.1f} s")
    assert old.cid(name) == cid and old.health() == "healthy"
    _, took = timed(st, "preview", "--expect-no-changes")
    print(f"preview --expect-no-changes: {took:.1f} s")

    # New mail, once the probe's own connections are out of the relay's per-client
    # connection rate limit (30 a minute, counted from the gateway's address).
    deadline = time.monotonic() + 150
    while True:
        try:
            token = submit(after, old.certs, "after the upgrade")
            break
        except smtplib.SMTPConnectError as err:
            assert err.smtp_code == 421 and time.monotonic() < deadline, err
            time.sleep(5)
    wait_signed(after, old.work / "sink", token)
