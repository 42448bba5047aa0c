"""What the config model says about each key, as text for people and for Pulumi.

The model in ``pure/config.py`` is the one schema: its fields give each key's type,
default and description. From it come ``Pulumi.yaml``'s ``template:`` and ``config:``
sections and the reference page ``docs/config.md``; ``scripts/gen_config_schema.py``
writes them, and a unit test fails when either is stale. Pure: text in, text out.
"""

from __future__ import annotations

import json
from typing import Any

from pure.config import RelayConfig, config_types

# The first key of each group, and the group's title (the model's field order within).
SECTIONS = {
    "domain": "identity and DNS",
    "deployTarget": "where the relay runs",
    "smtpUsers": "the relay",
}
# What `pulumi new` asks for: the keys a VPS stack cannot do without and has no default for.
TEMPLATE_PROMPTS = ("domain", "vpsIpv4", "acmeEmail", "sshHostKey")
TEMPLATE_DESCRIPTION = (
    'A DKIM-signing SMTP relay for Gmail\'s "Send mail as" on your own VPS: the DKIM key, '
    "SPF/DKIM/DMARC records, Let's Encrypt certificate, firewall and the relay in one stack"
)
SECRETS = {
    "sshPrivateKey": "the SSH key that logs in to the VPS "
    "(`pulumi config set --secret sshPrivateKey < ~/.ssh/id_ed25519`); vps stacks",
    "smtpPasswords": "an object of SMTP passwords by user name "
    "(`pulumi config set --secret --path 'smtpPasswords.gmail'`); a user without one "
    "gets a generated password",
    "relayNexthopPassword": "the password of relayNexthopUser at the smarthost",
    "cloudflare:apiToken": "a Cloudflare API token with Zone:DNS:Edit (and Email Routing "
    "with forwardTo); dnsProvider cloudflare",
}
MARKER = (
    "# Generated from the config model (pure/config.py) by scripts/gen_config_schema.py:\n"
    "# change the model and run the script; do not edit below this line.\n"
)


def _fields() -> list[tuple[str, Any]]:
    return [(f.alias or name, f) for name, f in RelayConfig.model_fields.items()]


def _default(field: Any) -> Any:
    """The default as Pulumi.yaml writes it: "" for "not set" (Pulumi has no null)."""
    value = field.get_default(call_default_factory=True)
    return "" if value is None else value


def _scalar(value: Any) -> str:
    """A YAML scalar or flow sequence: JSON's syntax, which YAML reads the same."""
    if isinstance(value, str) and value and value == value.strip() and _plain(value):
        return value
    return json.dumps(value)


def _plain(text: str) -> bool:
    """Whether `text` reads back as the same string without quotes."""
    if text[0] in "!&*-?{}[],#|>@`\"'%:~" or text.lower() in ("true", "false", "null", "yes", "no"):
        return False
    if ": " in text or " #" in text or text.endswith(":"):
        return False
    try:
        float(text)
    except ValueError:
        return True
    return False


def pulumi_yaml_section() -> str:
    """Pulumi.yaml's `template:` and `config:` sections, after MARKER."""
    types = config_types()
    out = [
        MARKER,
        "template:\n",
        f"  description: {_scalar(TEMPLATE_DESCRIPTION)}\n",
        "  config:\n",
    ]
    fields = dict(_fields())
    for key in TEMPLATE_PROMPTS:
        out.append(f"    {key}:\n      description: {_scalar(fields[key].description)}\n")
    out += [
        '# Every key of the dkim-relay namespace. An empty string means "not set" (Pulumi has\n',
        "# no null default). Secrets are set with `pulumi config set --secret` and are not\n",
        f"# declared here: {', '.join(SECRETS)}.\n",
        "config:\n",
    ]
    for key, field in _fields():
        if key in SECTIONS:
            out.append(f"  # --- {SECTIONS[key]} ---\n")
        out.append(f"  {key}:\n")
        if types[key] != "array":
            out.append(f"    type: {types[key]}\n")
        elif _item_kind(key) == "strings":
            out.append("    type: array\n    items:\n      type: string\n")
        else:
            # No type for a list that may hold objects: Pulumi.yaml's types cannot describe
            # one (an array needs an item type, and with one the CLI refuses objects); the
            # model checks the items.
            out.append("    # a list of objects: no type here, the program checks it\n")
        if not field.is_required():
            out.append(f"    default: {_scalar(_default(field))}\n")
        out.append(f"    description: {_scalar(field.description)}\n")
    return "".join(out)


def _item_kind(key: str) -> str:
    """What a list key's items are: "strings", "objects", or "strings or objects"."""
    schema = RelayConfig.model_json_schema(by_alias=True)
    items = schema["properties"][key].get("items", {})
    options = items.get("oneOf") or items.get("anyOf") or [items]
    kinds = {"strings" if o.get("type") == "string" else "objects" for o in options}
    return " or ".join(sorted(kinds, reverse=True))


def _md(value: Any) -> str:
    return "`" + json.dumps(value) + "`" if not isinstance(value, str) else f"`{value}`"


def config_reference() -> str:
    """docs/config.md: every key with its type, default and meaning."""
    types = config_types()
    out = [
        "# Config reference\n\n",
        "Every key of the `dkim-relay:` namespace, set with `pulumi config set KEY VALUE` (a\n",
        "list: `pulumi config set --path 'KEY[0]' VALUE`) or written in\n",
        "`Pulumi.<stack>.yaml`. Generated from the config model (`pure/config.py`) by\n",
        "`scripts/gen_config_schema.py`, like `Pulumi.yaml`'s `config:` section; a bad value\n",
        "is refused by the model, before anything is created, with the key named and a fix.\n",
        "`docs/where-to-change-what.md` follows one key from here to the relay.\n",
    ]
    for key, field in _fields():
        if key in SECTIONS:
            out += [f"\n## {SECTIONS[key][:1].upper()}{SECTIONS[key][1:]}\n\n"]
            out += ["| key | type | default | description |\n", "| --- | --- | --- | --- |\n"]
        kind = f"list of {_item_kind(key)}" if types[key] == "array" else types[key]
        if field.is_required():
            default = "required"
        elif _default(field) == "":
            default = "not set"
        else:
            default = _md(_default(field))
        description = str(field.description).replace("|", "\\|").replace("<", "\\<")
        out.append(f"| `{key}` | {kind} | {default} | {description} |\n")
    out += ["\n## Secrets\n\n", "Set with `pulumi config set --secret`; never in plain text.\n\n"]
    out += [f"- `{key}`: {why}\n" for key, why in SECRETS.items()]
    return "".join(out)
