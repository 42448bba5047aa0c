"""Relay benchmark: prints figures, asserts nothing.

    venv/bin/python bench/relay_bench.py [--messages N]

Starts dockerd if needed (scripts/docker-engine.sh), builds the relay image, runs it on
a throwaway network with an aiosmtpd sink on the gateway, then prints: image size, idle
memory, `docker start` -> healthy time (and -> SMTP banner), and signed messages per
second over one authenticated TLS session versus the same relay with signing off.
"""

from __future__ import annotations

import argparse
import re
import smtplib
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pure import postfix  # noqa: E402
from tests import relay_support as rs  # noqa: E402

IMAGE = "dkim-relay:bench"
NAME = "dkimrelay-bench"
PASSWORD = "bench-password-0123456789"


def mem_mib(container: str) -> float:
    usage = rs.docker("stats", "--no-stream", "--format", "{{.MemUsage}}", container)
    m = re.match(r"([\d.]+)\s*([KMG]i?B)", usage)
    assert m, usage
    factor = {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024, "kB": 1 / 1024, "MB": 1, "GB": 1024}
    return float(m.group(1)) * factor.get(m.group(2), 1)


def banner_ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            return s.recv(4).startswith(b"220")
    except OSError:
        return False


def throughput(port: int, ctx: ssl.SSLContext, n: int) -> float:
    msg = rs.make_message("bench@example.com", "sink@other.test", "bench")
    with smtplib.SMTP("127.0.0.1", port, local_hostname="bench.test", timeout=60) as s:
        s.starttls(context=ctx)
        s.login("bench@example.com", PASSWORD)
        for _ in range(5):  # warm up: milter connection, smtpd caches
            s.sendmail("bench@example.com", ["sink@other.test"], msg)
        t0 = time.perf_counter()
        for _ in range(n):
            s.sendmail("bench@example.com", ["sink@other.test"], msg)
        return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=300)
    opts = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    rs.build_image(IMAGE)
    size_mb = int(rs.docker("image", "inspect", "-f", "{{.Size}}", IMAGE)) / 1e6
    net = rs.TestNetwork.create(f"{NAME}-net", "172.31.253.0/24", "fd00:d6b1:be7c::/64")
    sink = rs.Sink(net.v4_gateway, 2530)
    sink.start()
    ca = rs.CertbotDir(tmp / "letsencrypt")
    ca.issue(rs.RELAY_HOST)
    ctx = ca.client_context()
    ctx.check_hostname = False
    pem = rs.generate_private_key_pem(2048)
    settings = postfix.PostfixSettings(
        domain=rs.DOMAIN,
        relay_host=rs.RELAY_HOST,
        dkim_selector=rs.SELECTOR,
        users=(postfix.SmtpUser("bench"),),
        nexthop=f"{net.v4_gateway}:2530",
        rate_limits=postfix.RateLimits(100000, 100000, 100, 100000),
    )
    spec = rs.RelaySpec(
        name=NAME,
        image=IMAGE,
        network=net,
        ip4="172.31.253.10",
        ip6="fd00:d6b1:be7c::10",
        cert_root=ca.root,
        volume=f"{NAME}-queue",
        settings=settings,
        passwords={"bench": PASSWORD},
        dkim_keys={rs.SELECTOR: pem},
        port_587=20587,
    )
    try:
        rs.start_relay(spec, tmp)
        rs.wait_healthy(NAME)
        time.sleep(10)  # settle: idle means no session, no queue run
        idle = mem_mib(NAME)
        rs.docker("stop", "-t", "30", NAME)
        t0 = time.monotonic()
        rs.docker("start", NAME)
        rs.wait_for("banner", lambda: banner_ready(spec.port_587), 60, every=0.02)
        t_banner = time.monotonic() - t0
        rs.wait_for("healthy", lambda: rs.health(NAME) == "healthy", 60, every=0.05)
        t_healthy = time.monotonic() - t0
        signed = throughput(spec.port_587, ctx, opts.messages)
        rs.wait_for("delivered", lambda: rs.queue_is_empty(NAME), 300, every=0.5)

        # The same relay with signing off: no milter in main.cf, nothing else changed.
        orig = postfix.render_main_cf

        def unsigned_main_cf(s: postfix.PostfixSettings) -> str:
            return re.sub(r"(?m)^smtpd_milters = .*$", "smtpd_milters =", orig(s))

        postfix.render_main_cf = unsigned_main_cf  # type: ignore[assignment]
        try:
            rs.start_relay(spec, tmp)
        finally:
            postfix.render_main_cf = orig  # type: ignore[assignment]
        rs.wait_healthy(NAME)
        unsigned = throughput(spec.port_587, ctx, opts.messages)
        rs.wait_for("delivered", lambda: rs.queue_is_empty(NAME), 300, every=0.5)
    finally:
        rs.docker("rm", "-f", NAME, check=False)
        rs.docker("volume", "rm", "-f", spec.volume, check=False)
        sink.stop()
        net.remove()
    engine = rs.docker("version", "-f", "{{.Server.Version}}")
    print(f"docker engine            {engine}")
    print(f"image size               {size_mb:.1f} MB")
    print(f"idle memory              {idle:.1f} MiB")
    print(f"docker start -> banner   {t_banner:.2f} s")
    print(f"docker start -> healthy  {t_healthy:.2f} s (health check interval 2 s)")
    print(
        f"signed                   {signed:.1f} msg/s over one TLS session ({opts.messages} msgs)"
    )
    print(f"unsigned                 {unsigned:.1f} msg/s")
    print(f"signing cost             {100 * (1 - signed / unsigned):.1f}% of throughput")
    print(f"sink received            {sink.count()} messages")


if __name__ == "__main__":
    main()
