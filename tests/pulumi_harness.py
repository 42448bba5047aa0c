"""Run the whole program under Pulumi's mocks and collect what it registered and exported."""

from __future__ import annotations

import asyncio
import hashlib
import json
import runpy
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pytest
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.settings import SETTINGS
from pulumi.runtime.stack import wait_for_rpcs

ROOT = Path(__file__).resolve().parent.parent
PRIVATE_MARKER = "-----BEGIN PRIVATE KEY-----mock-----END PRIVATE KEY-----"
HOST_PRIVATE_MARKER = (
    "-----BEGIN OPENSSH PRIVATE KEY-----mock-host-----END OPENSSH PRIVATE KEY-----"
)
MOCK_SERVER_HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMockServerHostKeyMockServerHostKey"
MOCK_SERVER_IPV4 = "198.51.100.7"
MOCK_SERVER_IPV6 = "2001:db8:7::1"


@dataclass
class Registered:
    """One registration as the engine receives it: inputs, and (filled by `Monitor`) the
    options that reach the engine."""

    type: str
    name: str
    inputs: dict[str, Any]
    provider: str | None = None
    urn: str = ""
    parent: str = ""  # the parent's URN
    dependencies: list[str] = field(default_factory=list)  # URNs: depends_on and inputs
    delete_before_replace: bool = False
    retain_on_delete: bool = False
    additional_secret_outputs: list[str] = field(default_factory=list)
    ignore_changes: list[str] = field(default_factory=list)


@dataclass
class Run:
    resources: list[Registered] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    exports: dict[str, Any] = field(default_factory=dict)
    secret_exports: set[str] = field(default_factory=set)

    def of_type(self, prefix: str) -> list[Registered]:
        return [r for r in self.resources if r.type.startswith(prefix)]

    def named(self, name: str) -> Registered:
        found = [r for r in self.resources if r.name == name]
        assert found, f"no resource named {name}: {[r.name for r in self.resources]}"
        assert len(found) == 1, f"{len(found)} resources named {name}"
        return found[0]

    def by_urn(self, urn: str) -> Registered:
        found = [r for r in self.resources if r.urn == urn]
        assert found, f"no resource with URN {urn}"
        return found[0]

    def deps(self, name: str) -> set[str]:
        """Names of what `name` waits for (explicit depends_on and its inputs' resources)."""
        return {self.by_urn(u).name for u in self.named(name).dependencies}

    def parent(self, name: str) -> str:
        """The parent's name (the stack's, for a top-level resource)."""
        return self.named(name).parent.rsplit("::", 1)[-1]

    def provider_of(self, name: str) -> str | None:
        """The name of the explicit provider `name` uses (None: the default provider)."""
        ref = self.named(name).provider
        if not ref:
            return None
        found = [r for r in self.resources if r.urn and ref.startswith(r.urn + "::")]
        assert found, f"no provider {ref}"
        return found[0].name


SECRET_SIG = "4dabf18193072939515e22adb298388d"


def unwrap(value: Any) -> Any:
    """Inputs as registered, with Pulumi's secret wrappers taken off."""
    if isinstance(value, dict):
        if SECRET_SIG in value:
            return unwrap(value.get("value"))
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def strip_secrets(value: Any) -> Any:
    """The plain part of an input: every secret-wrapped value becomes '<secret>'."""
    if isinstance(value, dict):
        if SECRET_SIG in value:
            return "<secret>"
        return {k: strip_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strip_secrets(v) for v in value]
    return value


