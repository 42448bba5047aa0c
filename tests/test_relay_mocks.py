"""SmtpRelay and LocalSink under Pulumi's mocks: the pulumi-docker resources (provider,
image, network, volume, container) and the two commands (key files, retire), their inputs
and options as the engine receives them, their order, and that no secret reaches a plain
input."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from typing import Any

import pulumi
import pytest
from pulumi_command import remote

from components.relay import (
    SECRETS_GENERATION_LABEL,
    LocalEngine,
    RemoteEngine,
    SmtpRelay,
    SmtpRelayArgs,
    SmtpUserSpec,
    read_tree,
)
from components.sink import LocalSink, LocalSinkArgs
from pure import host_scripts as hs
from pure import postfix
from pure import relay_container as rc
from pure.config import DEFAULT_RELAY_IPV4_SUBNET, DEFAULT_RELAY_IPV6_SUBNET
from pure.shell import command_line, read
from tests.pulumi_harness import Mocks, Run, drain, set_mocks, settle, strip_secrets, unwrap

pytestmark = pytest.mark.unit

DKIM_KEY = "-----BEGIN PRIVATE KEY-----\nZGtpbS1zZWNyZXQtbW9jaw==\n-----END PRIVATE KEY-----\n"
PASSWORD = "smtp-secret-mock-1a2b3c"
SSH_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nc3NoLXNlY3JldC1tb2Nr\n-----END OPENSSH PRIVATE KEY-----\n"
)
SECRET_STRINGS = ("ZGtpbS1zZWNyZXQtbW9jaw", PASSWORD, "c3NoLXNlY3JldC1tb2Nr")
GENERATION = "0123456789abcdef0123456789abcdef"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMockHostKeyMockHostKeyMockHostKeyMock"
WORK = "/abs/stack/.local/relay"
SINK_IP = "172.30.87.25"

PROVIDER = "pulumi:providers:docker"
IMAGE = "docker:index/remoteImage:RemoteImage"
NETWORK = "docker:index/network:Network"
VOLUME = "docker:index/volume:Volume"
CONTAINER = "docker:index/container:Container"
LOCAL_CMD = "command:local:Command"
REMOTE_CMD = "command:remote:Command"
# The earlier docker-CLI deploy step: same name, type, parent and triggers, so that the
# retire step is an update of it (a replacement would run its stored `docker rm -f`).
OLD_DEPLOY_URN = (
    "urn:pulumi:test::dkim-relay::dkimrelay:index:SmtpRelay$command:{}:Command::relay-deploy"
)
OLD_DEPLOY_TRIGGERS = ["dkim-relay", "dkim-relay-net", "dkim-relay-queue"]


def command_stdout(name: str) -> str:
    if name.endswith("-secrets"):
        return f"dkim-relay[secrets]: key files changed\n{hs.GENERATION_PREFIX}{GENERATION}"
    return "dkim-relay[relay-deploy]: no change"


class Marker(pulumi.CustomResource):
    """Stands for a resource the relay must wait for (docker installed, cert issued)."""

    def __init__(self, name: str) -> None:
        super().__init__("test:index:Marker", name, {})


def build(
    engine: str = "local", sink: bool = False, preview: bool = False, **over: Any
) -> tuple[Run, dict[str, Any]]:
    """One SmtpRelay (and with ``sink`` the LocalSink, wired as __main__.py does) on the
    local engine or a VPS's over ssh://; returns what was registered and the outputs."""
    run = Run()
    set_mocks(Mocks(run.resources, command_stdout=command_stdout), preview)
    marker = Marker("docker-ready")
    files = {"dkim/mail.private": DKIM_KEY, "smtp-users": f"me@example.com:{PASSWORD}\n"}
    base: dict[str, Any] = dict(
        domain="example.com",
        relay_host="relay.example.com",
        dkim_selector="mail",
        dkim_selectors=["mail"],
        smtp_users=[SmtpUserSpec("me")],
        publish_ipv4="203.0.113.25",
        publish_ipv6="2001:db8::25",
        nexthop=f"[{SINK_IP}]:25",
        depends_on=[marker],
    )
    if engine == "local":
        docker_host = over.pop("docker_host", rc.LOCAL_DOCKER_HOST)
        base.update(
            engine=LocalEngine(work_dir=WORK, docker_host=docker_host),
            secret_files=pulumi.Output.secret(files),
        )
    else:
        base.update(
            engine=RemoteEngine(
                connection=remote.ConnectionArgs(
                    host="203.0.113.25",
                    port=2222,
                    user="deploy",
                    private_key=pulumi.Output.secret(SSH_KEY),
                    host_key=HOST_KEY,
                ),
                docker_host="ssh://deploy@203.0.113.25:2222",
                host_key=over.pop("host_key", HOST_KEY),
                sudo=True,
            ),
            secrets_dir=pulumi.Output.from_input(hs.SECRETS_DIR),
            cert_dir="/etc/letsencrypt",
        )
    base.update(over)
    loop = asyncio.get_event_loop()
    try:
        relay = SmtpRelay("relay", SmtpRelayArgs(**base))
    except Exception:
        loop.run_until_complete(drain())  # what was registered before the error
        raise
    if sink:
        LocalSink(
            "sink",
            LocalSinkArgs(
                provider=relay.provider,
                network_id=relay.network.id,
                ipv4_address=SINK_IP,
                mail_dir="/abs/stack/.local/sink",
                work_dir="/abs/stack/.local/sink-build",
            ),
        )
    results: dict[str, Any] = {}

    async def collect() -> None:
        for key in ("container_name", "network_name", "reload_command", "volume_name", "image"):
            results[key] = await getattr(relay, key).future()
        await settle()

    loop.run_until_complete(collect())
    return run, results


