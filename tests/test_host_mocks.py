"""RelayHost wiring under Pulumi's mocks: order, options, and where secrets go."""

from __future__ import annotations

import asyncio
import json
import shlex
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pytest
from pulumi_command import remote

from components import host as host_mod
from components.host import RelayHost, RelayHostArgs, SshTarget
from pure import host_scripts as hs
from pure import shell
from pure.config import DEFAULT_PORT25_PROBE
from tests.pulumi_harness import Mocks, Registered, strip_secrets, unwrap

pytestmark = pytest.mark.unit

SSH_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nc3NoLWtleS1zZWNyZXQtbW9jaw==\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
DKIM_KEY = "-----BEGIN PRIVATE KEY-----\nZGtpbS1zZWNyZXQtbW9jaw==\n-----END PRIVATE KEY-----\n"
PASSWORD = "smtp-secret-mock-9f8e7d"
SECRET_STRINGS = ("c3NoLWtleS1zZWNyZXQtbW9jaw", "ZGtpbS1zZWNyZXQtbW9jaw", PASSWORD)
GENERATION = "00112233445566778899aabbccddeeff"
# The port25 step's output: IPv4 blocked, IPv6 open but from another address of the /64.
PORT25_OUT = (
    f'{hs.PORT25_PREFIX}{{"family": "ipv4", "probe": "mx.example.net", "address": "192.0.2.25", '
    '"status": "blocked", "source": "203.0.113.7", "detail": "no answer within 5 s"}\n'
    f'{hs.PORT25_PREFIX}{{"family": "ipv6", "probe": "mx.example.net", "address": "2001:db8::25", '
    '"status": "open", "source": "2001:db8:7::99", "detail": "connected"}\n'
    "dkim-relay[port25]: no change\n"
)
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMockHostKeyMockHostKeyMockHostKeyMock"


@dataclass
class World:
    resources: list[Registered] = field(default_factory=list)
    kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    objects: dict[int, str] = field(default_factory=dict)

    def named(self, name: str) -> Registered:
        found = [r for r in self.resources if r.name == name]
        assert found, f"no resource {name}: {[r.name for r in self.resources]}"
        return found[0]


def command_stdout(name: str) -> str:
    if name.endswith("-secrets"):
        return f"dkim-relay[secrets]: key files changed\n{hs.GENERATION_PREFIX}{GENERATION}"
    if name.endswith("-port25"):
        return PORT25_OUT
    return "dkim-relay: no change"


def build(
    monkeypatch: pytest.MonkeyPatch,
    preview: bool = False,
    **over: Any,
) -> tuple[World, RelayHost, dict[str, Any]]:
    world = World()
    real = remote.Command

    class SpyCommand(real):  # type: ignore[misc, valid-type]
        def __init__(self, resource_name: str, *a: Any, **kw: Any) -> None:
            world.kwargs[resource_name] = kw
            super().__init__(resource_name, *a, **kw)
            world.objects[id(self)] = resource_name

    monkeypatch.setattr(remote, "Command", SpyCommand)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    pulumi.runtime.set_mocks(
        Mocks(world.resources, command_stdout=command_stdout),
        project="dkim-relay",
        stack="test",
        preview=preview,
    )
    files = {"dkim/mail.private": DKIM_KEY, "smtp-users": f"me@example.com:{PASSWORD}\n"}
    base: dict[str, Any] = dict(
        ssh_host="203.0.113.7",
        ssh_private_key=pulumi.Output.secret(SSH_KEY),
        ssh_port=2222,
        ssh_host_key=HOST_KEY,
        relay_host="relay.example.com",
        acme_email="me@example.com",
        acme_extra_names=["smtp.example.com"],
        secret_files=pulumi.Output.secret(files),
        preflight=False,
    )
    base.update(over)
    component = RelayHost("vps", RelayHostArgs(**base))
    results: dict[str, Any] = {}

    async def settle() -> None:
        for key in ("docker_ready", "cert_ready", "cert_dir", "secrets_dir", "firewall_ports"):
            results[key] = await getattr(component, key).future()
        results["revision.secret"] = await component.secrets_revision.is_secret()
        results["revision"] = await component.secrets_revision.future()
        results["outbound_smtp"] = await component.outbound_smtp.future()
        for name, kw in world.kwargs.items():
            if isinstance(kw.get("stdin"), pulumi.Output):
                results[f"{name}.stdin.secret"] = await kw["stdin"].is_secret()
            pk = kw["connection"].private_key
            results[f"{name}.key.secret"] = await pulumi.Output.from_input(pk).is_secret()
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]
        await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 30)

    loop.run_until_complete(settle())
    loop.close()
    return world, component, results


