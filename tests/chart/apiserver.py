"""What the Kubernetes API server does to a Pod around Kyverno's webhooks, as far as the chart's
policies can tell: the ServiceAccount admission plugin before the mutating webhooks, defaulting
after them (the validating webhooks see the defaulted pod, and so would every later UPDATE),
and its own refusals. Modelled on k8s.io/kubernetes pkg/apis/core/v1/defaults.go and
k8s.io/apimachinery's resource.Quantity, for the fields pods here use.
"""

from __future__ import annotations

import copy
from typing import Any

from intercept_proxy.injector.settings import canonical_quantity

TOKEN_VOLUME = "kube-api-access-7hq2x"
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
PROBES = ("livenessProbe", "readinessProbe", "startupProbe")
PROBE_DEFAULTS = {
    "timeoutSeconds": 1,
    "periodSeconds": 10,
    "successThreshold": 1,
    "failureThreshold": 3,
}
POD_DEFAULTS = {
    "restartPolicy": "Always",
    "terminationGracePeriodSeconds": 30,
    "dnsPolicy": "ClusterFirst",
    "securityContext": {},
    "schedulerName": "default-scheduler",
    "enableServiceLinks": True,
}
DEFAULT_MODE = 0o644  # configMap, secret, downwardAPI and projected volumes'
TOKEN_SOURCES = [
    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
    {
        "downwardAPI": {
            "items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]
        }
    },
]


def _pull_policy(image: str) -> str:
    tag = image.split("@")[0].rpartition("/")[2].partition(":")[2]
    return "Always" if tag in ("", "latest") else "IfNotPresent"


def _field_refs(items: list[dict[str, Any]]) -> None:
    for item in items:
        if "fieldRef" in item:
            item["fieldRef"].setdefault("apiVersion", "v1")


def _resources(resources: dict[str, Any]) -> dict[str, Any]:
    """Requests default to limits; quantities are written back canonical; empty maps vanish."""
    limits = {k: canonical_quantity(v, k) for k, v in (resources.get("limits") or {}).items()}
    requests = {k: canonical_quantity(v, k) for k, v in (resources.get("requests") or {}).items()}
    requests = {**limits, **requests}
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def _container(container: dict[str, Any]) -> None:
    container.setdefault("imagePullPolicy", _pull_policy(container.get("image", "")))
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    for port in container.get("ports") or []:
        port.setdefault("protocol", "TCP")
    _field_refs([e["valueFrom"] for e in container.get("env") or [] if "valueFrom" in e])
    for name in PROBES:
        if name in container:
            probe = container[name]
            for field, value in PROBE_DEFAULTS.items():
                probe.setdefault(field, value)
            if "httpGet" in probe:
                probe["httpGet"].setdefault("path", "/")
                probe["httpGet"].setdefault("scheme", "HTTP")
    if "resources" in container:
        container["resources"] = _resources(container["resources"])


def _volume(volume: dict[str, Any]) -> None:
    for kind in ("configMap", "secret", "downwardAPI", "projected"):
        if kind in volume:
            volume[kind].setdefault("defaultMode", DEFAULT_MODE)
    _field_refs((volume.get("downwardAPI") or {}).get("items") or [])
    for source in (volume.get("projected") or {}).get("sources") or []:
        _field_refs((source.get("downwardAPI") or {}).get("items") or [])
        if "serviceAccountToken" in source:
            source["serviceAccountToken"].setdefault("expirationSeconds", 3600)
    empty_dir = volume.get("emptyDir") or {}
    if "sizeLimit" in empty_dir:
        empty_dir["sizeLimit"] = canonical_quantity(empty_dir["sizeLimit"], "sizeLimit")


def defaulted(pod: dict[str, Any]) -> dict[str, Any]:
    """The pod as stored, and as validating webhooks receive it."""
    out = copy.deepcopy(pod)
    spec = out["spec"]
    for field, value in POD_DEFAULTS.items():
        spec.setdefault(field, copy.deepcopy(value))
    for field in CONTAINER_LISTS:
        for container in spec.get(field) or []:
            _container(container)
    for volume in spec.get("volumes") or []:
        _volume(volume)
    return out


def with_service_account_token(pod: dict[str, Any]) -> dict[str, Any]:
    """The ServiceAccount admission plugin, which runs before any webhook: unless the pod says
    automountServiceAccountToken: false, the token volume (its own kube-api-access-* if it has
    one) is mounted into every container with nothing mounted at the token's path."""
    out = copy.deepcopy(pod)
    spec = out["spec"]
    if spec.get("automountServiceAccountToken") is False:
        return out
    volumes = spec.setdefault("volumes", [])
    existing = [v["name"] for v in volumes if v["name"].startswith("kube-api-access-")]
    mount = {"name": (existing or [TOKEN_VOLUME])[0], "mountPath": TOKEN_PATH, "readOnly": True}
    needed = False
    for field in ("initContainers", "containers"):
        for container in spec.get(field) or []:
            mounts = container.setdefault("volumeMounts", [])
            if all(m["mountPath"] != TOKEN_PATH for m in mounts):
                mounts.append(dict(mount))
                needed = True
    if needed and not existing:
        volumes.append({"name": TOKEN_VOLUME, "projected": {"sources": TOKEN_SOURCES}})
    return out


def refusals(pod: dict[str, Any], created: bool = True) -> list[str]:
    """What the API server refuses before Kyverno's validation is asked: a name twice, and
    ephemeral containers in a pod being created (they join through their subresource only)."""
    spec = pod["spec"]
    containers = [c["name"] for field in CONTAINER_LISTS for c in spec.get(field) or []]
    volumes = [v["name"] for v in spec.get("volumes") or []]
    refused = [
        f"duplicate {what} {n}"
        for what, names in (("container", containers), ("volume", volumes))
        for n in sorted(set(names))
        if names.count(n) > 1
    ]
    if created and spec.get("ephemeralContainers"):
        refused.append("ephemeralContainers on create")
    return refused
