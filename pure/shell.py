"""Scripts for a target, assembled from the files under ``target/``.

A script is a header of quoted variable assignments followed by the text of one or
more files (a library, then the step's body). Values reach the shell only through
:func:`header` (``shlex.quote``); the files' text is never formatted.

Each body file starts with a guarded ``source`` of its library, so it also runs (and
shellcheck follows it) as a plain file; in an assembled script the library comes
first and the guard skips the ``source``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

TARGET_DIR = Path(__file__).resolve().parent.parent / "target"

Value = str | int | Sequence[str]

_NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
_SHEBANG = "#!/usr/bin/env bash\n"


def read(rel: str) -> str:
    """The text of ``target/<rel>``."""
    return (TARGET_DIR / rel).read_text()


def header(values: Mapping[str, Value]) -> str:
    """``#!``, ``set -euo pipefail`` and one ``NAME=quoted`` (or ``NAME=(...)``) per value."""
    lines = [_SHEBANG.rstrip("\n"), "set -euo pipefail"]
    for name, value in values.items():
        if not _NAME_RE.match(name):
            raise ValueError(f"{name!r} is not an upper-case shell variable name")
        if isinstance(value, str | int):
            lines.append(name + "=" + shlex.quote(str(value)))
        else:
            lines.append(name + "=(" + " ".join(shlex.quote(v) for v in value) + ")")
    return "\n".join(lines) + "\n"


def script(values: Mapping[str, Value], *files: str) -> str:
    """The header of ``values``, then the files (``target/``-relative) without their ``#!``."""
    return header(values) + "".join(read(f).removeprefix(_SHEBANG) for f in files)


def command_line(script_text: str, sudo: bool = False) -> str:
    """The command line that runs ``script_text`` (what ``sh -c`` or SSH executes).

    The script travels as one quoted argument to ``bash -c`` so stdin stays free for
    payloads and key material; with ``sudo`` it runs through ``sudo -n`` (a non-root
    SSH user with passwordless sudo).
    """
    prefix = ["sudo", "-n"] if sudo else []
    return shlex.join([*prefix, "bash", "-c", script_text, "dkim-relay"])
