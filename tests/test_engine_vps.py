"""The whole stack (`__main__.py`) under the real Pulumi engine against the local VPS.

`pulumi up` of a stack against local stand-ins, the VPS reached by the command provider
over real SSH. The pieces:

* the VPS: tests/vps_support.py (network namespace, sshd on 2222, ufw, certbot,
  pebble as Let's Encrypt, resolving every name to the VPS);
* its Docker engine: tests/vps_docker_support.py (a dockerd inside the VPS's
  network and mount namespaces; the relay image is built on the machine's engine and
  loaded into it, as the namespace reaches no Debian package server);
* the receiving mail server: an aiosmtpd sink on the machine side of the VPS's veth
  (``relayNexthop``), bound to that address only;
* the project as a user runs it: the repo's Pulumi.yaml, venv and ``__main__.py``, a
  stack config file outside the repo (``--config-file``), the SSH key set with
  ``pulumi config set --secret`` on stdin, a file backend and passphrase file in a
  temporary folder (``Engine`` of tests/engine_support.py, as tests/test_engine.py).

The first tests check the namespace engine on its own; the rest run in file order
on one stack: up, mail signed and verified by dkimpy against ``dkimDnsValue``, no
secret in state or output, a second up and a preview with no changes (but the outbound
port 25 probe, which runs each time: open, toward a listener of the test), a new DKIM
selector changing only what it should, destroy.
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
from typing import Any

import dkim
import pytest

from components.relay import RELAY_DIR, read_tree
from pure import host_scripts as hs
from pure import relay_deploy as rd
from pure.shell import command_line
from tests.common import free_port
from tests.engine_support import REPO, Engine, Stack
from tests.relay_support import Sink, build_image, dnsfunc_for, make_message
from tests.vps_docker_support import VpsDocker, vps_docker
from tests.vps_support import (
    PROBE_HOST,
    RELAY_HOST,
    SSH_PORT,
    LocalVps,
    Port25Listener,
    local_vps,
    port25_listener,
)

pytestmark = [pytest.mark.engine, pytest.mark.timeout(1800)]

DOMAIN = "dkim-relay.test"
CONTAINER = f"dkr-vps-{uuid.uuid4().hex[:6]}"


def relay_image_tag() -> str:
    """The tag the deploy script looks for (SmtpRelay hashes relay/ the same way)."""
    return rd.image_tag("dkim-relay", rd.tree_hash(read_tree(RELAY_DIR)))


# --- fixtures ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def vps() -> Iterator[LocalVps]:
    with local_vps() as v:
        yield v


@pytest.fixture(scope="module")
def vdocker(vps: LocalVps) -> Iterator[VpsDocker]:
    with vps_docker(vps) as d:
        yield d


@pytest.fixture(scope="module")
def relay_image(vdocker: VpsDocker) -> str:
    tag = relay_image_tag()
    build_image(tag)  # on the machine's engine (starts it via scripts/docker-engine.sh)
    vdocker.load_image(tag)
    return tag


@pytest.fixture(scope="module")
def sink(vps: LocalVps) -> Iterator[Sink]:
    s = Sink(vps.host_ip4, free_port(vps.host_ip4))
    s.start()
    try:
        yield s
    finally:
        s.stop()


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


# --- the stack -----------------------------------------------------------------------
class Run:
    """Every pulumi command's output, to look for secrets in afterwards."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.texts: list[tuple[str, str]] = []

    def ok(self, *args: str) -> str:
        t = time.monotonic()
        res = self.stack.run(*args)
        took = time.monotonic() - t
        print(f"pulumi {' '.join(args)}: rc={res.returncode} in {took:.1f}s")
        self.texts.append((" ".join(args), res.stdout + res.stderr))
        assert res.returncode == 0, (
            f"pulumi {' '.join(args)} failed:\n{res.stdout[-8000:]}\n{res.stderr[-4000:]}"
        )
        return res.stdout


def stack_config(vps: LocalVps, sink: Sink, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "deployTarget": "vps",
        "dnsProvider": "manual",
        "domain": DOMAIN,
        "relayHost": RELAY_HOST,
        "vpsIpv4": vps.ip4,
        "vpsIpv6": vps.ip6,
        "sshHost": vps.ip4,
        "sshPort": SSH_PORT,
        "sshHostKey": vps.host_key,
        "acmeEmail": f"postmaster@{DOMAIN}",
        "acmeServer": vps.acme_server,
        "acmeCaBundle": vps.acme_ca_bundle,
        "relayNexthop": f"[{vps.host_ip4}]:{sink.port}",
        "relayContainerName": CONTAINER,
        "dkimSelector": "one",
        "port25Probe": PROBE_HOST,
    }
    cfg.update(over)
    return cfg


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
    relay_image: str,
    sink: Sink,
    port25: Port25Listener,
) -> Iterator[Run]:
    engine = Engine(tmp_path_factory.mktemp("engine-vps"))
    stack = engine.stack(f"vps{uuid.uuid4().hex[:6]}", stack_config(vps, sink))
    stack.set_secret("sshPrivateKey", vps.private_key)
    run = Run(stack)
    t = time.monotonic()
    try:
        run.ok("up", "--yes", "--skip-preview")
        print(f"first pulumi up: {time.monotonic() - t:.1f}s")
        yield run
    finally:
        res = stack.run("destroy", "--yes", "--skip-preview")
        if res.returncode != 0:
            print(f"cleanup destroy failed:\n{res.stdout[-3000:]}\n{res.stderr[-2000:]}")


