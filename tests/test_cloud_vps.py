"""The namespace VPS booted as a cloud server (tests/cloud_vps_support.py): sshd on port 22
with exactly the host key and client keys handed over, the metadata service answering
the user_data on the VPS and in its containers, and halt/boot of tests/vps_support.py."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ed25519

from components.host import SshTarget, run_over_ssh
from tests.cloud_vps_support import (
    USERDATA_PATH,
    BootedServer,
    CloudInitError,
    CloudServer,
    CloudVpsPool,
    cloud_vps_pool,
    parse_user_data,
    read_user_data_on,
)
from tests.relay_support import ensure_engine
from tests.vps_support import (
    PEBBLE_PORT,
    local_vps,
    openssh_private_key,
    openssh_public_key,
)

pytestmark = pytest.mark.e2e


def keypair() -> tuple[str, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    return openssh_private_key(key), openssh_public_key(key)


def cloud_config(host_private: str, host_public: str, **more: Any) -> str:
    doc = {
        "ssh_keys": {"ed25519_private": host_private, "ed25519_public": host_public},
        "ssh_deletekeys": True,
        "ssh_genkeytypes": [],
        **more,
    }
    return "#cloud-config\n" + yaml.safe_dump(doc)


def refused(port: int, host: str) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (its parent may reap it later)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@dataclass
class Cloud:
    pool: CloudVpsPool
    server: CloudServer
    booted: BootedServer
    user_data: str
    host_public: str
    client_private: str


@pytest.fixture(scope="module")
def cloud() -> Iterator[Cloud]:
    host_private, host_public = keypair()
    client_private, client_public = keypair()
    with cloud_vps_pool() as pool:
        prepared = pool.prepare()
        # Known before boot: what the stack's config needs.
        assert prepared.vps.acme_server.endswith(f":{PEBBLE_PORT}/dir")
        assert os.path.isfile(prepared.vps.acme_ca_bundle)
        assert not prepared.vps.booted and refused(22, prepared.vps.ip4)
        user_data = cloud_config(host_private, host_public)
        booted = pool.boot(user_data, [client_public + " stack-key"])
        server = pool.server(booted.ipv4)
        assert server is prepared
        server.vps.private_key = client_private  # the test's, as the stack's would be
        yield Cloud(pool, server, booted, user_data, host_public, client_private)


def test_boot_reports_the_ipv4_and_the_64_whose_first_address_is_the_vps(cloud: Cloud) -> None:
    vps = cloud.server.vps
    assert cloud.booted.ipv4 == vps.ip4
    network = ipaddress.ip_network(cloud.booted.ipv6_network)
    assert network.prefixlen == 64 and cloud.booted.ipv6_network == vps.ip6_network
    assert ipaddress.ip_address(vps.ip6) == network[1]
    assert ipaddress.ip_address(vps.host_ip6) in network and vps.host_ip6 != vps.ip6
    assert vps.ssh_port == 22 and vps.target.port == 22
    assert vps.host_key.split() == cloud.host_public.split()[:2]


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_ssh_pinned_to_the_handed_host_key(cloud: Cloud, family: str) -> None:
    vps = cloud.server.vps
    host = vps.ip4 if family == "ipv4" else vps.ip6
    res = run_over_ssh(
        SshTarget(host, 22, "root", cloud.host_public), cloud.client_private, "id -u"
    )
    assert res.returncode == 0 and res.stdout.strip() == "0", res.stderr
    assert vps.ssh("id -un").stdout.strip() == "root"


def test_another_pinned_host_key_is_refused(cloud: Cloud) -> None:
    _, other = keypair()
    target = SshTarget(cloud.booted.ipv4, 22, "root", other)
    res = run_over_ssh(target, cloud.client_private, "true")
    assert res.returncode == 255
    assert "Host key verification failed" in res.stderr, res.stderr


def test_a_client_key_not_handed_over_is_refused(cloud: Cloud) -> None:
    other, _ = keypair()
    res = run_over_ssh(SshTarget(cloud.booted.ipv4, 22, "root", cloud.host_public), other, "true")
    assert res.returncode == 255 and "Permission denied" in res.stderr, res.stderr


def test_sshd_offers_only_the_handed_host_key(cloud: Cloud) -> None:
    # cloud-init generates no key of its own when user_data hands keys over.
    assert cloud.server.host_keys == [cloud.server.vps.host_key]
    res = cloud.server.vps.run_inside(f"ssh-keyscan -T 5 -p 22 {cloud.booted.ipv4} 2>/dev/null")
    offered = [line.split()[1:3] for line in res.stdout.splitlines() if line.strip()]
    assert offered == [cloud.host_public.split()[:2]], res.stdout


def test_the_metadata_service_answers_the_user_data_on_the_vps(cloud: Cloud) -> None:
    res = read_user_data_on(cloud.server.vps)
    assert res.returncode == 0, res.stderr
    assert res.stdout == cloud.user_data
    assert (cloud.booted.ipv4, USERDATA_PATH) in cloud.server.metadata.requests()
    missing = cloud.server.vps.run_inside(
        "curl -s -o /dev/null -w '%{http_code}' http://169.254.169.254/hetzner/v1/other",
        check=False,
    )
    assert missing.stdout == "404"


def test_a_container_on_the_vps_reads_the_user_data_too(cloud: Cloud) -> None:
    """As on a real server: nothing between a container and the metadata service but
    Docker's forwarding (a later test checks what the stack does about it)."""
    docker = cloud.server.docker
    assert docker is not None
    ensure_engine()
    docker.load_image("debian:bookworm-slim")
    get = (
        '$s = IO::Socket::INET->new(PeerAddr => "169.254.169.254:80", Timeout => 10) '
        'or die "connect: $@\\n"; '
        'print $s "GET /hetzner/v1/userdata HTTP/1.0\\r\\nHost: 169.254.169.254\\r\\n\\r\\n"; '
        "local $/; print <$s>;"
    )
    res = docker.docker(
        "run", "--rm", "debian:bookworm-slim", "perl", "-MIO::Socket::INET", "-e", get
    )
    answer = res.stdout.decode()
    assert answer.startswith("HTTP/1.0 200"), answer[:500]
    assert answer.split("\r\n\r\n", 1)[1] == cloud.user_data


