"""SmtpRelay (LocalEngine) and LocalSink, a tiny program of their own, deployed by the real
Pulumi engine and the docker provider plugin on this machine's Docker engine: ``pulumi
up`` (docker resources: image, network, volume, container; the sink's image and
container), mail through the relay to the sink (DKIM checked by dkimpy),
``pulumi preview --expect-no-changes``, a second ``up`` that keeps the container, a
password change that recreates it, ``pulumi destroy`` (the queue volume kept). Secrets
must not show in the engine's output, ``docker inspect`` or the exported state.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from components import dkim as dkim_keys
from components.relay import read_tree
from pure import relay_container as rc
from tests.common import docker, exists, free_port, free_subnets
from tests.engine_support import (
    REPO,
    Engine,
    Stack,
    submit,
    wait_signed,
    write_private,
    write_project,
)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "scripts"))
import local_ca  # noqa: E402

pytestmark = [pytest.mark.engine, pytest.mark.timeout(1200)]

DOMAIN = "example.com"
RELAY_HOST = "relay.example.com"
SELECTOR = "rdtest"

PROGRAM = """\
import ipaddress, json, os
import pulumi
from pure import postfix
from components.relay import LocalEngine, SmtpRelay, SmtpRelayArgs, SmtpUserSpec
from components.sink import LocalSink, LocalSinkArgs

cfg = json.load(open(os.environ["DKR_RELAY_CONFIG"]))
with open(cfg["secrets_file"]) as f:
    raw = json.load(f)
def render(r):
    return postfix.render_secrets(cfg["domain"], {cfg["selector"]: r["dkim"]}, {"me": r["pw"]})