def deps(world: World, name: str) -> set[str]:
    opts = world.kwargs[name]["opts"]
    return {world.objects[id(d)] for d in opts.depends_on or []}


def test_component_type_and_children(monkeypatch: pytest.MonkeyPatch) -> None:
    world, _, results = build(monkeypatch)
    comp = [r for r in world.resources if r.type == "dkimrelay:index:RelayHost"]
    assert [r.name for r in comp] == ["vps"]
    cmds = sorted(r.name for r in world.resources if r.type == "command:remote:Command")
    assert cmds == [
        "vps-certificate",
        "vps-docker",
        "vps-firewall",
        "vps-port25",
        "vps-preflight",
        "vps-secrets",
    ]
    assert results["cert_dir"] == "/etc/letsencrypt/live/relay.example.com"
    assert results["secrets_dir"] == hs.SECRETS_DIR
    assert results["docker_ready"] == "ready" and results["cert_ready"] == "ready"
    assert results["firewall_ports"] == ["2222/tcp", "587/tcp"]
    # The secrets step's generation: random per run, not derived from the key files.
    assert results["revision.secret"] is False and results["revision"] == GENERATION


def test_ordering(monkeypatch: pytest.MonkeyPatch) -> None:
    world, comp, _ = build(monkeypatch)
    assert deps(world, "vps-preflight") == set()
    assert deps(world, "vps-firewall") == {"vps-preflight"}
    assert deps(world, "vps-docker") == {"vps-firewall"}
    assert deps(world, "vps-certificate") == {"vps-firewall", "vps-docker"}
    assert deps(world, "vps-secrets") == {"vps-preflight"}
    assert deps(world, "vps-port25") == {"vps-preflight"}
    for name, kw in world.kwargs.items():
        assert kw["opts"].parent is comp, name


def test_delete_commands_and_replacement_order(monkeypatch: pytest.MonkeyPatch) -> None:
    world, _, _ = build(monkeypatch)
    fw = world.named("vps-firewall").inputs
    assert "ufw delete allow" in fw["delete"]
    assert "certificate" in world.named("vps-certificate").inputs["create"]
    assert "delete" not in world.named("vps-certificate").inputs  # certificates are kept
    assert "delete" not in world.named("vps-docker").inputs
    assert world.kwargs["vps-firewall"]["opts"].delete_before_replace is True
    assert world.kwargs["vps-secrets"]["opts"].delete_before_replace is True


def test_connection_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    world, _, _ = build(monkeypatch)
    cmds = [r for r in world.resources if r.type == "command:remote:Command"]
    conns = {json.dumps(unwrap(r.inputs["connection"]), sort_keys=True) for r in cmds}
    assert len(conns) == 1, "one SSH connection for every step"
    conn = unwrap(world.named("vps-docker").inputs["connection"])
    assert conn["host"] == "203.0.113.7" and conn["port"] == 2222 and conn["user"] == "root"
    assert conn["hostKey"] == HOST_KEY  # pinned in the provider itself
    assert conn["privateKey"] == SSH_KEY


