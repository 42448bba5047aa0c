"""Running the real Pulumi engine in tests (no mocks), shared by the engine test modules.

* the CLI and plugins from scripts/pulumi-toolchain.sh (``$DKIM_RELAY_CACHE/bin``);
* a file backend and a random passphrase in a 0600 file (PULUMI_CONFIG_PASSPHRASE_FILE,
  never the passphrase itself in the environment) in the test's temporary folder;
* on the repo's own project (``Engine(tmp)``): each stack's config file in ``tmp``
  (``--config-file``), the passphrase salt moved there from the repo right after
  ``pulumi stack init``, so no ``Pulumi.<stack>.yaml`` is left in the repo;
* on a tiny program (``write_project`` + ``Engine(tmp, project=...)``): a temporary
  project whose ``__main__.py`` has the repo on ``sys.path``; its stack config files stay
  in that project.

And what the engine tests check a deployed relay with: a message submitted with the
stack's credentials (``submit``) and its copy in the sink checked by dkimpy against the
stack's ``dkimDnsValue`` (``wait_signed``, ``send_and_verify``), the relay's queue
(``queue``, ``flush``), and the SMTP greeting of a published port (``greeting``,
``GreetingProbe`` for downtime).
"""

from __future__ import annotations

import json
import os
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from types import TracebackType
from typing import Any

import dkim
import yaml

from tests.common import docker, free_port

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("DKIM_RELAY_CACHE", Path.home() / ".cache" / "dkim-relay"))
BIN = CACHE / "bin"
PULUMI = BIN / "pulumi"
NAMESPACE = "dkim-relay"


def local_stack_config(name: str, certs: Path, subnet: int) -> dict[str, Any]:
    """Config of a local-engine stack named `name` (also its container's name), with
    the certificate in `certs` and relay networks of its own (`subnet`: 0-255)."""
    return {
        "domain": "engine.test",
        "relayHost": "smtp.engine.test",
        "vpsIpv4": "127.0.0.1",
        "vpsIpv6": "::1",
        "deployTarget": "local",
        "tlsCertDir": str(certs),
        "dkimSelector": "one",
        "smtpPort": free_port(),
        "relayContainerName": name,
        "relayIpv4Subnet": f"172.30.{subnet}.0/24",
        "relayIpv6Subnet": f"fd00:d6b1:{subnet:x}::/64",
    }


def send_and_verify(outputs: dict[str, Any], certs: Path, sink_dir: Path) -> str:
    """One message through the relay with the stack's credentials, its copy in the sink
    checked by dkimpy against the dkimDnsValue output (scripts/send_test_mail.py)."""
    res = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "send_test_mail.py"),
            "--cafile",
            str(certs / "ca.pem"),
            "--sink-dir",
            str(sink_dir),
        ],
        input=json.dumps(outputs),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "DKIM signature: PASS" in res.stdout
    assert outputs["smtpPassword"] not in res.stdout + res.stderr
    return res.stdout


class _SmtpsByAddress(smtplib.SMTP_SSL):
    """Implicit TLS to an address, the certificate checked against `server_name`."""

    def __init__(self, server_name: str, **kw: Any) -> None:
        self.server_name = server_name
        super().__init__(**kw)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.create_connection((host, port), timeout)
        return self.context.wrap_socket(sock, server_hostname=self.server_name)


def submit(
    outputs: dict[str, Any],
    certs: Path,
    subject: str,
    *,
    port: int | None = None,
    implicit_tls: bool = False,
) -> str:
    """Submit one message over loopback with the stack's smtpUsername/smtpPassword (STARTTLS
    on smtpPort, or implicit TLS on `port`), the certificate checked against smtpServer
    with the CA in `certs`. Returns the token in its subject."""
    token = uuid.uuid4().hex
    msg = EmailMessage()
    msg["From"] = outputs["smtpUsername"]
    msg["To"] = "someone@example.net"
    msg["Subject"] = f"{subject} {token}"
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=outputs["domain"])
    msg.set_content(f"Sent through the relay by the engine tests ({subject}).\n")
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    port = int(outputs["smtpPort"]) if port is None else port
    smtp: smtplib.SMTP
    if implicit_tls:
        smtp = _SmtpsByAddress(outputs["smtpServer"], context=ctx, timeout=30)
        smtp.connect("127.0.0.1", port)
    else:
        smtp = smtplib.SMTP("127.0.0.1", port, timeout=30)
        # Connected by address; the certificate is checked against the relay's name.
        smtp._host = outputs["smtpServer"]  # type: ignore[attr-defined]
    with smtp:
        smtp.ehlo("engine-test")
        if not implicit_tls:
            smtp.starttls(context=ctx)
            smtp.ehlo("engine-test")
        smtp.login(outputs["smtpUsername"], outputs["smtpPassword"])
        smtp.send_message(msg)
    return token


