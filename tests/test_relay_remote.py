"""SmtpRelay with RemoteEngine, by the real Pulumi engine and the docker provider over
``ssh://`` (host key pinned by value, the private key in an ssh-agent), against the local
VPS (a network namespace with sshd, tests/vps_support.py) running its own dockerd
(tests/vps_docker_support.py). The namespace has no package mirror, so the image built on
the machine is loaded into the VPS under the name the stack builds; the build on the VPS
then takes every step from it (``cache_from``).

Checks: ``pulumi up`` starts a healthy relay on the VPS publishing 587 on the VPS's
addresses, STARTTLS + AUTH works from outside over IPv4 and IPv6 and the relay logs each
client's own address (not Docker's gateway), ``preview --expect-no-changes``, a key-file
change on the VPS plus a new ``secrets_revision`` recreates the container, a container
removed behind the stack's back is back after a plain ``up``, a wrong pinned host key is
refused, ``destroy`` removes container and network and keeps the queue volume. Secrets
never show in the engine's output or state.
"""

from __future__ import annotations

import json
import pathlib
import smtplib
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from components import dkim as dkim_keys
from components.relay import read_tree
from pure import host_scripts as hs
from pure import postfix
from pure import relay_container as rc
from pure.shell import command_line
from tests.engine_support import REPO, Engine, write_private, write_project
from tests.vps_docker_support import VpsDocker, vps_docker
from tests.vps_support import SSH_PORT, LocalVps, local_vps, ssh_agent

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "scripts"))
import local_ca  # noqa: E402

pytestmark = [pytest.mark.engine, pytest.mark.timeout(1500)]
# A well-formed ed25519 key that is not the VPS's.
WRONG_HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"

DOMAIN = "example.com"
RELAY_HOST = "relay.example.com"
SELECTOR = "rdremote"
CONTAINER = "dkim-relay"

PROGRAM = """\
import json, os
import pulumi
from pulumi_command import remote
from components.relay import RemoteEngine, SmtpRelay, SmtpRelayArgs, SmtpUserSpec

cfg = json.load(open(os.environ["DKR_RELAY_CONFIG"]))
with open(cfg["key_file"]) as f:
    key = f.read()
relay = SmtpRelay(
    "relay",
    SmtpRelayArgs(
        domain=cfg["domain"],
        relay_host=cfg["relay_host"],
        dkim_selector=cfg["selector"],
        dkim_selectors=[cfg["selector"]],
        smtp_users=[SmtpUserSpec("me")],
        engine=RemoteEngine(
            connection=remote.ConnectionArgs(
                host=cfg["host"], port=cfg["port"], user="root",
                private_key=pulumi.Output.secret(key), host_key=cfg["host_key"],
            ),
            docker_host=f"ssh://root@{cfg['host']}:{cfg['port']}",
            host_key=cfg["docker_host_key"],
            work_dir="/var/lib/dkim-relay",
        ),
        secrets_dir=cfg["secrets_dir"],
        secrets_revision=cfg["revision"],
        cert_dir=cfg["cert_dir"],
        publish_ipv4=cfg["host"],
        publish_ipv6=cfg["host6"],
        nexthop="[127.0.0.1]:25",
        container_name="dkim-relay",
        cert_poll_seconds=0,
    ),
)
pulumi.export("containerName", relay.container_name)
pulumi.export("reloadCommand", relay.reload_command)
"""


@pytest.fixture(scope="module")
def vps() -> Iterator[tuple[LocalVps, VpsDocker]]:
    subprocess.run(["bash", str(REPO / "scripts" / "docker-engine.sh")], check=True)
    with local_vps() as v, vps_docker(v) as d:
        yield v, d


def write_secrets(vps: LocalVps, dkim_pem: str, password: str) -> None:
    files = postfix.render_secrets(DOMAIN, {SELECTOR: dkim_pem}, {"me": password})
    res = vps.ssh(command_line(hs.render_secrets()), stdin=hs.secrets_stdin(files))
    assert password not in res.stdout + res.stderr


def smtp_login(host: str, ca: pathlib.Path, password: str) -> None:
    ctx = ssl.create_default_context(cafile=str(ca))
    with smtplib.SMTP(host, 587, local_hostname="client.test", timeout=30) as s:
        s._host = RELAY_HOST  # type: ignore[attr-defined]  # check the cert's name
        s.ehlo("client.test")
        s.starttls(context=ctx)
        s.ehlo("client.test")
        s.login(f"me@{DOMAIN}", password)


def test_remote_engine_up_preview_change_destroy(
    vps: tuple[LocalVps, VpsDocker], tmp_path: pathlib.Path
) -> None:
    v, d = vps
    image = rc.image_name(CONTAINER, read_tree(rc.RELAY_DIR))
    build = subprocess.run(
        ["docker", "build", "-q", "-t", image, str(rc.RELAY_DIR)], capture_output=True, text=True
    )
    assert build.returncode == 0, build.stderr
    d.load_image("debian:bookworm-slim")
    d.load_image(image)

    dkim_pem = dkim_keys.generate_private_key_pem()
    password = f"pw-{uuid.uuid4().hex}"
    write_secrets(v, dkim_pem, password)
    le = tmp_path / "letsencrypt"  # /tmp is shared with the VPS's mount namespace
    local_ca.issue(le, RELAY_HOST, [])

    proj = write_project(tmp_path / "project", "relay-remote", PROGRAM)
    (proj / "relay").symlink_to(rc.RELAY_DIR)  # the build context, relative to the project
    engine = Engine(proj, project=proj)
    write_private(proj / "key", v.private_key)
    cfg: dict[str, Any] = dict(
        domain=DOMAIN,
        relay_host=RELAY_HOST,
        selector=SELECTOR,
        key_file=str(proj / "key"),
        host=v.ip4,
        host6=v.ip6,
        port=SSH_PORT,
        host_key=v.host_key,
        docker_host_key=v.host_key,
        secrets_dir=hs.SECRETS_DIR,
        revision="1",
        cert_dir=str(le),
    )
    (proj / "config.json").write_text(json.dumps(cfg))
    with ssh_agent(v.private_key) as agent:
        stack_env = {"DKR_RELAY_CONFIG": str(proj / "config.json"), **agent}
        run_stack(v, d, engine, stack_env, cfg, proj, le, dkim_pem, password)


