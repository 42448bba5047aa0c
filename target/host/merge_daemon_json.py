"""Merges dkim-relay's IPv6 settings into Docker's daemon.json; prints changed/unchanged.

Usage: python3 -c PROGRAM PATH ENGINE_MAJOR IPV6_CIDR (run by docker.sh on the host).
Keys set: ipv6, ip6tables, fixed-cidr-v6 (kept if present) and, before Engine 27,
experimental. Every other key is kept; the file is replaced atomically.
"""

from __future__ import annotations

import json
import os
import sys


def merge(current: dict[str, object], engine_major: int, cidr: str) -> dict[str, object]:
    new = dict(current)
    new["ipv6"] = True
    new.setdefault("fixed-cidr-v6", cidr)
    new["ip6tables"] = True
    if engine_major < 27:
        # ip6tables needs experimental before Engine 27 (moby/moby#47310 made it GA).
        new["experimental"] = True
    return new


def main(path: str, engine_major: int, cidr: str) -> str:
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    cur = json.loads(text) if text.strip() else {}
    if not isinstance(cur, dict):
        sys.exit(f"{path} is not a JSON object; refusing to overwrite it")
    new = merge(cur, engine_major, cidr)
    if new == cur:
        return "unchanged"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".dkim-relay.tmp"
    with open(tmp, "w") as f:
        json.dump(new, f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return "changed"


if __name__ == "__main__":
    print(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
