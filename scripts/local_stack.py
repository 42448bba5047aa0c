"""Write the local stack's config file, Pulumi.local.yaml, from the committed stacks/local.yaml.

  pulumi stack export --stack local \
    | python scripts/local_stack.py stacks/local.yaml Pulumi.local.yaml

Pulumi writes the passphrase salt into a stack's config file (and re-serialises it), so
the file it writes is git-ignored and made here: the template's config, plus the salt
already in the file, else the one the stack's state holds (from `pulumi stack export` on
stdin). The work tree stays clean however often the local stack is deployed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

HEADER = "# Made by scripts/local-up.sh from stacks/local.yaml: edit that file, not this one.\n"


def state_salt(export: str) -> str | None:
    """The passphrase salt of a `pulumi stack export` document, if it has one."""
    try:
        doc = json.loads(export)
    except ValueError:
        return None
    providers = (doc.get("deployment") or {}).get("secrets_providers") or {}
    salt = (providers.get("state") or {}).get("salt")
    return salt if isinstance(salt, str) and salt else None


def render(template: dict, salt: str | None) -> str:
    doc = {"config": template.get("config") or {}}
    if salt:
        doc = {"encryptionsalt": salt, **doc}
    return HEADER + yaml.safe_dump(doc, sort_keys=False)


def main(template_path: str, out_path: str) -> int:
    export = sys.stdin.read()  # read whole, so that the writer never meets a closed pipe
    out = Path(out_path)
    old = yaml.safe_load(out.read_text()) if out.exists() else None
    salt = (old or {}).get("encryptionsalt") or state_salt(export)
    text = render(yaml.safe_load(Path(template_path).read_text()), salt)
    if not out.exists() or out.read_text() != text:
        out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