def outputs(run: Run) -> dict[str, Any]:
    return run.stack.outputs()


def assert_only_the_port25_probe_changes(run: Run) -> None:
    """The port 25 probe runs on every up; nothing else may change."""
    steps = run.stack.preview_steps()
    changed = {s["urn"].split("::")[-1] for s in steps if s["op"] != "same"}
    assert changed == {"relay-host-port25"}, changed


def secrets_of(run: Run, vps: LocalVps) -> list[str]:
    """Values that must never show: the SMTP password, the DKIM key bodies, the SSH key."""
    out = outputs(run)
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
    assert values, "found no secret values to look for"
    return values


def assert_no_secrets(texts: list[tuple[str, str]], secrets: list[str]) -> None:
    for where, text in texts:
        for s in secrets:
            assert s not in text, f"a secret value appears in the output of: {where}"


def send_and_verify(run: Run, vps: LocalVps, sink: Sink) -> bytes:
    out = outputs(run)
    ctx = ssl.create_default_context(cadata=vps.pebble_root_pem())
    subject = f"engine-vps {uuid.uuid4().hex}"
    sender = out["smtpUsername"]
    before = sink.count()
    try:
        with smtplib.SMTP(
            vps.ip4, int(out["smtpPort"]), local_hostname="client.test", timeout=30
        ) as s:
            s._host = out["smtpServer"]  # type: ignore[attr-defined]  # TLS name: relayHost
            s.starttls(context=ctx)
            s.login(out["smtpUsername"], out["smtpPassword"])
            s.sendmail(
                sender,
                ["someone@example.net"],
                make_message(sender, "someone@example.net", subject),
            )
    except (OSError, smtplib.SMTPException) as e:
        logs = vps.ssh(f"docker logs --tail 40 {CONTAINER} 2>&1", check=False).stdout
        raise AssertionError(f"submission to the relay failed: {e!r}; relay logs:\n{logs}") from e
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        got = [m for m in sink.snapshot()[before:] if subject.encode() in m.data]
        if got:
            break
        time.sleep(0.5)
    else:
        logs = vps.ssh(f"docker logs --tail 60 {CONTAINER} 2>&1", check=False).stdout
        raise AssertionError(f"the sink got nothing within 90 s; relay logs:\n{logs}")
    data = got[0].data
    assert b"DKIM-Signature:" in data, data[:2000]
    selector = out["dkimSelector"]
    assert f"s={selector};".encode() in data.replace(b" ", b"").replace(b"\r\n\t", b"")
    records = {f"{selector}._domainkey.{out['domain']}": out["dkimDnsValue"]}
    assert dkim.verify(data, dnsfunc=dnsfunc_for(records)), "dkimpy rejects the signature"
    sig = data.split(b"DKIM-Signature:", 1)[1].split(b"\r\n\r\n", 1)[0]
    assert f"d={out['domain']};".encode() in sig.replace(b" ", b"").replace(b"\r\n\t", b"")
    return data


def container_id(vps: LocalVps) -> str:
    return vps.ssh(f"docker inspect -f '{{{{.Id}}}}' {CONTAINER}").stdout.strip()


def test_up_deploys_the_relay_on_the_vps(deployed: Run, vps: LocalVps, relay_image: str) -> None:
    ps = vps.ssh(f"docker ps --filter name=^{CONTAINER}$ --format '{{{{.Image}}}} {{{{.Ports}}}}'")
    image, ports = ps.stdout.strip().split(" ", 1)
    assert image == relay_image, "the pre-loaded image was used, not a new build"
    assert f"{vps.ip4}:587->587/tcp" in ports and f"[{vps.ip6}]:587->587/tcp" in ports, ports
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


def test_mail_through_the_relay_is_dkim_signed_and_verifies(
    deployed: Run, vps: LocalVps, sink: Sink
) -> None:
    send_and_verify(deployed, vps, sink)


