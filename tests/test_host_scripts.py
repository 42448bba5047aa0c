"""The host steps' scripts (pure/host_scripts.py + target/host/): assembly, parameters,
the certbot hooks and the two Python programs, run here on temporary files; the whole
scripts run over SSH in tests/test_host_vps.py. Shellcheck: tests/test_shellcheck.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from pure import host_scripts as hs
from pure import shell

pytestmark = pytest.mark.unit

RENDERERS: dict[str, Callable[[], str]] = {
    "preflight": hs.render_preflight,
    "docker": hs.render_docker,
    "firewall": lambda: hs.render_firewall(2222, True, [2525]),
    "firewall-delete": hs.render_firewall_delete,
    "certificate": lambda: hs.render_certificate(
        "relay.example.com", "me@example.com", extra_names=["smtp.example.com"]
    ),
    "certificate-ca": lambda: hs.render_certificate(
        "relay.example.com",
        "me@example.com",
        "https://acme-staging-v02.api.letsencrypt.org/directory",
        acme_ca_bundle="/etc/ssl/test-ca.pem",
        container_name="relay2",
    ),
    "secrets": hs.render_secrets,
    "secrets-delete": hs.render_secrets_delete,
    "port25": lambda: hs.render_port25("mx.example.net", True),
}


def assigned(script: str, lib: str = "host/lib.sh") -> dict[str, str | list[str]]:
    """The header's variables as bash sees them: everything before the lib's text."""
    head = script[: script.index(shell.read(lib).removeprefix("#!/usr/bin/env bash\n"))]
    names = sorted(set(re.findall(r"^([A-Z][A-Z0-9_]*)=", head, re.M)))
    probe = head + "set +u\n" + PROBE
    raw = subprocess.run(
        ["bash", "-c", probe, "probe", *names], capture_output=True, check=True
    ).stdout.decode()
    values: dict[str, str | list[str]] = {}
    for record in raw.split("\x01")[:-1]:
        name, kind, *items = record.split("\0")[:-1]
        values[name] = items if kind == "a" else items[0]
    return values


# For each name: NAME \0 a|s \0 items \0 ... \x01 (a: an array).
PROBE = r"""for v in "$@"; do
  [[ "$(declare -p "$v" 2>/dev/null)" == "declare -a"* ]] && kind=a || kind=s
  declare -n ref="$v"
  printf '%s\0%s\0' "$v" "$kind"
  printf '%s\0' "${ref[@]}"
  printf '\001'
  unset -n ref
done
"""


@pytest.mark.parametrize("name", sorted(RENDERERS))
def test_script_is_strict_bash_with_the_lib_first(name: str, tmp_path: Path) -> None:
    script = RENDERERS[name]()
    assert script.startswith("#!/usr/bin/env bash\nset -euo pipefail\nSTEP=")
    assert script.rstrip().endswith("finish")
    lib = script.index("require_supported_os\n")
    assert lib < script.index("declare -F finish >/dev/null ||")  # the guard skips `source`
    f = tmp_path / f"{name}.sh"
    f.write_text(script)
    subprocess.run(["bash", "-n", str(f)], check=True)


def test_header_quotes_every_value_literally() -> None:
    hostile = ["a b", "it's", '"$(touch /tmp/pwned)"', "`id`", "x\ny", "$HOME", ""]
    text = shell.header({"ONE": hostile[2], "MANY": hostile, "NUM": 7})
    got = assigned(text + shell.read("host/lib.sh"))
    assert got["ONE"] == hostile[2] and got["MANY"] == hostile and got["NUM"] == "7"
    with pytest.raises(ValueError):
        shell.header({"lower": "x"})
    with pytest.raises(ValueError):
        shell.header({"A;B": "x"})


@pytest.mark.parametrize("name", sorted(RENDERERS))
def test_command_line_round_trips(name: str) -> None:
    script = RENDERERS[name]()
    argv = shlex.split(shell.command_line(script))
    assert argv == ["bash", "-c", script, "dkim-relay"]
    sudo = shlex.split(shell.command_line(script, sudo=True))
    assert sudo == ["sudo", "-n", "bash", "-c", script, "dkim-relay"]


def _run_preflight_with_os_release(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Runs the preflight script locally with a fake /etc/os-release (private mount ns)."""
    fake = tmp_path / "os-release"
    fake.write_text(text)
    script = tmp_path / "preflight.sh"
    script.write_text(hs.render_preflight())
    return subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            'mount --bind "$1" /etc/os-release && exec bash "$2"',
            "sh",
            str(fake),
            str(script),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "os_release,ok",
    [
        ('ID=ubuntu\nVERSION_ID="22.04"\n', True),
        ('ID=ubuntu\nVERSION_ID="24.04"\n', True),
        ('ID=debian\nVERSION_ID="12"\n', True),
        ('ID=debian\nVERSION_ID="11"\n', False),
        ('ID=ubuntu\nVERSION_ID="20.04"\n', False),
        ('ID=centos\nVERSION_ID="9"\n', False),
    ],
)
def test_os_check(os_release: str, ok: bool, tmp_path: Path) -> None:
    assert os.geteuid() == 0, "the OS check test needs root (mount namespace)"
    res = _run_preflight_with_os_release(os_release, tmp_path)
    if ok:
        assert res.returncode == 0, res.stderr
        assert "host OK" in res.stdout
    else:
        assert res.returncode == 1
        assert "unsupported OS" in res.stderr
        assert "Ubuntu 22.04/24.04 and Debian 12" in res.stderr


