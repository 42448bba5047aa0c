"""A Docker engine inside the local VPS (tests/vps_support.py), for whole-stack runs.

:func:`vps_docker` starts a second ``dockerd`` in the VPS's network *and* mount
namespace (entered with ``nsenter`` through the VPS's sshd process), so that
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
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pure import host_scripts as hs
from pure.shell import command_line
from tests.vps_support import LocalVps

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
        return ["nsenter", "-t", str(self.vps.sshd_pid), "-n", "-m"]

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
def vps_docker(vps: LocalVps, start_timeout: float = 60) -> Iterator[VpsDocker]:
    """A dockerd in ``vps``'s namespaces; stopped and its data removed afterwards."""
    for tool in ("dockerd", "docker", "nsenter", "containerd", "runc"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} missing: run scripts/docker-engine.sh")
    # 1. daemon.json as RelayHost's docker step leaves it (restart: nothing runs yet).
    res = vps.ssh(command_line(hs.render_docker(restart_command="true")))
    if "dkim-relay[docker]" not in res.stdout:
        raise AssertionError(f"the docker step did not run: {res.stdout}\n{res.stderr}")
    # 2. cgroups in the namespace's fresh /sys.
    enter = ["nsenter", "-t", str(vps.sshd_pid), "-n", "-m"]
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
