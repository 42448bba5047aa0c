"""The fake Hetzner Cloud API (tests/fake_hcloud.py) driven by Hetzner's own Python client,
over loopback only: what a VPS's life asks of the API, the API's errors, and the knobs the
tests turn (a location without IPv6, a boot that fails or never ends)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hcloud import APIException, Client
from hcloud.actions import ActionFailedException, BoundAction
from hcloud.firewalls import FirewallResource, FirewallRule
from hcloud.images import Image
from hcloud.locations import Location
from hcloud.rdns import DNSPtr
from hcloud.server_types import ServerType
from hcloud.servers import BoundServer, PublicNetwork, ServerCreatePublicNetwork

from tests.fake_hcloud import BootFailed, BootRequest, FakeHcloud, default_ptr, make_token

pytestmark = pytest.mark.unit

ANYWHERE = ["0.0.0.0/0", "::/0"]
USER_DATA = "#cloud-config\nruncmd:\n  - [touch, /run/booted]\n"


def public_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


class Vps:
    """Stands in for the test's VPS: records boots and halts, answers fixed addresses."""

    def __init__(self) -> None:
        self.booted: list[BootRequest] = []
        self.halted: list[int] = []

    def boot(self, request: BootRequest) -> tuple[str, str]:
        time.sleep(0.3)  # the create action is seen running first
        self.booted.append(request)
        return "10.254.7.2", "fd42:6b72:7634:7::/64"


@pytest.fixture
def vps() -> Vps:
    return Vps()


@pytest.fixture
def token() -> str:
    return make_token()


@pytest.fixture
def fake(vps: Vps, token: str) -> Iterator[FakeHcloud]:
    with FakeHcloud(token=token, boot=vps.boot, halt=vps.halted.append) as f:
        yield f


def client(fake: FakeHcloud, token: str) -> Client:
    return Client(token=token, api_endpoint=fake.url, poll_interval=0.05)


def ident(model: Any) -> int:
    """The id of a model whose id the client types as optional."""
    assert model is not None and model.id is not None
    return int(model.id)


def public_net(server: BoundServer) -> PublicNetwork:
    assert server.public_net is not None
    return server.public_net


def ipv4(server: BoundServer) -> str | None:
    net = public_net(server).ipv4
    return None if net is None else str(net.ip)


def ipv6(server: BoundServer) -> str | None:
    net = public_net(server).ipv6
    return None if net is None else str(net.ip)


def ptrs(server: BoundServer) -> tuple[str | None, list[DNSPtr] | None]:
    """The server's PTRs as the API lists them: IPv4's, and IPv6's list."""
    net = public_net(server)
    return (
        None if net.ipv4 is None else net.ipv4.dns_ptr,
        None if net.ipv6 is None else net.ipv6.dns_ptr,
    )


def wait(actions: list[BoundAction] | None) -> list[str]:
    """Waits for each action; their commands."""
    assert actions is not None
    for action in actions:
        action.wait_until_finished()
    return sorted(str(a.command) for a in actions)


def create_server(hc: Client, name: str = "relay", **kw: Any) -> BoundServer:
    res = hc.servers.create(
        name=name,
        server_type=ServerType(name="cx22"),
        image=Image(name="debian-12"),
        location=Location(name=str(kw.pop("location", "fsn1"))),
        **kw,
    )
    assert res.action is not None
    wait([res.action, *res.next_actions])
    return hc.servers.get_by_id(ident(res.server))