def run_stack(
    v: LocalVps,
    d: VpsDocker,
    engine: Engine,
    stack_env: dict[str, str],
    cfg: dict[str, Any],
    proj: pathlib.Path,
    le: pathlib.Path,
    dkim_pem: str,
    password: str,
) -> None:
    st = engine.stack("relay", env=stack_env)

    def vdocker(*args: str) -> str:
        return d.docker(*args).stdout.decode().strip()

    def no_secret(text: str, where: str) -> None:
        assert password not in text and dkim_pem.splitlines()[1] not in text, where
        assert v.private_key.splitlines()[1] not in text, where

    try:
        up = st.run("up", "--yes", "--skip-preview")
        assert up.returncode == 0, up.stdout[-6000:] + up.stderr[-3000:]
        no_secret(up.stdout + up.stderr, "pulumi up output")
        assert vdocker("inspect", "-f", "{{.State.Health.Status}}", "dkim-relay") == "healthy"
        cid = vdocker("inspect", "-f", "{{.Id}}", "dkim-relay")
        inspect = vdocker("inspect", "dkim-relay")
        assert hs.SECRETS_DIR in inspect
        no_secret(inspect, "docker inspect")
        # Over both families; the relay sees each client's own address, not a gateway's.
        smtp_login(v.ip4, le / "ca.pem", password)
        smtp_login(v.ip6, le / "ca.pem", password)
        log = (
            d.docker("logs", "dkim-relay").stdout.decode()
            + d.docker("logs", "dkim-relay").stderr.decode()
        )
        for client in (v.host_ip4, v.host_ip6):
            assert f"[{client}]" in log, f"{client} not in the relay's log:\n{log[-3000:]}"

        pre = st.run("preview", "--expect-no-changes")
        assert pre.returncode == 0, pre.stdout[-4000:] + pre.stderr[-2000:]

        # Removed behind the stack's back: preview shows it, a plain up brings it back.
        d.docker("rm", "-f", "dkim-relay")
        pre = st.run("preview", "--expect-no-changes")
        assert pre.returncode != 0 and "relay-container" in pre.stdout, pre.stdout[-3000:]
        again = st.run("up", "--yes", "--skip-preview")
        assert again.returncode == 0, again.stdout[-6000:] + again.stderr[-3000:]
        smtp_login(v.ip4, le / "ca.pem", password)
        cid = vdocker("inspect", "-f", "{{.Id}}", "dkim-relay")
        pre = st.run("preview", "--expect-no-changes")
        assert pre.returncode == 0, pre.stdout[-4000:] + pre.stderr[-2000:]

        # New key files on the VPS (what RelayHost's secrets step does) + a new revision.
        password = f"pw-{uuid.uuid4().hex}"
        write_secrets(v, dkim_pem, password)
        cfg["revision"] = "2"
        (proj / "config.json").write_text(json.dumps(cfg))
        changed = st.run("up", "--yes", "--skip-preview")
        assert changed.returncode == 0, changed.stdout[-6000:] + changed.stderr[-3000:]
        assert vdocker("inspect", "-f", "{{.Id}}", "dkim-relay") != cid
        smtp_login(v.ip4, le / "ca.pem", password)
        pre = st.run("preview", "--expect-no-changes")
        assert pre.returncode == 0, pre.stdout[-4000:] + pre.stderr[-2000:]

        state = st.run("stack", "export")
        no_secret(state.stdout, "the exported state")

        # Another host key pinned (as if the VPS answered with a key that is not its
        # own): once it is in the provider's settings, the next refresh refuses the VPS
        # before any request. Back to the right key with one `up --refresh=false`.
        (proj / "config.json").write_text(json.dumps({**cfg, "docker_host_key": WRONG_HOST_KEY}))
        pinned = st.run("up", "--yes", "--skip-preview")
        assert pinned.returncode == 0, pinned.stdout[-3000:] + pinned.stderr[-2000:]
        wrong = st.run("preview")
        assert wrong.returncode != 0, wrong.stdout[-3000:]
        assert "Host key verification failed" in wrong.stdout + wrong.stderr, wrong.stdout[-3000:]
        (proj / "config.json").write_text(json.dumps(cfg))
        back = st.run("up", "--yes", "--skip-preview", "--refresh=false")
        assert back.returncode == 0, back.stdout[-3000:] + back.stderr[-2000:]
        pre = st.run("preview", "--expect-no-changes")
        assert pre.returncode == 0, pre.stdout[-4000:] + pre.stderr[-2000:]

        down = st.run("destroy", "--yes", "--skip-preview")
        assert down.returncode == 0, down.stdout[-4000:] + down.stderr[-2000:]
        assert d.docker("inspect", "dkim-relay", check=False).returncode != 0
        assert d.docker("network", "inspect", "dkim-relay-net", check=False).returncode != 0
        assert d.docker("volume", "inspect", "dkim-relay-queue", check=False).returncode == 0
    finally:
        st.run("destroy", "--yes", "--skip-preview")
