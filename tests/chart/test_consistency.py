"""The chart's Kyverno policies do what the injector does: for every set of values, sample pods
admitted through <release>-inject-proxy come out exactly as inject_object() makes them, the pods
the injector refuses are refused by <release>-validate-pods (and what it accepts is admitted),
and a running pod's changes are held to the same rules (<release>-validate-pod-changes).

The admission is simulated (tests/chart/kyverno.py, tests/chart/jmespath.py), after Kyverno's
engine (>= 1.13), for the features the chart's policies use and no others (anything else raises
UnsupportedError):
- rules in order, each matched against the pod as the rules before it left it: kinds (a
  subresource such as Pod/ephemeralcontainers matched only by its own kind), operations (CREATE,
  UPDATE), selector.matchLabels, annotations (with wildcards), `any` blocks of match/exclude;
- preconditions and deny conditions (`any`/`all`) with Equals, NotEquals, AnyIn, AnyNotIn and
  GreaterThan, for the types the chart compares (numbers with Equals, strings with AnyIn, maps
  and lists with Equals/NotEquals as reflect.DeepEqual);
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
- validate rules: `deny` and `foreach` with `deny`, on the pod as the mutations left it,
  request.oldObject on an UPDATE, and `failureAction` with `allowExistingViolations`: an
  enforced rule the old pod fails as well (evaluated as if created) is skipped on an UPDATE.

The API server around Kyverno is modelled in tests/chart/apiserver.py: the ServiceAccount
plugin's token before the webhooks, defaulting between mutation and validation, its refusal of
duplicate names and of ephemeral containers in a new pod. Not simulated: other admission
plugins and webhooks, autogen (disabled by the policies' annotation), background scans,
generate rules, PolicyExceptions, and Kyverno's own checks of a policy when it is created (the
JSON patches' shape is checked in test_chart).
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
from tests.chart import apiserver, render
from tests.chart.kyverno import Admission, violations

LABELS = {"intercept-proxy/enabled": "true"}


def pod(name: str, spec: dict[str, Any], **metadata: Any) -> dict[str, Any]:
    meta = {"name": name, "namespace": "agents", "labels": dict(LABELS), **metadata}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def container(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "image": "python:3.12-slim", "command": ["python", "-m", name], **fields}


MINIMAL = pod(
    "minimal", {"securityContext": {"runAsUser": 12345}, "containers": [container("app")]}
)

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
# projects before webhooks run, annotations (the pod's own policy among them), every volume
# type a workload may have.
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
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "LAST", "value": "1"},
                ],
                envFrom=[{"configMapRef": {"name": "settings"}}, {"secretRef": {"name": "keys"}}],
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
        "volumes": [
            {"name": "cache", "emptyDir": {}},
            TOKEN,
            {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
            {"name": "keys", "secret": {"secretName": "keys"}},
            {"name": "bundle", "projected": {"sources": [{"secret": {"name": "keys"}}, {}]}},
            {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
        ],
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
        "containers": [
            container("app", env=[], volumeMounts=[], securityContext={"runAsUser": 4000})
        ],
        "volumes": [],
        "automountServiceAccountToken": True,
    },
    annotations={},
)

UNLABELLED = {**MINIMAL, "metadata": {"name": "unlabelled", "labels": {"app": "x"}}}

SAMPLES = {
    p["metadata"]["name"]: p for p in (MINIMAL, INIT_AND_OVERRIDE, RICH, EMPTY_LISTS, UNLABELLED)
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


@pytest.mark.parametrize("case", render.CASES)
def test_the_api_servers_defaulting_changes_nothing_of_the_interceptor(case):
    # The validation compares the sidecars and volumes, as stored, with the chart's rendering.
    injected = inject_object(INIT_AND_OVERRIDE, settings(case))
    stored = apiserver.defaulted(injected)
    assert stored["spec"]["initContainers"][:3] == injected["spec"]["initContainers"][:3]
    assert stored["spec"]["volumes"] == injected["spec"]["volumes"]


def validate_pods(case: str) -> dict[str, Any]:
    return render.find(case, "ClusterPolicy", "validate-pods")


def validate_changes(case: str) -> dict[str, Any]:
    return render.find(case, "ClusterPolicy", "validate-pod-changes")


def stored(case: str, sample: dict[str, Any]) -> dict[str, Any]:
    """The pod the cluster would store: token, mutation, defaulting."""
    return apiserver.defaulted(admit(case, apiserver.with_service_account_token(sample)))


def refusals(case: str, sample: dict[str, Any]) -> list[str]:
    """Why the cluster refuses to create the pod, if it does."""
    created = stored(case, sample)
    return apiserver.refusals(created) + violations(validate_pods(case), created)


def update_refusals(case: str, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Why the cluster refuses an update of a stored pod, if it does."""
    new = apiserver.defaulted(new)
    return apiserver.refusals(new, created=False) + [
        refused
        for policy in (validate_pods(case), validate_changes(case))
        for refused in violations(policy, new, "UPDATE", old)
    ]


