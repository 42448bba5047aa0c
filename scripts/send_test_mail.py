"""Send one message through a deployed relay and check the copy the sink kept.

  pulumi stack output --json --show-secrets | python scripts/send_test_mail.py \
      --host 127.0.0.1 --cafile .local/letsencrypt/ca.pem --sink-dir .local/sink

Submits with STARTTLS + AUTH using the stack's own smtpUsername/smtpPassword, waits for
the message to arrive in the sink folder, and verifies its DKIM signature with dkimpy
against the value the stack publishes for the sender's domain (dkimDnsValue; with
--from at another of the stack's domains, that domain's in dkimDnsValuesByDomain).
Exits non-zero if any step fails.
"""

from __future__ import annotations

import argparse
import json
import smtplib
import ssl
import sys
import time
import uuid
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

import dkim


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1", help="address the relay is published on")
    ap.add_argument("--cafile", required=True, help="CA that issued the relay's certificate")
    ap.add_argument("--sink-dir", required=True, type=Path, help="where the sink keeps mail")
    ap.add_argument("--to", default="someone@example.net")
    ap.add_argument(
        "--from",
        dest="sender",
        help="the sender (envelope and From), e.g. at another of the stack's domains "
        "(default: the login itself)",
    )
    ap.add_argument("--timeout", type=float, default=60)
    args = ap.parse_args(argv)
    out = json.load(sys.stdin)

    token = uuid.uuid4().hex
    msg = EmailMessage()
    sender = args.sender or out["smtpUsername"]
    domain = sender.rpartition("@")[2].lower()
    selector = (out.get("dkimSelectorsByDomain") or {}).get(domain, out["dkimSelector"])
    value = (out.get("dkimDnsValuesByDomain") or {}).get(domain, {}).get(selector)
    value = value or out["dkimDnsValue"]
    msg["From"] = sender
    msg["To"] = args.to
    msg["Subject"] = f"dkim-relay test {token}"
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=out["domain"])
    msg.set_content("Sent through the relay by scripts/send_test_mail.py.\n")

    ctx = ssl.create_default_context(cafile=args.cafile)
    with smtplib.SMTP(args.host, int(out["smtpPort"]), timeout=30) as smtp:
        # Connected by address; the certificate is checked against the relay's name.
        smtp._host = out["smtpServer"]  # type: ignore[attr-defined]
        smtp.ehlo("local-up")
        smtp.starttls(context=ctx)
        smtp.login(out["smtpUsername"], out["smtpPassword"])
        smtp.send_message(msg, from_addr=sender)
    print(f"sent: {msg['Subject']} via {out['smtpServer']}:{out['smtpPort']}")

    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        for path in sorted(args.sink_dir.glob("*.eml")):
            data = path.read_bytes()
            if token.encode() not in data:
                continue
            record = f"{selector}._domainkey.{domain}".encode()

            def lookup(name: bytes, timeout: int = 5, record: bytes = record) -> bytes | None:
                return value.encode() if name.rstrip(b".") == record else None

            ok = dkim.verify(data, dnsfunc=lookup)
            print(f"received: {path}")
            print(
                f"DKIM signature: {'PASS' if ok else 'FAIL'} (dkimpy, against the value "
                f"published at {record.decode()})"
            )
            return 0 if ok else 1
        time.sleep(0.5)
    print(f"no message with {token} reached {args.sink_dir} within {args.timeout:.0f} s")
    return 1


if __name__ == "__main__":
    sys.exit(main())
