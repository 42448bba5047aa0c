"""A Docker engine inside the local VPS (tests/vps_support.py), for whole-stack runs.

:func:`vps_docker` starts a second ``dockerd`` in the VPS's network *and* mount
namespace (entered with ``nsenter`` through the process holding them), so that
everything the relay's scripts do with ``docker`` over SSH happens "on the VPS":

* ports are published on the VPS's own addresses, its iptables/ip6tables (the
  namespace's alone) carry Docker's NAT next to ufw's rules;
* bind mounts (``/etc/letsencrypt``, ``/etc/dkim-relay/secrets``, the relay's
  work dir) resolve in the VPS's view of the file system (its overlays on
  ``/etc`` and ``/var``), not the machine's;
* the client finds the engine at the default ``/var/run/docker.sock`` (the
  namespace's own ``/run``), as on a VPS.

Layout: ``--data-root`` on a real directory of the machine under ``/tmp``
(the VPS overlays only ``/etc`` and ``/var``, and overlay2 cannot sit on
overlayfs: under ``/var/tmp`` the daemon falls back to vfs), ``--exec-root``,
``--pidfile`` and the socket under the namespace's ``/run``; the daemon starts
its own containerd there. ``ip netns exec`` remounted ``/sys`` for the network
namespace, which drops the cgroup mounts, so the machine's cgroup hierarchies
are mounted again under the namespace's ``/sys/fs/cgroup`` first.

``/etc/docker/daemon.json`` inside the VPS is merged by the very script
RelayHost's docker step sends (``host_scripts.render_docker``), with a no-op
restart command, *before* the daemon starts: the daemon runs with the IPv6
settings the stack asks for, and the step reports no change during
``pulumi up`` (the namespace has no systemd to ``systemctl restart docker``).

The namespace cannot reach package mirrors, so images are built on the
machine's engine and copied in with ``docker save | docker load``
(:meth:`VpsDocker.load_image`).

Teardown stops the daemon (its containers with it), unmounts nothing on the
machine (every mount lives in the namespace, which goes away with the VPS) and
deletes the data root.

For whole-stack runs of the repo's project against that VPS (tests/test_engine_vps.py,
tests/test_upgrade_vps.py, bench/fresh_vps.py): :func:`preload_relay_image` (the image
the stack builds, made on the machine and loaded, so the build on the VPS takes every
step from it), :func:`vps_stack_config`, :class:`PulumiRun` (every command's output kept,
to look for secrets in), :func:`submit`/:func:`wait_signed` (a message through the
relay, its copy in the sink checked by dkimpy) and :class:`GreetingProbe` (the relay's
220 greeting every 0.1 s: the longest gap is the downtime).
"""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dkim

from components.relay import read_tree
from pure import host_scripts as hs
from pure import relay_container as rc
from pure.shell import command_line
from tests.common import docker, free_port
from tests.engine_support import Stack
from tests.relay_support import Sink, dnsfunc_for, ensure_engine, make_message
from tests.vps_support import PROBE_HOST, RELAY_HOST, LocalVps, nxdomain_dns

SOCKET = "/run/docker.sock"
EXEC_ROOT = "/run/docker"
PIDFILE = "/run/docker.pid"


