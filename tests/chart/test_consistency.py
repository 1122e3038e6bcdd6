"""The chart's Kyverno policies do what the injector does: for every set of values, sample pods
admitted through <release>-inject-proxy come out exactly as inject_object() makes them, and the
pods the injector refuses are refused by <release>-validate-pods.

The admission is simulated (tests/chart/kyverno.py, tests/chart/jmespath.py), after Kyverno's
engine, for the features the chart's policies use and no others (anything else raises
UnsupportedError):
- rules in order, each matched against the pod as the rules before it left it: kinds,
  operations, selector.matchLabels, annotations (with wildcards), `any` blocks of match/exclude;
- preconditions and deny conditions (`any`/`all`) with Equals, NotEquals, AnyIn, AnyNotIn and
  GreaterThan, for the types the chart compares (numbers with Equals, strings with AnyIn);
- variables: Kyverno's regular expression, a string that is one variable replaced by its value,
  values written into text (strings raw, the rest as Go's JSON) and the text scanned again,
  escaped `\\{{`; `$(...)` references are not simulated (and must not occur);
- JMESPath: the subset listed in jmespath.py, with Kyverno's failure on a missing key and its
  retry of a top-level `||` chain operand by operand;
- foreach: the list evaluated once (a non-list value is a one-element list, null elements
  skipped), `order`, per-element preconditions, nesting with element<N>/elementIndex<N>;
- patchesJson6902 parsed as YAML and applied per RFC 6902 (add, remove, replace), strictly:
  Kyverno's leniency (missing parents created, removals of missing paths ignored) is not used;
- patchStrategicMerge: maps merged, scalars and lists of scalars replaced, `+(key)` added only
  when absent, lists of maps patched through a `(name)` conditional anchor;
- request.object catching up with the patched pod after each rule and/or each foreach
  declaration, or never: all four combinations must give the same pod;
- validate rules: `deny` and `foreach` with `deny`, on the pod as the mutations left it.

Not simulated: the API server around Kyverno (defaulting, other admission plugins and webhooks;
only its refusal of duplicate container and volume names is modelled), autogen (disabled by
the policies' annotation), background scans, generate rules, PolicyExceptions, and Kyverno's
own checks of a policy when it is created (the JSON patches' shape is checked in test_chart).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from typing import Any

import kubernetes_validate
import pytest

from intercept_proxy.injector.pod import InjectionError
from intercept_proxy.injector.values import settings_from_values
from intercept_proxy.injector.workloads import inject_object
from tests.chart import render
from tests.chart.kyverno import Admission, violations

LABELS = {"intercept-proxy/enabled": "true"}


def pod(name: str, spec: dict[str, Any], **metadata: Any) -> dict[str, Any]:
    meta = {"name": name, "namespace": "agents", "labels": dict(LABELS), **metadata}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def container(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "image": "python:3.12-slim", "command": ["python", "-m", name], **fields}


MINIMAL = pod("minimal", {"containers": [container("app")]})

INIT_AND_OVERRIDE = pod(
    "init-and-override",
    {
        "securityContext": {"runAsUser": 12345, "runAsGroup": 12345},
        "initContainers": [container("fetch", image="curlimages/curl:8.11.1")],
        "containers": [container("app", env=[{"name": "SSL_CERT_FILE", "value": "/mine.pem"}])],
        "volumes": [{"name": "work", "emptyDir": {}}],
    },
)

# Everything at once: several containers, trust variables in the middle of env (one from a
# Secret), text Kyverno would take for variables or references if it ever reached a patch's
# text, existing mounts and security contexts, the service account token the API server
# projects before webhooks run, annotations (the pod's own policy among them).
TOKEN = {
    "name": "kube-api-access-x7k2p",
    "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]},
}
TOKEN_MOUNT = {
    "name": "kube-api-access-x7k2p",
    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
    "readOnly": True,
}
SECRET_REF = {"secretKeyRef": {"name": "bundles", "key": "ca.pem"}}
RICH = pod(
    "rich",
    {
        "securityContext": {"runAsUser": 12345, "fsGroup": 2000},
        "initContainers": [
            container("migrate", env=[], volumeMounts=[]),
            container(
                "warm-cache",
                env=[
                    {"name": "CACHE", "value": "/cache"},
                    {"name": "PIP_CERT", "value": "/etc/pip.pem"},
                ],
                securityContext={"runAsUser": 3000, "allowPrivilegeEscalation": False},
                volumeMounts=[{"name": "cache", "mountPath": "/cache"}],
            ),
        ],
        "containers": [
            container(
                "app",
                env=[
                    {"name": "TEMPLATE", "value": "{{ request.object.metadata.name }}"},
                    {"name": "REQUESTS_CA_BUNDLE", "valueFrom": SECRET_REF},
                    {"name": "HOME_REF", "value": "$(HOME)/x"},
                    {"name": "ESCAPED", "value": "\\{{ not.a.variable }}"},
                    {"name": "SSL_CERT_FILE", "value": "/mine.pem"},
                    {"name": "LAST", "value": "1"},
                ],
                securityContext={
                    "capabilities": {"add": ["net_bind_service"], "drop": ["NET_RAW"]},
                    "seccompProfile": {"type": "Localhost", "localhostProfile": "agent.json"},
                    "readOnlyRootFilesystem": True,
                },
                volumeMounts=[{"name": "cache", "mountPath": "/cache"}, TOKEN_MOUNT],
            ),
            container("sidecar-logs", securityContext={}, volumeMounts=[TOKEN_MOUNT]),
            container(
                "worker",
                securityContext={"runAsNonRoot": False, "runAsUser": 2000},
                env=[{"name": "CARGO_HTTP_CAINFO", "value": "/x"}],
            ),
        ],
        "volumes": [{"name": "cache", "emptyDir": {}}, TOKEN],
        "serviceAccountName": "agents",
    },
    annotations={
        "intercept-proxy/opa-data": "allowed_domains: [pypi.org]\n",
        "team": "{{ not.a.variable }}",
    },
)

EMPTY_LISTS = pod(
    "empty-lists",
    {
        "initContainers": [],
        "containers": [container("app", env=[], volumeMounts=[], securityContext={})],
        "volumes": [],
        "automountServiceAccountToken": True,
    },
    annotations={},
)

INJECTED = pod(
    "injected-already",
    {"containers": [container("app")]},
    annotations={"intercept-proxy/injected": "true"},
)

UNLABELLED = {**MINIMAL, "metadata": {"name": "unlabelled", "labels": {"app": "x"}}}

SAMPLES = {
    p["metadata"]["name"]: p
    for p in (MINIMAL, INIT_AND_OVERRIDE, RICH, EMPTY_LISTS, INJECTED, UNLABELLED)
}
CONTEXT_MODES = list(itertools.product([True, False], repeat=2))


def settings(case: str) -> Any:
    return settings_from_values(render.values(case), render.release(case))


def admit(case: str, sample: dict[str, Any], **modes: bool) -> dict[str, Any]:
    policy = render.find(case, "ClusterPolicy", "inject-proxy")
    return Admission(sample, **modes).mutate(policy)


@pytest.mark.parametrize("case", render.CASES)
@pytest.mark.parametrize("sample", SAMPLES)
def test_the_policy_injects_exactly_what_the_injector_does(case, sample):
    expected = inject_object(SAMPLES[sample], settings(case))
    for after_rule, after_foreach in CONTEXT_MODES:
        admitted = admit(
            case,
            SAMPLES[sample],
            refresh_after_rule=after_rule,
            refresh_after_foreach=after_foreach,
        )
        assert admitted == expected, (
            f"{case}/{sample}: the Kyverno policy and the injector disagree "
            f"(request.object refreshed after rules: {after_rule}, after foreach: {after_foreach})"
        )


@pytest.mark.parametrize("case", render.CASES)
def test_the_projected_token_is_unmounted_unless_automount_is_on(case):
    automount = render.values(case)["serviceAccountToken"]["automount"]
    spec = admit(case, RICH)["spec"]
    volumes = [v["name"] for v in spec["volumes"]]
    mounts = [m["name"] for c in spec["containers"] for m in c.get("volumeMounts", [])]
    assert (TOKEN["name"] in volumes) == automount
    assert (TOKEN["name"] in mounts) == automount
    assert ("cache" in volumes) and ("cache" in mounts)
    assert spec.get("automountServiceAccountToken", True) == automount


@pytest.mark.parametrize("case", render.CASES)
def test_injected_pods_are_valid_pods(case):
    for sample in (MINIMAL, RICH, EMPTY_LISTS):
        kubernetes_validate.validate(admit(case, sample), "1.31", strict=True)


def api_server_refusals(p: dict[str, Any]) -> list[str]:
    """What the API server refuses before Kyverno's validation is asked: a name twice."""
    spec = p["spec"]
    containers = [c["name"] for c in spec.get("initContainers", []) + spec["containers"]]
    volumes = [v["name"] for v in spec.get("volumes", [])]
    return [
        f"duplicate {what} {n}"
        for what, names in (("container", containers), ("volume", volumes))
        for n in sorted(set(names))
        if names.count(n) > 1
    ]


