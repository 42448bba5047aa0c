"""Relay benchmark: prints figures, asserts nothing.

    venv/bin/python bench/relay_bench.py [--messages N] [--bits 2048 3072]

Starts dockerd if needed (scripts/docker-engine.sh), builds the relay image, runs it on
a throwaway network with an aiosmtpd sink on the gateway, then prints: image size (and
over debian:bookworm-slim), idle memory, `docker start` -> banner and -> healthy,
`docker stop`, and per DKIM key size: signed and unsigned messages per second over one
authenticated TLS session, the signing cost per message (1/signed - 1/unsigned, the
median of --rounds alternating pairs), OpenDKIM's own CPU per message, the
cost of one RSA signature by `openssl speed` in the same run, their ratio
(aim: at most 2), and the p50/p99 latency of one message in the session and of one whole
submission (connect, STARTTLS, AUTH, message, QUIT: what Gmail does per message).
Unsigned is the same container with `smtpd_milters` emptied by postconf and a reload.
"""

from __future__ import annotations

import argparse
import re
import smtplib
import socket
import ssl
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pure import postfix  # noqa: E402
from tests import relay_support as rs  # noqa: E402

IMAGE = "dkim-relay:bench"
BASE = "debian:bookworm-slim"
NAME = "dkimrelay-bench"
PASSWORD = "bench-password-0123456789"
SENDER, RCPT = "bench@example.com", "sink@other.test"


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


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) in ms, nearest rank."""
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


@dataclass
class Run:
    rate: float  # messages per second over one session
    latencies: list[float]  # seconds per message in that session
    whole: list[float]  # seconds per whole submission (own connection and AUTH)


def session_run(port: int, ctx: ssl.SSLContext, n: int) -> tuple[float, list[float]]:
    msg = rs.make_message(SENDER, RCPT, "bench")
    lat: list[float] = []
    with smtplib.SMTP("127.0.0.1", port, local_hostname="bench.test", timeout=60) as s:
        s.starttls(context=ctx)
        s.login(SENDER, PASSWORD)
        for _ in range(5):  # warm up: milter connection, smtpd caches
            s.sendmail(SENDER, [RCPT], msg)
        t0 = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            s.sendmail(SENDER, [RCPT], msg)
            lat.append(time.perf_counter() - t)
        return n / (time.perf_counter() - t0), lat


def whole_submissions(port: int, ctx: ssl.SSLContext, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        rs.submit("127.0.0.1", port, ctx, SENDER, PASSWORD, SENDER, RCPT, "bench-whole")
        out.append(time.perf_counter() - t)
    return out


def measure(name: str, port: int, ctx: ssl.SSLContext, n: int, whole: int) -> Run:
    rate, lat = session_run(port, ctx, n)
    rs.wait_for("delivered", lambda: rs.queue_is_empty(name), 300, every=0.5)
    w = whole_submissions(port, ctx, whole)
    rs.wait_for("delivered", lambda: rs.queue_is_empty(name), 300, every=0.5)
    return Run(rate, lat, w)


def alternating(
    name: str, port: int, ctx: ssl.SSLContext, n: int, rounds: int
) -> list[tuple[float, float]]:
    """(signed, unsigned) msg/s of `rounds` back-to-back pairs: the other jobs on the
    machine move both halves of a pair alike, so the median pair's cost is steadier."""
    pairs = []
    for _ in range(rounds):
        signed = session_run(port, ctx, n)[0]
        set_signing(name, False)
        unsigned = session_run(port, ctx, n)[0]
        set_signing(name, True)
        pairs.append((signed, unsigned))
        rs.wait_for("delivered", lambda: rs.queue_is_empty(name), 300, every=0.5)
    return pairs


def set_signing(name: str, on: bool) -> None:
    value = f"unix:{postfix.OPENDKIM_SOCKET}" if on else ""
    rs.docker("exec", name, "postconf", "-c", "/etc/postfix", "-e", f"smtpd_milters={value}")
    rs.docker("exec", name, "postfix", "-c", "/etc/postfix", "reload")
    time.sleep(1.5)  # new smtpd processes take the setting; old ones finish their session


# Where the signing time goes: OpenDKIM with one part of its work taken away, each
# against the full signer in the same container (--breakdown).
VARIANTS = {
    "no From-policy Lua scripts": r"/^\(Setup\|Final\)PolicyScript /d",
    "no key-path safety check": r"s/^RequireSafeKeys yes/RequireSafeKeys no/",
}


