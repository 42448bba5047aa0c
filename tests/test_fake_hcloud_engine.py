"""The real Pulumi engine and hcloud provider against the fake Hetzner Cloud API: a tiny
program with an SSH key, a firewall, a server and its two PTRs goes up, comes back
unchanged (refreshed), changes its firewall rules and server labels in place, and is
destroyed, every request the provider makes answered by the fake (nothing in
``fake.unhandled``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from components.cloud_server import generate_host_key
from tests.engine_support import Engine, write_project
from tests.fake_hcloud import BootRequest, FakeHcloud, make_token

pytestmark = pytest.mark.engine

PROGRAM = """
import pulumi
import pulumi_hcloud as hcloud

cfg = pulumi.Config()
anywhere = ["0.0.0.0/0", "::/0"]
ports = cfg.require_object("ports")
key = hcloud.SshKey("key", name="relay-key", public_key=cfg.require("publicKey"))
firewall = hcloud.Firewall(
    "firewall",
    name="relay",
    rules=[
        hcloud.FirewallRuleArgs(direction="in", protocol="tcp", port=p, source_ips=anywhere)
        for p in ports
    ]
    + [hcloud.FirewallRuleArgs(direction="in", protocol="icmp", source_ips=anywhere)],
)
server = hcloud.Server(
    "vps",
    name="relay",
    image="debian-12",
    server_type="cx22",
    location="fsn1",
    user_data=cfg.require("userData"),
    ssh_keys=[key.id],
    firewall_ids=[firewall.id.apply(int)],
    public_nets=[hcloud.ServerPublicNetArgs(ipv4_enabled=True, ipv6_enabled=True)],
    labels={"stage": cfg.require("stage")},
)
server_id = server.id.apply(int)
ptr4 = hcloud.Rdns(
    "ptr4", server_id=server_id, ip_address=server.ipv4_address, dns_ptr="smtp.relay.test"
)
ptr6 = hcloud.Rdns(
    "ptr6", server_id=server_id, ip_address=server.ipv6_address, dns_ptr="smtp.relay.test"
)
pulumi.export("ipv4", server.ipv4_address)
pulumi.export("ipv6", server.ipv6_address)
pulumi.export("ipv6Network", server.ipv6_network)
"""

USER_DATA = "#cloud-config\nruncmd:\n  - [touch, /run/booted-by-the-fake]\n"


def test_the_provider_creates_refreshes_and_destroys_on_the_fake(tmp_path: Path) -> None:
    _, public = generate_host_key()
    booted: list[BootRequest] = []
    halted: list[int] = []

    def boot(request: BootRequest) -> tuple[str, str]:
        time.sleep(2)  # as a VPS takes a while; the provider polls the create action
        booted.append(request)
        return "10.254.7.2", "fd42:6b72:7634:7::/64"

    token = make_token()
    with FakeHcloud(token=token, boot=boot, halt=halted.append) as fake:
        engine = Engine(
            tmp_path, project=write_project(tmp_path / "project", "fake-hcloud", PROGRAM)
        )
        stack = engine.stack("test")
        for key, value in {
            "hcloud:endpoint": fake.url,
            "hcloud:pollInterval": "200ms",
            "hcloud:pollFunction": "constant",
            "fake-hcloud:userData": USER_DATA,
            "fake-hcloud:publicKey": public,
            "fake-hcloud:ports": json.dumps(["22", "587"]),
            "fake-hcloud:stage": "one",
        }.items():
            stack.ok("config", "set", key, value)
        stack.set_secret("hcloud:token", token)

        stack.ok("up", "--yes", "--skip-preview")
        assert fake.unhandled == []
        outputs = stack.outputs()
        assert outputs["ipv4"] == "10.254.7.2"
        assert outputs["ipv6"] == "fd42:6b72:7634:7::1"
        assert outputs["ipv6Network"] == "fd42:6b72:7634:7::/64"
        assert fake.ptrs() == {
            "10.254.7.2": "smtp.relay.test",
            "fd42:6b72:7634:7::1": "smtp.relay.test",
        }
        [request] = booted
        assert (request.name, request.location, request.image, request.server_type) == (
            "relay",
            "fsn1",
            "debian-12",
            "cx22",
        )
        assert request.user_data == USER_DATA
        assert request.public_keys == (public,)
        [server] = fake.servers.values()
        [firewall] = fake.firewalls.values()
        assert firewall.servers() == [server.id]
        assert {r["port"] for r in firewall.rules} == {"22", "587", None}
        assert server.labels == {"stage": "one"}

        mark = len(fake.requests)
        stack.ok("up", "--yes", "--skip-preview")
        stack.ok("preview", "--expect-no-changes")
        changing = [r for r in fake.requests[mark:] if r.method != "GET"]
        assert changing == [], "a converged stack changed something"
        assert fake.unhandled == []

        # Changed in place: the firewall's rules, the server's labels.
        stack.ok("config", "set", "fake-hcloud:ports", json.dumps(["22", "25", "587"]))
        stack.ok("config", "set", "fake-hcloud:stage", "two")
        mark = len(fake.requests)
        stack.ok("up", "--yes", "--skip-preview")
        changed = sorted(str(r.route) for r in fake.requests[mark:] if r.method != "GET")
        assert changed == [
            "POST /firewalls/{id}/actions/set_rules",
            "PUT /servers/{id}",
        ]
        assert {r["port"] for r in firewall.rules} == {"22", "25", "587", None}
        assert server.labels == {"stage": "two"}
        assert list(fake.servers) == [server.id] and len(booted) == 1
        stack.ok("preview", "--expect-no-changes")
        assert fake.unhandled == []

        stack.ok("destroy", "--yes", "--skip-preview")
        assert fake.empty(), (fake.servers, fake.firewalls, fake.ssh_keys)
        assert halted == [server.id]
        assert fake.unhandled == []
        assert token not in json.dumps([r.__dict__ for r in fake.requests])
