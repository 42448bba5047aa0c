"""Namespace VPSs (tests/vps_support.py) that a fake cloud API boots as a cloud provider
boots a server: with the SSH host key the stack hands over in cloud-init's user_data and
the public keys it asks to authorize, sshd on port 22, the VPS's IPv6 address the first
of its /64.

:func:`cloud_vps_pool` yields a :class:`CloudVpsPool`:

* :meth:`CloudVpsPool.prepare` makes a VPS in advance (network, overlays, pebble, no
  sshd), so a test knows its pebble URL and CA bundle before it writes the stack's
  config;
* :meth:`CloudVpsPool.boot` (the fake API's "create server") reads the user_data as
  cloud-init would (:func:`parse_user_data`: ``ssh_keys``, ``ssh_deletekeys``,
  ``ssh_genkeytypes``, ``ssh_authorized_keys``; anything else is refused, since nothing
  here would run it), boots the oldest prepared VPS with those keys, starts a dockerd
  in it (:func:`tests.vps_docker_support.vps_docker`) and returns its IPv4 address and
  IPv6 /64;
* :meth:`CloudVpsPool.halt` (the fake API's "delete server") stops the dockerd, sshd
  and everything started on the VPS since boot.

Each prepared VPS also has a metadata service like a cloud server's
(:func:`metadata_service`): ``http://169.254.169.254/hetzner/v1/userdata`` answers the
user_data given at boot to anything on the VPS, its containers included. It runs in a
namespace of its own behind a second veth of the VPS, so a container's request is
routed out of the VPS (Docker's forwarding and NAT, the VPS firewall's forward rules)
as on a real server, where the service sits beyond the gateway; the machine's own
169.254.169.254, if it has one, is never involved.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import yaml

from components.host import public_key_line
from tests.vps_docker_support import VpsDocker, vps_docker
from tests.vps_support import LocalVps, local_vps

METADATA_IP = "169.254.169.254"
USERDATA_PATH = "/hetzner/v1/userdata"
USERDATA_URL = f"http://{METADATA_IP}{USERDATA_PATH}"

# cloud-init's keys this fake acts on; it refuses any other (a real server would run
# it, this one would silently not).
MODELED_KEYS = ("ssh_keys", "ssh_deletekeys", "ssh_genkeytypes", "ssh_authorized_keys")
# cloud-init's default ssh_genkeytypes, and the start of each type's public line.
KEY_TYPES = ("rsa", "ecdsa", "ed25519")
_PUBLIC_PREFIX = {"rsa": "ssh-rsa ", "ecdsa": "ecdsa-sha2-", "ed25519": "ssh-ed25519 "}


class CloudInitError(ValueError):
    """user_data a real server would not boot with the keys the stack meant."""


@dataclass(frozen=True)
class CloudInit:
    """What a server does with its user_data's SSH settings."""

    host_keys: dict[str, str]  # key type -> OpenSSH private key handed over
    # cloud-init generates these types only when user_data has no ssh_keys (refused
    # here); ssh_deletekeys removes the image's keys, and the prepared VPS has none.
    genkeytypes: tuple[str, ...]
    deletekeys: bool
    authorized_keys: tuple[str, ...]  # user_data's ssh_authorized_keys, for root


def _same_key(a: str, b: str) -> bool:
    return a.split()[:2] == b.split()[:2]


