"""A fake Hetzner Cloud API on loopback, for the tests that drive the hcloud provider.

``FakeHcloud`` serves the part of https://docs.hetzner.cloud that the Pulumi hcloud
provider (the bridged terraform-provider-hcloud, which talks through hcloud-go) and the
official Python client use for a relay's VPS: servers and their actions (reverse DNS,
power, protection), actions (``GET /actions?id=..`` as hcloud-go's waiter polls them),
SSH keys, firewalls and their actions, primary IPs as a server's public addresses, and
the look-ups of locations, datacenters, server types and images. The JSON follows the
API's published shapes (hcloud-go's ``schema`` package); errors come as
``{"error": {"code", "message", "details"}}`` with the API's status codes.

Nothing here connects anywhere: the server listens on 127.0.0.1 (a free port), and a
server's "boot" is the test's ``boot`` callback, which returns the addresses of whatever
stands for the VPS (a network namespace, say). Without one, addresses come from a
private pool that nothing uses.

    with FakeHcloud(token=token, boot=boot, halt=halt) as fake:
        ...  # hcloud:endpoint = fake.url, hcloud:token = token
        assert fake.unhandled == []

What tests look at: ``fake.requests`` (every request: method, path under ``/v1``,
query, JSON body, the route it matched), ``fake.unhandled`` (requests the fake does not
model: unknown routes, features it leaves out, its own failures), the state
(``fake.servers``, ``fake.ssh_keys``, ``fake.firewalls``, ``fake.actions``) and
``fake.ptrs()``. The token is checked on every request and never recorded.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import ipaddress
import itertools
import json
import re
import secrets
import string
import threading
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

API_PREFIX = "/v1"
USER_DATA_LIMIT = 32 * 1024  # "This field is limited to 32KiB."
MAX_FIREWALLS_PER_SERVER = 5
MAX_FIREWALL_RULES = 50

Json = dict[str, Any]
Match = re.Match[str]
Query = dict[str, list[str]]
Reply = tuple[int, Json | None]


def make_token() -> str:
    """A random API token of the length the provider insists on (64 characters)."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(64))


def now() -> str:
    # The API's own timestamps: RFC 3339 with an explicit offset, whole seconds.
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


# --- the catalogue: what a project sees without creating anything -------------------


@dataclass(frozen=True)
class Location:
    id: int
    name: str
    description: str
    country: str
    city: str
    latitude: float
    longitude: float
    datacenter_id: int
    datacenter: str
    ipv6: bool = True
    network_zone: str = "eu-central"

    def json(self) -> Json:
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "country": self.country,
            "city": self.city,
            "latitude": self.latitude,
            "longitude": self.longitude,
            "network_zone": self.network_zone,
        }

    def datacenter_json(self, server_type_ids: list[int]) -> Json:
        return {
            "id": self.datacenter_id,
            "name": self.datacenter,
            "description": f"{self.city} DC {self.datacenter.rsplit('dc', 1)[-1]}",
            "location": self.json(),
            "server_types": {
                "supported": server_type_ids,
                "available": server_type_ids,
                "available_for_migration": server_type_ids,
            },
        }


DEFAULT_LOCATIONS = (
    Location(
        1, "fsn1", "Falkenstein DC Park 1", "DE", "Falkenstein", 50.47612, 12.370071, 4, "fsn1-dc14"
    ),
    Location(
        2, "nbg1", "Nuremberg DC Park 1", "DE", "Nuremberg", 49.452102, 11.076665, 2, "nbg1-dc3"
    ),
    Location(
        3, "hel1", "Helsinki DC Park 1", "FI", "Helsinki", 60.169855, 24.938379, 3, "hel1-dc2"
    ),
)


def _price(hourly: str, monthly: str, location: str) -> Json:
    def amount(net: str) -> Json:
        return {"net": net, "gross": f"{float(net) * 1.19:.10f}"}

    return {
        "location": location,
        "price_hourly": amount(hourly),
        "price_monthly": amount(monthly),
        "included_traffic": 21990232555520,
        "price_per_tb_traffic": amount("1.0000000000"),
    }


# (id, name, cores, memory GB, disk GB, cpu type, architecture, category, hourly, monthly)
_SERVER_TYPES = (
    (104, "cx22", 2, 4.0, 40, "shared", "x86", "cost_optimized", "0.0060", "3.7900"),
    (105, "cx32", 4, 8.0, 80, "shared", "x86", "cost_optimized", "0.0110", "6.8000"),
    (22, "cpx11", 2, 2.0, 40, "shared", "x86", "regular_purpose", "0.0070", "4.3500"),
    (45, "cax11", 2, 4.0, 40, "shared", "arm", "cost_optimized", "0.0060", "3.7900"),
)

# (id, name, description, os flavor, os version, architecture)
_IMAGES = (
    (114690387, "debian-12", "Debian 12", "debian", "12", "x86"),
    (114690389, "debian-12", "Debian 12", "debian", "12", "arm"),
    (202213417, "debian-13", "Debian 13", "debian", "13", "x86"),
    (202213419, "debian-13", "Debian 13", "debian", "13", "arm"),
    (161547269, "ubuntu-24.04", "Ubuntu 24.04", "ubuntu", "24.04", "x86"),
    (161547270, "ubuntu-24.04", "Ubuntu 24.04", "ubuntu", "24.04", "arm"),
)


def _server_type_json(row: tuple[Any, ...], locations: list[Location]) -> Json:
    id_, name, cores, memory, disk, cpu, arch, category, hourly, monthly = row
    return {
        "id": id_,
        "name": name,
        "description": name.upper(),
        "category": category,
        "cores": cores,
        "memory": memory,
        "disk": disk,
        "deprecated": False,
        "deprecation": None,
        "prices": [_price(hourly, monthly, loc.name) for loc in locations],
        "storage_type": "local",
        "cpu_type": cpu,
        "architecture": arch,
        "included_traffic": 21990232555520,
        "locations": [
            {
                "id": loc.id,
                "name": loc.name,
                "deprecation": None,
                "available": True,
                "recommended": True,
            }
            for loc in locations
        ],
    }


def _image_json(row: tuple[Any, ...]) -> Json:
    id_, name, description, flavor, version, arch = row
    return {
        "id": id_,
        "type": "system",
        "status": "available",
        "name": name,
        "description": description,
        "image_size": None,
        "disk_size": 5,
        "created": "2024-01-01T00:00:00+00:00",
        "created_from": None,
        "bound_to": None,
        "os_flavor": flavor,
        "os_version": version,
        "rapid_deploy": True,
        "protection": {"delete": False},
        "deprecated": None,
        "deleted": None,
        "labels": {},
        "architecture": arch,
    }


# --- what the test is told and answers --------------------------------------------


@dataclass(frozen=True)
class BootRequest:
    """What ``boot`` gets for a new server. ``ipv4``/``ipv6``: whether the server gets
    an address of that family (asked for in ``public_net``; IPv6 only where the location
    has it)."""

    server_id: int
    name: str
    location: str
    image: str
    server_type: str
    user_data: str
    public_keys: tuple[str, ...]
    labels: dict[str, str]
    ipv4: bool
    ipv6: bool


class BootFailed(Exception):
    """Raised by ``boot`` to fail the server's create action with this error code."""

    def __init__(self, message: str, code: str = "action_failed") -> None:
        super().__init__(message)
        self.code = code


# boot(request) -> (IPv4 address or None, IPv6 /64 network or None)
Boot = Callable[[BootRequest], tuple[str | None, str | None]]
Halt = Callable[[int], None]


