"""The whole stack (`__main__.py`) under the real Pulumi engine against the local VPS.

`pulumi up` of the repo's project, VPS target, ``dnsProvider: manual``, against local
stand-ins. The pieces:

* the VPS: tests/vps_support.py (network namespace, sshd on 2222, ufw, certbot,
  pebble as Let's Encrypt, resolving every name to the VPS);
* its Docker engine: tests/vps_docker_support.py (a dockerd inside the VPS's network and
  mount namespaces). The stack reaches it as a user's stack does: the command provider
  over SSH for the host steps, the Docker provider over ``ssh://`` with the host key
  pinned (``sshHostKey``) and the private key in an ssh-agent (``SSH_AUTH_SOCK`` in
  pulumi's environment). The namespace reaches no package mirror, so the relay image is
  built on the machine and loaded into the VPS under the name the stack gives it; the
  stack's build on the VPS then takes every step from it;
* the receiving mail server: an aiosmtpd sink on the machine side of the VPS's veth
  (``relayNexthop``), bound to that address only;
* the project as a user runs it: the repo's Pulumi.yaml (``refresh: always``), venv and
  ``__main__.py``, a stack config file outside the repo (``--config-file``), the SSH key
  set with ``pulumi config set --secret`` on stdin, a file backend and passphrase file in
  a temporary folder (``Engine`` of tests/engine_support.py).

The first tests check the namespace engine on its own; the rest run in file order on one
stack: up (the relay, its network, volume and image are ``docker:index:*`` resources),
mail signed and verified by dkimpy against ``dkimDnsValue``, no secret in state, output or
``docker inspect``; then, in one test, ``pulumi preview --expect-no-changes`` with no
``--exclude`` right after ``up`` and after a second ``up``, and the drift repair
(``docker rm -f`` of the relay on the VPS with a message queued: the preview shows it, a
plain ``pulumi up`` brings the relay back and the message is delivered signed, the
preview is clean again); outbound port 25 dropped by the VPS's firewall between two
``up``s turns ``outboundSmtp`` to ``blocked`` (a warning) and back to ``open``, the
preview staying clean (the check is no resource); a new DKIM selector changing only what
it should; destroy removing the relay's container, network and image and keeping the
queue volume, SSH and the certificate.
"""

from __future__ import annotations