def test_a_vps_life_key_firewall_server_ptrs_and_delete(
    fake: FakeHcloud, vps: Vps, token: str
) -> None:
    hc = client(fake, token)
    pub = public_key()
    # The API keeps the key without the newline a key file ends with.
    key = hc.ssh_keys.create(name="relay-key", public_key=pub + "\n")
    assert key.public_key == pub
    assert str(key.fingerprint).count(":") == 15
    rules = [
        FirewallRule(direction="in", protocol="tcp", port="587", source_ips=ANYWHERE),
        FirewallRule(direction="in", protocol="icmp", source_ips=ANYWHERE),
    ]
    made = hc.firewalls.create(name="relay", rules=rules)
    wait(made.actions)
    firewall = made.firewall

    res = hc.servers.create(
        name="relay",
        server_type=ServerType(name="cx22"),
        image=Image(name="debian-12"),
        location=Location(name="fsn1"),
        ssh_keys=[key],
        firewalls=[firewall],
        user_data=USER_DATA,
        labels={"app": "dkim-relay"},
    )
    # Answered at once, before the boot: running, no address yet.
    assert res.action.status == "running" and res.action.command == "create_server"
    assert [a.command for a in res.next_actions] == ["start_server"]
    assert res.root_password is None  # an SSH key was given
    assert res.server.status == "initializing"
    res.action.wait_until_finished()
    assert res.action.status == "success" and res.action.progress == 100
    assert res.action.finished is not None

    [booted] = vps.booted
    assert booted.server_id == res.server.id
    assert (booted.name, booted.location, booted.image, booted.server_type) == (
        "relay",
        "fsn1",
        "debian-12",
        "cx22",
    )
    assert booted.user_data == USER_DATA
    assert booted.public_keys == (pub,)
    assert booted.ipv4 and booted.ipv6

    server = hc.servers.get_by_id(ident(res.server))
    assert server.status == "running"
    assert (ipv4(server), ipv6(server)) == ("10.254.7.2", "fd42:6b72:7634:7::/64")
    assert [f.firewall.id for f in public_net(server).firewalls] == [firewall.id]
    assert server.labels == {"app": "dkim-relay"}
    # Until a PTR is set, the IPv4 has Hetzner's own and the IPv6 none.
    assert ptrs(server) == (default_ptr("10.254.7.2"), [])

    server.change_dns_ptr("10.254.7.2", "smtp.relay.test").wait_until_finished()
    server.change_dns_ptr("fd42:6b72:7634:7::1", "smtp.relay.test").wait_until_finished()
    server = hc.servers.get_by_id(ident(server))
    assert ptrs(server) == (
        "smtp.relay.test",
        [{"ip": "fd42:6b72:7634:7::1", "dns_ptr": "smtp.relay.test"}],
    )
    assert fake.ptrs() == {
        "10.254.7.2": "smtp.relay.test",
        "fd42:6b72:7634:7::1": "smtp.relay.test",
    }
    # An address outside the server's is refused.
    with pytest.raises(APIException) as err:
        server.change_dns_ptr("10.254.7.3", "smtp.relay.test")
    assert err.value.code == "invalid_input"

    # Still applied: the firewall cannot go before the server.
    with pytest.raises(APIException) as err:
        hc.firewalls.delete(firewall)
    assert err.value.code == "resource_in_use"
    server.delete().wait_until_finished()
    assert vps.halted == [server.id]
    assert hc.firewalls.get_by_id(ident(firewall)).applied_to == []
    hc.firewalls.delete(firewall)
    hc.ssh_keys.delete(key)
    assert fake.empty() and fake.ptrs() == {}
    with pytest.raises(APIException) as err:
        hc.servers.get_by_id(ident(server))
    assert err.value.code == "not_found"

    create = next(r for r in fake.requests if r.route == "POST /servers")
    assert create.body["user_data"] == USER_DATA
    assert create.body["ssh_keys"] == [key.id]
    assert create.body["firewalls"] == [{"firewall": firewall.id}]
    assert fake.unhandled == []
    assert token not in json.dumps([r.__dict__ for r in fake.requests])


