"""RelayHost: the VPS prepared over SSH with pulumi-command remote commands.

Steps (each a ``remote.Command`` made by ``components/target.py`` from a script of
``pure/host_scripts.py``), in this order over one SSH connection::

    preflight ──> firewall ──> docker ──> certificate
        └───────> secrets

* the outbound port 25 check is no resource (it would show as a change on every
  preview): during ``pulumi up`` the program connects from the VPS, over SSH, to port
  25 of ``port25_probe`` over IPv4 (and IPv6 with ``vps_ipv6``) and reports per family
  in ``outbound_smtp``; a blocked port, or an IPv6 source address other than
  ``vps_ipv6``, is a warning, never a failed deployment;

* ``firewall`` has a ``delete`` that removes only the rules it added (never SSH);
* ``certificate`` has no ``delete``: certificates survive ``pulumi destroy``;
* ``secrets`` (``target.key_files``, the same step the local engine's relay uses)
  gets the key material on stdin (a secret Output), logs nothing, and its
  ``delete`` removes the secrets directory;
* the firewall and docker steps run before the certificate so apt never runs
  twice at once.

Host-key pinning: pulumi-command 1.2.1's ``remote.ConnectionArgs`` has
``host_key`` ("The expected host key to verify the server's identity. If not
provided, the host key will be ignored."), so ``sshHostKey`` is passed there and
the provider refuses a different key before anything is sent. The value is one
OpenSSH public key line, e.g. the content of ``/etc/ssh/ssh_host_ed25519_key.pub``
(``ssh-ed25519 AAAA...``). A check run *inside* an already open connection
would be meaningless (a man in the middle answers it too), so there is none.
Without ``sshHostKey`` the provider accepts any host key (trust on first use is
not available in pulumi-command): set it in production.

Before the first command, :func:`preflight_check` (during ``pulumi up`` only,
not preview) connects with the system ``ssh`` client using the same settings and
turns the usual failures into errors naming the config key to fix
(``sshHost``/``sshPort``, ``sshPrivateKey``, ``sshHostKey``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi_command import local, remote

from components.target import Target, key_files
from pure import host_scripts as hs
from pure.config import DEFAULT_ACME_SERVER, DEFAULT_CONTAINER_NAME, DEFAULT_PORT25_PROBE


class HostPreflightError(Exception):
    """The VPS cannot be used with the given SSH settings; names the config key."""


# --- SSH settings shared by the component, the preflight and the tests ---------
@dataclass(frozen=True)
class SshTarget:
    host: str
    port: int = 22
    user: str = "root"
    host_key: str | None = None  # one OpenSSH public key line, pinned


_HOSTKEY_ALGOS = {
    "ssh-ed25519": "ssh-ed25519",
    "ssh-rsa": "rsa-sha2-512,rsa-sha2-256,ssh-rsa",
    "ecdsa-sha2-nistp256": "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384": "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521": "ecdsa-sha2-nistp521",
}


def parse_host_key(line: str) -> tuple[str, str]:
    """(key type, base64 blob) of an OpenSSH public key line, or ValueError."""
    parts = line.strip().split()
    if len(parts) < 2 or parts[0] not in _HOSTKEY_ALGOS:
        raise ValueError(
            "sshHostKey must be one OpenSSH public key line such as the content of "
            "/etc/ssh/ssh_host_ed25519_key.pub ('ssh-ed25519 AAAA...')"
        )
    return parts[0], parts[1]


@contextmanager
def ssh_client_files(target: SshTarget, private_key: str) -> Iterator[list[str]]:
    """Yields the ``ssh`` argv prefix (ending with ``user@host``) for ``target``.

    The private key goes to a 0600 file in a private temporary directory that is
    removed afterwards; it never appears on a command line.
    """
    d = tempfile.mkdtemp(prefix="dkim-relay-ssh-")
    try:
        os.chmod(d, 0o700)
        key_path = os.path.join(d, "id")
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(private_key if private_key.endswith("\n") else private_key + "\n")
        opts = [
            "-F",
            "none",
            "-i",
            key_path,
            "-p",
            str(target.port),
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "PasswordAuthentication=no",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ServerAliveInterval=15",
        ]
        if target.host_key:
            ktype, blob = parse_host_key(target.host_key)
            kh = os.path.join(d, "known_hosts")
            hostspec = target.host if target.port == 22 else f"[{target.host}]:{target.port}"
            with open(kh, "w") as f:
                f.write(f"{hostspec} {ktype} {blob}\n")
            opts += [
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                f"UserKnownHostsFile={kh}",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                f"HostKeyAlgorithms={_HOSTKEY_ALGOS[ktype]}",
            ]
        else:
            # Same as pulumi-command without hostKey: the host key is not checked.
            opts += [
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ]
        yield ["ssh", *opts, f"{target.user}@{target.host}"]
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run_over_ssh(
    target: SshTarget,
    private_key: str,
    command: str,
    stdin: str | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Runs ``command`` (e.g. ``pure.shell.command_line(...)``) on the host."""
    with ssh_client_files(target, private_key) as argv:
        return subprocess.run(
            [*argv, command],
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def public_key_line(private_key: str) -> str | None:
    """``<type> <base64>`` of an OpenSSH or PEM private key, or None if it cannot be read."""
    from cryptography.hazmat.primitives import serialization

    data = private_key.encode()
    for load in (serialization.load_ssh_private_key, serialization.load_pem_private_key):
        try:
            key = load(data, password=None)
        except (ValueError, TypeError):
            continue
        line = key.public_key().public_bytes(  # type: ignore[union-attr]
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        return " ".join(line.decode().split()[:2])
    return None


def agent_problem(private_key: str, env: Mapping[str, str] | None = None) -> str | None:
    """Why the Docker provider's ``ssh`` could not log in with ``sshPrivateKey``: it takes
    the key from the user's ssh-agent (no key file, no key on a command line). None: fine."""
    env = dict(os.environ if env is None else env)
    fix = (
        "the Docker provider reaches the VPS with ssh and takes the key of sshPrivateKey "
        'from your ssh-agent. Fix: eval "$(ssh-agent -s)" && pulumi config get '
        "sshPrivateKey | ssh-add -"
    )
    if not env.get("SSH_AUTH_SOCK"):
        return f"no ssh-agent (SSH_AUTH_SOCK is not set): {fix}"
    want = public_key_line(private_key)
    if want is None or shutil.which("ssh-add") is None:
        return None  # the preflight check names a key it cannot read
    listed = subprocess.run(
        ["ssh-add", "-L"], capture_output=True, text=True, env=env, timeout=20, check=False
    )
    if want not in listed.stdout:
        return f"the ssh-agent at SSH_AUTH_SOCK does not hold the key of sshPrivateKey: {fix}"
    return None


def wait_for_boot(target: SshTarget, timeout: float, interval: float = 3) -> None:
    """Waits until a server the stack just created answers on its SSH port (its first
    boot); raises HostPreflightError naming serverBootTimeout when it never does."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((target.host, target.port), timeout=interval) as s:
                s.settimeout(interval)
                if s.recv(4).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            raise HostPreflightError(
                f"the server at {target.host} did not answer SSH on port {target.port} within "
                f"{timeout:g} s (serverBootTimeout) after it was created: it may still be "
                "booting, or failed to boot (see its console in the Hetzner Cloud Console). "
                "Run pulumi up again to go on, or pulumi config set serverBootTimeout 600"
            )
        time.sleep(interval)


def preflight_check(target: SshTarget, private_key: str, timeout: float = 10) -> str:
    """Connects once and raises HostPreflightError naming the config key at fault.

    Returns the remote ``uname -sr`` on success.
    """
    where = f"{target.host}:{target.port}"
    if target.host_key:
        try:
            parse_host_key(target.host_key)
        except ValueError as e:
            raise HostPreflightError(str(e)) from None
    if "PRIVATE KEY-----" not in private_key:
        raise HostPreflightError(
            "sshPrivateKey does not look like a private key (expected an OpenSSH/PEM "
            "'-----BEGIN ... PRIVATE KEY-----' block)"
        )
    try:
        with socket.create_connection((target.host, target.port), timeout=timeout):
            pass
    except OSError as e:
        raise HostPreflightError(
            f"cannot reach the VPS at sshHost={target.host!r} sshPort={target.port}: {e}; "
            "check sshHost/sshPort (and that the firewall lets SSH in)"
        ) from None
    if shutil.which("ssh") is None:
        return "skipped: no ssh client"
    res = run_over_ssh(target, private_key, "uname -sr", timeout=timeout + 20)
    if res.returncode == 0:
        return res.stdout.strip()
    err = res.stderr
    if "Host key verification failed" in err or "IDENTIFICATION HAS CHANGED" in err:
        raise HostPreflightError(
            f"the host key of {where} does not match sshHostKey; if the VPS was "
            "reinstalled, update sshHostKey from its /etc/ssh/ssh_host_*_key.pub, "
            "otherwise someone may be intercepting the connection"
        )
    if "Permission denied" in err or "Too many authentication failures" in err:
        raise HostPreflightError(
            f"{where} refused sshPrivateKey for sshUser={target.user!r}; check that "
            "its public key is in that user's authorized_keys"
        )
    if "Load key" in err or "invalid format" in err or "libcrypto" in err:
        raise HostPreflightError("sshPrivateKey could not be loaded (invalid format)")
    if "timed out" in err or "Connection refused" in err or "No route" in err:
        raise HostPreflightError(
            f"cannot reach the VPS at sshHost={target.host!r} sshPort={target.port}: {err.strip()}"
        )
    raise HostPreflightError(
        f"SSH to sshHost={target.host!r} sshPort={target.port} failed "
        f"(exit {res.returncode}): {err.strip()[-300:]}"
    )


# --- the component ---------------------------------------------------------------
@dataclass
class RelayHostArgs:
    """Plain values (and Outputs for secrets); filled from config in __main__.

    Config keys: ssh_host=sshHost (default vpsIpv4), ssh_user=sshUser,
    ssh_port=sshPort, ssh_private_key=sshPrivateKey (secret),
    ssh_host_key=sshHostKey, acme_email=acmeEmail, acme_server=acmeServer,
    acme_extra_names=acmeExtraNames, acme_ca_bundle=acmeCaBundle,
    relay_host=relayHost, submissions465=submissions465, port25_probe=port25Probe,
    vps_ipv6=vpsIpv6.
    """

    ssh_host: pulumi.Input[str]
    ssh_private_key: pulumi.Input[str]  # secret
    relay_host: str
    acme_email: str
    ssh_user: str = "root"
    ssh_port: int = 22
    ssh_host_key: pulumi.Input[str] | None = None
    acme_server: str = DEFAULT_ACME_SERVER
    acme_extra_names: Sequence[str] = ()
    acme_ca_bundle: str | None = None  # path on the host; test CAs only
    submissions465: bool = False
    extra_ports: Sequence[int] = ()
    container_name: str = DEFAULT_CONTAINER_NAME
    # relative path under host_scripts.SECRETS_DIR -> content, i.e. what
    # pure.postfix.render_secrets returns (dkim/<sel>.private, smtp-users).
    # A secret Output; it reaches the host only on the secrets step's stdin.
    secret_files: pulumi.Input[Mapping[str, str]] | None = None
    docker_ipv6_cidr: str = hs.DEFAULT_DOCKER_IPV6_CIDR
    docker_restart_command: str = hs.DEFAULT_DOCKER_RESTART
    reload_command: str | None = None  # default: docker exec <container> relay-reload
    preflight: bool = True
    secret_file_mode: int = 0o600
    secret_owner: tuple[int, int] = (0, 0)
    port25_probe: str = DEFAULT_PORT25_PROBE
    vps_ipv6: pulumi.Input[str | None] = None  # also probe IPv6, and expect mail from it
    # A server the stack created: wait this long for its first SSH answer (0: no wait).
    boot_wait: float = 0
    # The cloud's metadata service (it serves the host key's private half): the relay's
    # containers are kept from it.
    metadata_address: str | None = None


class RelayHost(pulumi.ComponentResource):
    """Docker with IPv6, ufw, the certificate and the key material on the VPS."""

    docker_ready: pulumi.Output[str]
    cert_ready: pulumi.Output[str]
    cert_dir: pulumi.Output[str]
    secrets_dir: pulumi.Output[str]
    secrets_revision: pulumi.Output[str]  # changes each time the key files are written
    firewall_ports: pulumi.Output[list[str]]
    docker_host: pulumi.Output[str]
    # hs.parse_port25 of this `up`'s check (None in a preview)
    outbound_smtp: pulumi.Output[dict[str, dict[str, str]] | None]
    connection: remote.ConnectionArgs  # for the relay's commands: the same SSH settings
    target: Target  # the VPS over that connection (with sudo for a non-root sshUser)

    def __init__(
        self,
        name: str,
        args: RelayHostArgs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("dkimrelay:index:RelayHost", name, None, opts)
        if isinstance(args.ssh_host_key, str):
            parse_host_key(args.ssh_host_key)
        host_key = pulumi.Output.from_input(args.ssh_host_key)

        private_key = pulumi.Output.secret(args.ssh_private_key)
        connection = remote.ConnectionArgs(
            host=args.ssh_host,
            port=float(args.ssh_port),
            user=args.ssh_user,
            private_key=private_key,
            host_key=args.ssh_host_key,
            dial_error_limit=5,
            per_dial_timeout=15,
        )

        self.connection = connection
        self.target = target = Target(connection, sudo=args.ssh_user != "root")
        triggers: list[Any] = []
        if args.preflight:
            target_host = pulumi.Output.from_input(args.ssh_host)

            def _check(values: list[Any]) -> str:
                if pulumi.runtime.is_dry_run():
                    return "ok"
                host, key, pinned = values
                target = SshTarget(host, args.ssh_port, args.ssh_user, pinned)
                try:
                    if args.boot_wait:
                        wait_for_boot(target, args.boot_wait)
                    preflight_check(target, key)
                except HostPreflightError as err:  # the message says it all: no traceback
                    raise pulumi.RunError(str(err)) from None
                return "ok"

            # "ok" carries no secret; unsecret it so the trigger reads plainly.
            triggers.append(
                pulumi.Output.unsecret(
                    pulumi.Output.all(target_host, private_key, host_key).apply(_check)
                )
            )

        def child(extra: list[pulumi.Resource] | None = None, **kw: Any) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(parent=self, depends_on=extra or [], **kw)

        scripts = step_scripts(args)
        self.preflight_step = target.step(
            f"{name}-preflight", scripts["preflight"].create, child(), triggers=triggers
        )
        self.firewall_step = target.step(
            f"{name}-firewall",
            scripts["firewall"].create,
            # delete-then-create: a replacement must not remove the new rules.
            child([self.preflight_step], delete_before_replace=True),
            delete=scripts["firewall"].delete,
        )
        self.docker_step = target.step(
            f"{name}-docker", scripts["docker"].create, child([self.firewall_step])
        )
        # No delete: certificates survive `pulumi destroy`.
        self.certificate_step = target.step(
            f"{name}-certificate",
            scripts["certificate"].create,
            child([self.firewall_step, self.docker_step]),
        )
        self.metadata_step: local.Command | remote.Command | None = None
        if "metadata" in scripts:
            self.metadata_step = target.step(
                f"{name}-metadata",
                scripts["metadata"].create,
                child([self.firewall_step, self.docker_step]),
                delete=scripts["metadata"].delete,
            )
        self.secrets_step: local.Command | remote.Command | None = None
        generation: pulumi.Output[str] = pulumi.Output.from_input("none")
        if args.secret_files is not None:
            self.secrets_step, generation = key_files(
                target,
                f"{name}-secrets",
                args.secret_files,
                child([self.preflight_step]),
                hs.SECRETS_DIR,
                args.secret_file_mode,
                args.secret_owner,
            )
        # Not a resource: a resource that runs on every `up` would show as a change on
        # every preview. The probe runs from the program during `up` (not preview), over
        # SSH like the preflight check; the result describes the VPS now.
        probe_line = target.command_line(scripts["port25"].create)

        def probe(values: list[Any]) -> dict[str, dict[str, str]] | None:
            if pulumi.runtime.is_dry_run():
                return None
            host, key, pinned, vps_ipv6 = values
            res = run_over_ssh(
                SshTarget(host, args.ssh_port, args.ssh_user, pinned),
                key,
                probe_line,
                timeout=hs.PORT25_TIMEOUT * 2 + 40,
            )
            results = hs.parse_port25(res.stdout)
            if res.returncode != 0 or not results:
                pulumi.log.warn(
                    f"the outbound port 25 check could not run on the VPS (exit "
                    f"{res.returncode}): {res.stderr.strip()[-300:]}",
                    resource=self,
                )
            for warning in hs.port25_warnings(results, vps_ipv6):
                pulumi.log.warn(warning, resource=self)
            return results

        self.outbound_smtp = pulumi.Output.unsecret(
            pulumi.Output.all(
                pulumi.Output.from_input(args.ssh_host),
                private_key,
                host_key,
                pulumi.Output.from_input(args.vps_ipv6),
            ).apply(probe)
        )

        live = hs.cert_dir(args.relay_host)
        self.docker_ready = self.docker_step.stdout.apply(lambda _: "ready")
        self.cert_ready = self.certificate_step.stdout.apply(lambda _: "ready")
        self.cert_dir = self.certificate_step.stdout.apply(lambda _: live)
        if self.secrets_step is not None:
            # stdout is a secret output; the path derived from it is not.
            self.secrets_dir = pulumi.Output.unsecret(generation.apply(lambda _: hs.SECRETS_DIR))
        else:
            self.secrets_dir = pulumi.Output.from_input(hs.SECRETS_DIR)
        # For the relay: a value that changes when the key files were written again.
        self.secrets_revision = generation
        ports = [
            spec
            for spec, _role in hs.port_rules(args.ssh_port, args.submissions465, args.extra_ports)
        ]
        self.firewall_ports = self.firewall_step.stdout.apply(lambda _: ports)
        self.docker_host = pulumi.Output.concat(
            "ssh://", args.ssh_user, "@", args.ssh_host, ":", str(args.ssh_port)
        )
        self.register_outputs(
            {
                "docker_ready": self.docker_ready,
                "cert_ready": self.cert_ready,
                "cert_dir": self.cert_dir,
                "secrets_dir": self.secrets_dir,
                "secrets_revision": self.secrets_revision,
                "firewall_ports": self.firewall_ports,
                "docker_host": self.docker_host,
                "outbound_smtp": self.outbound_smtp,
            }
        )


@dataclass(frozen=True)
class StepScripts:
    """One host step's scripts (no secret in them)."""

    create: str
    delete: str | None = None


def step_scripts(args: RelayHostArgs) -> dict[str, StepScripts]:
    """The scripts RelayHost runs, in execution order."""
    if not args.acme_email:
        raise ValueError("acmeEmail is required (the ACME account e-mail for the certificate)")
    uid, gid = args.secret_owner
    scripts = {
        "preflight": StepScripts(hs.render_preflight()),
        "firewall": StepScripts(
            hs.render_firewall(args.ssh_port, args.submissions465, args.extra_ports),
            hs.render_firewall_delete(),
        ),
        "docker": StepScripts(
            hs.render_docker(
                args.docker_ipv6_cidr, args.docker_restart_command, ssh_user=args.ssh_user
            )
        ),
        "certificate": StepScripts(
            hs.render_certificate(
                args.relay_host,
                args.acme_email,
                args.acme_server,
                args.acme_extra_names,
                args.container_name,
                args.reload_command,
                args.acme_ca_bundle,
            )
        ),
        "secrets": StepScripts(
            hs.render_secrets(hs.SECRETS_DIR, args.secret_file_mode, uid, gid),
            hs.render_secrets_delete(hs.SECRETS_DIR),
        ),
        "port25": StepScripts(hs.render_port25(args.port25_probe, args.vps_ipv6 is not None)),
    }
    if args.metadata_address:
        scripts["metadata"] = StepScripts(
            hs.render_metadata(args.metadata_address),
            hs.render_metadata_delete(args.metadata_address),
        )
    return scripts


@dataclass(frozen=True)
class HostStep:
    """One remote step: the command lines SSH runs (no secret in them)."""

    name: str
    create: str
    delete: str | None = None
    stdin_secrets: bool = False


def host_steps(args: RelayHostArgs) -> dict[str, HostStep]:
    """The command lines RelayHost sends, in execution order (for running them by hand)."""
    target = Target(sudo=args.ssh_user != "root")
    return {
        name: HostStep(
            name,
            target.command_line(s.create),
            None if s.delete is None else target.command_line(s.delete),
            stdin_secrets=name == "secrets",
        )
        for name, s in step_scripts(args).items()
    }
