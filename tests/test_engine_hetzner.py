"""vpsProvider hetzner under the real engine: from a cloud token to signed mail in one
`pulumi up`, against a fake Hetzner Cloud API whose servers are namespace VPSs.

* the API: tests/fake_hcloud.py on loopback (``hcloud:endpoint``), driven by the real
  hcloud plugin (the bridged Terraform provider) the toolchain built;
* its servers: tests/cloud_vps_support.py. Creating a server boots a prepared namespace
  VPS with what the stack handed over: the host key in the cloud-init user data and the
  SSH key's public half for root, sshd on 22, a dockerd, a metadata service serving the
  user data at 169.254.169.254. The namespace reaches no package mirror, so the relay's
  image is loaded into it at boot (the stack's build then takes every step from it);
* the rest as for an existing VPS (tests/test_engine_vps.py): pebble as Let's Encrypt,
  the sink as ``relayNexthop``, the private key in an ssh-agent.

The stack's config is the user's (``domain``, ``vpsProvider: hetzner``, the token, the
SSH key, the SMTP users) plus what points it at the stand-ins (endpoint, ACME server,
next hop, probe host). The tests run in file order on one stack; the error cases each
have a stack of their own.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from components.cloud_server import generate_host_key
from components.host import public_key_line
from tests.cloud_vps_support import USERDATA_URL, CloudServer, CloudVpsPool, cloud_vps_pool
from tests.common import wait_for
from tests.engine_support import REPO, Engine
from tests.fake_hcloud import BootRequest, FakeHcloud
from tests.relay_support import Sink
from tests.verify_support import Nsd, reverse_zones, zone_file
from tests.vps_docker_support import (
    STACK_DOMAIN,
    PulumiRun,
    preload_relay_image,
    send_signed,
    sink_beside,
)
from tests.vps_support import PROBE_HOST, RELAY_HOST, port25_listener, ssh_agent

pytestmark = [pytest.mark.engine, pytest.mark.timeout(2400)]

CONTAINER = f"dkr-hz-{uuid.uuid4().hex[:6]}"
TOKEN = secrets.token_hex(32)  # 64 characters, as Hetzner's


def client_key() -> str:
    return generate_host_key()[0]  # an ed25519 key like any other


@dataclass
class Cloud:
    """The fake API and its servers. ``held``: server names whose sshd is held back
    (a server that does not boot); ``booted``: server id -> its IPv4 address."""

    pool: CloudVpsPool
    fake: FakeHcloud
    held: set[str] = field(default_factory=set)
    held_requests: dict[str, tuple[BootRequest, CloudServer]] = field(default_factory=dict)
    booted: dict[int, str] = field(default_factory=dict)

    def boot(self, req: BootRequest) -> tuple[str | None, str | None]:
        if req.name in self.held:
            waiting = next(s for s in self.pool.servers if s.state == "prepared")
            self.held_requests[req.name] = (req, waiting)
            return waiting.vps.ip4, waiting.vps.ip6_network if req.ipv6 else None
        got = self.pool.boot(req.user_data, req.public_keys)
        self.booted[req.server_id] = got.ipv4
        return got.ipv4, got.ipv6_network if req.ipv6 else None

    def release(self, name: str) -> CloudServer:
        """The held-back server boots now, with what it was handed at creation."""
        req, server = self.held_requests.pop(name)
        self.held.discard(name)
        got = self.pool.boot(req.user_data, req.public_keys)
        assert got.ipv4 == server.vps.ip4
        self.booted[req.server_id] = got.ipv4
        return server

    def halt(self, server_id: int) -> None:
        if server_id in self.booted:
            self.pool.halt(self.booted.pop(server_id))


@pytest.fixture(scope="module")
def cloud() -> Iterator[Cloud]:
    def preload(server: CloudServer) -> None:
        assert server.docker is not None
        preload_relay_image(server.docker, CONTAINER)

    with cloud_vps_pool(on_boot=preload) as pool:
        holder: list[Cloud] = []
        with FakeHcloud(
            TOKEN, boot=lambda r: holder[0].boot(r), halt=lambda i: holder[0].halt(i)
        ) as fake:
            holder.append(Cloud(pool, fake))
            yield holder[0]
            assert fake.unhandled == [], fake.unhandled


def stack_config(cloud: Cloud, server: CloudServer, sink: Sink, **over: Any) -> dict[str, Any]:
    """A user's hetzner stack, pointed at the stand-ins of ``server`` (still prepared)."""
    vps = server.vps
    cfg: dict[str, Any] = {
        "domain": STACK_DOMAIN,
        "vpsProvider": "hetzner",
        "smtpUsers": ["gmail"],
        "relayHost": RELAY_HOST,
        "acmeEmail": f"postmaster@{STACK_DOMAIN}",
        "dkimSelector": "one",
        "relayContainerName": CONTAINER,
        # The stand-ins: the fake API, pebble, the sink, the port 25 probe.
        "hcloud:endpoint": cloud.fake.url,
        "hcloud:pollInterval": "200ms",
        "acmeServer": vps.acme_server,
        "acmeCaBundle": vps.acme_ca_bundle,
        "relayNexthop": f"[{vps.host_ip4}]:{sink.port}",
        "port25Probe": PROBE_HOST,
    }
    cfg.update(over)
    return cfg


