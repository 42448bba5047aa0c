"""DKIM keys: helpers for the key material and its TXT value, and the `DkimKey` component.
The TXT splitting and quoting are in `pure/txt.py`.

The key is generated once by a Pulumi dynamic resource and kept in the stack's state as a
secret, so a second `pulumi up` keeps it and a new selector gets a key of its own.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi.dynamic
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pure.config import ALLOWED_KEY_BITS


def generate_private_key_pem(bits: int = 2048) -> str:
    """A fresh RSA key in PKCS#8 PEM, the form OpenDKIM and dkimpy both read."""
    if bits not in ALLOWED_KEY_BITS:
        raise ValueError(f"DKIM key size must be one of {ALLOWED_KEY_BITS}, not {bits}")
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def public_key_b64(private_pem: str) -> str:
    """Base64 of the DER SubjectPublicKeyInfo: the `p=` tag of RFC 6376."""
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def dkim_txt_value(private_pem: str) -> str:
    """The DKIM TXT record value as one logical string."""
    return f"v=DKIM1; k=rsa; p={public_key_b64(private_pem)}"


class _DkimKeyProvider(pulumi.dynamic.ResourceProvider):
    """Generates the key on create only; any change of selector or size replaces it."""

    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        pem = generate_private_key_pem(int(props["bits"]))
        domain = props.get("domain")
        outs = {
            **({"domain": domain} if domain else {}),
            "selector": props["selector"],
            "bits": int(props["bits"]),
            "private_key_pem": pem,
            "dns_value": dkim_txt_value(pem),
        }
        name = f"{domain}-{props['selector']}" if domain else props["selector"]
        return pulumi.dynamic.CreateResult(id_=f"dkim-{name}", outs=outs)

    def diff(
        self, _id: str, olds: dict[str, Any], news: dict[str, Any]
    ) -> pulumi.dynamic.DiffResult:
        changed = [
            k for k in ("selector", "bits", "domain") if str(olds.get(k)) != str(news.get(k))
        ]
        return pulumi.dynamic.DiffResult(
            changes=bool(changed),
            replaces=changed,
            delete_before_replace=False,
        )

    def read(self, id_: str, props: dict[str, Any]) -> pulumi.dynamic.ReadResult:
        return pulumi.dynamic.ReadResult(id_=id_, outs=props)


class _DkimKeyResource(pulumi.dynamic.Resource):
    private_key_pem: pulumi.Output[str]
    dns_value: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        selector: str,
        bits: int,
        opts: pulumi.ResourceOptions,
        domain: str | None = None,
    ):
        # The primary domain's keys have no "domain" input (as before there were several
        # domains), so that an upgrade changes nothing; another domain's key names it.
        props: dict[str, Any] = {"selector": selector, "bits": bits}
        if domain is not None:
            props["domain"] = domain
        super().__init__(
            _DkimKeyProvider(),
            name,
            {**props, "private_key_pem": None, "dns_value": None},
            pulumi.ResourceOptions.merge(
                opts,
                pulumi.ResourceOptions(additional_secret_outputs=["private_key_pem"]),
            ),
        )


@dataclass(frozen=True)
class DkimKeyArgs:
    selector: str
    bits: int = 2048
    # None for the primary domain (its keys predate several domains); else the domain.
    domain: str | None = None


class DkimKey(pulumi.ComponentResource):
    """One DKIM key pair for one selector (of one domain), kept in state."""

    private_key_pem: pulumi.Output[str]
    dns_value: pulumi.Output[str]
    selector: str

    def __init__(
        self,
        name: str,
        args: DkimKeyArgs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("dkimrelay:index:DkimKey", name, None, opts)
        key = _DkimKeyResource(
            f"{name}-key",
            args.selector,
            args.bits,
            pulumi.ResourceOptions(parent=self),
            domain=args.domain,
        )
        self.selector = args.selector
        self.private_key_pem = pulumi.Output.secret(key.private_key_pem)
        self.dns_value = key.dns_value
        self.register_outputs({"selector": args.selector, "dnsValue": self.dns_value})
