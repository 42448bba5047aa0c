"""The host steps' scripts (``target/host/``) with their parameters, and the key-file
payload. No Pulumi, no side effects.

Every script starts with ``set -euo pipefail``, refuses an unsupported OS (Ubuntu
22.04/24.04, Debian 12), is idempotent (a run that changes nothing prints a line
containing ``no change`` and touches no file) and never receives a secret on its
command line: key material arrives on stdin (see :func:`render_secrets` and
:func:`secrets_stdin`).

``RelayHost`` (``components/host.py``) runs these scripts through
``components/target.py``; ``tests/test_host_vps.py`` sends the very same scripts over
SSH to a local VPS (a network namespace).

Key-material layout (relative to :data:`SECRETS_DIR`; the same layout as
``pure/postfix.py``'s ``render_secrets``, which the relay reads from
``/run/relay-secrets`` where this directory is bind-mounted read-only)::

    dkim/<selector>.private   PEM private key, one per DKIM selector of the primary domain
    dkim/<selector>._domainkey.<domain>.private   the same for each other domain
    smtp-users                 lines ``login:password`` (login = name@domain)
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence

from pure import shell
from pure.config import DEFAULT_ACME_SERVER, DEFAULT_CONTAINER_NAME

# --- layout shared with the relay ---------------------------------------------
STATE_DIR = "/etc/dkim-relay"
SECRETS_DIR = STATE_DIR + "/secrets"
SECRETS_LAYOUT = {
    "dkim_key": "dkim/{selector}.private",
    "extra_domain_dkim_key": "dkim/{selector}._domainkey.{domain}.private",
    "smtp_users": "smtp-users",
}
LETSENCRYPT_DIR = "/etc/letsencrypt"
HOOK_DIR = LETSENCRYPT_DIR + "/renewal-hooks"
RULE_COMMENT_PREFIX = "dkim-relay"
SUPPORTED_OS = {"ubuntu": ("22.04", "24.04"), "debian": ("12",)}
# A ULA /64 for the default bridge when the host has none configured (RFC 4193).
DEFAULT_DOCKER_IPV6_CIDR = "fd5c:6b72:1e1a::/64"
DEFAULT_DOCKER_RESTART = "systemctl restart docker"
# The secrets step prints a random value per run; the relay's deploy carries it.
GENERATION_PREFIX = "dkim-relay[secrets]: generation "


def secret_file_path(kind: str, selector: str = "", domain: str = "") -> str:
    """Path (relative to SECRETS_DIR) of one kind of key file in the layout."""
    return SECRETS_LAYOUT[kind].format(selector=selector, domain=domain.lower())


def cert_dir(relay_host: str) -> str:
    """Directory holding ``fullchain.pem``/``privkey.pem`` for the relay host."""
    return LETSENCRYPT_DIR + "/live/" + relay_host


def _step(step: str, values: Mapping[str, shell.Value] | None = None) -> str:
    """A host step: its header, target/host/lib.sh, then target/host/<step>.sh."""
    return shell.script({"STEP": step, **(values or {})}, "host/lib.sh", f"host/{step}.sh")


# --- preflight -------------------------------------------------------------------
def render_preflight() -> str:
    """OS check plus the tools every later step needs (python3 for JSON)."""
    return _step("preflight")


# --- docker ----------------------------------------------------------------------
def render_docker(
    ipv6_cidr: str = DEFAULT_DOCKER_IPV6_CIDR,
    restart_command: str = DEFAULT_DOCKER_RESTART,
    daemon_json: str = "/etc/docker/daemon.json",
    ssh_user: str = "root",
) -> str:
    """Install Docker if missing; merge IPv6 settings into daemon.json; put a non-root
    ``ssh_user`` in the ``docker`` group (the Docker provider's ``ssh://`` runs
    ``docker system dial-stdio`` as that user).

    Keys set: ``ipv6: true``, ``fixed-cidr-v6`` (kept if already present),
    ``ip6tables: true`` and, for engines older than 27, ``experimental: true``.
    Every other key is kept. ``restart_command`` runs only when the file changed
    (tests pass an observable command instead of restarting a real dockerd).
    """
    if "/" not in ipv6_cidr or ":" not in ipv6_cidr:
        raise ValueError(f"ipv6_cidr: {ipv6_cidr!r} is not an IPv6 prefix")
    if not ssh_user:
        raise ValueError("sshUser is empty")
    return _step(
        "docker",
        {
            "DAEMON_JSON": daemon_json,
            "IPV6_CIDR": ipv6_cidr,
            "RESTART_COMMAND": restart_command,
            "SSH_USER": ssh_user,
            "MERGE_DAEMON_JSON_PY": shell.read("host/merge_daemon_json.py"),
        },
    )


# --- firewall --------------------------------------------------------------------
def port_rules(
    ssh_port: int, submissions465: bool, extra_ports: Sequence[int]
) -> list[tuple[str, str]]:
    rules = [(f"{ssh_port}/tcp", "ssh"), ("587/tcp", "submission")]
    if submissions465:
        rules.append(("465/tcp", "submissions"))
    for p in extra_ports:
        rules.append((f"{p}/tcp", f"extra-{p}"))
    return rules


def render_firewall(
    ssh_port: int = 22, submissions465: bool = False, extra_ports: Sequence[int] = ()
) -> str:
    """ufw: SSH first, then 587 (465, extras), v4+v6, default deny incoming.

    Rules carry the comment ``dkim-relay <role>``; rules of ours that are no
    longer wanted (465 turned off) are removed, the SSH rule never is.
    """
    rules = port_rules(ssh_port, submissions465, extra_ports)
    wanted = [spec + ":" + role for spec, role in rules]
    return _step("firewall", {"SSH_RULE": rules[0][0], "WANTED": wanted})


def render_firewall_delete() -> str:
    """Removes the rules this project added, except SSH; ufw stays as it is."""
    return _step("firewall-delete")


def render_metadata(address: str) -> str:
    """Docker's containers may not reach the cloud's metadata service at ``address``."""
    return _step("metadata", {"METADATA": address})


def render_metadata_delete(address: str) -> str:
    return _step("metadata-delete", {"METADATA": address})


# --- certificate -----------------------------------------------------------------
def render_hook(
    kind: str, relay_host: str = "", container_name: str = "", reload_command: str | None = None
) -> str:
    """A certbot renewal hook: ``pre``/``post`` (port 80 in ufw) or ``deploy`` (reload)."""
    if kind != "deploy":
        return shell.script({}, f"host/hooks/{kind}.sh")
    values = {
        "LINEAGE": cert_dir(relay_host),
        "CONTAINER": container_name,
        "RELOAD_COMMAND": reload_command or "",
    }
    return shell.script(values, "host/hooks/deploy.sh")


def render_certificate(
    relay_host: str,
    acme_email: str,
    acme_server: str = DEFAULT_ACME_SERVER,
    extra_names: Sequence[str] = (),
    container_name: str = DEFAULT_CONTAINER_NAME,
    reload_command: str | None = None,
    acme_ca_bundle: str | None = None,
) -> str:
    """certbot certonly --standalone for relay_host (+ extra names), with hooks.

    Hooks go to ``/etc/letsencrypt/renewal-hooks/{pre,post,deploy}/`` so
    ``certbot renew`` (the distribution's timer) runs them: pre opens 80/tcp
    in ufw, post closes it, deploy runs the relay's reload (``docker exec
    <container_name> relay-reload``, or ``reload_command``) for this lineage
    only. The same files are passed to ``certonly`` for the first issuance.
    The certificate is (re)requested only when missing, for other names, or
    from another ACME server. ``acme_ca_bundle`` (a path on the host) makes
    certbot trust a test CA such as pebble.
    """
    host = relay_host.lower()
    names = list(dict.fromkeys([host, *(n.lower() for n in extra_names)]))
    return _step(
        "certificate",
        {
            "CERT_NAME": host,
            "ACME_EMAIL": acme_email,
            "ACME_SERVER": acme_server,
            "ACME_CA_BUNDLE": acme_ca_bundle or "",
            "DOMAINS": names,
            "WANT_NAMES": " ".join(sorted(names)),
            "LIVE": cert_dir(host),
            "RENEWAL": LETSENCRYPT_DIR + "/renewal/" + host + ".conf",
            "HOOK_DIR": HOOK_DIR,
            "HOOK_PRE": render_hook("pre"),
            "HOOK_POST": render_hook("post"),
            "HOOK_DEPLOY": render_hook("deploy", host, container_name, reload_command),
        },
    )


# --- key material ----------------------------------------------------------------
def render_secrets(
    secrets_dir: str = SECRETS_DIR, file_mode: int = 0o600, uid: int = 0, gid: int = 0
) -> str:
    """Write key files from stdin (JSON object ``{relative path: content}``).

    Files get ``file_mode`` (0600 or 0400) and ``uid:gid``; directories 0700.
    Files under ``secrets_dir`` that are not in the payload are removed (the
    directory belongs to dkim-relay). Only file names are printed, never content;
    the last lines are a random generation (:func:`parse_generation`) and the summary.
    """
    if file_mode not in (0o600, 0o400):
        raise ValueError("file_mode must be 0o600 or 0o400")
    _check_secrets_dir(secrets_dir)
    return _step(
        "secrets",
        {
            "SECRETS_DIR": secrets_dir,
            "FILE_MODE": format(file_mode, "o"),
            "OWNER_UID": uid,
            "OWNER_GID": gid,
            "WRITE_SECRETS_PY": shell.read("host/write_secrets.py"),
        },
    )


def render_secrets_delete(secrets_dir: str = SECRETS_DIR) -> str:
    """Removes the key material directory on stack deletion."""
    _check_secrets_dir(secrets_dir)
    return _step("secrets-delete", {"SECRETS_DIR": secrets_dir})


def _check_secrets_dir(secrets_dir: str) -> None:
    if not secrets_dir.startswith("/") or secrets_dir.rstrip("/") in ("", "/etc"):
        raise ValueError(f"secrets_dir {secrets_dir!r} must be a dedicated absolute path")


def secrets_stdin(files: Mapping[str, str]) -> str:
    """The stdin of :func:`render_secrets`: JSON of relative path -> content.

    ``files`` is what ``pure.postfix.render_secrets`` returns (the relay's
    layout, see :data:`SECRETS_LAYOUT`). Paths are checked here as well as on
    the host.
    """
    for rel, content in files.items():
        parts = rel.split("/")
        if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"secret file path {rel!r} must be relative, without '..'")
        if not isinstance(content, str):
            raise ValueError(f"secret file {rel!r} content must be text")
    return json.dumps(dict(files), sort_keys=True)


def parse_generation(stdout: str | None) -> str:
    """The generation the secrets step printed last (``unknown`` if none)."""
    for line in reversed((stdout or "").splitlines()):
        if line.startswith(GENERATION_PREFIX):
            return line[len(GENERATION_PREFIX) :].strip()
    return "unknown"


# --- outbound port 25 ------------------------------------------------------------
PORT25_PREFIX = "dkim-relay[port25]: result "
PORT25_TIMEOUT = 5
FAMILY_NAMES = {"ipv4": "IPv4", "ipv6": "IPv6"}
SMARTHOST_FIX = (
    "pulumi config set relayNexthop '[smtp.your-provider.example]:587'; "
    "pulumi config set relayNexthopUser LOGIN; pulumi config set --secret relayNexthopPassword"
)


def render_port25(probe: str, ipv6: bool, timeout: int = PORT25_TIMEOUT) -> str:
    """Connect from the host to port 25 of ``probe`` over IPv4 (and IPv6): one JSON
    result per family (:func:`parse_port25`). Never fails on a blocked port."""
    if not 1 <= timeout <= 60:
        raise ValueError("the port 25 timeout must be 1 to 60 seconds")
    return _step(
        "port25",
        {
            "PROBE": probe,
            "FAMILIES": ["ipv4", "ipv6"] if ipv6 else ["ipv4"],
            "TIMEOUT": timeout,
            "RESULT_PREFIX": PORT25_PREFIX,
        },
    )


def parse_port25(stdout: str | None) -> dict[str, dict[str, str]]:
    """family -> {probe, address, status, source, detail} from the port25 step's output."""
    results: dict[str, dict[str, str]] = {}
    for line in (stdout or "").splitlines():
        if line.startswith(PORT25_PREFIX):
            item = json.loads(line[len(PORT25_PREFIX) :])
            family = str(item.pop("family"))
            results[family] = {k: str(v) for k, v in item.items()}
    return results


