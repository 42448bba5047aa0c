"""Pure renderers for the bash scripts the VPS runs (no Pulumi, no I/O).

Every script:

* starts with ``set -euo pipefail`` and refuses an unsupported OS
  (Ubuntu 22.04/24.04, Debian 12);
* is idempotent: it checks before it changes, and a run that changes nothing
  prints a line containing ``no change`` and touches no file;
* never receives a secret on its command line: key material arrives on stdin
  (see :func:`render_secrets_script` and :func:`secrets_payload`).

``RelayHost`` (``components/host.py``) sends these scripts with
``pulumi_command.remote.Command``; ``tests/test_host_vps.py`` sends the very
same strings over SSH to a local VPS (a network namespace).

Key-material layout (relative to :data:`SECRETS_DIR`; the same layout as
``components/postfix.py``'s ``render_secrets``, which the relay reads from
``/run/relay-secrets`` where this directory is bind-mounted read-only)::

    dkim/<selector>.private   PEM private key, one per DKIM selector
    smtp-users                 lines ``login:password`` (login = name@domain)
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence

# --- layout shared with the relay ---------------------------------------------
STATE_DIR = "/etc/dkim-relay"
SECRETS_DIR = f"{STATE_DIR}/secrets"
SECRETS_LAYOUT = {
    "dkim_key": "dkim/{selector}.private",
    "smtp_users": "smtp-users",
}
LETSENCRYPT_DIR = "/etc/letsencrypt"
HOOK_DIR = f"{LETSENCRYPT_DIR}/renewal-hooks"
RULE_COMMENT_PREFIX = "dkim-relay"
SUPPORTED_OS = {"ubuntu": ("22.04", "24.04"), "debian": ("12",)}
DEFAULT_ACME_SERVER = "https://acme-v02.api.letsencrypt.org/directory"
DEFAULT_CONTAINER_NAME = "dkim-relay"
# A ULA /64 for the default bridge when the host has none configured (RFC 4193).
DEFAULT_DOCKER_IPV6_CIDR = "fd5c:6b72:1e1a::/64"
DEFAULT_DOCKER_RESTART = "systemctl restart docker"

_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
    r"(\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_CONTAINER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_SELECTOR_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def secret_file_path(kind: str, selector: str = "") -> str:
    """Path (relative to SECRETS_DIR) of one kind of key file in the layout."""
    if kind == "dkim_key":
        if not _SELECTOR_RE.match(selector):
            raise ValueError(f"invalid DKIM selector {selector!r}")
    return SECRETS_LAYOUT[kind].format(selector=selector)


def cert_dir(relay_host: str) -> str:
    """Directory holding ``fullchain.pem``/``privkey.pem`` for the relay host."""
    return f"{LETSENCRYPT_DIR}/live/{relay_host}"


def _q(value: str | int) -> str:
    return shlex.quote(str(value))


def _check_hostname(name: str, key: str) -> str:
    if not name or not _HOSTNAME_RE.match(name):
        raise ValueError(f"{key}: {name!r} is not a valid DNS host name")
    return name.lower()


def _check_port(port: int, key: str) -> int:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ValueError(f"{key}: {port!r} is not a TCP port (1-65535)")
    return port


PRELUDE = r"""umask 077
export DEBIAN_FRONTEND=noninteractive
log() { printf 'dkim-relay[%s]: %s\n' "${STEP}" "$*"; }
die() { printf 'dkim-relay[%s]: error: %s\n' "${STEP}" "$*" >&2; exit 1; }
[[ "$(id -u)" -eq 0 ]] || die "must run as root (use sshUser=root or a user with passwordless sudo)"
require_supported_os() {
  local supported="dkim-relay supports Ubuntu 22.04/24.04 and Debian 12"
  [[ -r /etc/os-release ]] || die "unsupported OS: /etc/os-release missing; ${supported}"
  local id ver
  # shellcheck source=/dev/null
  id="$(. /etc/os-release && printf '%s' "${ID:-}")"
  # shellcheck source=/dev/null
  ver="$(. /etc/os-release && printf '%s' "${VERSION_ID:-}")"
  case "${id}:${ver}" in
    ubuntu:22.04 | ubuntu:24.04 | debian:12) ;;
    *) die "unsupported OS '${id} ${ver}': ${supported}" ;;
  esac
}
require_supported_os
apt_install() {
  # Installs the named packages only when one is missing.
  local missing=() p
  for p in "$@"; do
    [[ "$(dpkg-query -W -f='${Status}' "${p}" 2>/dev/null || true)" == "install ok installed" ]] ||
      missing+=("${p}")
  done
  ((${#missing[@]})) || return 0
  log "installing ${missing[*]}"
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
  CHANGED=1
}
# install_file MODE PATH: writes stdin to PATH only if content or mode differ.
install_file() {
  # Compares in a scratch file outside the target directory, so an unchanged
  # file leaves even the directory's mtime alone.
  local mode="$1" path="$2" scratch tmp
  scratch="$(mktemp)"
  cat >"${scratch}"
  if [[ -f "${path}" ]] && cmp -s "${scratch}" "${path}" &&
    [[ "$(stat -c %a "${path}")" == "${mode#0}" ]]; then
    rm -f "${scratch}"
    return 0
  fi
  tmp="$(mktemp "${path}.XXXXXX")"
  cat "${scratch}" >"${tmp}"
  rm -f "${scratch}"
  chmod "${mode}" "${tmp}"
  mv -f "${tmp}" "${path}"
  log "wrote ${path}"
  CHANGED=1
}
CHANGED=0
finish() {
  if ((CHANGED)); then log "done (changed)"; else log "no change"; fi
}
# ufw_active: true when ufw filters traffic (no pipe into grep -q: pipefail+SIGPIPE).
ufw_active() { local s; s="$(ufw status)"; [[ "${s}" == *"Status: active"* ]]; }
"""


def _script(step: str, body: str) -> str:
    head = f"#!/usr/bin/env bash\nset -euo pipefail\nSTEP={_q(step)}\n"
    return head + PRELUDE + body.strip() + "\nfinish\n"


def remote_command(script: str, sudo: bool = False) -> str:
    """The command line that runs ``script`` on the host (what SSH executes).

    The script travels as a quoted argument to ``bash -c`` so stdin stays free
    for key material; with ``sudo`` it runs through ``sudo -n`` (non-root
    ``sshUser`` with passwordless sudo).
    """
    prefix = "sudo -n " if sudo else ""
    return f"{prefix}bash -c {_q(script)} dkim-relay"


# --- preflight -------------------------------------------------------------------
def render_preflight() -> str:
    """OS check plus the tools every later step needs (python3 for JSON)."""
    body = r"""
command -v python3 >/dev/null || apt_install python3
# shellcheck source=/dev/null
. /etc/os-release
log "host OK: ${PRETTY_NAME:-${ID} ${VERSION_ID}}"
"""
    return _script("preflight", body)


# --- docker ----------------------------------------------------------------------
_MERGE_DAEMON_JSON = r"""
import json, os, sys
path, engine_major, cidr = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    with open(path) as f:
        text = f.read()
except FileNotFoundError:
    text = ""
cur = json.loads(text) if text.strip() else {}
if not isinstance(cur, dict):
    sys.exit(f"{path} is not a JSON object; refusing to overwrite it")
new = dict(cur)
new["ipv6"] = True
new.setdefault("fixed-cidr-v6", cidr)
new["ip6tables"] = True
if engine_major < 27:
    # ip6tables needs experimental before Engine 27 (moby/moby#47310 made it GA).
    new["experimental"] = True
if new == cur:
    print("unchanged")
    sys.exit(0)
os.makedirs(os.path.dirname(path), exist_ok=True)
tmp = path + ".dkim-relay.tmp"
with open(tmp, "w") as f:
    json.dump(new, f, indent=2)
    f.write("\n")
os.chmod(tmp, 0o644)
os.replace(tmp, path)
print("changed")
"""


def render_docker(
    ipv6_cidr: str = DEFAULT_DOCKER_IPV6_CIDR,
    restart_command: str = DEFAULT_DOCKER_RESTART,
    daemon_json: str = "/etc/docker/daemon.json",
) -> str:
    """Install Docker if missing; merge IPv6 settings into daemon.json.

    Keys set: ``ipv6: true``, ``fixed-cidr-v6`` (kept if already present),
    ``ip6tables: true`` and, for engines older than 27, ``experimental: true``.
    Every other key is kept. ``restart_command`` runs only when the file changed
    (tests pass an observable command instead of restarting a real dockerd).
    """
    if "/" not in ipv6_cidr or ":" not in ipv6_cidr:
        raise ValueError(f"ipv6_cidr: {ipv6_cidr!r} is not an IPv6 prefix")
    body = f"""
DAEMON_JSON={_q(daemon_json)}
if ! command -v dockerd >/dev/null; then
  apt_install docker.io
fi
command -v python3 >/dev/null || apt_install python3
engine="$(dockerd --version | sed -nE 's/^Docker version ([0-9]+)\\..*/\\1/p')"
[[ -n "${{engine}}" ]] || die "cannot read the Docker engine version from 'dockerd --version'"
log "docker engine major version ${{engine}}"
merged="$(python3 -c {_q(_MERGE_DAEMON_JSON)} "${{DAEMON_JSON}}" "${{engine}}" {_q(ipv6_cidr)})"
if [[ "${{merged}}" == changed ]]; then
  log "merged IPv6 settings into ${{DAEMON_JSON}}; restarting docker"
  CHANGED=1
  {restart_command}
else
  log "${{DAEMON_JSON}} already has the IPv6 settings"
fi
if [[ -d /run/systemd/system ]] && ! systemctl is-active --quiet docker; then
  systemctl enable --now docker
  CHANGED=1
fi
"""
    return _script("docker", body)


# --- firewall --------------------------------------------------------------------
_UFW_HELPERS = r"""
RULES="$(ufw show added 2>/dev/null || true)"
has_rule() { grep -qxF -- "$1" <<<"${RULES}"; }
allow_rule() {  # allow_rule PORT/PROTO ROLE
  local spec="$1" role="$2" comment="dkim-relay ${2}"
  if has_rule "ufw allow ${spec} comment '${comment}'"; then return 0; fi
  ufw allow "${spec}" comment "${comment}"
  RULES="$(ufw show added)"
  CHANGED=1
}
our_rules() {  # prints "PORT/PROTO ROLE" for every rule this project added
  sed -nE "s/^ufw allow ([0-9]+\/(tcp|udp)) comment 'dkim-relay ([a-z0-9-]+)'$/\1 \3/p" \
    <<<"${RULES}"
}
"""


def port_rules(
    ssh_port: int, submissions465: bool, extra_ports: Sequence[int]
) -> list[tuple[str, str]]:
    rules = [(f"{_check_port(ssh_port, 'sshPort')}/tcp", "ssh"), ("587/tcp", "submission")]
    if submissions465:
        rules.append(("465/tcp", "submissions"))
    for p in extra_ports:
        rules.append((f"{_check_port(p, 'extraPorts')}/tcp", f"extra-{p}"))
    return rules


def render_firewall(
    ssh_port: int = 22, submissions465: bool = False, extra_ports: Sequence[int] = ()
) -> str:
    """ufw: SSH first, then 587 (465, extras), v4+v6, default deny incoming.

    Rules carry the comment ``dkim-relay <role>``; rules of ours that are no
    longer wanted (465 turned off) are removed, the SSH rule never is.
    """
    rules = port_rules(ssh_port, submissions465, extra_ports)
    wanted_items = [f"{spec}:{role}" for spec, role in rules]
    wanted_array = " ".join(_q(i) for i in wanted_items)
    wanted_str = " " + " ".join(wanted_items) + " "
    body = (
        """
apt_install ufw
"""
        + _UFW_HELPERS
        + f"""
# IPv6 rules too (ufw adds both families only with IPV6=yes).
if ! grep -qx 'IPV6=yes' /etc/default/ufw; then
  sed -i -E 's/^IPV6=.*/IPV6=yes/' /etc/default/ufw
  grep -qx 'IPV6=yes' /etc/default/ufw || echo 'IPV6=yes' >>/etc/default/ufw
  log "enabled IPv6 in /etc/default/ufw"
  CHANGED=1
  if ufw_active; then ufw reload; fi
fi
# SSH before anything that could enable the firewall: never lock ourselves out.
allow_rule {_q(rules[0][0])} ssh
WANTED=({wanted_array})
WANTED_STR={_q(wanted_str)}
for item in "${{WANTED[@]}}"; do
  allow_rule "${{item%%:*}}" "${{item#*:}}"
done
RULES="$(ufw show added)"
while read -r spec role; do
  [[ -n "${{spec}}" && "${{role}}" != ssh ]] || continue
  case "${{WANTED_STR}}" in *" ${{spec}}:${{role}} "*) continue ;; esac
  ufw delete allow "${{spec}}"
  log "removed rule ${{spec}} (${{role}}) that is no longer configured"
  CHANGED=1
done < <(our_rules)
if ! grep -qx 'DEFAULT_INPUT_POLICY="DROP"' /etc/default/ufw; then
  ufw default deny incoming
  CHANGED=1
fi
if ! ufw_active; then
  ufw --force enable
  CHANGED=1
fi
allowed="$(ufw status | sed -nE 's/^([0-9]+\\/tcp) .*ALLOW.*/\\1/p' | sort -u | tr '\\n' ' ')"
log "firewall allows: ${{allowed}}"
"""
    )
    return _script("firewall", body)


def render_firewall_delete() -> str:
    """Removes the rules this project added, except SSH; ufw stays as it is."""
    body = (
        """
command -v ufw >/dev/null || { log "ufw not installed; nothing to remove"; finish; exit 0; }
"""
        + _UFW_HELPERS
        + """
while read -r spec role; do
  [[ -n "${spec}" ]] || continue
  if [[ "${role}" == ssh ]]; then
    log "keeping ${spec} (SSH is never closed)"
    continue
  fi
  ufw delete allow "${spec}"
  log "removed ${spec} (${role})"
  CHANGED=1
done < <(our_rules)
"""
    )
    return _script("firewall-delete", body)


# --- certificate -----------------------------------------------------------------
def _hook_pre() -> str:
    return r"""#!/usr/bin/env bash
# dkim-relay: open port 80 for the certbot standalone challenge (closed by post hook).
set -euo pipefail
command -v ufw >/dev/null || exit 0
status="$(ufw status)"
[[ "${status}" == *"Status: active"* ]] || exit 0
added="$(ufw show added)"
if grep -qxF "ufw allow 80/tcp comment 'dkim-relay acme'" <<<"${added}"; then exit 0; fi
# A rule the admin made themselves: leave it (and the post hook leaves it too).
if grep -qE '^ufw allow (80|80/tcp|http|www)( |$)' <<<"${added}"; then exit 0; fi
ufw allow 80/tcp comment 'dkim-relay acme' >/dev/null
echo "dkim-relay: port 80 opened for the ACME challenge"
"""


def _hook_post() -> str:
    return r"""#!/usr/bin/env bash
# dkim-relay: close port 80 again after certbot (only the rule the pre hook added).
set -euo pipefail
command -v ufw >/dev/null || exit 0
added="$(ufw show added)"
if grep -qxF "ufw allow 80/tcp comment 'dkim-relay acme'" <<<"${added}"; then
  ufw delete allow 80/tcp >/dev/null
  echo "dkim-relay: port 80 closed"
fi
"""


def _hook_deploy(relay_host: str, container_name: str, reload_command: str | None) -> str:
    lineage = cert_dir(relay_host)
    if reload_command is None:
        name = _q(container_name)
        reload_command = (
            f"if command -v docker >/dev/null && "
            f"[[ \"$(docker inspect -f '{{{{.State.Running}}}}' {name} 2>/dev/null)\" == true ]]"
            "; then\n"
            f"  docker exec {name} relay-reload\n"
            f"else\n"
            f'  echo "dkim-relay: container {container_name} not running;'
            f' it reads the new certificate when it starts"\n'
            f"fi"
        )
    return f"""#!/usr/bin/env bash
# dkim-relay: make the relay load a renewed certificate.
set -euo pipefail
[[ "${{RENEWED_LINEAGE:-}}" == {_q(lineage)} ]] || exit 0
{reload_command}
"""


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
    if not acme_email or "@" not in acme_email:
        raise ValueError("acmeEmail is required for the Let's Encrypt certificate")
    host = _check_hostname(relay_host, "relayHost")
    names = [host] + [
        n for n in (_check_hostname(x, "acmeExtraNames") for x in extra_names) if n != host
    ]
    names = list(dict.fromkeys(names))
    if not acme_server.startswith("https://"):
        raise ValueError(f"acmeServer: {acme_server!r} must be an https:// URL")
    if not _CONTAINER_RE.match(container_name):
        raise ValueError(f"container name {container_name!r} is invalid")
    hooks = {
        "pre": _hook_pre(),
        "post": _hook_post(),
        "deploy": _hook_deploy(host, container_name, reload_command),
    }
    hook_writes = "\n".join(
        f"mkdir -p {HOOK_DIR}/{kind}\n"
        f"install_file 0755 {HOOK_DIR}/{kind}/dkim-relay.sh <<'DKIM_RELAY_HOOK_EOF'\n"
        f"{text}DKIM_RELAY_HOOK_EOF"
        for kind, text in hooks.items()
    )
    domain_args = " ".join(f"-d {_q(n)}" for n in names)
    ca_export = f"export REQUESTS_CA_BUNDLE={_q(acme_ca_bundle)}\n" if acme_ca_bundle else ""
    body = f"""
{ca_export}CERT_NAME={_q(host)}
ACME_SERVER={_q(acme_server)}
WANT_NAMES={_q(" ".join(sorted(names)))}
LIVE={_q(cert_dir(host))}
RENEWAL={_q(f"{LETSENCRYPT_DIR}/renewal/{host}.conf")}
apt_install certbot openssl
{hook_writes}
current_names() {{
  openssl x509 -in "${{LIVE}}/cert.pem" -noout -ext subjectAltName 2>/dev/null |
    grep -oE 'DNS:[^, ]+' | sed 's/^DNS://' | sort | tr '\\n' ' ' | sed 's/ $//'
}}
need=""
if [[ ! -s "${{LIVE}}/fullchain.pem" || ! -s "${{RENEWAL}}" ]]; then
  need="no certificate yet"
elif [[ "$(current_names)" != "${{WANT_NAMES}}" ]]; then
  need="names changed to ${{WANT_NAMES}}"
elif ! grep -qxF "server = ${{ACME_SERVER}}" "${{RENEWAL}}"; then
  need="ACME server changed to ${{ACME_SERVER}}"
fi
if [[ -n "${{need}}" ]]; then
  log "requesting certificate for ${{WANT_NAMES}} (${{need}})"
  force=()
  [[ -s "${{RENEWAL}}" ]] && force=(--force-renewal)
  certbot certonly --standalone --non-interactive --agree-tos --no-eff-email \\
    --email {_q(acme_email)} --server "${{ACME_SERVER}}" --cert-name "${{CERT_NAME}}" \\
    {domain_args} "${{force[@]}}" \\
    --pre-hook {HOOK_DIR}/pre/dkim-relay.sh \\
    --post-hook {HOOK_DIR}/post/dkim-relay.sh \\
    --deploy-hook {HOOK_DIR}/deploy/dkim-relay.sh
  CHANGED=1
else
  not_after="$(openssl x509 -in "${{LIVE}}/cert.pem" -noout -enddate)"
  log "certificate for ${{WANT_NAMES}} present (${{not_after}})"
fi
if [[ -d /run/systemd/system ]] && systemctl list-unit-files certbot.timer >/dev/null 2>&1 &&
  ! systemctl is-enabled --quiet certbot.timer; then
  systemctl enable --now certbot.timer
  CHANGED=1
fi
"""
    return _script("certificate", body)


# --- key material ----------------------------------------------------------------
_WRITE_SECRETS = r"""
import json, os, stat, sys
root, mode, uid, gid = sys.argv[1], int(sys.argv[2], 8), int(sys.argv[3]), int(sys.argv[4])
files = json.load(sys.stdin)
if not isinstance(files, dict) or not all(
    isinstance(k, str) and isinstance(v, str) for k, v in files.items()
):
    sys.exit("stdin must be a JSON object of relative path -> file content")
changed = []
os.makedirs(root, mode=0o700, exist_ok=True)
def fix_dir(d):
    st = os.stat(d)
    if stat.S_IMODE(st.st_mode) != 0o700 or (st.st_uid, st.st_gid) != (uid, gid):
        os.chown(d, uid, gid); os.chmod(d, 0o700); changed.append(d + "/")
fix_dir(root)
wanted = set()
for rel, content in sorted(files.items()):
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        sys.exit(f"refusing path {rel!r}")
    path = os.path.join(root, *parts)
    wanted.add(path)
    d = root
    for p in parts[:-1]:
        d = os.path.join(d, p)
        os.makedirs(d, mode=0o700, exist_ok=True)
        fix_dir(d)
    data = content.encode()
    try:
        st = os.lstat(path)
        with open(path, "rb") as f:
            same = f.read() == data
        ok = (
            same
            and stat.S_ISREG(st.st_mode)
            and stat.S_IMODE(st.st_mode) == mode
            and (st.st_uid, st.st_gid) == (uid, gid)
        )
    except FileNotFoundError:
        ok = False
    if ok:
        continue
    tmp = path + ".tmp-dkim-relay"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chown(tmp, uid, gid)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    changed.append(rel)
for dirpath, dirnames, filenames in os.walk(root):
    for n in filenames:
        p = os.path.join(dirpath, n)
        if p not in wanted:
            os.unlink(p)
            changed.append("removed " + os.path.relpath(p, root))
for c in changed:
    print("dkim-relay[secrets]: updated " + c)
print("dkim-relay[secrets]: key files " + ("changed" if changed else "unchanged"))
"""


def render_secrets(
    secrets_dir: str = SECRETS_DIR, file_mode: int = 0o600, uid: int = 0, gid: int = 0
) -> str:
    """Write key files from stdin (JSON object ``{relative path: content}``).

    Files get ``file_mode`` (0600 or 0400) and ``uid:gid``; directories 0700.
    Files under ``secrets_dir`` that are not in the payload are removed (the
    directory belongs to dkim-relay). Only file names are printed, never content.
    """
    if file_mode not in (0o600, 0o400):
        raise ValueError("file_mode must be 0o600 or 0o400")
    if not secrets_dir.startswith("/") or secrets_dir.rstrip("/") in ("", "/etc"):
        raise ValueError(f"secrets_dir {secrets_dir!r} must be a dedicated absolute path")
    body = f"""
command -v python3 >/dev/null || apt_install python3
mkdir -p {_q(secrets_dir.rsplit("/", 1)[0] or "/")}
out="$(python3 -c {_q(_WRITE_SECRETS)} {_q(secrets_dir)} {oct(file_mode)[2:]} {uid} {gid})"
printf '%s\\n' "${{out}}"
[[ "${{out}}" == *"dkim-relay[secrets]: key files unchanged" ]] || CHANGED=1
"""
    return _script("secrets", body)


def render_secrets_delete(secrets_dir: str = SECRETS_DIR) -> str:
    """Removes the key material directory on stack deletion."""
    body = f"""
if [[ -d {_q(secrets_dir)} ]]; then
  rm -rf -- {_q(secrets_dir)}
  log "removed {secrets_dir}"
  CHANGED=1
fi
"""
    return _script("secrets-delete", body)


def secrets_stdin(files: Mapping[str, str]) -> str:
    """The stdin of :func:`render_secrets`: JSON of relative path -> content.

    ``files`` is what ``components.postfix.render_secrets`` returns (the relay's
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
