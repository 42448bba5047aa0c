"""``dkim-relay verify``: run every check, report it as text or JSON, alert, exit by verdict.

Usage::

    pulumi stack output --json --show-secrets | bin/dkim-relay verify
    bin/dkim-relay verify --outputs outputs.json [--json] [--alert-webhook URL] ...

Text mode prints one line per check, ``PASS|FAIL|WARN <check>: <detail> [fix: ...]``,
as soon as it is known. Passwords come only from the outputs JSON (stdin or file); they
are never printed or posted, and never sent to a server whose certificate did not verify.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import NoReturn

from tools.verify import alert
from tools.verify.dns_checks import dns_checks, make_resolver, parse_nameserver
from tools.verify.outputs import InputError, Target, read_outputs, target_from_outputs
from tools.verify.result import FAIL, WARN, Result
from tools.verify.smtp_checks import CERT_FAIL_DAYS, CERT_WARN_DAYS, SmtpOptions, smtp_checks

EXIT_OK, EXIT_WARN, EXIT_FAIL, EXIT_INPUT = 0, 1, 2, 3
WEBHOOK_ENV = "DKIM_RELAY_ALERT_WEBHOOK"

EPILOG = f"""\
exit status:
  0  every check passed
  1  warnings only (e.g. the certificate expires within --warn-cert-days)
  2  a check failed, or the alert could not be posted
  3  unusable outputs or flags: nothing was checked

alert: with --alert-webhook URL (or ${WEBHOOK_ENV}), one Slack-compatible
{{"text": ...}} message naming each failing or warning check is posted when anything
fails or warns (also when nothing could be checked), never when all pass; the post
waits at most --timeout seconds. It holds no password. Prefer the environment
variable: a URL on the command line is visible to other users of the machine.
"""


class UsageParser(argparse.ArgumentParser):
    """A usage error exits 3, as unusable input does (2 and 1 mean failing checks)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message}\n")


def run_checks(
    t: Target,
    *,
    nameserver: tuple[str, int] | None,
    timeout: float,
    opts: SmtpOptions,
    skip_dns: bool = False,
    skip_ipv6: bool = False,
) -> Iterator[Result]:
    """Every check, each result as soon as it is known."""
    if not skip_dns:
        yield from dns_checks(t, make_resolver(nameserver, timeout), timeout)
    families = [(t.connect_ipv4, "ipv4")] + ([] if skip_ipv6 else [(t.connect_ipv6, "ipv6")])
    for addr, label in families:
        if addr:
            sent = False
            for r in smtp_checks(t, addr, label, opts):
                sent = sent or r.check.startswith("smtp.send[")
                yield r
            if sent:
                opts = dataclasses.replace(opts, send_to=None)  # one test message is enough


def exit_code(results: Sequence[Result]) -> int:
    if any(r.status == FAIL for r in results):
        return EXIT_FAIL
    return EXIT_WARN if any(r.status == WARN for r in results) else EXIT_OK


def verdict(code: int) -> str:
    return {EXIT_OK: "OK", EXIT_WARN: "WARN", EXIT_FAIL: "FAILED"}.get(code, "ERROR")


SUMMARY = "check a deployed relay: DNS, TLS, AUTH, no open relay"
DESCRIPTION = "Check a deployed dkim-relay: DNS (reverse DNS too), TLS, AUTH, no open relay."


