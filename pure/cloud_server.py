"""What a created cloud server is made of, as plain values: the cloud-init user data that
hands it the host key the stack generated, the cloud firewall's rules and the server's
labels. The component (components/cloud_server.py) only turns these into resources.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

# Hetzner's metadata service: it serves the user data (and so the host key's private
# half) to anything that can reach it from the server.
METADATA_ADDRESS = "169.254.169.254"
ANY = ("0.0.0.0/0", "::/0")


def user_data(host_private_key: str, host_public_key: str) -> str:
    """cloud-config that installs the stack's ed25519 host key instead of generating keys
    at first boot (cloud-init's ``ssh_keys``): the key SSH is pinned to exists before the
    server does, so nothing is trusted on first use. JSON is YAML, so no YAML writer."""
    config = {
        "ssh_deletekeys": True,
        "ssh_genkeytypes": [],
        "ssh_keys": {
            "ed25519_private": host_private_key.strip() + "\n",
            "ed25519_public": host_public_key.strip(),
        },
    }
    return "#cloud-config\n" + json.dumps(config, indent=2, sort_keys=True) + "\n"


@dataclass(frozen=True)
class FirewallRule:
    port: int
    sources: tuple[str, ...]
    description: str
    protocol: str = "tcp"
    direction: str = "in"


def firewall_rules(
    ssh_port: int, ssh_allow_from: Sequence[str], submission_ports: Sequence[int]
) -> list[FirewallRule]:
    """Inbound: SSH from ``ssh_allow_from``, the submission ports and 80 from anywhere (80
    for certbot's HTTP-01 challenge). The server's ufw stays the finer gate: it opens 80
    only while certbot runs, 465 only with submissions465. No outbound rule: Hetzner
    then lets everything out."""
    rules = [FirewallRule(ssh_port, tuple(ssh_allow_from), "SSH (the stack's steps, Docker)")]
    rules += [
        FirewallRule(p, ANY, "mail submission (STARTTLS or implicit TLS)")
        for p in dict.fromkeys(submission_ports)
    ]
    rules.append(FirewallRule(80, ANY, "ACME HTTP-01 (ufw opens it only during renewals)"))
    return rules


def labels(stack: str, project: str) -> dict[str, str]:
    """Labels on every cloud resource: which stack owns it (Hetzner label values allow
    letters, digits, - _ . only)."""
    safe = "".join(
        c if c.isascii() and (c.isalnum() or c in "-_.") else "-" for c in f"{project}.{stack}"
    )
    return {"managed-by": "dkim-relay", "stack": safe[:63].strip("-_.") or "stack"}
