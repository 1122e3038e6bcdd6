"""Which containers of a pod the node trusts: only the interceptor's, verified.

A pod annotated `intercept-proxy/injected: "true"` whose first three init containers and
intercept-* volumes are what an installed release of the chart injects runs with its sidecars
trusted (proxy-init as root with NET_ADMIN and NET_RAW, or in CNI mode as its check's user, the
agent and Envoy as their users). A release is known by its injection ClusterPolicy
(`<release>-inject-proxy`, labelled `app.kubernetes.io/name: intercept-proxy`): cluster-scoped,
so only who may change the cluster's admission may describe one, and it holds the very
containers and volumes Kyverno adds. What is compared is what the chart's validation compares
(`injector.pod.verified`): other admission plugins may have set resources and pull policies. Any
other pod runs untrusted: the local runtime's admission then refuses root and the sidecar users.

A pod that asks for the node itself (its network, hostNetwork; its files, hostPath volumes) runs
only as a node agent: the pod of a DaemonSet that exists (its controller reference's uid), in a
namespace whose Pod Security level is explicitly `privileged` (the chart's CNI node agent is
one), which is what lets the API server admit such a pod at all: who may make pods there may
have the node's root, as on any node. Its containers are then all trusted, and the node gives
it its network namespace and its own filesystem. Any other such pod is refused by the
runtime's admission, with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from intercept_proxy.injector.pod import INTERCEPTOR_PREFIX, SIDECARS, is_injected, verified

SELECTOR = "app.kubernetes.io/name=intercept-proxy"
PRIVILEGED_LABEL, PRIVILEGED = "pod-security.kubernetes.io/enforce", "privileged"
POLICY_SUFFIX = "-inject-proxy"
# The injection policy's rules that add the sidecars and the volumes (charts/intercept-proxy).
SIDECAR_RULE, VOLUME_RULE = "add-sidecars", "add-volumes"


@dataclass(frozen=True)
class Release:
    source: str  # the ClusterPolicy's name
    sidecars: tuple[dict[str, Any], ...]
    volumes: tuple[dict[str, Any], ...]
    problem: str = ""


def _added(policy: Mapping[str, Any], rule: str) -> list[Any]:
    """The values a rule's JSON patches add, in order."""
    for r in (policy.get("spec") or {}).get("rules") or []:
        if r.get("name") == rule:
            patches = yaml.safe_load(r["mutate"]["patchesJson6902"])
            return [p["value"] for p in patches if p.get("op") == "add"]
    raise KeyError(rule)


def releases(policies: Iterable[Mapping[str, Any]]) -> list[Release]:
    """The releases the chart's injection policies describe (a broken one says why)."""
    out = []
    for policy in policies:
        name = str((policy.get("metadata") or {}).get("name", ""))
        if not name.endswith(POLICY_SUFFIX):
            continue
        try:
            sidecars = tuple(_added(policy, SIDECAR_RULE))
            added = tuple(_added(policy, VOLUME_RULE))
        except (KeyError, TypeError, yaml.YAMLError) as e:
            out.append(Release(name, (), (), f"not the chart's injection ({e})"))
            continue
        if len(sidecars) != len(SIDECARS):
            out.append(Release(name, (), (), f"adds {len(sidecars)} containers, not 3"))
            continue
        out.append(Release(name, sidecars, added))
    return sorted(out, key=lambda r: r.source)


@dataclass(frozen=True)
class Trust:
    trusted: frozenset[str]
    explanation: str


def _difference(spec: Mapping[str, Any], release: Release) -> str:
    init = spec.get("initContainers") or []
    for index, expected in enumerate(release.sidecars):
        actual = init[index] if index < len(init) else None
        if verified(actual) != verified(expected):
            return f"initContainers[{index}] is not its {expected.get('name')}"
    theirs = [
        v
        for v in spec.get("volumes") or []
        if str(v.get("name", "")).startswith(INTERCEPTOR_PREFIX)
    ]
    if theirs != list(release.volumes):
        return f"the {INTERCEPTOR_PREFIX}* volumes are not its"
    return ""


def decide(pod: Mapping[str, Any], known: Iterable[Release]) -> Trust:
    if not is_injected(pod.get("metadata") or {}):
        return Trust(frozenset(), "not annotated intercept-proxy/injected")
    problems = []
    for release in known:
        difference = release.problem or _difference(pod.get("spec") or {}, release)
        if not difference:
            return Trust(frozenset(SIDECARS), f"interceptor verified against {release.source}")
        problems.append(f"{release.source}: {difference}")
    if not problems:
        return Trust(
            frozenset(),
            "annotated intercept-proxy/injected, but no injection ClusterPolicy of the chart "
            f"({SELECTOR}) is installed to verify it against",
        )
    return Trust(
        frozenset(),
        "annotated intercept-proxy/injected, but its interceptor is no release's: "
        + "; ".join(problems),
    )


def wants_host(pod: Mapping[str, Any]) -> bool:
    """Whether `pod` asks for the node's network or files."""
    spec = pod.get("spec") or {}
    return bool(spec.get("hostNetwork")) or any("hostPath" in v for v in spec.get("volumes") or [])


def controller(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The pod's controller's owner reference, if it has one."""
    owners = (pod.get("metadata") or {}).get("ownerReferences") or []
    return next((o for o in owners if isinstance(o, dict) and o.get("controller")), None)


def node_agent(
    pod: Mapping[str, Any],
    namespace_labels: Mapping[str, str],
    daemonset: Mapping[str, Any] | None,
) -> Trust:
    """The trust of a pod that asks for the node: all its containers, if it is a node agent.
    `daemonset`: its controller as the API server has it (None: no such DaemonSet)."""
    meta = pod.get("metadata") or {}
    owner = controller(pod) or {}
    if namespace_labels.get(PRIVILEGED_LABEL) != PRIVILEGED:
        return Trust(
            frozenset(),
            f"it asks for the node, and its namespace {meta.get('namespace')} is not labelled "
            f"{PRIVILEGED_LABEL}={PRIVILEGED}",
        )
    uid = ((daemonset or {}).get("metadata") or {}).get("uid")
    if owner.get("kind") != "DaemonSet" or not uid or owner.get("uid") != uid:
        return Trust(frozenset(), "it asks for the node, and no DaemonSet controls it")
    spec = pod.get("spec") or {}
    names = [c.get("name") for k in ("initContainers", "containers") for c in spec.get(k) or []]
    return Trust(
        frozenset(str(n) for n in names),
        f"a node agent: DaemonSet {owner.get('name')} in {meta.get('namespace')}, "
        f"{PRIVILEGED_LABEL}={PRIVILEGED}",
    )
