"""The egress gateway's pod in the cluster: the agent and Envoy of an injected pod, serving the
explicit proxy (HTTPS_PROXY) of the seeds' `egress-proxy` Service instead of a workload's
captured traffic. Pure functions, rendered into the chart (template.py) as the injection is.

It needs no capability and no root: nothing is captured, clients come to it. So it runs under
Pod Security `restricted`. Its replicas share one CA (a Secret mounted into the agents only), so
a client trusts one certificate whichever replica it reaches; the clients' copy of that
certificate (a ConfigMap) and the variables naming it are `client_trust`.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from intercept_proxy import ports
from intercept_proxy.agent.settings import agent_command
from intercept_proxy.injector.pod import (
    AGENT,
    CA_DIR,
    CA_VOLUME,
    DEFAULT_MODE,
    ENVOY,
    NO_TOKEN_MOUNT,
    NO_TOKEN_VOLUME,
    POLICY_DIR,
    POLICY_FILE,
    POLICY_VOLUME,
    TRUST_VARIABLES,
    agent_secrets_and_probes,
    envoy_command,
    http_probe,
    restricted,
)
from intercept_proxy.injector.settings import InjectorSettings
from intercept_proxy.policy.combined import OverrideMode
from intercept_proxy.xds.bootstrap import Bootstrap

# The seeds' names: egress-proxy.egress-system.svc.cluster.local:3128.
NAME = "egress-proxy"
POLICY_CONFIG_MAP = f"{NAME}-policy"
CA_SECRET = f"{NAME}-ca"
# The credentials' secrets of the gateway's policy (`env:`), in its namespace: its own, not the
# sandboxes' (which no pod but an intercepted pod's agent may read).
CREDENTIALS_SECRET = f"{NAME}-credentials"
# The certificate clients trust (no key), cloned into their namespaces.
CLIENT_CA_CONFIG_MAP = f"{NAME}-ca"
CLIENT_CA_KEY = "ca.crt"
CLIENT_TRUST_VOLUME = f"{NAME}-ca"
CLIENT_TRUST_DIR = "/var/run/egress-proxy"
CLIENT_TRUST_FILE = f"{CLIENT_TRUST_DIR}/{CLIENT_CA_KEY}"
# With a policy per client pod, the agent (alone: Envoy keeps an empty directory there) watches
# its clients' pods with the token of this ServiceAccount (its ClusterRole: list and watch
# pods), projected as the ServiceAccount admission plugin would.
SERVICE_ACCOUNT = NAME
API_ACCESS_VOLUME = f"{NAME}-api-access"
API_TOKEN_SECONDS = 3607
# Every address of the pod: clients come from other pods, probes from the node.
EVERY_ADDRESS = ("0.0.0.0", "::")
# A replica stopping (a rollout, a scale-down, a drain) finishes the streams under way. Envoy's
# preStop hook says the pod is stopping (a file), then waits for `drained`: Envoy shuts down at
# once on SIGTERM, and its image has no client to drain itself. The agent's hook, seeing that
# file, drains Envoy and waits for its clients to leave (the pod's grace period, less a margin
# for the containers to stop), then writes `drained`. A hook of the agent's alone (a liveness
# restart) finds no such file and drains nothing. The Service sends a stopping replica no new
# client meanwhile.
DRAIN_VOLUME = "intercept-drain"
DRAIN_DIR = "/var/run/intercept-drain"
STOPPING_FILE = f"{DRAIN_DIR}/stopping"
DRAINED_FILE = f"{DRAIN_DIR}/drained"
ENVOY_PRE_STOP = [
    "sh", "-c",
    f"rm -f {DRAINED_FILE}; touch {STOPPING_FILE}; "
    f"until [ -e {DRAINED_FILE} ]; do sleep 0.2; done",
]  # fmt: skip
# Envoy's drain then asks every connection to close at its next answer (the default, gradual,
# asks a growing share of them over --drain-time-s: 600 s).
ENVOY_DRAIN_ARGS = ["--drain-strategy", "immediate"]


def _agent_pre_stop(s: InjectorSettings) -> list[str]:
    return [
        "intercept", "envoy", "drain", "--admin-port", str(ports.ENVOY_ADMIN),
        "--grace", str(s.gateway_grace_s), "--when", STOPPING_FILE, "--done", DRAINED_FILE,
    ]  # fmt: skip


def _pre_stop(command: list[str]) -> dict[str, Any]:
    return {"preStop": {"exec": {"command": command}}}


def reads_pods(s: InjectorSettings) -> bool:
    """Whether the gateway judges each client by its pod's policy too (it reads pods)."""
    return s.gateway_pod_policy is not OverrideMode.NONE


def _api_access() -> dict[str, Any]:
    """The projected volume of the agent's token, its API server's CA and its namespace."""
    namespace = {
        "path": "namespace",
        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
    }
    return {
        "name": API_ACCESS_VOLUME,
        "projected": {
            "defaultMode": 0o444,
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": API_TOKEN_SECONDS}},
                {
                    "configMap": {
                        "name": "kube-root-ca.crt",
                        "items": [{"key": "ca.crt", "path": "ca.crt"}],
                    }
                },
                {"downwardAPI": {"items": [namespace]}},
            ],
        },
    }


