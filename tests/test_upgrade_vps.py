"""Upgrade in place on the namespace VPS: a stack deployed by the previous main (commit
45ba3a9, the relay run by docker-CLI scripts through pulumi-command) upgrades to the
current tree (pulumi-docker resources) with one ``pulumi up`` in the same project folder.

The pieces are those of tests/test_engine_vps.py (the namespace VPS with its own dockerd,
pebble, the sink as ``relayNexthop``, the SSH key in an ssh-agent for the Docker
provider). The project folder starts as ``git archive 45ba3a9`` (with the repo's venv)
and is then replaced by the current work tree, as a user's checkout is by ``git pull``.
Neither build can reach a package mirror from the namespace: the relay image built on the
machine is loaded into the VPS under the name each one builds (the old deploy script
skips a build whose tag exists; the new build takes every step from it).

Proved: the upgrade ``up`` keeps the DKIM key and the passwords, keeps the queue volume
and delivers, signed with the same key, a message queued before it; it leaves no old
container, network, image or work folder; the relay is healthy after it and after a
second ``up`` (which changes nothing); ``pulumi preview --expect-no-changes`` passes.
The relay's downtime during the upgrade ``up`` is measured by a probe reading the 220
greeting of its published port every 0.1 s, and printed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engine_support import REPO, Engine
from tests.relay_support import Sink
from tests.vps_docker_support import (
    GreetingProbe,
    PulumiRun,
    VpsDocker,
    flush,
    preload_relay_image,
    send_signed,
    signature_ok,
    sink_beside,
    submit,
    vps_docker,
    vps_stack_config,
    wait_deferred,
    wait_delivered,
)
from tests.vps_support import LocalVps, Port25Listener, local_vps, port25_listener, ssh_agent

pytestmark = [pytest.mark.engine, pytest.mark.timeout(2400)]

OLD_MAIN = "45ba3a9"
CONTAINER = f"dkr-upg-{uuid.uuid4().hex[:6]}"
NETWORK = f"{CONTAINER}-net"
VOLUME = f"{CONTAINER}-queue"
WORK_DIR = "/var/lib/dkim-relay"  # both deploys' folder on the VPS
OLD_LABEL = "dkim-relay.fingerprint"  # on the old deploy's containers


@pytest.fixture(scope="module")
def vps() -> Iterator[LocalVps]:
    with local_vps() as v:
        yield v


@pytest.fixture(scope="module")
def vdocker(vps: LocalVps) -> Iterator[VpsDocker]:
    with vps_docker(vps, fast_dns=True) as d:
        yield d


@pytest.fixture(scope="module")
def sink(vps: LocalVps) -> Iterator[Sink]:
    with sink_beside(vps) as s:
        yield s


@pytest.fixture(scope="module")
def port25(vps: LocalVps) -> Iterator[Port25Listener]:
    with port25_listener(vps.host_ip4, vps.host_ip6) as lst:
        yield lst


def export_commit(commit: str, dest: Path) -> None:
    """The tree of ``commit``, as ``git archive`` gives it."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True, timeout=120
    )
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True, timeout=120)


def replace_with_work_tree(dest: Path) -> int:
    """Empties ``dest`` (but its ``venv``) and copies in the current work tree: every file
    git tracks or would track (edits not yet committed included). Returns the count."""
    for entry in dest.iterdir():
        if entry.name == "venv":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    n = 0
    for rel in filter(None, listed):
        src = REPO / rel
        if not src.is_symlink() and not src.is_file():
            continue  # deleted in the work tree
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel, follow_symlinks=False)
        n += 1
    return n


def old_image_tag(project: Path) -> str:
    """The tag the old deploy script builds (its own hash of ``relay/``, file modes in)."""
    code = (
        "from pure import relay_deploy as rd; "
        "print(rd.image_tag('dkim-relay', rd.tree_hash(rd.read_tree(rd.RELAY_DIR))))"
    )
    res = subprocess.run(
        [str(REPO / "venv" / "bin" / "python"), "-c", code],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
    )
    return res.stdout.strip()


