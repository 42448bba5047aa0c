"""Writes the key files from stdin (JSON {relative path: content}) under ROOT.

Usage: python3 -c PROGRAM ROOT MODE UID GID (run by secrets.sh on the host). Files get
MODE (octal) and UID:GID, directories 0700; files under ROOT not in the payload are
removed (the directory belongs to dkim-relay). Only names are printed, never content.
"""

from __future__ import annotations

import json
import os
import stat
import sys


def fix_dir(d: str, uid: int, gid: int, changed: list[str]) -> None:
    st = os.stat(d)
    if stat.S_IMODE(st.st_mode) != 0o700 or (st.st_uid, st.st_gid) != (uid, gid):
        os.chown(d, uid, gid)
        os.chmod(d, 0o700)
        changed.append(d + "/")


def up_to_date(path: str, data: bytes, mode: int, uid: int, gid: int) -> bool:
    try:
        st = os.lstat(path)
        with open(path, "rb") as f:
            same = f.read() == data
    except FileNotFoundError:
        return False
    return (
        same
        and stat.S_ISREG(st.st_mode)
        and stat.S_IMODE(st.st_mode) == mode
        and (st.st_uid, st.st_gid) == (uid, gid)
    )


def write(root: str, files: dict[str, str], mode: int, uid: int, gid: int) -> list[str]:
    """Brings ROOT to exactly ``files``; returns what changed (names only)."""
    changed: list[str] = []
    os.makedirs(root, mode=0o700, exist_ok=True)
    fix_dir(root, uid, gid, changed)
    wanted = set()
    for rel, content in sorted(files.items()):
        parts = rel.split("/")
        if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
            sys.exit(f"refusing path {rel!r}")
        path = os.path.join(root, *parts)
        wanted.add(path)
        d = root
        for p in parts[:-1]:
            d = os.path.join(d, p)
            os.makedirs(d, mode=0o700, exist_ok=True)
            fix_dir(d, uid, gid, changed)
        data = content.encode()
        if up_to_date(path, data, mode, uid, gid):
            continue
        tmp = path + ".tmp-dkim-relay"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chown(tmp, uid, gid)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        changed.append(rel)
    for dirpath, _dirnames, filenames in os.walk(root):
        for n in filenames:
            p = os.path.join(dirpath, n)
            if p not in wanted:
                os.unlink(p)
                changed.append("removed " + os.path.relpath(p, root))
    return changed


def main() -> None:
    root, mode, uid, gid = sys.argv[1], int(sys.argv[2], 8), int(sys.argv[3]), int(sys.argv[4])
    files = json.load(sys.stdin)
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in files.items()
    ):
        sys.exit("stdin must be a JSON object of relative path -> file content")
    changed = write(root, files, mode, uid, gid)
    for c in changed:
        print("dkim-relay[secrets]: updated " + c)
    print("dkim-relay[secrets]: key files " + ("changed" if changed else "unchanged"))


if __name__ == "__main__":
    main()
