"""SmtpRelay (LocalEngine) and LocalSink deployed by the real Pulumi engine and the
pulumi-command plugin on this machine's Docker engine: ``pulumi up``, mail through the
relay to the sink (DKIM checked by dkimpy), ``pulumi preview --expect-no-changes``, a
password change that recreates the container, ``pulumi destroy``. Secrets must not show
in the engine's output or in the exported state.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from components import dkim as dkim_keys
from tests.engine_support import REPO, Engine, Stack, write_private, write_project
from tests.test_relay_deploy import (
    DOMAIN,
    RELAY_HOST,
    SELECTOR,
    Site,
    _submit,
    _wait_mail,
    docker,
    exists,
    free_port,
    free_subnets,
)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "scripts"))
import local_ca  # noqa: E402

pytestmark = [pytest.mark.engine, pytest.mark.timeout(1200)]

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
        image_repo="dkim-relay-rdtest",
        cert_poll_seconds=0,
    ),
)
sink = LocalSink(
    "sink",
    LocalSinkArgs(
        network_name=relay.network_name,
        ipv4_address=sink_ip,
        mail_dir=cfg["mail_dir"],
        work_dir=cfg["work_dir"],
        name=cfg["name"] + "-sink",
        image_repo="dkim-relay-rdtest-sink",
    ),
)
pulumi.export("containerName", relay.container_name)
pulumi.export("networkName", relay.network_name)
pulumi.export("reloadCommand", relay.reload_command)
pulumi.export("sinkName", sink.container_name)
"""


@pytest.fixture
def stack(tmp_path: pathlib.Path) -> Iterator[tuple[Stack, Site, dict[str, str]]]:
    subprocess.run(["bash", str(REPO / "scripts" / "docker-engine.sh")], check=True)
    d = write_project(tmp_path / "project", "relay-test", PROGRAM)
    engine = Engine(d, project=d)
    secrets = {"dkim": dkim_keys.generate_private_key_pem(), "pw": f"pw-{uuid.uuid4().hex}"}
    write_private(d / "secrets.json", json.dumps(secrets))
    le = tmp_path / "letsencrypt"
    local_ca.issue(le, RELAY_HOST, [])
    v4, v6 = free_subnets()
    name = f"rdtest-pl-{uuid.uuid4().hex[:6]}"
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
        name=name,
    )
    (d / "config.json").write_text(json.dumps(cfg))
    st = engine.stack("relay", env={"DKR_RELAY_CONFIG": str(d / "config.json")})
    from pure import relay_deploy as rd

    site = Site(
        tmp_path,
        rd.RelaySpec(
            work_dir=cfg["work_dir"],
            relay_host=RELAY_HOST,
            secrets_dir=f"{cfg['work_dir']}/secrets",
            cert_dir=str(le),
            container_name=name,
            publish_ipv4="127.0.0.1",
            publish_ipv6="::1",
            submission_host_port=cfg["port"],
            ipv4_subnet=v4,
            ipv6_subnet=v6,
        ),
        None,  # type: ignore[arg-type]  # settings: not used here
        secrets["dkim"],
        secrets["pw"],
        "",
        le / "ca.pem",
    )
    try:
        yield st, site, secrets
    finally:
        st.run("destroy", "--yes", "--skip-preview")
        site.cleanup()


def _no_secret(text: str, secrets: dict[str, str], where: str) -> None:
    body = secrets["dkim"].splitlines()[1]
    assert secrets["pw"] not in text and body not in text, f"secret in {where}"


def test_up_preview_change_destroy(stack: tuple[Stack, Site, dict[str, str]]) -> None:
    st, site, secrets = stack
    up = st.run("up", "--yes", "--skip-preview")
    assert up.returncode == 0, up.stdout[-6000:] + up.stderr[-3000:]
    _no_secret(up.stdout + up.stderr, secrets, "pulumi up output")
    outputs = json.loads(st.run("stack", "output", "--json").stdout)
    name = site.spec.container_name
    assert outputs["containerName"] == name
    assert outputs["reloadCommand"] == f"docker exec {name} relay-reload"
    assert docker("inspect", "-f", "{{.State.Health.Status}}", name) == "healthy"
    cid = docker("inspect", "-f", "{{.Id}}", name)

    mail_dir = site.root / "mail"
    _wait_mail(mail_dir, _submit(site, "through pulumi up"))

    pre = st.run("preview", "--expect-no-changes")
    assert pre.returncode == 0, pre.stdout[-4000:] + pre.stderr[-2000:]
    again = st.run("up", "--yes", "--skip-preview")
    assert again.returncode == 0 and docker("inspect", "-f", "{{.Id}}", name) == cid

    # A new password: the secrets writer and then the deploy run; container recreated.
    secrets["pw"] = f"pw-{uuid.uuid4().hex}"
    write_private(st.engine.project / "secrets.json", json.dumps(secrets))
    changed = st.run("up", "--yes", "--skip-preview")
    assert changed.returncode == 0, changed.stdout[-6000:] + changed.stderr[-3000:]
    _no_secret(changed.stdout + changed.stderr, secrets, "pulumi up output")
    assert docker("inspect", "-f", "{{.Id}}", name) != cid
    site.password = secrets["pw"]
    _wait_mail(mail_dir, _submit(site, "after the password change"))
    pre = st.run("preview", "--expect-no-changes")
    assert pre.returncode == 0, pre.stdout[-4000:] + pre.stderr[-2000:]

    state = st.run("stack", "export")
    assert state.returncode == 0
    _no_secret(state.stdout, secrets, "the exported state")

    down = st.run("destroy", "--yes", "--skip-preview")
    assert down.returncode == 0, down.stdout[-4000:] + down.stderr[-2000:]
    assert not exists("container", name) and not exists("container", f"{name}-sink")
    assert not exists("network", site.spec.network)
    assert not pathlib.Path(site.spec.secrets_dir).exists()
