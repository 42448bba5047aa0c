"""The whole program under the real Pulumi engine and plugins (no mocks).

Uses the toolchain from scripts/pulumi-toolchain.sh, a file backend in a temporary folder
and the passphrase secrets provider. The local stack deploys the real relay image on this
machine's Docker engine as docker resources; mail goes through it and dkimpy checks the
signature against the stack's own dkimDnsValue output.

In one run, on one local stack (Pulumi.yaml's ``refresh: always``, no flag given): right
after ``up``, ``pulumi preview --expect-no-changes`` passes with no ``--exclude``; the relay
container removed behind the stack's back shows in ``preview`` and a plain ``pulumi up``
brings it back, and the mail it had accepted (queued while the sink was down) is then
delivered, signed; the same for the relay's network; 465 is published on
``submissionsPort``; ``destroy`` removes container, network and images and keeps the
queue volume, as the ``keptOnDestroy`` output says.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from components.cloud_server import generate_host_key
from scripts.local_ca import issue
from tests import engine_support
from tests.common import docker, exists, free_port, wait_for
from tests.engine_support import (
    REPO,
    Engine,
    Stack,
    flush,
    local_stack_config,
    queue,
    submit,
    wait_signed,
)
from tests.vps_support import ssh_agent

pytestmark = [pytest.mark.engine, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine(tmp_path_factory.mktemp("engine"))


def _types(steps: list[dict[str, Any]], op: str | None = None) -> set[str]:
    return {s["urn"].split("::")[2].split("$")[-1] for s in steps if op in (None, s["op"])}


def _ops(steps: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(op, resource name) of every step that changes something (with ``refresh: always`` a
    preview also lists a "refresh" step for each resource it read back)."""
    quiet = ("same", "read", "refresh")
    return {(s["op"], s["urn"].split("::")[-1]) for s in steps if s["op"] not in quiet}


def test_preview_of_a_vps_stack_with_manual_dns(engine: Engine) -> None:
    private, _ = generate_host_key()
    _, host_key = generate_host_key()
    # As a user runs it: the key the Docker provider's ssh uses is in an ssh-agent.
    with ssh_agent(private) as agent:
        stack = engine.stack(
            "vps-preview",
            {
                "domain": "example.com",
                "vpsIpv4": "203.0.113.25",
                "vpsIpv6": "2001:db8::25",
                "acmeEmail": "postmaster@example.com",
                "sshHostKey": host_key,
            },
            env=agent,
        )
        stack.set_secret("sshPrivateKey", private)
        steps = stack.preview_steps()
    types = _types(steps, "create")
    assert {
        "dkimrelay:index:DkimKey",
        "dkimrelay:index:MailDns",
        "dkimrelay:index:SmtpCredentials",
        "dkimrelay:index:RelayHost",
        "dkimrelay:index:SmtpRelay",
        "command:remote:Command",
        "docker:index/container:Container",
        "docker:index/network:Network",
        "docker:index/volume:Volume",
        "docker:index/remoteImage:RemoteImage",
    } <= types, types
    assert not [t for t in types if t.startswith("cloudflare")]
    assert not [s for s in steps if s["urn"].endswith("::relay-host-port25")], (
        "the port 25 check is no resource"
    )
    text = stack.config_file.read_text()
    body = private.splitlines()[1]
    assert body not in text and "secure:" in text, "the key is stored encrypted"


def test_config_error_stops_before_any_resource(engine: Engine) -> None:
    stack = engine.stack(
        "bad-config",
        {
            "domain": "example.com",
            "vpsIpv4": "2001:db8::1",
            "dmarcPct": 300,
            "deployTarget": "local",
            "tlsCertDir": "/nonexistent",
        },
    )
    res = stack.run("up", "--yes")
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "vpsIpv4" in out and "dmarcPct" in out and "nothing was created or changed" in out
    exported = json.loads(stack.ok("stack", "export"))
    assert len(exported["deployment"].get("resources") or []) <= 1, "only the stack itself"


