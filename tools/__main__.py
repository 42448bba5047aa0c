"""``dkim-relay <command> [args]``: the operator tools by name (bin/dkim-relay runs this)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS = {
    "verify": ("tools.verify.cli", "check a deployed relay: DNS, TLS, AUTH, no open relay"),
    "dmarc-report": ("tools.dmarc_report", "summarise DMARC aggregate reports per source IP"),
}
EXIT_USAGE = 3  # as verify's unusable input: 2 and 1 mean failing checks


def usage() -> str:
    lines = ["usage: dkim-relay <command> [args]   (dkim-relay <command> --help)", "", "commands:"]
    lines += [f"  {name:<14}{why}" for name, (_mod, why) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if not args or args[0] not in COMMANDS:
        what = f"unknown command {args[0]!r}" if args else "no command"
        print(f"dkim-relay: {what}\n{usage()}", file=sys.stderr)
        return EXIT_USAGE
    module = importlib.import_module(COMMANDS[args[0]][0])
    code: int = module.main(args[1:])
    return code


if __name__ == "__main__":
    sys.exit(main())
