"""Kyverno, installed as its release installs itself, but with its controllers out of cluster.

Into the cluster go its CRDs (server-side apply) and everything of its rendered install manifest
but the Deployments: the namespace, ServiceAccounts, ConfigMaps, RBAC and Services. The admission
controller and the background controller then run here as processes, with the arguments and
environment of their Deployments, but for what running outside a pod changes (the webhook URL,
ports, metrics off). They authenticate as their own ServiceAccounts, with tokens from the
TokenRequest API, so that Kyverno's stock RBAC is what is enforced: a policy that needs more
than stock Kyverno may do fails here as it would in a cluster.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from intercept_proxy.cluster.client import KubeClient
from intercept_proxy.cluster.kubeconfig import kubeconfig, write_kubeconfig
from intercept_proxy.cluster.layout import Config
from intercept_proxy.cluster.pki import ClusterPki
from intercept_proxy.cluster.tools import Tools

NAMESPACE = "kyverno"
ADMISSION = "kyverno-admission-controller"
BACKGROUND = "kyverno-background-controller"
# Kinds of the install manifest that go into the cluster (the Deployments run here instead;
# the CRDs come from the release's own CRD files).
INSTALLED_KINDS = (
    "Namespace",
    "ServiceAccount",
    "ConfigMap",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "Service",
)
# Aggregated ClusterRoles the controllers' bindings name: filled in by kube-controller-manager.
AGGREGATED_ROLES = ("kyverno:admission-controller", "kyverno:background-controller")
POLICY_WEBHOOK = "kyverno-policy-validating-webhook-cfg"
# A month: the controllers read their kubeconfig once; `scripts/cluster up` lives that long.
TOKEN_SECONDS = 30 * 24 * 3600
# Flags of the Deployments replaced or dropped out of cluster (metrics: no scraper, no port).
DROPPED_FLAGS = ("metricsPort", "servicePort")


@dataclass(frozen=True)
class Controller:
    deployment: str
    binary: str
    service_account: str


CONTROLLERS = (
    Controller(ADMISSION, "kyverno", ADMISSION),
    Controller(BACKGROUND, "background-controller", BACKGROUND),
)


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DOCUMENT_SEPARATOR = re.compile(r"^---[ \t]*$", re.MULTILINE)
_CRD = re.compile(r"^kind:[ \t]*CustomResourceDefinition[ \t]*$", re.MULTILINE)


def install_documents(tools: Tools) -> list[dict[str, Any]]:
    """The install manifest's documents but its CRDs (5 MB of the 6, skipped unparsed)."""
    chunks = _DOCUMENT_SEPARATOR.split(tools.kyverno_install.read_text())
    docs = (yaml.load(c, Loader=_LOADER) for c in chunks if not _CRD.search(c))
    return [d for d in docs if d]


def crd_documents(tools: Tools) -> list[dict[str, Any]]:
    docs = []
    for path in sorted(tools.kyverno_crds.rglob("*.yaml")):
        docs += [d for d in yaml.load_all(path.read_text(), Loader=_LOADER) if d]
    return docs


def cluster_objects(documents: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The install manifest's objects that go into the cluster, in an order that applies."""
    docs = [d for d in documents if d.get("kind") in INSTALLED_KINDS]
    return sorted(docs, key=lambda d: INSTALLED_KINDS.index(d["kind"]))


def deployment(documents: Iterable[dict[str, Any]], name: str) -> dict[str, Any]:
    for d in documents:
        if d.get("kind") == "Deployment" and d["metadata"]["name"] == name:
            return d
    raise ValueError(f"no Deployment {name} in Kyverno's install manifest")


def _flag_name(arg: str) -> str:
    return arg.lstrip("-").split("=", 1)[0]


def controller_argv(
    tools: Tools, manifest: dict[str, Any], controller: Controller, overrides: dict[str, str]
) -> list[str]:
    """The Deployment's container args, with `overrides` replacing flags of the same name."""
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    args = [
        a
        for a in container.get("args") or []
        if _flag_name(a) not in overrides and _flag_name(a) not in DROPPED_FLAGS
    ]
    return [
        str(tools.binary(controller.binary)),
        *args,
        *(f"--{k}={v}" for k, v in overrides.items()),
    ]


def controller_env(manifest: dict[str, Any], pod_name: str, home: Path) -> dict[str, str]:
    """The Deployment's container env, the downward API answered as the pod would be."""
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    fields = {"metadata.namespace": NAMESPACE, "metadata.name": pod_name}
    env = {}
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
    # Sigstore's cache and anything else written to the home: the state dir, not the host's /.
    env["TUF_ROOT"] = str(home / "sigstore")
    env["HOME"] = str(home)
    return env


def overrides(config: Config, controller: Controller, kubeconfig_path: Path) -> dict[str, str]:
    common = {
        "kubeconfig": str(kubeconfig_path),
        # No metrics: with "prometheus" Kyverno serves them on every address of the host,
        # whatever disableMetrics says; "grpc" with disableMetrics starts nothing.
        "disableMetrics": "true",
        "otelConfig": "grpc",
        "controllerRuntimeMetricsAddress": "0",
        "disableLogColor": "true",
        # PolicyExceptions (off in Kyverno's install manifest), from Kyverno's own namespace:
        # the chart's exception for proxy-init lives there (docs/kubernetes.md asks the same).
        "enablePolicyException": "true",
        "exceptionNamespace": NAMESPACE,
    }
    if controller.deployment != ADMISSION:
        return common
    port = config.ports.kyverno_webhook
    return common | {
        # Out of cluster: webhooks call https://SERVERIP/PATH (the port is part of it).
        "serverIP": f"127.0.0.1:{port}",
        "webhookServerHost": "127.0.0.1",
        "webhookServerPort": str(port),
        # No reports controller runs to consume admission reports.
        "admissionReports": "false",
    }


def request_token(client: KubeClient, service_account: str, seconds: int = TOKEN_SECONDS) -> str:
    path = f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{service_account}/token"
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": seconds},
    }
    token: str = client.create(path, body)["status"]["token"]
    return token


def write_controller_kubeconfig(
    client: KubeClient, config: Config, pki: ClusterPki, controller: Controller
) -> Path:
    token = request_token(client, controller.service_account)
    user = f"system:serviceaccount:{NAMESPACE}:{controller.service_account}"
    path = config.path("kubeconfigs", f"{controller.deployment}.kubeconfig")
    return write_kubeconfig(path, kubeconfig(config.server, pki.ca, user, token=token))


def install(
    client: KubeClient,
    crds: list[dict[str, Any]],
    documents: list[dict[str, Any]],
    timeout: float = 60.0,
) -> None:
    """Apply the CRDs and the cluster objects; wait until the CRDs are established. The CRDs go
    one at a time: each big one costs the API server a second or more of CPU, and sent at once
    they were established later, not sooner (measured here with 1, 2, 4 and 8 at once)."""
    for crd in crds:
        client.apply(crd)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(client.apply, cluster_objects(documents)))

    def established() -> bool:
        for crd in crds:
            path = (
                f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}"
            )
            conditions = (client.get(path).get("status") or {}).get("conditions") or []
            if not any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                return False
        return True

    client.wait_for("Kyverno's CRDs established", established, timeout)


def roles_aggregated(client: KubeClient) -> bool:
    for name in AGGREGATED_ROLES:
        role = client.get(f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}")
        if not role.get("rules"):
            return False
    return True