@dataclass
class OwnStack:
    run: PulumiRun
    server: CloudServer
    sink: Sink
    key: str  # sshPrivateKey


@contextmanager
def own_stack(
    tmp_path: Path, cloud: Cloud, server: CloudServer, token: str, **over: Any
) -> Iterator[OwnStack]:
    """A stack of its own, pointed at ``server`` (still prepared) and its stand-ins: its
    sink, its pebble, the port 25 probe host, an ssh-agent with the stack's key."""
    key = client_key()
    server.vps.private_key = key  # what LocalVps.ssh logs in with
    vps = server.vps
    with (
        sink_beside(vps) as sink,
        ssh_agent(key) as agent,
        port25_listener(vps.host_ip4, vps.host_ip6),
    ):
        stack = Engine(tmp_path).stack(
            f"hz{uuid.uuid4().hex[:6]}", stack_config(cloud, server, sink, **over), env=agent
        )
        stack.set_secret("sshPrivateKey", key)
        stack.set_secret("hcloud:token", token)
        try:
            yield OwnStack(PulumiRun(stack), server, sink, key)
        finally:
            stack.run("stack", "rm", "--yes", "--force")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, cloud: Cloud) -> Iterator[OwnStack]:
    """The user's stack, after its first and only `pulumi up` (kept in ``run.texts``)."""
    with own_stack(tmp_path_factory.mktemp("hetzner"), cloud, cloud.pool.prepare(), TOKEN) as st:
        try:
            st.run.ok("up", "--yes", "--skip-preview")
            yield st
        finally:
            st.run.run("destroy", "--yes", "--skip-preview")


# --- the happy path, in file order ------------------------------------------------------
def test_one_up_creates_the_server_and_deploys_the_relay(cloud: Cloud, deployed: OwnStack) -> None:
    out = deployed.run.outputs()
    fake, vps = cloud.fake, deployed.server.vps
    assert len(fake.servers) == 1 and len(fake.ssh_keys) == 1 and len(fake.firewalls) == 1
    (srv,) = fake.servers.values()
    assert srv.name == RELAY_HOST
    # The server's addresses are the stack's, and both PTRs name the relay.
    assert (out["vpsIpv4"], out["vpsIpv6"]) == (vps.ip4, vps.ip6)
    assert fake.ptrs() == {vps.ip4: RELAY_HOST, vps.ip6: RELAY_HOST}
    # It let in the stack's own key and offers the host key the stack generated.
    (ssh_key,) = fake.ssh_keys.values()
    assert ssh_key.public_key.split()[:2] == (public_key_line(deployed.key) or "").split()
    assert deployed.server.host_keys == [out["sshHostKey"]]
    # The records take the server's addresses.
    records = {(r["type"], r["name"]): r["content"] for r in out["dnsRecords"]}
    assert records[("A", RELAY_HOST)] == vps.ip4 and records[("AAAA", RELAY_HOST)] == vps.ip6
    # A message submitted with the stack's credentials arrives signed (dkimpy).
    send_signed(out, vps, deployed.sink, CONTAINER)


def test_the_cloud_firewall_opens_only_what_the_relay_needs(
    cloud: Cloud, deployed: OwnStack
) -> None:
    (fw,) = cloud.fake.firewalls.values()
    ports = sorted((r["direction"], r["port"]) for r in fw.rules)
    assert ports == [("in", "22"), ("in", "465"), ("in", "587"), ("in", "80")]
    assert fw.servers() == list(cloud.fake.servers), "the firewall is on the server"