@dataclass
class Recorded:
    method: str
    path: str  # under /v1, e.g. "/servers/7"
    query: Query
    body: Any  # the parsed JSON body, None without one
    route: str | None  # e.g. "POST /servers/{id}/actions/change_dns_ptr"; None: unhandled


@dataclass
class Action:
    id: int
    command: str
    resources: list[tuple[int, str]]  # (id, type)
    status: str = "running"
    progress: int = 0
    started: str = field(default_factory=now)
    finished: str | None = None
    error: Json | None = None

    def json(self) -> Json:
        return {
            "id": self.id,
            "command": self.command,
            "status": self.status,
            "progress": self.progress,
            "started": self.started,
            "finished": self.finished,
            "resources": [{"id": i, "type": t} for i, t in self.resources],
            "error": self.error,
        }

    def as_started(self) -> Json:
        """The action as the request that starts it answers: still running."""
        return {**self.json(), "status": "running", "progress": 0, "finished": None, "error": None}

    def finish(self, error: Json | None = None) -> None:
        self.status = "error" if error else "success"
        self.progress = 100
        self.finished = now()
        self.error = error


@dataclass
class SshKey:
    id: int
    name: str
    public_key: str
    fingerprint: str
    labels: dict[str, str]
    created: str = field(default_factory=now)

    def json(self) -> Json:
        return {
            "id": self.id,
            "name": self.name,
            "fingerprint": self.fingerprint,
            "public_key": self.public_key,
            "labels": self.labels,
            "created": self.created,
        }


@dataclass
class Firewall:
    id: int
    name: str
    labels: dict[str, str]
    rules: list[Json]
    applied_to: list[Json]  # {"type": "server", "server": {"id"}} or label_selector
    created: str = field(default_factory=now)

    def servers(self) -> list[int]:
        return [a["server"]["id"] for a in self.applied_to if a["type"] == "server"]

    def selectors(self) -> list[str]:
        return [
            a["label_selector"]["selector"]
            for a in self.applied_to
            if a["type"] == "label_selector"
        ]


@dataclass
class Server:
    id: int
    name: str
    location: Location
    server_type: Json
    image: Json
    user_data: str
    ssh_keys: list[int]
    public_keys: list[str]
    labels: dict[str, str]
    want_ipv4: bool
    want_ipv6: bool
    start_after_create: bool
    ipv4_id: int | None
    ipv6_id: int | None
    status: str = "initializing"
    ipv4: str | None = None
    ipv6_net: str | None = None  # "fd00::/64"
    ipv4_ptr: str | None = None
    ipv6_ptrs: dict[str, str] = field(default_factory=dict)
    protection: dict[str, bool] = field(default_factory=lambda: {"delete": False, "rebuild": False})
    created: str = field(default_factory=now)
    create_actions: list[int] = field(default_factory=list)
    worker: threading.Thread | None = None


def default_ptr(ipv4: str) -> str:
    """The PTR Hetzner gives a server's IPv4 until one is set (and after a reset)."""
    return "static." + ".".join(reversed(ipv4.split("."))) + ".clients.your-server.de"


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: Json | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details = details if details is not None else {}


class Unsupported(ApiError):
    """A request the fake does not model (recorded in ``unhandled``)."""

    def __init__(self, what: str) -> None:
        super().__init__(422, "unsupported_error", f"the fake Hetzner API does not model {what}")


def invalid(field_name: str, message: str) -> ApiError:
    return ApiError(
        422,
        "invalid_input",
        f"invalid input in field '{field_name}': {message}",
        {"fields": [{"name": field_name, "messages": [message]}]},
    )


def not_found(what: str, code: str = "not_found") -> ApiError:
    return ApiError(404, code, f"{what} not found")


# --- validation as the API does it ---------------------------------------------------

_HOST_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_HOST_LABEL}(?:\.{_HOST_LABEL})*$")
_LABEL_PART = re.compile(r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9._-]{0,61}[a-zA-Z0-9])?)$")
_PORT = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$")
_SSH_KEY_TYPES = {
    "ssh-rsa",
    "ssh-dss",
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
}


def check_labels(value: Any, field_name: str = "labels") -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(field_name, "must be an object")
    for key, val in value.items():
        prefix, _, name = key.rpartition("/")
        ok_prefix = not prefix or (len(prefix) <= 253 and _HOSTNAME.match(prefix))
        if not (ok_prefix and _LABEL_PART.match(name) and len(name) <= 63):
            raise invalid(field_name, f"invalid label key {key!r}")
        if prefix == "hetzner.cloud":
            raise invalid(field_name, "the hetzner.cloud/ prefix is reserved")
        if not isinstance(val, str) or (val and not _LABEL_PART.match(val)):
            raise invalid(field_name, f"invalid label value for {key!r}")
    return dict(value)


def check_name(value: Any, field_name: str = "name", hostname: bool = False) -> str:
    if not isinstance(value, str) or not value:
        raise invalid(field_name, "is required")
    if hostname and not _HOSTNAME.match(value):
        raise invalid(field_name, "must be a valid hostname as per RFC 1123")
    if len(value) > 128:
        raise invalid(field_name, "is too long")
    return value