def test_no_secret_in_state_or_output(deployed: Run, vps: LocalVps) -> None:
    state = deployed.stack.ok("stack", "export")
    secrets = secrets_of(deployed, vps)
    assert_no_secrets([*deployed.texts, ("stack export", state)], secrets)
    assert "OPENSSH PRIVATE KEY" not in state and "BEGIN PRIVATE KEY" not in state
    text = deployed.stack.config_file.read_text()
    assert "secure:" in text and "OPENSSH" not in text


def test_second_up_and_preview_change_nothing(deployed: Run, vps: LocalVps) -> None:
    before = container_id(vps)
    assert_only_the_port25_probe_changes(deployed)
    out = deployed.ok("up", "--yes", "--skip-preview")
    assert "+-1 replaced" in out, out[-3000:]
    assert container_id(vps) == before, "the relay container was recreated"
    smtp = outputs(deployed)["outboundSmtp"]
    assert {f: r["status"] for f, r in smtp.items()} == {"ipv4": "open", "ipv6": "open"}, smtp
    assert "IPv4 open" in outputs(deployed)["gmailGuide"]


def test_new_selector_changes_only_what_it_should(deployed: Run, vps: LocalVps, sink: Sink) -> None:
    old = outputs(deployed)
    cert_before = vps.ssh(f"sha256sum {hs.cert_dir(RELAY_HOST)}/fullchain.pem").stdout
    ufw_before = vps.ssh("ufw show added").stdout
    container_before = container_id(vps)
    deployed.stack.write_config(
        {**deployed.stack.config, "dkimSelector": "two", "dkimRetiredSelectors": ["one"]}
    )
    preview = json.loads(deployed.ok("preview", "--json"))
    changed = {
        (s["op"], s["urn"].split("::")[-1]) for s in preview.get("steps", []) if s["op"] != "same"
    }
    names = {n for _, n in changed}
    print(f"a new selector changes: {sorted(changed)}")
    assert ("create", "dkim-two-key") in changed, changed
    for must in ("relay-host-secrets", "relay-deploy"):
        assert must in names, f"{must} should change: {changed}"
    for must_not in (
        "relay-host-certificate",
        "relay-host-firewall",
        "relay-host-docker",
        "relay-host-preflight",
        "dkim-one-key",
    ):
        assert must_not not in names, f"{must_not} should not change: {changed}"
    assert not [n for n in names if n.startswith("smtp-credentials")], changed
    allowed = {
        "dkim-two",
        "dkim-two-key",
        "relay-host-secrets",
        "relay-deploy",
        "relay",
        "relay-host",
        "relay-host-port25",  # runs on every up
        "mail-dns",
    }
    unexpected = {n for n in names if n not in allowed and not n.startswith("mail-dns")}
    assert not unexpected, f"unexpected changes: {changed}"

    deployed.ok("up", "--yes", "--skip-preview")
    new = outputs(deployed)
    assert new["dkimSelector"] == "two" and new["dkimDnsValue"] != old["dkimDnsValue"]
    assert new["dkimDnsValues"]["one"] == old["dkimDnsValue"], "the retired key stays published"
    assert new["smtpPassword"] == old["smtpPassword"], "passwords are kept"
    keys = vps.ssh(f"ls {hs.SECRETS_DIR}/dkim").stdout.split()
    assert sorted(keys) == ["one.private", "two.private"], keys
    assert vps.ssh(f"sha256sum {hs.cert_dir(RELAY_HOST)}/fullchain.pem").stdout == cert_before
    assert vps.ssh("ufw show added").stdout == ufw_before
    assert container_id(vps) != container_before, "the relay picked up the new key"
    data = send_and_verify(deployed, vps, sink)
    assert b"s=two;" in data.replace(b" ", b"").replace(b"\r\n\t", b"")
    assert_only_the_port25_probe_changes(deployed)


def test_destroy_removes_the_relay_keeps_ssh_and_certificate(deployed: Run, vps: LocalVps) -> None:
    secrets = secrets_of(deployed, vps)
    deployed.ok("destroy", "--yes", "--skip-preview")
    assert_no_secrets(deployed.texts, secrets)
    res = vps.ssh(f"docker ps -a --filter name=^{CONTAINER}$ --format '{{{{.Names}}}}'")
    assert res.stdout.strip() == "", "the relay container is gone"
    assert vps.ssh("echo alive").stdout.strip() == "alive", "SSH still works"
    assert f"{SSH_PORT}/tcp" in vps.ssh("ufw show added").stdout
    assert vps.ssh(f"test -s {hs.cert_dir(RELAY_HOST)}/fullchain.pem && echo kept").stdout
    assert not Path(REPO / f"Pulumi.{deployed.stack.name}.yaml").exists(), "nothing in the repo"
