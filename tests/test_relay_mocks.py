"""SmtpRelay and LocalSink wiring under Pulumi's mocks: children, ordering, commands,
and that no secret reaches a command line or a plain input."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import tarfile
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pytest
from pulumi_command import local, remote

from components.relay import (
    LocalEngine,
    RemoteEngine,
    SmtpRelay,
    SmtpRelayArgs,
    SmtpUserSpec,
    relay_image_tag,
)
from components.sink import LocalSink, LocalSinkArgs
from pure import host_scripts as hs
from pure import postfix
from pure import relay_deploy as rd
from pure.shell import command_line
from tests.pulumi_harness import Mocks, Registered, strip_secrets, unwrap

DKIM_KEY = "-----BEGIN PRIVATE KEY-----\nZGtpbS1zZWNyZXQtbW9jaw==\n-----END PRIVATE KEY-----\n"
PASSWORD = "smtp-secret-mock-1a2b3c"
SSH_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nc3NoLXNlY3JldC1tb2Nr\n-----END OPENSSH PRIVATE KEY-----\n"
)
SECRET_STRINGS = ("ZGtpbS1zZWNyZXQtbW9jaw", PASSWORD, "c3NoLXNlY3JldC1tb2Nr")
GENERATION = "0123456789abcdef0123456789abcdef"


@dataclass
class World:
    resources: list[Registered] = field(default_factory=list)
    kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    objects: dict[int, str] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    def named(self, name: str) -> Registered:
        found = [r for r in self.resources if r.name == name]
        assert found, f"no resource {name}: {[r.name for r in self.resources]}"
        return found[0]

    def deps(self, name: str) -> set[str]:
        opts = self.kwargs[name]["opts"]
        return {self.objects.get(id(d), "?") for d in opts.depends_on or []}


def command_stdout(name: str) -> str:
    if name.endswith("-secrets"):
        return f"dkim-relay[secrets]: key files changed\n{hs.GENERATION_PREFIX}{GENERATION}"
    return "dkim-relay[relay]: done (changed)"


class Marker(pulumi.CustomResource):
    """Stands for a resource the relay must wait for (docker installed, cert issued)."""

    def __init__(self, name: str) -> None:
        super().__init__("test:index:Marker", name, {})


def build(
    monkeypatch: pytest.MonkeyPatch, engine: str = "local", sink: bool = False, **over: Any
) -> tuple[World, SmtpRelay]:
    world = World()
    for mod in (local, remote):
        real = mod.Command

        def spy(real: Any = real) -> Any:
            class SpyCommand(real):  # type: ignore[misc, valid-type]
                def __init__(self, resource_name: str, *a: Any, **kw: Any) -> None:
                    world.kwargs[resource_name] = kw
                    super().__init__(resource_name, *a, **kw)
                    world.objects[id(self)] = resource_name

            return SpyCommand

        monkeypatch.setattr(mod, "Command", spy())
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    mocks = Mocks(world.resources, command_stdout=command_stdout)
    pulumi.runtime.set_mocks(mocks, project="dkim-relay", stack="test", preview=False)
    marker = Marker("docker-ready")
    world.objects[id(marker)] = "docker-ready"
    files = {"dkim/mail.private": DKIM_KEY, "smtp-users": f"me@example.com:{PASSWORD}\n"}
    base: dict[str, Any] = dict(
        domain="example.com",
        relay_host="relay.example.com",
        dkim_selector="mail",
        dkim_selectors=["mail"],
        smtp_users=[SmtpUserSpec("me")],
        publish_ipv4="203.0.113.25",
        publish_ipv6="2001:db8::25",
        nexthop="[172.30.87.25]:25",
        depends_on=[marker],
    )
    if engine == "local":
        base.update(
            engine=LocalEngine(work_dir="/abs/stack/.local/relay"),
            secret_files=pulumi.Output.secret(files),
        )
    else:
        base.update(
            engine=RemoteEngine(
                connection=remote.ConnectionArgs(
                    host="203.0.113.25", user="deploy", private_key=pulumi.Output.secret(SSH_KEY)
                ),
                sudo=True,
            ),
            secrets_dir=pulumi.Output.from_input(hs.SECRETS_DIR),
        )
    if "secret_revision" in over:
        over["secrets_revision"] = pulumi.Output.secret(over.pop("secret_revision"))
    base.update(over)
    relay = SmtpRelay("relay", SmtpRelayArgs(**base))
    if sink:
        LocalSink(
            "sink",
            LocalSinkArgs(
                network_name=relay.network_name,
                ipv4_address="172.30.87.25",
                mail_dir="/abs/stack/.local/sink",
                work_dir="/abs/stack/.local/relay",
                depends_on=[relay],
            ),
        )

    async def settle() -> None:
        for key in ("container_name", "network_name", "reload_command", "volume_name", "image"):
            world.results[key] = await getattr(relay, key).future()
        for name, kw in world.kwargs.items():
            if isinstance(kw.get("stdin"), pulumi.Output):
                world.results[f"{name}.stdin.secret"] = await kw["stdin"].is_secret()
            elif isinstance(kw.get("stdin"), str):
                world.results[f"{name}.stdin.secret"] = False
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]
        await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 30)

    loop.run_until_complete(settle())
    loop.close()
    return world, relay


def test_local_engine_children_and_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    world, relay = build(monkeypatch)
    assert [r.name for r in world.resources if r.type == "dkimrelay:index:SmtpRelay"] == ["relay"]
    cmds = sorted(r.name for r in world.resources if r.type == "command:local:Command")
    assert cmds == ["relay-deploy", "relay-secrets"]
    assert not [r for r in world.resources if r.type == "command:remote:Command"]
    assert world.results["container_name"] == "dkim-relay"
    assert world.results["network_name"] == "dkim-relay-net"
    assert world.results["volume_name"] == "dkim-relay-queue"
    assert world.results["reload_command"] == "docker exec dkim-relay relay-reload"
    assert world.results["image"] == relay_image_tag()
    for name, kw in world.kwargs.items():
        assert kw["opts"].parent is relay, name


def test_ordering(monkeypatch: pytest.MonkeyPatch) -> None:
    world, _ = build(monkeypatch, sink=True)
    assert world.deps("relay-secrets") == {"docker-ready"}
    assert world.deps("relay-deploy") == {"docker-ready", "relay-secrets"}
    sink_deps = world.kwargs["sink-deploy"]["opts"].depends_on
    assert any(isinstance(d, SmtpRelay) for d in sink_deps)


def test_deploy_command_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    world, _ = build(monkeypatch)
    deploy = world.named("relay-deploy").inputs
    assert deploy["create"] == deploy["update"]
    assert deploy["create"].startswith("bash -c ")
    assert "STEP=relay" in deploy["create"] and "docker run -d" in deploy["create"]
    assert "SECRETS_DIR=/abs/stack/.local/relay/secrets" in deploy["create"]
    assert "WORK_DIR=/abs/stack/.local/relay" in deploy["create"]
    assert "docker network rm" in deploy["delete"]
    assert "\nensure_container\n" in deploy["create"]
    assert "\nensure_container\n" not in deploy["delete"]
    # stdin: the payload (base64 tar.gz) and the secrets-generation marker line.
    assert deploy["stdin"].endswith(f"# secrets generation {GENERATION}\n")
    assert world.results["relay-deploy.stdin.secret"] is False
    assert deploy["triggers"] == [
        "dkim-relay",
        "dkim-relay-net",
        "dkim-relay-queue",
        "/abs/stack/.local/relay",
    ]
    kw = world.kwargs["relay-deploy"]
    assert kw["opts"].delete_before_replace is True
    assert kw["add_previous_output_in_env"] is False
    assert kw["logging"] == local.Logging.STDOUT_AND_STDERR


def test_secrets_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    world, _ = build(monkeypatch)
    kw = world.kwargs["relay-secrets"]
    inputs = world.named("relay-secrets").inputs
    # The same step RelayHost runs on a VPS, here for this machine's secrets dir.
    assert inputs["create"] == command_line(hs.render_secrets("/abs/stack/.local/relay/secrets"))
    assert inputs["delete"] == command_line(
        hs.render_secrets_delete("/abs/stack/.local/relay/secrets")
    )
    assert strip_secrets(inputs["stdin"]) == "<secret>"
    assert json.loads(unwrap(inputs["stdin"]))["dkim/mail.private"] == DKIM_KEY
    assert world.results["relay-secrets.stdin.secret"] is True
    assert kw["logging"] == local.Logging.NONE
    assert {"stdin", "stdout", "stderr"} <= set(kw["opts"].additional_secret_outputs)
    assert kw["opts"].delete_before_replace is True


def test_no_secret_in_commands_or_plain_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    for engine in ("local", "remote"):
        world, _ = build(monkeypatch, engine=engine, sink=engine == "local")
        for r in world.resources:
            plain = json.dumps(strip_secrets(r.inputs))
            for s in SECRET_STRINGS:
                assert s not in plain, f"secret in a plain input of {r.name}"
            for key in ("create", "update", "delete"):
                value = unwrap(r.inputs.get(key))
                assert value is None or isinstance(value, str)
                for s in SECRET_STRINGS:
                    assert value is None or s not in value, (r.name, key)


def test_remote_engine_over_ssh_with_sudo(monkeypatch: pytest.MonkeyPatch) -> None:
    world, _ = build(monkeypatch, engine="remote")
    cmds = [r for r in world.resources if r.type.startswith("command:")]
    assert [(r.type, r.name) for r in cmds] == [("command:remote:Command", "relay-deploy")]
    deploy = cmds[0].inputs
    assert deploy["create"].startswith("sudo -n bash -c ")
    assert deploy["delete"].startswith("sudo -n bash -c ")
    assert f"SECRETS_DIR={hs.SECRETS_DIR}" in deploy["create"]
    assert "WORK_DIR=/var/lib/dkim-relay" in deploy["create"]
    assert unwrap(deploy["connection"])["host"] == "203.0.113.25"
    assert strip_secrets(deploy["connection"]) == "<secret>"  # holds the SSH key
    assert not deploy["stdin"].rstrip().splitlines()[-1].startswith("#")  # no marker
    assert world.deps("relay-deploy") == {"docker-ready"}


def test_remote_engine_secrets_revision_marker(monkeypatch: pytest.MonkeyPatch) -> None:
    world, _ = build(monkeypatch, engine="remote", secrets_revision="rev-42")
    assert world.named("relay-deploy").inputs["stdin"].endswith("# secrets generation rev-42\n")
    world, _ = build(monkeypatch, engine="remote", secret_revision="rev-43")
    assert world.results["relay-deploy.stdin.secret"] is True


def test_published_ports_and_465(monkeypatch: pytest.MonkeyPatch) -> None:
    world, _ = build(monkeypatch, submissions_465=True, submission_host_port=2587)
    create = world.named("relay-deploy").inputs["create"]
    for p in ("203.0.113.25:2587:587", "[2001:db8::25]:2587:587", "203.0.113.25:465:465"):
        assert p in create, p


def test_local_sink(monkeypatch: pytest.MonkeyPatch) -> None:
    world, _ = build(monkeypatch, sink=True)
    assert [r.name for r in world.resources if r.type == "dkimrelay:index:LocalSink"] == ["sink"]
    sink = world.named("sink-deploy")
    assert sink.type == "command:local:Command"
    create = sink.inputs["create"]
    assert create == sink.inputs["update"]
    assert "NETWORK=dkim-relay-net" in create and "SINK_IPV4=172.30.87.25" in create
    assert "MAIL_DIR=/abs/stack/.local/sink" in create
    assert "IMAGE=dkim-relay-sink:" in create
    assert "removed network" not in sink.inputs["delete"]
    assert 'remove_container "${CONTAINER}"' in sink.inputs["delete"]


def test_argument_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        build(monkeypatch, secrets_dir="/etc/dkim-relay/secrets")
    with pytest.raises(ValueError):
        build(monkeypatch, ipv4_subnet="172.30.87.1/24")
    with pytest.raises(ValueError):
        build(monkeypatch, container_name="bad name")
    with pytest.raises(ValueError):
        build(monkeypatch, engine="local", smtp_users=[SmtpUserSpec("bad name")])


def test_mount_points() -> None:
    assert postfix.SECRETS_DIR == "/run/relay-secrets" and rd.QUEUE_MOUNT == "/var/spool/postfix"


def _deployed_config(world: Any) -> dict[str, str]:
    """The config files inside the deploy step's payload (base64 tar.gz on stdin)."""
    stdin = world.named("relay-deploy").inputs["stdin"]
    b64 = "".join(x for x in stdin.splitlines() if not x.startswith("#"))
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(b64)), mode="r:gz") as tar:
        return {
            m.name.removeprefix("config/"): tar.extractfile(m).read().decode()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile() and m.name.startswith("config/")
        }


