"""`intercept run` and the policy's credentials: the operator's environment holds the secrets the
policy names (`env:`); the agent gets them from the injection's credentials Secret, and the
workload gets the placeholders in their place."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from intercept_proxy.policy.model import Policy, PolicyError


def operator_secrets(policy: Policy, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables the credentials name, from the operator's environment."""
    out = {}
    for i, credential in enumerate(policy.credentials):
        if credential.env is None:
            continue
        value = environ.get(credential.env)
        if value is None:
            raise PolicyError(
                policy.source,
                f"credentials[{i}].env",
                f"{credential.env} is not set in your environment (the agent sends its value, "
                "the workload gets a placeholder)",
            )
        out[credential.env] = value
    return out


def workload_env(env: dict[str, str], policy: Policy, secrets: Mapping[str, str]) -> dict[str, str]:
    """`env` with each credential's variable holding its placeholder, and without any other
    variable that holds a secret."""
    out = {k: v for k, v in env.items() if not any(s in v for s in secrets.values())}
    for credential in policy.credentials:
        if credential.env is not None:
            out[credential.env] = credential.placeholder
    return out


def agent_secret(name: str, secrets: Mapping[str, str]) -> dict[str, Any]:
    """The Secret the injected agent reads into its environment."""
    return {"kind": "Secret", "metadata": {"name": name}, "stringData": dict(secrets)}