def test_firewall_rules_and_resources_change_with_their_actions(
    fake: FakeHcloud, token: str
) -> None:
    hc = client(fake, token)
    server = create_server(hc)
    made = hc.firewalls.create(
        name="relay",
        rules=[FirewallRule(direction="in", protocol="tcp", port="25", source_ips=ANYWHERE)],
        resources=[FirewallResource(type="server", server=server)],
    )
    assert wait(made.actions) == ["apply_firewall", "set_firewall_rules"]
    firewall = hc.firewalls.get_by_id(ident(made.firewall))
    assert [r.server.id for r in firewall.applied_to] == [server.id]  # type: ignore[union-attr]

    # IPv6 networks come back in their canonical form.
    rule = FirewallRule(
        direction="in", protocol="tcp", port="80-443", source_ips=["2001:DB8:0::/32"]
    )
    wait(firewall.set_rules([rule]))
    assert (hc.firewalls.get_by_id(ident(firewall)).rules or [])[0].source_ips == ["2001:db8::/32"]

    wait(firewall.remove_from_resources([FirewallResource(type="server", server=server)]))
    assert public_net(hc.servers.get_by_id(ident(server))).firewalls == []
    with pytest.raises(APIException) as err:
        firewall.remove_from_resources([FirewallResource(type="server", server=server)])
    assert err.value.code == "firewall_already_removed"
    wait(firewall.apply_to_resources([FirewallResource(type="server", server=server)]))
    with pytest.raises(APIException) as err:
        firewall.apply_to_resources([FirewallResource(type="server", server=server)])
    assert err.value.code == "firewall_already_applied"

    with pytest.raises(APIException) as err:
        hc.firewalls.create(
            name="bad", rules=[FirewallRule(direction="in", protocol="tcp", source_ips=ANYWHERE)]
        )
    assert err.value.code == "invalid_input"  # a tcp rule without a port
    with pytest.raises(APIException) as err:
        hc.firewalls.create(name="relay")
    assert err.value.code == "uniqueness_error"
    assert fake.unhandled == []


def test_a_wrong_token_is_unauthorized_and_never_recorded(fake: FakeHcloud, token: str) -> None:
    wrong = make_token()
    with pytest.raises(APIException) as err:
        client(fake, wrong).servers.get_all()
    assert err.value.code == "unauthorized"
    assert err.value.message == "unable to authenticate"
    assert fake.servers == {}
    recorded = json.dumps([r.__dict__ for r in fake.requests])
    assert wrong not in recorded and token not in recorded
    # Even a body that carries the token is kept without it.
    client(fake, token).ssh_keys.create(name=token, public_key=public_key())
    assert token not in json.dumps([r.__dict__ for r in fake.requests])


def test_a_location_without_ipv6_gives_servers_no_ipv6(vps: Vps, token: str) -> None:
    with FakeHcloud(token=token, boot=vps.boot, no_ipv6_location="tst1") as fake:
        hc = client(fake, token)
        assert hc.locations.get_by_name("tst1") is not None
        server = create_server(hc, location="tst1")
        assert (ipv4(server), ipv6(server)) == ("10.254.7.2", None)
        assert vps.booted[0].ipv6 is False and vps.booted[0].location == "tst1"
        assert fake.ptrs() == {"10.254.7.2": default_ptr("10.254.7.2")}
        with pytest.raises(APIException) as err:
            server.change_dns_ptr("fd42:6b72:7634:7::1", "smtp.relay.test")
        assert err.value.code == "invalid_input"
        # And asked not to have one, a server in an IPv6 location has none either.
        other = create_server(
            hc,
            name="v4only",
            public_net=ServerCreatePublicNetwork(enable_ipv4=True, enable_ipv6=False),
        )
        assert ipv6(other) is None
        assert fake.unhandled == []


def test_a_failing_boot_fails_the_create_action(token: str) -> None:
    def boot(request: BootRequest) -> tuple[str, str]:
        raise BootFailed("the VPS did not come up", code="server_create_failed")

    with FakeHcloud(token=token, boot=boot) as fake:
        hc = client(fake, token)
        res = hc.servers.create(
            name="relay", server_type=ServerType(name="cx22"), image=Image(name="debian-12")
        )
        with pytest.raises(ActionFailedException):
            res.action.wait_until_finished()
        assert res.action.status == "error"
        assert res.action.error == {
            "code": "server_create_failed",
            "message": "the VPS did not come up",
        }
        assert hc.servers.get_by_id(ident(res.server)).status == "off"


