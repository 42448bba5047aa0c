"""The relay's docker-CLI scripts (pure/relay_deploy.py + target/relay/, target/sink/):
rendered text, quoting, and real runs against the real Docker engine and the real image.
Shellcheck: tests/test_shellcheck.py.

Real runs use their own container/network/volume names, loopback ports and random
subnets (prefix ``rdtest-``), so they do not collide with tests/test_relay_e2e.py.
Nothing here skips: without a Docker engine (scripts/docker-engine.sh) the tests fail.
Traffic goes only to 127.0.0.1 and to the docker bridges these tests create.
"""

from __future__ import annotations

import base64
import email.utils
import ipaddress
import json
import random
import smtplib
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import dkim
import pytest

from components import dkim as dkim_keys
from pure import host_scripts as hs
from pure import postfix
from pure import relay_deploy as rd
from pure.relay_deploy import RELAY_DIR, SINK_DIR, read_tree
from tests.common import docker, free_port, run_script

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import local_ca  # noqa: E402

DOMAIN = "example.com"
RELAY_HOST = "relay.example.com"
SELECTOR = "rdtest"
IMAGE_REPO = "dkim-relay-rdtest"
SINK_REPO = "dkim-relay-rdtest-sink"


# ------------------------------------------------------------------ helpers
def exists(kind: str, name: str) -> bool:
    return subprocess.run(["docker", kind, "inspect", name], capture_output=True).returncode == 0


def free_subnets() -> tuple[str, str]:
    used: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for net in docker("network", "ls", "-q").split():
        out = docker("network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{end}}", net)
        used += [ipaddress.ip_network(s) for s in out.split()]
    while True:
        n = random.randrange(1, 250)
        v4 = ipaddress.ip_network(f"172.29.{n}.0/24")
        if not any(v4.overlaps(u) for u in used if u.version == 4):
            return str(v4), f"fd00:d6b1:7d{n:02x}::/64"


SETTINGS = postfix.PostfixSettings(
    domain=DOMAIN,
    relay_host=RELAY_HOST,
    dkim_selector=SELECTOR,
    users=(postfix.SmtpUser("me"),),
    nexthop="[172.29.0.25]:25",
)


def relay_payload(settings: postfix.PostfixSettings = SETTINGS) -> rd.Payload:
    return rd.make_payload(read_tree(RELAY_DIR), postfix.render_config(settings))


def base_spec(**over: object) -> rd.RelaySpec:
    values: dict[str, object] = dict(
        work_dir="/var/lib/dkim-relay",
        relay_host=RELAY_HOST,
        secrets_dir="/etc/dkim-relay/secrets",
        publish_ipv4="127.0.0.1",
        publish_ipv6="::1",
    )
    values.update(over)
    return rd.RelaySpec(**values)  # type: ignore[arg-type]


# ------------------------------------------------------------------ renderers (pure)
def test_scripts_are_strict_bash(tmp_path: Path) -> None:
    spec = base_spec(submissions_465=True)
    sink = rd.SinkSpec("/var/lib/dkim-relay", "dkim-relay-net", "172.30.87.25", "/srv/mail")
    for script in (
        rd.render_relay_deploy(spec, relay_payload()),
        rd.render_relay_delete(spec),
        rd.render_relay_delete(spec, remove_queue=True),
        rd.render_sink_deploy(sink, rd.make_payload(read_tree(SINK_DIR))),
        rd.render_sink_delete(sink),
    ):
        assert script.startswith("#!/usr/bin/env bash\nset -euo pipefail\nSTEP=")
        assert script.rstrip().endswith("finish")
        path = tmp_path / f"script-{uuid.uuid4().hex}.sh"
        path.write_text(script)
        subprocess.run(["bash", "-n", str(path)], check=True)


