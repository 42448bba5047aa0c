"""RelayHost deployed by the real Pulumi engine and pulumi-command plugin.

A fresh local VPS (tests/vps_support.py), a tiny program that builds only the
RelayHost component, and the toolchain from scripts/pulumi-toolchain.sh:
``pulumi up`` twice (the second changes nothing and ``pulumi preview
--expect-no-changes`` passes with no ``--exclude``: the outbound port 25 check is no
resource, it runs from the program on each ``up`` and still reports ``outbound_smtp``),
outbound port 25 open and then blocked by the VPS's own firewall (a warning, not a
failure, and still no change to preview), host-key pinning done by the
provider itself, secrets absent from the state and the logs, ``pulumi destroy``
removing the firewall rules it added (not SSH) and the key files, keeping the
certificate.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from pure import host_scripts as hs
from tests.engine_support import Engine, Stack, write_private, write_project
from tests.vps_support import (
    EXTRA_NAME,
    PROBE_HOST,
    RELAY_HOST,
    SSH_PORT,
    LocalVps,
    Port25Listener,
    local_vps,
    openssh_private_key,
    openssh_public_key,
    port25_listener,
)

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]

PASSWORD = os.urandom(12).hex()
DKIM_BODY = os.urandom(24).hex()
SECRET_FILES = {
    "dkim/mail.private": f"-----BEGIN PRIVATE KEY-----\n{DKIM_BODY}\n-----END PRIVATE KEY-----\n",
    "smtp-users": f"gmail@dkim-relay.test:{PASSWORD}\n",
}

PROGRAM = """\
import json, os
import pulumi
from components.host import RelayHost, RelayHostArgs

cfg = json.load(open(os.environ["DKR_HOST_CONFIG"]))
with open(cfg.pop("key_file")) as f:
    key = f.read()
with open(cfg.pop("secret_files_file")) as f:
    files = json.load(f)
host = RelayHost(
    "vps",
    RelayHostArgs(
        ssh_private_key=pulumi.Output.secret(key),
        secret_files=pulumi.Output.secret(files),
        **cfg,
    ),
)
for name in (
    "docker_ready", "cert_ready", "cert_dir", "secrets_dir", "firewall_ports", "outbound_smtp"
):
    pulumi.export(name, getattr(host, name))
"""


@pytest.fixture(scope="module")
def vps() -> Iterator[LocalVps]:
    with local_vps() as v:
        yield v


@pytest.fixture(scope="module")
def listener(vps: LocalVps) -> Iterator[Port25Listener]:
    """The port 25 probe host: the machine side of the VPS's veth (PROBE_HOST)."""
    with port25_listener(vps.host_ip4, vps.host_ip6) as lst:
        yield lst


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, vps: LocalVps) -> Engine:
    d = write_project(tmp_path_factory.mktemp("host-project"), "host-test", PROGRAM)
    write_private(d / "key", vps.private_key)
    write_private(d / "files.json", json.dumps(SECRET_FILES))
    return Engine(d, project=d, timeout=600)


def make_stack(engine: Engine, vps: LocalVps, name: str, **over: Any) -> Stack:
    project = engine.project
    cfg: dict[str, Any] = dict(
        ssh_host=vps.ip4,
        ssh_port=SSH_PORT,
        ssh_user="root",
        ssh_host_key=vps.host_key,
        key_file=str(project / "key"),
        secret_files_file=str(project / "files.json"),
        relay_host=RELAY_HOST,
        acme_email="postmaster@dkim-relay.test",
        acme_server=vps.acme_server,
        acme_extra_names=[EXTRA_NAME],
        acme_ca_bundle=vps.acme_ca_bundle,
        port25_probe=PROBE_HOST,
        vps_ipv6=vps.ip6,
        docker_restart_command="mkdir -p /var/log/dkim-relay-test && date >> "
        "/var/log/dkim-relay-test/docker-restarts.log",
        reload_command='echo "reload ${RENEWED_LINEAGE}" >> /var/log/dkim-relay-test/reload.log',
    )
    cfg.update(over)
    cfg_file = project / f"{name}.json"
    cfg_file.write_text(json.dumps(cfg))
    return engine.stack(name, env={"DKR_HOST_CONFIG": str(cfg_file)})


def assert_no_secret(text: str, where: str) -> None:
    for s in (PASSWORD, DKIM_BODY):
        assert s not in text, f"key material in {where}"