class Mocks(pulumi.runtime.Mocks):
    """Echo inputs, adding only what a provider would compute. Registered resources go to
    `resources`, invoke calls to `calls`; `command_stdout(name)` is the stdout a command
    resource of that name reports (none: the command's inputs only)."""

    def __init__(
        self,
        resources: list[Registered],
        calls: list[tuple[str, dict[str, Any]]] | None = None,
        command_stdout: Callable[[str], str] | None = None,
    ) -> None:
        self.resources, self.calls, self.command_stdout = resources, calls, command_stdout
        # Hetzner Cloud, as the tests want it: an API error for every look-up, a server
        # given no IPv6 address.
        self.hcloud_error: str | None = None
        self.server_without_ipv6 = False
        self.server_initializing = False
        self.last = threading.local()  # the registration `Monitor` completes

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict]:
        registered = Registered(args.typ, args.name, dict(args.inputs), args.provider)
        self.resources.append(registered)
        self.last.registered = registered
        outs = dict(args.inputs)
        if args.typ == "docker:index/remoteImage:RemoteImage":  # what a build reports
            digest = hashlib.sha256(str(outs.get("name")).encode()).hexdigest()
            outs["imageId"] = f"sha256:{digest}"
        if args.typ == "pulumi-python:dynamic:Resource":
            if "bits" in outs:  # a DKIM key
                outs["private_key_pem"] = PRIVATE_MARKER
                # Another domain's key says whose it is (the primary's is MOCK<selector>).
                whose = f"-{outs['domain']}" if outs.get("domain") else ""
                outs["dns_value"] = f"v=DKIM1; k=rsa; p=MOCK{outs['selector']}{whose}"
            if "length" in outs:  # a password
                outs["password"] = f"generated-{outs['user']}"
        if args.typ == "pulumi-python:dynamic:Resource" and "server" in outs:  # a host key
            outs["private_key"] = HOST_PRIVATE_MARKER
            outs["public_key"] = MOCK_SERVER_HOST_KEY
        if args.typ == "hcloud:index/server:Server":  # what Hetzner assigns
            outs.update(
                ipv4Address=MOCK_SERVER_IPV4, ipv6Address=MOCK_SERVER_IPV6, status="running"
            )
            if self.server_without_ipv6:
                outs["ipv6Address"] = ""
            if self.server_initializing:  # created, not yet running: no addresses yet
                outs.update(ipv4Address="", ipv6Address="", status="initializing")
            return "4711", outs
        if args.typ.startswith("hcloud:"):
            return str(100 + len(self.resources)), outs
        if args.typ.startswith("command:") and self.command_stdout is not None:
            outs.setdefault("stdout", self.command_stdout(args.name))
            outs.setdefault("stderr", "")
        return f"{args.name}-id", outs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list | None]:
        if self.calls is not None:
            self.calls.append((args.token, dict(args.args)))
        if args.token == "cloudflare:index/getZone:getZone":
            return {"id": "zone-from-lookup", "account": {"id": "account-from-lookup"}}, []
        if args.token.startswith("hcloud:"):
            if self.hcloud_error:
                raise Exception(self.hcloud_error)
            return {"id": 1, "name": args.args.get("name")}, []
        return {}, []


class Monitor(MockMonitor):
    """Pulumi's mock monitor, also recording each registration's options (its URN,
    parent, dependencies, delete-before-replace, retain-on-delete) on `Registered`."""

    mocks: Mocks

    def RegisterResource(self, request: Any) -> Any:
        self.mocks.last.registered = None
        response = super().RegisterResource(request)
        registered = getattr(self.mocks.last, "registered", None)
        if registered is not None:
            registered.urn = response.urn
            registered.parent = request.parent
            registered.dependencies = list(request.dependencies)
            registered.delete_before_replace = bool(request.deleteBeforeReplace)
            registered.retain_on_delete = bool(request.retainOnDelete)
            registered.additional_secret_outputs = list(request.additionalSecretOutputs)
            registered.ignore_changes = list(request.ignoreChanges)
        return response


def set_mocks(mocks: Mocks, preview: bool) -> None:
    """A fresh event loop and runtime with `mocks` behind a recording `Monitor`."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    pulumi.runtime.set_mocks(
        mocks, project="dkim-relay", stack="test", preview=preview, monitor=Monitor(mocks)
    )
    # The mock settings keep the outputs an earlier run left (a failed one leaves its
    # errors there): start clean, as pulumi.runtime.test does.
    SETTINGS.outputs.clear()


async def drain() -> None:
    """Let every task still pending finish, whatever it raises."""
    current = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not current]
    await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 30)


async def settle() -> None:
    """Wait as the engine's language host does: for every registration and every output,
    re-raising what failed in an apply (a program error the engine would report)."""
    try:
        await wait_for_rpcs()
    finally:
        await drain()


def run_program(
    monkeypatch: pytest.MonkeyPatch,
    config: Mapping[str, Any],
    secrets: Mapping[str, Any] | None = None,
    preview: bool = False,
    mocks: Callable[[Mocks], None] | None = None,
) -> Run:
    """Run __main__.py with `config` (keys without namespace go to dkim-relay:)."""
    run = Run()
    all_config: dict[str, str] = {}
    for key, value in {**config, **(secrets or {})}.items():
        full = key if ":" in key else f"dkim-relay:{key}"
        all_config[full] = value if isinstance(value, str) else json.dumps(value)
    secret_keys = [k if ":" in k else f"dkim-relay:{k}" for k in (secrets or {})]
    pulumi.runtime.set_all_config(all_config, secret_keys)
    # On `up` (preview=False) a VPS stack's program connects to the VPS (the SSH preflight
    # and port 25 checks, components/host.py): tests of it replace those calls.
    the_mocks = Mocks(run.resources, run.calls)
    if mocks is not None:
        mocks(the_mocks)  # the test's changes to what the mocks answer
    set_mocks(the_mocks, preview)
    loop = asyncio.get_event_loop()
    outputs: dict[str, Any] = {}
    monkeypatch.setattr(pulumi, "export", lambda k, v: outputs.__setitem__(k, v))
    monkeypatch.chdir(ROOT)
    try:
        runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")
    except Exception:
        loop.run_until_complete(drain())  # what was registered before the error
        raise

    async def collect() -> None:
        for key, value in outputs.items():
            out = pulumi.Output.from_input(value)
            run.exports[key] = await out.future()
            if await out.is_secret():
                run.secret_exports.add(key)
        await settle()

    loop.run_until_complete(collect())
    return run