def children(run: Run, parent: str) -> set[tuple[str, str]]:
    return {(r.type, r.name) for r in run.resources if r.parent and run.parent(r.name) == parent}


def provider_settings(run: Run) -> dict[str, Any]:
    """The Docker provider's settings as stored in the state (JSON text per setting)."""
    inputs = unwrap(run.named("relay-engine").inputs)
    return {k: json.loads(v) if k == "sshOpts" else v for k, v in inputs.items()}


def script_of(command: str) -> str:
    """The script a step's command line runs (``[sudo -n] bash -c SCRIPT dkim-relay``)."""
    argv = shlex.split(command)
    assert argv[-4:-2] == ["bash", "-c"] and argv[-1] == "dkim-relay", argv
    return argv[-2]


def header_values(script: str) -> dict[str, str]:
    """The ``NAME=value`` header of an assembled script (pure/shell.py), unquoted."""
    values = {}
    for line in script.splitlines()[2:]:
        if not re.match(r"^[A-Z][A-Z0-9_]*=", line):
            break
        name, value = line.split("=", 1)
        values[name] = shlex.split(value)[0] if value else ""
    return values


def uploads(run: Run, name: str = "relay-container") -> dict[str, str]:
    return {u["file"]: u["content"] for u in run.named(name).inputs["uploads"]}


# --- the resources and their types -------------------------------------------------------
def test_local_engine_children_and_outputs() -> None:
    run, results = build()
    assert [r.name for r in run.of_type("dkimrelay:index:SmtpRelay")] == ["relay"]
    assert children(run, "relay") == {
        (PROVIDER, "relay-engine"),
        (LOCAL_CMD, "relay-secrets"),
        (IMAGE, "relay-image"),
        (LOCAL_CMD, "relay-deploy"),
        (NETWORK, "relay-network"),
        (VOLUME, "relay-queue"),
        (CONTAINER, "relay-container"),
    }
    assert not run.of_type("command:remote:")
    # Every Docker object goes to the relay's own engine; the commands need no provider.
    for r in run.of_type("docker:"):
        assert run.provider_of(r.name) == "relay-engine", r.name
    for r in run.of_type("command:"):
        assert run.provider_of(r.name) is None, r.name
    assert results["container_name"] == "dkim-relay"
    assert results["network_name"] == "dkim-relay-net"
    assert results["volume_name"] == "dkim-relay-queue"
    assert results["reload_command"] == "docker exec dkim-relay relay-reload"
    assert re.fullmatch(r"dkim-relay:[0-9a-f]{16}", results["image"]), results["image"]