def _app(p: dict[str, Any]) -> dict[str, Any]:
    return p["spec"]["containers"][0]


def _init(p: dict[str, Any]) -> dict[str, Any]:
    return p["spec"]["initContainers"][0]


def _spec(p: dict[str, Any]) -> dict[str, Any]:
    return p["spec"]


def _set(where: Callable[[dict], dict], key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(p: dict[str, Any]) -> None:
        where(p)[key] = value

    return change


def _context(where: Callable[[dict], dict], **fields: Any) -> Callable[[dict[str, Any]], None]:
    def change(p: dict[str, Any]) -> None:
        where(p).setdefault("securityContext", {}).update(fields)

    return change


def _pod_context(**fields: Any) -> Callable[[dict[str, Any]], None]:
    return _context(_spec, **fields)


def _volume(volume: dict[str, Any], mount: bool = True) -> Callable[[dict[str, Any]], None]:
    def change(p: dict[str, Any]) -> None:
        p["spec"]["volumes"].append(volume)
        if mount:
            mounts = _app(p).setdefault("volumeMounts", [])
            mounts.append({"name": volume["name"], "mountPath": "/x"})

    return change


def _no_uid(p: dict[str, Any]) -> None:
    del p["spec"]["securityContext"]["runAsUser"]


def _unconfined(field: str, where: Callable[[dict], dict]) -> Callable[[dict[str, Any]], None]:
    return _context(where, **{field: {"type": "Unconfined"}})


# Each breaks one of the injector's rules (check_pod, check_workload) on INIT_AND_OVERRIDE.
REFUSED: dict[str, Callable[[dict[str, Any]], None]] = {
    "pod-runs-as-root": _pod_context(runAsUser=0),
    "pod-runs-as-envoy": _pod_context(runAsUser=-101),  # -101: Envoy's UID of the case
    "container-runs-as-agent": _context(_app, runAsUser=-102),
    "init-container-runs-as-root": _context(_init, runAsUser=0),
    # nginx-unprivileged's image runs as 101: no UID given is the image's, maybe a sidecar's.
    "no-uid-anywhere": _no_uid,
    "no-uid-run-as-non-root-false": lambda p: (_no_uid(p), _context(_app, runAsNonRoot=False)(p)),
    "pod-group-0": _pod_context(runAsGroup=0),
    "fs-group-0": _pod_context(fsGroup=0),
    "supplemental-group-0": _pod_context(supplementalGroups=[5, 0]),
    "container-group-0": _context(_app, runAsGroup=0),
    "privileged": _context(_app, privileged=True),
    "privilege-escalation": _context(_init, allowPrivilegeEscalation=True),
    "net-admin-lower-case": _context(_app, capabilities={"add": ["net_admin"]}),
    "net-raw": _context(_init, capabilities={"add": ["NET_RAW"]}),
    "sys-ptrace": _context(_app, capabilities={"add": ["NET_BIND_SERVICE", "SYS_PTRACE"]}),
    "seccomp-unconfined": _unconfined("seccompProfile", _app),
    "apparmor-unconfined-init": _unconfined("appArmorProfile", _init),
    "pod-seccomp-unconfined": _unconfined("seccompProfile", _spec),
    "pod-apparmor-unconfined": _unconfined("appArmorProfile", _spec),
    "host-network": _set(_spec, "hostNetwork", True),
    "host-pid": _set(_spec, "hostPID", True),
    "host-ipc": _set(_spec, "hostIPC", True),
    "share-process-namespace": _set(_spec, "shareProcessNamespace", True),
    "host-path": _volume({"name": "node", "hostPath": {"path": "/"}}),
    "nfs": _volume({"name": "share", "nfs": {"server": "exfil.example", "path": "/"}}, mount=False),
    "iscsi": _volume(
        {"name": "disk", "iscsi": {"targetPortal": "10.0.0.1", "iqn": "x", "lun": 0}}, mount=False
    ),
    "named-envoy": _set(_app, "name", "envoy"),
    "named-proxy-init": _set(_init, "name", "proxy-init"),
    "reserved-volume": _set(_spec, "volumes", [{"name": "intercept-ca", "emptyDir": {}}]),
    "interceptor-like-volume": _volume({"name": "intercept-extra", "emptyDir": {}}, mount=False),
    "mounts-the-ca": _set(_app, "volumeMounts", [{"name": "intercept-ca", "mountPath": "/ca"}]),
    "mounts-the-trust-bundle-writable": _set(
        _app, "volumeMounts", [{"name": "intercept-trust", "mountPath": "/trust"}]
    ),
    # kubectl debug adds them through a subresource; a new pod may not carry them.
    "ephemeral-containers": _set(_spec, "ephemeralContainers", [container("debug")]),
}
# Refused only where the values make them so.
CA_SECRET = "<ca-secret>"
SECRET_CA_REFUSED: dict[str, Callable[[dict[str, Any]], None]] = {
    "ca-secret-volume": _volume({"name": "mine", "secret": {"secretName": CA_SECRET}}),
    "ca-secret-projected": _volume(
        {
            "name": "mine",
            "projected": {
                "sources": [{"configMap": {"name": "x"}}, {"secret": {"name": CA_SECRET}}]
            },
        }
    ),
    "ca-secret-env": _set(
        _app,
        "env",
        [{"name": "K", "valueFrom": {"secretKeyRef": {"name": CA_SECRET, "key": "tls.key"}}}],
    ),
    "ca-secret-env-from": _set(_app, "envFrom", [{"secretRef": {"name": CA_SECRET}}]),
}
NO_TOKEN_REFUSED: dict[str, Callable[[dict[str, Any]], None]] = {
    "own-token-volume": _volume(
        {"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}
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
    for volume in p["spec"]["volumes"]:
        for source in [volume, *(volume.get("projected") or {}).get("sources", [])]:
            if (source.get("secret") or {}).get("secretName") == CA_SECRET:
                source["secret"]["secretName"] = s.ca_secret
            if (source.get("secret") or {}).get("name") == CA_SECRET:
                source["secret"]["name"] = s.ca_secret
    for env in [*_app(p).get("env", []), *_app(p).get("envFrom", [])]:
        ref = (env.get("valueFrom") or {}).get("secretKeyRef") or env.get("secretRef") or {}
        if ref.get("name") == CA_SECRET:
            ref["name"] = s.ca_secret
    return p


def assert_both_refuse(case: str, p: dict[str, Any], reason: str) -> None:
    with pytest.raises(InjectionError):
        inject_object(p, settings(case))
    assert refusals(case, p), f"{reason}: admitted by the chart, refused by the injector"


@pytest.mark.parametrize("case", ["default", "secret-ca"])
@pytest.mark.parametrize("reason", REFUSED)
def test_what_the_injector_refuses_the_cluster_refuses(case, reason):
    assert_both_refuse(case, refused_pod(case, REFUSED[reason]), reason)


@pytest.mark.parametrize("reason", SECRET_CA_REFUSED)
def test_no_workload_reads_a_shared_cas_secret(reason):
    assert_both_refuse("secret-ca", refused_pod("secret-ca", SECRET_CA_REFUSED[reason]), reason)
    # With an ephemeral CA there is no such Secret: a Secret of that name is any other.
    p = refused_pod("secret-ca", SECRET_CA_REFUSED[reason])
    inject_object(p, settings("default"))
    assert refusals("default", p) == []


@pytest.mark.parametrize("reason", NO_TOKEN_REFUSED)
def test_no_token_is_projected_unless_automount_is_on(reason):
    p = refused_pod("default", NO_TOKEN_REFUSED[reason])
    assert_both_refuse("default", p, reason)
    inject_object(p, settings("secret-ca"))
    assert refusals("secret-ca", p) == []


@pytest.mark.parametrize("case", render.CASES)
@pytest.mark.parametrize("sample", ["minimal", "init-and-override", "rich", "empty-lists"])
def test_what_the_injector_accepts_the_cluster_admits(case, sample):
    inject_object(SAMPLES[sample], settings(case))
    assert refusals(case, SAMPLES[sample]) == []


def test_the_validation_sees_through_the_mutation():
    # Forcing allowPrivilegeEscalation false would hide the request from the validation.
    p = refused_pod("default", REFUSED["privilege-escalation"])
    fetch = admit("default", p)["spec"]["initContainers"][3]
    assert fetch["name"] == "fetch"
    assert fetch["securityContext"]["allowPrivilegeEscalation"] is True
    assert refusals("default", p) == ["workload-initcontainers/fetch"]


def test_a_uid_on_the_pod_alone_is_enough():
    p = copy.deepcopy(INIT_AND_OVERRIDE)
    assert "runAsUser" not in _app(p).get("securityContext", {})
    inject_object(p, settings("default"))
    assert refusals("default", p) == []


# Injected ahead of time (intercept inject): the mutation skips the pod, the validation and the
# injector compare its interceptor with their own.
def pre_injected(case: str, change: Callable[[dict[str, Any]], None] | None = None) -> dict:
    p = inject_object(INIT_AND_OVERRIDE, settings(case))
    if change is not None:
        change(p)
    return p


def _sidecar(index: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda p: p["spec"]["initContainers"][index]


FAKED: dict[str, Callable[[dict[str, Any]], None]] = {
    # The annotation, and none of the injection.
    "annotation-only": lambda p: p.update(spec=copy.deepcopy(INIT_AND_OVERRIDE["spec"])),
    "privileged-fake-agent": _context(_sidecar(1), privileged=True, runAsUser=0),
    "payload-as-agent": _set(_sidecar(1), "command", ["sh", "-c", "exec payload"]),
    "proxy-init-that-does-nothing": _set(_sidecar(0), "command", ["true"]),
    "other-envoy-image": _set(_sidecar(2), "image", "envoyproxy/envoy:v1.39.0"),
    "no-envoy": lambda p: p["spec"]["initContainers"].pop(2),
    "writable-ca-for-all": lambda p: p["spec"]["volumes"].append(
        {"name": "intercept-ca-copy", "emptyDir": {}}
    ),
    "other-policy-config-map": lambda p: p["spec"]["volumes"][1]["configMap"].update(
        name="permissive"
    ),
    "workload-mounts-the-ca": lambda p: _app(p)["volumeMounts"].append(
        {"name": "intercept-ca", "mountPath": "/ca"}
    ),
    "workload-trust-mount-writable": lambda p: _app(p)["volumeMounts"][-1].pop("readOnly"),
    "workload-runs-as-envoy": lambda p: _context(_app, runAsUser=settings("default").envoy_uid)(p),
}


@pytest.mark.parametrize("case", render.CASES)
def test_a_pod_injected_ahead_of_time_is_admitted(case):
    p = pre_injected(case)
    assert inject_object(p, settings(case)) == p
    assert refusals(case, p) == []
    assert stored(case, p)["spec"]["initContainers"][:3] == p["spec"]["initContainers"][:3]


@pytest.mark.parametrize("reason", FAKED)
def test_a_pod_cannot_fake_its_own_injection(reason):
    assert_both_refuse("default", pre_injected("default", FAKED[reason]), reason)


def test_a_pod_injected_with_other_values_is_refused():
    # Another release's or version's sidecars: not this release's interceptor.
    p = pre_injected("secret-ca")
    assert_both_refuse("default", p, "secret-ca's injection under default's values")
    assert "interceptor-present" in refusals("default", p)


def test_a_debug_copy_of_an_injected_pod_is_admitted():
    # A labelled copy to debug: the whole pod with one more container (no trust bundle).
    p = pre_injected("default")
    p["spec"]["containers"].append(container("debugger", stdin=True, tty=True))
    assert inject_object(p, settings("default")) == p
    assert refusals("default", p) == []


# Updates of a running pod.
def running(case: str = "default") -> dict[str, Any]:
    return stored(case, INIT_AND_OVERRIDE)


def test_an_annotation_change_is_admitted():
    old = running()
    new = copy.deepcopy(old)
    new["metadata"]["annotations"]["intercept-proxy/opa-data"] = "allowed_domains: []\n"
    assert update_refusals("default", old, new) == []


@pytest.mark.parametrize("index", range(3))
def test_a_sidecars_image_cannot_change(index):
    old = running()
    new = copy.deepcopy(old)
    new["spec"]["initContainers"][index]["image"] = "attacker/payload:1"
    refused = update_refusals("default", old, new)
    assert {"interceptor-present", "interceptor-unchanged"} <= set(refused)


def test_a_pod_of_an_earlier_injection_can_be_updated_but_its_sidecars_not_changed():
    # Injected with other values (before an upgrade): interceptor-present fails for the old pod
    # too, so it is not enforced (a Job's finalizer must still be removable) ...
    old = stored("secret-ca", INIT_AND_OVERRIDE)
    new = copy.deepcopy(old)
    new["metadata"]["finalizers"] = []
    assert update_refusals("default", old, new) == []
    # ... but its sidecars still cannot change.
    new["spec"]["initContainers"][2]["image"] = "attacker/payload:1"
    assert update_refusals("default", old, new) == ["interceptor-unchanged"]


def test_labelling_a_pod_that_was_not_injected_is_refused():
    old = apiserver.defaulted(copy.deepcopy(UNLABELLED))
    new = copy.deepcopy(old)
    new["metadata"]["labels"] = dict(LABELS)
    assert "interceptor-present" in update_refusals("default", old, new)


def test_an_ephemeral_container_is_refused():
    old = running()
    new = copy.deepcopy(old)
    new["spec"]["ephemeralContainers"] = [
        {"name": "debugger", "image": "busybox:1.36", "targetContainerName": "app"}
    ]
    new = apiserver.defaulted(new)
    refused = violations(validate_changes("default"), new, "UPDATE", old, "ephemeralcontainers")
    assert refused == ["no-ephemeral-containers"]
    # The pod's own rules are not asked about a subresource (Kyverno matches kind Pod alone).
    assert violations(validate_pods("default"), new, "UPDATE", old, "ephemeralcontainers") == []
    unlabelled = copy.deepcopy(new)
    del unlabelled["metadata"]["labels"]
    assert (
        violations(validate_changes("default"), unlabelled, "UPDATE", old, "ephemeralcontainers")
        == []
    )
