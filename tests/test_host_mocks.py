"""RelayHost wiring under Pulumi's mocks: order, options, and where secrets go; the
outbound port 25 check the program runs over SSH during `up` (no resource)."""

from __future__ import annotations

import asyncio
import json
import shlex
import subprocess
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pytest

from components import host as host_mod
from components.host import RelayHost, RelayHostArgs, SshTarget, agent_problem
from pure import host_scripts as hs
from pure import shell
from pure.config import DEFAULT_PORT25_PROBE
from tests.pulumi_harness import Mocks, Run, drain, set_mocks, settle, strip_secrets, unwrap

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
class Probe:
    """Stands in for ``run_over_ssh``: records each call, answers with ``result``."""

    result: subprocess.CompletedProcess[str] = field(
        default_factory=lambda: subprocess.CompletedProcess([], 0, PORT25_OUT, "")
    )
    calls: list[tuple[SshTarget, str, str]] = field(default_factory=list)

    def __call__(
        self,
        target: SshTarget,
        private_key: str,
        command: str,
        stdin: str | None = None,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess[str]:
        self.calls.append((target, private_key, command))
        return self.result


@pytest.fixture(autouse=True)
def probe(monkeypatch: pytest.MonkeyPatch) -> Probe:
    """No test here reaches a VPS: the program's SSH calls are replaced."""
    fake = Probe()
    monkeypatch.setattr(host_mod, "run_over_ssh", fake)

    def no_preflight(*_: Any, **__: Any) -> str:
        raise AssertionError("preflight_check called: pass preflight=False or replace it")

    monkeypatch.setattr(host_mod, "preflight_check", no_preflight)
    return fake


def command_stdout(name: str) -> str:
    if name.endswith("-secrets"):
        return f"dkim-relay[secrets]: key files changed\n{hs.GENERATION_PREFIX}{GENERATION}"
    return "dkim-relay: no change"


def build(preview: bool = False, **over: Any) -> tuple[Run, RelayHost, dict[str, Any]]:
    run = Run()
    set_mocks(Mocks(run.resources, command_stdout=command_stdout), preview)
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
    loop = asyncio.get_event_loop()
    try:
        component = RelayHost("vps", RelayHostArgs(**base))
    except Exception:
        loop.run_until_complete(drain())
        raise
    results: dict[str, Any] = {}

    async def collect() -> None:
        for key in ("docker_ready", "cert_ready", "cert_dir", "secrets_dir", "firewall_ports"):
            results[key] = await getattr(component, key).future()
        results["revision.secret"] = await component.secrets_revision.is_secret()
        results["revision"] = await component.secrets_revision.future()
        results["outbound_smtp"] = await component.outbound_smtp.future()
        results["outbound_smtp.secret"] = await component.outbound_smtp.is_secret()
        results["docker_host"] = await component.docker_host.future()
        await settle()

    loop.run_until_complete(collect())
    return run, component, results


STEPS = ["vps-certificate", "vps-docker", "vps-firewall", "vps-preflight", "vps-secrets"]


def test_component_type_and_children() -> None:
    run, _, results = build()
    assert [r.name for r in run.of_type("dkimrelay:index:RelayHost")] == ["vps"]
    cmds = sorted(r.name for r in run.of_type("command:remote:Command"))
    # The port 25 check is no resource: it would show as a change on every preview.
    assert cmds == STEPS
    assert sorted(r.name for r in run.resources if r.name != "vps") == STEPS
    assert not [r for r in run.resources if "port25" in r.name]
    assert results["cert_dir"] == "/etc/letsencrypt/live/relay.example.com"
    assert results["secrets_dir"] == hs.SECRETS_DIR
    assert results["docker_ready"] == "ready" and results["cert_ready"] == "ready"
    assert results["firewall_ports"] == ["2222/tcp", "587/tcp"]
    assert results["docker_host"] == "ssh://root@203.0.113.7:2222"
    # The secrets step's generation: random per run, not derived from the key files.
    assert results["revision.secret"] is False and results["revision"] == GENERATION


def test_ordering() -> None:
    run, _, _ = build()
    assert run.deps("vps-preflight") == set()
    assert run.deps("vps-firewall") == {"vps-preflight"}
    assert run.deps("vps-docker") == {"vps-firewall"}
    assert run.deps("vps-certificate") == {"vps-firewall", "vps-docker"}
    assert run.deps("vps-secrets") == {"vps-preflight"}
    for name in STEPS:
        assert run.parent(name) == "vps", name


def test_delete_commands_and_replacement_order() -> None:
    run, _, _ = build()
    fw = run.named("vps-firewall").inputs
    assert "ufw delete allow" in fw["delete"]
    assert "certificate" in run.named("vps-certificate").inputs["create"]
    assert "delete" not in run.named("vps-certificate").inputs  # certificates are kept
    assert "delete" not in run.named("vps-docker").inputs
    assert run.named("vps-firewall").delete_before_replace is True
    assert run.named("vps-secrets").delete_before_replace is True
    assert run.named("vps-docker").delete_before_replace is False


def test_connection_settings() -> None:
    run, _, _ = build()
    cmds = run.of_type("command:remote:Command")
    conns = {json.dumps(unwrap(r.inputs["connection"]), sort_keys=True) for r in cmds}
    assert len(conns) == 1, "one SSH connection for every step"
    conn = unwrap(run.named("vps-docker").inputs["connection"])
    assert conn["host"] == "203.0.113.7" and conn["port"] == 2222 and conn["user"] == "root"
    assert conn["hostKey"] == HOST_KEY  # pinned in the provider itself
    assert conn["privateKey"] == SSH_KEY


def test_no_secret_in_command_lines_or_plain_inputs() -> None:
    run, _, _ = build()
    for r in run.resources:
        plain = json.dumps(strip_secrets(r.inputs))
        for s in SECRET_STRINGS:
            assert s not in plain, f"secret in a plain input of {r.type} {r.name}"
        for key in ("create", "delete", "update"):
            value = r.inputs.get(key)
            assert value is None or isinstance(value, str), (r.name, key)
    # The key material travels only on the secrets step's stdin, as a secret.
    assert strip_secrets(run.named("vps-secrets").inputs["stdin"]) == "<secret>"
    stdin = json.loads(unwrap(run.named("vps-secrets").inputs["stdin"]))
    assert stdin["dkim/mail.private"] == DKIM_KEY
    for r in run.of_type("command:remote:Command"):
        assert strip_secrets(r.inputs["connection"]) == "<secret>", r.name  # the SSH key
    secrets = run.named("vps-secrets")
    assert secrets.inputs["logging"] == "none"
    create = shlex.split(secrets.inputs["create"])
    assert create == ["bash", "-c", hs.render_secrets(), "dkim-relay"]
    assert {"stdin", "stdout", "stderr"} <= set(secrets.additional_secret_outputs)
    for name in ("vps-preflight", "vps-firewall", "vps-docker", "vps-certificate"):
        assert "stdin" not in run.named(name).inputs


def test_non_root_user_runs_through_sudo() -> None:
    run, _, results = build(ssh_user="deploy")
    for r in run.of_type("command:remote:Command"):
        assert r.inputs["create"].startswith("sudo -n bash -c "), r.name
    assert results["docker_host"] == "ssh://deploy@203.0.113.7:2222"


def test_without_secret_files_no_secrets_step() -> None:
    run, _, results = build(secret_files=None)
    assert "vps-secrets" not in {r.name for r in run.resources}
    assert results["secrets_dir"] == hs.SECRETS_DIR
    assert results["revision"] == "none"


def test_preflight_runs_on_up_not_preview(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[SshTarget] = []

    def fake(target: SshTarget, key: str, timeout: float = 10) -> str:
        assert key == SSH_KEY
        calls.append(target)
        return "Linux 6.1"

    monkeypatch.setattr(host_mod, "preflight_check", fake)
    build(preview=True, preflight=True)
    assert calls == []
    run, _, _ = build(preview=False, preflight=True)
    assert calls == [SshTarget("203.0.113.7", 2222, "root", HOST_KEY)]
    assert run.named("vps-preflight").inputs["triggers"] == ["ok"]


def test_missing_acme_email_is_an_error_naming_the_key() -> None:
    with pytest.raises(ValueError, match="acmeEmail"):
        build(acme_email="")


def test_bad_host_key_is_an_error_naming_the_key() -> None:
    with pytest.raises(ValueError, match="sshHostKey"):
        build(ssh_host_key="fingerprint-only")


# --- the outbound port 25 check, from the program ----------------------------------------
def test_port25_checked_over_ssh_on_up_and_reported(
    monkeypatch: pytest.MonkeyPatch, probe: Probe
) -> None:
    warned: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", lambda msg, *a, **kw: warned.append(msg))
    _, _, results = build(port25_probe="mx.example.net", vps_ipv6="2001:db8:7::25")
    # Once, with the stack's SSH settings (host key pinned), running the port25 script.
    assert len(probe.calls) == 1
    target, key, command = probe.calls[0]
    assert target == SshTarget("203.0.113.7", 2222, "root", HOST_KEY)
    assert key == SSH_KEY
    assert shlex.split(command) == [
        "bash",
        "-c",
        hs.render_port25("mx.example.net", True),
        "dkim-relay",
    ]
    assert results["outbound_smtp"] == hs.parse_port25(PORT25_OUT)
    assert results["outbound_smtp"]["ipv4"]["status"] == "blocked"
    assert results["outbound_smtp.secret"] is False, "it holds no secret: a plain output"
    # Warnings: IPv4 blocked, the IPv6 source is not vpsIpv6.
    assert warned == hs.port25_warnings(hs.parse_port25(PORT25_OUT), "2001:db8:7::25")
    assert len(warned) == 2 and "relayNexthop" in warned[0] and "2001:db8:7::99" in warned[1]
    # Each `up` (each program run) checks again: nothing is kept in the state to compare.
    build(port25_probe="mx.example.net", vps_ipv6="2001:db8:7::25")
    assert len(probe.calls) == 2


def test_port25_through_sudo_for_a_non_root_user(probe: Probe) -> None:
    build(ssh_user="deploy")
    ((target, _, command),) = probe.calls
    assert target.user == "deploy"
    assert command == shell.command_line(hs.render_port25(DEFAULT_PORT25_PROBE, False), True)


def test_port25_not_checked_in_preview(monkeypatch: pytest.MonkeyPatch, probe: Probe) -> None:
    warned: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", lambda msg, *a, **kw: warned.append(msg))
    _, _, results = build(preview=True)
    assert probe.calls == []
    assert results["outbound_smtp"] is None
    assert warned == []


def test_port25_check_that_cannot_run_is_a_warning(
    monkeypatch: pytest.MonkeyPatch, probe: Probe
) -> None:
    warned: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", lambda msg, *a, **kw: warned.append(msg))
    probe.result = subprocess.CompletedProcess([], 255, "", "ssh: connect to host: refused\n")
    _, _, results = build()
    assert results["outbound_smtp"] == {}
    assert len(warned) == 1
    assert "could not run" in warned[0] and "exit 255" in warned[0] and "refused" in warned[0]
    # Open on both families, from vpsIpv6: nothing to say.
    warned.clear()
    open_both = PORT25_OUT.replace('"blocked"', '"open"').replace("2001:db8:7::99", "2001:db8::25")
    probe.result = subprocess.CompletedProcess([], 0, open_both, "")
    _, _, results = build(vps_ipv6="2001:db8::25")
    assert {r["status"] for r in results["outbound_smtp"].values()} == {"open"}
    assert warned == []


# --- the ssh-agent the Docker provider's ssh:// needs ------------------------------------
def test_agent_problem_names_the_missing_agent_and_the_fix() -> None:
    problem = agent_problem(SSH_KEY, env={})
    assert problem is not None
    assert "SSH_AUTH_SOCK" in problem and "sshPrivateKey" in problem
    assert "ssh-add" in problem and "Fix:" in problem
    assert "c3NoLWtleS1zZWNyZXQtbW9jaw" not in problem
