"""`intercept run` and the policy's credentials, from the operator's environment to the named
host: the command sees the placeholder, the host gets the secret (its echo says so)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime.workdirs import operator_workdir

pytestmark = pytest.mark.netns

LAB = "hosts:\n  - name: api.anthropic.com\n"
POLICY = """\
unrestricted_domains: [api.anthropic.com]
credentials: [{host: api.anthropic.com, header: x-api-key, env: ANTHROPIC_API_KEY}]
"""
SECRET = "sk-ant-" + secrets.token_hex(16)


@pytest.fixture
def workdir() -> Iterator[Path]:
    with operator_workdir(
        "intercept-credentials-", {"lab.yaml": LAB, "policy.yaml": POLICY}
    ) as path:
        yield path


def run(workdir: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "intercept_proxy", "run", "--lab", "lab.yaml"]
    argv += ["--policy", "policy.yaml", *args]
    return subprocess.run(
        argv, cwd=workdir, capture_output=True, text=True, timeout=120, check=False, env=env
    )


def test_the_command_holds_a_placeholder_and_the_host_gets_the_secret(workdir):
    script = (
        'echo "$ANTHROPIC_API_KEY"; '
        'curl -sS --fail -H "x-api-key: $ANTHROPIC_API_KEY" https://api.anthropic.com/v1/messages'
    )
    done = run(workdir, "--", "sh", "-c", script, env={**os.environ, "ANTHROPIC_API_KEY": SECRET})
    assert done.returncode == 0, done.stderr
    placeholder, echo = done.stdout.splitlines()
    assert placeholder == "intercept-proxy-placeholder"
    assert json.loads(echo)["headers"]["x-api-key"] == SECRET


def test_a_credential_without_its_variable_is_an_error(workdir):
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    done = run(workdir, "--", "true", env=env)
    assert done.returncode == 2
    assert "credentials[0].env: ANTHROPIC_API_KEY is not set in your environment" in done.stderr


def test_a_pod_file_cannot_take_credentials_from_the_environment(workdir):
    (workdir / "pod.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n"
        "spec: {containers: [{name: c, image: local, command: [true]}]}\n"
    )
    done = run(workdir, "--pod", "pod.yaml", env={**os.environ, "ANTHROPIC_API_KEY": SECRET})
    assert done.returncode == 2
    assert "credentials from the environment need -- CMD" in done.stderr


def test_aws_keys_without_their_variables_are_an_error(workdir):
    (workdir / "aws.yaml").write_text(
        "aws_signing: [{host: s3.us-east-1.amazonaws.com, service: s3, region: us-east-1}]\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_ACCESS_KEY_ID"] = "AKIDEXAMPLEKEY01"
    argv = [sys.executable, "-m", "intercept_proxy", "run", "--policy", "aws.yaml", "--", "true"]
    done = subprocess.run(argv, cwd=workdir, capture_output=True, text=True, check=False, env=env)
    assert done.returncode == 2
    assert (
        "aws_signing[0].secret_access_key_env: AWS_SECRET_ACCESS_KEY is not set in your "
        "environment" in done.stderr
    )