def test_deploy_script_carries_every_run_option() -> None:
    spec = base_spec(submissions_465=True, submissions_host_port=4650, cert_poll_seconds=60)
    payload = relay_payload()
    script = rd.render_relay_deploy(spec, payload)
    assert f"IMAGE=dkim-relay:{payload.build_hash[:16]}" in script
    assert f"CONFIG_H16={payload.config_hash[:16]}" in script
    assert "PORTS=(127.0.0.1:587:587 '[::1]:587:587' 127.0.0.1:4650:465 '[::1]:4650:465')" in script
    for option in (
        "--restart always",
        "--log-driver json-file --log-opt max-size=10m --log-opt max-file=3",
        '-v "${VOLUME}:${QUEUE_MOUNT}"',
        '-v "${CERT_DIR}:${CERT_MOUNT}:ro"',
        '-v "${SECRETS_DIR}:${SECRETS_MOUNT}:ro"',
        '-v "${CONFIG_HOST_DIR}:${CONFIG_MOUNT}:ro"',
        '-e "RELAY_CERT_POLL_SECONDS=${CERT_POLL_SECONDS}"',
    ):
        assert option in script, option
    assert f"SECRETS_MOUNT={postfix.SECRETS_DIR}" in script
    assert f"CONFIG_MOUNT={postfix.CONFIG_DIR}" in script
    assert "NET_V4_GATEWAY=172.30.87.1" in script and "NET_V6_GATEWAY=fd00:d6b1:587::1" in script
    # No IPv6 publishing when publish_ipv6 is None.
    assert "PORTS=(127.0.0.1:587:587)" in rd.render_relay_deploy(
        base_spec(publish_ipv6=None), payload
    )


def test_payload_is_deterministic_and_split_by_part() -> None:
    a, b = relay_payload(), relay_payload()
    assert a == b
    other = relay_payload(replace(SETTINGS, rate_limits=postfix.RateLimits(auth_per_unit=3)))
    assert other.build_hash == a.build_hash  # config change: same image
    assert other.config_hash != a.config_hash and other.sha256 != a.sha256
    marked = rd.with_marker(a.stdin, "secrets generation abc")
    assert marked.endswith("# secrets generation abc\n")
    with pytest.raises(ValueError):
        rd.with_marker(a.stdin, "two\nlines")
    with pytest.raises(ValueError):
        rd.make_payload({"../evil": (0o644, b"x")})


@pytest.mark.parametrize(
    "over",
    [
        {"container_name": "a b"},
        {"container_name": "-rm"},
        {"network_name": "net;rm"},
        {"volume_name": "$(x)"},
        {"image_repo": "Upper"},
        {"work_dir": "relative"},
        {"work_dir": "/a:b"},
        {"secrets_dir": "/x,y"},
        {"cert_dir": "/etc/../root"},
        {"cert_dir": "/etc/le\nx"},
        {"relay_host": "relay example"},
        {"publish_ipv4": "::1"},
        {"publish_ipv6": "127.0.0.1"},
        {"submission_host_port": 0},
        {"submission_host_port": 70000},
        {"submission_host_port": True},
        {"ipv4_subnet": "172.30.87.1/24"},
        {"ipv4_subnet": "fd00::/64"},
        {"ipv6_subnet": "10.0.0.0/8"},
        {"ipv6_subnet": "fd00::/127"},
        {"cert_poll_seconds": -1},
        {"submissions_465": True, "submissions_host_port": 587},
    ],
)
def test_renderer_rejects_bad_values(over: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        base_spec(**over)


def test_sink_spec_rejects_bad_values() -> None:
    with pytest.raises(ValueError):
        rd.SinkSpec("/w", "net", "fd00::25", "/m")
    with pytest.raises(ValueError):
        rd.SinkSpec("/w", "net", "172.30.87.25", "mail")


def test_hostile_values_stay_literal(tmp_path: Path) -> None:
    """Quotes, $(...), backticks and spaces in a path reach docker/rm as one literal word."""
    (tmp_path / "pwned").unlink(missing_ok=True)
    hostile = tmp_path / "w d'q\"$(touch pwned)`touch pwned`;touch pwned"
    (hostile / "build-0123456789abcdef").mkdir(parents=True)
    (hostile / "keep-me").mkdir()
    spec = base_spec(work_dir=str(hostile), container_name=f"rdtest-{uuid.uuid4().hex[:8]}")
    script = rd.render_relay_delete(spec)
    proc = subprocess.run(
        ["bash", "-c", script, "x"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "pwned").exists()
    assert not (hostile / "build-0123456789abcdef").exists()  # pruned: the path was literal
    assert (hostile / "keep-me").is_dir()


# ------------------------------------------------------------------ real engine
@pytest.fixture(scope="module")
def engine() -> None:
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "docker-engine.sh")],
        capture_output=True,
        text=True,
        timeout=1200,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@dataclass
