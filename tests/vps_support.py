"""A local VPS for the host tests: a network namespace running sshd, plus pebble.

Layout (all made and removed by :func:`local_vps`):

* network namespace ``dkrvps<id>`` joined to the machine by a veth pair:
  machine side 10.254.<n>.1/29 + fd42:6b72:7634:<n>::1/64, VPS side .2 and ::2
  (a free <n> is picked per VPS; addresses used only for this namespace);
* inside it, in its own mount namespace, overlays on ``/etc`` and ``/var`` and a
  fresh tmpfs on ``/run`` (upper layers on a tmpfs), so ufw's files,
  ``/etc/letsencrypt``, ``/etc/docker``, ``/etc/dkim-relay`` and certbot's state
  are the namespace's own: the machine's ``/etc`` is never written. Debian's
  ``openssh-server`` runs there on port 2222 with its own host key and a test
  client key; everything the tests do on the VPS goes through that sshd,
  exactly as on a real VPS;
* the VPS's own ``/etc/hosts`` names the machine side of the veth :data:`PROBE_HOST`
  (both families) and :data:`PROBE_HOST4` (IPv4 only): the port 25 probe of the host
  tests, answered by :func:`port25_listener`;
* Debian's ``pebble`` (Let's Encrypt's test ACME server) on the machine side of
  the veth (<host ip>:14000), resolving every name to the VPS through
  ``pebble-challtestsrv`` as DNS on <host ip>:8053, with HTTP-01 checks on the
  VPS's port 80, so a challenge only succeeds when the VPS firewall lets it in.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from components.host import SshTarget, run_over_ssh

# Addresses: 10.254.<n>.0/29 and fd42:6b72:7634:<n>::/64, <n> picked per VPS
# among subnets no interface uses (concurrent runs do not collide).
SSH_PORT = 2222
PEBBLE_PORT = 14000
RELAY_HOST = "relay.dkim-relay.test"
EXTRA_NAME = "smtp.dkim-relay.test"
# Names the VPS resolves (its /etc/hosts) to the machine side of its veth.
PROBE_HOST = "mx.probe.dkim-relay.test"
PROBE_HOST4 = "mx4.probe.dkim-relay.test"
# A key the test puts in daemon.json before the first run; it must survive.
PREEXISTING_DAEMON_JSON = {"log-driver": "json-file", "log-opts": {"max-size": "10m"}}


def openssh_private_key(key: ed25519.Ed25519PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()


def openssh_public_key(key: ed25519.Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=60)


def _wait_tcp(host: str, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    last: OSError | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError as e:
            last = e
            time.sleep(0.1)
    raise TimeoutError(f"{host}:{port} not listening after {timeout}s: {last}")


def _write_pebble_tls(d: str, host_ip4: str) -> tuple[str, str, str]:
    """CA + server certificate for pebble's own HTTPS listener (not the ACME CA)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dkim-relay test pebble TLS CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host_ip4)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host_ip4))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (os.path.join(d, "ca.pem"), os.path.join(d, "cert.pem"), os.path.join(d, "key.pem"))
    with open(paths[0], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return paths


@dataclass
class LocalVps:
    netns: str
    workdir: str
    private_key: str
    host_key: str  # "ssh-ed25519 AAAA..." of the VPS's sshd
    acme_server: str
    acme_ca_bundle: str  # path valid on the VPS too (shared filesystem)
    sshd_pid: int
    ip4: str
    ip6: str
    host_ip4: str
    host_ip6: str
    unused_ip4: str  # inside the VPS's /29, never assigned: an unreachable host
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def target(self) -> SshTarget:
        return SshTarget(self.ip4, SSH_PORT, "root", self.host_key)

    def ssh(
        self, command: str, stdin: str | None = None, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        res = run_over_ssh(self.target, self.private_key, command, stdin=stdin, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(
                f"ssh command failed (rc={res.returncode}): {command[:200]!r}\n"
                f"stdout:\n{res.stdout[-4000:]}\nstderr:\n{res.stderr[-4000:]}"
            )
        return res

    def pebble_root_pem(self) -> str:
        """The root of pebble's (random per run) issuing hierarchy."""
        ctx = ssl.create_default_context(cafile=self.acme_ca_bundle)
        with urllib.request.urlopen(f"https://{self.host_ip4}:15000/roots/0", context=ctx) as r:
            return str(r.read().decode())


def _kill(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


def _free_subnet() -> int:
    used = _run("ip", "-o", "addr").stdout + _run("ip", "route").stdout
    for _ in range(100):
        n = 16 + secrets.randbelow(224)
        if f"10.254.{n}." not in used:
            return n
    raise RuntimeError("no free 10.254.<n>.0/29 subnet for the local VPS")


@contextmanager
def local_vps() -> Iterator[LocalVps]:
    """Builds the namespace VPS and pebble; tears everything down afterwards."""
    if os.geteuid() != 0:
        raise RuntimeError("the local VPS needs root (network namespaces, mounts)")
    for tool in ("ip", "sshd", "ufw", "certbot", "pebble", "pebble-challtestsrv", "ssh"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            raise RuntimeError(f"{tool} missing: run scripts/setup.d/20-vps.sh")
    suffix = secrets.token_hex(3)
    n = _free_subnet()
    host_ip4, vps_ip4, unused_ip4 = f"10.254.{n}.1", f"10.254.{n}.2", f"10.254.{n}.5"
    host_ip6, vps_ip6 = f"fd42:6b72:7634:{n:x}::1", f"fd42:6b72:7634:{n:x}::2"
    netns = f"dkrvps{suffix}"
    veth_host, veth_vps = f"dkrh{suffix}", f"dkrv{suffix}"
    work = tempfile.mkdtemp(prefix="dkim-relay-vps-")
    os.chmod(work, 0o755)
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[str] = []
    ns_made = False
    try:
        # --- network ---------------------------------------------------------
        _run("ip", "netns", "add", netns)
        ns_made = True
        _run("ip", "link", "add", veth_host, "type", "veth", "peer", "name", veth_vps)
        _run("ip", "link", "set", veth_vps, "netns", netns)
        _run("ip", "addr", "add", f"{host_ip4}/29", "dev", veth_host)
        _run("ip", "-6", "addr", "add", f"{host_ip6}/64", "dev", veth_host, "nodad")
        _run("ip", "link", "set", veth_host, "up")
        ns = ("ip", "netns", "exec", netns)
        _run(*ns, "ip", "link", "set", "lo", "up")
        _run(*ns, "ip", "addr", "add", f"{vps_ip4}/29", "dev", veth_vps)
        _run(*ns, "ip", "-6", "addr", "add", f"{vps_ip6}/64", "dev", veth_vps, "nodad")
        _run(*ns, "ip", "link", "set", veth_vps, "up")

        # --- sshd ----------------------------------------------------------------
        hk = ed25519.Ed25519PrivateKey.generate()
        ck = ed25519.Ed25519PrivateKey.generate()
        sshdir = os.path.join(work, "sshd")
        # 0755/0644: sshd reads authorized_keys as the logging-in user (also "deploy").
        os.makedirs(sshdir, mode=0o755)
        hk_path = os.path.join(sshdir, "ssh_host_ed25519_key")
        with open(os.open(hk_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(openssh_private_key(hk))
        ak_path = os.path.join(sshdir, "authorized_keys")
        with open(ak_path, "w") as f:
            f.write(openssh_public_key(ck) + " dkim-relay-test\n")
        os.chmod(ak_path, 0o644)
        cfg = os.path.join(sshdir, "sshd_config")
        with open(cfg, "w") as f:
            f.write(
                f"Port {SSH_PORT}\n"
                f"ListenAddress {vps_ip4}\n"
                f"ListenAddress {vps_ip6}\n"
                f"HostKey {hk_path}\n"
                f"PidFile {sshdir}/sshd.pid\n"
                f"AuthorizedKeysFile {ak_path}\n"
                "PermitRootLogin prohibit-password\n"
                "PasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\n"
                "UsePAM no\n"
                "StrictModes no\n"
                "X11Forwarding no\n"
                "AcceptEnv none\n"
            )
        # A pre-existing daemon.json (with a key of the admin's own) in the
        # VPS's /etc: the docker step must merge, not overwrite.
        preset_etc = os.path.join(work, "preset-etc")
        os.makedirs(os.path.join(preset_etc, "docker"))
        with open(os.path.join(preset_etc, "docker", "daemon.json"), "w") as f:
            json.dump(PREEXISTING_DAEMON_JSON, f, indent=2)
        with open("/etc/hosts") as f:
            hosts = f.read()
        with open(os.path.join(preset_etc, "hosts"), "w") as f:
            f.write(hosts.rstrip() + "\n")
            f.write(f"{host_ip4} {PROBE_HOST} {PROBE_HOST4}\n{host_ip6} {PROBE_HOST}\n")
        os.chmod(os.path.join(preset_etc, "hosts"), 0o644)
        ov = os.path.join(work, "overlay")
        os.makedirs(ov)
        launcher = f"""set -eu
mount -t tmpfs -o mode=0755 dkrvps-ov {ov}
for d in etc var; do mkdir -p {ov}/$d/upper {ov}/$d/work; done
cp -a {preset_etc}/. {ov}/etc/upper/
# Nothing of the machine's current ufw/ssh state leaks in: start from the
# package defaults ufw ships (the machine's /etc/ufw is pristine, see setup.d).
mount -t overlay dkrvps-etc -o lowerdir=/etc,upperdir={ov}/etc/upper,workdir={ov}/etc/work /etc
mount -t overlay dkrvps-var -o lowerdir=/var,upperdir={ov}/var/upper,workdir={ov}/var/work /var
mount -t tmpfs -o mode=0755 dkrvps-run /run
mkdir -p /run/sshd /run/lock
exec /usr/sbin/sshd -D -e -f {cfg}
"""
        sshd_log = os.path.join(work, "sshd.log")
        logs.append(sshd_log)
        with open(sshd_log, "wb") as lf:
            sshd = subprocess.Popen(
                [*ns, "sh", "-c", launcher], stdout=lf, stderr=subprocess.STDOUT
            )
        procs.append(sshd)

        # --- pebble + its DNS ----------------------------------------------------------
        pdir = os.path.join(work, "pebble")
        os.makedirs(pdir)
        ca_pem, cert_pem, key_pem = _write_pebble_tls(pdir, host_ip4)
        os.chmod(pdir, 0o755)
        pcfg = os.path.join(pdir, "pebble-config.json")
        with open(pcfg, "w") as f:
            json.dump(
                {
                    "pebble": {
                        "listenAddress": f"{host_ip4}:{PEBBLE_PORT}",
                        "managementListenAddress": f"{host_ip4}:15000",
                        "certificate": cert_pem,
                        "privateKey": key_pem,
                        "httpPort": 80,
                        "tlsPort": 5001,
                        "ocspResponderURL": "",
                        "externalAccountBindingRequired": False,
                    }
                },
                f,
            )
        dns_log = os.path.join(work, "challtestsrv.log")
        logs.append(dns_log)
        with open(dns_log, "wb") as lf:
            dns = subprocess.Popen(
                [
                    "pebble-challtestsrv",
                    "-dns01",
                    f"{host_ip4}:8053",
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                    "-management",
                    f"{host_ip4}:8055",
                    "-defaultIPv4",
                    vps_ip4,
                    "-defaultIPv6",
                    "",
                ],
                stdout=lf,
                stderr=subprocess.STDOUT,
            )
        procs.append(dns)
        env = dict(os.environ)
        env.update(PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0")
        pebble_log = os.path.join(work, "pebble.log")
        logs.append(pebble_log)
        with open(pebble_log, "wb") as lf:
            pebble = subprocess.Popen(
                ["pebble", "-config", pcfg, "-dnsserver", f"{host_ip4}:8053"],
                stdout=lf,
                stderr=subprocess.STDOUT,
                env=env,
            )
        procs.append(pebble)
        _wait_tcp(vps_ip4, SSH_PORT)
        _wait_tcp(host_ip4, PEBBLE_PORT)
        vps = LocalVps(
            netns=netns,
            workdir=work,
            private_key=openssh_private_key(ck),
            host_key=openssh_public_key(hk),
            acme_server=f"https://{host_ip4}:{PEBBLE_PORT}/dir",
            acme_ca_bundle=ca_pem,
            sshd_pid=sshd.pid,
            ip4=vps_ip4,
            ip6=vps_ip6,
            host_ip4=host_ip4,
            host_ip6=host_ip6,
            unused_ip4=unused_ip4,
            procs=procs,
        )
        vps.ssh("true")
        yield vps
    except BaseException:
        for lp in logs:
            try:
                with open(lp, errors="replace") as f:
                    print(f"--- {lp} ---\n{f.read()[-3000:]}")
            except OSError:
                pass
        raise
    finally:
        for p in reversed(procs):
            _kill(p)
        if ns_made:
            # Anything still running in the namespace was started by this fixture
            # (sshd sessions, a stuck certbot): end those processes by pid.
            res = _run("ip", "netns", "pids", netns, check=False)
            for pid in res.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _run("ip", "netns", "del", netns, check=False)
        _run("ip", "link", "del", veth_host, check=False)
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class Port25Listener:
    """Accepts on port 25 of the given addresses; records each peer (address only)."""

    peers: list[str] = field(default_factory=list)


@contextmanager
def port25_listener(*addresses: str) -> Iterator[Port25Listener]:
    """A TCP listener on port 25 of ``addresses`` (the machine side of a test VPS's veth,
    never any other address); it greets and closes, so a connect from the VPS is "open"."""
    listener = Port25Listener()
    socks = []
    for addr in addresses:
        s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, 25))
        s.listen(16)
        s.settimeout(0.2)
        socks.append(s)
    stop = threading.Event()

    def serve(s: socket.socket) -> None:
        while not stop.is_set():
            try:
                conn, peer = s.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            listener.peers.append(str(peer[0]))
            with conn:
                try:
                    conn.sendall(b"220 probe.dkim-relay.test ESMTP test listener\r\n")
                except OSError:
                    pass

    threads = [threading.Thread(target=serve, args=(s,), daemon=True) for s in socks]
    for t in threads:
        t.start()
    try:
        yield listener
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
        for s in socks:
            s.close()


@contextmanager
def ssh_agent(private_key: str) -> Iterator[dict[str, str]]:
    """An ssh-agent holding ``private_key`` (given on ssh-add's stdin, never in a file or
    on a command line), as a user's agent holds theirs: yields the environment for
    ``pulumi`` (SSH_AUTH_SOCK), through which the Docker provider's ``ssh`` logs in."""
    d = tempfile.mkdtemp(prefix="dkr-agent-")
    sock = os.path.join(d, "agent.sock")
    agent = subprocess.Popen(
        ["ssh-agent", "-D", "-a", sock], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            if time.monotonic() > deadline:
                raise AssertionError("ssh-agent did not start")
            time.sleep(0.05)
        env = {"SSH_AUTH_SOCK": sock}
        subprocess.run(
            ["ssh-add", "-q", "-"],
            input=private_key,
            env={**os.environ, **env},
            text=True,
            check=True,
            capture_output=True,
        )
        yield env
    finally:
        _kill(agent)
        shutil.rmtree(d, ignore_errors=True)