import json
import os
import shlex
import smtplib
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pure import host_scripts as hs
from pure.shell import command_line
from tests.engine_support import REPO, Engine
from tests.relay_support import Sink
from tests.vps_docker_support import (
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
from tests.vps_support import (
    RELAY_HOST,
    SSH_PORT,
    LocalVps,
    Port25Listener,
    local_vps,
    port25_listener,
    ssh_agent,
)

pytestmark = [pytest.mark.engine, pytest.mark.timeout(2400)]

CONTAINER = f"dkr-vps-{uuid.uuid4().hex[:6]}"
NETWORK = f"{CONTAINER}-net"
VOLUME = f"{CONTAINER}-queue"


# --- fixtures ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def vps() -> Iterator[LocalVps]:
    with local_vps() as v:
        yield v


@pytest.fixture(scope="module")
def vdocker(vps: LocalVps) -> Iterator[VpsDocker]:
    with vps_docker(vps, fast_dns=True) as d:
        yield d


@pytest.fixture(scope="module")
def relay_image(vdocker: VpsDocker) -> tuple[str, str]:
    """(name, ID) of the relay image loaded into the VPS under the stack's own name."""
    return preload_relay_image(vdocker, CONTAINER)


@pytest.fixture(scope="module")
def sink(vps: LocalVps) -> Iterator[Sink]:
    with sink_beside(vps) as s:
        yield s


@pytest.fixture(scope="module")
def port25(vps: LocalVps) -> Iterator[Port25Listener]:
    """The port 25 probe host (PROBE_HOST): the machine side of the VPS's veth."""
    with port25_listener(vps.host_ip4, vps.host_ip6) as lst:
        yield lst


@pytest.fixture(scope="module")
def deployed(
    tmp_path_factory: pytest.TempPathFactory,
    vps: LocalVps,
    vdocker: VpsDocker,
    relay_image: tuple[str, str],
    sink: Sink,
    port25: Port25Listener,
) -> Iterator[PulumiRun]:
    engine = Engine(tmp_path_factory.mktemp("engine-vps"))
    with ssh_agent(vps.private_key) as agent:
        stack = engine.stack(
            f"vps{uuid.uuid4().hex[:6]}", vps_stack_config(vps, sink, CONTAINER), env=agent
        )
        stack.set_secret("sshPrivateKey", vps.private_key)
        run = PulumiRun(stack)
        try:
            run.ok("up", "--yes", "--skip-preview")
            yield run
        finally:
            res = stack.run("destroy", "--yes", "--skip-preview")
            if res.returncode != 0:
                print(f"cleanup destroy failed:\n{res.stdout[-3000:]}\n{res.stderr[-2000:]}")


# --- the engine inside the VPS -------------------------------------------------------
def test_dockerd_in_the_vps_answers_over_ssh(vps: LocalVps, vdocker: VpsDocker) -> None:
    out = vps.ssh("docker info --format '{{.DockerRootDir}} {{.Driver}} {{.ServerVersion}}'")
    root, driver, _version = out.stdout.split()
    assert root == os.path.join(vdocker.data_root, "data"), (
        "the VPS's own daemon, not the machine's"
    )
    assert driver == "overlay2", driver
    # The client on the VPS finds it where a VPS has it.
    assert vps.ssh("test -S /var/run/docker.sock && echo sock").stdout.strip() == "sock"


def test_relayhost_docker_step_finds_nothing_to_change(vps: LocalVps, vdocker: VpsDocker) -> None:
    """The very script RelayHost's docker step sends, with the real restart command."""
    out = vps.ssh(command_line(hs.render_docker())).stdout
    assert "already has the IPv6 settings" in out and "no change" in out, out
    daemon = json.loads(vps.ssh("cat /etc/docker/daemon.json").stdout)
    assert daemon["ipv6"] is True and daemon["ip6tables"] is True
    assert daemon["log-driver"] == "json-file", "the admin's own key is kept"


def test_loaded_image_runs_and_mounts_what_the_vps_sees(vps: LocalVps, vdocker: VpsDocker) -> None:
    vdocker.load_image("debian:bookworm-slim")
    token = uuid.uuid4().hex
    probe_dir = "/etc/dkim-relay-probe"
    vps.ssh(f"mkdir -p {probe_dir} && echo {token} > {probe_dir}/token")
    assert not os.path.exists(probe_dir), "the VPS's /etc is its own overlay"
    try:
        out = vps.ssh(
            f"docker run --rm -v {probe_dir}:/probe:ro debian:bookworm-slim cat /probe/token"
        ).stdout
        assert out.strip() == token
    finally:
        vps.ssh(f"rm -rf {probe_dir}", check=False)


PERL_HELLO = (
    'my $s = IO::Socket::IP->new(LocalHost => "::", V6Only => 0, LocalPort => 7777, '
    'Listen => 5, ReuseAddr => 1) or die "$@"; '
    'while (my $c = $s->accept) { print $c "hello\\n"; close $c }'
)


def test_port_published_on_the_vps_address_is_reachable(vps: LocalVps, vdocker: VpsDocker) -> None:
    vdocker.load_image("debian:bookworm-slim")
    name = f"dkr-probe-{uuid.uuid4().hex[:6]}"
    port = 18587
    vps.ssh(
        f"docker network create --ipv6 --subnet 172.30.199.0/24 --subnet fd00:d6b1:199::/64 {name}"
    )
    try:
        vps.ssh(
            f"docker run -d --name {name} --network {name} -p {vps.ip4}:{port}:7777 "
            f"-p [{vps.ip6}]:{port}:7777 debian:bookworm-slim perl -MIO::Socket::IP -e "
            + shlex.quote(PERL_HELLO)
        )
        for ip in (vps.ip4, vps.ip6):
            deadline = time.monotonic() + 20
            while True:
                try:
                    with socket.create_connection((ip, port), timeout=3) as s:
                        assert s.recv(16) == b"hello\n"
                    break
                except (OSError, AssertionError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.3)
    finally:
        vps.ssh(f"docker rm -f {name}; docker network rm {name}", check=False)


# --- helpers -------------------------------------------------------------------------
def vdocker_out(d: VpsDocker, *args: str) -> str:
    return d.docker(*args).stdout.decode().strip()


def container_id(d: VpsDocker) -> str:
    return vdocker_out(d, "inspect", "-f", "{{.Id}}", CONTAINER)


def health(d: VpsDocker) -> str:
    return vdocker_out(d, "inspect", "-f", "{{.State.Health.Status}}", CONTAINER)


def logs(d: VpsDocker) -> str:
    res = d.docker("logs", "--tail", "60", CONTAINER, check=False)
    return (res.stdout + res.stderr).decode(errors="replace")


def secrets_of(run: PulumiRun, vps: LocalVps) -> list[str]:
    """Values that must never show: the SMTP password, the DKIM key bodies, the SSH key."""
    out = run.outputs()
    values = [str(p) for p in out["smtpPasswords"].values()]
    # The private keys as the VPS holds them (they never leave it otherwise).
    keys = vps.ssh(f"cat {hs.SECRETS_DIR}/dkim/*.private").stdout
    values += [
        line
        for line in keys.splitlines()
        if line and not line.startswith("-----") and len(line) > 40
    ]
    values += [
        line
        for line in vps.private_key.splitlines()
        if line and not line.startswith("-----") and len(line) > 40
    ]
    assert len(values) >= 3, "found no secret values to look for"
    return values


def assert_no_secrets(texts: list[tuple[str, str]], secrets: list[str]) -> None:
    for where, text in texts:
        for s in secrets:
            assert s not in text, f"a secret value appears in: {where}"


def plan(run: PulumiRun) -> tuple[set[tuple[str, str]], set[str]]:
    """A preview's planned (op, name) changes, and the names it refreshed first."""
    steps = json.loads(run.ok("preview", "--json")).get("steps", [])
    changes = {
        (s["op"], s["urn"].split("::")[-1]) for s in steps if s["op"] not in ("same", "refresh")
    }
    refreshed = {s["urn"].split("::")[-1] for s in steps if s["op"] == "refresh"}
    return changes, refreshed


def expect_no_changes(run: PulumiRun) -> None:
    """The drift check users copy from Pulumi's docs, with no --exclude."""
    res = run.run("preview", "--expect-no-changes")
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-2000:]