def parse_user_data(user_data: str) -> CloudInit:
    """cloud-init's reading of ``user_data``: a ``#cloud-config`` YAML document whose
    ``ssh_keys`` must hold an ``ed25519_private`` host key (without one a real server
    generates its own, which the stack could not have pinned)."""
    if not user_data.startswith("#cloud-config"):
        raise CloudInitError(
            "user_data does not start with '#cloud-config': cloud-init would not read it "
            "as cloud-config and the server would boot with keys of its own"
        )
    try:
        doc = yaml.safe_load(user_data)
    except yaml.YAMLError as e:
        raise CloudInitError(f"user_data is not valid YAML: {e}") from e
    doc = {} if doc is None else doc
    if not isinstance(doc, dict):
        raise CloudInitError(f"user_data is YAML but not a mapping: {type(doc).__name__}")
    unknown = sorted(set(doc) - set(MODELED_KEYS))
    if unknown:
        raise CloudInitError(
            f"user_data has {unknown}: the fake cloud server acts only on {list(MODELED_KEYS)} "
            "(a real one would act on the rest too)"
        )
    ssh_keys = doc.get("ssh_keys") or {}
    if not isinstance(ssh_keys, dict):
        raise CloudInitError("user_data's ssh_keys is not a mapping")
    known = {f"{t}_{part}" for t in KEY_TYPES for part in ("private", "public")}
    if set(ssh_keys) - known:
        raise CloudInitError(
            f"user_data's ssh_keys has {sorted(set(ssh_keys) - known)}; "
            f"the fake cloud server knows {sorted(known)}"
        )
    if "ed25519_private" not in ssh_keys:
        raise CloudInitError(
            "user_data hands over no SSH host key (ssh_keys.ed25519_private): a real "
            "server would generate its own, one the stack could not have pinned"
        )
    host_keys: dict[str, str] = {}
    for t in KEY_TYPES:
        private = ssh_keys.get(f"{t}_private")
        public = ssh_keys.get(f"{t}_public")
        if private is None:
            if public is not None:
                raise CloudInitError(f"user_data's ssh_keys has {t}_public without {t}_private")
            continue
        derived = public_key_line(str(private))
        if derived is None:
            raise CloudInitError(f"user_data's ssh_keys.{t}_private is not a private key")
        if not derived.startswith(_PUBLIC_PREFIX[t]):
            raise CloudInitError(f"user_data's ssh_keys.{t}_private is a {derived.split()[0]}")
        # cloud-init would write both files as given and sshd serve the private key's
        # half: a mismatch is the stack pinning a key the server never presents.
        if public is not None and not _same_key(derived, str(public)):
            raise CloudInitError(
                f"user_data's ssh_keys.{t}_public is not the public half of {t}_private"
            )
        host_keys[t] = str(private)
    gen = doc.get("ssh_genkeytypes", list(KEY_TYPES))
    if not isinstance(gen, list) or set(map(str, gen)) - set(KEY_TYPES):
        raise CloudInitError(f"user_data's ssh_genkeytypes: {gen!r} (known: {list(KEY_TYPES)})")
    deletekeys = doc.get("ssh_deletekeys", True)
    if not isinstance(deletekeys, bool):
        raise CloudInitError(f"user_data's ssh_deletekeys is not a boolean: {deletekeys!r}")
    authorized = doc.get("ssh_authorized_keys") or []
    if not isinstance(authorized, list) or not all(isinstance(k, str) for k in authorized):
        raise CloudInitError("user_data's ssh_authorized_keys is not a list of key lines")
    return CloudInit(host_keys, tuple(map(str, gen)), deletekeys, tuple(authorized))


# --- the metadata service -------------------------------------------------------------
# Serves one file at USERDATA_PATH (404 until it exists) and logs who asked.
_METADATA_SERVER = r"""
import http.server, sys
address, path, userdata, ready, log = sys.argv[1:6]

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with open(log, "a") as f:
            f.write(f"{self.client_address[0]} {self.path}\n")
        try:
            with open(userdata, "rb") as f:
                data = f.read() if self.path == path else None
        except FileNotFoundError:
            data = None
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer((address, 80), Handler)
open(ready, "w").close()
server.serve_forever()
"""


@dataclass
class MetadataService:
    netns: str
    directory: str
    proc: subprocess.Popen[bytes]

    def set_user_data(self, user_data: str) -> None:
        tmp = os.path.join(self.directory, "userdata.tmp")
        with open(tmp, "w") as f:
            f.write(user_data)
        os.replace(tmp, os.path.join(self.directory, "userdata"))

    def requests(self) -> list[tuple[str, str]]:
        """(client address as the service saw it, path) of every request so far."""
        try:
            with open(os.path.join(self.directory, "requests.log")) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        return [(a, p) for a, _, p in (line.partition(" ") for line in lines)]