def out(d: VpsDocker, *args: str) -> str:
    return d.docker(*args).stdout.decode().strip()


def health(d: VpsDocker) -> str:
    return out(d, "inspect", "-f", "{{.State.Health.Status}}", CONTAINER)


def test_upgrade_from_the_command_based_main_in_one_up(
    tmp_path: Path, vps: LocalVps, vdocker: VpsDocker, sink: Sink, port25: Port25Listener
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    export_commit(OLD_MAIN, project)
    (project / "venv").symlink_to(REPO / "venv")
    assert (project / "pure" / "relay_deploy.py").is_file(), "the command-based main"
    old_tag = old_image_tag(project)
    # Two images, as on a VPS that ran the old deploy: the old tree's under the old
    # deploy's tag (its container runs it), and this tree's as the stack will name it (the
    # namespace reaches no package mirror, so the build there takes every step from it).
    old_image, _ = preload_relay_image(
        vdocker, f"{CONTAINER}-old", context=project / "relay", also=[old_tag]
    )
    vdocker.docker("image", "rm", old_image)  # only the old tag stays
    new_image, _ = preload_relay_image(vdocker, CONTAINER)
    (tmp_path / "engine").mkdir()
    engine = Engine(tmp_path / "engine", project=project, ambient_plugins=True)
    with ssh_agent(vps.private_key) as agent:
        config = vps_stack_config(vps, sink, CONTAINER)
        stack = engine.stack(f"upg{uuid.uuid4().hex[:6]}", config, env=agent)
        stack.set_secret("sshPrivateKey", vps.private_key)
        run = PulumiRun(stack)
        try:
            upgrade(run, project, vps, vdocker, sink, old_tag, new_image)
        finally:
            if sink.controller is None:
                sink.start()
            res = stack.run("destroy", "--yes", "--skip-preview")
            if res.returncode != 0:
                print(f"cleanup destroy failed:\n{res.stdout[-3000:]}\n{res.stderr[-2000:]}")


def upgrade(
    run: PulumiRun,
    project: Path,
    vps: LocalVps,
    vdocker: VpsDocker,
    sink: Sink,
    old_tag: str,
    new_image: str,
) -> None:
    # --- the previous main ------------------------------------------------------------
    run.ok("up", "--yes", "--skip-preview")
    before = run.outputs()
    assert out(vdocker, "inspect", "-f", f'{{{{index .Config.Labels "{OLD_LABEL}"}}}}', CONTAINER)
    assert out(vdocker, "inspect", "-f", "{{.Config.Image}}", CONTAINER) == old_tag
    assert health(vdocker) == "healthy"
    send_signed(before, vps, sink, CONTAINER)
    old_container = out(vdocker, "inspect", "-f", "{{.Id}}", CONTAINER)
    old_network = out(vdocker, "network", "inspect", "-f", "{{.Id}}", NETWORK)
    volume_created = out(vdocker, "volume", "inspect", "-f", "{{.CreatedAt}}", VOLUME)
    old_dirs = vps.ssh(f"ls {WORK_DIR}").stdout.split()
    assert [d for d in old_dirs if d.startswith("build-")], old_dirs

    # A message waits in the queue: the receiving server is down.
    subject = f"queued before the upgrade {uuid.uuid4().hex}"
    sink.stop()
    submit(before, vps, subject)
    wait_deferred(vdocker, CONTAINER)

    # --- the current tree, same folder, one `pulumi up` ---------------------------------
    files = replace_with_work_tree(project)
    print(f"the project folder now holds the current work tree ({files} files)")
    if not run.stack.config.get("sshHostKey"):
        run.stack.write_config({**run.stack.config, "sshHostKey": vps.host_key})
    # The relay allows a client 30 connections a minute: the probe takes turns among
    # 64 addresses of its own, over IPv6 (Docker's NAT keeps the client's address).
    probe = GreetingProbe(vps.ip6, 587, sources=vps.client_addresses(64))
    t0 = time.monotonic()
    with probe:
        time.sleep(1)  # greetings before the up starts
        res = run.run("up", "--yes", "--skip-preview")
        took = time.monotonic() - t0
        deadline = time.monotonic() + 30
        while not (probe.attempts and probe.attempts[-1][1]) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert res.returncode == 0, res.stdout[-8000:] + res.stderr[-3000:]
    downtime = probe.longest_gap()
    print(
        f"upgrade up: {took:.1f}s; relay downtime (longest gap between 220 greetings, "
        f"probed every 0.1 s): {downtime:.1f}s; probe answers: {probe.answers}"
    )
    print(res.stdout[-4000:])
    assert probe.attempts[0][1] and probe.attempts[-1][1], probe.answers
    assert "retired container" in res.stdout, res.stdout[-4000:]

    # --- what the upgrade kept, and what it left behind ----------------------------------
    assert health(vdocker) == "healthy"
    after = run.outputs()
    assert after["dkimDnsValue"] == before["dkimDnsValue"], "the DKIM key is kept"
    assert after["smtpPasswords"] == before["smtpPasswords"], "the passwords are kept"
    assert out(vdocker, "volume", "inspect", "-f", "{{.CreatedAt}}", VOLUME) == volume_created
    assert out(vdocker, "inspect", "-f", "{{.Id}}", CONTAINER) != old_container
    assert out(vdocker, "network", "inspect", "-f", "{{.Id}}", NETWORK) != old_network
    left = out(vdocker, "ps", "-a", "--filter", f"label={OLD_LABEL}", "--format", "{{.Names}}")
    assert left == "", f"old containers left: {left}"
    nets = out(vdocker, "network", "ls", "--filter", "label=dkim-relay.network", "-q")
    assert nets == "", f"old networks left: {nets}"
    names = out(vdocker, "ps", "-a", "--format", "{{.Names}}").split()
    assert names == [CONTAINER], names
    assert vdocker.docker("image", "inspect", old_tag, check=False).returncode != 0
    assert out(vdocker, "inspect", "-f", "{{.Image}}", CONTAINER) == out(
        vdocker, "image", "inspect", "-f", "{{.Id}}", new_image
    )
    dirs = vps.ssh(f"ls {WORK_DIR} 2>/dev/null || true").stdout.split()
    assert not [d for d in dirs if d.startswith(("build-", "config-"))], dirs
    state = json.loads(run.stack.ok("stack", "export"))
    types = {r["urn"].split("::")[-1]: r["type"] for r in state["deployment"]["resources"]}
    assert types["relay-container"] == "docker:index/container:Container", types
    assert "relay-host-port25" not in types, "the old port 25 resource is gone"

    # The queued message leaves, signed with the same key.
    sink.start()
    flush(vdocker, CONTAINER)

    def logs() -> str:
        r = vdocker.docker("logs", "--tail", "60", CONTAINER, check=False)
        return (r.stdout + r.stderr).decode(errors="replace")

    data = wait_delivered(sink, subject, logs=logs)
    assert signature_ok(data, after, before["dkimDnsValue"]) == before["dkimSelector"]

    # --- a second up changes nothing; the preview is clean --------------------------------
    container = out(vdocker, "inspect", "-f", "{{.Id}}", CONTAINER)
    again = run.ok("up", "--yes", "--skip-preview")
    summary = again.split("Resources:", 1)[1].split("Duration:", 1)[0].split()
    assert summary[1:] == ["unchanged"], again[-3000:]
    assert health(vdocker) == "healthy"
    assert out(vdocker, "inspect", "-f", "{{.Id}}", CONTAINER) == container
    pre = run.run("preview", "--expect-no-changes")
    assert pre.returncode == 0, pre.stdout[-5000:] + pre.stderr[-2000:]
    send_signed(run.outputs(), vps, sink, CONTAINER)
