"""The chart's Kyverno policies do what the injector does, in the real Kyverno engine
(`kubectl-kyverno apply`, tests/chart/kyverno_cli.py): for every set of values, sample pods come
out of <release>-inject-proxy exactly as inject_object() makes them, the pods the injector
refuses are refused by <release>-validate-pods, and what it accepts is admitted. What needs the
API server around Kyverno (its defaulting, the ServiceAccount plugin, updates of a running pod,
subresources) is tested on a real control plane in tests/kubernetes.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import pytest

from intercept_proxy.injector.pod import InjectionError
from intercept_proxy.injector.values import settings_from_values
from intercept_proxy.injector.workloads import inject_object
from tests.chart import kyverno_cli, render

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

UNLABELLED = {
    **MINIMAL,
    "metadata": {"name": "unlabelled", "namespace": "agents", "labels": {"app": "x"}},
}

SAMPLES = {
    p["metadata"]["name"]: p for p in (MINIMAL, INIT_AND_OVERRIDE, RICH, EMPTY_LISTS, UNLABELLED)
}


def settings(case: str) -> Any:
    return settings_from_values(render.given(case), render.release(case))


def _app(p: dict[str, Any]) -> dict[str, Any]:
    return p["spec"]["containers"][0]


def _init(p: dict[str, Any]) -> dict[str, Any]:
    return p["spec"]["initContainers"][0]


def _spec(p: dict[str, Any]) -> dict[str, Any]:
    return p["spec"]


def _set(where: Callable[[dict], dict], key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(p: dict[str, Any]) -> None:
        where(p)[key] = copy.deepcopy(value)  # each pod its own: the CA's name is filled in

    return change


def _context(where: Callable[[dict], dict], **fields: Any) -> Callable[[dict[str, Any]], None]:
    def change(p: dict[str, Any]) -> None:
        where(p).setdefault("securityContext", {}).update(fields)

    return change


def _pod_context(**fields: Any) -> Callable[[dict[str, Any]], None]:
    return _context(_spec, **fields)


def _volume(volume: dict[str, Any], mount: bool = True) -> Callable[[dict[str, Any]], None]:
    def change(p: dict[str, Any]) -> None:
        p["spec"]["volumes"].append(copy.deepcopy(volume))
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
    "named-proxy-init": _set(_init, "name", "proxy-init"),
    "reserved-volume": _set(_spec, "volumes", [{"name": "intercept-ca", "emptyDir": {}}]),
    "interceptor-like-volume": _volume({"name": "intercept-extra", "emptyDir": {}}, mount=False),
    "mounts-the-ca": _set(_app, "volumeMounts", [{"name": "intercept-ca", "mountPath": "/ca"}]),
    "mounts-the-trust-bundle-writable": _set(
        _app, "volumeMounts", [{"name": "intercept-trust", "mountPath": "/trust"}]
    ),
}
# Refused by the API server itself, around Kyverno (tests/kubernetes sends them to one): a name
# twice among a pod's containers; ephemeral containers in a new pod (kubectl debug adds them
# through a subresource).
API_SERVER_REFUSED: dict[str, Callable[[dict[str, Any]], None]] = {
    "named-envoy": _set(_app, "name", "envoy"),
    "ephemeral-containers": _set(_spec, "ephemeralContainers", [container("debug")]),
}
# The agent's Secrets (each case's names stand in for these).
CA_SECRET = "<ca-secret>"
CREDENTIALS_SECRET = "<credentials-secret>"


def _readers(secret: str, prefix: str) -> dict[str, Callable[[dict[str, Any]], None]]:
    """A workload reading `secret`, every way a pod can."""
    return {
        f"{prefix}-volume": _volume({"name": "mine", "secret": {"secretName": secret}}),
        f"{prefix}-projected": _volume(
            {
                "name": "mine",
                "projected": {
                    "sources": [{"configMap": {"name": "x"}}, {"secret": {"name": secret}}]
                },
            }
        ),
        f"{prefix}-env": _set(
            _app,
            "env",
            [{"name": "K", "valueFrom": {"secretKeyRef": {"name": secret, "key": "tls.key"}}}],
        ),
        f"{prefix}-env-from": _set(_app, "envFrom", [{"secretRef": {"name": secret}}]),
    }


# Refused only where the values make them so (a shared CA).
SECRET_CA_REFUSED = _readers(CA_SECRET, "ca-secret")
# Refused whatever the values.
CREDENTIALS_REFUSED = _readers(CREDENTIALS_SECRET, "credentials-secret")
NO_TOKEN_REFUSED: dict[str, Callable[[dict[str, Any]], None]] = {
    "own-token-volume": _volume(
        {"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}
    ),
}


def refused_pod(case: str, change: Callable[[dict[str, Any]], None], name: str) -> dict[str, Any]:
    p = copy.deepcopy(INIT_AND_OVERRIDE)
    p["metadata"]["name"] = name
    change(p)
    s = settings(case)
    for holder in [p["spec"], *p["spec"]["containers"], *p["spec"]["initContainers"]]:
        context = holder.get("securityContext") or {}
        uid = {-101: s.envoy_uid, -102: s.agent_uid}.get(context.get("runAsUser"))
        if uid is not None:
            context["runAsUser"] = uid
    names = {CA_SECRET: s.ca_secret, CREDENTIALS_SECRET: s.credentials_secret}
    for volume in p["spec"]["volumes"]:
        for source in [volume, *(volume.get("projected") or {}).get("sources", [])]:
            secret = source.get("secret") or {}
            for key in ("secretName", "name"):
                if secret.get(key) in names:
                    secret[key] = names[secret[key]]
    for env in [*_app(p).get("env", []), *_app(p).get("envFrom", [])]:
        ref = (env.get("valueFrom") or {}).get("secretKeyRef") or env.get("secretRef") or {}
        if ref.get("name") in names:
            ref["name"] = names[ref["name"]]
    return p


# Injected ahead of time (intercept inject): the mutation skips the pod, the validation and the
# injector compare its interceptor with their own.
def pre_injected(
    case: str, change: Callable[[dict[str, Any]], None] | None = None, name: str = "pre"
) -> dict:
    p = inject_object(INIT_AND_OVERRIDE, settings(case))
    p["metadata"]["name"] = name
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


def debug_copy(case: str) -> dict[str, Any]:
    # A labelled copy to debug: the whole pod with one more container (no trust bundle),
    # hardened as the injection hardens the workload.
    p = pre_injected(case, name="debug-copy")
    hardened = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    p["spec"]["containers"].append(
        container("debugger", stdin=True, tty=True, securityContext=hardened)
    )
    return p


def _pods(case: str) -> list[dict[str, Any]]:
    """Every pod a case's tests ask about, each named after its test: one Kyverno run a case."""
    pods = [*SAMPLES.values(), pre_injected(case), debug_copy(case)]
    pods.append(pre_injected("secret-ca" if case == "default" else "default", name="other-values"))
    for group in (REFUSED, SECRET_CA_REFUSED, CREDENTIALS_REFUSED, NO_TOKEN_REFUSED):
        pods += [refused_pod(case, change, f"r-{reason}") for reason, change in group.items()]
    pods += [pre_injected(case, change, f"f-{reason}") for reason, change in FAKED.items()]
    return pods