# --- firewall ------------------------------------------------------------------------
def test_firewall_parameters() -> None:
    got = assigned(hs.render_firewall(2222))
    assert got["STEP"] == "firewall"
    assert got["SSH_RULE"] == "2222/tcp"
    assert got["WANTED"] == ["2222/tcp:ssh", "587/tcp:submission"]
    more = assigned(hs.render_firewall(22, submissions465=True, extra_ports=[2525]))
    assert more["WANTED"] == [
        "22/tcp:ssh",
        "587/tcp:submission",
        "465/tcp:submissions",
        "2525/tcp:extra-2525",
    ]


def test_firewall_allows_ssh_before_enabling_and_default_deny() -> None:
    s = hs.render_firewall(2222)
    ssh = s.index('allow_rule "${SSH_RULE}" ssh')
    assert ssh < s.index("ufw --force enable")
    assert ssh < s.index("ufw default deny incoming")
    assert "IPV6=yes" in s


def test_firewall_delete_never_removes_ssh() -> None:
    s = hs.render_firewall_delete()
    assert 'if [[ "${role}" == ssh ]]' in s
    assert "ufw disable" not in s and "ufw default" not in s and "ufw reset" not in s


# --- certificate -----------------------------------------------------------------------
def test_certificate_parameters() -> None:
    got = assigned(
        hs.render_certificate(
            "Relay.Example.com",
            "me@example.com",
            extra_names=["smtp.example.com", "relay.example.com"],
        )
    )
    assert got["ACME_EMAIL"] == "me@example.com"
    assert got["ACME_SERVER"] == hs.DEFAULT_ACME_SERVER
    assert got["ACME_CA_BUNDLE"] == ""
    assert got["CERT_NAME"] == "relay.example.com"
    assert got["DOMAINS"] == ["relay.example.com", "smtp.example.com"]
    assert got["WANT_NAMES"] == "relay.example.com smtp.example.com"
    assert got["LIVE"] == "/etc/letsencrypt/live/relay.example.com"
    assert got["RENEWAL"] == "/etc/letsencrypt/renewal/relay.example.com.conf"
    assert got["HOOK_DIR"] == "/etc/letsencrypt/renewal-hooks"
    assert got["HOOK_PRE"] == hs.render_hook("pre")
    assert got["HOOK_DEPLOY"] == hs.render_hook("deploy", "relay.example.com", "dkim-relay")


def test_certificate_command_line() -> None:
    s = hs.render_certificate("relay.example.com", "me@example.com")
    assert "certbot certonly --standalone --non-interactive --agree-tos" in s
    for kind in ("pre", "post", "deploy"):
        assert f'--{kind}-hook "${{HOOK_DIR}}/{kind}/dkim-relay.sh"' in s
        assert f'install_hook {kind} "${{HOOK_{kind.upper()}}}"' in s
    assert "rm " not in s.split("apt_install certbot", 1)[1]  # certificates are never deleted


