"""pure/relay_container.py: the relay container's ports, mounts and addresses, the image
name's hash, and the SSH options that pin the VPS's host key (checked by a real ssh client
against a real sshd in tests/test_relay_remote.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from components.relay import read_tree
from pure import postfix
from pure import relay_container as rc

pytestmark = pytest.mark.unit

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ8S3hvZ2Rq0m9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4"


def spec(**over: object) -> rc.RelayContainerSpec:
    base: dict[str, object] = dict(relay_host="smtp.example.com")
    return rc.RelayContainerSpec(**{**base, **over})  # type: ignore[arg-type]


def test_ports_on_both_addresses_and_465_only_when_asked() -> None:
    """IPv4 to 587/465, IPv6 to the relay's IPv6 listeners: one binding per container
    port, in container port order (as Docker reports them)."""
    s = spec(publish_ipv4="203.0.113.25", publish_ipv6="2001:db8::25")
    assert s.ports() == [
        rc.PublishedPort("203.0.113.25", 587, 587),
        rc.PublishedPort("2001:db8::25", 587, postfix.IPV6_PORTS[587]),
    ]
    s = spec(publish_ipv4="127.0.0.1", publish_ipv6="::1", submissions_465=True)
    assert s.ports() == [
        rc.PublishedPort("127.0.0.1", 465, 465),
        rc.PublishedPort("127.0.0.1", 587, 587),
        rc.PublishedPort("::1", 465, postfix.IPV6_PORTS[465]),
        rc.PublishedPort("::1", 587, postfix.IPV6_PORTS[587]),
    ]
    s = spec(publish_ipv6=None, submissions_465=True, submissions_host_port=1465)
    assert s.ports() == [
        rc.PublishedPort("0.0.0.0", 1465, 465),
        rc.PublishedPort("0.0.0.0", 587, 587),
    ]
    internal = [p.internal for p in spec(submissions_465=True).ports()]
    assert len(internal) == len(set(internal))


def test_mounts_read_only_but_the_queue() -> None:
    mounts = spec(container_name="r1").mounts("/etc/letsencrypt", "/etc/dkim-relay/secrets")
    assert mounts == [
        rc.Mount("r1-queue", rc.QUEUE_MOUNT, read_only=False, volume=True),
        rc.Mount("/etc/letsencrypt", postfix.CERT_MOUNT, read_only=True),
        rc.Mount("/etc/dkim-relay/secrets", postfix.SECRETS_DIR, read_only=True),
    ]


def test_fixed_addresses_in_the_subnets() -> None:
    s = spec(ipv4_subnet="172.30.9.0/24", ipv6_subnet="fd00:9::/64")
    assert (s.ipv4_address, s.ipv6_address) == ("172.30.9.10", "fd00:9::a")
    assert rc.gateway("172.30.9.0/24") == "172.30.9.1"
    assert s.network == "dkim-relay-net" and s.volume == "dkim-relay-queue"


def test_config_files_upload_under_the_config_dir() -> None:
    up = spec().uploads({"main.cf": "a", "sub/x": "b"})
    assert up == {f"{postfix.CONFIG_DIR}/main.cf": "a", f"{postfix.CONFIG_DIR}/sub/x": "b"}


def test_image_name_follows_content_and_exec_bit_only(tmp_path: Path) -> None:
    """Two clones of one commit name the image alike (mode bits beyond x, and the folder,
    do not count); a changed file or executable bit is a new name."""
    a, b = tmp_path / "a", tmp_path / "b" / "deeper"
    for d, mode in ((a, 0o644), (b, 0o664)):
        d.mkdir(parents=True)
        (d / "Dockerfile").write_text("FROM x\n")
        (d / "Dockerfile").chmod(mode)
        (d / "run.sh").write_text("echo\n")
        (d / "run.sh").chmod(0o755 if d == a else 0o775)
    assert rc.image_name("r", read_tree(a)) == rc.image_name("r", read_tree(b))
    (b / "run.sh").chmod(0o644)
    assert rc.image_name("r", read_tree(a)) != rc.image_name("r", read_tree(b))
    (b / "run.sh").chmod(0o755)
    (b / "Dockerfile").write_text("FROM y\n")
    assert rc.image_name("r", read_tree(a)) != rc.image_name("r", read_tree(b))
    assert rc.image_name("dkim-relay", read_tree(rc.RELAY_DIR)).startswith("dkim-relay:")


def test_ssh_opts_pin_the_key_by_value() -> None:
    opts = rc.ssh_opts(KEY)
    pairs = dict(o.split("=", 1) for o in opts[1::2])
    assert opts[0::2] == ["-o"] * (len(opts) // 2)
    assert pairs["StrictHostKeyChecking"] == "yes" and pairs["BatchMode"] == "yes"
    assert pairs["UserKnownHostsFile"] == "/dev/null"
    assert pairs["HostKeyAlgorithms"] == "ssh-ed25519"
    # The command ssh runs prints exactly one known_hosts line with the pinned key.
    out = subprocess.run(
        ["sh", "-c", pairs["KnownHostsCommand"]], capture_output=True, text=True, check=True
    ).stdout
    assert out == f"* {KEY}\n"


@pytest.mark.parametrize("bad", ["", "ssh-dss AAAA", "AAAA only"])
def test_ssh_opts_refuse_what_is_no_host_key(bad: str) -> None:
    with pytest.raises(ValueError, match="sshHostKey"):
        rc.ssh_opts(bad)
