"""RelayHost's scripts, run over SSH against a local VPS (tests/vps_support.py).

The command lines come from ``components.host.host_steps`` (what the component
hands to pulumi-command) and go through the system ssh client with the same
connection settings (host, port, user, key, pinned host key). The tests run in
file order and share one VPS: first run, checks, second run, renewal, bad input,
465 on/off, delete, outbound port 25 (open, blocked by the VPS's own firewall, no
IPv6 address, another IPv6 source address).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from components.host import (
    HostPreflightError,
    HostStep,
    RelayHostArgs,
    SshTarget,
    host_steps,
    preflight_check,
    run_over_ssh,
)
from pure import host_scripts as hs
from tests.vps_support import (
    EXTRA_NAME,
    PREEXISTING_DAEMON_JSON,
    PROBE_HOST,
    PROBE_HOST4,
    RELAY_HOST,
    SSH_PORT,
    LocalVps,
    Port25Listener,
    local_vps,
    openssh_private_key,
    openssh_public_key,
    port25_listener,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

RELOAD_LOG = "/var/log/dkim-relay-test/reload.log"
RESTART_LOG = "/var/log/dkim-relay-test/docker-restarts.log"
# Generated per run, never real; still never printed by any assertion below.
DKIM_PEM = openssh_private_key(ed25519.Ed25519PrivateKey.generate()).replace(
    "OPENSSH PRIVATE KEY", "PRIVATE KEY"
)
SMTP_PASSWORD = os.urandom(12).hex()
SECRET_FILES = {
    "dkim/mail.private": DKIM_PEM,
    "smtp-users": f"gmail@dkim-relay.test:{SMTP_PASSWORD}\n",
}
WATCHED = "/etc/ufw /etc/default/ufw /etc/letsencrypt /etc/docker /etc/dkim-relay"


def relay_args(vps: LocalVps, **over: object) -> RelayHostArgs:
    base: dict[str, object] = dict(
        ssh_host=vps.ip4,
        ssh_private_key=vps.private_key,
        ssh_port=SSH_PORT,
        ssh_user="root",
        ssh_host_key=vps.host_key,
        relay_host=RELAY_HOST,
        acme_email="postmaster@dkim-relay.test",
        acme_server=vps.acme_server,
        acme_extra_names=[EXTRA_NAME],
        acme_ca_bundle=vps.acme_ca_bundle,
        secret_files=SECRET_FILES,
        # The machine side of the VPS's veth, by a name of the VPS's /etc/hosts.
        port25_probe=PROBE_HOST,
        vps_ipv6=vps.ip6,
        # Observable stand-ins: the machine's real dockerd is not restarted and
        # the relay container is not part of this test.
        docker_restart_command=f"mkdir -p /var/log/dkim-relay-test && date >> {RESTART_LOG}",
        reload_command=(
            f'mkdir -p /var/log/dkim-relay-test && echo "reload ${{RENEWED_LINEAGE}}" >> '
            f"{RELOAD_LOG}"
        ),
    )
    base.update(over)
    return RelayHostArgs(**base)  # type: ignore[arg-type]


def run_step(vps: LocalVps, step: HostStep, create: bool = True) -> str:
    stdin = hs.secrets_stdin(SECRET_FILES) if step.stdin_secrets and create else None
    command = step.create if create else step.delete
    assert command is not None
    res = vps.ssh(command, stdin=stdin)
    out = res.stdout + res.stderr
    assert DKIM_PEM.splitlines()[1] not in out and SMTP_PASSWORD not in out, (
        f"{step.name}: key material in the output"
    )
    return out


def run_all(vps: LocalVps, args: RelayHostArgs) -> dict[str, str]:
    return {name: run_step(vps, step) for name, step in host_steps(args).items()}


def probe(ip: str, port: int, timeout: float = 2.0) -> str:
    """'open', 'refused' (packet reached the host: no firewall drop) or 'filtered'."""
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((ip, port))
            return "open"
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "filtered"


def ufw_rules(vps: LocalVps) -> set[str]:
    out = vps.ssh("ufw status").stdout
    rules = set()
    for line in out.splitlines():
        m = re.match(
            r"^(\S+(?: \(v6\))?)\s+(ALLOW|DENY|REJECT|LIMIT)( IN)?\s+(.+?)\s*(#.*)?$", line
        )
        if m:
            rules.add(f"{m.group(1)} {m.group(2)} {m.group(4)}")
    return rules


def snapshot(vps: LocalVps) -> dict[str, str]:
    """path -> 'type mode owner mtime sha256' for every watched file, plus firewall."""
    script = (
        f"find {WATCHED} -printf '%p\\t%y %m %U:%G %T@ %l\\n' | sort; "
        f"echo '--sums'; find {WATCHED} -type f -print0 | sort -z | xargs -0 sha256sum; "
        "echo '--iptables'; iptables -S; ip6tables -S"
    )
    out = vps.ssh(script).stdout
    meta, rest = out.split("--sums\n", 1)
    sums, fw = rest.split("--iptables\n", 1)
    snap: dict[str, str] = {}
    for line in meta.splitlines():
        path, info = line.split("\t", 1)
        snap[path] = info
    for line in sums.splitlines():
        digest, path = line.split("  ", 1)
        snap[path] += " " + digest
    snap["<iptables>"] = fw
    return snap


def read_lines(vps: LocalVps, path: str) -> list[str]:
    return vps.ssh(f"cat {path} 2>/dev/null || true").stdout.splitlines()


@pytest.fixture(scope="module")
def vps() -> Iterator[LocalVps]:
    with local_vps() as v:
        yield v


@pytest.fixture(scope="module")
def first_run(vps: LocalVps) -> dict[str, str]:
    return run_all(vps, relay_args(vps))


def test_first_run_changes_and_reports(first_run: dict[str, str]) -> None:
    assert list(first_run) == [
        "preflight",
        "firewall",
        "docker",
        "certificate",
        "secrets",
        "port25",
    ]
    for name in ("firewall", "docker", "certificate", "secrets"):
        assert f"dkim-relay[{name}]: done (changed)" in first_run[name], first_run[name]
    assert "Debian GNU/Linux 12" in first_run["preflight"]


def test_firewall_allows_exactly_ssh_and_submission(vps: LocalVps, first_run: object) -> None:
    assert ufw_rules(vps) == {
        f"{SSH_PORT}/tcp ALLOW Anywhere",
        "587/tcp ALLOW Anywhere",
        f"{SSH_PORT}/tcp (v6) ALLOW Anywhere (v6)",
        "587/tcp (v6) ALLOW Anywhere (v6)",
    }
    verbose = vps.ssh("ufw status verbose").stdout
    assert "Status: active" in verbose
    assert "Default: deny (incoming)" in verbose
    for ip in (vps.ip4, vps.ip6):
        assert probe(ip, SSH_PORT) == "open", ip
        # Nothing listens on 587 yet: a RST (refused) proves the firewall let it in.
        assert probe(ip, 587) == "refused", ip
        for port in (22, 25, 80, 443, 465):
            assert probe(ip, port) == "filtered", (ip, port)


def test_ssh_still_works_over_v4_and_v6(vps: LocalVps, first_run: object) -> None:
    assert vps.ssh("echo still-in").stdout.strip() == "still-in"
    t6 = SshTarget(vps.ip6, SSH_PORT, "root", vps.host_key)
    assert preflight_check(t6, vps.private_key).startswith("Linux")


def test_certificate_from_pebble_where_the_relay_reads_it(vps: LocalVps, first_run: object) -> None:
    live = hs.cert_dir(RELAY_HOST)
    assert live == f"/etc/letsencrypt/live/{RELAY_HOST}"
    chain_pem = vps.ssh(f"cat {live}/fullchain.pem").stdout
    certs = x509.load_pem_x509_certificates(chain_pem.encode())
    leaf = certs[0]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {RELAY_HOST, EXTRA_NAME}
    # Issued by this run's pebble: the chain ends at an intermediate signed by
    # the root pebble serves on its management interface.
    root = x509.load_pem_x509_certificate(vps.pebble_root_pem().encode())
    certs[-1].verify_directly_issued_by(root)
    for a, b in zip(certs, certs[1:], strict=False):
        a.verify_directly_issued_by(b)
    key_info = vps.ssh(f"stat -L -c '%a %U' {live}/privkey.pem").stdout.split()
    assert key_info[1] == "root" and int(key_info[0], 8) & 0o077 == 0, key_info
    pub = serialization.load_pem_private_key(
        vps.ssh(f"cat {live}/privkey.pem").stdout.encode(), None
    ).public_key()
    assert pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_port_80_closed_after_certbot(vps: LocalVps, first_run: object) -> None:
    assert "80/tcp" not in vps.ssh("ufw show added").stdout
    assert probe(vps.ip4, 80) == "filtered"
    assert probe(vps.ip6, 80) == "filtered"


def test_key_files_owner_and_mode(vps: LocalVps, first_run: object) -> None:
    out = vps.ssh(
        f"cd {hs.SECRETS_DIR}/.. && find secrets -printf '%p %y %m %U:%G\\n' | sort"
    ).stdout
    assert out.splitlines() == [
        "secrets d 700 0:0",
        "secrets/dkim d 700 0:0",
        "secrets/dkim/mail.private f 600 0:0",
        "secrets/smtp-users f 600 0:0",
    ]
    sums = vps.ssh(f"cd {hs.SECRETS_DIR} && sha256sum dkim/mail.private smtp-users").stdout
    want = {rel: hashlib.sha256(c.encode()).hexdigest() for rel, c in SECRET_FILES.items()}
    got = {line.split()[1]: line.split()[0] for line in sums.splitlines()}
    assert got == want, "key file contents differ from what was sent (values not shown)"


def test_daemon_json_merged_keeping_existing_keys(vps: LocalVps, first_run: object) -> None:
    merged = json.loads(vps.ssh("cat /etc/docker/daemon.json").stdout)
    for k, v in PREEXISTING_DAEMON_JSON.items():
        assert merged[k] == v
    assert merged["ipv6"] is True and merged["ip6tables"] is True
    assert merged["fixed-cidr-v6"] == hs.DEFAULT_DOCKER_IPV6_CIDR
    engine = subprocess.run(
        ["dockerd", "--version"], capture_output=True, text=True, check=True
    ).stdout
    major = int(re.search(r"Docker version (\d+)\.", engine).group(1))  # type: ignore[union-attr]
    assert merged.get("experimental") is (True if major < 27 else None)
    assert len(read_lines(vps, RESTART_LOG)) == 1


def test_second_run_reports_no_change_and_changes_no_file(vps: LocalVps, first_run: object) -> None:
    before = snapshot(vps)
    outputs = run_all(vps, relay_args(vps))
    after = snapshot(vps)
    for name, out in outputs.items():
        assert f"dkim-relay[{name}]: no change" in out, out
        assert "done (changed)" not in out, out
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"second run changed: {changed}"
    assert len(read_lines(vps, RESTART_LOG)) == 1, "dockerd restarted without a change"


def test_renewal_runs_hooks_and_reloads_relay(vps: LocalVps, first_run: object) -> None:
    live = hs.cert_dir(RELAY_HOST)
    serial = vps.ssh(f"openssl x509 -in {live}/cert.pem -noout -serial").stdout
    reloads = read_lines(vps, RELOAD_LOG)
    rules = ufw_rules(vps)
    res = vps.ssh(
        f"REQUESTS_CA_BUNDLE={vps.acme_ca_bundle} certbot renew --force-renewal "
        "--non-interactive --no-random-sleep-on-renew"
    )
    out = res.stdout + res.stderr
    assert "port 80 opened" in out and "port 80 closed" in out, out
    assert vps.ssh(f"openssl x509 -in {live}/cert.pem -noout -serial").stdout != serial
    assert read_lines(vps, RELOAD_LOG) == [*reloads, f"reload {live}"]
    assert ufw_rules(vps) == rules
    assert probe(vps.ip4, 80) == "filtered"


def test_renewal_fails_when_port_80_stays_shut(vps: LocalVps, first_run: object) -> None:
    """The check above is meaningful: without the pre hook pebble cannot get in."""
    conf = f"/etc/letsencrypt/renewal/{RELAY_HOST}.conf"
    before = vps.ssh(f"sha256sum {conf}").stdout
    res = vps.ssh(
        f"REQUESTS_CA_BUNDLE={vps.acme_ca_bundle} certbot renew --force-renewal "
        "--non-interactive --no-random-sleep-on-renew --no-directory-hooks "
        f"--pre-hook true --post-hook true --cert-name {RELAY_HOST}",
        check=False,
    )
    assert res.returncode != 0, res.stdout + res.stderr
    assert "Some challenges have failed" in res.stdout + res.stderr
    # A failed renewal does not rewrite the renewal config (hooks stay as set up).
    assert vps.ssh(f"sha256sum {conf}").stdout == before


def test_preflight_ok(vps: LocalVps) -> None:
    assert preflight_check(vps.target, vps.private_key).startswith("Linux")


def test_preflight_unreachable_host_names_sshhost(vps: LocalVps) -> None:
    t = SshTarget(vps.unused_ip4, SSH_PORT, "root", vps.host_key)
    with pytest.raises(HostPreflightError, match=r"sshHost.*sshPort"):
        preflight_check(t, vps.private_key, timeout=4)


def test_preflight_closed_port_names_sshport(vps: LocalVps) -> None:
    t = SshTarget(vps.ip4, 22, "root", vps.host_key)
    with pytest.raises(HostPreflightError, match=r"sshPort=22"):
        preflight_check(t, vps.private_key, timeout=3)


def test_preflight_wrong_key_names_sshprivatekey(vps: LocalVps) -> None:
    wrong = openssh_private_key(ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(HostPreflightError, match="refused sshPrivateKey"):
        preflight_check(vps.target, wrong)


def test_preflight_host_key_mismatch_names_sshhostkey(vps: LocalVps) -> None:
    other = openssh_public_key(ed25519.Ed25519PrivateKey.generate())
    t = SshTarget(vps.ip4, SSH_PORT, "root", other)
    with pytest.raises(HostPreflightError, match="does not match sshHostKey"):
        preflight_check(t, vps.private_key)


def test_preflight_garbage_values_name_the_key(vps: LocalVps) -> None:
    with pytest.raises(HostPreflightError, match="sshPrivateKey"):
        preflight_check(vps.target, "not a key")
    t = SshTarget(vps.ip4, SSH_PORT, "root", "not-a-host-key")
    with pytest.raises(HostPreflightError, match="sshHostKey"):
        preflight_check(t, vps.private_key)


def test_missing_acme_email_names_acmeemail(vps: LocalVps) -> None:
    with pytest.raises(ValueError, match="acmeEmail"):
        host_steps(relay_args(vps, acme_email=""))


def test_non_root_ssh_user_runs_the_steps_through_sudo(vps: LocalVps, first_run: object) -> None:
    vps.ssh(
        "id deploy >/dev/null 2>&1 || useradd -m -s /bin/bash deploy; "
        # '*' (no password, not locked): sshd without PAM refuses locked accounts.
        "usermod -p '*' deploy; "
        "echo 'deploy ALL=(ALL) NOPASSWD:ALL' >/etc/sudoers.d/dkim-relay-test; "
        "chmod 0440 /etc/sudoers.d/dkim-relay-test"
    )
    target = SshTarget(vps.ip4, SSH_PORT, "deploy", vps.host_key)
    assert preflight_check(target, vps.private_key).startswith("Linux")

    def groups() -> list[str]:
        return vps.ssh("id -nG deploy").stdout.split()

    assert "docker" not in groups()
    steps = host_steps(relay_args(vps, ssh_user="deploy"))
    for name, step in steps.items():
        assert step.create.startswith("sudo -n bash -c "), name
        stdin = hs.secrets_stdin(SECRET_FILES) if step.stdin_secrets else None
        res = run_over_ssh(target, vps.private_key, step.create, stdin=stdin)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        if name == "docker":
            # The Docker provider's ssh:// runs `docker system dial-stdio` as sshUser.
            assert "added deploy to the docker group" in res.stdout, res.stdout[-2000:]
            assert "dkim-relay[docker]: done (changed)" in res.stdout, res.stdout[-2000:]
        else:
            assert f"dkim-relay[{name}]: no change" in res.stdout, res.stdout[-2000:]
    assert "docker" in groups()
    # A new login of deploy has the group (as the provider's next ssh connection will).
    assert "docker" in run_over_ssh(target, vps.private_key, "id -nG").stdout.split()
    again = run_over_ssh(target, vps.private_key, steps["docker"].create)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "deploy is in the docker group" in again.stdout, again.stdout[-2000:]
    assert "dkim-relay[docker]: no change" in again.stdout, again.stdout[-2000:]
    assert groups().count("docker") == 1
    # root is never touched.
    root_docker = run_step(vps, host_steps(relay_args(vps))["docker"])
    assert "docker group" not in root_docker and "no change" in root_docker, root_docker


def test_submissions_465_on_then_off(vps: LocalVps, first_run: object) -> None:
    run_step(vps, host_steps(relay_args(vps, submissions465=True))["firewall"])
    assert "465/tcp ALLOW Anywhere" in ufw_rules(vps)
    assert probe(vps.ip4, 465) == "refused"
    out = run_step(vps, host_steps(relay_args(vps))["firewall"])
    assert "removed rule 465/tcp" in out
    assert not any(r.startswith("465/tcp") for r in ufw_rules(vps))


def test_delete_removes_only_our_rules_and_keeps_ssh(vps: LocalVps, first_run: object) -> None:
    steps = host_steps(relay_args(vps))
    out = run_step(vps, steps["firewall"], create=False)
    assert "removed 587/tcp" in out
    assert ufw_rules(vps) == {
        f"{SSH_PORT}/tcp ALLOW Anywhere",
        f"{SSH_PORT}/tcp (v6) ALLOW Anywhere (v6)",
    }
    assert "Status: active" in vps.ssh("ufw status").stdout
    assert vps.ssh("echo still-in").stdout.strip() == "still-in"
    again = run_step(vps, steps["firewall"], create=False)
    assert "dkim-relay[firewall-delete]: no change" in again
    # Certificates are never deleted: the certificate step has no delete at all.
    assert steps["certificate"].delete is None
    assert vps.ssh(f"test -s {hs.cert_dir(RELAY_HOST)}/fullchain.pem && echo kept").stdout


# --- outbound port 25 ---------------------------------------------------------------
# The probe host is a listener on the machine side of the VPS's veth (PROBE_HOST in the
# VPS's /etc/hosts); nothing else is ever connected to.
BLOCK_RULES = [("iptables", "DROP"), ("ip6tables", "REJECT")]


@pytest.fixture
def listener(vps: LocalVps) -> Iterator[Port25Listener]:
    with port25_listener(vps.host_ip4, vps.host_ip6) as lst:
        yield lst


def run_port25(vps: LocalVps, **over: object) -> tuple[str, dict[str, dict[str, str]]]:
    out = run_step(vps, host_steps(relay_args(vps, **over))["port25"])
    print(out)
    return out, hs.parse_port25(out)


def test_port25_open_over_both_families(vps: LocalVps, listener: Port25Listener) -> None:
    out, res = run_port25(vps)
    assert set(res) == {"ipv4", "ipv6"}
    for family, address, source in (
        ("ipv4", vps.host_ip4, vps.ip4),
        ("ipv6", vps.host_ip6, vps.ip6),
    ):
        assert res[family]["status"] == "open", out
        assert res[family]["address"] == address and res[family]["source"] == source, out
    # The connections reached the listener, from the addresses the step reported.
    assert sorted(listener.peers) == sorted([vps.ip4, vps.ip6])
    assert hs.port25_warnings(res, vps.ip6) == []
    assert "dkim-relay[port25]: no change" in out
    # Without vpsIpv6 only IPv4 is probed.
    _, res4 = run_port25(vps, vps_ipv6=None)
    assert set(res4) == {"ipv4"} and res4["ipv4"]["status"] == "open"


def test_port25_blocked_by_the_vps_firewall(vps: LocalVps, listener: Port25Listener) -> None:
    rule = "OUTPUT -p tcp --dport 25 -m comment --comment dkim-relay-test -j"
    for tool, target in BLOCK_RULES:
        vps.ssh(f"{tool} -I {rule} {target}")
    try:
        out, res = run_port25(vps)
    finally:
        for tool, target in BLOCK_RULES:
            vps.ssh(f"{tool} -D {rule} {target}")
    assert res["ipv4"]["status"] == "blocked" and res["ipv6"]["status"] == "blocked", out
    assert res["ipv4"]["detail"] == "no answer within 5 s"  # DROP
    assert res["ipv6"]["detail"] == "refused"  # REJECT
    assert listener.peers == [], "nothing got through the rules"
    warnings = hs.port25_warnings(res, vps.ip6)
    print("\n".join(warnings))
    assert [w.split(" is blocked")[0] for w in warnings] == [
        "outbound port 25 over IPv4",
        "outbound port 25 over IPv6",
    ]
    assert all("relayNexthop" in w and "VPS provider" in w for w in warnings)
    # The rules were the cause: without them the port is open again.
    _, res = run_port25(vps)
    assert {r["status"] for r in res.values()} == {"open"}


def test_port25_probe_without_an_ipv6_address(vps: LocalVps) -> None:
    """No listener: the machine refuses IPv4; the name has no IPv6 address."""
    out, res = run_port25(vps, port25_probe=PROBE_HOST4)
    assert res["ipv4"]["status"] == "blocked" and res["ipv4"]["detail"] == "refused", out
    assert res["ipv6"]["status"] == "no route" and res["ipv6"]["address"] == "", out
    warnings = hs.port25_warnings(res, vps.ip6)
    assert len(warnings) == 2 and warnings[1].startswith("no IPv6 route"), warnings


def test_port25_names_another_ipv6_source_address(vps: LocalVps, listener: Port25Listener) -> None:
    """A second address of the VPS's /64 that the kernel picks toward the probe."""
    other = vps.ip6.rsplit("::", 1)[0] + "::3"
    dev = vps.ssh(f"ip -o -6 route get {vps.host_ip6}").stdout.split(" dev ")[1].split()[0]
    vps.ssh(
        f"ip -6 addr add {other}/64 dev {dev} nodad && "
        f"ip -6 route replace {vps.host_ip6}/128 dev {dev} src {other}"
    )
    try:
        out, res = run_port25(vps)
    finally:
        vps.ssh(
            f"ip -6 route del {vps.host_ip6}/128 dev {dev}; ip -6 addr del {other}/64 dev {dev}",
            check=False,
        )
    assert res["ipv6"]["status"] == "open" and res["ipv6"]["source"] == other, out
    assert other in listener.peers, "the kernel really sent from that address"
    warnings = hs.port25_warnings(res, vps.ip6)
    assert len(warnings) == 1, warnings
    assert f"from {other}, not from vpsIpv6 {vps.ip6}" in warnings[0]
    assert f"pulumi config set vpsIpv6 {other}" in warnings[0] and f"ip6:{other}" in warnings[0]