def _cgroup_mounts() -> list[tuple[str, str, str]]:
    """(mount point, fstype, options) of the machine's cgroup hierarchies."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            point = left.split()[4]
            fstype, _src, sopts = right.split()[:3]
            if fstype in ("cgroup", "cgroup2") and point.startswith("/sys/fs/cgroup"):
                opts = ",".join(o for o in sopts.split(",") if o not in ("rw", "ro"))
                out.append((point, fstype, opts))
    if not out:
        raise RuntimeError("no cgroup hierarchy mounted under /sys/fs/cgroup on this machine")
    return out


def _cgroup_script() -> str:
    lines = [
        "set -eu",
        "mountpoint -q /sys/fs/cgroup || mount -t tmpfs -o mode=0755 cgroup /sys/fs/cgroup",
    ]
    for point, fstype, opts in _cgroup_mounts():
        if point == "/sys/fs/cgroup":  # a pure cgroup2 machine
            lines[1] = f"mountpoint -q {point} || mount -t {fstype} {fstype} {point}"
            continue
        o = f"-o {opts} " if opts else ""
        lines.append(
            f"mkdir -p {point}; mountpoint -q {point} || mount -t {fstype} {o}{fstype} {point}"
        )
    return "\n".join(lines) + "\n"


@dataclass
class VpsDocker:
    vps: LocalVps
    proc: subprocess.Popen[bytes]
    data_root: str
    log_path: str

    def _enter(self) -> list[str]:
        return self.vps.enter()

    def docker(
        self, *args: str, input: bytes | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[bytes]:
        """The docker CLI inside the VPS namespaces (not through SSH)."""
        res = subprocess.run(
            [*self._enter(), "docker", "-H", f"unix://{SOCKET}", *args],
            input=input,
            capture_output=True,
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args[:3])} in the VPS failed (rc={res.returncode}): "
                f"{res.stderr.decode(errors='replace')[-2000:]}"
            )
        return res

    def load_image(self, tag: str, timeout: float = 600) -> str:
        """Copies ``tag`` from the machine's engine into the VPS's; returns its ID there."""
        with tempfile.TemporaryFile() as tar:
            save = subprocess.run(
                ["docker", "save", tag], stdout=tar, stderr=subprocess.PIPE, timeout=timeout
            )
            if save.returncode != 0:
                raise AssertionError(
                    f"docker save {tag} on the machine failed: {save.stderr.decode()[-2000:]}"
                )
            tar.seek(0)
            res = subprocess.run(
                [*self._enter(), "docker", "-H", f"unix://{SOCKET}", "load"],
                stdin=tar,
                capture_output=True,
                timeout=timeout,
            )
        if res.returncode != 0:
            raise AssertionError(f"docker load in the VPS failed: {res.stderr.decode()[-2000:]}")
        return self.docker("image", "inspect", "-f", "{{.Id}}", tag).stdout.decode().strip()

    def log_tail(self, n: int = 4000) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return ""


def _stop(proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@contextmanager
def vps_docker(
    vps: LocalVps, start_timeout: float = 60, fast_dns: bool = False
) -> Iterator[VpsDocker]:
    """A dockerd in ``vps``'s namespaces; stopped and its data removed afterwards.
    ``fast_dns``: the VPS resolves through :func:`tests.vps_support.nxdomain_dns` (every
    name unknown, at once), so the relay greets a client without waiting out a reverse
    lookup nobody answers."""
    with ExitStack() as stack:
        if fast_dns:
            stack.enter_context(nxdomain_dns(vps))
        yield stack.enter_context(_vps_docker(vps, start_timeout))


@contextmanager
def _vps_docker(vps: LocalVps, start_timeout: float) -> Iterator[VpsDocker]:
    for tool in ("dockerd", "docker", "nsenter", "containerd", "runc"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} missing: run scripts/docker-engine.sh")
    # 1. daemon.json as RelayHost's docker step leaves it (restart: nothing runs yet).
    # Run in the namespaces, not over SSH: a VPS booted by a fake cloud API has only
    # the keys the stack handed over.
    res = vps.run_inside(command_line(hs.render_docker(restart_command="true")))
    if "dkim-relay[docker]" not in res.stdout:
        raise AssertionError(f"the docker step did not run: {res.stdout}\n{res.stderr}")
    # 2. cgroups in the namespace's fresh /sys.
    enter = vps.enter()
    subprocess.run(
        [*enter, "sh", "-c", _cgroup_script()], check=True, capture_output=True, timeout=30
    )
    # 3. the daemon. /tmp: the machine's own file system in the VPS too (not overlaid).
    data_root = tempfile.mkdtemp(prefix="dkim-relay-vpsdocker-", dir="/tmp")
    log_path = os.path.join(data_root, "..", os.path.basename(data_root) + ".log")
    log_path = os.path.normpath(log_path)
    with open(log_path, "wb") as lf:
        proc = subprocess.Popen(
            [
                *enter,
                "dockerd",
                "--data-root",
                os.path.join(data_root, "data"),
                "--exec-root",
                EXEC_ROOT,
                "--pidfile",
                PIDFILE,
                "--host",
                f"unix://{SOCKET}",
                "--iptables=true",
            ],
            stdout=lf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")},
        )
    d = VpsDocker(vps, proc, data_root, log_path)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"dockerd in the VPS exited:\n{d.log_tail()}")
            if d.docker("version", check=False, timeout=20).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"dockerd in the VPS did not answer:\n{d.log_tail()}")
            time.sleep(0.3)
        yield d
    except BaseException:
        print(f"--- dockerd in the VPS ({log_path}) ---\n{d.log_tail()}")
        raise
    finally:
        # Stop running containers first (their stop timeouts), then the daemon.
        try:
            ids = d.docker("ps", "-q", check=False, timeout=30).stdout.decode().split()
            if ids:
                d.docker("rm", "-f", *ids, check=False, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            pass
        _stop(proc)
        # Anything the daemon left (containerd, shims, docker-proxy) is the
        # namespace's and ends with the VPS; the layers are on the machine's disk.
        # Mounts of the layers live only in the namespace: unmount them there.
        subprocess.run(
            [
                *enter,
                "sh",
                "-c",
                f"grep -o ' {data_root}[^ ]*' /proc/self/mountinfo | sort -r | "
                "xargs -r -n1 umount -l",
            ],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(data_root, ignore_errors=True)
        try:
            os.unlink(log_path)
        except OSError:
            pass


# --- whole-stack runs ------------------------------------------------------------------
STACK_DOMAIN = "dkim-relay.test"


def preload_relay_image(
    d: VpsDocker, repo: str, context: Path = rc.RELAY_DIR, also: Sequence[str] = ()
) -> tuple[str, str]:
    """Builds ``context`` (``relay/``) on the machine's engine under the name SmtpRelay
    gives it (``rc.image_name(repo, ...)``) and loads it and its base into the VPS (which
    reaches no package mirror): the stack's build on the VPS then takes every step from it
    (``cache_from``). ``also``: more names it gets in the VPS. Returns (name, ID in the
    VPS). The machine keeps no tag of it afterwards (``repo`` is the caller's own name)."""
    name = rc.image_name(repo, read_tree(context))
    ensure_engine()
    docker("build", "-q", "-t", name, str(context), timeout=900)
    try:
        d.load_image("debian:bookworm-slim")
        image_id = d.load_image(name)
    finally:
        subprocess.run(["docker", "image", "rm", name], capture_output=True, timeout=120)
    for other in also:
        d.docker("tag", name, other)
    return name, image_id


@contextmanager
def sink_beside(vps: LocalVps) -> Iterator[Sink]:
    """The receiving mail server of a stack on ``vps`` (its ``relayNexthop``): an aiosmtpd
    sink on the machine side of the VPS's veth, bound to that address only."""
    sink = Sink(vps.host_ip4, free_port(vps.host_ip4))
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()


def vps_stack_config(vps: LocalVps, sink: Sink, container: str, **over: Any) -> dict[str, Any]:
    """The repo's project on the namespace VPS: ``dnsProvider: manual``, pebble as Let's
    Encrypt, the sink as ``relayNexthop``, the port 25 probe toward the machine side of
    the veth, the host key pinned."""
    cfg: dict[str, Any] = {
        "deployTarget": "vps",
        "dnsProvider": "manual",
        "domain": STACK_DOMAIN,
        "relayHost": RELAY_HOST,
        "vpsIpv4": vps.ip4,
        "vpsIpv6": vps.ip6,
        "sshHost": vps.ip4,
        "sshPort": vps.ssh_port,
        "sshHostKey": vps.host_key,
        "acmeEmail": f"postmaster@{STACK_DOMAIN}",
        "acmeServer": vps.acme_server,
        "acmeCaBundle": vps.acme_ca_bundle,
        "relayNexthop": f"[{vps.host_ip4}]:{sink.port}",
        "relayContainerName": container,
        "dkimSelector": "one",
        "port25Probe": PROBE_HOST,
    }
    cfg.update(over)
    return cfg


class PulumiRun:
    """A stack's pulumi commands, each output kept (to look for secrets in afterwards)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.texts: list[tuple[str, str]] = []

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        t = time.monotonic()
        res = self.stack.run(*args)
        print(f"pulumi {' '.join(args)}: rc={res.returncode} in {time.monotonic() - t:.1f}s")
        self.texts.append((" ".join(args), res.stdout + res.stderr))
        return res

    def ok(self, *args: str) -> str:
        res = self.run(*args)
        assert res.returncode == 0, (
            f"pulumi {' '.join(args)} failed:\n{res.stdout[-8000:]}\n{res.stderr[-4000:]}"
        )
        return res.stdout

    def outputs(self) -> dict[str, Any]:
        return self.stack.outputs()


def submit(outputs: dict[str, Any], vps: LocalVps, subject: str, password: str = "") -> None:
    """One message through the relay (STARTTLS on the VPS's IPv4, AUTH with the stack's
    own login), checked against pebble's root for ``relayHost``."""
    ctx = ssl.create_default_context(cadata=vps.pebble_root_pem())
    sender = outputs["smtpUsername"]
    with smtplib.SMTP(
        vps.ip4, int(outputs["smtpPort"]), local_hostname="client.test", timeout=30
    ) as s:
        s._host = outputs["smtpServer"]  # type: ignore[attr-defined]  # TLS name: relayHost
        s.starttls(context=ctx)
        s.login(sender, password or outputs["smtpPassword"])
        s.sendmail(
            sender, ["someone@example.net"], make_message(sender, "someone@example.net", subject)
        )


def signature_ok(data: bytes, outputs: dict[str, Any], dkim_value: str | None = None) -> str:
    """Checks the copy's DKIM signature with dkimpy against ``dkimDnsValue`` (or
    ``dkim_value``); returns the selector it was signed with."""
    assert b"DKIM-Signature:" in data, data[:2000]
    sig = data.split(b"DKIM-Signature:", 1)[1].split(b"\r\n\r\n", 1)[0]
    flat = sig.replace(b" ", b"").replace(b"\r\n\t", b"").replace(b"\r\n", b"")
    tags = dict(t.split(b"=", 1) for t in flat.split(b";") if b"=" in t)
    assert tags.get(b"d") == outputs["domain"].encode(), sig
    selector = tags[b"s"].decode()
    value = dkim_value or outputs["dkimDnsValues"][selector]
    records = {f"{selector}._domainkey.{outputs['domain']}": value}
    assert dkim.verify(data, dnsfunc=dnsfunc_for(records)), "dkimpy rejects the signature"
    return selector


def wait_delivered(sink: Sink, subject: str, timeout: float = 90, logs: Any = None) -> bytes:
    """The sink's copy of the message with ``subject``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = [m for m in sink.snapshot() if subject.encode() in m.data]
        if got:
            return got[0].data
        time.sleep(0.3)
    raise AssertionError(
        f"the sink got no {subject!r} within {timeout:.0f} s"
        + (f"; relay logs:\n{logs()}" if logs else "")
    )


def wait_deferred(d: VpsDocker, container: str, timeout: float = 60) -> str:
    """The relay's queue once it holds a message it could not deliver (the sink down)."""
    deadline = time.monotonic() + timeout
    while True:
        queue = d.docker("exec", container, "postqueue", "-c", "/etc/postfix", "-p")
        text = queue.stdout.decode(errors="replace")
        if "someone@example.net" in text and "refused" in text:
            return text
        assert time.monotonic() < deadline, f"no deferred message in the queue:\n{text}"
        time.sleep(1)


def flush(d: VpsDocker, container: str) -> None:
    """Postfix retries deferred mail after minutes; a test asks for it now."""
    d.docker("exec", container, "postqueue", "-c", "/etc/postfix", "-f")


def send_signed(outputs: dict[str, Any], vps: LocalVps, sink: Sink, container: str) -> bytes:
    """A message through the relay, delivered to the sink and signed (dkimpy verifies)."""
    subject = f"engine-vps {uuid.uuid4().hex}"

    def logs() -> str:
        return vps.ssh(f"docker logs --tail 60 {container} 2>&1", check=False).stdout

    try:
        submit(outputs, vps, subject)
    except (OSError, smtplib.SMTPException) as e:
        raise AssertionError(f"submission to the relay failed: {e!r}; logs:\n{logs()}") from e
    data = wait_delivered(sink, subject, logs=logs)
    assert signature_ok(data, outputs) == outputs["dkimSelector"]
    return data


@dataclass
class GreetingProbe:
    """Connects to ``host:port`` every ``interval`` s and reads the SMTP greeting; keeps
    (time, greeted) per attempt. :meth:`longest_gap` is the downtime a client saw.

    ``sources``: the client addresses, taken in turn (the relay allows a client 30
    connections a minute; :meth:`LocalVps.client_addresses` gives enough of them)."""

    host: str
    port: int
    sources: list[str] = field(default_factory=list)
    interval: float = 0.1
    attempts: list[tuple[float, bool]] = field(default_factory=list)
    answers: dict[str, int] = field(default_factory=dict)  # first line's code -> count
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _greeted(self, n: int) -> bool:
        source = (self.sources[n % len(self.sources)], 0) if self.sources else None
        try:
            with socket.create_connection(
                (self.host, self.port), timeout=1, source_address=source
            ) as s:
                s.settimeout(1)
                code = s.recv(4)[:3].decode(errors="replace") or "closed"
        except OSError as e:
            code = type(e).__name__
        self.answers[code] = self.answers.get(code, 0) + 1
        return code == "220"

    def _loop(self) -> None:
        n = 0
        while not self._stop.is_set():
            t = time.monotonic()
            self.attempts.append((t, self._greeted(n)))
            n += 1
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - t)))

    def __enter__(self) -> GreetingProbe:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def longest_gap(self) -> float:
        """The longest time between two greetings (from the first attempt when the first
        ones failed, to the last attempt when the last ones failed)."""
        if not self.attempts:
            return 0.0
        last_ok = self.attempts[0][0]
        gap = 0.0
        for t, ok in self.attempts:
            if ok:
                gap = max(gap, t - last_ok)
                last_ok = t
        return max(gap, self.attempts[-1][0] - last_ok)

    def failures(self) -> int:
        return sum(1 for _, ok in self.attempts if not ok)