class Site:
    """One relay deployment's inputs on this machine."""

    root: Path
    spec: rd.RelaySpec
    settings: postfix.PostfixSettings
    dkim_pem: str
    password: str
    sink_ip: str
    ca_file: Path

    @property
    def secrets_dir(self) -> Path:
        return Path(self.spec.secrets_dir)

    def write_secrets(self, password: str | None = None) -> str:
        """The local secrets writer SmtpRelay uses (host_scripts.render_secrets)."""
        if password is not None:
            self.password = password
        files = postfix.render_secrets(DOMAIN, {SELECTOR: self.dkim_pem}, {"me": self.password})
        out = run_script(hs.render_secrets(self.spec.secrets_dir), hs.secrets_stdin(files))
        assert self.password not in out.stdout + out.stderr
        return out.stdout

    def deploy(self, settings: postfix.PostfixSettings | None = None) -> str:
        if settings is not None:
            self.settings = settings
        payload = relay_payload(self.settings)
        out = run_script(rd.render_relay_deploy(self.spec, payload), payload.stdin)
        assert self.password not in out.stdout + out.stderr
        return out.stdout

    def delete(self) -> str:
        return run_script(rd.render_relay_delete(self.spec)).stdout

    def container_id(self) -> str:
        return docker("inspect", "-f", "{{.Id}}", self.spec.container_name)

    def cleanup(self) -> None:
        for c in (self.spec.container_name, f"{self.spec.container_name}-sink"):
            docker("rm", "-f", c, check=False)
        docker("network", "rm", self.spec.network, check=False)
        docker("volume", "rm", self.spec.volume, check=False)


@pytest.fixture
def site(engine: None, tmp_path: Path) -> Iterator[Site]:
    tag = uuid.uuid4().hex[:8]
    v4, v6 = free_subnets()
    sink_ip = str(ipaddress.ip_network(v4)[25])
    le = tmp_path / "letsencrypt"
    local_ca.issue(le, RELAY_HOST, [])
    settings = replace(SETTINGS, nexthop=f"[{sink_ip}]:25")
    spec = rd.RelaySpec(
        work_dir=str(tmp_path / "work"),
        relay_host=RELAY_HOST,
        secrets_dir=str(tmp_path / "work" / "secrets"),
        cert_dir=str(le),
        container_name=f"rdtest-{tag}",
        image_repo=IMAGE_REPO,
        publish_ipv4="127.0.0.1",
        publish_ipv6="::1",
        submission_host_port=free_port(),
        ipv4_subnet=v4,
        ipv6_subnet=v6,
        cert_poll_seconds=0,
    )
    s = Site(
        tmp_path,
        spec,
        settings,
        dkim_keys.generate_private_key_pem(),
        f"pw-{uuid.uuid4().hex}",
        sink_ip,
        le / "ca.pem",
    )
    try:
        yield s
    finally:
        s.cleanup()