def test_certificate_test_ca() -> None:
    got = assigned(RENDERERS["certificate-ca"]())
    assert got["ACME_CA_BUNDLE"] == "/etc/ssl/test-ca.pem"
    assert got["ACME_SERVER"] == "https://acme-staging-v02.api.letsencrypt.org/directory"
    assert 'export REQUESTS_CA_BUNDLE="${ACME_CA_BUNDLE}"' in RENDERERS["certificate-ca"]()


def _run_hook(hook: str, tmp_path: Path, lineage: str | None) -> subprocess.CompletedProcess[str]:
    f = tmp_path / "hook.sh"
    f.write_text(hook)
    env = {"PATH": os.environ["PATH"]}
    if lineage is not None:
        env["RENEWED_LINEAGE"] = lineage
    return subprocess.run(["bash", str(f)], capture_output=True, text=True, env=env, timeout=60)


def test_deploy_hook_runs_the_reload_for_its_lineage_only(tmp_path: Path) -> None:
    log = tmp_path / "reload's log"
    command = 'echo "reload ${RENEWED_LINEAGE}" >>' + shlex.quote(str(log))
    hook = hs.render_hook("deploy", "relay.example.com", "dkim-relay", command)
    live = "/etc/letsencrypt/live/relay.example.com"
    for lineage in ("/etc/letsencrypt/live/other.example.com", None, live):
        res = _run_hook(hook, tmp_path, lineage)
        assert res.returncode == 0, res.stderr
    assert log.read_text() == f"reload {live}\n"


def test_deploy_hook_default_reload_skips_a_missing_container(tmp_path: Path) -> None:
    name = "dkim-relay-hooktest-absent"
    hook = hs.render_hook("deploy", "relay.example.com", name)
    res = _run_hook(hook, tmp_path, "/etc/letsencrypt/live/relay.example.com")
    assert res.returncode == 0, res.stderr
    assert f"container {name} not running" in res.stdout


@pytest.mark.parametrize("kind", ["pre", "post", "deploy"])
def test_hooks_are_strict_bash(kind: str, tmp_path: Path) -> None:
    hook = hs.render_hook(kind, "relay.example.com", "dkim-relay")
    assert hook.startswith("#!/usr/bin/env bash\nset -euo pipefail\n")
    f = tmp_path / "hook.sh"
    f.write_text(hook)
    subprocess.run(["bash", "-n", str(f)], check=True)


# --- docker: the merge program -------------------------------------------------------
MERGE = shell.read("host/merge_daemon_json.py")