files = pulumi.Output.secret(raw).apply(render)
sink_ip = str(ipaddress.ip_network(cfg["v4"])[25])
relay = SmtpRelay(
    "relay",
    SmtpRelayArgs(
        domain=cfg["domain"],
        relay_host=cfg["relay_host"],
        dkim_selector=cfg["selector"],
        dkim_selectors=[cfg["selector"]],
        smtp_users=[SmtpUserSpec("me")],
        engine=LocalEngine(work_dir=cfg["work_dir"]),
        secret_files=files,
        cert_dir=cfg["cert_dir"],
        publish_ipv4="127.0.0.1",
        publish_ipv6="::1",
        submission_host_port=cfg["port"],
        ipv4_subnet=cfg["v4"],
        ipv6_subnet=cfg["v6"],
        nexthop=f"[{sink_ip}]:25",
        container_name=cfg["name"],
        cert_poll_seconds=0,
    ),
)
sink = LocalSink(
    "sink",
    LocalSinkArgs(
        provider=relay.provider,
        network_id=relay.network.id,
        ipv4_address=sink_ip,
        mail_dir=cfg["mail_dir"],
        work_dir=cfg["work_dir"] + "/sink-build",
        name=cfg["name"] + "-sink",
    ),
)
pulumi.export("containerName", relay.container_name)
pulumi.export("networkName", relay.network_name)
pulumi.export("volumeName", relay.volume_name)
pulumi.export("image", relay.image)
pulumi.export("reloadCommand", relay.reload_command)
pulumi.export("sinkName", sink.container_name)
"""


@dataclass
class Site:
    """The tiny stack and what it was deployed with."""

    stack: Stack
    root: pathlib.Path
    cfg: dict[str, Any]
    secrets: dict[str, str]

    @property
    def name(self) -> str:
        return str(self.cfg["name"])

    @property
    def outputs(self) -> dict[str, Any]:
        """What engine_support.submit / wait_signed read (the repo's program's outputs)."""
        return {
            "domain": DOMAIN,
            "smtpServer": RELAY_HOST,
            "smtpPort": self.cfg["port"],
            "smtpUsername": f"me@{DOMAIN}",
            "smtpPassword": self.secrets["pw"],
            "dkimSelector": SELECTOR,
            "dkimDnsValue": dkim_keys.dkim_txt_value(self.secrets["dkim"]),
        }

    def cleanup(self) -> None:
        for c in (self.name, f"{self.name}-sink"):
            docker("rm", "-f", c, check=False)
        docker("network", "rm", f"{self.name}-net", check=False)
        docker("volume", "rm", f"{self.name}-queue", check=False)
        for repo, tree in ((self.name, rc.RELAY_DIR), (f"{self.name}-sink", rc.SINK_DIR)):
            docker("image", "rm", rc.image_name(repo, read_tree(tree)), check=False)


@pytest.fixture
def site(tmp_path: pathlib.Path) -> Iterator[Site]:
    subprocess.run(["bash", str(REPO / "scripts" / "docker-engine.sh")], check=True)
    d = write_project(tmp_path / "project", "relay-test", PROGRAM)
    # The build contexts, relative to the project folder (as in the repo's own project).
    (d / "relay").symlink_to(rc.RELAY_DIR)
    (d / "sink").symlink_to(rc.SINK_DIR)
    engine = Engine(d, project=d)
    secrets = {"dkim": dkim_keys.generate_private_key_pem(), "pw": f"pw-{uuid.uuid4().hex}"}
    write_private(d / "secrets.json", json.dumps(secrets))
    le = tmp_path / "letsencrypt"
    local_ca.issue(le, RELAY_HOST, [])
    v4, v6 = free_subnets()
    cfg: dict[str, Any] = dict(
        domain=DOMAIN,
        relay_host=RELAY_HOST,
        selector=SELECTOR,
        secrets_file=str(d / "secrets.json"),
        work_dir=str(tmp_path / "work"),
        cert_dir=str(le),
        mail_dir=str(tmp_path / "mail"),
        port=free_port(),
        v4=v4,
        v6=v6,
        name=f"rdtest-pl-{uuid.uuid4().hex[:6]}",
    )
    (d / "config.json").write_text(json.dumps(cfg))
    st = engine.stack("relay", env={"DKR_RELAY_CONFIG": str(d / "config.json")})
    s = Site(st, tmp_path, cfg, secrets)
    try:
        yield s
    finally:
        st.run("destroy", "--yes", "--skip-preview")
        s.cleanup()


def _no_secret(text: str, secrets: dict[str, str], where: str) -> None:
    body = secrets["dkim"].splitlines()[1]
    assert secrets["pw"] not in text and body not in text, f"secret in {where}"


def _ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    return res.stdout + res.stderr


def test_up_preview_change_destroy(site: Site) -> None:
    st, secrets, name = site.stack, site.secrets, site.name
    _no_secret(_ok(st.run("up", "--yes", "--skip-preview")), secrets, "pulumi up output")
    outputs = json.loads(st.ok("stack", "output", "--json"))
    assert outputs["containerName"] == name and outputs["sinkName"] == f"{name}-sink"
    assert outputs["reloadCommand"] == f"docker exec {name} relay-reload"
    assert outputs["image"] == rc.image_name(name, read_tree(rc.RELAY_DIR))
    # The stack owns docker resources, not scripts.
    state = json.loads(st.ok("stack", "export"))
    types = {r["type"] for r in state["deployment"]["resources"]}
    assert {
        "docker:index/container:Container",
        "docker:index/network:Network",
        "docker:index/volume:Volume",
        "docker:index/remoteImage:RemoteImage",
    } <= types, types
    assert docker("inspect", "-f", "{{.State.Health.Status}}", name) == "healthy"
    _no_secret(docker("inspect", name), secrets, "docker inspect")
    cid = docker("inspect", "-f", "{{.Id}}", name)

    mail_dir = site.root / "mail"
    wait_signed(site.outputs, mail_dir, submit(site.outputs, site.root / "letsencrypt", "up"))

    _ok(st.run("preview", "--expect-no-changes"))
    _ok(st.run("up", "--yes", "--skip-preview", "--expect-no-changes"))
    assert docker("inspect", "-f", "{{.Id}}", name) == cid

    # A new password: the key files are written again, the container recreated.
    secrets["pw"] = f"pw-{uuid.uuid4().hex}"
    write_private(st.engine.project / "secrets.json", json.dumps(secrets))
    _no_secret(_ok(st.run("up", "--yes", "--skip-preview")), secrets, "pulumi up output")
    assert docker("inspect", "-f", "{{.Id}}", name) != cid
    token = submit(site.outputs, site.root / "letsencrypt", "after the password change")
    wait_signed(site.outputs, mail_dir, token)
    _ok(st.run("preview", "--expect-no-changes"))

    _no_secret(st.ok("stack", "export"), secrets, "the exported state")
    _no_secret(docker("inspect", name), secrets, "docker inspect")

    _ok(st.run("destroy", "--yes", "--skip-preview"))
    assert not exists("container", name) and not exists("container", f"{name}-sink")
    assert not exists("network", f"{name}-net")
    assert not exists("image", outputs["image"])
    assert exists("volume", f"{name}-queue"), "the queue volume is kept"
    assert not (pathlib.Path(site.cfg["work_dir"]) / "secrets").exists()