def ufw_ports(vps: LocalVps) -> set[str]:
    out = vps.ssh("ufw show added").stdout
    return {line.split()[2] for line in out.splitlines() if line.startswith("ufw allow")}


@pytest.fixture(scope="module")
def deployed(engine: Engine, vps: LocalVps, listener: Port25Listener) -> Stack:
    stack = make_stack(engine, vps, "main")
    res = stack.run("up", "--yes", "--skip-preview")
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    assert_no_secret(res.stdout + res.stderr, "pulumi up output")
    return stack


def test_up_prepares_the_host(deployed: Stack, vps: LocalVps) -> None:
    out = deployed.run("stack", "output", "--json")
    outputs = json.loads(out.stdout)
    assert outputs["cert_dir"] == hs.cert_dir(RELAY_HOST)
    assert outputs["secrets_dir"] == hs.SECRETS_DIR
    assert outputs["firewall_ports"] == [f"{SSH_PORT}/tcp", "587/tcp"]
    assert ufw_ports(vps) == {f"{SSH_PORT}/tcp", "587/tcp"}
    assert vps.ssh(f"test -s {hs.cert_dir(RELAY_HOST)}/fullchain.pem && echo ok").stdout
    modes = vps.ssh(f"stat -c '%a %U' {hs.SECRETS_DIR}/smtp-users").stdout.split()
    assert modes == ["600", "root"]
    daemon = json.loads(vps.ssh("cat /etc/docker/daemon.json").stdout)
    assert daemon["ipv6"] is True and daemon["ip6tables"] is True
    smtp = outputs["outbound_smtp"]
    print(json.dumps(smtp, indent=1))
    assert {f: r["status"] for f, r in smtp.items()} == {"ipv4": "open", "ipv6": "open"}
    assert smtp["ipv4"]["source"] == vps.ip4 and smtp["ipv6"]["source"] == vps.ip6


def changed(stack: Stack) -> set[tuple[str, str]]:
    """(op, name) of each step a preview plans, but the refresh every preview starts with
    (Pulumi.yaml: ``refresh: always``)."""
    return {
        (s["op"], s["urn"].split("::")[-1])
        for s in stack.preview_steps()
        if s["op"] not in ("same", "refresh")
    }


def test_state_keeps_secrets_encrypted(deployed: Stack) -> None:
    res = deployed.run("stack", "export")
    assert res.returncode == 0, res.stderr
    assert_no_secret(res.stdout, "the exported state")
    state = json.loads(res.stdout)
    ssh_key_marker = "OPENSSH PRIVATE KEY"
    assert ssh_key_marker not in res.stdout, "SSH private key in plain state"
    secrets_cmd = [
        r for r in state["deployment"]["resources"] if r["urn"].endswith("::vps-secrets")
    ]
    assert secrets_cmd and "ciphertext" in json.dumps(secrets_cmd[0]["inputs"]["stdin"])


def test_second_up_changes_nothing(deployed: Stack, listener: Port25Listener) -> None:
    assert changed(deployed) == set()
    # The drift check users copy from Pulumi's docs: no --exclude needed.
    res = deployed.run("preview", "--expect-no-changes")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "port25" not in res.stdout, res.stdout[-3000:]
    before = len(listener.peers)
    res = deployed.run("up", "--yes", "--skip-preview")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    out = res.stdout
    summary = out.split("Resources:", 1)[1].split("Duration:", 1)[0].split()
    assert summary[1:] == ["unchanged"], out[-3000:]
    assert "is blocked" not in out, out[-3000:]
    # The probe is no resource, and still ran from the program (IPv4 and IPv6).
    assert len(listener.peers) == before + 2, "the probe ran again (IPv4 and IPv6)"
    assert not [r for r in resources(deployed) if "port25" in r], "the probe is no resource"
    smtp = json.loads(deployed.run("stack", "output", "--json").stdout)["outbound_smtp"]
    assert {f: r["status"] for f, r in smtp.items()} == {"ipv4": "open", "ipv6": "open"}, smtp
    res = deployed.run("preview", "--expect-no-changes")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]


def resources(stack: Stack) -> list[str]:
    state = json.loads(stack.ok("stack", "export"))
    return [r["urn"] for r in state["deployment"]["resources"]]