def _merge(path: Path, engine: int) -> str:
    return subprocess.run(
        ["python3", "-c", MERGE, str(path), str(engine), "fd00:1::/64"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@pytest.mark.parametrize("engine,experimental", [(20, True), (26, True), (27, None), (28, None)])
def test_daemon_json_merge(tmp_path: Path, engine: int, experimental: bool | None) -> None:
    f = tmp_path / "daemon.json"
    f.write_text(json.dumps({"log-level": "warn", "fixed-cidr-v6": "2001:db8:1::/64"}))
    assert _merge(f, engine) == "changed"
    got = json.loads(f.read_text())
    assert got["log-level"] == "warn"
    assert got["fixed-cidr-v6"] == "2001:db8:1::/64"  # the admin's prefix is kept
    assert got["ipv6"] is True and got["ip6tables"] is True
    assert got.get("experimental") is experimental
    before = f.stat().st_mtime_ns
    assert _merge(f, engine) == "unchanged"
    assert f.stat().st_mtime_ns == before


def test_daemon_json_created_and_non_object_refused(tmp_path: Path) -> None:
    f = tmp_path / "docker" / "daemon.json"
    assert _merge(f, 28) == "changed"
    assert json.loads(f.read_text())["fixed-cidr-v6"] == "fd00:1::/64"
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    res = subprocess.run(
        ["python3", "-c", MERGE, str(bad), "28", "fd00:1::/64"], capture_output=True, text=True
    )
    assert res.returncode != 0 and "refusing" in res.stderr
    assert bad.read_text() == "[1, 2]"


def test_docker_step_parameters() -> None:
    got = assigned(hs.render_docker(restart_command="echo RESTART; touch x"))
    assert got["RESTART_COMMAND"] == "echo RESTART; touch x"
    assert got["DAEMON_JSON"] == "/etc/docker/daemon.json"
    assert got["IPV6_CIDR"] == hs.DEFAULT_DOCKER_IPV6_CIDR
    assert got["MERGE_DAEMON_JSON_PY"] == MERGE
    assert got["SSH_USER"] == "root"
    assert assigned(hs.render_docker(ssh_user="deploy"))["SSH_USER"] == "deploy"
    s = hs.render_docker()
    block = s.split('if [[ "${merged}" == changed ]]; then', 1)[1].split("else", 1)[0]
    assert 'bash -c "${RESTART_COMMAND}"' in block
    assert "apt_install docker.io" in s
    with pytest.raises(ValueError):
        hs.render_docker("10.0.0.0/8")


# --- key material: the writer program ------------------------------------------------
def _write(
    root: Path, files: dict[str, str], mode: str = "600"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "python3",
            "-c",
            shell.read("host/write_secrets.py"),
            str(root),
            mode,
            str(os.getuid()),
            str(os.getgid()),
        ],
        input=hs.secrets_stdin(files),
        capture_output=True,
        text=True,
    )


def test_secret_writer_modes_idempotence_and_cleanup(tmp_path: Path) -> None:
    root = tmp_path / "secrets"
    files = {"dkim/s1.private": "KEY-ONE\n", "smtp-users": "a@example.com:pw-xyz\n"}
    res = _write(root, files)
    assert res.returncode == 0, res.stderr
    assert "pw-xyz" not in res.stdout + res.stderr and "KEY-ONE" not in res.stdout
    assert (root / "dkim" / "s1.private").read_text() == "KEY-ONE\n"
    for p in (root, root / "dkim"):
        assert p.stat().st_mode & 0o777 == 0o700
    for p in (root / "dkim" / "s1.private", root / "smtp-users"):
        assert p.stat().st_mode & 0o777 == 0o600
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    again = _write(root, files)
    assert again.stdout.strip().endswith("key files unchanged")
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps
    # A selector that is no longer configured goes away; 0400 is honoured.
    third = _write(root, {"dkim/s2.private": "KEY-TWO\n"}, mode="400")
    assert "removed dkim/s1.private" in third.stdout
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == ["s2.private"]
    assert (root / "dkim" / "s2.private").stat().st_mode & 0o777 == 0o400


def test_secrets_step_writes_and_reports_a_generation(tmp_path: Path) -> None:
    """The whole step (lib + secrets.sh + the writer), run here as the local engine does."""
    root = tmp_path / "state dir" / "secrets"
    files = {"dkim/s1.private": "KEY-ONE\n", "smtp-users": "a@example.com:pw-xyz\n"}

    def run() -> str:
        res = subprocess.run(
            ["bash", "-c", hs.render_secrets(str(root)), "x"],
            input=hs.secrets_stdin(files),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0, res.stderr
        assert "pw-xyz" not in res.stdout + res.stderr
        return res.stdout

    first, second = run(), run()
    assert "key files changed" in first and "done (changed)" in first
    assert "key files unchanged" in second and "dkim-relay[secrets]: no change" in second
    gens = {hs.parse_generation(first), hs.parse_generation(second)}
    assert len(gens) == 2 and all(len(g) == 32 for g in gens)
    assert (root / "smtp-users").read_text() == files["smtp-users"]
    gone = subprocess.run(
        ["bash", "-c", hs.render_secrets_delete(str(root)), "x"], capture_output=True, text=True
    )
    assert gone.returncode == 0 and "removed" in gone.stdout and not root.exists()


@pytest.mark.parametrize("bad", ["../escape", "/etc/passwd", "dkim/../x", "a//b"])
def test_secret_paths_are_confined(bad: str) -> None:
    with pytest.raises(ValueError, match="relative"):
        hs.secrets_stdin({bad: "x"})


def test_secrets_script_reads_stdin_only() -> None:
    got = assigned(hs.render_secrets(uid=12, gid=34, file_mode=0o400))
    assert got["SECRETS_DIR"] == hs.SECRETS_DIR and got["FILE_MODE"] == "400"
    assert got["OWNER_UID"] == "12" and got["OWNER_GID"] == "34"
    assert "json.load(sys.stdin)" in str(got["WRITE_SECRETS_PY"])
    with pytest.raises(ValueError):
        hs.render_secrets(file_mode=0o644)
    with pytest.raises(ValueError):
        hs.render_secrets(secrets_dir="/etc")


def test_parse_generation() -> None:
    assert hs.parse_generation(f"x\n{hs.GENERATION_PREFIX}abc\n") == "abc"
    assert hs.parse_generation("nothing") == "unknown"
    assert hs.parse_generation(None) == "unknown"  # mocks that do not fill stdout


def test_layout_is_the_relays() -> None:
    from pure import postfix

    files = postfix.render_secrets(
        "example.com",
        {"s1": "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n"},
        {"gmail": "pw"},
    )
    assert set(files) == {
        hs.secret_file_path("dkim_key", "s1"),
        hs.secret_file_path("smtp_users"),
    }


# --- outbound port 25 -----------------------------------------------------------------
# What the step printed on the test VPS (tests/test_host_vps.py): open, then blocked.
OPEN_OUTPUT = """\
dkim-relay[port25]: result {"family": "ipv4", "probe": "mx.probe.test", "address": "10.254.9.1", \
"status": "open", "source": "10.254.9.2", "detail": "connected"}
dkim-relay[port25]: result {"family": "ipv6", "probe": "mx.probe.test", "address": "fd42::1", \
"status": "open", "source": "fd42::2", "detail": "connected"}
dkim-relay[port25]: no change
"""
BLOCKED_OUTPUT = """\
dkim-relay[port25]: result {"family": "ipv4", "probe": "mx.probe.test", "address": "10.254.9.1", \
"status": "blocked", "source": "10.254.9.2", "detail": "no answer within 5 s"}
dkim-relay[port25]: result {"family": "ipv6", "probe": "mx.probe.test", "address": "fd42::1", \
"status": "blocked", "source": "fd42::2", "detail": "refused"}
dkim-relay[port25]: no change
"""


def test_port25_parameters() -> None:
    v4 = assigned(hs.render_port25("gmail-smtp-in.l.google.com", False))
    assert v4["PROBE"] == "gmail-smtp-in.l.google.com" and v4["FAMILIES"] == ["ipv4"]
    assert v4["TIMEOUT"] == "5" and v4["STEP"] == "port25"
    both = assigned(hs.render_port25("2001:db8::25", True, timeout=3))
    assert both["FAMILIES"] == ["ipv4", "ipv6"] and both["TIMEOUT"] == "3"
    assert both["RESULT_PREFIX"] == hs.PORT25_PREFIX
    with pytest.raises(ValueError, match="timeout"):
        hs.render_port25("mx.example.net", True, timeout=0)


def test_parse_port25() -> None:
    got = hs.parse_port25(OPEN_OUTPUT)
    assert set(got) == {"ipv4", "ipv6"}
    assert got["ipv4"] == {
        "probe": "mx.probe.test",
        "address": "10.254.9.1",
        "status": "open",
        "source": "10.254.9.2",
        "detail": "connected",
    }
    assert hs.parse_port25(BLOCKED_OUTPUT)["ipv6"]["detail"] == "refused"
    assert hs.parse_port25("dkim-relay[port25]: no change\n") == {}
    assert hs.parse_port25(None) == {}


def test_port25_open_with_the_configured_source_warns_nothing() -> None:
    results = hs.parse_port25(OPEN_OUTPUT)
    assert hs.port25_warnings(results, "fd42::2") == []
    assert hs.port25_warnings(results, "fd42:0:0::0002") == [], "same address, other spelling"
    assert hs.port25_warnings(results, None) == []
    assert hs.port25_summary(results) == "IPv4 open (from 10.254.9.2), IPv6 open (from fd42::2)"


def test_port25_blocked_warns_with_what_to_do() -> None:
    warnings = hs.port25_warnings(hs.parse_port25(BLOCKED_OUTPUT), "fd42::2")
    assert len(warnings) == 2
    v4, v6 = warnings
    assert v4.startswith("outbound port 25 over IPv4 is blocked") and "no answer within 5" in v4
    assert v6.startswith("outbound port 25 over IPv6 is blocked") and "(refused)" in v6
    for w in warnings:
        assert "mx.probe.test" in w and "ask your vps provider to open" in w.lower()
        assert "relayNexthop" in w
    summary = hs.port25_summary(hs.parse_port25(BLOCKED_OUTPUT))
    assert summary == "IPv4 blocked (no answer within 5 s), IPv6 blocked (refused)"


def test_port25_no_route_and_other_ipv6_source() -> None:
    results = {
        "ipv4": {"probe": "mx", "address": "", "status": "no route", "source": "", "detail": "x"},
        "ipv6": {
            "probe": "mx",
            "address": "fd42::1",
            "status": "open",
            "source": "fd42::3",
            "detail": "connected",
        },
    }
    warnings = hs.port25_warnings(results, "fd42::2")
    assert len(warnings) == 2
    assert warnings[0].startswith("no IPv4 route to the port 25 probe mx")
    src = warnings[1]
    assert "from fd42::3, not from vpsIpv6 fd42::2" in src and "fails SPF" in src
    assert "pulumi config set vpsIpv6 fd42::3" in src and "ip6:fd42::3" in src
    # Without vpsIpv6 there is nothing to compare the source with.
    assert len(hs.port25_warnings(results, None)) == 1
    # IPv4 sources are not compared (1:1 NAT at the provider is common and harmless).
    results["ipv4"] = {**results["ipv6"], "address": "10.0.0.1", "source": "10.0.0.9"}
    assert len(hs.port25_warnings(results, "fd42::3")) == 0


STUBS = {
    # getent ahosts: one address per family, as glibc prints them.
    "getent": 'printf "%s STREAM %s\\n" 192.0.2.25 "$2" 2001:db8::25 "" \n',
    "ip": 'case "$*" in *2001:db8::25*) [ -n "${IP6_ROUTE}" ] || '
    '{ echo "RTNETLINK answers: Network is unreachable" >&2; exit 2; }; echo "${IP6_ROUTE}";; '
    '*) echo "192.0.2.25 dev eth0 src 192.0.2.9 uid 0";; esac\n',
    # The connection itself: its exit status comes from the test (124: timed out); the
    # name lookup (bounded by timeout too) goes to the getent stub.
    "timeout": '[ "$2" != getent ] || { shift; exec "$@"; }\n'
    'case "$*" in *2001:db8::25*) exit "${RC6}";; *) exit "${RC4}";; esac\n',
}


@pytest.mark.parametrize(
    "rc4,rc6,route6,want4,want6",
    [
        ("0", "0", "2001:db8::25 from :: dev eth0 src 2001:db8::9 metric 1", "open", "open"),
        ("124", "1", "2001:db8::25 dev eth0 src 2001:db8::9", "blocked", "blocked"),
        ("0", "0", "", "open", "no route"),
    ],
)
def test_port25_script_classifies_what_it_sees(
    tmp_path: Path, rc4: str, rc6: str, route6: str, want4: str, want6: str
) -> None:
    """The script itself with getent, ip and timeout replaced: nothing connects anywhere."""
    assert os.geteuid() == 0, "the host scripts run as root"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.update(RC4=rc4, RC6=rc6, IP6_ROUTE=route6)
    res = subprocess.run(
        ["bash", "-c", hs.render_port25("mx.example.net", True)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    got = hs.parse_port25(res.stdout)
    assert (got["ipv4"]["status"], got["ipv6"]["status"]) == (want4, want6), res.stdout
    assert got["ipv4"]["source"] == "192.0.2.9" and got["ipv4"]["address"] == "192.0.2.25"
    if want6 == "no route":
        assert got["ipv6"]["source"] == "" and "unreachable" in got["ipv6"]["detail"]
    else:
        assert got["ipv6"]["source"] == "2001:db8::9"
    if want4 == "blocked":
        assert got["ipv4"]["detail"] == "no answer within 5 s"
        assert got["ipv6"]["detail"] == "refused"
    assert "dkim-relay[port25]: no change" in res.stdout