def test_verify_finds_both_ptrs(tmp_path: Path, cloud: Cloud, deployed: OwnStack) -> None:
    """`dkim-relay verify` against nsd serving the stack's zone snippet and the PTRs the
    fake API recorded (as Hetzner's reverse zones would)."""
    out = deployed.run.outputs()
    zones = {f"{STACK_DOMAIN}.": zone_file(STACK_DOMAIN, out["zoneSnippet"])}
    nsd = Nsd(tmp_path / "nsd", zones | reverse_zones(cloud.fake.ptrs()))
    try:
        outputs = tmp_path / "outputs.json"
        outputs.write_text(json.dumps(out))
        cafile = tmp_path / "pebble-root.pem"
        cafile.write_text(deployed.server.vps.pebble_root_pem())
        res = subprocess.run(
            [
                str(REPO / "bin" / "dkim-relay"),
                "verify",
                "--json",
                "--outputs",
                str(outputs),
                "--nameserver",
                f"{nsd.host}:{nsd.port}",
                "--cafile",
                str(cafile),
                "--timeout",
                "10",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        nsd.stop()
    report = json.loads(res.stdout)
    status = {c["name"]: c["status"] for c in report["checks"]}
    vps = deployed.server.vps
    assert status[f"dns.ptr[{vps.ip4}]"] == "PASS", report
    assert status[f"dns.ptr[{vps.ip6}]"] == "PASS", report
    # The rest of the live check too (warnings only: DMARC p=none, no rua).
    assert [n for n, st in status.items() if st == "FAIL"] == [], report


def test_a_second_up_changes_nothing(deployed: OwnStack) -> None:
    deployed.run.ok("preview", "--expect-no-changes")
    out = deployed.run.ok("up", "--yes", "--skip-preview", "--expect-no-changes")
    assert "unchanged" in out


def test_the_relay_cannot_read_the_user_data(deployed: OwnStack) -> None:
    """The metadata service serves the host key's private half; the host still reads it,
    the relay's containers do not, also after a ufw reload (the rule is in after.rules)."""
    vps = deployed.server.vps
    assert "ed25519_private" in vps.run_inside(f"curl -sS --max-time 10 {USERDATA_URL}").stdout
    probe = (
        "exec 3<>/dev/tcp/169.254.169.254/80 && "
        "printf 'GET /hetzner/v1/userdata HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
    )

    def from_relay() -> subprocess.CompletedProcess[str]:
        return vps.run_inside(
            f'docker exec {CONTAINER} timeout 10 bash -c "{probe}"', check=False, timeout=60
        )

    res = from_relay()
    assert res.returncode != 0 and "ed25519_private" not in res.stdout, res.stdout
    vps.run_inside("ufw reload")
    res = from_relay()
    assert res.returncode != 0 and "ed25519_private" not in res.stdout, res.stdout
    # Without the rule the relay would read it: the check above can fail.
    rule = "-d 169.254.169.254/32 -m comment --comment 'dkim-relay metadata' -j REJECT"
    vps.run_inside(f"iptables -D DOCKER-USER {rule}")
    try:
        assert "ed25519_private" in from_relay().stdout
    finally:
        vps.run_inside(f"iptables -I DOCKER-USER 1 {rule}")


def test_no_secret_in_plain_state_or_output(deployed: OwnStack) -> None:
    state = deployed.run.ok("stack", "export")
    texts = [state, *(t for _, t in deployed.run.texts)]
    host_private = deployed.server.cloud_init.host_keys["ed25519"]  # type: ignore[union-attr]
    for text in texts:
        assert TOKEN not in text
        assert host_private.strip().splitlines()[1] not in text
        assert deployed.key.strip().splitlines()[1] not in text


def test_destroy_deletes_server_firewall_keys_and_ptrs(cloud: Cloud, deployed: OwnStack) -> None:
    deployed.run.ok("destroy", "--yes", "--skip-preview")
    fake = cloud.fake
    assert (fake.servers, fake.ssh_keys, fake.firewalls, fake.ptrs()) == ({}, {}, {}, {})
    assert deployed.server.state == "halted"


# --- errors: each names its cause; what it leaves, the next run finishes or removes ------
def fails_saying(run: PulumiRun, *cmd: str, words: str) -> None:
    res = run.run(*cmd)
    text = res.stdout + res.stderr
    assert res.returncode != 0 and words in text, text[-3000:]
    print(next(line for line in text.splitlines() if words in line))


def finishes_on_the_same_server(run: PulumiRun, cloud: Cloud, server: CloudServer) -> None:
    """The next `up` takes the server in the state over: the same one, its PTRs set, a
    clean preview after; `destroy` then leaves nothing in the fake."""
    ids = list(cloud.fake.servers)
    run.ok("up", "--yes", "--skip-preview")
    assert list(cloud.fake.servers) == ids and len(ids) == 1
    name = run.stack.config["relayHost"]
    assert cloud.fake.ptrs() == {server.vps.ip4: name, server.vps.ip6: name}
    run.ok("preview", "--expect-no-changes")
    run.ok("destroy", "--yes", "--skip-preview")
    assert cloud.fake.empty(), (cloud.fake.servers, cloud.fake.firewalls, cloud.fake.ssh_keys)


@pytest.fixture
def spare(cloud: Cloud) -> CloudServer:
    """A prepared server (the one an error test left unbooted, or a new one)."""
    waiting = next((s for s in cloud.pool.servers if s.state == "prepared"), None)
    return waiting or cloud.pool.prepare()


def test_a_preview_of_a_new_stack_makes_nothing(
    tmp_path: Path, cloud: Cloud, spare: CloudServer
) -> None:
    """A pull request's preview: the whole plan, only look-ups at the API."""
    with own_stack(tmp_path, cloud, spare, TOKEN, relayHost="plan.dkim-relay.test") as st:
        before = len(cloud.fake.requests)
        out = st.run.ok("preview")
        for created in ("hcloud:index:Server", "hcloud:index:Rdns", "docker:index:Container"):
            assert f"+  {created}" in out, out[-3000:]
        made = [r for r in cloud.fake.requests[before:] if r.method != "GET"]
        assert made == [] and cloud.fake.empty(), made


def test_a_wrong_token_stops_before_anything_is_made(
    tmp_path: Path, cloud: Cloud, spare: CloudServer
) -> None:
    with own_stack(tmp_path, cloud, spare, secrets.token_hex(32)) as st:
        run = st.run
        before = len(cloud.fake.requests)
        words = "hcloud:token was refused by the Hetzner Cloud API"
        fails_saying(run, "preview", words=words)
        fails_saying(run, "up", "--yes", "--skip-preview", words=words)
        made = [r for r in cloud.fake.requests[before:] if r.method != "GET"]
        assert made == [] and cloud.fake.empty(), made


def test_a_location_without_ipv6_is_named_and_destroy_cleans_up(
    tmp_path: Path, cloud: Cloud, spare: CloudServer
) -> None:
    name = "noipv6.dkim-relay.test"
    cloud.held.add(name)  # nothing to boot: the error comes first
    over = {"relayHost": name, "hetznerLocation": "ipv4only1", "serverBootTimeout": 10}
    try:
        with own_stack(tmp_path, cloud, spare, TOKEN, **over) as st:
            run = st.run
            words = "hetznerLocation 'ipv4only1' got no IPv6 address"
            fails_saying(run, "up", "--yes", "--skip-preview", words=words)
            assert "did not answer SSH" not in run.texts[-1][1], "no wait for a refused server"
            assert name not in cloud.fake.ptrs().values(), "no PTR set for a refused server"
            run.ok("destroy", "--yes", "--skip-preview")
            assert cloud.fake.empty()
    finally:
        cloud.held.discard(name)
        cloud.held_requests.pop(name, None)


def test_a_server_that_does_not_boot_is_named_and_the_next_up_finishes(
    tmp_path: Path, cloud: Cloud, spare: CloudServer
) -> None:
    name = "late.dkim-relay.test"
    cloud.held.add(name)
    try:
        with own_stack(tmp_path, cloud, spare, TOKEN, relayHost=name, serverBootTimeout=10) as st:
            run = st.run
            words = "did not answer SSH on port 22 within 10 s (serverBootTimeout)"
            fails_saying(run, "up", "--yes", "--skip-preview", words=words)
            cloud.release(name)  # it boots after all
            finishes_on_the_same_server(run, cloud, spare)
    finally:
        cloud.held.discard(name)


def test_a_create_that_never_finishes_stops_up_and_the_next_up_finishes(
    tmp_path: Path, cloud: Cloud, spare: CloudServer
) -> None:
    """The API never reports the server created (its create action stays running): `up`
    stops after serverBootTimeout with the provider's words; once it is created after
    all, the next `up` goes on."""
    name = "stuck.dkim-relay.test"
    cloud.fake.never_boot.add(name)
    try:
        with own_stack(tmp_path, cloud, spare, TOKEN, relayHost=name, serverBootTimeout=10) as st:
            run = st.run
            words = "context deadline exceeded: remaining running actions"
            fails_saying(run, "up", "--yes", "--skip-preview", words=words)
            cloud.fake.finish_boot(name)
            wait_for(
                "the server created",
                lambda: all(s.status == "running" for s in cloud.fake.servers.values()),
                300,
            )
            finishes_on_the_same_server(run, cloud, spare)
    finally:
        cloud.fake.never_boot.discard(name)