def parser() -> argparse.ArgumentParser:
    """`dkim-relay verify` on its own (the `dkim-relay` command adds the same arguments)."""
    ap = UsageParser(
        prog="dkim-relay verify",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(ap)
    return ap


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--outputs", metavar="FILE", help="stack outputs JSON (default: stdin)")
    ap.add_argument("--nameserver", metavar="IP[:PORT]", help="DNS server to ask")
    ap.add_argument("--cafile", help="CA bundle to trust for the relay's certificate")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per operation")
    ap.add_argument("--port", type=int, help="SMTP port (default: smtpPort output or 587)")
    ap.add_argument("--host", help="relay host name (default: relayHost output)")
    ap.add_argument("--ipv4", help="connect to this IPv4 address (default: vpsIpv4)")
    ap.add_argument("--ipv6", help="connect to this IPv6 address (default: vpsIpv6)")
    ap.add_argument(
        "--skip-ipv6",
        action="store_true",
        help="do not connect over IPv6 (GitHub-hosted runners have none); "
        "the AAAA and SPF checks of the IPv6 address still run",
    )
    ap.add_argument("--send-to", metavar="ADDRESS", help="also send a test message")
    ap.add_argument("--send-from", metavar="ADDRESS", help="From of the test message")
    ap.add_argument("--skip-dns", action="store_true", help="only the SMTP/TLS checks")
    ap.add_argument(
        "--warn-cert-days",
        type=int,
        default=CERT_WARN_DAYS,
        metavar="N",
        help=f"warn when the certificate expires within N days (default {CERT_WARN_DAYS}); "
        f"it fails once expired or within {CERT_FAIL_DAYS} days (or N, if smaller)",
    )
    ap.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object: {"verdict", "exit_code", "checks": '
        '[{"name", "status", "detail", "fix"}, ...]} instead of lines',
    )
    ap.add_argument(
        "--alert-webhook",
        metavar="URL",
        help=f"post an alert here when anything fails or warns (default: ${WEBHOOK_ENV})",
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run(parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run the checks that `args` (parsed by `add_arguments`) ask for; the exit status."""
    webhook = args.alert_webhook
    if webhook is None:
        webhook = os.environ.get(WEBHOOK_ENV, "")
    webhook = webhook.strip() or None

    def unusable(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        if args.json:
            print(json.dumps({"verdict": "ERROR", "exit_code": EXIT_INPUT, "error": message}))
        if webhook:
            _post(webhook, alert.error_text(message), args.timeout)
        return EXIT_INPUT

    if webhook:
        try:
            alert.check_url(webhook)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_INPUT
    try:
        nameserver = parse_nameserver(args.nameserver) if args.nameserver else None
    except ValueError as exc:
        return unusable(f"--nameserver {args.nameserver}: {exc}")
    try:
        target = target_from_outputs(
            read_outputs(args.outputs, sys.stdin),
            host=args.host,
            ipv4=args.ipv4,
            ipv6=args.ipv6,
            port=args.port,
        )
    except (InputError, OSError, ValueError) as exc:
        return unusable(str(exc))
    opts = SmtpOptions(
        timeout=args.timeout,
        cafile=args.cafile,
        send_to=args.send_to,
        send_from=args.send_from,
        warn_cert_days=args.warn_cert_days,
    )
    results = []
    for r in run_checks(
        target,
        nameserver=nameserver,
        timeout=args.timeout,
        opts=opts,
        skip_dns=args.skip_dns,
        skip_ipv6=args.skip_ipv6,
    ):
        results.append(r)
        if not args.json:
            print(r.line(), flush=True)
    code = exit_code(results)
    failed = sum(r.status == FAIL for r in results)
    warned = sum(r.status == WARN for r in results)
    if args.json:
        report = {
            "verdict": verdict(code),
            "exit_code": code,
            "checks": [r.as_json() for r in results],
        }
        print(json.dumps(report, indent=2))
    else:
        print(f"verify {verdict(code)}: {failed} check(s) fail, {warned} warn, of {len(results)}")
    text = alert.alert_text(results, target.relay_host, target.secrets())
    if webhook and text and not _post(webhook, text, args.timeout):
        code = EXIT_FAIL
    return code


def _post(url: str, text: str, timeout: float) -> bool:
    why = alert.post(url, text, timeout)
    if why:
        print(f"alert: not posted: {why}", file=sys.stderr)
        return False
    print("alert: posted to the webhook", file=sys.stderr)
    return True
