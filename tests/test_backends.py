"""State in a self-managed S3-compatible bucket, for real: moto's S3 server on loopback
(a real HTTP server speaking the S3 protocol, not a mock of the client), Pulumi's own
``s3://`` backend with the passphrase secrets provider, and the move of a stack from the
local folder into the bucket as the README describes it (export, init, import), which
must keep the DKIM key and change nothing on the next ``pulumi up``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from scripts.local_ca import issue
from tests.engine_support import (
    PULUMI,
    REPO,
    Engine,
    Stack,
    free_port,
    local_stack_config,
    send_and_verify,
)

pytestmark = pytest.mark.engine

BUCKET = "dkim-relay-state"
# Dummy keys: moto accepts any; nothing here is a credential.
AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def bucket_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Pulumi's backend URL of a bucket on an S3 server listening on loopback only."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, **_boto_args())
        deadline = time.monotonic() + 30
        while True:
            try:
                s3.create_bucket(Bucket=BUCKET)
                break
            except Exception as err:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError(
                        f"S3 server did not start: {log.read_text()[-2000:]}"
                    ) from err
                time.sleep(0.3)
        yield f"s3://{BUCKET}?endpoint={endpoint}&region=us-east-1&use_path_style=true"
    finally:
        server.terminate()
        server.wait(timeout=30)


def _boto_args() -> dict[str, str]:
    return {
        "aws_access_key_id": AWS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS["AWS_SECRET_ACCESS_KEY"],
        "region_name": AWS["AWS_REGION"],
    }


def bucket_objects(url: str) -> dict[str, bytes]:
    endpoint = url.split("endpoint=", 1)[1].split("&", 1)[0]
    s3 = boto3.client("s3", endpoint_url=endpoint, **_boto_args())
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    return {k: s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}


@pytest.fixture(scope="module")
def moved(
    bucket_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, dict[str, Any], Path]]:
    """A local stack deployed from the local folder backend, then moved into the bucket
    with the README's commands. Yields the stack (now on the bucket), its outputs before
    the move, and the certificate folder."""
    tmp = tmp_path_factory.mktemp("backends")
    certs = tmp / "certs"
    issue(certs, "smtp.engine.test", [])
    name = f"backendtest{uuid.uuid4().hex[:6]}"
    engine = Engine(tmp)
    stack = engine.stack(name, local_stack_config(name, certs, 96))
    s3_env = {**AWS, "PULUMI_BACKEND_URL": bucket_url}
    try:
        stack.ok("up", "--yes", "--skip-preview")
        before = stack.outputs()
        send_and_verify(before, certs, REPO / ".local" / name / "sink")

        # The move, as the README says: export (secrets stay encrypted), init on the
        # bucket keeping the config file's salt, import.
        export = tmp / "export.json"
        stack.ok("stack", "export", "--file", str(export))
        # `stack init` reads the salt from the project's stack file; ours lives in tmp.
        project_file = REPO / f"Pulumi.{name}.yaml"
        project_file.write_text(yaml.safe_dump({"encryptionsalt": stack.salt}))
        try:
            res = engine.run("stack", "init", name, "--secrets-provider", "passphrase", env=s3_env)
            assert res.returncode == 0, res.stdout + res.stderr
            assert yaml.safe_load(project_file.read_text())["encryptionsalt"] == stack.salt
        finally:
            project_file.unlink(missing_ok=True)
        stack.env = s3_env
        stack.ok("stack", "import", "--file", str(export))
        yield stack, before, certs
    finally:
        for env in (s3_env, None):  # whichever backend holds it now
            stack.env = env
            stack.run("destroy", "--yes")
        shutil.rmtree(REPO / ".local" / name, ignore_errors=True)


def test_the_move_keeps_the_dkim_key_and_changes_nothing(
    moved: tuple[Stack, dict[str, Any], Path],
) -> None:
    stack, before, certs = moved
    after = stack.outputs()
    assert after["dkimDnsValue"] == before["dkimDnsValue"]
    assert after["smtpPassword"] == before["smtpPassword"]
    stack.ok("preview", "--expect-no-changes")
    out = stack.ok("up", "--yes", "--expect-no-changes")
    assert "unchanged" in out
    # The relay still signs with the same key: dkimpy verifies against the old value.
    send_and_verify(before, certs, REPO / ".local" / stack.name / "sink")


def test_state_is_in_the_bucket_with_secrets_encrypted(
    moved: tuple[Stack, dict[str, Any], Path], bucket_url: str
) -> None:
    stack, before, _ = moved
    objects = bucket_objects(bucket_url)
    key = f".pulumi/stacks/dkim-relay/{stack.name}.json"
    assert key in objects, sorted(objects)
    state = objects[key].decode()
    assert json.loads(state)["checkpoint"]["latest"]["resources"], "the resources are there"
    for blob in objects.values():
        assert before["smtpPassword"].encode() not in blob
        assert b"BEGIN PRIVATE KEY" not in blob


def test_a_second_machine_reads_the_outputs_only_with_the_passphrase(
    moved: tuple[Stack, dict[str, Any], Path], bucket_url: str, tmp_path: Path
) -> None:
    stack, before, _ = moved
    # Another machine: its own PULUMI_HOME, no project, no config file; the bucket's keys.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULUMI_")}
    env.update(AWS, PULUMI_HOME=str(tmp_path / "home"), PULUMI_BACKEND_URL=bucket_url)
    env["PULUMI_SKIP_UPDATE_CHECK"] = "1"
    argv = [str(PULUMI), "stack", "output", "--json", "--show-secrets", "--non-interactive"]
    argv += ["--stack", f"organization/dkim-relay/{stack.name}"]

    def read(extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, env={**env, **extra}, cwd=tmp_path, capture_output=True, text=True, timeout=120
        )

    res = read({"PULUMI_CONFIG_PASSPHRASE_FILE": stack.engine.env["PULUMI_CONFIG_PASSPHRASE_FILE"]})
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["smtpPassword"] == before["smtpPassword"]
    res = read({})
    assert res.returncode != 0
    assert before["smtpPassword"] not in res.stdout + res.stderr
    res = read({"PULUMI_CONFIG_PASSPHRASE": "not-the-passphrase"})
    assert res.returncode != 0
    assert before["smtpPassword"] not in res.stdout + res.stderr
