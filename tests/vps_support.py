"""A local VPS for the host tests: a network namespace running sshd, plus pebble.

Layout (all made and removed by :func:`local_vps`):

* network namespace ``dkrvps<id>`` joined to the machine by a veth pair:
  machine side 10.254.<n>.1/29 + fd42:6b72:7634:<n>::1/64, VPS side .2 and ::2
  (a free <n> is picked per VPS; addresses used only for this namespace). With
  ``ipv6_vps_host=1`` the VPS side is ``::1`` and the machine side ``::2``, as a
  cloud server whose provider reports the first address of its /64;
* inside it, in its own mount namespace, overlays on ``/etc`` and ``/var`` and a
  fresh tmpfs on ``/run`` (upper layers on a tmpfs), so ufw's files,
  ``/etc/letsencrypt``, ``/etc/docker``, ``/etc/dkim-relay`` and certbot's state
  are the namespace's own: the machine's ``/etc`` is never written. A process
  that only sleeps (:attr:`LocalVps.ns_pid`) holds these namespaces: everything
  started "on the VPS" enters them through it (``nsenter -t <ns_pid> -n -m``);
* Debian's ``openssh-server`` runs there, started by :meth:`LocalVps.boot`: by
  default at once on port 2222 with a generated host key and a test client key
  (everything the tests do on the VPS goes through that sshd, exactly as on a real
  VPS); with ``local_vps(boot=False)`` later, with the keys a test (or a fake cloud
  API, tests/cloud_vps_support.py) hands over, and stopped again by
  :meth:`LocalVps.halt`;
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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from components.host import SshTarget, public_key_line, run_over_ssh

# Addresses: 10.254.<n>.0/29 and fd42:6b72:7634:<n>::/64, <n> picked per VPS
# among subnets no interface uses (concurrent runs do not collide).
SSH_PORT = 2222
PEBBLE_PORT = 14000
# PATH of a root login on Debian (sshd's default): commands run in the namespaces
# without sshd get the environment they would get over SSH.
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
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
    acme_server: str
    acme_ca_bundle: str  # path valid on the VPS too (shared filesystem)
    ns_pid: int  # the process holding the VPS's network and mount namespaces
    ip4: str
    ip6: str
    host_ip4: str
    host_ip6: str
    unused_ip4: str  # inside the VPS's /29, never assigned: an unreachable host
    ssh_port: int = SSH_PORT
    # The client key the tests log in with: generated when local_vps() boots the VPS
    # itself; with boot=False the test sets the one whose public half it hands over.
    private_key: str = ""
    host_key: str = ""  # "ssh-ed25519 AAAA..." of the VPS's sshd; "" while not booted
    sshd_pid: int = 0  # 0 while not booted
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    veth_host: str = ""  # the machine side of the veth
    log_paths: list[str] = field(default_factory=list)  # printed when a test fails
    _sshd: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _before_boot: frozenset[int] = field(default=frozenset(), repr=False)

    @property
    def ip6_network(self) -> str:
        """The VPS's /64, as a cloud provider reports it (``fd42:6b72:7634:1f::/64``)."""
        return str(ipaddress.ip_network(f"{self.ip6}/64", strict=False))

    @property
    def booted(self) -> bool:
        return self._sshd is not None

    def client_addresses(self, count: int) -> list[str]:
        """``count`` more IPv6 addresses of the machine side of the veth (in the VPS's
        /64, gone with the veth): clients that each get their own share of the relay's
        per-client limits (Postfix's anvil), e.g. a probe connecting ten times a second."""
        prefix = self.host_ip6.rsplit("::", 1)[0]
        out = [f"{prefix}::d:{i:x}" for i in range(1, count + 1)]
        for addr in out:
            _run("ip", "-6", "addr", "replace", f"{addr}/64", "dev", self.veth_host, "nodad")
        return out

    @property
    def target(self) -> SshTarget:
        return SshTarget(self.ip4, self.ssh_port, "root", self.host_key)

    def enter(self) -> list[str]:
        """The argv prefix that runs a command in the VPS's network and mount namespaces."""
        return ["nsenter", "-t", str(self.ns_pid), "-n", "-m"]

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

    def run_inside(
        self, command: str, stdin: str | None = None, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """``command`` through ``bash -c`` as root on the VPS, with a root login's
        environment, without sshd: for the test's own setup, whether or not the VPS is
        booted and whoever holds the client key."""
        res = subprocess.run(
            [*self.enter(), "env", "-i", f"PATH={ROOT_PATH}", "HOME=/root", "LANG=C.UTF-8"]
            + ["bash", "-c", command],
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"command in {self.netns} failed (rc={res.returncode}): {command[:200]!r}\n"
                f"stdout:\n{res.stdout[-4000:]}\nstderr:\n{res.stderr[-4000:]}"
            )
        return res

    def pebble_root_pem(self) -> str:
        """The root of pebble's (random per run) issuing hierarchy."""
        ctx = ssl.create_default_context(cafile=self.acme_ca_bundle)
        with urllib.request.urlopen(f"https://{self.host_ip4}:15000/roots/0", context=ctx) as r:
            return str(r.read().decode())

    def _netns_pids(self) -> set[int]:
        res = _run("ip", "netns", "pids", self.netns, check=False)
        return {int(p) for p in res.stdout.split() if p.isdigit()}

    def boot(
        self,
        host_private_key: str,
        authorized_keys: Sequence[str],
        more_host_keys: Sequence[str] = (),
        root_only: bool = True,
        timeout: float = 30,
    ) -> None:
        """Starts sshd on :attr:`ssh_port` of :attr:`ip4` and :attr:`ip6` with
        ``host_private_key`` (OpenSSH private key text, e.g. ed25519) as its host key
        (``more_host_keys`` offered too, as a server offers several types) and
        ``authorized_keys`` (public key lines) for root, or with ``root_only=False`` for
        every user (what local_vps() has always done); returns once sshd accepts
        connections, :attr:`host_key` set to the public line of ``host_private_key``."""
        if self._sshd is not None:
            raise RuntimeError(f"the VPS {self.netns} is already booted: halt() it first")
        host_key = public_key_line(host_private_key)
        if host_key is None:
            raise ValueError("host_private_key is not an OpenSSH or PEM private key")
        for other in more_host_keys:
            if public_key_line(other) is None:
                raise ValueError("a key of more_host_keys is not an OpenSSH or PEM private key")
        sshdir = os.path.join(self.workdir, "sshd")
        shutil.rmtree(sshdir, ignore_errors=True)  # nothing of an earlier boot stays
        os.makedirs(sshdir)
        # 0755/0644: sshd reads authorized_keys as the logging-in user (also "deploy").
        os.chmod(sshdir, 0o755)
        key_paths = []
        for i, key in enumerate([host_private_key, *more_host_keys]):
            path = os.path.join(sshdir, f"ssh_host_key_{i}")
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                f.write(key if key.endswith("\n") else key + "\n")
            key_paths.append(path)
        ak_path = os.path.join(sshdir, "authorized_keys")
        with open(ak_path, "w") as f:
            f.write("".join(k.strip() + "\n" for k in authorized_keys))
        os.chmod(ak_path, 0o644)
        lines = [
            f"Port {self.ssh_port}",
            f"ListenAddress {self.ip4}",
            f"ListenAddress {self.ip6}",
            *(f"HostKey {p}" for p in key_paths),
            f"PidFile {sshdir}/sshd.pid",
            f"AuthorizedKeysFile {'.ssh/authorized_keys' if root_only else ak_path}",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "X11Forwarding no",
            "AcceptEnv none",
        ]
        if root_only:
            # Root's keys outside /root: the machine's home directories are not
            # overlaid, the namespace must not write them.
            lines += ["Match User root", f"    AuthorizedKeysFile {ak_path}"]
        cfg = os.path.join(sshdir, "sshd_config")
        with open(cfg, "w") as f:
            f.write("\n".join(lines) + "\n")
        log = os.path.join(self.workdir, "sshd.log")
        if log not in self.log_paths:
            self.log_paths.append(log)
        self._before_boot = frozenset(self._netns_pids())
        with open(log, "ab") as lf:
            sshd = subprocess.Popen(
                [*self.enter(), "/usr/sbin/sshd", "-D", "-e", "-f", cfg],
                stdout=lf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._sshd, self.sshd_pid = sshd, sshd.pid
        deadline = time.monotonic() + timeout
        while True:
            if sshd.poll() is not None:
                self.halt()
                with open(log, errors="replace") as f:
                    tail = f.read()[-2000:]
                raise RuntimeError(f"sshd in {self.netns} exited at boot:\n{tail}")
            try:
                with socket.create_connection((self.ip4, self.ssh_port), timeout=1):
                    break
            except OSError as e:
                if time.monotonic() > deadline:
                    self.halt()
                    raise TimeoutError(f"sshd in {self.netns} not listening: {e}") from e
                time.sleep(0.1)
        self.host_key = host_key

    def halt(self) -> None:
        """Stops sshd and every process that joined the VPS's network namespace since
        :meth:`boot` (sessions, daemons started later), with their descendants (a
        container's processes live in namespaces of their own). What ran before boot
        stays: the namespace holder (pebble runs on the machine side anyway). A daemon
        that should stop cleanly (dockerd) is stopped by its owner first."""
        sshd, self._sshd = self._sshd, None
        if sshd is None:
            return
        _kill(sshd)
        later = self._netns_pids() - self._before_boot
        doomed = later | _descendants(later)
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _wait_gone(doomed)
        self.sshd_pid, self.host_key = 0, ""


def _kill(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


def _descendants(roots: set[int]) -> set[int]:
    """Every process below ``roots`` (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _wait_gone(pids: set[int], timeout: float = 10) -> None:
    """Until each of ``pids`` has exited (a zombie counts: it runs nothing)."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                        break
            except (OSError, IndexError):
                break
            time.sleep(0.02)


def _free_subnet() -> int:
    used = _run("ip", "-o", "addr").stdout + _run("ip", "route").stdout
    for _ in range(100):
        n = 16 + secrets.randbelow(224)
        if f"10.254.{n}." not in used:
            return n
    raise RuntimeError("no free 10.254.<n>.0/29 subnet for the local VPS")


@contextmanager
def local_vps(
    boot: bool = True, ssh_port: int = SSH_PORT, ipv6_vps_host: int = 2
) -> Iterator[LocalVps]:
    """Builds the namespace VPS and pebble; tears everything down afterwards.

    ``boot``: start sshd at once with a generated host key and client key (in
    :attr:`LocalVps.private_key`); ``False``: yield the VPS with no sshd, for the test
    to :meth:`LocalVps.boot` with keys of its own. ``ssh_port``: sshd's port.
    ``ipv6_vps_host``: the VPS's address in its /64 (``::2`` by default, the machine
    side ``::1``; with 1 the VPS has ``::1`` and the machine side ``::2``)."""
    if os.geteuid() != 0:
        raise RuntimeError("the local VPS needs root (network namespaces, mounts)")
    for tool in ("ip", "sshd", "ufw", "certbot", "pebble", "pebble-challtestsrv", "ssh"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            raise RuntimeError(f"{tool} missing: run scripts/setup.d/20-vps.sh")
    if not 1 <= ipv6_vps_host <= 0xFFFF:
        raise ValueError(f"ipv6_vps_host: {ipv6_vps_host} is not a host number of the /64")
    suffix = secrets.token_hex(3)
    n = _free_subnet()
    host_ip4, vps_ip4, unused_ip4 = f"10.254.{n}.1", f"10.254.{n}.2", f"10.254.{n}.5"
    host_ip6 = f"fd42:6b72:7634:{n:x}::{2 if ipv6_vps_host == 1 else 1:x}"
    vps_ip6 = f"fd42:6b72:7634:{n:x}::{ipv6_vps_host:x}"
    netns = f"dkrvps{suffix}"
    veth_host, veth_vps = f"dkrh{suffix}", f"dkrv{suffix}"
    work = tempfile.mkdtemp(prefix="dkim-relay-vps-")
    os.chmod(work, 0o755)
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[str] = []
    ns_made = False
    vps: LocalVps | None = None
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

        # --- the VPS's file system, held by a process that only sleeps ------------
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
        ready = os.path.join(work, "ns-ready")
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
: >{ready}
exec sleep infinity
"""
        holder_log = os.path.join(work, "holder.log")
        logs.append(holder_log)
        with open(holder_log, "wb") as lf:
            holder = subprocess.Popen(
                [*ns, "sh", "-c", launcher], stdout=lf, stderr=subprocess.STDOUT
            )
        procs.append(holder)

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
        deadline = time.monotonic() + 30
        while not os.path.exists(ready):
            if holder.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the VPS's mounts in {netns} failed (see {holder_log})")
            time.sleep(0.05)
        _wait_tcp(host_ip4, PEBBLE_PORT)
        vps = LocalVps(
            netns=netns,
            workdir=work,
            acme_server=f"https://{host_ip4}:{PEBBLE_PORT}/dir",
            acme_ca_bundle=ca_pem,
            ns_pid=holder.pid,
            ip4=vps_ip4,
            ip6=vps_ip6,
            host_ip4=host_ip4,
            host_ip6=host_ip6,
            unused_ip4=unused_ip4,
            ssh_port=ssh_port,
            procs=procs,
            veth_host=veth_host,
            log_paths=logs,
        )
        if boot:
            hk = ed25519.Ed25519PrivateKey.generate()
            ck = ed25519.Ed25519PrivateKey.generate()
            vps.private_key = openssh_private_key(ck)
            vps.boot(
                openssh_private_key(hk),
                [openssh_public_key(ck) + " dkim-relay-test"],
                root_only=False,
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
        if vps is not None:
            vps.halt()
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


def _nxdomain(query: bytes) -> bytes | None:
    """The NXDOMAIN answer to a DNS query (its id, flags and question echoed)."""
    if len(query) < 12 or query[2] & 0x80:
        return None
    end = 12
    while end < len(query) and query[end]:
        end += 1 + query[end]
    end += 5  # the root label, QTYPE, QCLASS
    if end > len(query):
        return None
    flags = bytes([0x80 | (query[2] & 0x79), 0x80 | 3])  # QR, opcode, RD; RA, NXDOMAIN
    return query[:2] + flags + b"\x00\x01\x00\x00\x00\x00\x00\x00" + query[12:end]


@contextmanager
def nxdomain_dns(vps: LocalVps) -> Iterator[str]:
    """A DNS server on the machine side of the VPS's veth (``<host_ip4>:53``, UDP, that
    address only) answering every query NXDOMAIN at once, made the VPS's resolver (its
    own ``/etc/resolv.conf``; containers created afterwards use it through Docker's).

    Without it the VPS's resolver is the machine's, which the namespace cannot reach:
    each lookup waits out its timeouts, and Postfix greets a client only after the
    reverse lookup of its address (10 s here). A VPS with working DNS answers at once.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((vps.host_ip4, 53))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                query, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            answer = _nxdomain(query)
            if answer is not None:
                sock.sendto(answer, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        vps.run_inside(
            f"rm -f /etc/resolv.conf && echo 'nameserver {vps.host_ip4}' >/etc/resolv.conf"
        )
        yield vps.host_ip4
    finally:
        stop.set()
        thread.join(timeout=5)
        sock.close()


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