def test_blocked_port_25_is_a_warning_not_a_failure(
    deployed: Stack, vps: LocalVps, listener: Port25Listener
) -> None:
    rule = "OUTPUT -p tcp --dport 25 -m comment --comment dkim-relay-test -j"
    blocks = [("iptables", "DROP"), ("ip6tables", "REJECT")]
    for tool, target in blocks:
        vps.ssh(f"{tool} -I {rule} {target}")
    try:
        res = deployed.run("up", "--yes", "--skip-preview")
    finally:
        for tool, target in blocks:
            vps.ssh(f"{tool} -D {rule} {target}")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    print(res.stdout[-3000:])
    for family in ("IPv4", "IPv6"):
        assert f"outbound port 25 over {family} is blocked" in res.stdout, res.stdout[-3000:]
    assert "relayNexthop" in res.stdout
    smtp = json.loads(deployed.run("stack", "output", "--json").stdout)["outbound_smtp"]
    assert smtp["ipv4"]["status"] == "blocked" and smtp["ipv6"]["status"] == "blocked", smtp
    assert smtp["ipv4"]["detail"] == "no answer within 5 s" and smtp["ipv6"]["detail"] == "refused"
    # The result lives in an output only: nothing to preview, blocked or not.
    pre = deployed.run("preview", "--expect-no-changes")
    assert pre.returncode == 0, pre.stdout[-4000:] + pre.stderr[-2000:]
    # Open again: the next up says so.
    res = deployed.run("up", "--yes", "--skip-preview")
    assert res.returncode == 0 and "is blocked" not in res.stdout, res.stdout[-3000:]
    smtp = json.loads(deployed.run("stack", "output", "--json").stdout)["outbound_smtp"]
    assert {r["status"] for r in smtp.values()} == {"open"}


def test_provider_refuses_a_host_key_that_does_not_match(
    engine: Engine, vps: LocalVps, deployed: Stack
) -> None:
    """Pinning happens in pulumi-command itself (ConnectionArgs.host_key)."""
    other = openssh_public_key(ed25519.Ed25519PrivateKey.generate())
    stack = make_stack(engine, vps, "badkey", ssh_host_key=other, preflight=False)
    res = stack.run("up", "--yes", "--skip-preview")
    assert res.returncode != 0, res.stdout[-3000:]
    text = (res.stdout + res.stderr).lower()
    assert "host key" in text or "hostkey" in text, text[-3000:]
    assert "dkim-relay[" not in res.stdout, "a script ran despite the wrong host key"
    # With the preflight on (the default), the error names the config key.
    stack2 = make_stack(engine, vps, "badkey2", ssh_host_key=other)
    res2 = stack2.run("up", "--yes", "--skip-preview")
    assert res2.returncode != 0
    assert "does not match sshHostKey" in res2.stdout + res2.stderr, res2.stdout[-3000:]


def test_wrong_private_key_is_named(engine: Engine, vps: LocalVps, deployed: Stack) -> None:
    wrong = engine.project / "wrong-key"
    write_private(wrong, openssh_private_key(ed25519.Ed25519PrivateKey.generate()))
    stack = make_stack(engine, vps, "wrongkey", key_file=str(wrong))
    res = stack.run("up", "--yes", "--skip-preview")
    assert res.returncode != 0
    assert "refused sshPrivateKey" in res.stdout + res.stderr, res.stdout[-3000:]


def test_unreachable_host_is_named(engine: Engine, vps: LocalVps, deployed: Stack) -> None:
    stack = make_stack(engine, vps, "unreachable", ssh_host=vps.unused_ip4)
    res = stack.run("up", "--yes", "--skip-preview")
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert f"cannot reach the VPS at sshHost='{vps.unused_ip4}' sshPort={SSH_PORT}" in out, out[
        -3000:
    ]


def test_destroy_removes_rules_and_keys_keeps_ssh_and_certificate(
    deployed: Stack, vps: LocalVps
) -> None:
    res = deployed.run("destroy", "--yes", "--skip-preview")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert ufw_ports(vps) == {f"{SSH_PORT}/tcp"}
    assert "Status: active" in vps.ssh("ufw status").stdout
    assert vps.ssh(f"test -e {hs.SECRETS_DIR} && echo present || echo gone").stdout.strip() == (
        "gone"
    )
    assert vps.ssh(f"test -s {hs.cert_dir(RELAY_HOST)}/fullchain.pem && echo kept").stdout