def opendkim_cpu_s(name: str) -> float:
    """CPU seconds OpenDKIM (all its threads) has used: utime + stime from /proc. Less
    moved by the other jobs on the machine than the throughput."""
    pid = "$(cat /run/opendkim/opendkim.pid)"
    stat = rs.docker("exec", name, "sh", "-c", f"cat /proc/{pid}/stat")
    fields = stat.rsplit(")", 1)[1].split()
    ticks = rs.docker("exec", name, "getconf", "CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / int(ticks)


def signer_cpu_ms(name: str, port: int, ctx: ssl.SSLContext, n: int) -> float:
    """OpenDKIM's CPU per message over n messages in one session."""
    before = opendkim_cpu_s(name)
    session_run(port, ctx, n)
    return 1000 * (opendkim_cpu_s(name) - before) / n


def restart_opendkim(name: str) -> None:
    rs.docker("exec", name, "s6-svc", "-r", "/run/service/opendkim")
    time.sleep(1)

    def answers() -> bool:
        probe = ["relay-milter-probe", postfix.OPENDKIM_SOCKET, "1"]
        return rs.docker("exec", name, *probe, check=False) == "milter answers"

    rs.wait_for("opendkim answers", answers, 60, every=0.2)


def breakdown(name: str, port: int, ctx: ssl.SSLContext, n: int) -> None:
    conf = "/etc/opendkim/opendkim.conf"
    rs.docker("exec", name, "cp", conf, f"{conf}.orig")
    print(f"--- breakdown: OpenDKIM's CPU per message, {n} messages per run")
    for label, sed in VARIANTS.items():
        rs.docker("exec", name, "sh", "-c", f"sed -e '{sed}' {conf}.orig > {conf}")
        restart_opendkim(name)
        variant = signer_cpu_ms(name, port, ctx, n)
        rs.docker("exec", name, "cp", f"{conf}.orig", conf)
        restart_opendkim(name)
        full = signer_cpu_ms(name, port, ctx, n)
        print(f"{label:<28} {variant:.2f} ms vs {full:.2f} ms in full: {full - variant:+.2f} ms")
        rs.wait_for("delivered", lambda: rs.queue_is_empty(name), 300, every=0.5)


def rsa_sign_ms(bits: int) -> float:
    """One RSA signature by `openssl speed` on this machine, between the relay runs (the
    image has no openssl tool; its libcrypto is the same OpenSSL 3.0 series)."""
    proc = rs.run("openssl", "speed", "-seconds", "3", f"rsa{bits}", timeout=120)
    out = proc.stdout.decode()
    m = re.search(rf"^rsa\s+{bits}\s+bits\s+([\d.]+)s", out, re.M)
    assert m, out
    return 1000 * float(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=300)
    ap.add_argument("--whole", type=int, default=50, help="whole submissions per mode")
    ap.add_argument("--bits", type=int, nargs="+", default=[2048, 3072])
    ap.add_argument("--rounds", type=int, default=3, help="alternating signed/unsigned pairs")
    ap.add_argument("--breakdown", action="store_true", help="also time OpenDKIM variants")
    opts = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    rs.build_image(IMAGE)
    size = int(rs.docker("image", "inspect", "-f", "{{.Size}}", IMAGE))
    base = int(rs.docker("image", "inspect", "-f", "{{.Size}}", BASE))
    net = rs.TestNetwork.create(f"{NAME}-net", "172.31.253.0/24", "fd00:d6b1:be7c::/64")
    sink = rs.Sink(net.v4_gateway, 2530)
    sink.start()
    ca = rs.CertbotDir(tmp / "letsencrypt")
    ca.issue(rs.RELAY_HOST)
    ctx = ca.client_context()
    ctx.check_hostname = False
    settings = postfix.PostfixSettings(
        domain=rs.DOMAIN,
        relay_host=rs.RELAY_HOST,
        dkim_selector=rs.SELECTOR,
        users=(postfix.SmtpUser("bench"),),
        nexthop=f"{net.v4_gateway}:2530",
        rate_limits=postfix.RateLimits(0, 100000, 100, 100000),
    )
    results: dict[int, tuple[Run, Run, float, float, list[tuple[float, float]]]] = {}
    spec: rs.RelaySpec | None = None
    try:
        for i, bits in enumerate(opts.bits):
            spec = rs.RelaySpec(
                name=NAME,
                image=IMAGE,
                network=net,
                cert_root=ca.root,
                volume=f"{NAME}-queue",
                settings=settings,
                passwords={"bench": PASSWORD},
                dkim_keys={rs.SELECTOR: rs.generate_private_key_pem(bits)},
                port_587=20587,
            )
            rs.start_relay(spec, tmp)
            rs.wait_healthy(NAME)
            if i == 0:
                time.sleep(10)  # settle: idle means no session, no queue run
                idle = mem_mib(NAME)
                t0 = time.monotonic()
                rs.docker("stop", "-t", "30", NAME)
                t_stop = time.monotonic() - t0
                t0 = time.monotonic()
                rs.docker("start", NAME)
                rs.wait_for("banner", lambda: banner_ready(20587), 60, every=0.02)
                t_banner = time.monotonic() - t0
                rs.wait_for("healthy", lambda: rs.health(NAME) == "healthy", 60, every=0.05)
                t_healthy = time.monotonic() - t0
            cpu0 = opendkim_cpu_s(NAME)
            signed = measure(NAME, spec.port_587, ctx, opts.messages, opts.whole)
            cpu = 1000 * (opendkim_cpu_s(NAME) - cpu0) / (opts.messages + 5 + opts.whole)
            set_signing(NAME, False)
            unsigned = measure(NAME, spec.port_587, ctx, opts.messages, opts.whole)
            set_signing(NAME, True)
            pairs = alternating(NAME, spec.port_587, ctx, opts.messages, opts.rounds)
            results[bits] = (signed, unsigned, rsa_sign_ms(bits), cpu, pairs)
            if opts.breakdown and i == 0:
                breakdown(NAME, spec.port_587, ctx, opts.messages)
    finally:
        rs.docker("rm", "-f", NAME, check=False)
        if spec is not None:
            rs.docker("volume", "rm", "-f", spec.volume, check=False)
        sink.stop()
        net.remove()
    engine = rs.docker("version", "-f", "{{.Server.Version}}")
    ossl = rs.run("openssl", "version").stdout.decode().split("(")[0].strip()
    print(f"docker engine            {engine}")
    print(
        f"image size               {size / 1e6:.1f} MB, {(size - base) / 1e6:.1f} MB over "
        f"{BASE} ({base / 1e6:.1f} MB; aim: at most 50 MB over)"
    )
    print(f"idle memory              {idle:.1f} MiB")
    print(f"docker start -> banner   {t_banner:.2f} s")
    print(f"docker start -> healthy  {t_healthy:.2f} s (health check interval 2 s)")
    print(f"docker stop              {t_stop:.2f} s")
    for bits, (signed, unsigned, rsa_ms, cpu_ms, pairs) in results.items():
        costs = sorted(1000 * (1 / sg - 1 / un) for sg, un in pairs)
        cost_ms = statistics.median(costs)
        spread = ", ".join(f"{c:.2f}" for c in costs)
        print(f"--- RSA-{bits} key, {opts.messages} messages over one TLS session")
        rates = ", ".join(f"{sg:.0f}/{un:.0f}" for sg, un in pairs)
        print(f"signed                   {signed.rate:.1f} msg/s")
        print(f"unsigned                 {unsigned.rate:.1f} msg/s")
        print(f"alternating pairs        {rates} msg/s signed/unsigned")
        print(f"signing cost             {cost_ms:.2f} ms per message (median of {spread})")
        print(f"openssl speed rsa{bits}  {rsa_ms:.3f} ms per signature ({ossl})")
        print(f"ratio                    {cost_ms / rsa_ms:.1f}x one RSA signature (aim: <= 2x)")
        print(
            f"OpenDKIM CPU             {cpu_ms:.2f} ms per message = {cpu_ms / rsa_ms:.1f}x one "
            "RSA signature (its own threads; less moved by other jobs)"
        )
        for label, run in (("signed", signed), ("unsigned", unsigned)):
            print(
                f"{label:<9}latency        one message p50 {pct(run.latencies, 0.5):.2f} ms, "
                f"p99 {pct(run.latencies, 0.99):.2f} ms; whole submission ({len(run.whole)}) "
                f"p50 {pct(run.whole, 0.5):.1f} ms, p99 {pct(run.whole, 0.99):.1f} ms"
            )
    print(f"sink received            {sink.count()} messages")


if __name__ == "__main__":
    main()