def up_changes_nothing(run: PulumiRun) -> str:
    out = run.ok("up", "--yes", "--skip-preview")
    summary = out.split("Resources:", 1)[1].split("Duration:", 1)[0].split()
    assert summary[1:] == ["unchanged"], out[-3000:]
    return out


def smtp_statuses(run: PulumiRun) -> dict[str, str]:
    return {f: r["status"] for f, r in run.outputs()["outboundSmtp"].items()}


# --- the stack -----------------------------------------------------------------------
def test_up_deploys_the_relay_on_the_vps(
    deployed: PulumiRun, vps: LocalVps, vdocker: VpsDocker, relay_image: tuple[str, str]
) -> None:
    state = json.loads(deployed.stack.ok("stack", "export"))
    types = {r["urn"].split("::")[-1]: r["type"] for r in state["deployment"]["resources"]}
    assert types["relay-container"] == "docker:index/container:Container", types
    assert types["relay-network"] == "docker:index/network:Network", types
    assert types["relay-queue"] == "docker:index/volume:Volume", types
    assert types["relay-image"] == "docker:index/remoteImage:RemoteImage", types
    assert not [n for n in types if "port25" in n], "the port 25 check is no resource"
    assert health(vdocker) == "healthy"
    name, image_id = relay_image
    assert vdocker_out(vdocker, "inspect", "-f", "{{.Image}}", CONTAINER) == image_id, (
        "the build on the VPS took every step from the loaded image"
    )
    assert vdocker_out(vdocker, "image", "inspect", "-f", "{{.Id}}", name) == image_id
    bindings = json.loads(
        vdocker_out(vdocker, "inspect", "-f", "{{json .HostConfig.PortBindings}}", CONTAINER)
    )
    published = {(b["HostIp"], b["HostPort"]) for v in bindings.values() for b in v}
    assert published == {(vps.ip4, "587"), (vps.ip6, "587")}, bindings
    # STARTTLS on the IPv6 address too, with pebble's certificate for relayHost.
    ctx = ssl.create_default_context(cadata=vps.pebble_root_pem())
    with smtplib.SMTP(vps.ip6, 587, local_hostname="client.test", timeout=30) as s:
        s._host = RELAY_HOST  # type: ignore[attr-defined]
        s.starttls(context=ctx)
        s.ehlo("client.test")
        assert s.has_extn("auth"), "AUTH is offered after STARTTLS"
    ufw = vps.ssh("ufw show added").stdout
    assert f"{SSH_PORT}/tcp" in ufw and "587/tcp" in ufw
    assert vps.ssh(f"test -s {hs.cert_dir(RELAY_HOST)}/fullchain.pem && echo ok").stdout
    out = deployed.outputs()
    assert out["relayContainer"] == CONTAINER and out["queueVolume"] == VOLUME
    assert smtp_statuses(deployed) == {"ipv4": "open", "ipv6": "open"}