@functools.cache
def _applied(case: str) -> kyverno_cli.Applied:
    policies = [render.find(case, "ClusterPolicy", n) for n in ("inject-proxy", "validate-pods")]
    return kyverno_cli.apply(policies, _pods(case))


def admitted(case: str, name: str) -> dict[str, Any]:
    """The pod as the case's Kyverno policies leave it."""
    return copy.deepcopy(_applied(case).mutated[name])


def refusals(case: str, name: str) -> list[str]:
    """The rules of <release>-validate-pods the pod fails."""
    return _applied(case).failed[name]


def pod_named(case: str, name: str) -> dict[str, Any]:
    return next(p for p in _pods(case) if p["metadata"]["name"] == name)


@pytest.mark.parametrize("case", render.CASES)
@pytest.mark.parametrize("sample", SAMPLES)
def test_the_policy_injects_exactly_what_the_injector_does(case, sample):
    expected = inject_object(SAMPLES[sample], settings(case))
    assert admitted(case, sample) == expected, f"{case}/{sample}: Kyverno and the injector disagree"


@pytest.mark.parametrize("case", render.CASES)
def test_the_projected_token_is_unmounted_unless_automount_is_on(case):
    automount = settings(case).automount_service_account_token
    spec = admitted(case, "rich")["spec"]
    volumes = [v["name"] for v in spec["volumes"]]
    mounts = [m["name"] for c in spec["containers"] for m in c.get("volumeMounts", [])]
    assert (TOKEN["name"] in volumes) == automount
    assert (TOKEN["name"] in mounts) == automount
    assert ("cache" in volumes) and ("cache" in mounts)
    assert spec.get("automountServiceAccountToken", True) == automount


