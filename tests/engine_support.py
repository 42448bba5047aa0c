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
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml

from tests.common import free_port

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
        plain = {f"{NAMESPACE}:{k}": v for k, v in config.items()}
        doc = {"encryptionsalt": self.salt, "config": {**kept, **plain}}
        path.write_text(yaml.safe_dump(doc))
        self.config = dict(config)

    def run(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        # `pulumi stack ...` reads no config and takes no --config-file.
        extra = []
        if self.own_file and args[0] != "stack":
            extra = ["--config-file", str(self.config_file)]
        return self.engine.run(*args, "--stack", self.name, *extra, input=input, env=self.env)

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
        return list(json.loads(self.ok("preview", "--json")).get("steps", []))