def refusals(case: str, sample: dict[str, Any]) -> list[str]:
    """Why the cluster refuses the pod once mutated, if it does."""
    admitted = admit(case, sample)
    policy = render.find(case, "ClusterPolicy", "validate-pods")
    return api_server_refusals(admitted) + violations(policy, admitted)


def _app(p: dict[str, Any]) -> dict[str, Any]:
    return p["spec"]["containers"][0]


def _init(p: dict[str, Any]) -> dict[str, Any]:
    return p["spec"]["initContainers"][0]


def _set(where: Callable[[dict], dict], key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(p: dict[str, Any]) -> None:
        where(p)[key] = value

    return change


def _context(where: Callable[[dict], dict], **fields: Any) -> Callable[[dict[str, Any]], None]:
    def change(p: dict[str, Any]) -> None:
        where(p).setdefault("securityContext", {}).update(fields)

    return change


def _pod_context(**fields: Any) -> Callable[[dict[str, Any]], None]:
    return _context(lambda p: p["spec"], **fields)


# Each breaks one of the injector's rules (check_pod, check_workload) on INIT_AND_OVERRIDE.
REFUSED: dict[str, Callable[[dict[str, Any]], None]] = {
    "pod-runs-as-root": _pod_context(runAsUser=0),
    "pod-runs-as-envoy": _pod_context(runAsUser=-101),  # -101: Envoy's UID of the case
    "container-runs-as-agent": _context(_app, runAsUser=-102),
    "init-container-runs-as-root": _context(_init, runAsUser=0),
    "pod-group-0": _pod_context(runAsGroup=0),
    "fs-group-0": _pod_context(fsGroup=0),
    "supplemental-group-0": _pod_context(supplementalGroups=[5, 0]),
    "container-group-0": _context(_app, runAsGroup=0),
    "privileged": _context(_app, privileged=True),
    "privilege-escalation": _context(_init, allowPrivilegeEscalation=True),
    "net-admin-lower-case": _context(_app, capabilities={"add": ["net_admin"]}),
    "net-raw": _context(_init, capabilities={"add": ["NET_RAW"]}),
    "sys-ptrace": _context(_app, capabilities={"add": ["NET_BIND_SERVICE", "SYS_PTRACE"]}),
    "host-network": _set(lambda p: p["spec"], "hostNetwork", True),
    "host-pid": _set(lambda p: p["spec"], "hostPID", True),
    "host-ipc": _set(lambda p: p["spec"], "hostIPC", True),
    "share-process-namespace": _set(lambda p: p["spec"], "shareProcessNamespace", True),
    "named-envoy": _set(_app, "name", "envoy"),
    "named-proxy-init": _set(_init, "name", "proxy-init"),
    "reserved-volume": _set(
        lambda p: p["spec"], "volumes", [{"name": "intercept-ca", "emptyDir": {}}]
    ),
    "mounts-the-ca": _set(_app, "volumeMounts", [{"name": "intercept-ca", "mountPath": "/ca"}]),
    "mounts-the-trust-bundle-writable": _set(
        _app, "volumeMounts", [{"name": "intercept-trust", "mountPath": "/trust"}]
    ),
}


def refused_pod(case: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    p = copy.deepcopy(INIT_AND_OVERRIDE)
    change(p)
    s = settings(case)
    for holder in [p["spec"], *p["spec"]["containers"], *p["spec"]["initContainers"]]:
        context = holder.get("securityContext") or {}
        uid = {-101: s.envoy_uid, -102: s.agent_uid}.get(context.get("runAsUser"))
        if uid is not None:
            context["runAsUser"] = uid
    return p


@pytest.mark.parametrize("case", ["default", "secret-ca"])
@pytest.mark.parametrize("reason", REFUSED)
def test_what_the_injector_refuses_the_cluster_refuses(case, reason):
    p = refused_pod(case, REFUSED[reason])
    with pytest.raises(InjectionError):
        inject_object(p, settings(case))
    assert refusals(case, p), f"{reason}: admitted by the chart, refused by the injector"


@pytest.mark.parametrize("case", render.CASES)
@pytest.mark.parametrize("sample", ["minimal", "init-and-override", "empty-lists"])
def test_what_the_injector_accepts_the_cluster_admits(case, sample):
    assert refusals(case, SAMPLES[sample]) == []


def test_the_validation_sees_through_the_mutation():
    # Forcing allowPrivilegeEscalation false would hide the request from the validation.
    p = refused_pod("default", REFUSED["privilege-escalation"])
    fetch = admit("default", p)["spec"]["initContainers"][3]
    assert fetch["name"] == "fetch"
    assert fetch["securityContext"]["allowPrivilegeEscalation"] is True
    assert refusals("default", p) == ["workload-initcontainers/fetch"]


def test_stricter_than_the_injector_the_image_user_with_run_as_non_root_false():
    # The injector accepts this container: locally there is no image user. In a cluster the
    # image's user (maybe root) would run it, and the cluster's run-as-non-root rule may be
    # excepted for labelled pods (proxy-init), so the chart refuses it.
    p = copy.deepcopy(MINIMAL)
    _app(p)["securityContext"] = {"runAsNonRoot": False}
    inject_object(p, settings("default"))
    assert refusals("default", p) == ["workload-containers/app"]


def test_a_labelled_pod_that_skipped_the_injection_is_refused():
    # Pre-set, the annotation would let a labelled pod skip the injection (the injector leaves
    # such a pod alone, as the chart's mutation does): the validation wants the interceptor.
    assert inject_object(INJECTED, settings("default")) == INJECTED
    assert "interceptor-present" in refusals("default", INJECTED)
    injected_offline = inject_object(MINIMAL, settings("default"))
    assert refusals("default", injected_offline) == []
