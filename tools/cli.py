"""``dkim-relay <command> [args]``: the operator tools by name, one argparse subcommand each.

``pip install .`` makes this the ``dkim-relay`` command (pyproject.toml); in a checkout,
``bin/dkim-relay`` runs it with the project's venv.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tools import dmarc_report
from tools.verify import cli as verify


def parser() -> argparse.ArgumentParser:
    # A usage error exits 3 (unusable input), in every subcommand: the subparsers share
    # the top parser's class.
    ap = verify.UsageParser(
        prog="dkim-relay",
        description="Operator tools for a deployed dkim-relay.",
        epilog="dkim-relay <command> --help says more about each command.",
    )
    commands = ap.add_subparsers(title="commands", dest="command", metavar="<command>")
    commands.required = True
    v = commands.add_parser(
        "verify",
        help=verify.SUMMARY,
        description=verify.DESCRIPTION,
        epilog=verify.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verify.add_arguments(v)
    v.set_defaults(run=verify.run)
    d = commands.add_parser(
        "dmarc-report", help=dmarc_report.SUMMARY, description=dmarc_report.DESCRIPTION
    )
    dmarc_report.add_arguments(d)
    d.set_defaults(run=dmarc_report.run)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