def _agent(s: InjectorSettings) -> dict[str, Any]:
    token = {**NO_TOKEN_MOUNT, "name": API_ACCESS_VOLUME if reads_pods(s) else NO_TOKEN_VOLUME}
    command = agent_command(
        policy=Path(POLICY_FILE),
        ca_cert=Path(CA_DIR, "tls.crt"),
        ca_key=Path(CA_DIR, "tls.key"),
        cert_validity=dt.timedelta(hours=s.cert_validity_hours),
        health_addresses=EVERY_ADDRESS,
        upstream_private_ranges=s.upstream_private_ranges,
        upstream_refused_ranges=s.kubernetes_api_cidrs,
        gateway_port=ports.ENVOY_GATEWAY,
        gateway_addresses=EVERY_ADDRESS,
        gateway_pod_policy=s.gateway_pod_policy,
        gateway_unknown_clients=s.gateway_unknown_clients,
    )
    return {
        "name": AGENT,
        "image": s.image,
        "imagePullPolicy": s.image_pull_policy,
        "command": command,
        "ports": [
            {"name": "health", "containerPort": ports.AGENT_HTTP, "protocol": "TCP"},
            {"name": "metrics", "containerPort": ports.AGENT_METRICS, "protocol": "TCP"},
        ],
        "resources": s.gateway_agent_resources.to_k8s(),
        "securityContext": restricted(s.gateway_uid),
        **agent_secrets_and_probes(CREDENTIALS_SECRET),
        "volumeMounts": [
            {"name": POLICY_VOLUME, "mountPath": POLICY_DIR, "readOnly": True},
            {"name": CA_VOLUME, "mountPath": CA_DIR, "readOnly": True},
            {"name": DRAIN_VOLUME, "mountPath": DRAIN_DIR},
            token,
        ],
        "lifecycle": _pre_stop(_agent_pre_stop(s)),
    }


def _envoy(s: InjectorSettings) -> dict[str, Any]:
    return {
        "name": ENVOY,
        "image": s.envoy_image,
        "imagePullPolicy": s.image_pull_policy,
        "command": [
            *envoy_command(Bootstrap(node_id="intercept-gateway", gateway=True)),
            *ENVOY_DRAIN_ARGS,
        ],
        "ports": [{"name": "proxy", "containerPort": ports.ENVOY_GATEWAY, "protocol": "TCP"}],
        "resources": s.gateway_envoy_resources.to_k8s(),
        "securityContext": restricted(s.gateway_uid),
        # Ready once Envoy has the agent's whole configuration, not ready while the agent
        # cannot answer: the Service then sends no client to this replica.
        "readinessProbe": http_probe("/readyz", failures=3),
        "volumeMounts": [
            {"name": DRAIN_VOLUME, "mountPath": DRAIN_DIR},
            dict(NO_TOKEN_MOUNT),
        ],
        "lifecycle": _pre_stop(ENVOY_PRE_STOP),
    }


def pod_spec(s: InjectorSettings) -> dict[str, Any]:
    """The gateway Deployment's pod spec (the chart adds its scheduling)."""
    return {
        # The namespace's `default` when it reads no pod (the chart makes no account then).
        "serviceAccountName": SERVICE_ACCOUNT if reads_pods(s) else "default",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": s.gateway_uid,
            "runAsGroup": s.gateway_uid,
            # The guardrails' minimum (require-pod-security-context) asks for one.
            "fsGroup": s.gateway_uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": s.gateway_grace_s,
        "containers": [_agent(s), _envoy(s)],
        "volumes": [
            {
                "name": POLICY_VOLUME,
                "configMap": {"name": POLICY_CONFIG_MAP, "defaultMode": DEFAULT_MODE},
            },
            # Mounted into the agents alone (Envoy gets certificates from them over SDS).
            {"name": CA_VOLUME, "secret": {"secretName": CA_SECRET, "defaultMode": 0o444}},
            {"name": DRAIN_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
            {"name": NO_TOKEN_VOLUME, "emptyDir": {}},
            *([_api_access()] if reads_pods(s) else []),
        ],
    }


def client_trust(s: InjectorSettings) -> dict[str, Any]:
    """What a client pod gets to trust the gateway's CA: the ConfigMap's key, the volume, its
    mount and the variables naming the certificate (those the injection sets for the sandbox
    CA)."""
    return {
        "key": CLIENT_CA_KEY,
        "env": [{"name": v, "value": CLIENT_TRUST_FILE} for v in TRUST_VARIABLES],
        "volumeMount": {
            "name": CLIENT_TRUST_VOLUME,
            "mountPath": CLIENT_TRUST_DIR,
            "readOnly": True,
        },
        "volume": {
            "name": CLIENT_TRUST_VOLUME,
            "configMap": {"name": CLIENT_CA_CONFIG_MAP, "defaultMode": DEFAULT_MODE},
        },
    }
