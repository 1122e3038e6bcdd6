"""AWS signing (red team, the lab's echoes as ground truth, AWS's own botocore as the judge of a
signature): requests to the named endpoints leave signed with the operator's keys, which nothing
the workload can read holds; the workload signs with placeholder keys, and that is all any other
host sees."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials

from intercept_proxy.policy.credentials import DEFAULT_PLACEHOLDER
from tests.decisions import decisions
from tests.sandbox.harness import TESTS, Sandbox, sandbox_in_own_lab

pytestmark = pytest.mark.netns

S3 = "s3.us-east-1.amazonaws.com"
SQS = "sqs.us-east-1.amazonaws.com"
LAB = {"hosts": [{"name": S3}, {"name": SQS}, {"name": "example.com"}]}
POLICY = f"""\
aws_access_enabled: true
aws_allowed_services: [s3, sqs]
unrestricted_domains: [example.com]
aws_signing:
  - {{host: {S3}, service: s3, region: us-east-1}}
  - {{host: {SQS}, service: sqs, region: us-east-1, session_token_env: AWS_SESSION_TOKEN}}
"""
KEY_ID = "AKIA" + secrets.token_hex(8).upper()
SECRET = secrets.token_urlsafe(30)
TOKEN = "token-" + secrets.token_urlsafe(60)
KEYS = {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": TOKEN}
# The workload's curl signs as any SDK would, with the keys its environment holds.
SIGNED_CURL = 'curl -sS --fail-with-body --aws-sigv4 "aws:amz:us-east-1:{service}" ' + (
    '--user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY"'
)


@pytest.fixture(scope="module")
def box(netns_prefix):
    with sandbox_in_own_lab(LAB, f"{netns_prefix}w", POLICY, {**os.environ, **KEYS}) as sandbox:
        yield sandbox


def echo(box: Sandbox, service: str, *curl: str) -> dict[str, Any]:
    script = SIGNED_CURL.format(service=service) + " " + " ".join(curl)
    result = box.sh(script)
    assert result.returncode == 0, result.stderr.decode() + result.stdout.decode()
    return dict(json.loads(result.stdout))


class AsReceived(SigV4Auth):
    """botocore's SigV4 over exactly the headers the signature names."""

    def __init__(self, credentials: Credentials, service: str, signed: list[str]) -> None:
        super().__init__(credentials, service, "us-east-1")
        self._signed = signed

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        headers = HTTPHeaders()
        for name in self._signed:
            headers[name] = request.headers[name]
        return headers


def assert_signed_by(
    received: dict[str, Any], service: str, key_id: str, secret: str, body: bytes = b""
) -> None:
    """The request the upstream received carries a valid SigV4 signature by these keys."""
    headers = received["headers"]
    authorization = headers["authorization"]
    scope, signed_headers, _ = (part.split("=", 1)[1] for part in authorization.split(", "))
    assert scope.split("/")[0] == key_id and scope.endswith(f"/us-east-1/{service}/aws4_request")
    signed = signed_headers.split(";")
    assert "host" in signed and "x-amz-date" in signed
    request = AWSRequest(
        method=received["method"],
        url=f"https://{received['host']}{received['path']}",
        data=body,
        headers={name: headers[name] for name in signed},
    )
    request.context["timestamp"] = headers["x-amz-date"]
    signer = AsReceived(Credentials(key_id, secret), service, signed)
    string_to_sign = signer.string_to_sign(request, signer.canonical_request(request))
    expected = (
        f"AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders={signed_headers}, "
        f"Signature={signer.signature(string_to_sign, request)}"
    )
    assert authorization == expected


def test_the_workload_holds_placeholders(box):
    out = box.sh("env").stdout.decode()
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert {k: env[k] for k in KEYS} == dict.fromkeys(KEYS, DEFAULT_PLACEHOLDER)


def test_nothing_the_workload_can_read_holds_the_keys(box):
    probe = Path(TESTS, "sandbox", "secret_probe.py")
    for key in (KEY_ID, SECRET, TOKEN):
        result = box.sh(f"python3 {probe} {key[:6]} {key[6:]}")
        report = json.loads(result.stdout)
        assert report["found"] == [] and report["mem"] == [], key[:4]


def test_s3_requests_leave_signed_with_the_operators_keys(box):
    received = echo(box, "s3", f"https://{S3}/bucket/some/key.txt?versionId=3")
    assert received["headers"]["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert_signed_by(received, "s3", KEY_ID, SECRET)
    assert "x-amz-security-token" not in received["headers"]  # that endpoint names none
    assert DEFAULT_PLACEHOLDER not in json.dumps(received["headers"])


def test_a_body_is_signed_with_its_hash_and_the_session_token_sent(box):
    body = b"Action=ListQueues&Version=2012-11-05"
    received = echo(box, "sqs", "--data-binary", f"'{body.decode()}'", f"https://{SQS}/")
    assert received["body_bytes"] == len(body)
    assert received["headers"]["x-amz-content-sha256"] == hashlib.sha256(body).hexdigest()
    assert received["headers"]["x-amz-security-token"] == TOKEN
    assert_signed_by(received, "sqs", KEY_ID, SECRET, body)


def test_a_body_too_large_to_sign_is_refused_as_such(box):
    """The signer hashes a body it holds whole, up to Envoy's connection buffer (1 MiB)."""
    curl = SIGNED_CURL.format(service="sqs").replace(" --fail-with-body", "")
    result = box.sh(
        f"head -c 2097152 /dev/zero | {curl} --http1.1 --data-binary @- https://{SQS}/big"
    )
    error = json.loads(result.stdout)["error"]
    assert (error["code"], error["rule"]) == ("POLICY_BLOCKED", "body_too_large"), error
    assert not any(r.get("path") == "/big" for r in box.received(SQS))
    (logged,) = decisions(box.decision_log, lambda d: d["path"] == "/big")
    assert (logged["judge"], logged["allow"], logged["rule"], logged["status"]) == (
        "envoy", False, "body_too_large", 413
    )  # fmt: skip


def test_other_hosts_and_plain_http_get_the_workloads_placeholder_signature(box):
    for url in ("https://example.com/elsewhere", f"http://{S3}/bucket/plain"):
        received = echo(box, "s3", url)
        assert_signed_by(received, "s3", DEFAULT_PLACEHOLDER, DEFAULT_PLACEHOLDER)
        assert KEY_ID not in json.dumps(received), url


def test_a_request_carrying_a_key_is_refused_whatever_the_host(box):
    for header in (
        f"authorization: AWS4-HMAC-SHA256 Credential={KEY_ID}/20261203/us-east-1/s3/aws4_request",
        f"x-amz-security-token: {TOKEN}",
    ):
        result = box.sh(f"curl -sS -H '{header}' https://example.com/leak")
        error = json.loads(result.stdout)["error"]
        assert error["rule"] == "credential_leaked", header
        assert "aws_signing[" in error["message"]
        assert KEY_ID not in error["message"] and TOKEN not in error["message"]
    assert not any(r.get("path") == "/leak" for r in box.received("example.com"))
    log = box.decision_log.read_text()
    assert KEY_ID not in log and SECRET not in log and TOKEN not in log
