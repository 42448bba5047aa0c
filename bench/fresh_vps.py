"""Fresh-VPS benchmark: prints figures, asserts only that the mail arrived signed.

    venv/bin/python bench/fresh_vps.py   # as root, after scripts/pulumi-toolchain.sh

Deploys the repo's project (VPS target, ``dnsProvider: manual``) on a bare namespace VPS
(tests/vps_support.py: a network namespace with sshd, ufw, certbot, pebble as Let's
Encrypt; nothing of the stack in it) from its first ``pulumi up`` to one message
delivered to a sink and its DKIM signature checked by dkimpy, and prints the total time
and the time of each phase. It talks only to loopback and the namespace it makes.

Two stand-ins, because the namespace shares the machine's binaries and reaches no
package mirror (a real VPS does both during the first ``up``):

* Docker: ``dockerd`` is already "installed" (the machine's binary), but the namespace
  has no systemd for the docker step to restart it with. So the engine is the one of
  tests/vps_docker_support.py: RelayHost's own docker step script merges daemon.json,
  then a dockerd starts in the namespace; timed as the phase "docker engine";
* the image: built on the machine's engine (from its build cache: a build from Debian's
  mirrors is not measured here) and loaded into the VPS under the name the stack gives
  it, so the stack's build on the VPS takes every step from it; timed as "image
  build + load". The VPS resolves through a server answering NXDOMAIN at once (a VPS
  has working DNS; without one Postfix waits 10 s on each client's reverse lookup).

The ``pulumi up`` phases come from its progress lines as they arrive: the host steps
(preflight, firewall, docker, certificate, key files), the image build on the VPS, and
the relay (network, volume, container created = healthy, as it waits for health).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.common import free_port  # noqa: E402
from tests.engine_support import PULUMI, Engine  # noqa: E402
from tests.relay_support import Sink  # noqa: E402
from tests.vps_docker_support import (  # noqa: E402
    preload_relay_image,
    send_signed,
    vps_docker,
    vps_stack_config,
)
from tests.vps_support import local_vps, port25_listener, ssh_agent  # noqa: E402

STEP_RE = re.compile(r"^\s*[+~-]\s+\S+ (\S+) (creating|created|updating|updated)\b")


def timed_up(
    engine: Engine, stack: str, config_file: Path, env: dict[str, str]
) -> tuple[float, dict[str, tuple[float, float]], str]:
    """``pulumi up``: its duration and, per resource, (start, end) seconds after it began."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [
            str(PULUMI),
            "up",
            "--yes",
            "--skip-preview",
            "--non-interactive",
            "--stack",
            stack,
            "--config-file",
            str(config_file),
        ],
        cwd=engine.project,
        env={**engine.env, **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    spans: dict[str, list[float]] = defaultdict(list)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        m = STEP_RE.match(line)
        if m:
            spans[m.group(1)].append(time.monotonic() - t0)
    rc = proc.wait()
    took = time.monotonic() - t0
    text = "".join(lines)
    if rc != 0:
        raise SystemExit(f"pulumi up failed (rc={rc}):\n{text[-6000:]}")
    return took, {name: (min(ts), max(ts)) for name, ts in spans.items()}, text


def span(spans: dict[str, tuple[float, float]], names: list[str]) -> tuple[float, float]:
    got = [spans[n] for n in names if n in spans]
    if not got:
        return (0.0, 0.0)
    return (min(s for s, _ in got), max(e for _, e in got))


def main() -> int:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    ).parse_args()
    container = f"dkr-bench-{uuid.uuid4().hex[:6]}"
    phases: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="dkr-fresh-vps-") as tmp, local_vps() as vps:
        sink = Sink(vps.host_ip4, free_port(vps.host_ip4))
        sink.start()
        try:
            with port25_listener(vps.host_ip4, vps.host_ip6), ssh_agent(vps.private_key) as agent:
                bare = vps.ssh(
                    "command -v ufw certbot; ls /etc/dkim-relay /var/lib/dkim-relay "
                    "2>&1; test -S /var/run/docker.sock && echo docker || echo no-docker"
                )
                print(f"bare VPS:\n{bare.stdout}")
                t_start = time.monotonic()
                with vps_docker(vps, fast_dns=True) as d:
                    phases.append(
                        ("docker engine (stand-in for the install)", time.monotonic() - t_start)
                    )
                    t = time.monotonic()
                    preload_relay_image(d, container)
                    phases.append(("image build + load (stand-in)", time.monotonic() - t))

                    engine = Engine(Path(tmp))
                    stack = engine.stack(
                        f"bench{container[-6:]}", vps_stack_config(vps, sink, container), env=agent
                    )
                    stack.set_secret("sshPrivateKey", vps.private_key)
                    took, spans, text = timed_up(engine, stack.name, stack.config_file, agent)
                    host = span(spans, [n for n in spans if n.startswith("relay-host-")])
                    image = span(spans, ["relay-image"])
                    relay = span(
                        spans, ["relay-deploy", "relay-network", "relay-queue", "relay-container"]
                    )
                    phases.append(("pulumi up", took))
                    t = time.monotonic()
                    outputs = stack.outputs()
                    send_signed(outputs, vps, sink, container)
                    phases.append(
                        ("mail: submitted, delivered, dkimpy verified", time.monotonic() - t)
                    )
                    total = time.monotonic() - t_start
                    print(text[text.find("Resources:") :][:400])
                    print("\nfresh VPS, first `pulumi up` to one signed message delivered:")
                    for name, secs in phases:
                        print(f"  {name:<48} {secs:6.1f} s")
                    print("  within `pulumi up` (seconds after it began):")
                    for name, (a, b) in (
                        ("program start, plugins (before the first step)", (0.0, host[0])),
                        ("host steps (preflight..certificate, key files)", host),
                        ("image build on the VPS (all steps cached)", image),
                        ("relay: network, volume, container healthy", relay),
                        ("outputs, port 25 check, state (the rest)", (relay[1], took)),
                    ):
                        print(f"    {name:<48} {a:5.1f} -> {b:5.1f}  ({b - a:5.1f} s)")
                    print(f"  TOTAL {total:.1f} s ({total / 60:.1f} min)")
        finally:
            sink.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