def test_mail_through_the_relay_is_dkim_signed_and_verifies(
    deployed: PulumiRun, vps: LocalVps, sink: Sink
) -> None:
    send_signed(deployed.outputs(), vps, sink, CONTAINER)


def test_no_secret_in_state_output_or_docker_inspect(
    deployed: PulumiRun, vps: LocalVps, vdocker: VpsDocker
) -> None:
    secrets = secrets_of(deployed, vps)
    state = deployed.stack.ok("stack", "export")
    inspect = [
        (f"docker inspect {what}", vdocker_out(vdocker, *kind, "inspect", what))
        for kind, what in (((), CONTAINER), (("network",), NETWORK), (("volume",), VOLUME))
    ]
    assert_no_secrets([*deployed.texts, ("stack export", state), *inspect], secrets)
    assert "OPENSSH PRIVATE KEY" not in state and "BEGIN PRIVATE KEY" not in state
    config = json.loads(inspect[0][1])[0]["Config"]
    assert config["Env"] and not [e for e in config["Env"] if "PASS" in e or "KEY" in e]
    text = deployed.stack.config_file.read_text()
    assert "secure:" in text and "OPENSSH" not in text


def test_converged_stack_previews_clean_and_a_plain_up_repairs_drift(
    deployed: PulumiRun, vps: LocalVps, vdocker: VpsDocker, sink: Sink
) -> None:
    # Right after up: nothing to change, and the preview did refresh the Docker objects
    # from the VPS first (so "clean" is not a refresh that never ran).
    changes, refreshed = plan(deployed)
    assert changes == set(), changes
    assert {"relay-container", "relay-network", "relay-queue"} <= refreshed, refreshed
    expect_no_changes(deployed)
    before = container_id(vdocker)
    up_changes_nothing(deployed)
    assert container_id(vdocker) == before, "the relay container was recreated"
    assert smtp_statuses(deployed) == {"ipv4": "open", "ipv6": "open"}
    assert "IPv4 open" in deployed.outputs()["gmailGuide"]
    expect_no_changes(deployed)

    # A message waits in the queue (the receiving server is down) when the relay is
    # removed behind the stack's back.
    out = deployed.outputs()
    subject = f"queued {uuid.uuid4().hex}"
    sink.stop()
    try:
        submit(out, vps, subject)
        wait_deferred(vdocker, CONTAINER)
        vdocker.docker("rm", "-f", CONTAINER)
        res = deployed.run("preview", "--expect-no-changes")
        assert res.returncode != 0 and "relay-container" in res.stdout, res.stdout[-3000:]
        changes, _ = plan(deployed)
        assert changes == {("create", "relay-container")}, changes
        fixed = deployed.ok("up", "--yes", "--skip-preview")
        assert "1 created" in fixed, fixed[-3000:]
    finally:
        sink.start()
    assert health(vdocker) == "healthy"
    assert container_id(vdocker) != before
    flush(vdocker, CONTAINER)
    data = wait_delivered(sink, subject, logs=lambda: logs(vdocker))
    assert signature_ok(data, out) == "one"
    expect_no_changes(deployed)
    send_signed(deployed.outputs(), vps, sink, CONTAINER)


def test_blocked_port_25_between_two_ups_turns_outbound_smtp_blocked(
    deployed: PulumiRun, vps: LocalVps, port25: Port25Listener
) -> None:
    rule = "OUTPUT -p tcp --dport 25 -m comment --comment dkim-relay-test -j"
    blocks = [("iptables", "DROP"), ("ip6tables", "REJECT")]
    for tool, target in blocks:
        vps.ssh(f"{tool} -I {rule} {target}")
    try:
        out = up_changes_nothing(deployed)
        for family in ("IPv4", "IPv6"):
            assert f"outbound port 25 over {family} is blocked" in out, out[-3000:]
        assert "relayNexthop" in out
        assert smtp_statuses(deployed) == {"ipv4": "blocked", "ipv6": "blocked"}
        assert "IPv4 blocked" in deployed.outputs()["gmailGuide"]
        # The check is no resource: a blocked port leaves nothing to preview.
        expect_no_changes(deployed)
    finally:
        for tool, target in blocks:
            vps.ssh(f"{tool} -D {rule} {target}", check=False)
    before = len(port25.peers)
    out = up_changes_nothing(deployed)
    assert "is blocked" not in out, out[-3000:]
    assert smtp_statuses(deployed) == {"ipv4": "open", "ipv6": "open"}
    assert len(port25.peers) == before + 2, "the check ran again over IPv4 and IPv6"
    expect_no_changes(deployed)


