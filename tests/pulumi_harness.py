"""Run the whole program under Pulumi's mocks and collect what it registered and exported."""

from __future__ import annotations

import asyncio
import json
import runpy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pytest

ROOT = Path(__file__).resolve().parent.parent
PRIVATE_MARKER = "-----BEGIN PRIVATE KEY-----mock-----END PRIVATE KEY-----"


@dataclass
class Registered:
    type: str
    name: str
    inputs: dict[str, Any]
    provider: str | None = None


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
        return found[0]


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

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict]:
        self.resources.append(Registered(args.typ, args.name, dict(args.inputs), args.provider))
        outs = dict(args.inputs)
        if args.typ == "pulumi-python:dynamic:Resource":
            if "bits" in outs:  # a DKIM key
                outs["private_key_pem"] = PRIVATE_MARKER
                # Another domain's key says whose it is (the primary's is MOCK<selector>).
                whose = f"-{outs['domain']}" if outs.get("domain") else ""
                outs["dns_value"] = f"v=DKIM1; k=rsa; p=MOCK{outs['selector']}{whose}"
            if "length" in outs:  # a password
                outs["password"] = f"generated-{outs['user']}"
        if args.typ.startswith("command:") and self.command_stdout is not None:
            outs.setdefault("stdout", self.command_stdout(args.name))
            outs.setdefault("stderr", "")
        return f"{args.name}-id", outs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list | None]:
        if self.calls is not None:
            self.calls.append((args.token, dict(args.args)))
        if args.token == "cloudflare:index/getZone:getZone":
            return {"id": "zone-from-lookup", "account": {"id": "account-from-lookup"}}, []
        return {}, []


def run_program(
    monkeypatch: pytest.MonkeyPatch,
    config: Mapping[str, Any],
    secrets: Mapping[str, Any] | None = None,
    preview: bool = False,
) -> Run:
    """Run __main__.py with `config` (keys without namespace go to dkim-relay:)."""
    run = Run()
    all_config: dict[str, str] = {}
    for key, value in {**config, **(secrets or {})}.items():
        full = key if ":" in key else f"dkim-relay:{key}"
        all_config[full] = value if isinstance(value, str) else json.dumps(value)
    secret_keys = [k if ":" in k else f"dkim-relay:{k}" for k in (secrets or {})]
    pulumi.runtime.set_all_config(all_config, secret_keys)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    # A VPS stack runs with preview=True: RelayHost's preflight SSH check runs only on
    # `up`, and mocks must never reach the (documentation-range) VPS address.
    pulumi.runtime.set_mocks(
        Mocks(run.resources, run.calls), project="dkim-relay", stack="test", preview=preview
    )
    outputs: dict[str, Any] = {}
    monkeypatch.setattr(pulumi, "export", lambda k, v: outputs.__setitem__(k, v))
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")

    async def settle() -> None:
        for key, value in outputs.items():
            out = pulumi.Output.from_input(value)
            run.exports[key] = await out.future()
            if await out.is_secret():
                run.secret_exports.add(key)
        # let every registration finish before the loop is dropped
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]
        await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 30)

    loop.run_until_complete(settle())
    return run