def parse_public_key(text: Any) -> tuple[str, str]:
    """The key as the API stores it (surrounding whitespace dropped) and its MD5
    fingerprint."""
    if not isinstance(text, str) or not text.strip():
        raise invalid("public_key", "is required")
    key = text.strip()
    parts = key.split()
    if len(parts) < 2 or parts[0] not in _SSH_KEY_TYPES:
        raise invalid("public_key", "invalid public key")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError) as e:
        raise invalid("public_key", "invalid public key") from e
    kind = parts[0].encode()
    if blob[:4] != len(kind).to_bytes(4, "big") or blob[4 : 4 + len(kind)] != kind:
        raise invalid("public_key", "invalid public key")
    digest = hashlib.md5(blob).hexdigest()
    return key, ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _cidrs(value: Any, field_name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > 100:
        raise invalid(field_name, "must be a list of at most 100 CIDR blocks")
    out = []
    for cidr in value:
        try:
            # A network (host bits clear) or a single host; IPv6 in its RFC 5952 form.
            out.append(ipaddress.ip_network(cidr, strict=True).compressed)
        except (TypeError, ValueError) as e:
            raise invalid(field_name, f"invalid CIDR block {cidr!r}") from e
    return out


def check_rules(value: Any) -> list[Json]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid("rules", "must be a list")
    if len(value) > MAX_FIREWALL_RULES:
        raise invalid("rules", f"at most {MAX_FIREWALL_RULES} rules")
    rules = []
    for rule in value:
        if not isinstance(rule, dict):
            raise invalid("rules", "each rule must be an object")
        direction, protocol = rule.get("direction"), rule.get("protocol")
        if direction not in ("in", "out"):
            raise invalid("rules.direction", "must be in or out")
        if protocol not in ("tcp", "udp", "icmp", "esp", "gre"):
            raise invalid("rules.protocol", "must be tcp, udp, icmp, esp or gre")
        source = _cidrs(rule.get("source_ips"), "rules.source_ips")
        destination = _cidrs(rule.get("destination_ips"), "rules.destination_ips")
        if direction == "in" and (not source or destination):
            raise invalid("rules.source_ips", "an in rule takes source_ips only")
        if direction == "out" and (not destination or source):
            raise invalid("rules.destination_ips", "an out rule takes destination_ips only")
        port = rule.get("port")
        if protocol in ("tcp", "udp"):
            m = _PORT.match(port) if isinstance(port, str) else None
            low, high = (int(m[1]), int(m[2] or m[1])) if m else (0, 0)
            if port != "any" and not (m and 1 <= low <= high <= 65535):
                raise invalid("rules.port", "a port or a range low-high is required")
        elif port is not None:
            raise invalid("rules.port", f"no port for protocol {protocol}")
        description = rule.get("description")
        if description is not None and (not isinstance(description, str) or len(description) > 255):
            raise invalid("rules.description", "at most 255 characters")
        rules.append(
            {
                "direction": direction,
                "protocol": protocol,
                "port": port,
                "source_ips": source,
                "destination_ips": destination,
                "description": description,
            }
        )
    return rules


# Label selectors: "k=v", "k==v", "k!=v", "k", "!k", "k in (a,b)", "k notin (a,b)".
_REQUIREMENT = re.compile(
    r"^\s*(?:(?P<not>!)\s*(?P<nkey>[^\s!=(),]+)|(?P<key>[^\s!=(),]+)\s*"
    r"(?:(?P<op>==|!=|=)\s*(?P<val>[^\s!=(),]*)|\s(?P<set>in|notin)\s*\((?P<vals>[^)]*)\))?)\s*$"
)


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    parts, depth, cur = [], 0, ""
    for ch in selector:  # split on the commas outside "(...)"
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    for part in parts:
        m = _REQUIREMENT.match(part)
        if not m:
            raise invalid("label_selector", f"invalid requirement {part!r}")
        if m["not"]:
            if m["nkey"] in labels:
                return False
        elif m["op"]:
            equal = labels.get(m["key"]) == m["val"]
            if equal != (m["op"] != "!="):
                return False
        elif m["set"]:
            values = {v.strip() for v in m["vals"].split(",")}
            if (labels.get(m["key"]) in values) != (m["set"] == "in"):
                return False
        elif m["key"] not in labels:
            return False
    return True


# --- the server ------------------------------------------------------------------------


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeHcloud


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the API; every answer has a length
    server: _HttpServer

    def do_GET(self) -> None:
        self.server.fake._serve(self, "GET")

    def do_POST(self) -> None:
        self.server.fake._serve(self, "POST")

    def do_PUT(self) -> None:
        self.server.fake._serve(self, "PUT")

    def do_DELETE(self) -> None:
        self.server.fake._serve(self, "DELETE")

    def do_PATCH(self) -> None:
        self.server.fake._serve(self, "PATCH")

    def log_message(self, format: str, *args: Any) -> None:
        # Quiet: the test output stays readable (the fake's records are the log).
        pass


Handler = Callable[[Match, Query, Any], Reply]


class FakeHcloud:
    """The fake API; see the module's docstring.

    ``boot(request)`` runs in a thread of its own for each created server and returns its
    (IPv4, IPv6 /64) or raises (the create action fails); ``halt(server_id)`` runs, also
    in a thread, for each deleted server (after its boot returned), the delete action
    finishing when it returns. ``no_ipv6_location``: the name of an extra location whose
    servers get no IPv6 (``public_net.ipv6`` is null). ``never_boot``: names of servers
    whose boot never finishes (create action and server stay "running"/"initializing").
    """

    def __init__(
        self,
        token: str,
        boot: Boot | None = None,
        halt: Halt | None = None,
        *,
        no_ipv6_location: str = "ipv4only1",
        never_boot: set[str] | None = None,
    ) -> None:
        self.token = token
        self.boot, self.halt = boot, halt
        self.never_boot: set[str] = set(never_boot or ())
        self.locations: list[Location] = list(DEFAULT_LOCATIONS)
        self.locations.append(
            Location(
                id=90,
                name=no_ipv6_location,
                description="A location without IPv6 (the tests' own)",
                country="DE",
                city="Testing",
                latitude=50.0,
                longitude=10.0,
                datacenter_id=90,
                datacenter=f"{no_ipv6_location}-dc1",
                ipv6=False,
            )
        )
        self.requests: list[Recorded] = []
        self.unhandled: list[str] = []
        self.servers: dict[int, Server] = {}
        self.ssh_keys: dict[int, SshKey] = {}
        self.firewalls: dict[int, Firewall] = {}
        self.actions: dict[int, Action] = {}
        self._ids = itertools.count(1)
        self._action_ids = itertools.count(1001)
        self._pool = itertools.count(1)  # default addresses: 10.77.x.y, fd00:77:0:n::/64
        self._lock = threading.RLock()
        self._workers: list[threading.Thread] = []
        self._routes = self._route_table()
        self._http: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    # -- life -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._http is not None, "the fake is not started"
        return f"http://127.0.0.1:{self._http.server_address[1]}{API_PREFIX}"

    def start(self) -> FakeHcloud:
        self._http = _HttpServer(("127.0.0.1", 0), _Handler)
        self._http.fake = self
        self._thread = threading.Thread(
            target=self._http.serve_forever, daemon=True, name="fake-hcloud"
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for worker in list(self._workers):
            worker.join(timeout=30)

    def __enter__(self) -> FakeHcloud:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        err: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- helpers for tests --------------------------------------------------------------

    def ptrs(self) -> dict[str, str]:
        """{ip: ptr} over all servers: each IPv4 (its default PTR until one is set) and
        each IPv6 address that has one."""
        with self._lock:
            out: dict[str, str] = {}
            for s in self.servers.values():
                if s.ipv4 is not None:
                    out[s.ipv4] = s.ipv4_ptr or default_ptr(s.ipv4)
                out.update(s.ipv6_ptrs)
            return out

    def routes_seen(self) -> list[str]:
        """The distinct routes asked for, in first-seen order ("GET /servers/{id}")."""
        seen: dict[str, None] = {}
        for r in list(self.requests):
            seen.setdefault(r.route or f"{r.method} {r.path} (unhandled)", None)
        return list(seen)

    def empty(self) -> bool:
        with self._lock:
            return not (self.servers or self.ssh_keys or self.firewalls)

    # -- HTTP ---------------------------------------------------------------------------

    def _serve(self, h: _Handler, method: str) -> None:
        try:
            status, payload = self._dispatch(h, method)
        except Exception:  # a fault of the fake: answer 500 and make the test see it
            failure = f"{method} {h.path}: fake failed: {traceback.format_exc()}"
            self.unhandled.append(self._scrub(failure))
            status, payload = 500, _error_json("server_error", "the fake failed", {})
        self._reply(h, status, payload)

    def _dispatch(self, h: _Handler, method: str) -> tuple[int, Json | None]:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        parts = urlsplit(self._scrub(h.path))
        path = parts.path
        query = parse_qs(parts.query, keep_blank_values=True)
        text = self._scrub(raw.decode("utf-8", errors="replace"))
        body: Any = None
        json_error = None
        if text.strip():
            try:
                body = json.loads(text)
            except ValueError as e:
                json_error = str(e)
        api_path = path[len(API_PREFIX) :] if path.startswith(API_PREFIX + "/") else None
        handler, match, route = self._route(method, api_path)
        record = Recorded(method, api_path or path, query, body, route)
        with self._lock:
            self.requests.append(record)
        if not self._authorized(h.headers.get("Authorization", "")):
            return 401, _error_json("unauthorized", "unable to authenticate", {})
        if handler is None or match is None:
            self.unhandled.append(f"{method} {path}: no such route in the fake")
            return 404, _error_json("not_found", f"no route for {method} {path}", {})
        if json_error is not None:
            return 400, _error_json("json_error", f"invalid JSON: {json_error}", {})
        try:
            with self._lock:
                return handler(match, query, body)
        except ApiError as e:
            if isinstance(e, Unsupported):
                self.unhandled.append(f"{method} {path}: {e.message}")
            return e.status, _error_json(e.code, e.message, e.details)

    def _scrub(self, text: str) -> str:
        # The token is never kept, wherever a client put it.
        return text.replace(self.token, "[token]") if self.token else text

    def _authorized(self, header: str) -> bool:
        scheme, _, given = header.partition(" ")
        return scheme == "Bearer" and hmac.compare_digest(given.encode(), self.token.encode())

    def _reply(self, h: _Handler, status: int, payload: Json | None) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        h.send_response(status)
        if payload is not None:
            h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        # As the API: rate limit state (a fake never limits) and a correlation id.
        h.send_header("RateLimit-Limit", "3600")
        h.send_header("RateLimit-Remaining", "3599")
        h.send_header("RateLimit-Reset", str(int(datetime.now(UTC).timestamp()) + 1))
        h.send_header("X-Correlation-Id", uuid.uuid4().hex[:16])
        h.end_headers()
        if data:
            h.wfile.write(data)

    def _route(
        self, method: str, path: str | None
    ) -> tuple[Handler | None, Match | None, str | None]:
        if path is None:
            return None, None, None
        for m, pattern, template, handler in self._routes:
            if m == method:
                match = pattern.match(path)
                if match:
                    return handler, match, f"{method} {template}"
        return None, None, None

    def _route_table(self) -> list[tuple[str, re.Pattern[str], str, Handler]]:
        table: list[tuple[str, str, Handler]] = [
            ("GET", "/actions", self._list_actions),
            ("GET", "/actions/{id}", self._get_action),
            ("GET", "/locations", self._list_locations),
            ("GET", "/locations/{id}", self._get_location),
            ("GET", "/datacenters", self._list_datacenters),
            ("GET", "/datacenters/{id}", self._get_datacenter),
            ("GET", "/server_types", self._list_server_types),
            ("GET", "/server_types/{id}", self._get_server_type),
            ("GET", "/images", self._list_images),
            ("GET", "/images/{id}", self._get_image),
            ("GET", "/ssh_keys", self._list_ssh_keys),
            ("POST", "/ssh_keys", self._create_ssh_key),
            ("GET", "/ssh_keys/{id}", self._get_ssh_key),
            ("PUT", "/ssh_keys/{id}", self._update_ssh_key),
            ("DELETE", "/ssh_keys/{id}", self._delete_ssh_key),
            ("GET", "/servers", self._list_servers),
            ("POST", "/servers", self._create_server),
            ("GET", "/servers/actions", self._list_kind_actions("server")),
            ("GET", "/servers/actions/{id}", self._get_kind_action("server")),
            ("GET", "/servers/{id}", self._get_server),
            ("PUT", "/servers/{id}", self._update_server),
            ("DELETE", "/servers/{id}", self._delete_server),
            ("GET", "/servers/{id}/actions", self._list_resource_actions("server")),
            ("GET", "/servers/{id}/actions/{action_id}", self._get_resource_action("server")),
            ("POST", "/servers/{id}/actions/change_dns_ptr", self._server_dns_ptr),
            ("POST", "/servers/{id}/actions/change_protection", self._server_protection),
            ("POST", "/servers/{id}/actions/poweron", self._server_power("start_server")),
            ("POST", "/servers/{id}/actions/poweroff", self._server_power("stop_server")),
            ("POST", "/servers/{id}/actions/shutdown", self._server_power("shutdown_server")),
            ("POST", "/servers/{id}/actions/reboot", self._server_power("reboot_server")),
            ("POST", "/servers/{id}/actions/reset", self._server_power("reset_server")),
            ("GET", "/primary_ips", self._list_primary_ips),
            ("GET", "/primary_ips/actions", self._list_kind_actions("primary_ip")),
            ("GET", "/primary_ips/actions/{id}", self._get_kind_action("primary_ip")),
            ("GET", "/primary_ips/{id}", self._get_primary_ip),
            ("GET", "/primary_ips/{id}/actions", self._list_resource_actions("primary_ip")),
            (
                "GET",
                "/primary_ips/{id}/actions/{action_id}",
                self._get_resource_action("primary_ip"),
            ),
            ("POST", "/primary_ips/{id}/actions/change_dns_ptr", self._primary_ip_dns_ptr),
            ("GET", "/firewalls", self._list_firewalls),
            ("POST", "/firewalls", self._create_firewall),
            ("GET", "/firewalls/actions", self._list_kind_actions("firewall")),
            ("GET", "/firewalls/actions/{id}", self._get_kind_action("firewall")),
            ("GET", "/firewalls/{id}", self._get_firewall),
            ("PUT", "/firewalls/{id}", self._update_firewall),
            ("DELETE", "/firewalls/{id}", self._delete_firewall),
            ("GET", "/firewalls/{id}/actions", self._list_resource_actions("firewall")),
            ("GET", "/firewalls/{id}/actions/{action_id}", self._get_resource_action("firewall")),
            ("POST", "/firewalls/{id}/actions/set_rules", self._firewall_set_rules),
            ("POST", "/firewalls/{id}/actions/apply_to_resources", self._firewall_apply),
            ("POST", "/firewalls/{id}/actions/remove_from_resources", self._firewall_remove),
        ]
        out = []
        for method, template, handler in table:
            pattern = re.escape(template).replace(r"\{id\}", r"(?P<id>\d+)")
            pattern = pattern.replace(r"\{action_id\}", r"(?P<action_id>\d+)")
            out.append((method, re.compile(f"^{pattern}$"), template, handler))
        return out

    # -- generic pieces -----------------------------------------------------------------

    def _action(self, command: str, resources: list[tuple[int, str]]) -> Action:
        action = Action(next(self._action_ids), command, resources)
        self.actions[action.id] = action
        return action

    def _quick_action(self, command: str, resources: list[tuple[int, str]]) -> Json:
        """An action that is done at once: the answer shows it running (as the API's
        do), the first poll sees it succeeded."""
        action = self._action(command, resources)
        action.finish()
        return action.as_started()

    def _spawn(self, target: Callable[[], None], name: str) -> threading.Thread:
        worker = threading.Thread(target=target, daemon=True, name=name)
        self._workers = [w for w in self._workers if w.is_alive()] + [worker]
        worker.start()
        return worker

    @staticmethod
    def _one(query: Query, key: str) -> str | None:
        values = query.get(key)
        return values[-1] if values else None

    def _page(self, key: str, items: list[Json], query: Query) -> Json:
        """A list answer: sorted (``sort=field[:asc|:desc]``, by id unless asked),
        filtered by ``label_selector``, one page of it (``page``, ``per_page``)."""
        selector = self._one(query, "label_selector")
        if selector:
            items = [i for i in items if selector_matches(selector, i.get("labels") or {})]
        items = sorted(items, key=lambda i: i.get("id", 0))
        for spec in reversed(query.get("sort", [])):
            name, _, order = spec.partition(":")
            if order not in ("", "asc", "desc"):
                raise invalid("sort", f"invalid sort {spec!r}")
            items.sort(key=functools.partial(_sort_key, name), reverse=order == "desc")
        try:
            page = int(self._one(query, "page") or 1)
            per_page = int(self._one(query, "per_page") or 25)
        except ValueError as e:
            raise invalid("page", "must be a number") from e
        if page < 1 or not 1 <= per_page <= 50:
            raise invalid("per_page", "page >= 1 and 1 <= per_page <= 50")
        last = max(1, -(-len(items) // per_page))
        return {
            key: items[(page - 1) * per_page : page * per_page],
            "meta": {
                "pagination": {
                    "page": page,
                    "per_page": per_page,
                    "previous_page": page - 1 if page > 1 else None,
                    "next_page": page + 1 if page < last else None,
                    "last_page": last,
                    "total_entries": len(items),
                }
            },
        }

    def _by_name(self, items: list[Json], query: Query) -> list[Json]:
        name = self._one(query, "name")
        return [i for i in items if i.get("name") == name] if name is not None else items

    # -- actions -------------------------------------------------------------------------

    def _actions_by_ids(self, query: Query, kind: str | None) -> Json:
        if not query.get("id"):
            raise invalid("id", "filter the actions by id (listing all was removed)")
        try:
            ids = {int(i) for i in query["id"]}
        except ValueError as e:
            raise invalid("id", "must be numbers") from e
        found = [
            a
            for a in self.actions.values()
            if a.id in ids and (kind is None or any(t == kind for _, t in a.resources))
        ]
        return self._page("actions", self._filter_actions(found, query), query)

    @staticmethod
    def _filter_actions(actions: list[Action], query: Query) -> list[Json]:
        statuses = set(query.get("status", []))
        return [a.json() for a in actions if not statuses or a.status in statuses]

    def _list_actions(self, m: Match, query: Query, body: Any) -> Reply:
        return 200, self._actions_by_ids(query, None)

    def _get_action(self, m: Match, query: Query, body: Any) -> Reply:
        action = self.actions.get(int(m["id"]))
        if action is None:
            raise not_found("action")
        return 200, {"action": action.json()}

    def _list_kind_actions(self, kind: str) -> Handler:
        def handler(m: Match, query: Query, body: Any) -> Reply:
            return 200, self._actions_by_ids(query, kind)

        return handler

    def _get_kind_action(self, kind: str) -> Handler:
        def handler(m: Match, query: Query, body: Any) -> Reply:
            action = self.actions.get(int(m["id"]))
            if action is None or all(t != kind for _, t in action.resources):
                raise not_found("action")
            return 200, {"action": action.json()}

        return handler

    def _list_resource_actions(self, kind: str) -> Handler:
        def handler(m: Match, query: Query, body: Any) -> Reply:
            rid = int(m["id"])
            self._resource(kind, rid)
            found = [a for a in self.actions.values() if (rid, kind) in a.resources]
            return 200, self._page("actions", self._filter_actions(found, query), query)

        return handler

    def _get_resource_action(self, kind: str) -> Handler:
        def handler(m: Match, query: Query, body: Any) -> Reply:
            rid = int(m["id"])
            self._resource(kind, rid)
            action = self.actions.get(int(m["action_id"]))
            if action is None or (rid, kind) not in action.resources:
                raise not_found("action")
            return 200, {"action": action.json()}

        return handler

    def _resource(self, kind: str, rid: int) -> Any:
        if kind == "server":
            return self._server(rid)
        if kind == "firewall":
            return self._firewall(rid)
        return self._primary_ip(rid)

    # -- catalogue ------------------------------------------------------------------------

    def _server_type_rows(self) -> list[Json]:
        return [_server_type_json(row, self.locations) for row in _SERVER_TYPES]

    def _location(self, ref: Any) -> Location:
        for loc in self.locations:
            if str(ref) in (loc.name, str(loc.id)):
                return loc
        raise not_found(f"location {ref!r}")

    def _list_locations(self, m: Match, query: Query, body: Any) -> Reply:
        items = [loc.json() for loc in self.locations]
        return 200, self._page("locations", self._by_name(items, query), query)

    def _get_location(self, m: Match, query: Query, body: Any) -> Reply:
        for loc in self.locations:
            if loc.id == int(m["id"]):
                return 200, {"location": loc.json()}
        raise not_found("location")

    def _datacenters(self) -> list[Json]:
        type_ids = [row[0] for row in _SERVER_TYPES]
        return [loc.datacenter_json(type_ids) for loc in self.locations]

    def _list_datacenters(self, m: Match, query: Query, body: Any) -> Reply:
        items = self._by_name(self._datacenters(), query)
        page = self._page("datacenters", items, query)
        page["recommendation"] = self.locations[0].datacenter_id
        return 200, page

    def _get_datacenter(self, m: Match, query: Query, body: Any) -> Reply:
        for dc in self._datacenters():
            if dc["id"] == int(m["id"]):
                return 200, {"datacenter": dc}
        raise not_found("datacenter")

    def _list_server_types(self, m: Match, query: Query, body: Any) -> Reply:
        items = self._by_name(self._server_type_rows(), query)
        return 200, self._page("server_types", items, query)

    def _get_server_type(self, m: Match, query: Query, body: Any) -> Reply:
        for st in self._server_type_rows():
            if st["id"] == int(m["id"]):
                return 200, {"server_type": st}
        raise not_found("server_type")

    def _list_images(self, m: Match, query: Query, body: Any) -> Reply:
        if query.get("bound_to"):
            raise Unsupported("backup images (bound_to)")
        items = self._by_name([_image_json(row) for row in _IMAGES], query)
        for key in ("type", "status"):
            if query.get(key):
                items = [i for i in items if i[key] in query[key]]
        arch = query.get("architecture")
        if arch:
            items = [i for i in items if i["architecture"] in arch]
        return 200, self._page("images", items, query)

    def _get_image(self, m: Match, query: Query, body: Any) -> Reply:
        for row in _IMAGES:
            if row[0] == int(m["id"]):
                return 200, {"image": _image_json(row)}
        raise not_found("image")

    # -- SSH keys -------------------------------------------------------------------------

    def _ssh_key(self, ref: Any) -> SshKey:
        for key in self.ssh_keys.values():
            if str(ref) in (str(key.id), key.name):
                return key
        raise not_found(f"ssh_key {ref!r}")

    def _list_ssh_keys(self, m: Match, query: Query, body: Any) -> Reply:
        items = self._by_name([k.json() for k in self.ssh_keys.values()], query)
        fingerprint = self._one(query, "fingerprint")
        if fingerprint is not None:
            items = [i for i in items if i["fingerprint"] == fingerprint]
        return 200, self._page("ssh_keys", items, query)

    def _create_ssh_key(self, m: Match, query: Query, body: Any) -> Reply:
        body = _object(body)
        name = check_name(body.get("name"))
        public_key, fingerprint = parse_public_key(body.get("public_key"))
        labels = check_labels(body.get("labels"))
        if any(k.name == name for k in self.ssh_keys.values()):
            raise _unique("name", "SSH key with the same name already exists")
        if any(k.fingerprint == fingerprint for k in self.ssh_keys.values()):
            raise _unique("public_key", "SSH key with the same fingerprint already exists")
        key = SshKey(next(self._ids), name, public_key, fingerprint, labels)
        self.ssh_keys[key.id] = key
        return 201, {"ssh_key": key.json()}

    def _get_ssh_key(self, m: Match, query: Query, body: Any) -> Reply:
        key = self.ssh_keys.get(int(m["id"]))
        if key is None:
            raise not_found("ssh_key")
        return 200, {"ssh_key": key.json()}

    def _update_ssh_key(self, m: Match, query: Query, body: Any) -> Reply:
        key = self.ssh_keys.get(int(m["id"]))
        if key is None:
            raise not_found("ssh_key")
        body = _object(body)
        if "name" in body:
            name = check_name(body["name"])
            if any(k.name == name and k.id != key.id for k in self.ssh_keys.values()):
                raise _unique("name", "SSH key with the same name already exists")
            key.name = name
        if "labels" in body:
            key.labels = check_labels(body["labels"])
        return 200, {"ssh_key": key.json()}

    def _delete_ssh_key(self, m: Match, query: Query, body: Any) -> Reply:
        if self.ssh_keys.pop(int(m["id"]), None) is None:
            raise not_found("ssh_key")
        return 204, None

    # -- servers --------------------------------------------------------------------------

    def _server(self, sid: int) -> Server:
        server = self.servers.get(sid)
        if server is None:
            raise not_found("server")
        return server

    def _server_firewalls(self, server: Server) -> list[int]:
        return [
            fw.id
            for fw in self.firewalls.values()
            if server.id in fw.servers()
            or any(selector_matches(s, server.labels) for s in fw.selectors())
        ]

    def _server_json(self, s: Server) -> Json:
        ipv4 = None
        if s.ipv4 is not None:
            ipv4 = {
                "id": s.ipv4_id,
                "ip": s.ipv4,
                "blocked": False,
                "dns_ptr": s.ipv4_ptr or default_ptr(s.ipv4),
            }
        ipv6 = None
        if s.ipv6_net is not None:
            ptrs = [{"ip": ip, "dns_ptr": ptr} for ip, ptr in s.ipv6_ptrs.items()]
            ipv6 = {"id": s.ipv6_id, "ip": s.ipv6_net, "blocked": False, "dns_ptr": ptrs}
        firewalls = [{"id": f, "status": "applied"} for f in self._server_firewalls(s)]
        type_ids = [row[0] for row in _SERVER_TYPES]
        return {
            "id": s.id,
            "name": s.name,
            "status": s.status,
            "created": s.created,
            "public_net": {"ipv4": ipv4, "ipv6": ipv6, "floating_ips": [], "firewalls": firewalls},
            "private_net": [],
            "server_type": s.server_type,
            "datacenter": s.location.datacenter_json(type_ids),
            "location": s.location.json(),
            "image": s.image,
            "iso": None,
            "rescue_enabled": False,
            "locked": False,
            "backup_window": None,
            "outgoing_traffic": 0,
            "ingoing_traffic": 0,
            "included_traffic": s.server_type["included_traffic"],
            "protection": dict(s.protection),
            "labels": s.labels,
            "volumes": [],
            "load_balancers": [],
            "primary_disk_size": s.server_type["disk"],
            "placement_group": None,
        }

    def _list_servers(self, m: Match, query: Query, body: Any) -> Reply:
        items = self._by_name([self._server_json(s) for s in self.servers.values()], query)
        if query.get("status"):
            items = [i for i in items if i["status"] in query["status"]]
        return 200, self._page("servers", items, query)

    def _get_server(self, m: Match, query: Query, body: Any) -> Reply:
        return 200, {"server": self._server_json(self._server(int(m["id"])))}

    def _create_server(self, m: Match, query: Query, body: Any) -> Reply:
        body = _object(body)
        for what in ("volumes", "networks", "placement_group"):
            if body.get(what):
                raise Unsupported(f"servers with {what}")
        name = check_name(body.get("name"), hostname=True)
        for required in ("server_type", "image"):
            if body.get(required) in (None, ""):
                raise invalid(required, "is required")
        if body.get("location") and body.get("datacenter"):
            raise invalid("location", "must not be used together with datacenter")
        user_data = body.get("user_data") or ""
        if not isinstance(user_data, str) or len(user_data.encode()) > USER_DATA_LIMIT:
            raise invalid("user_data", "is limited to 32KiB")
        labels = check_labels(body.get("labels"))
        server_type = self._find_server_type(body["server_type"])
        image = self._find_image(body["image"], server_type["architecture"])
        location = self._server_location(body)
        keys = [self._ssh_key(ref) for ref in _list(body.get("ssh_keys"), "ssh_keys")]
        firewall_ids = []
        for entry in _list(body.get("firewalls"), "firewalls"):
            fid = entry.get("firewall") if isinstance(entry, dict) else None
            if not isinstance(fid, int):
                raise invalid("firewalls", 'each entry is {"firewall": <id>}')
            self._firewall(fid)
            firewall_ids.append(fid)
        if len(set(firewall_ids)) > MAX_FIREWALLS_PER_SERVER:
            raise invalid("firewalls", f"at most {MAX_FIREWALLS_PER_SERVER} firewalls")
        public_net = body.get("public_net") or {}
        if not isinstance(public_net, dict):
            raise invalid("public_net", "must be an object")
        if public_net.get("ipv4") or public_net.get("ipv6"):
            raise Unsupported("servers on existing primary IPs")
        want_ipv4 = public_net.get("enable_ipv4", True) is not False
        want_ipv6 = public_net.get("enable_ipv6", True) is not False and location.ipv6
        if any(s.name == name for s in self.servers.values()):
            raise _unique("name", "server name is already used")
        start = body.get("start_after_create", True) is not False
        server = Server(
            id=next(self._ids),
            name=name,
            location=location,
            server_type=server_type,
            image=image,
            user_data=user_data,
            ssh_keys=[k.id for k in keys],
            public_keys=[k.public_key for k in keys],
            labels=labels,
            want_ipv4=want_ipv4,
            want_ipv6=want_ipv6,
            start_after_create=start,
            ipv4_id=next(self._ids) if want_ipv4 else None,
            ipv6_id=next(self._ids) if want_ipv6 else None,
        )
        self.servers[server.id] = server
        for fid in dict.fromkeys(firewall_ids):
            self.firewalls[fid].applied_to.append({"type": "server", "server": {"id": server.id}})
        create = self._action("create_server", [(server.id, "server")])
        next_actions = [self._action("start_server", [(server.id, "server")])] if start else []
        server.create_actions = [create.id] + [a.id for a in next_actions]
        if name not in self.never_boot:
            server.worker = self._spawn(lambda: self._boot(server), f"boot-{server.id}")
        return 201, {
            "server": self._server_json(server),
            "action": create.json(),
            "next_actions": [a.json() for a in next_actions],
            # The API makes one up only when no SSH key is given.
            "root_password": None if keys else secrets.token_urlsafe(15),
        }

    def _find_server_type(self, ref: Any) -> Json:
        for st in self._server_type_rows():
            if str(ref) in (st["name"], str(st["id"])):
                return st
        raise not_found(f"server_type {ref!r}")

    def _find_image(self, ref: Any, architecture: str) -> Json:
        rows = [_image_json(r) for r in _IMAGES if str(ref) in (r[1], str(r[0]))]
        if not rows:
            raise not_found(f"image {ref!r}")
        fitting = [r for r in rows if r["architecture"] == architecture]
        if not fitting:
            raise invalid("image", f"image does not fit the {architecture} server type")
        return fitting[0]

    def _server_location(self, body: Json) -> Location:
        if body.get("location"):
            return self._location(body["location"])
        if body.get("datacenter"):
            ref = str(body["datacenter"])
            for loc in self.locations:
                if ref in (loc.datacenter, str(loc.datacenter_id)):
                    return loc
            raise not_found(f"datacenter {ref!r}")
        return self.locations[0]

    def _boot(self, server: Server) -> None:
        request = BootRequest(
            server_id=server.id,
            name=server.name,
            location=server.location.name,
            image=server.image["name"],
            server_type=server.server_type["name"],
            user_data=server.user_data,
            public_keys=tuple(server.public_keys),
            labels=dict(server.labels),
            ipv4=server.want_ipv4,
            ipv6=server.want_ipv6,
        )
        error: Json | None = None
        ipv4 = ipv6 = None
        try:
            ipv4, ipv6 = (self.boot or self._pool_addresses)(request)
            if ipv4 is not None:
                ipv4 = str(ipaddress.IPv4Address(ipv4))
            if ipv6 is not None:
                net = ipaddress.IPv6Network(ipv6, strict=True)
                assert net.prefixlen == 64, f"{ipv6}: a server gets a /64"
                ipv6 = net.compressed
        except BootFailed as e:
            error = {"code": e.code, "message": str(e)}
        except Exception as e:  # a test's boot failing is a failed create, as the API's
            error = {"code": "action_failed", "message": f"{type(e).__name__}: {e}"}
        with self._lock:
            if error is None:
                server.ipv4 = ipv4 if server.want_ipv4 else None
                server.ipv6_net = ipv6 if server.want_ipv6 else None
                server.status = "running" if server.start_after_create else "off"
            else:
                server.status = "off"
            for aid in server.create_actions:
                self.actions[aid].finish(error)

    def finish_boot(self, name: str) -> None:
        """A server of ``never_boot`` boots after all (its create action then finishes)."""
        with self._lock:
            self.never_boot.discard(name)
            server = next(s for s in self.servers.values() if s.name == name)
            server.worker = self._spawn(lambda: self._boot(server), f"boot-{server.id}")

    def _pool_addresses(self, request: BootRequest) -> tuple[str | None, str | None]:
        n = next(self._pool)
        return f"10.77.{n // 250}.{n % 250 + 2}", f"fd00:77:0:{n:x}::/64"

    def _update_server(self, m: Match, query: Query, body: Any) -> Reply:
        server = self._server(int(m["id"]))
        body = _object(body)
        if "name" in body:
            name = check_name(body["name"], hostname=True)
            if any(s.name == name and s.id != server.id for s in self.servers.values()):
                raise _unique("name", "server name is already used")
            server.name = name
        if "labels" in body:
            server.labels = check_labels(body["labels"])
        return 200, {"server": self._server_json(server)}

    def _delete_server(self, m: Match, query: Query, body: Any) -> Reply:
        server = self._server(int(m["id"]))
        if server.protection["delete"]:
            raise ApiError(423, "protected", "server is protected against deletion")
        del self.servers[server.id]
        # Deleting a server detaches its firewalls and deletes its primary IPs with it.
        for fw in self.firewalls.values():
            fw.applied_to = [
                a
                for a in fw.applied_to
                if not (a["type"] == "server" and a["server"]["id"] == server.id)
            ]
        action = self._action("delete_server", [(server.id, "server")])
        self._spawn(lambda: self._halt(server, action), f"halt-{server.id}")
        return 200, {"action": action.json()}

    def _halt(self, server: Server, action: Action) -> None:
        if server.worker is not None:
            server.worker.join()
        error = None
        try:
            if self.halt is not None:
                self.halt(server.id)
        except Exception as e:
            error = {"code": "action_failed", "message": f"{type(e).__name__}: {e}"}
        with self._lock:
            action.finish(error)

    def _server_action(self, server: Server, command: str) -> Json:
        running = [a for a in server.create_actions if self.actions[a].status == "running"]
        if running:
            raise ApiError(423, "locked", "server is locked: an action is running")
        return self._quick_action(command, [(server.id, "server")])

    def _server_dns_ptr(self, m: Match, query: Query, body: Any) -> Reply:
        server = self._server(int(m["id"]))
        body = _object(body)
        self._set_ptr(server, body)
        return 201, {"action": self._server_action(server, "change_dns_ptr")}

    def _set_ptr(self, server: Server, body: Json, family: int | None = None) -> None:
        running = [a for a in server.create_actions if self.actions[a].status == "running"]
        if running:
            raise ApiError(423, "locked", "server is locked: an action is running")
        try:
            ip = ipaddress.ip_address(body["ip"])
        except (KeyError, TypeError, ValueError) as e:
            raise invalid("ip", "must be an IPv4 or IPv6 address") from e
        if "dns_ptr" not in body:
            raise invalid("dns_ptr", "is required (null resets)")
        ptr = body["dns_ptr"]
        if ptr is not None and (not isinstance(ptr, str) or not _HOSTNAME.match(ptr)):
            raise invalid("dns_ptr", "must be a valid hostname")
        if family is not None and ip.version != family:
            raise invalid("ip", "is not this primary IP's")
        if ip.version == 4 and server.ipv4 is not None and str(ip) == server.ipv4:
            server.ipv4_ptr = ptr
        elif (
            ip.version == 6
            and server.ipv6_net is not None
            and ip in ipaddress.ip_network(server.ipv6_net)
        ):
            if ptr is None:
                server.ipv6_ptrs.pop(ip.compressed, None)
            else:
                server.ipv6_ptrs[ip.compressed] = ptr
        else:
            raise invalid("ip", f"{ip} is not an address of this server")

    def _server_protection(self, m: Match, query: Query, body: Any) -> Reply:
        server = self._server(int(m["id"]))
        body = _object(body)
        for key in ("delete", "rebuild"):
            if key in body:
                if not isinstance(body[key], bool):
                    raise invalid(key, "must be a boolean")
                server.protection[key] = body[key]
        return 201, {"action": self._server_action(server, "change_protection")}

    def _server_power(self, command: str) -> Handler:
        status = {
            "start_server": "running",
            "reboot_server": "running",
            "reset_server": "running",
        }.get(command, "off")

        def handler(m: Match, query: Query, body: Any) -> Reply:
            server = self._server(int(m["id"]))
            action = self._server_action(server, command)
            server.status = status
            return 201, {"action": action}

        return handler

    # -- primary IPs (a server's public addresses, seen on their own) --------------------

    def _primary_ips(self) -> list[tuple[Server, int, Json]]:
        out = []
        type_ids = [row[0] for row in _SERVER_TYPES]
        for s in self.servers.values():
            pairs = [(s.ipv4_id, "ipv4", s.ipv4), (s.ipv6_id, "ipv6", s.ipv6_net)]
            for pid, kind, ip in pairs:
                if pid is None or ip is None:
                    continue
                if kind == "ipv4":
                    ptrs = [{"ip": ip, "dns_ptr": s.ipv4_ptr or default_ptr(ip)}]
                else:
                    ptrs = [{"ip": a, "dns_ptr": p} for a, p in s.ipv6_ptrs.items()]
                out.append(
                    (
                        s,
                        pid,
                        {
                            "id": pid,
                            "name": f"primary_ip-{pid}",
                            "ip": ip,
                            "type": kind,
                            "labels": {},
                            "protection": {"delete": False},
                            "dns_ptr": ptrs,
                            "assignee_id": s.id,
                            "assignee_type": "server",
                            "auto_delete": True,
                            "blocked": False,
                            "created": s.created,
                            "location": s.location.json(),
                            "datacenter": s.location.datacenter_json(type_ids),
                        },
                    )
                )
        return out

    def _primary_ip(self, pid: int) -> tuple[Server, Json]:
        for server, id_, data in self._primary_ips():
            if id_ == pid:
                return server, data
        raise not_found("primary_ip")

    def _list_primary_ips(self, m: Match, query: Query, body: Any) -> Reply:
        items = self._by_name([data for _, _, data in self._primary_ips()], query)
        ip = self._one(query, "ip")
        if ip is not None:
            items = [i for i in items if i["ip"] == ip]
        return 200, self._page("primary_ips", items, query)

    def _get_primary_ip(self, m: Match, query: Query, body: Any) -> Reply:
        return 200, {"primary_ip": self._primary_ip(int(m["id"]))[1]}

    def _primary_ip_dns_ptr(self, m: Match, query: Query, body: Any) -> Reply:
        pid = int(m["id"])
        server, data = self._primary_ip(pid)
        self._set_ptr(server, _object(body), 4 if data["type"] == "ipv4" else 6)
        return 201, {"action": self._quick_action("change_dns_ptr", [(pid, "primary_ip")])}

    # -- firewalls ------------------------------------------------------------------------

    def _firewall(self, fid: int) -> Firewall:
        fw = self.firewalls.get(fid)
        if fw is None:
            raise not_found("firewall")
        return fw

    def _firewall_json(self, fw: Firewall) -> Json:
        applied: list[Json] = []
        for a in fw.applied_to:
            if a["type"] == "server":
                applied.append({"type": "server", "server": {"id": a["server"]["id"]}})
            else:
                selector = a["label_selector"]["selector"]
                matched = [
                    {"type": "server", "server": {"id": s.id}}
                    for s in self.servers.values()
                    if selector_matches(selector, s.labels)
                ]
                applied.append(
                    {
                        "type": "label_selector",
                        "label_selector": {"selector": selector},
                        "applied_to_resources": matched,
                    }
                )
        return {
            "id": fw.id,
            "name": fw.name,
            "labels": fw.labels,
            "created": fw.created,
            "rules": [dict(r) for r in fw.rules],
            "applied_to": applied,
        }

    def _resources(self, value: Any, field_name: str) -> list[Json]:
        out: list[Json] = []
        for entry in _list(value, field_name):
            kind = entry.get("type") if isinstance(entry, dict) else None
            if kind == "server":
                sid = (entry.get("server") or {}).get("id")
                if not isinstance(sid, int):
                    raise invalid(field_name, "server resources need server.id")
                if sid not in self.servers:
                    raise not_found(f"server {sid}", "firewall_resource_not_found")
                if any(o["type"] == "server" and o["server"]["id"] == sid for o in out):
                    raise ApiError(422, "server_already_added", f"server {sid} given twice")
                out.append({"type": "server", "server": {"id": sid}})
            elif kind == "label_selector":
                selector = (entry.get("label_selector") or {}).get("selector")
                if not isinstance(selector, str) or not selector:
                    raise invalid(field_name, "label_selector resources need a selector")
                selector_matches(selector, {})  # parses it
                out.append({"type": "label_selector", "label_selector": {"selector": selector}})
            else:
                raise invalid(field_name, "type must be server or label_selector")
        return out

    def _apply_actions(self, fw: Firewall, resources: list[Json], command: str) -> list[Json]:
        actions = []
        for r in resources:
            if r["type"] == "server":
                refs = [(r["server"]["id"], "server"), (fw.id, "firewall")]
            else:
                refs = [(fw.id, "firewall")]
            actions.append(self._quick_action(command, refs))
        return actions

    def _list_firewalls(self, m: Match, query: Query, body: Any) -> Reply:
        items = self._by_name([self._firewall_json(f) for f in self.firewalls.values()], query)
        return 200, self._page("firewalls", items, query)

    def _create_firewall(self, m: Match, query: Query, body: Any) -> Reply:
        body = _object(body)
        name = check_name(body.get("name"))
        labels = check_labels(body.get("labels"))
        rules = check_rules(body.get("rules"))
        applied = self._resources(body.get("apply_to"), "apply_to")
        if any(f.name == name for f in self.firewalls.values()):
            raise _unique("name", "firewall name is already used")
        fw = Firewall(next(self._ids), name, labels, rules, applied)
        self._check_server_limits(fw, applied)
        self.firewalls[fw.id] = fw
        actions = []
        if rules:
            actions.append(self._quick_action("set_firewall_rules", [(fw.id, "firewall")]))
        actions += self._apply_actions(fw, applied, "apply_firewall")
        return 201, {"firewall": self._firewall_json(fw), "actions": actions}

    def _check_server_limits(self, fw: Firewall, added: list[Json]) -> None:
        for r in added:
            if r["type"] == "server":
                server = self.servers[r["server"]["id"]]
                if len(set(self._server_firewalls(server)) | {fw.id}) > MAX_FIREWALLS_PER_SERVER:
                    raise invalid(
                        "apply_to", f"a server takes {MAX_FIREWALLS_PER_SERVER} firewalls at most"
                    )

    def _get_firewall(self, m: Match, query: Query, body: Any) -> Reply:
        return 200, {"firewall": self._firewall_json(self._firewall(int(m["id"])))}

    def _update_firewall(self, m: Match, query: Query, body: Any) -> Reply:
        fw = self._firewall(int(m["id"]))
        body = _object(body)
        if "name" in body:
            name = check_name(body["name"])
            if any(f.name == name and f.id != fw.id for f in self.firewalls.values()):
                raise _unique("name", "firewall name is already used")
            fw.name = name
        if "labels" in body:
            fw.labels = check_labels(body["labels"])
        return 200, {"firewall": self._firewall_json(fw)}

    def _delete_firewall(self, m: Match, query: Query, body: Any) -> Reply:
        fw = self._firewall(int(m["id"]))
        if fw.applied_to:
            raise ApiError(422, "resource_in_use", "firewall is still applied to a resource")
        del self.firewalls[fw.id]
        return 204, None

    def _firewall_set_rules(self, m: Match, query: Query, body: Any) -> Reply:
        fw = self._firewall(int(m["id"]))
        body = _object(body)
        if "rules" not in body:
            raise invalid("rules", "is required")
        fw.rules = check_rules(body["rules"])
        actions = [self._quick_action("set_firewall_rules", [(fw.id, "firewall")])]
        servers = [{"type": "server", "server": {"id": s}} for s in fw.servers()]
        actions += self._apply_actions(fw, servers, "apply_firewall")
        return 201, {"actions": actions}

    def _firewall_apply(self, m: Match, query: Query, body: Any) -> Reply:
        fw = self._firewall(int(m["id"]))
        added = self._resources(_object(body).get("apply_to"), "apply_to")
        for r in added:
            if r in fw.applied_to:
                raise ApiError(422, "firewall_already_applied", "firewall is already applied")
        self._check_server_limits(fw, added)
        fw.applied_to += added
        return 201, {"actions": self._apply_actions(fw, added, "apply_firewall")}

    def _firewall_remove(self, m: Match, query: Query, body: Any) -> Reply:
        fw = self._firewall(int(m["id"]))
        removed = self._resources(_object(body).get("remove_from"), "remove_from")
        for r in removed:
            if r not in fw.applied_to:
                raise ApiError(422, "firewall_already_removed", "firewall is not applied there")
        fw.applied_to = [a for a in fw.applied_to if a not in removed]
        return 201, {"actions": self._apply_actions(fw, removed, "remove_firewall")}


def _sort_key(name: str, item: Json) -> tuple[bool, Any]:
    # Nulls last; numbers as numbers (ids), everything else as text.
    value = item.get(name)
    if isinstance(value, int | float):
        return (False, value)
    return (value is None, "" if value is None else str(value))


def _error_json(code: str, message: str, details: Json) -> Json:
    return {"error": {"code": code, "message": message, "details": details}}


def _unique(field_name: str, message: str) -> ApiError:
    return ApiError(409, "uniqueness_error", message, {"fields": [{"name": field_name}]})


def _object(body: Any) -> Json:
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise ApiError(400, "json_error", "the body must be a JSON object")
    return body


def _list(value: Any, field_name: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid(field_name, "must be a list")
    return value