def test_a_boot_that_never_ends_keeps_its_action_running(token: str) -> None:
    halted = threading.Event()
    with FakeHcloud(token=token, never_boot={"stuck"}, halt=lambda _: halted.set()) as fake:
        hc = client(fake, token)
        res = hc.servers.create(
            name="stuck", server_type=ServerType(name="cx22"), image=Image(name="debian-12")
        )
        time.sleep(0.3)
        res.action.reload()
        assert res.action.status == "running"
        server = hc.servers.get_by_id(ident(res.server))
        assert server.status == "initializing" and ipv4(server) is None
        with pytest.raises(APIException) as err:  # a server with a running action is locked
            server.power_off()
        assert err.value.code == "locked"
        server.delete().wait_until_finished()
        assert halted.is_set()


def test_without_a_boot_callback_addresses_come_from_a_private_pool(token: str) -> None:
    with FakeHcloud(token=token) as fake:
        hc = client(fake, token)
        one, two = create_server(hc, "one"), create_server(hc, "two")
        assert str(ipv4(one)).startswith("10.77.") and str(ipv6(one)).startswith("fd00:77:")
        assert ipv4(one) != ipv4(two) and ipv6(one) != ipv6(two)


def test_servers_are_checked_as_the_api_checks_them(fake: FakeHcloud, token: str) -> None:
    hc = client(fake, token)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": "not a hostname"}, "invalid_input"),
        ({"server_type": ServerType(name="cx99")}, "not_found"),
        ({"image": Image(name="windows-95")}, "not_found"),
        ({"location": Location(name="mars1")}, "not_found"),
        ({"server_type": ServerType(name="cax11"), "image": Image(id=114690387)}, "invalid_input"),
        ({"user_data": "x" * (32 * 1024 + 1)}, "invalid_input"),
        ({"labels": {"hetzner.cloud/x": "y"}}, "invalid_input"),
    ]
    for change, code in cases:
        args: dict[str, Any] = {
            "name": "relay",
            "server_type": ServerType(name="cx22"),
            "image": Image(name="debian-12"),
        }
        args.update(change)
        with pytest.raises(APIException) as err:
            hc.servers.create(**args)
        assert err.value.code == code, change
    create_server(hc)
    with pytest.raises(APIException) as err:
        create_server(hc)
    assert err.value.code == "uniqueness_error"
    with pytest.raises(APIException) as err:
        hc.ssh_keys.create(name="k", public_key="ssh-ed25519 not-base64")
    assert err.value.code == "invalid_input"
    assert fake.unhandled == []


def test_the_catalogue_is_found_by_name_and_id(fake: FakeHcloud, token: str) -> None:
    hc = client(fake, token)
    assert {loc.name for loc in hc.locations.get_all()} >= {"fsn1", "nbg1", "hel1"}
    fsn1 = hc.locations.get_by_name("fsn1")
    assert hc.locations.get_by_id(ident(fsn1)).name == "fsn1"
    dc = hc.datacenters.get_by_name("fsn1-dc14")
    assert dc is not None and dc.location is not None and dc.location.name == "fsn1"
    cx22 = hc.server_types.get_by_name("cx22")
    assert cx22 is not None and cx22.architecture == "x86"
    arm = hc.images.get_by_name_and_architecture("debian-12", "arm")
    x86 = hc.images.get_by_name_and_architecture("debian-12", "x86")
    assert arm is not None and x86 is not None and arm.id != x86.id
    assert hc.images.get_by_id(ident(x86)).os_version == "12"
    assert fake.unhandled == []


def test_an_unknown_route_is_a_404_and_recorded(fake: FakeHcloud, token: str) -> None:
    hc = client(fake, token)
    with pytest.raises(APIException) as err:
        hc.request("GET", "/load_balancers")
    assert err.value.code == "not_found"
    assert "GET /v1/load_balancers" in err.value.message
    with pytest.raises(APIException):
        hc.request("POST", "/servers/1/actions/rebuild", json={"image": "debian-12"})
    assert len(fake.unhandled) == 2
    assert fake.unhandled[0].startswith("GET /v1/load_balancers")
    assert fake.requests[-1].route is None and fake.requests[-1].body == {"image": "debian-12"}