def test_remote_engine_children() -> None:
    run, _ = build(engine="remote")
    assert children(run, "relay") == {
        (PROVIDER, "relay-engine"),
        (IMAGE, "relay-image"),
        (REMOTE_CMD, "relay-deploy"),
        (NETWORK, "relay-network"),
        (VOLUME, "relay-queue"),
        (CONTAINER, "relay-container"),
    }, "on a VPS the host writes the key files: no secrets step here"
    assert not run.of_type("command:local:")
    for r in run.of_type("docker:"):
        assert run.provider_of(r.name) == "relay-engine", r.name


def test_local_provider_is_the_unix_socket() -> None:
    run, _ = build()
    settings = provider_settings(run)
    assert settings["host"] == "unix:///var/run/docker.sock" == rc.LOCAL_DOCKER_HOST
    assert settings["sshOpts"] == []
    # On a fresh VPS the engine is installed by an earlier step of the same `up`.
    assert settings["disableDockerDaemonCheck"] == "true"
    rootless = "unix:///run/user/1000/docker.sock"
    run, _ = build(docker_host=rootless)
    assert provider_settings(run)["host"] == rootless


def _option_pairs(opts: list[str]) -> dict[str, str]:
    assert opts[0::2] == ["-o"] * (len(opts) // 2) and len(opts) % 2 == 0, opts
    return dict(o.split("=", 1) for o in opts[1::2])


def test_remote_provider_over_ssh_pins_the_host_key_by_value() -> None:
    run, _ = build(engine="remote")
    settings = provider_settings(run)
    assert settings["host"] == "ssh://deploy@203.0.113.25:2222"
    opts = settings["sshOpts"]
    assert opts == rc.ssh_opts(HOST_KEY)
    pairs = _option_pairs(opts)
    assert pairs["StrictHostKeyChecking"] == "yes"
    assert pairs["BatchMode"] == "yes"
    assert pairs["HostKeyAlgorithms"] == "ssh-ed25519"
    ktype, blob = HOST_KEY.split()
    assert f"'* {ktype} {blob}'" in pairs["KnownHostsCommand"]
    # No file path in the settings: a refresh that runs from the state alone, before the
    # program, on another machine or after a reboot, must reach the same engine. The only
    # paths are the system's own.
    text = json.dumps(settings)
    paths = set(re.findall(r"(?<![\w:/])/[\w./-]+", text))
    assert paths <= {"/dev/null", "/bin/echo"}, paths
    assert "IdentityFile" not in pairs and "-i" not in opts
    assert pairs["UserKnownHostsFile"] == pairs["GlobalKnownHostsFile"] == "/dev/null"
    # The private key comes from the ssh-agent: not in the provider, not even as a secret.
    raw = json.dumps(unwrap(run.named("relay-engine").inputs))
    assert "c3NoLXNlY3JldC1tb2Nr" not in raw and "PRIVATE KEY" not in raw


def test_host_key_may_be_an_output() -> None:
    """sshHostKey may come from another resource (a later stack may generate it)."""
    run, _ = build(engine="remote", host_key=pulumi.Output.from_input(HOST_KEY))
    assert provider_settings(run)["sshOpts"] == rc.ssh_opts(HOST_KEY)


# --- the image ---------------------------------------------------------------------------
def test_image_named_by_its_context_hash_and_built_from_relay() -> None:
    run, results = build()
    image = run.named("relay-image").inputs
    name = rc.image_name("dkim-relay", read_tree(rc.RELAY_DIR))
    assert image["name"] == name == results["image"]
    assert re.fullmatch(r"dkim-relay:[0-9a-f]{16}", name)
    # Relative to the project: the same state from any clone.
    assert image["build"]["context"] == "relay"
    assert image["build"]["cacheFroms"] == [name]
    assert image["keepLocally"] is False
    # Two stacks on one engine never share an image.
    run, _ = build(container_name="relay-b")
    assert run.named("relay-image").inputs["name"] == name.replace("dkim-relay:", "relay-b:")


# --- the retire step ---------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["local", "remote"])
def test_retire_step_takes_the_old_deploys_place(engine: str) -> None:
    run, _ = build(engine=engine)
    step = run.named("relay-deploy")
    work = WORK if engine == "local" else "/var/lib/dkim-relay"
    assert step.type == (LOCAL_CMD if engine == "local" else REMOTE_CMD)
    assert step.urn == OLD_DEPLOY_URN.format(engine)
    assert step.inputs["triggers"] == [*OLD_DEPLOY_TRIGGERS, work]
    inputs = unwrap(step.inputs)
    assert inputs["create"] == inputs["update"]
    sudo = engine == "remote"
    assert inputs["delete"] == command_line("true", sudo), "its delete must remove nothing"
    assert inputs["create"].startswith("sudo -n bash -c " if sudo else "bash -c ")
    script = script_of(inputs["create"])
    assert header_values(script) == {
        "STEP": "relay-deploy",
        "CONTAINER": "dkim-relay",
        "NETWORK": "dkim-relay-net",
        "WORK_DIR": work,
        "DIR_PATTERN": "^(build|config)-[0-9a-f]{16}$",
    }
    assert read("docker/retire.sh").removeprefix("#!/usr/bin/env bash\n") in script
    assert "stdin" not in inputs
    assert inputs["addPreviousOutputInEnv"] is False
    assert inputs["logging"] == "stdoutAndStderr"
    if engine == "remote":
        conn = unwrap(step.inputs["connection"])
        assert (conn["host"], conn["user"], conn["port"]) == ("203.0.113.25", "deploy", 2222)
        assert conn["hostKey"] == HOST_KEY


# --- network and volume ------------------------------------------------------------------
def test_network_has_ipv6_and_both_subnets() -> None:
    run, _ = build()
    net = run.named("relay-network").inputs
    assert net["name"] == "dkim-relay-net" and net["driver"] == "bridge"
    assert net["ipv6"] is True
    assert net["ipamConfigs"] == [
        {"subnet": DEFAULT_RELAY_IPV4_SUBNET, "gateway": "172.30.87.1"},
        {"subnet": DEFAULT_RELAY_IPV6_SUBNET, "gateway": "fd00:d6b1:587::1"},
    ]
    run, _ = build(ipv4_subnet="10.9.8.0/24", ipv6_subnet="fd00:9::/64")
    assert run.named("relay-network").inputs["ipamConfigs"] == [
        {"subnet": "10.9.8.0/24", "gateway": "10.9.8.1"},
        {"subnet": "fd00:9::/64", "gateway": "fd00:9::1"},
    ]
    attach = run.named("relay-container").inputs["networksAdvanced"]
    assert attach == [
        {"name": "relay-network-id", "ipv4Address": "10.9.8.10", "ipv6Address": "fd00:9::a"}
    ]


def test_queue_volume_is_kept_on_destroy_and_labelled() -> None:
    run, _ = build()
    vol = run.named("relay-queue")
    assert vol.inputs == {
        "name": "dkim-relay-queue",
        "labels": [{"label": "dkim-relay.queue", "value": "1"}],
    }
    assert vol.retain_on_delete is True
    assert run.named("relay-network").retain_on_delete is False
    assert run.named("relay-container").retain_on_delete is False


# --- the container -----------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["local", "remote"])
def test_container_settings(engine: str) -> None:
    run, _ = build(engine=engine)
    c = unwrap(run.named("relay-container").inputs)
    assert c["name"] == "dkim-relay" and c["hostname"] == "relay.example.com"
    assert c["restart"] == "unless-stopped"
    assert c["mustRun"] is True and c["wait"] is True and c["waitTimeout"] == 90
    assert c["destroyGraceSeconds"] == 30
    assert c["logDriver"] == "json-file"
    assert c["logOpts"] == {"max-size": "10m", "max-file": "3"}
    # The image by id: a rebuilt image replaces the container.
    image = run.named("relay-image").inputs["name"]
    assert c["image"].startswith("sha256:") and c["image"] != image
    assert c["networksAdvanced"] == [
        {
            "name": "relay-network-id",
            "ipv4Address": "172.30.87.10",
            "ipv6Address": "fd00:d6b1:587::a",
        }
    ]
    assert c["envs"] == ["RELAY_CERT_POLL_SECONDS=300"]
    assert "command" not in c and "entrypoints" not in c, "the image's own entrypoint"
    assert run.named("relay-container").delete_before_replace is True


@pytest.mark.parametrize("engine", ["local", "remote"])
def test_mounts_read_only_except_the_queue(engine: str) -> None:
    run, _ = build(engine=engine)
    secrets = f"{WORK}/secrets" if engine == "local" else hs.SECRETS_DIR
    assert run.named("relay-container").inputs["volumes"] == [
        {"volumeName": "dkim-relay-queue", "containerPath": rc.QUEUE_MOUNT},
        {"hostPath": "/etc/letsencrypt", "readOnly": True, "containerPath": postfix.CERT_MOUNT},
        {"hostPath": secrets, "readOnly": True, "containerPath": postfix.SECRETS_DIR},
    ]
    assert postfix.SECRETS_DIR == "/run/relay-secrets" and rc.QUEUE_MOUNT == "/var/spool/postfix"


def test_published_ports_ipv4_to_587_465_and_ipv6_to_its_listeners() -> None:
    run, _ = build(submissions_465=True, submission_host_port=2587, submissions_host_port=1465)
    ports = run.named("relay-container").inputs["ports"]
    assert ports == [
        {"ip": "203.0.113.25", "external": 1465, "internal": 465},
        {"ip": "203.0.113.25", "external": 2587, "internal": 587},
        {"ip": "2001:db8::25", "external": 1465, "internal": postfix.IPV6_PORTS[465]},
        {"ip": "2001:db8::25", "external": 2587, "internal": postfix.IPV6_PORTS[587]},
    ]
    # Every published container port has a listener: a service of the image's master.cf
    # that this stack's main-stack.cf does not disable.
    assert {int(p["internal"]) for p in ports} == listening(run)


def listening(run: Run) -> set[int]:
    image_master = (rc.RELAY_DIR / "conf" / "postfix" / "master.cf").read_text().splitlines()
    ports = {"submission": 587, "submissions": 465, "1587": 1587, "1465": 1465}
    services = {line.split()[0] for line in image_master if line and line[0].isalnum()}
    main = uploads(run)[f"{postfix.CONFIG_DIR}/postfix/main-stack.cf"]
    disabled = re.search(r"^master_service_disable = (.*)$", main, re.M)
    off = {d.split("/")[0] for d in (disabled.group(1).split() if disabled else [])}
    return {ports[n] for n in services & set(ports) - off}


def test_without_465_or_ipv6_fewer_ports_and_listeners() -> None:
    run, _ = build(publish_ipv6=None)
    assert run.named("relay-container").inputs["ports"] == [
        {"ip": "203.0.113.25", "external": 587, "internal": 587}
    ]
    assert listening(run) == {587}


def test_config_files_uploaded_under_the_config_dir() -> None:
    run, _ = build()
    files = uploads(run)
    assert files and all(f.startswith(postfix.CONFIG_DIR + "/") for f in files)
    settings = postfix.PostfixSettings(
        domain="example.com",
        relay_host="relay.example.com",
        dkim_selector="mail",
        dkim_selectors=("mail",),
        users=(postfix.SmtpUser("me", ()),),
        nexthop=f"[{SINK_IP}]:25",
        ipv6_listeners=True,
    )
    expected = postfix.render_config(settings)
    assert files == {f"{postfix.CONFIG_DIR}/{rel}": text for rel, text in expected.items()}


def test_outbound_settings_reach_the_uploaded_config() -> None:
    run, _ = build(
        nexthop="[smart.example.net]:587",
        nexthop_user="relay@example.com",
        outbound_ipv6="never",
        delay_warning_time="1m",
    )
    files = uploads(run)
    main = files[f"{postfix.CONFIG_DIR}/postfix/main-stack.cf"].splitlines()
    for line in (
        "relayhost = [smart.example.net]:587",
        "smtp_sasl_auth_enable = yes",
        "smtp_tls_security_level = encrypt",
        "smtp_address_preference = ipv4",
        "delay_warning_time = 1m",
        "smtp_helo_name = relay.example.com",
    ):
        assert line in main, line
    assert "smtp/unix/inet_protocols=ipv4" in files[f"{postfix.CONFIG_DIR}/postfix/master-stack.cf"]
    run, _ = build()
    main = uploads(run)[f"{postfix.CONFIG_DIR}/postfix/main-stack.cf"].splitlines()
    assert f"relayhost = [{SINK_IP}]:25" in main and "delay_warning_time = 4h" in main
    assert not [x for x in main if x.startswith("smtp_sasl")]


def test_secrets_generation_label_follows_the_key_files() -> None:
    run, _ = build()
    assert run.named("relay-container").inputs["labels"] == [
        {"label": SECRETS_GENERATION_LABEL, "value": GENERATION}
    ]
    run, _ = build(engine="remote", secrets_revision="rev-42")
    assert run.named("relay-container").inputs["labels"] == [
        {"label": SECRETS_GENERATION_LABEL, "value": "rev-42"}
    ]


# --- order -------------------------------------------------------------------------------
def test_order_local() -> None:
    run, _ = build(sink=True)
    assert run.deps("relay-secrets") == {"docker-ready"}
    assert run.deps("relay-image") == {"docker-ready", "relay-secrets"}
    # The old relay serves until the new image exists.
    assert run.deps("relay-deploy") == {"relay-image", "docker-ready", "relay-secrets"}
    # Network and volume only after the old ones are retired (same names and subnets).
    assert run.deps("relay-network") == {"relay-deploy"}
    assert run.deps("relay-queue") == {"relay-deploy"}
    assert {"relay-network", "relay-queue", "relay-secrets", "relay-image", "relay-deploy"} <= (
        run.deps("relay-container")
    )


def test_order_remote() -> None:
    run, _ = build(engine="remote")
    assert run.deps("relay-image") == {"docker-ready"}
    assert run.deps("relay-deploy") == {"relay-image", "docker-ready"}
    assert run.deps("relay-network") == {"relay-deploy"}
    assert run.deps("relay-queue") == {"relay-deploy"}
    assert {"relay-network", "relay-queue", "relay-deploy", "relay-image", "docker-ready"} <= (
        run.deps("relay-container")
    )


# --- secrets -----------------------------------------------------------------------------
def test_key_files_step() -> None:
    run, _ = build()
    step = run.named("relay-secrets")
    inputs = step.inputs
    # The same step RelayHost runs on a VPS, here for this machine's secrets dir.
    assert inputs["create"] == command_line(hs.render_secrets(f"{WORK}/secrets"))
    assert inputs["delete"] == command_line(hs.render_secrets_delete(f"{WORK}/secrets"))
    assert strip_secrets(inputs["stdin"]) == "<secret>"
    assert json.loads(unwrap(inputs["stdin"]))["dkim/mail.private"] == DKIM_KEY
    assert inputs["logging"] == "none"
    assert {"stdin", "stdout", "stderr"} <= set(step.additional_secret_outputs)
    assert step.delete_before_replace is True


@pytest.mark.parametrize("engine", ["local", "remote"])
def test_no_secret_in_any_plain_input(engine: str) -> None:
    run, _ = build(engine=engine, sink=engine == "local")
    for r in run.resources:
        plain = json.dumps(strip_secrets(r.inputs))
        for s in SECRET_STRINGS:
            assert s not in plain, f"secret in a plain input of {r.type} {r.name}"
    container = run.named("relay-container").inputs
    for key in ("envs", "labels", "uploads", "volumes", "ports", "networksAdvanced"):
        assert key in container and strip_secrets(container[key]) == container[key], key
    for r in run.of_type("command:"):
        for key in ("create", "update", "delete"):
            assert isinstance(r.inputs.get(key, ""), str), (r.name, key)
    # The secrets are there, wrapped: the search above would have found them plain.
    everything = json.dumps(unwrap([r.inputs for r in run.resources]))
    if engine == "local":
        assert "ZGtpbS1zZWNyZXQtbW9jaw" in everything and PASSWORD in everything
    else:
        assert "c3NoLXNlY3JldC1tb2Nr" in everything  # the command's SSH connection
        assert strip_secrets(run.named("relay-deploy").inputs["connection"]) == "<secret>"


# --- the local sink ----------------------------------------------------------------------
def test_local_sink() -> None:
    run, _ = build(sink=True)
    assert [r.name for r in run.of_type("dkimrelay:index:LocalSink")] == ["sink"]
    assert children(run, "sink") == {
        (IMAGE, "sink-image"),
        (LOCAL_CMD, "sink-deploy"),
        (CONTAINER, "sink-container"),
    }
    for name in ("sink-image", "sink-container"):
        assert run.provider_of(name) == "relay-engine", "the relay's engine"
    image = run.named("sink-image").inputs
    assert image["name"] == rc.image_name("dkim-relay-sink", read_tree(rc.SINK_DIR))
    assert image["build"]["context"] == "sink"
    retire = run.named("sink-deploy")
    assert retire.urn.endswith("dkimrelay:index:LocalSink$command:local:Command::sink-deploy")
    assert retire.inputs["create"] == retire.inputs["update"]
    assert retire.inputs["delete"] == command_line("true")
    assert retire.inputs["triggers"] == ["dkim-relay-sink", "/abs/stack/.local/sink-build"]
    assert header_values(script_of(retire.inputs["create"])) == {
        "STEP": "sink-deploy",
        "CONTAINER": "dkim-relay-sink",
        "NETWORK": "",
        "WORK_DIR": "/abs/stack/.local/sink-build",
        "DIR_PATTERN": "^sink-build-[0-9a-f]{16}$",
    }
    c = run.named("sink-container").inputs
    assert c["name"] == "dkim-relay-sink"
    assert c["image"].startswith("sha256:")
    assert c["restart"] == "unless-stopped" and c["mustRun"] is True and c["wait"] is True
    # On the relay's network (by id), at the address the relay sends everything to.
    assert c["networksAdvanced"] == [{"name": "relay-network-id", "ipv4Address": SINK_IP}]
    assert c["volumes"] == [
        {"hostPath": "/abs/stack/.local/sink", "containerPath": rc.SINK_MAIL_MOUNT}
    ]
    assert "ports" not in c, "the sink publishes nothing"
    assert run.named("sink-container").delete_before_replace is True
    assert run.deps("sink-deploy") == {"sink-image"}
    assert {"sink-deploy", "sink-image", "relay-network"} <= run.deps("sink-container")


# --- arguments ---------------------------------------------------------------------------
def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        build(secrets_dir="/etc/dkim-relay/secrets")
    with pytest.raises(ValueError):
        build(ipv4_subnet="172.30.87.1/24")