def _run(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True, text=True, timeout=60)


@contextmanager
def metadata_service(vps: LocalVps) -> Iterator[MetadataService]:
    """169.254.169.254:80 for ``vps``: a namespace of its own joined to the VPS by a
    veth that the VPS routes 169.254.169.254/32 to (no address of the VPS changes)."""
    suffix = vps.netns.removeprefix("dkrvps")
    md_ns, veth_vps, veth_md = f"dkrmd{suffix}", f"dkrm{suffix}", f"dkrn{suffix}"
    directory = tempfile.mkdtemp(prefix="dkim-relay-metadata-")
    proc: subprocess.Popen[bytes] | None = None
    made = False
    try:
        _run("ip", "netns", "add", md_ns)
        made = True
        _run("ip", "link", "add", veth_vps, "type", "veth", "peer", "name", veth_md)
        _run("ip", "link", "set", veth_vps, "netns", vps.netns)
        _run("ip", "link", "set", veth_md, "netns", md_ns)
        in_vps, in_md = ("ip", "netns", "exec", vps.netns), ("ip", "netns", "exec", md_ns)
        _run(*in_vps, "ip", "link", "set", veth_vps, "up")
        _run(*in_vps, "ip", "route", "add", f"{METADATA_IP}/32", "dev", veth_vps, "src", vps.ip4)
        _run(*in_md, "ip", "link", "set", "lo", "up")
        _run(*in_md, "ip", "addr", "add", f"{METADATA_IP}/32", "dev", veth_md)
        _run(*in_md, "ip", "link", "set", veth_md, "up")
        # Answers go back whatever the source (the VPS's address, or a NAT's).
        _run(*in_md, "ip", "route", "add", "default", "dev", veth_md)
        ready = os.path.join(directory, "ready")
        with open(os.path.join(directory, "server.log"), "wb") as lf:
            proc = subprocess.Popen(
                [*in_md, sys.executable, "-c", _METADATA_SERVER, METADATA_IP, USERDATA_PATH]
                + [os.path.join(directory, n) for n in ("userdata", "ready", "requests.log")],
                stdout=lf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 30
        while not os.path.exists(ready):
            if proc.poll() is not None or time.monotonic() > deadline:
                with open(os.path.join(directory, "server.log"), errors="replace") as f:
                    raise RuntimeError(f"the metadata service did not start:\n{f.read()}")
            time.sleep(0.05)
        yield MetadataService(md_ns, directory, proc)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if made:
            # Deleting the namespace deletes the veth pair, the VPS's route with it.
            subprocess.run(["ip", "netns", "del", md_ns], capture_output=True, timeout=60)
        shutil.rmtree(directory, ignore_errors=True)


def read_user_data_on(vps: LocalVps) -> subprocess.CompletedProcess[str]:
    """``curl`` of :data:`USERDATA_URL` run on ``vps`` (as root, not through sshd)."""
    return vps.run_inside(
        f"curl -sS --max-time 10 --fail {shlex.quote(USERDATA_URL)}", check=False, timeout=30
    )


# --- the pool -------------------------------------------------------------------------
class BootedServer(NamedTuple):
    ipv4: str
    ipv6_network: str  # the /64, whose ::1 is the server's address


@dataclass
class CloudServer:
    vps: LocalVps
    metadata: MetadataService
    state: str = "prepared"  # prepared, running, halted
    user_data: str = ""
    cloud_init: CloudInit | None = None
    host_keys: list[str] = field(default_factory=list)  # public lines sshd offers
    docker: VpsDocker | None = None
    _stack: ExitStack = field(default_factory=ExitStack, repr=False)


class CloudVpsPool:
    """Prepared and booted namespace VPSs; see the module's docstring."""

    def __init__(
        self,
        stack: ExitStack,
        docker: bool,
        fast_dns: bool,
        on_boot: Callable[[CloudServer], Any] | None,
        ssh_port: int,
    ) -> None:
        self._stack = stack
        self._docker = docker
        self._fast_dns = fast_dns
        self._on_boot = on_boot
        self._ssh_port = ssh_port
        # The fake API may call from its own server thread.
        self._lock = threading.RLock()
        self.servers: list[CloudServer] = []

    def prepare(self) -> CloudServer:
        """A VPS with its network, overlays, pebble and metadata service, not booted."""
        with self._lock:
            vps = self._stack.enter_context(
                local_vps(boot=False, ssh_port=self._ssh_port, ipv6_vps_host=1)
            )
            server = CloudServer(vps, self._stack.enter_context(metadata_service(vps)))
            self.servers.append(server)
            return server

    def boot(self, user_data: str, authorized_keys: Sequence[str]) -> BootedServer:
        """Boots the oldest prepared VPS (one made now if none waits) as a cloud server
        created with ``user_data`` and the SSH keys ``authorized_keys`` (public lines)
        for root. Raises :class:`CloudInitError` before anything boots when the
        user_data hands over no ed25519 host key (or cannot be read)."""
        ci = parse_user_data(user_data)
        with self._lock:
            waiting = [s for s in self.servers if s.state == "prepared"]
            server = waiting[0] if waiting else self.prepare()
            server.metadata.set_user_data(user_data)
            server.user_data, server.cloud_init = user_data, ci
            # Exactly the keys handed over: cloud-init generates none when given some.
            others = [ci.host_keys[t] for t in KEY_TYPES if t != "ed25519" and t in ci.host_keys]
            server.vps.boot(
                ci.host_keys["ed25519"],
                [*authorized_keys, *ci.authorized_keys],
                more_host_keys=others,
            )
            server.state = "running"
            server.host_keys = [
                line
                for line in (public_key_line(k) for k in [ci.host_keys["ed25519"], *others])
                if line
            ]
            try:
                if self._docker:
                    server.docker = server._stack.enter_context(
                        vps_docker(server.vps, fast_dns=self._fast_dns)
                    )
                if self._on_boot is not None:
                    self._on_boot(server)
            except BaseException:
                self._halt(server)
                raise
            return BootedServer(server.vps.ip4, server.vps.ip6_network)

    def server(self, ipv4: str) -> CloudServer:
        """The running server at ``ipv4``."""
        for s in self.servers:
            if s.state == "running" and s.vps.ip4 == ipv4:
                return s
        raise KeyError(f"no running server at {ipv4}")

    def halt(self, ipv4: str) -> None:
        """Deletes the running server at ``ipv4``: its dockerd (containers first), sshd
        and what else started on it since boot stop; pebble and its metadata service
        stay until the pool ends."""
        with self._lock:
            self._halt(self.server(ipv4))

    def _halt(self, server: CloudServer) -> None:
        try:
            server._stack.close()
        finally:
            server.docker = None
            server.vps.halt()
            server.state = "halted"


@contextmanager
def cloud_vps_pool(
    docker: bool = True,
    fast_dns: bool = True,
    on_boot: Callable[[CloudServer], Any] | None = None,
    ssh_port: int = 22,
) -> Iterator[CloudVpsPool]:
    """VPSs for a fake cloud API; every one torn down afterwards.

    ``docker``: start a dockerd in each VPS at boot. ``fast_dns``: the VPS resolves
    every name at once (NXDOMAIN, :func:`tests.vps_support.nxdomain_dns`) as a server
    with working DNS would, not after timeouts. ``on_boot``: called with the
    :class:`CloudServer` once booted (its dockerd running), e.g. to preload the relay's
    image (:func:`tests.vps_docker_support.preload_relay_image`)."""
    with ExitStack() as stack:
        pool = CloudVpsPool(stack, docker, fast_dns, on_boot, ssh_port)
        try:
            yield pool
        finally:
            # Daemons stop cleanly before their VPS goes.
            for s in pool.servers:
                if s.state == "running":
                    pool._halt(s)
