#!/usr/bin/env python3
"""Write Pulumi.yaml's `template:` and `config:` sections and docs/config.md from the config
model (pure/config.py). `--check`: write nothing, exit 1 naming each stale file.

    venv/bin/python scripts/gen_config_schema.py [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pure.config_schema import MARKER, config_reference, pulumi_yaml_section  # noqa: E402


def wanted() -> dict[Path, str]:
    """Each generated file's whole wanted text."""
    pulumi_yaml = REPO / "Pulumi.yaml"
    head = pulumi_yaml.read_text().split(MARKER, 1)[0]
    return {
        pulumi_yaml: head.rstrip("\n") + "\n" + pulumi_yaml_section(),
        REPO / "docs" / "config.md": config_reference(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only say which files are stale")
    args = ap.parse_args()
    stale = [p for p, text in wanted().items() if not p.is_file() or p.read_text() != text]
    for path in stale:
        name = path.relative_to(REPO)
        if args.check:
            print(f"{name} is stale: run scripts/gen_config_schema.py", file=sys.stderr)
        else:
            path.write_text(wanted()[path])
            print(f"wrote {name}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