def test_deploy_is_idempotent_and_recreates_only_on_change(site: Site) -> None:
    site.write_secrets()
    first = site.deploy()
    assert first.rstrip().endswith("dkim-relay[relay]: done (changed)"), first
    name = site.spec.container_name
    cid = site.container_id()
    info = json.loads(docker("inspect", name))[0]
    assert info["State"]["Health"]["Status"] == "healthy"
    assert info["HostConfig"]["RestartPolicy"]["Name"] == "always"
    assert info["HostConfig"]["LogConfig"] == {
        "Type": "json-file",
        "Config": {"max-file": "3", "max-size": "10m"},
    }
    assert info["Config"]["Hostname"] == RELAY_HOST
    assert "RELAY_CERT_POLL_SECONDS=0" in info["Config"]["Env"]
    assert not any("pw-" in e for e in info["Config"]["Env"])
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    assert mounts["/var/spool/postfix"]["Name"] == site.spec.volume
    for dest in (postfix.SECRETS_DIR, postfix.CONFIG_DIR, postfix.CERT_MOUNT):
        assert mounts[dest]["RW"] is False, dest
    assert mounts[postfix.SECRETS_DIR]["Source"] == site.spec.secrets_dir
    bindings = info["HostConfig"]["PortBindings"]["587/tcp"]
    assert {(b["HostIp"], b["HostPort"]) for b in bindings} == {
        ("127.0.0.1", str(site.spec.submission_host_port)),
        ("::1", str(site.spec.submission_host_port)),
    }
    net = json.loads(docker("network", "inspect", site.spec.network))[0]
    assert net["EnableIPv6"] is True
    assert {c["Subnet"] for c in net["IPAM"]["Config"]} == {
        site.spec.ipv4_subnet,
        site.spec.ipv6_subnet,
    }

    # Second run: nothing changes, same container.
    second = site.deploy()
    assert "dkim-relay[relay]: no change" in second and "changed" not in second, second
    assert site.container_id() == cid

    # A config change: new config dir, container recreated, image not rebuilt.
    work = Path(site.spec.work_dir)
    old_configs = sorted(p.name for p in work.glob("config-*"))
    changed = site.deploy(replace(site.settings, rate_limits=postfix.RateLimits(auth_per_unit=5)))
    assert "recreating" in changed and "building" not in changed, changed
    cid2 = site.container_id()
    assert cid2 != cid
    new_configs = sorted(p.name for p in work.glob("config-*"))
    assert len(new_configs) == 1 and new_configs != old_configs  # the old one pruned
    main_cf = (work / new_configs[0] / "postfix" / "main-stack.cf").read_text()
    assert "smtpd_client_auth_rate_limit = 5" in main_cf
    assert "no change" in site.deploy()

    # A changed secret file (new password): recreated; unchanged again afterwards.
    assert "key files changed" in site.write_secrets(f"pw-{uuid.uuid4().hex}")
    label_before = docker("inspect", "-f", "{{.Config.Labels}}", site.spec.container_name)
    assert "recreating" in site.deploy()
    cid3 = site.container_id()
    assert cid3 != cid2
    assert docker("inspect", "-f", "{{.Config.Labels}}", site.spec.container_name) != label_before
    assert "no change" in site.deploy() and site.container_id() == cid3

    # A stopped container is started again, not recreated.
    docker("stop", "-t", "30", name)
    assert "started container" in site.deploy()
    assert site.container_id() == cid3

    # Delete: container and network gone, queue kept; a second delete is harmless.
    gone = site.delete()
    assert "removed container" in gone and "removed network" in gone, gone
    assert not exists("container", name) and not exists("network", site.spec.network)
    assert exists("volume", site.spec.volume)
    again = site.delete()
    assert "no change" in again, again


def test_subnet_change_recreates_network_and_container(site: Site) -> None:
    site.write_secrets()
    site.deploy()
    cid = site.container_id()
    v4, v6 = free_subnets()
    site.spec = replace(site.spec, ipv4_subnet=v4, ipv6_subnet=v6)
    out = site.deploy()
    assert "recreating it" in out and "created network" in out, out
    net = json.loads(docker("network", "inspect", site.spec.network))[0]
    assert {c["Subnet"] for c in net["IPAM"]["Config"]} == {v4, v6}
    assert site.container_id() != cid
    assert "no change" in site.deploy()


def test_deploy_fails_with_logs_when_the_relay_cannot_start(site: Site) -> None:
    site.write_secrets()
    # A broken smtp-users file: the entrypoint exits, the script must fail with the logs.
    (site.secrets_dir / "smtp-users").write_text("not-a-login-line\n")
    payload = relay_payload(site.settings)
    spec = replace(site.spec, health_timeout=20)
    proc = run_script(rd.render_relay_deploy(spec, payload), payload.stdin, check=False)
    assert proc.returncode != 0
    assert "last log lines" in proc.stderr, proc.stderr
    assert "bad line in smtp-users" in proc.stderr, proc.stderr


def test_deploy_refuses_a_tampered_payload(site: Site) -> None:
    payload = relay_payload(site.settings)
    other = relay_payload(replace(site.settings, nexthop="[192.0.2.1]:25"))
    proc = run_script(rd.render_relay_deploy(site.spec, payload), other.stdin, check=False)
    assert proc.returncode != 0 and "checksum mismatch" in proc.stderr