def _same_address(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


def port25_warnings(results: Mapping[str, Mapping[str, str]], vps_ipv6: str | None) -> list[str]:
    """What to tell the user about the port25 step's results: a blocked or unroutable
    family, and an IPv6 source address other than ``vps_ipv6`` (SPF names only that)."""
    warnings = []
    for family, r in sorted(results.items()):
        name = FAMILY_NAMES.get(family, family)
        where = f"{r.get('probe', '')} [{r.get('address', '')}]"
        status = r.get("status")
        if status == "blocked":
            warnings.append(
                f"outbound port 25 over {name} is blocked: the VPS could not connect to "
                f"{where} port 25 ({r.get('detail', '')}). Mail to other servers waits in "
                "the relay's queue until it can leave. Ask your VPS provider to open "
                "outbound port 25 (SMTP), or send through a smarthost on port 587: "
                f"{SMARTHOST_FIX}"
            )
        elif status == "no route":
            warnings.append(
                f"no {name} route to the port 25 probe {where} ({r.get('detail', '')}): "
                f"the relay cannot deliver over {name}"
                + (". Check the VPS's IPv6 set-up, or unset vpsIpv6" if family == "ipv6" else "")
            )
        source = r.get("source", "")
        if family == "ipv6" and vps_ipv6 and source and not _same_address(source, vps_ipv6):
            warnings.append(
                f"the VPS sends IPv6 mail from {source}, not from vpsIpv6 {vps_ipv6} (its /64 "
                "has several addresses): SPF names only vpsIpv6, so that mail fails SPF. "
                f"Fix one of: pulumi config set vpsIpv6 {source}; or make {vps_ipv6} the "
                f"source address on the VPS (a route with `src {vps_ipv6}`); or add it to "
                f"SPF: pulumi config set --path 'spfExtra[0]' ip6:{source}"
            )
    return warnings


def port25_summary(results: Mapping[str, Mapping[str, str]]) -> str:
    """One line per the results, e.g. ``IPv4 open (from 192.0.2.1), IPv6 blocked (refused)``."""
    parts = []
    for family, r in sorted(results.items()):
        status = r.get("status", "unknown")
        extra = f"from {r['source']}" if status == "open" and r.get("source") else r.get("detail")
        parts.append(
            f"{FAMILY_NAMES.get(family, family)} {status}" + (f" ({extra})" if extra else "")
        )
    return ", ".join(parts)
