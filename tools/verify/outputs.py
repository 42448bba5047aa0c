"""The stack outputs (``pulumi stack output --json --show-secrets``) as a ``Target``."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO


@dataclass(frozen=True)
class Target:
    """What to check, from the stack outputs plus command-line overrides."""

    domain: str
    relay_host: str
    ipv4: str | None  # the VPS addresses (stack outputs): what DNS and SPF must name
    ipv6: str | None
    port: int
    selector: str
    dkim_value: str
    credentials: tuple[tuple[str, str], ...] = ()  # (username, password); never printed
    usernames: tuple[str, ...] = ()
    connect_ipv4: str | None = None  # where to connect (--ipv4/--ipv6, else the VPS's)
    connect_ipv6: str | None = None
    # Every domain with each published selector's DKIM value (dkimDnsValuesByDomain), the
    # primary first; empty for outputs from before there were several domains.
    dkim_by_domain: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()

    def secrets(self) -> list[str]:
        return [password for _user, password in self.credentials]


class InputError(Exception):
    """Outputs or flags that cannot be used."""


def read_outputs(path: str | None, stdin: TextIO) -> dict[str, Any]:
    if path:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    else:
        if stdin.isatty():
            raise InputError(
                "no outputs: pipe `pulumi stack output --json --show-secrets` or use --outputs"
            )
        text = stdin.read()
    if not text.strip():
        raise InputError("the outputs are empty (did `pulumi stack output` fail?)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"the outputs are not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise InputError("the outputs JSON is not an object")
    return data


def target_from_outputs(
    outputs: Mapping[str, Any],
    *,
    host: str | None = None,
    ipv4: str | None = None,
    ipv6: str | None = None,
    port: int | None = None,
) -> Target:
    def need(key: str) -> Any:
        if outputs.get(key) in (None, ""):
            raise InputError(f"stack output {key!r} is missing")
        return outputs[key]

    domain = str(need("domain")).rstrip(".")
    relay_host = host or str(outputs.get("relayHost") or outputs.get("smtpServer") or "")
    if not relay_host:
        raise InputError("stack output 'relayHost' is missing (or give --host)")
    usernames = [str(u) for u in (outputs.get("smtpUsernames") or [])]
    first = outputs.get("smtpUsername")
    if first and str(first) not in usernames:
        usernames.insert(0, str(first))
    creds: dict[str, str] = {}
    pw_map = outputs.get("smtpPasswords")
    if isinstance(pw_map, Mapping):
        for key, value in pw_map.items():
            if not _is_secret_value(value):
                continue
            login = str(key)
            # The map may be keyed by user name ("alice") while logins are "alice@domain".
            if login not in usernames and f"{login}@{domain}" in usernames:
                login = f"{login}@{domain}"
            creds[login] = str(value)
    pw = outputs.get("smtpPassword")
    if first and _is_secret_value(pw):
        creds.setdefault(str(first), str(pw))
    v4, v6 = outputs.get("vpsIpv4"), outputs.get("vpsIpv6")
    c4, c6 = ipv4 or v4, ipv6 or v6
    for a, fam in ((v4, 4), (v6, 6), (c4, 4), (c6, 6)):
        try:
            if a and ipaddress.ip_address(str(a)).version != fam:
                raise InputError(f"{a} is not an IPv{fam} address")
        except ValueError:
            raise InputError(f"{a!r} is not an IP address") from None
    by_domain: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    values = outputs.get("dkimDnsValuesByDomain")
    if isinstance(values, Mapping):
        for d, sels in values.items():
            if isinstance(sels, Mapping):
                by_domain.append(
                    (str(d).rstrip("."), tuple((str(k), str(v)) for k, v in sels.items()))
                )
    by_domain.sort(key=lambda item: item[0] != domain)  # the primary first
    return Target(
        dkim_by_domain=tuple(by_domain),
        domain=domain,
        relay_host=relay_host.rstrip("."),
        ipv4=str(v4) if v4 else None,
        ipv6=str(v6) if v6 else None,
        connect_ipv4=str(c4) if c4 else None,
        connect_ipv6=str(c6) if c6 else None,
        port=int(port or outputs.get("smtpPort") or 587),
        selector=str(need("dkimSelector")),
        dkim_value=str(need("dkimDnsValue")),
        credentials=tuple(creds.items()),
        usernames=tuple(usernames),
    )


def _is_secret_value(v: object) -> bool:
    # Without --show-secrets pulumi prints "[secret]".
    return isinstance(v, str) and v != "" and v != "[secret]"