def test_no_secret_in_command_lines_or_plain_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    world, _, results = build(monkeypatch)
    for r in world.resources:
        plain = json.dumps(strip_secrets(r.inputs))
        for s in SECRET_STRINGS:
            assert s not in plain, f"secret in a plain input of {r.type} {r.name}"
        for key in ("create", "delete", "update"):
            value = r.inputs.get(key)
            assert value is None or isinstance(value, str), (r.name, key)
    # The key material travels only on the secrets step's stdin, as a secret.
    assert strip_secrets(world.named("vps-secrets").inputs["stdin"]) == "<secret>"
    stdin = json.loads(unwrap(world.named("vps-secrets").inputs["stdin"]))
    assert stdin["dkim/mail.private"] == DKIM_KEY
    assert results["vps-secrets.stdin.secret"] is True
    assert all(v for k, v in results.items() if k.endswith(".key.secret"))
    kw = world.kwargs["vps-secrets"]
    assert kw["logging"] == remote.Logging.NONE
    create = shlex.split(world.named("vps-secrets").inputs["create"])
    assert create == ["bash", "-c", hs.render_secrets(), "dkim-relay"]
    assert {"stdin", "stdout", "stderr"} <= set(kw["opts"].additional_secret_outputs)
    for name in ("vps-preflight", "vps-firewall", "vps-docker", "vps-certificate", "vps-port25"):
        assert "stdin" not in world.named(name).inputs


def test_non_root_user_runs_through_sudo(monkeypatch: pytest.MonkeyPatch) -> None:
    world, _, _ = build(monkeypatch, ssh_user="deploy")
    for r in world.resources:
        if r.type == "command:remote:Command":
            assert r.inputs["create"].startswith("sudo -n bash -c "), r.name


def test_without_secret_files_no_secrets_step(monkeypatch: pytest.MonkeyPatch) -> None:
    world, _, results = build(monkeypatch, secret_files=None)
    assert "vps-secrets" not in world.kwargs
    assert results["secrets_dir"] == hs.SECRETS_DIR
    assert results["revision"] == "none"


def test_preflight_runs_on_up_not_preview(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[SshTarget] = []

    def fake(target: SshTarget, key: str, timeout: float = 10) -> str:
        assert key == SSH_KEY
        calls.append(target)
        return "Linux 6.1"

    monkeypatch.setattr(host_mod, "preflight_check", fake)
    world, _, _ = build(monkeypatch, preview=True, preflight=True)
    assert calls == []
    world, _, _ = build(monkeypatch, preview=False, preflight=True)
    assert calls == [SshTarget("203.0.113.7", 2222, "root", HOST_KEY)]
    assert world.named("vps-preflight").inputs["triggers"] == ["ok"]


def test_missing_acme_email_is_an_error_naming_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="acmeEmail"):
        build(monkeypatch, acme_email="")


def test_bad_host_key_is_an_error_naming_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="sshHostKey"):
        build(monkeypatch, ssh_host_key="fingerprint-only")


def test_port25_step_runs_each_time_and_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    warned: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", lambda msg, *a, **kw: warned.append(msg))
    world, _, results = build(monkeypatch, port25_probe="mx.example.net", vps_ipv6="2001:db8:7::25")
    step = world.named("vps-port25").inputs
    assert shlex.split(step["create"]) == [
        "bash",
        "-c",
        hs.render_port25("mx.example.net", True),
        "dkim-relay",
    ]
    assert "delete" not in step
    assert world.kwargs["vps-port25"]["logging"] == remote.Logging.STDOUT_AND_STDERR
    # A new trigger each run, so each `pulumi up` probes again.
    again, _, _ = build(monkeypatch, port25_probe="mx.example.net", vps_ipv6="2001:db8:7::25")
    assert step["triggers"] != again.named("vps-port25").inputs["triggers"]
    assert results["outbound_smtp"] == hs.parse_port25(PORT25_OUT)
    assert results["outbound_smtp"]["ipv4"]["status"] == "blocked"
    # Warnings on `up` (twice: two builds): IPv4 blocked, the IPv6 source is not vpsIpv6.
    assert warned == 2 * hs.port25_warnings(hs.parse_port25(PORT25_OUT), "2001:db8:7::25")
    assert len(warned) == 4 and "relayNexthop" in warned[0] and "2001:db8:7::99" in warned[1]


def test_port25_defaults_and_no_warning_in_preview(monkeypatch: pytest.MonkeyPatch) -> None:
    warned: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", lambda msg, *a, **kw: warned.append(msg))
    world, _, _ = build(monkeypatch, preview=True)
    create = world.named("vps-port25").inputs["create"]
    assert create == shell.command_line(hs.render_port25(DEFAULT_PORT25_PROBE, False))
    assert warned == []
