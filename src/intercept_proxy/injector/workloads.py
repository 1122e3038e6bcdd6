"""Injection into whatever carries a Pod template: Pods, Deployments, StatefulSets, DaemonSets,
ReplicaSets, Jobs and CronJobs. What is not labelled passes through unchanged."""

from __future__ import annotations

import copy
from typing import Any

from intercept_proxy.injector.pod import inject_pod_spec, is_enabled
from intercept_proxy.injector.settings import InjectorSettings

# Where each kind keeps its Pod (metadata and spec).
TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


def inject_object(obj: dict[str, Any], s: InjectorSettings) -> dict[str, Any]:
    path = TEMPLATE_PATHS.get(obj.get("kind", ""))
    if path is None:
        return obj
    out = copy.deepcopy(obj)
    holder = out
    for key in path:
        holder = holder.setdefault(key, {})
    metadata = holder.get("metadata") or {}
    if not is_enabled(metadata):
        return obj
    holder["metadata"], holder["spec"] = inject_pod_spec(metadata, holder.get("spec") or {}, s)
    return out