def test_outbound_settings_reach_the_rendered_config(monkeypatch: pytest.MonkeyPatch) -> None:
    world, _ = build(
        monkeypatch,
        nexthop="[smart.example.net]:587",
        nexthop_user="relay@example.com",
        outbound_ipv6="never",
        delay_warning_time="1m",
    )
    config = _deployed_config(world)
    main = config["postfix/main-stack.cf"].splitlines()
    for line in (
        "relayhost = [smart.example.net]:587",
        "smtp_sasl_auth_enable = yes",
        "smtp_tls_security_level = encrypt",
        "smtp_address_preference = ipv4",
        "delay_warning_time = 1m",
        "smtp_helo_name = relay.example.com",
    ):
        assert line in main, line
    master = config["postfix/master-stack.cf"].splitlines()
    assert "smtp/unix/inet_protocols=ipv4" in master


def test_outbound_defaults_reach_the_rendered_config(monkeypatch: pytest.MonkeyPatch) -> None:
    world, _ = build(monkeypatch)
    config = _deployed_config(world)
    main = config["postfix/main-stack.cf"].splitlines()
    assert "smtp_address_preference = ipv4" in main
    assert "delay_warning_time = 4h" in main
    assert not [x for x in main if x.startswith("smtp_sasl")]
    assert "inet_protocols=ipv4" not in config["postfix/master-stack.cf"]