def assert_both_refuse(case: str, name: str) -> None:
    with pytest.raises(InjectionError):
        inject_object(pod_named(case, name), settings(case))
    assert refusals(case, name), f"{name}: admitted by the chart, refused by the injector"


def assert_both_admit(case: str, name: str) -> None:
    inject_object(pod_named(case, name), settings(case))
    assert refusals(case, name) == [], _applied(case).messages.get(name)


@pytest.mark.parametrize("case", ["default", "secret-ca"])
@pytest.mark.parametrize("reason", REFUSED)
def test_what_the_injector_refuses_the_cluster_refuses(case, reason):
    assert_both_refuse(case, f"r-{reason}")


@pytest.mark.parametrize("reason", API_SERVER_REFUSED)
def test_what_the_api_server_refuses_the_injector_refuses(reason):
    with pytest.raises(InjectionError):
        inject_object(
            refused_pod("default", API_SERVER_REFUSED[reason], reason), settings("default")
        )


@pytest.mark.parametrize("reason", SECRET_CA_REFUSED)
def test_no_workload_reads_a_shared_cas_secret(reason):
    assert_both_refuse("secret-ca", f"r-{reason}")
    # With an ephemeral CA there is no such Secret: a Secret of that name is any other.
    assert_both_admit("default", f"r-{reason}")


@pytest.mark.parametrize("reason", CREDENTIALS_REFUSED)
@pytest.mark.parametrize("case", ["default", "secret-ca"])
def test_no_workload_reads_the_credentials_secret(case, reason):
    assert_both_refuse(case, f"r-{reason}")


@pytest.mark.parametrize("reason", NO_TOKEN_REFUSED)
def test_no_token_is_projected_unless_automount_is_on(reason):
    assert_both_refuse("default", f"r-{reason}")
    assert_both_admit("secret-ca", f"r-{reason}")


@pytest.mark.parametrize("case", render.CASES)
@pytest.mark.parametrize("sample", ["minimal", "init-and-override", "rich", "empty-lists"])
def test_what_the_injector_accepts_the_cluster_admits(case, sample):
    assert_both_admit(case, sample)


def test_the_validation_sees_through_the_mutation():
    # Forcing allowPrivilegeEscalation false would hide the request from the validation.
    name = "r-privilege-escalation"
    fetch = admitted("default", name)["spec"]["initContainers"][3]
    assert fetch["name"] == "fetch"
    assert fetch["securityContext"]["allowPrivilegeEscalation"] is True
    assert refusals("default", name) == ["workload-initcontainers"]


def test_a_uid_on_the_pod_alone_is_enough():
    assert "runAsUser" not in _app(INIT_AND_OVERRIDE).get("securityContext", {})
    assert_both_admit("default", "init-and-override")


@pytest.mark.parametrize("case", render.CASES)
def test_a_pod_injected_ahead_of_time_is_admitted(case):
    p = pod_named(case, "pre")
    assert inject_object(p, settings(case)) == p
    assert admitted(case, "pre") == p
    assert_both_admit(case, "pre")


@pytest.mark.parametrize("reason", FAKED)
def test_a_pod_cannot_fake_its_own_injection(reason):
    assert_both_refuse("default", f"f-{reason}")


def test_a_pod_injected_with_other_values_is_refused():
    # Another release's or version's sidecars: not this release's interceptor.
    assert_both_refuse("default", "other-values")
    assert "interceptor-present" in refusals("default", "other-values")


def test_a_debug_copy_of_an_injected_pod_is_admitted():
    p = pod_named("default", "debug-copy")
    assert inject_object(p, settings("default")) == p
    assert_both_admit("default", "debug-copy")