def test_user_data_without_an_ed25519_host_key_fails_clearly(cloud: Cloud) -> None:
    host_private, host_public = keypair()
    bad = {
        "no ssh_keys": "#cloud-config\nssh_deletekeys: true\n",
        "not cloud-config": cloud_config(host_private, host_public)[len("#cloud-config") :],
        "public of another key": cloud_config(host_private, keypair()[1]),
        "a command to run": cloud_config(host_private, host_public, runcmd=["true"]),
    }
    messages = {}
    for name, user_data in bad.items():
        with pytest.raises(CloudInitError) as e:
            cloud.pool.boot(user_data, [])
        messages[name] = str(e.value)
    assert "no SSH host key (ssh_keys.ed25519_private)" in messages["no ssh_keys"]
    assert "'#cloud-config'" in messages["not cloud-config"]
    assert "ed25519_public is not the public half" in messages["public of another key"]
    assert "['runcmd']" in messages["a command to run"]
    # Refused before anything booted: no VPS was prepared for them either.
    assert [s.state for s in cloud.pool.servers] == ["running"]
    parsed = parse_user_data(cloud.user_data)
    assert list(parsed.host_keys) == ["ed25519"] and parsed.deletekeys


def test_halt_on_delete_stops_docker_and_sshd(cloud: Cloud) -> None:
    """Last of the module's tests on the booted server: it deletes it."""
    vps = cloud.server.vps
    docker = cloud.server.docker
    assert docker is not None
    cloud.pool.halt(cloud.booted.ipv4)
    assert cloud.server.state == "halted" and cloud.server.docker is None
    assert docker.proc.poll() is not None
    assert not vps.booted and refused(22, vps.ip4)
    with pytest.raises(KeyError):
        cloud.pool.server(cloud.booted.ipv4)
    # The prepared machine stays until the pool ends: pebble, the metadata service.
    with socket.create_connection((vps.host_ip4, PEBBLE_PORT), timeout=5):
        pass
    assert read_user_data_on(vps).stdout == cloud.user_data


def test_local_vps_boot_halt_and_boot_again() -> None:
    host1, host1_pub = keypair()
    client, client_pub = keypair()
    with local_vps(boot=False, ssh_port=22, ipv6_vps_host=1) as vps:
        assert vps.ip6.endswith("::1") and vps.host_ip6.endswith("::2")
        assert not vps.booted and vps.host_key == "" and refused(22, vps.ip4)
        vps.private_key = client
        vps.boot(host1, [client_pub])
        assert vps.host_key.split() == host1_pub.split()[:2]
        with pytest.raises(RuntimeError, match="already booted"):
            vps.boot(host1, [client_pub])
        # A daemon started on the VPS after boot, detached from its SSH session.
        pid = int(vps.ssh("setsid sleep 600 </dev/null >/dev/null 2>&1 & echo $!").stdout.strip())
        assert running(pid)
        vps.halt()
        assert refused(22, vps.ip4) and vps.sshd_pid == 0
        assert not running(pid)
        os.kill(vps.ns_pid, 0)  # the namespaces' holder stays, the overlays with it
        with socket.create_connection((vps.host_ip4, PEBBLE_PORT), timeout=5):
            pass
        host2, host2_pub = keypair()
        vps.boot(host2, [client_pub])
        assert vps.ssh("echo again").stdout.strip() == "again"
        old = run_over_ssh(SshTarget(vps.ip4, 22, "root", host1_pub), client, "true")
        assert old.returncode == 255 and "Host key verification failed" in old.stderr