@dataclass
class Local:
    """The module's local stack: its name is also its relay container's."""

    stack: Stack
    certs: Path
    submissions_port: int

    @property
    def name(self) -> str:
        return self.stack.name

    @property
    def sink_dir(self) -> Path:
        return REPO / ".local" / self.name / "sink"

    def timed(self, *args: str) -> str:
        t = time.monotonic()
        out = self.stack.ok(*args)
        print(f"pulumi {' '.join(args)}: {time.monotonic() - t:.1f} s")
        return out

    def state(self) -> list[dict[str, Any]]:
        return list(json.loads(self.stack.ok("stack", "export"))["deployment"]["resources"])

    def container_id(self, name: str | None = None) -> str:
        return docker("inspect", "-f", "{{.Id}}", name or self.name)

    def assert_healthy(self) -> None:
        assert docker("inspect", "-f", "{{.State.Health.Status}}", self.name) == "healthy"
        assert docker("inspect", "-f", "{{.State.Running}}", f"{self.name}-sink") == "true"

    def images(self) -> list[str]:
        return engine_support.local_stack_images(self.name)

    def cleanup(self) -> None:
        engine_support.remove_local_stack(self.name)
        shutil.rmtree(REPO / ".local" / self.name, ignore_errors=True)


@pytest.fixture(scope="module")
def local(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    certs = tmp_path_factory.mktemp("certs")
    issue(certs, "smtp.engine.test", [])
    name = f"enginetest{uuid.uuid4().hex[:6]}"
    port465 = free_port()
    config = {
        **local_stack_config(name, certs, 97),
        "submissions465": True,
        "submissionsPort": port465,
    }
    loc = Local(engine.stack(name, config), certs, port465)
    try:
        loc.timed("up", "--yes", "--skip-preview")
        yield loc
    finally:
        loc.stack.run("destroy", "--yes", "--skip-preview")
        loc.cleanup()


def send_and_verify(loc: Local) -> str:
    return engine_support.send_and_verify(loc.stack.outputs(), loc.certs, loc.sink_dir)


def no_secret(text: str, outputs: dict[str, Any], where: str) -> None:
    assert outputs["smtpPassword"] not in text, f"the password in {where}"
    assert "BEGIN PRIVATE KEY" not in text, f"a private key in {where}"


def test_local_stack_relays_signed_mail(local: Local) -> None:
    send_and_verify(local)
    outputs = local.stack.outputs()
    no_secret(local.stack.ok("stack", "export"), outputs, "the exported state")
    no_secret(docker("inspect", local.name), outputs, "docker inspect")
    # The relay, its network and queue volume, the images and the sink are docker resources.
    docker_resources = {
        (r["type"], r["urn"].split("::")[-1])
        for r in local.state()
        if r["type"].startswith("docker:index/")
    }
    assert {
        ("docker:index/container:Container", "relay-container"),
        ("docker:index/network:Network", "relay-network"),
        ("docker:index/volume:Volume", "relay-queue"),
        ("docker:index/remoteImage:RemoteImage", "relay-image"),
        ("docker:index/container:Container", "sink-container"),
        ("docker:index/remoteImage:RemoteImage", "sink-image"),
    } <= docker_resources, docker_resources


def test_converged_stack_previews_clean(local: Local) -> None:
    before = local.container_id()
    local.timed("preview", "--expect-no-changes")  # no --exclude
    out = local.timed("up", "--yes", "--expect-no-changes")
    assert "unchanged" in out
    assert local.container_id() == before


def test_submissions_port_publishes_465(local: Local) -> None:
    info = json.loads(docker("inspect", local.name))[0]
    bindings = info["HostConfig"]["PortBindings"]["465/tcp"]
    assert [(b["HostIp"], b["HostPort"]) for b in bindings] == [
        ("127.0.0.1", str(local.submissions_port))
    ]
    outputs = local.stack.outputs()
    token = submit(
        outputs, local.certs, "implicit TLS", port=local.submissions_port, implicit_tls=True
    )
    wait_signed(outputs, local.sink_dir, token)


def test_removed_relay_is_back_after_a_plain_up_with_its_queued_mail(local: Local) -> None:
    st, name = local.stack, local.name
    outputs = st.outputs()
    # Mail accepted while the next hop (the sink) is down waits in the queue volume.
    docker("stop", f"{name}-sink")
    token = submit(outputs, local.certs, "queued, then the relay removed")
    wait_for(
        "the message deferred in the relay's queue",
        lambda: [m for m in queue(name) if m["queue_name"] == "deferred"],
        timeout=120,
        every=1,
    )
    docker("rm", "-f", name)

    ops = _ops(st.preview_steps())
    assert ("create", "relay-container") in ops, ops
    assert st.run("preview", "--expect-no-changes").returncode != 0
    local.timed("up", "--yes")  # plain: no --refresh, no --replace
    local.assert_healthy()  # the stopped sink was started too
    flush(name)
    wait_signed(outputs, local.sink_dir, token)
    assert not queue(name), "the queue is empty"
    local.timed("preview", "--expect-no-changes")
    send_and_verify(local)


def test_removed_network_is_back_after_a_plain_up(local: Local) -> None:
    st, name, net = local.stack, local.name, f"{local.name}-net"
    old = docker("network", "inspect", "-f", "{{.Id}}", net)
    for c in (name, f"{name}-sink"):
        docker("network", "disconnect", "-f", net, c)
    docker("network", "rm", net)

    ops = _ops(st.preview_steps())
    assert ("create", "relay-network") in ops, ops
    assert st.run("preview", "--expect-no-changes").returncode != 0
    local.timed("up", "--yes")
    new = docker("network", "inspect", "-f", "{{.Id}}", net)
    assert new != old
    local.assert_healthy()
    fmt = "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}={{$v.IPAddress}} {{end}}"
    assert docker("inspect", "-f", fmt, name).split() == [f"{net}=172.30.97.10"]
    assert docker("inspect", "-f", fmt, f"{name}-sink").split() == [f"{net}=172.30.97.25"]
    send_and_verify(local)
    local.timed("preview", "--expect-no-changes")


def test_new_selector_changes_only_what_it_should(local: Local) -> None:
    st = local.stack
    old = st.outputs()
    st.write_config({**st.config, "dkimSelector": "two", "dkimRetiredSelectors": ["one"]})
    steps = st.preview_steps()
    changed = _ops(steps)
    created = {n for op, n in changed if op == "create"}
    assert "dkim-two-key" in created, changed
    assert not [n for op, n in changed if op in ("delete", "replace") and "dkim-one" in n], changed
    assert not [n for _, n in changed if "smtp-credentials" in n], "passwords are kept"
    st.ok("up", "--yes", "--skip-preview")
    new = st.outputs()
    assert new["dkimSelector"] == "two" and new["dkimDnsValue"] != old["dkimDnsValue"]
    assert new["dkimDnsValues"]["one"] == old["dkimDnsValue"], "the retired key is kept"
    assert new["smtpPassword"] == old["smtpPassword"]
    send_and_verify(local)
    st.ok("preview", "--expect-no-changes")


def test_destroy_removes_all_but_the_queue_volume(local: Local) -> None:
    outputs = local.stack.outputs()
    volume = f"{local.name}-queue"
    assert outputs["queueVolume"] == volume
    assert f"keeps the queue volume {volume}" in outputs["keptOnDestroy"]
    assert f"docker volume rm {volume}" in outputs["keptOnDestroy"]
    images = [
        r["outputs"]["name"]
        for r in local.state()
        if r["type"] == "docker:index/remoteImage:RemoteImage"
    ]
    assert sorted(images) == sorted(local.images())
    assert all(exists("image", i) for i in images)

    local.timed("destroy", "--yes")
    for c in (local.name, f"{local.name}-sink"):
        assert not exists("container", c), c
    assert not exists("network", f"{local.name}-net")
    for image in images:
        assert not exists("image", image), image
    assert exists("volume", volume), "the queue volume is kept"
    assert (local.certs / "live" / "smtp.engine.test" / "fullchain.pem").exists()
    res = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"name={local.name}"], capture_output=True, text=True
    )
    assert res.stdout.strip() == ""