def wait_signed(outputs: dict[str, Any], sink_dir: Path, token: str, timeout: float = 90) -> bytes:
    """The message with `token` as the sink kept it, its DKIM signature checked by dkimpy
    against the dkimDnsValue output (as scripts/send_test_mail.py checks it)."""
    record = f"{outputs['dkimSelector']}._domainkey.{outputs['domain']}".encode()

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return outputs["dkimDnsValue"].encode() if name.rstrip(b".") == record else None

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in sorted(sink_dir.glob("*.eml")):
            data = path.read_bytes()
            if token.encode() in data:
                assert b"DKIM-Signature:" in data, data[:2000]
                assert dkim.verify(data, dnsfunc=lookup), f"DKIM signature FAIL: {path}"
                return data
        time.sleep(0.3)
    raise AssertionError(f"no message with {token} reached {sink_dir} within {timeout:.0f} s")


def queue(container: str) -> list[dict[str, Any]]:
    """The relay's mail queue (``postqueue -j``), one dict per message."""
    out = docker("exec", container, "postqueue", "-c", "/etc/postfix", "-j")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def flush(container: str) -> None:
    """Deliver the deferred mail now (Postfix would retry after its backoff, 5 min)."""
    docker("exec", container, "postqueue", "-c", "/etc/postfix", "-f")


def greeting(host: str, port: int, timeout: float = 2.0) -> str:
    """The first line a server on `port` sends, "" when nothing answers (refused, closed
    by Docker's proxy with no container behind it, or silent)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            data = b""
            while b"\n" not in data:
                chunk = s.recv(512)
                if not chunk:
                    break
                data += chunk
            try:
                s.sendall(b"QUIT\r\n")
            except OSError:
                pass
    except OSError:
        return ""
    return data.split(b"\n", 1)[0].decode(errors="replace").strip()


class GreetingProbe:
    """Probes `port` every `every` seconds in a thread for the relay's SMTP greeting.

    Served: "220 <relay_host> ..." or, once the probe itself has used up the relay's
    connection rate limit for its address (30 a minute: three seconds of probing), Postfix's
    "421 4.7.0 <relay_host> Error: too many connections"; both come from the relay's smtpd,
    and any other client (its own address) is greeted with 220 then. Not served: refused,
    closed, silent or anything else. ``longest_gap`` is the longest time between two served
    probes."""

    def __init__(self, port: int, relay_host: str, host: str = "127.0.0.1", every: float = 0.1):
        self.port, self.relay_host, self.host, self.every = port, relay_host, host, every
        self.samples: list[tuple[float, str]] = []  # (monotonic time, first line)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def served(self, line: str) -> bool:
        return line.startswith(f"220 {self.relay_host} ") or (
            line.startswith("421 ") and f"{self.relay_host} Error: too many connections" in line
        )

    def _run(self) -> None:
        nxt = time.monotonic()
        while not self._stop.is_set():
            t = time.monotonic()
            self.samples.append((t, greeting(self.host, self.port, timeout=1.0)))
            nxt = max(nxt + self.every, time.monotonic())
            self._stop.wait(nxt - time.monotonic())

    def __enter__(self) -> GreetingProbe:
        self._thread.start()
        return self

    def stop_when_served(self, timeout: float = 120) -> None:
        """Stop at the first served probe from now (fail after `timeout`)."""
        since = time.monotonic()
        deadline = since + timeout
        while time.monotonic() < deadline:
            if any(t >= since and self.served(line) for t, line in self.samples[-20:]):
                break
            time.sleep(0.05)
        self._stop.set()
        self._thread.join(timeout=10)
        assert any(t >= since and self.served(line) for t, line in self.samples), (
            f"port {self.port} gave no SMTP greeting within {timeout} s"
        )

    def __exit__(
        self,
        kind: type[BaseException] | None,
        err: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def longest_gap(self) -> tuple[float, float, float]:
        """(seconds, from, to): the longest time between two consecutive served probes, or
        from the first probe to the first served one (from/to: seconds after the first
        probe)."""
        assert self.samples, "no probe ran"
        t0 = self.samples[0][0]
        served = [t for t, line in self.samples if self.served(line)]
        assert served, "the port never gave an SMTP greeting"
        best = (served[0] - t0, 0.0, served[0] - t0)
        for a, b in zip(served, served[1:], strict=False):
            if b - a > best[0]:
                best = (b - a, a - t0, b - t0)
        return best

    def counts(self) -> dict[str, int]:
        out = {"220": 0, "421": 0, "none": 0}
        for _, line in self.samples:
            key = line[:3] if self.served(line) else "none"
            out[key] += 1
        return out


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by its owner only (mode 0600 from the start)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def engine_env(
    state_dir: Path, passphrase_file: Path, *, ambient_plugins: bool = False, **extra: str
) -> dict[str, str]:
    """The environment without any PULUMI_ variable of the caller's, plus ours and `extra`.

    ``ambient_plugins=False`` sets PULUMI_IGNORE_AMBIENT_PLUGINS (plugins come from
    PULUMI_HOME only, not from PATH).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULUMI_")}
    env.update(
        PATH=os.pathsep.join([str(BIN), str(Path(sys.executable).parent), env["PATH"]]),
        PULUMI_HOME=str(CACHE / "pulumi-home"),
        PULUMI_BACKEND_URL=f"file://{state_dir}",
        PULUMI_CONFIG_PASSPHRASE_FILE=str(passphrase_file),
        PULUMI_SKIP_UPDATE_CHECK="1",
        PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION="true",
    )
    if not ambient_plugins:
        env["PULUMI_IGNORE_AMBIENT_PLUGINS"] = "true"
    env.update(extra)
    return env