def _submit(site: Site, subject: str) -> bytes:
    ctx = ssl.create_default_context(cafile=str(site.ca_file))
    msgid = email.utils.make_msgid(domain=DOMAIN)
    msg = (
        f"From: Me <me@{DOMAIN}>\r\nTo: <friend@example.net>\r\nSubject: {subject}\r\n"
        f"Date: {email.utils.formatdate()}\r\nMessage-ID: {msgid}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        "Hello through the deployed relay.\r\n"
    ).encode()
    with smtplib.SMTP("127.0.0.1", site.spec.submission_host_port, timeout=30) as s:
        s._host = RELAY_HOST  # type: ignore[attr-defined]  # verify the cert's name
        s.ehlo("client.test")
        s.starttls(context=ctx)
        s.ehlo("client.test")
        s.login(f"me@{DOMAIN}", site.password)
        s.sendmail(f"me@{DOMAIN}", ["friend@example.net"], msg)
    return msgid.encode()


def _wait_mail(mail_dir: Path, needle: bytes, timeout: float = 60) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in mail_dir.glob("*.eml"):
            data = p.read_bytes()
            if needle in data:
                return data
        time.sleep(0.3)
    raise AssertionError(f"no message with {needle!r} in {mail_dir}")


def test_mail_reaches_the_sink_signed(site: Site) -> None:
    site.write_secrets()
    assert "changed" in site.deploy()
    mail_dir = site.root / "mail"
    sink = rd.SinkSpec(
        work_dir=site.spec.work_dir,
        network_name=site.spec.network,
        ipv4_address=site.sink_ip,
        mail_dir=str(mail_dir),
        container_name=f"{site.spec.container_name}-sink",
        image_repo=SINK_REPO,
    )
    sink_payload = rd.make_payload(read_tree(SINK_DIR))
    sink_script = rd.render_sink_deploy(sink, sink_payload)
    first = run_script(sink_script, sink_payload.stdin).stdout
    assert "done (changed)" in first, first
    sink_id = docker("inspect", "-f", "{{.Id}}", sink.container_name)
    assert "no change" in run_script(sink_script, sink_payload.stdin).stdout
    assert docker("inspect", "-f", "{{.Id}}", sink.container_name) == sink_id
    # The relay's own run leaves the sink and its build dir alone.
    assert "no change" in site.deploy()
    assert list(Path(site.spec.work_dir).glob("sink-build-*"))

    msgid = _submit(site, "signed via the deploy scripts")
    data = _wait_mail(mail_dir, msgid)
    txt = dkim_keys.dkim_txt_value(site.dkim_pem)
    record = f"{SELECTOR}._domainkey.{DOMAIN}"

    def dnsfunc(name: bytes | str, timeout: int = 5) -> bytes:
        key = (name.decode() if isinstance(name, bytes) else name).rstrip(".").lower()
        return txt.encode() if key == record else b""

    assert b"DKIM-Signature:" in data
    assert dkim.verify(data, dnsfunc=dnsfunc), "dkimpy rejected the signature"
    # A tampered copy must fail, so the check above can fail.
    assert not dkim.verify(data.replace(b"Hello through", b"Hullo through"), dnsfunc=dnsfunc)

    # After a password change the old one is refused and the new one works.
    old = site.password
    site.write_secrets(f"pw-{uuid.uuid4().hex}")
    assert "recreating" in site.deploy()
    with pytest.raises(smtplib.SMTPAuthenticationError):
        bad = replace(site, password=old)
        _submit(bad, "old password")
    _wait_mail(mail_dir, _submit(site, "new password"))

    out = run_script(rd.render_sink_delete(sink)).stdout
    assert "removed container" in out
    assert "no change" in run_script(rd.render_sink_delete(sink)).stdout
    assert any(mail_dir.glob("*.eml"))  # kept mail stays
    site.delete()


def test_payload_roundtrip_matches_the_tree(tmp_path: Path) -> None:
    payload = relay_payload()
    raw = base64.decodebytes(payload.stdin.encode())
    (tmp_path / "p.tgz").write_bytes(raw)
    subprocess.run(["tar", "-xzf", str(tmp_path / "p.tgz"), "-C", str(tmp_path)], check=True)
    for rel, (mode, data) in read_tree(RELAY_DIR).items():
        p = tmp_path / "build" / rel
        assert p.read_bytes() == data
        assert bool(p.stat().st_mode & 0o111) == bool(mode & 0o111), rel
    for rel, text in postfix.render_config(SETTINGS).items():
        assert (tmp_path / "config" / rel).read_text() == text
