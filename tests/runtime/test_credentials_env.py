"""`intercept run`'s environments for the credentials and AWS signings: the agent's secrets from
the operator's environment, the workload's placeholders in their place (pure functions)."""

from __future__ import annotations

import pytest

from intercept_proxy.policy.model import PolicyError, parse_policy
from intercept_proxy.runtime.credentials import operator_secrets, workload_env

POLICY = parse_policy(
    """
credentials: [{host: api.test, header: x-api-key, env: API_KEY}]
aws_signing:
  - {host: s3.eu-west-3.amazonaws.com, service: s3, region: eu-west-3}
"""
)
OPERATOR = {
    "API_KEY": "api-secret-1234",
    "AWS_ACCESS_KEY_ID": "AKIDEXAMPLEKEY01",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-key-5678",
    "AWS_SESSION_TOKEN": "a-token-not-named",
    "AWS_SECURITY_TOKEN": "an-old-name-of-it",
    "COPY": "x api-secret-1234 y",
    "HOME": "/home/me",
}


def test_the_agent_gets_what_the_policy_names_the_workload_placeholders():
    secrets = operator_secrets(POLICY, OPERATOR)
    assert secrets == {
        k: OPERATOR[k] for k in ("API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    }
    env = workload_env(dict(OPERATOR), POLICY, secrets)
    placeholder = "intercept-proxy-placeholder"
    assert env == {
        "API_KEY": placeholder,
        "AWS_ACCESS_KEY_ID": placeholder,
        "AWS_SECRET_ACCESS_KEY": placeholder,
        # S3 uploads signed again by Envoy: SDKs send plain bodies.
        "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
        "HOME": "/home/me",
    }


def test_a_named_variable_missing_from_the_operators_environment():
    with pytest.raises(PolicyError, match=r"aws_signing\[0\].secret_access_key_env"):
        operator_secrets(POLICY, {"API_KEY": "k" * 10, "AWS_ACCESS_KEY_ID": "AKIDEXAMPLEKEY01"})


def test_without_aws_signing_the_aws_variables_are_the_workloads():
    plain = parse_policy("allowed_domains: [a.test]")
    assert workload_env({"AWS_PROFILE": "dev", "AWS_SESSION_TOKEN": "t"}, plain, {}) == {
        "AWS_PROFILE": "dev",
        "AWS_SESSION_TOKEN": "t",
    }
