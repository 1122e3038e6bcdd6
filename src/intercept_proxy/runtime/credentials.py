"""`intercept run` and the policy's credentials and AWS signings: the operator's environment holds
the secrets the policy names (`env:`, the AWS keys' variables); the agent gets them from the
injection's credentials Secret, and the workload gets the placeholders in their place."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from intercept_proxy.policy.credentials import DEFAULT_PLACEHOLDER
from intercept_proxy.policy.model import Policy, PolicyError

# With AWS signing, the SDK's variables of AWS credentials: the workload gets none of the
# operator's (those the policy names hold the placeholder).
AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
)
# SDKs send S3 uploads as aws-chunked with a streaming checksum, which only a signature over
# that streaming value makes S3 decode; Envoy signs S3 with an unsigned payload: ask for the
# checksum only where the API requires it.
AWS_SDK_SETTINGS = {"AWS_REQUEST_CHECKSUM_CALCULATION": "when_required"}


def placeholders(policy: Policy) -> dict[str, str]:
    """The variables the credentials and AWS signings name, each with the workload's
    placeholder."""
    out = {c.env: c.placeholder for c in policy.credentials if c.env is not None}
    for signing in policy.aws_signing:
        out |= dict.fromkeys(signing.variables, DEFAULT_PLACEHOLDER)
    return out


def _located(policy: Policy) -> dict[str, str]:
    """Where the policy names each variable (for errors)."""
    out = {c.env: f"credentials[{i}].env" for i, c in enumerate(policy.credentials) if c.env}
    for i, signing in enumerate(policy.aws_signing):
        for key in ("access_key_id_env", "secret_access_key_env", "session_token_env"):
            name = getattr(signing, key)
            if name is not None:
                out.setdefault(name, f"aws_signing[{i}].{key}")
    return out


def operator_secrets(policy: Policy, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables the credentials and AWS signings name, from the operator's environment."""
    out = {}
    for name, where in _located(policy).items():
        value = environ.get(name)
        if value is None:
            raise PolicyError(
                policy.source,
                where,
                f"{name} is not set in your environment (the agent sends its value, the "
                "workload gets a placeholder)",
            )
        out[name] = value
    return out


def workload_env(env: dict[str, str], policy: Policy, secrets: Mapping[str, str]) -> dict[str, str]:
    """`env` with each secret's variable holding its placeholder, and without any other variable
    that holds a secret."""
    dropped = set(AWS_VARIABLES) if policy.aws_signing else set()
    out = {
        k: v
        for k, v in env.items()
        if k not in dropped and not any(s in v for s in secrets.values())
    }
    return out | placeholders(policy) | (AWS_SDK_SETTINGS if policy.aws_signing else {})


def agent_secret(name: str, secrets: Mapping[str, str]) -> dict[str, Any]:
    """The Secret the injected agent reads into its environment."""
    return {"kind": "Secret", "metadata": {"name": name}, "stringData": dict(secrets)}