def test_new_selector_changes_only_what_it_should(
    deployed: PulumiRun, vps: LocalVps, vdocker: VpsDocker, sink: Sink
) -> None:
    old = deployed.outputs()
    cert_before = vps.ssh(f"sha256sum {hs.cert_dir(RELAY_HOST)}/fullchain.pem").stdout
    ufw_before = vps.ssh("ufw show added").stdout
    container_before = container_id(vdocker)
    network_before = vdocker_out(vdocker, "network", "inspect", "-f", "{{.Id}}", NETWORK)
    deployed.stack.write_config(
        {**deployed.stack.config, "dkimSelector": "two", "dkimRetiredSelectors": ["one"]}
    )
    changes, _ = plan(deployed)
    names = {n for _, n in changes}
    print(f"a new selector changes: {sorted(changes)}")
    assert ("create", "dkim-two-key") in changes, changes
    assert "relay-host-secrets" in names, changes
    # The key files changed: the relay container is made anew so that it reads them.
    assert ("replace", "relay-container") in changes, changes
    allowed = {"dkim-two", "dkim-two-key", "relay-host-secrets", "relay-container"}
    unexpected = {n for n in names if n not in allowed and not n.startswith("mail-dns")}
    assert not unexpected, f"unexpected changes: {changes}"

    deployed.ok("up", "--yes", "--skip-preview")
    new = deployed.outputs()
    assert new["dkimSelector"] == "two" and new["dkimDnsValue"] != old["dkimDnsValue"]
    assert new["dkimDnsValues"]["one"] == old["dkimDnsValue"], "the retired key stays published"
    assert new["smtpPassword"] == old["smtpPassword"], "passwords are kept"
    keys = vps.ssh(f"ls {hs.SECRETS_DIR}/dkim").stdout.split()
    assert sorted(keys) == ["one.private", "two.private"], keys
    assert vps.ssh(f"sha256sum {hs.cert_dir(RELAY_HOST)}/fullchain.pem").stdout == cert_before
    assert vps.ssh("ufw show added").stdout == ufw_before
    assert container_id(vdocker) != container_before, "the relay picked up the new key"
    assert vdocker_out(vdocker, "network", "inspect", "-f", "{{.Id}}", NETWORK) == network_before
    data = send_signed(new, vps, sink, CONTAINER)
    assert signature_ok(data, new) == "two"
    expect_no_changes(deployed)


def test_destroy_removes_the_relay_keeps_queue_ssh_and_certificate(
    deployed: PulumiRun, vps: LocalVps, vdocker: VpsDocker, relay_image: tuple[str, str]
) -> None:
    secrets = secrets_of(deployed, vps)
    kept = deployed.outputs()["keptOnDestroy"]
    assert VOLUME in kept, kept
    deployed.ok("destroy", "--yes", "--skip-preview")
    assert_no_secrets(deployed.texts, secrets)
    for kind, what in (("container", CONTAINER), ("network", NETWORK), ("image", relay_image[0])):
        res = vdocker.docker(kind, "inspect", what, check=False)
        assert res.returncode != 0, f"the relay's {kind} {what} is left"
    assert vdocker.docker("volume", "inspect", VOLUME, check=False).returncode == 0, (
        "the queue volume is kept"
    )
    assert vps.ssh("echo alive").stdout.strip() == "alive", "SSH still works"
    assert f"{SSH_PORT}/tcp" in vps.ssh("ufw show added").stdout
    assert vps.ssh(f"test -s {hs.cert_dir(RELAY_HOST)}/fullchain.pem && echo kept").stdout
    assert not Path(REPO / f"Pulumi.{deployed.stack.name}.yaml").exists(), "nothing in the repo"