def write_project(d: Path, name: str, program: str) -> Path:
    """A Pulumi project in `d` running `program` with this repo's venv, repo on sys.path."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "Pulumi.yaml").write_text(
        f"name: {name}\n"
        "runtime:\n"
        "  name: python\n"
        "  options:\n"
        "    toolchain: pip\n"
        f"    virtualenv: {Path(sys.executable).parent.parent}\n"
        # As the project's own Pulumi.yaml: every preview and up refreshes first.
        "options:\n"
        "  refresh: always\n"
    )
    header = f"import sys\nsys.path.insert(0, {str(REPO)!r})\n"
    (d / "__main__.py").write_text(header + program)
    return d


class Engine:
    """`pulumi` on one project with a private file backend and passphrase file in `tmp`."""

    def __init__(
        self,
        tmp: Path,
        project: Path = REPO,
        *,
        ambient_plugins: bool | None = None,
        timeout: int = 900,
    ) -> None:
        assert PULUMI.is_file(), f"{PULUMI} missing: run scripts/pulumi-toolchain.sh"
        self.tmp, self.project, self.timeout = tmp, project, timeout
        (tmp / "state").mkdir(exist_ok=True)
        passphrase = tmp / "passphrase"
        write_private(passphrase, uuid.uuid4().hex)
        if ambient_plugins is None:  # the repo's project as `scripts/pulumi-env.sh` runs it
            ambient_plugins = project == REPO
        self.env = engine_env(tmp / "state", passphrase, ambient_plugins=ambient_plugins)

    def run(
        self,
        *args: str,
        input: str | None = None,
        timeout: int | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(PULUMI), *args, "--non-interactive"],
            cwd=self.project,
            env={**self.env, **(env or {})},
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            text=True,
            timeout=timeout or self.timeout,
        )

    def stack(
        self, name: str, config: dict[str, Any] | None = None, env: dict[str, str] | None = None
    ) -> Stack:
        """`pulumi stack init` with the passphrase provider.

        With `config` (dkim-relay keys without the namespace): the stack's config file is
        ``tmp/Pulumi.<name>.yaml``, holding the salt `stack init` wrote into the project
        (removed there) and `config`. Without: the project's own file is used (only for
        a temporary project; never leaves a file in the repo).
        """
        res = self.run("stack", "init", name, "--secrets-provider", "passphrase", env=env)
        assert res.returncode == 0, res.stdout + res.stderr
        project_file = self.project / f"Pulumi.{name}.yaml"
        if config is None:
            if self.project == REPO:
                project_file.unlink(missing_ok=True)
                raise AssertionError("a stack of the repo's project needs a config file")
            return Stack(self, name, project_file, env=env, own_file=False)
        # `stack init` takes no --config-file: move the salt it wrote to our own file.
        try:
            salt = yaml.safe_load(project_file.read_text())["encryptionsalt"]
        finally:
            project_file.unlink(missing_ok=True)
        stack = Stack(self, name, self.tmp / f"Pulumi.{name}.yaml", env=env, salt=salt)
        stack.write_config(config)
        return stack


class Stack:
    def __init__(
        self,
        engine: Engine,
        name: str,
        config_file: Path,
        *,
        env: dict[str, str] | None = None,
        salt: str = "",
        own_file: bool = True,
    ) -> None:
        """`own_file`: `config_file` is passed with --config-file (else it is the project's
        own Pulumi.<name>.yaml, which pulumi finds by itself)."""
        self.engine, self.name, self.config_file = engine, name, config_file
        self.env, self.salt, self.own_file = env, salt, own_file
        self.config: dict[str, Any] = {}

    def write_config(self, config: dict[str, Any]) -> None:
        """Plain values from `config`; encrypted ones already in the file are kept."""
        assert self.own_file, "the stack uses its project's config file"
        path = self.config_file
        old = yaml.safe_load(path.read_text()) if path.exists() else {}
        kept = {k: v for k, v in (old or {}).get("config", {}).items() if isinstance(v, dict)}
        # A key with a namespace (a provider's, e.g. hcloud:endpoint) is kept as it is.
        plain = {k if ":" in k else f"{NAMESPACE}:{k}": v for k, v in config.items()}
        doc = {"encryptionsalt": self.salt, "config": {**kept, **plain}}
        path.write_text(yaml.safe_dump(doc))
        self.config = dict(config)

    def run(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        # `pulumi stack ...` reads no config and takes no --config-file.
        extra = []
        if self.own_file and args[0] != "stack":
            extra = ["--config-file", str(self.config_file)]
        return self.engine.run(*args, "--stack", self.name, *extra, input=input, env=self.env)

    def run_lines(self, *args: str) -> tuple[int, list[tuple[float, str]]]:
        """`pulumi ARGS` (stderr merged into stdout): its exit code and each output line
        with the time.monotonic() at which it came, to see when each step ran."""
        extra = ["--config-file", str(self.config_file)] if self.own_file else []
        cmd = [str(PULUMI), *args, "--stack", self.name, *extra, "--non-interactive"]
        lines: list[tuple[float, str]] = []
        with subprocess.Popen(
            cmd,
            cwd=self.engine.project,
            env={**self.engine.env, **(self.env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as proc:
            assert proc.stdout is not None
            deadline = time.monotonic() + self.engine.timeout
            for line in proc.stdout:
                lines.append((time.monotonic(), line.rstrip("\n")))
                if time.monotonic() > deadline:
                    proc.kill()
                    raise AssertionError(f"pulumi {' '.join(args)} ran over its time")
            code = proc.wait(timeout=60)
        return code, lines

    def ok(self, *args: str) -> str:
        res = self.run(*args)
        assert res.returncode == 0, f"pulumi {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"
        return res.stdout

    def set_secret(self, key: str, value: str) -> None:
        """As a user would: pulumi config set --secret KEY < file (never on a command line)."""
        res = self.run("config", "set", "--secret", key, input=value)
        assert res.returncode == 0, res.stderr

    def outputs(self) -> dict[str, Any]:
        return dict(json.loads(self.ok("stack", "output", "--json", "--show-secrets")))

    def preview_steps(self) -> list[dict[str, Any]]:
        """`pulumi preview --json`'s steps; with ``refresh: always`` (the project's and
        write_project's) they include a "refresh" step for each resource read back."""
        return list(json.loads(self.ok("preview", "--json")).get("steps", []))


def local_stack_images(name: str) -> list[str]:
    """The images a local stack whose relay is ``name`` builds: the relay's and the sink's."""
    from components.relay import read_tree
    from pure import relay_container as rc

    return [
        rc.image_name(name, read_tree(rc.RELAY_DIR)),
        rc.image_name(f"{name}-sink", read_tree(rc.SINK_DIR)),
    ]


def remove_local_stack(name: str) -> None:
    """What a local stack whose relay is ``name`` left on the machine's engine, removed."""
    from tests.common import docker

    for c in (name, f"{name}-sink"):
        docker("rm", "-f", c, check=False)
    docker("network", "rm", f"{name}-net", check=False)
    docker("volume", "rm", f"{name}-queue", check=False)
    for image in local_stack_images(name):
        docker("image", "rm", image, check=False)
