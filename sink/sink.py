"""A mail sink: every message received on port 25 is written to /mail as an .eml file."""

import asyncore
import os
import signal
import smtpd
import sys
import time

MAIL_DIR = os.environ.get("SINK_DIR", "/mail")


class Sink(smtpd.SMTPServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        if isinstance(data, str):
            data = data.encode()
        name = f"{time.time_ns()}.eml"
        tmp = os.path.join(MAIL_DIR, "." + name)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(MAIL_DIR, name))  # readers never see half a message
        print(f"sink: kept {name} from {mailfrom} for {','.join(rcpttos)}", flush=True)


def main() -> None:
    os.makedirs(MAIL_DIR, exist_ok=True)
    Sink(("0.0.0.0", 25), None, decode_data=False)  # type: ignore[arg-type]  # smtpd: no relay
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("sink: listening on port 25", flush=True)
    asyncore.loop()


if __name__ == "__main__":
    main()
