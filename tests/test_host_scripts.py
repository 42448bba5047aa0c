"""The pure script renderers of components/host_scripts.py: syntax, lint, key lines.

The embedded python3 programs (daemon.json merge, key-file writer) are run here on
temporary files; the whole scripts run over SSH in tests/test_host_vps.py.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from components import host_scripts as hs

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
}


@pytest.mark.parametrize("name", sorted(RENDERERS))
def test_script_is_strict_bash_and_lints_clean(name: str, tmp_path: Path) -> None:
    script = RENDERERS[name]()
    assert script.startswith("#!/usr/bin/env bash\nset -euo pipefail\n")
    assert script.rstrip().endswith("finish")
    assert "require_supported_os" in script
    f = tmp_path / f"{name}.sh"
    f.write_text(script)
    subprocess.run(["bash", "-n", str(f)], check=True)
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck missing: run scripts/setup.d/20-vps.sh"
    res = subprocess.run([shellcheck, "-s", "bash", str(f)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


@pytest.mark.parametrize("name", sorted(RENDERERS))
def test_remote_command_round_trips(name: str) -> None:
    script = RENDERERS[name]()
    argv = shlex.split(hs.remote_command(script))
    assert argv[:2] == ["bash", "-c"] and argv[2] == script
    sudo = shlex.split(hs.remote_command(script, sudo=True))
    assert sudo[:4] == ["sudo", "-n", "bash", "-c"] and sudo[4] == script


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
            f"mount --bind {fake} /etc/os-release && exec bash {script}",
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
def test_firewall_allows_ssh_before_enabling_and_default_deny() -> None:
    s = hs.render_firewall(2222)
    ssh = s.index("allow_rule 2222/tcp ssh")
    assert ssh < s.index("ufw --force enable")
    assert ssh < s.index("ufw default deny incoming")
    assert "587/tcp:submission" in s
    assert "465/tcp" not in s
    assert "IPV6=yes" in s


def test_firewall_465_and_extras() -> None:
    s = hs.render_firewall(22, submissions465=True, extra_ports=[2525])
    assert "465/tcp:submissions" in s and "2525/tcp:extra-2525" in s


@pytest.mark.parametrize("port", [0, 70000, -1])
def test_firewall_bad_port_names_key(port: int) -> None:
    with pytest.raises(ValueError, match="sshPort"):
        hs.render_firewall(port)


def test_firewall_delete_never_removes_ssh() -> None:
    s = hs.render_firewall_delete()
    assert 'if [[ "${role}" == ssh ]]' in s
    assert "ufw disable" not in s and "ufw default" not in s and "ufw reset" not in s


# --- certificate -----------------------------------------------------------------------
def test_certificate_command_line() -> None:
    s = hs.render_certificate(
        "Relay.Example.com", "me@example.com", extra_names=["smtp.example.com", "relay.example.com"]
    )
    assert "certbot certonly --standalone --non-interactive --agree-tos" in s
    assert "--email me@example.com" in s
    assert f"ACME_SERVER={hs.DEFAULT_ACME_SERVER}" in s
    assert '-d relay.example.com -d smtp.example.com "${force[@]}"' in s
    assert "WANT_NAMES='relay.example.com smtp.example.com'" in s
    for kind in ("pre", "post", "deploy"):
        assert f"--{kind}-hook /etc/letsencrypt/renewal-hooks/{kind}/dkim-relay.sh" in s
        assert f"install_file 0755 /etc/letsencrypt/renewal-hooks/{kind}/dkim-relay.sh" in s
    assert "REQUESTS_CA_BUNDLE" not in s
    assert "rm " not in s.split("apt_install certbot", 1)[1]  # certificates are never deleted


def test_certificate_hooks() -> None:
    s = hs.render_certificate("relay.example.com", "me@example.com", container_name="myrelay")
    assert "ufw allow 80/tcp comment 'dkim-relay acme'" in s
    assert "ufw delete allow 80/tcp" in s
    assert '[[ "${RENEWED_LINEAGE:-}" == /etc/letsencrypt/live/relay.example.com ]] || exit 0' in s
    assert "docker exec myrelay relay-reload" in s
    custom = hs.render_certificate(
        "relay.example.com", "me@example.com", reload_command="echo reload >>/tmp/x"
    )
    assert "echo reload >>/tmp/x" in custom and "docker exec" not in custom


def test_certificate_test_ca() -> None:
    s = RENDERERS["certificate-ca"]()
    assert "export REQUESTS_CA_BUNDLE=/etc/ssl/test-ca.pem" in s
    assert "ACME_SERVER=https://acme-staging-v02.api.letsencrypt.org/directory" in s


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"acme_email": ""}, "acmeEmail"),
        ({"acme_email": "nobody"}, "acmeEmail"),
        ({"relay_host": "not a host"}, "relayHost"),
        ({"relay_host": ""}, "relayHost"),
        ({"extra_names": ["bad_name!"]}, "acmeExtraNames"),
        ({"acme_server": "http://insecure/dir"}, "acmeServer"),
        ({"container_name": "bad name"}, "container name"),
    ],
)
def test_certificate_bad_input_names_key(kwargs: dict[str, object], key: str) -> None:
    args: dict[str, object] = {"relay_host": "relay.example.com", "acme_email": "me@example.com"}
    args.update(kwargs)
    with pytest.raises(ValueError, match=key):
        hs.render_certificate(**args)  # type: ignore[arg-type]


# --- docker: the embedded merge program --------------------------------------------
def _merge(path: Path, engine: int) -> str:
    return subprocess.run(
        ["python3", "-c", hs._MERGE_DAEMON_JSON, str(path), str(engine), "fd00:1::/64"],
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
        ["python3", "-c", hs._MERGE_DAEMON_JSON, str(bad), "28", "fd00:1::/64"],
        capture_output=True,
        text=True,
    )
    assert res.returncode != 0 and "refusing" in res.stderr
    assert bad.read_text() == "[1, 2]"


def test_docker_restart_only_on_change() -> None:
    s = hs.render_docker(restart_command="echo RESTART")
    block = s.split('if [[ "${merged}" == changed ]]; then', 1)[1].split("else", 1)[0]
    assert "echo RESTART" in block
    assert s.count("echo RESTART") == 1
    assert "apt_install docker.io" in s


# --- key material: the embedded writer -------------------------------------------------
def _write(
    root: Path, files: dict[str, str], mode: str = "600"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "python3",
            "-c",
            hs._WRITE_SECRETS,
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


@pytest.mark.parametrize("bad", ["../escape", "/etc/passwd", "dkim/../x", "a//b"])
def test_secret_paths_are_confined(bad: str) -> None:
    with pytest.raises(ValueError, match="relative"):
        hs.secrets_stdin({bad: "x"})


def test_secrets_script_reads_stdin_only() -> None:
    s = hs.render_secrets()
    assert "python3 -c" in s and "json.load(sys.stdin)" in s
    with pytest.raises(ValueError):
        hs.render_secrets(file_mode=0o644)
    with pytest.raises(ValueError):
        hs.render_secrets(secrets_dir="/etc")


def test_layout_is_the_relays() -> None:
    from components import postfix

    files = postfix.render_secrets(
        "example.com",
        {"s1": "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n"},
        {"gmail": "pw"},
    )
    assert set(files) == {
        hs.secret_file_path("dkim_key", "s1"),
        hs.secret_file_path("smtp_users"),
    }


@pytest.mark.parametrize(
    "hook",
    [
        hs._hook_pre(),
        hs._hook_post(),
        hs._hook_deploy("relay.example.com", "dkim-relay", None),
        hs._hook_deploy("relay.example.com", "dkim-relay", 'echo "reload ${RENEWED_LINEAGE}"'),
    ],
    ids=["pre", "post", "deploy", "deploy-custom"],
)
def test_certbot_hooks_are_strict_and_lint_clean(hook: str, tmp_path: Path) -> None:
    assert hook.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in hook
    f = tmp_path / "hook.sh"
    f.write_text(hook)
    subprocess.run(["bash", "-n", str(f)], check=True)
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck missing: run scripts/setup.d/20-vps.sh"
    res = subprocess.run([shellcheck, "-s", "bash", str(f)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout
