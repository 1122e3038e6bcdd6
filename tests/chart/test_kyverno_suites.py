"""`kyverno test` suites, the Kyverno ecosystem's convention, for every ClusterPolicy of the chart
as rendered for each set of values: a `kyverno-test.yaml` with its policies, resources and
expected results per rule, written from the rendering and the injector and run by the real
`kubectl-kyverno test`. Seconds, no cluster: the fast check before tests/kubernetes.

`UPDATE` in `kyverno test` sets the old object to the new one: changes to a running pod are
tested on the cluster (tests/kubernetes/test_admission.py)."""

from __future__ import annotations

import base64
import copy
import hashlib
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from intercept_proxy.injector import gateway
from intercept_proxy.injector.pod import TRUST_VARIABLES
from intercept_proxy.injector.values import settings_from_values
from intercept_proxy.injector.workloads import inject_object
from tests.chart import render
from tests.tools import tool

NAMESPACE = "agents"
LABEL = {"intercept-proxy/enabled": "true"}


def labelled_pod(name: str, **spec: Any) -> dict[str, Any]:
    body = {
        "securityContext": {"runAsUser": 12345, "runAsGroup": 12345},
        "containers": [{"name": "app", "image": "python:3.12-slim", "command": ["true"]}],
        **spec,
    }
    metadata = {"name": name, "namespace": NAMESPACE, "labels": dict(LABEL)}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": body}


def hostile(injected: dict[str, Any], name: str, change: Any) -> dict[str, Any]:
    """The injected pod with one thing a labelled pod may not have."""
    pod = copy.deepcopy(injected)
    pod["metadata"]["name"] = name
    change(pod["spec"])
    return pod


# name: (what makes the injected pod hostile, the validate-pods rule that refuses it)
HOSTILE = {
    "root": (lambda s: s["securityContext"].update(runAsUser=0), "pod-security-context"),
    "host-network": (lambda s: s.update(hostNetwork=True), "host-namespaces"),
    "privileged": (
        lambda s: s["containers"][0]["securityContext"].update(privileged=True),
        "workload-containers",
    ),
    "host-path": (
        lambda s: s["volumes"].append({"name": "root", "hostPath": {"path": "/"}}),
        "pod-volumes",
    ),
    "unconfined": (
        lambda s: s["securityContext"].update(seccompProfile={"type": "Unconfined"}),
        "pod-security-context",
    ),
    "escalation": (
        lambda s: s["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
        "workload-containers",
    ),
    "own-init-as-root": (
        lambda s: s["initContainers"].append(
            {
                "name": "setup",
                "image": "busybox:1.36",
                "command": ["true"],
                "securityContext": {"runAsUser": 0},
            }
        ),
        "workload-initcontainers",
    ),
    "own-nameserver": (
        lambda s: s.update(dnsConfig={"nameservers": ["203.0.113.7"]}),
        "pod-dns",
    ),
    "host-alias": (
        lambda s: s.update(hostAliases=[{"ip": "203.0.113.7", "hostnames": ["pypi.org"]}]),
        "pod-dns",
    ),
    # Without no_new_privs, a file capability in the image could make it a sidecar's UID.
    "not-hardened": (
        lambda s: s["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
        "workload-containers",
    ),
    # envoy's traffic is never captured: code of the pod's making must not run in it.
    "preloaded-envoy": (
        lambda s: s["initContainers"][2].update(env=[{"name": "LD_PRELOAD", "value": "/x.so"}]),
        "interceptor-present",
    ),
}


def namespace_labels(case: str) -> dict[str, str]:
    """Labels that put the namespace in every selector of the case's values."""
    values = render.values(case)
    labels = {
        "kubernetes.io/metadata.name": NAMESPACE,
        "intercept-proxy/pod-security": "restricted",
    }
    if values["guardrails"]["enabled"]:
        labels["kyverno.io/isolate"] = "true"
    for selector in (
        values["injection"]["namespaceSelector"],
        values["clone"]["namespaceSelector"],
        values["gateway"]["clients"]["namespaceSelector"],
    ):
        labels |= selector.get("matchLabels", {})
    return labels


def expected_network_policy(case: str) -> dict[str, Any]:
    """The NetworkPolicy the values describe, written from them (not from the policy)."""
    values = render.values(case)["networkPolicy"]
    blocked = values["kubernetesApiCidrs"] + values["metadataCidrs"]
    everything = [
        {"ipBlock": {"cidr": cidr, "except": [c for c in blocked if (":" in c) == v6]}}
        for cidr, v6 in (("0.0.0.0/0", False), ("::/0", True))
    ]
    dns = {k: values["dns"][k] for k in ("namespaceSelector", "podSelector")}
    release = render.release(case)
    labels = {"app.kubernetes.io/name": "intercept-proxy", "app.kubernetes.io/instance": release}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"{release}-egress", "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "podSelector": {"matchLabels": LABEL},
            "policyTypes": ["Egress"],
            "egress": [
                {"to": [dns], "ports": [{"protocol": p, "port": 53} for p in ("UDP", "TCP")]},
                {"to": everything},
            ],
        },
    }


def policy_names(case: str) -> dict[str, str]:
    """ClusterPolicy name by its template's base name (`inject-proxy`, `clone`, `egress`, ...)."""
    release = render.release(case)
    out = {}
    for obj in render.objects(case):
        if obj["kind"] == "ClusterPolicy":
            name = obj["metadata"]["name"].removeprefix(f"{release}-")
            digested = name.startswith(("clone-", "egress-", "gateway-clients-"))
            base = name.rpartition("-")[0] if digested else name
            out[base] = obj["metadata"]["name"]
    return out


def expect_gateway(case: str, files: dict[str, Any], expect: Any) -> dict[str, Any]:
    """The gateway's clients' side, written from the values: the CA's certificate and the
    NetworkPolicy in a client namespace, and a labelled pod's variables and mount. Returns the
    values of context variables the suite gives (what an API call would have answered)."""
    values = render.values(case)["gateway"]
    release = render.release(case)
    if values["ca"]["mode"] == "generated":
        (source,) = [
            o
            for o in render.objects(case)
            if o["kind"] == "ConfigMap" and o["metadata"]["name"] == gateway.CLIENT_CA_CONFIG_MAP
        ]
        clone = copy.deepcopy(source)
        clone["metadata"]["namespace"] = NAMESPACE
        clone["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "kyverno"
        files |= {"gateway-ca-source.yaml": [source], "gateway-ca-clone.yaml": [clone]}
        expect("gateway-clients", "clone-egress-proxy-ca", "Namespace", NAMESPACE, "pass",
               cloneSourceResource="gateway-ca-source.yaml",
               generatedResource="gateway-ca-clone.yaml")  # fmt: skip
        variables: dict[str, Any] = {}
    else:
        # The certificate comes from the Secret (an API call's answer, given here), for a
        # client namespace as it comes and for each one when the Secret appears.
        certificate = "-----BEGIN CERTIFICATE-----\nthe operator's CA\n-----END CERTIFICATE-----\n"
        copied = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": gateway.CLIENT_CA_CONFIG_MAP, "namespace": NAMESPACE},
            "data": {gateway.CLIENT_CA_KEY: certificate},
        }
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {"name": gateway.CA_SECRET, "namespace": values["namespace"]},
            "data": {
                "tls.crt": base64.b64encode(certificate.encode()).decode(),
                "tls.key": base64.b64encode(b"the operator's key").decode(),
            },
        }
        files["gateway-ca-copy.yaml"] = [copied]
        files["resources.yaml"].append(secret)
        expect("gateway-clients", "copy-egress-proxy-ca", "Namespace", NAMESPACE, "pass",
               generatedResource="gateway-ca-copy.yaml")  # fmt: skip
        expect("gateway-clients", "copy-egress-proxy-ca-when-issued", "Secret", gateway.CA_SECRET,
               "pass", generatedResource="gateway-ca-copy.yaml")  # fmt: skip
        # The Secret's new certificate rolls the replicas: its digest in their template.
        (deployment,) = [o for o in render.objects(case) if o["kind"] == "Deployment"]
        rolled = copy.deepcopy(deployment)
        annotations = rolled["spec"]["template"]["metadata"].setdefault("annotations", {})
        annotations["checksum/ca"] = hashlib.sha256(certificate.encode()).hexdigest()[:16]
        files |= {"gateway-deployment.yaml": [deployment], "gateway-rolled.yaml": [rolled]}
        expect("gateway-ca-rollout", "roll-egress-proxy-on-new-ca", "Deployment",
               deployment["metadata"]["name"], "pass",
               patchedResources="gateway-rolled.yaml")  # fmt: skip
        variables = {
            "copy-egress-proxy-ca": {"certificate": certificate},
            "copy-egress-proxy-ca-when-issued": {"namespaces": [NAMESPACE]},
        }
    dns = render.values(case)["networkPolicy"]["dns"]
    to_gateway = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": values["namespace"]}},
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/name": gateway.NAME,
                "app.kubernetes.io/instance": release,
            }
        },
    }
    files["gateway-clients.yaml"] = [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {
                "name": f"{gateway.NAME}-clients",
                "namespace": NAMESPACE,
                "labels": {
                    "app.kubernetes.io/name": "intercept-proxy",
                    "app.kubernetes.io/instance": release,
                },
            },
            "spec": {
                "podSelector": {
                    "matchLabels": {"networking/allow-egress": "true"},
                    "matchExpressions": [
                        {"key": "intercept-proxy/enabled", "operator": "NotIn", "values": ["true"]}
                    ],
                },
                "policyTypes": ["Egress"],
                "egress": [
                    {
                        "to": [{k: dns[k] for k in ("namespaceSelector", "podSelector")}],
                        "ports": [{"protocol": p, "port": 53} for p in ("UDP", "TCP")],
                    },
                    {"to": [to_gateway], "ports": [{"protocol": "TCP", "port": 3128}]},
                ],
            },
        }
    ]
    expect("gateway-clients", "egress-proxy-clients", "Namespace", NAMESPACE, "pass",
           generatedResource="gateway-clients.yaml")  # fmt: skip
    client = labelled_pod("client")
    client["metadata"]["labels"] = {"networking/allow-egress": "true"}
    client["spec"]["containers"][0]["env"] = [
        {"name": "KEPT", "value": "1"},
        {"name": "HTTPS_PROXY", "value": "http://elsewhere:8080"},
    ]
    proxy = f"http://{gateway.NAME}.{values['namespace']}.svc.cluster.local:3128"
    patched = copy.deepcopy(client)
    (container,) = patched["spec"]["containers"]
    container["env"] = [
        {"name": "KEPT", "value": "1"},
        *(
            {"name": n, "value": proxy}
            for n in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
        ),
        *(
            {"name": n, "value": ",".join(values["clients"]["noProxy"])}
            for n in ("NO_PROXY", "no_proxy")
        ),
        *({"name": n, "value": gateway.CLIENT_TRUST_FILE} for n in TRUST_VARIABLES),
    ]
    container["volumeMounts"] = [
        {
            "name": gateway.CLIENT_TRUST_VOLUME,
            "mountPath": gateway.CLIENT_TRUST_DIR,
            "readOnly": True,
        }
    ]
    patched["spec"]["volumes"] = [
        {
            "name": gateway.CLIENT_TRUST_VOLUME,
            "configMap": {"name": gateway.CLIENT_CA_CONFIG_MAP, "defaultMode": 0o644},
        }
    ]
    files["resources.yaml"].append(client)
    # The gateway's own pod, as its Deployment makes it: no rule of the sandboxes refuses it
    # (it reads no Secret of theirs).
    (deployment,) = [o for o in render.objects(case) if o["kind"] == "Deployment"]
    template = deployment["spec"]["template"]
    replica = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "replica", "namespace": values["namespace"], **template["metadata"]},
        "spec": template["spec"],
    }
    files["resources.yaml"].append(replica)
    expect("validate-pods", "agent-secrets-elsewhere", "Pod", "replica", "pass")
    files["gateway-client.yaml"] = [patched]
    for rule in ("create-volumes", "egress-proxy-env"):
        expect("gateway-env", rule, "Pod", "client", "pass")
    expect("gateway-env", "egress-proxy-ca", "Pod", "client", "pass",
           patchedResources="gateway-client.yaml")  # fmt: skip
    return variables


def guarded_pod(name: str, **changes: Any) -> dict[str, Any]:
    """A pod of no sandbox with the seeds' minimum security context, `changes` made to it."""
    pod = labelled_pod(name)
    pod["metadata"]["labels"] = {}
    pod["spec"]["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    pod["spec"]["containers"][0]["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = pod["spec"]
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node.pop(leaf) if value is None else node.__setitem__(leaf, value)
    return pod


def expect_guardrails(case: str, files: dict[str, Any], expect: Any) -> None:
    """The isolated namespace's NetworkPolicies, written from the values; their protection;
    the minimum security context."""
    values = render.values(case)
    dns = values["networkPolicy"]["dns"]
    internal = {"matchLabels": {"networking/internal": "true"}}

    def scraped_from(selector: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"from": [{"namespaceSelector": selector}]}]

    specs = {
        "default-deny": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
        "allow-dns": {
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [{k: dns[k] for k in ("namespaceSelector", "podSelector")}],
                    "ports": [{"protocol": p, "port": 53} for p in ("UDP", "TCP")],
                }
            ],
        },
        "allow-internal": {
            "podSelector": internal,
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": internal}]}],
            "egress": [{"to": [{"podSelector": internal}]}],
        },
        "allow-ingress": {
            "podSelector": {"matchLabels": {"networking/allow-ingress": "true"}},
            "policyTypes": ["Ingress"],
            "ingress": scraped_from(
                values["guardrails"]["ingressControllers"]["namespaceSelector"]
            ),
        },
        "allow-prometheus-scrape": {
            "podSelector": {"matchLabels": {"monitoring/prometheus-scrape": "true"}},
            "policyTypes": ["Ingress"],
            "ingress": scraped_from(values["monitoring"]["namespaceSelector"]),
        },
    }
    labels = {"app.kubernetes.io/name": "intercept-proxy",
              "app.kubernetes.io/instance": render.release(case)}  # fmt: skip
    for name, spec in specs.items():
        files[f"isolation-{name}.yaml"] = [
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
                "spec": spec,
            }
        ]
        expect("default-deny-namespaces", name, "Namespace", NAMESPACE, "pass",
               generatedResource=f"isolation-{name}.yaml")  # fmt: skip
    files["resources.yaml"].append(files["isolation-default-deny.yaml"][0])
    expect("protect-default-deny-netpol", "protect-isolation", "NetworkPolicy", "default-deny",
           "fail", operation="UPDATE")  # fmt: skip
    if not values["guardrails"]["securityContext"]["enabled"]:
        return
    pods = {
        "guarded": ("pass", "pass"),
        "writable-root": ("fail", "pass"),
        "escalating": ("fail", "pass"),
        "adds-capability": ("fail", "pass"),
        "root-container": ("fail", "pass"),
        "drops-wildcard": ("fail", "pass"),
        "own-seccomp": ("fail", "pass"),
        "no-fs-group": ("pass", "fail"),
        "no-seccomp": ("pass", "fail"),
    }
    container = "containers.0.securityContext"
    files["resources.yaml"] += [
        guarded_pod("guarded"),
        guarded_pod("writable-root", **{f"{container}.readOnlyRootFilesystem": False}),
        guarded_pod("escalating", **{f"{container}.allowPrivilegeEscalation": None}),
        guarded_pod("adds-capability", **{f"{container}.capabilities": {"add": ["NET_ADMIN"],
                                                                      "drop": ["ALL"]}}),
        guarded_pod("root-container", **{f"{container}.runAsUser": 0}),
        guarded_pod("drops-wildcard", **{f"{container}.capabilities": {"drop": ["*"]}}),
        guarded_pod("own-seccomp", **{f"{container}.seccompProfile": {"type": "Unconfined"}}),
        guarded_pod("no-fs-group", **{"securityContext.fsGroup": None}),
        guarded_pod("no-seccomp", **{"securityContext.seccompProfile": {"type": "Unconfined"}}),
    ]  # fmt: skip
    # The chart's own pods (its test, its hooks' Jobs) meet its minimum.
    for obj in render.objects(case):
        if obj["kind"] not in ("Pod", "Job"):
            continue
        template = obj["spec"]["template"] if obj["kind"] == "Job" else obj
        own = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": obj["metadata"]["name"], "namespace": NAMESPACE},
            "spec": template["spec"],
        }
        files["resources.yaml"].append(own)
        pods[own["metadata"]["name"]] = ("pass", "pass")
    for pod, (constraints, pod_context) in pods.items():
        expect("require-security-context", "require-security-context-constraints", "Pod", pod,
               constraints)  # fmt: skip
        expect("require-security-context", "require-pod-security-context", "Pod", pod,
               pod_context)  # fmt: skip


def write_suite(case: str, directory: Path) -> int:
    """The case's suite in `directory`; the number of results it expects."""
    settings = settings_from_values(render.given(case), render.release(case))
    names = policy_names(case)
    policies = [o for o in render.objects(case) if o["kind"] == "ClusterPolicy"]
    plain = labelled_pod("plain")
    injected = inject_object(labelled_pod("injected"), settings)
    unlabelled = labelled_pod("unlabelled")
    unlabelled["metadata"]["labels"] = {}
    forged = labelled_pod("forged")  # says it was injected, and was not
    forged["metadata"]["annotations"] = {"intercept-proxy/injected": "true"}
    pods = [plain, injected, unlabelled, forged]
    pods += [hostile(injected, n, change) for n, (change, _) in HOSTILE.items()]
    # Pods of no sandbox that read the agent's Secrets.
    readers = {"credentials-reader": settings.credentials_secret}
    if settings.ca_mode != "ephemeral":
        readers["key-reader"] = settings.ca_secret
    for name, secret in readers.items():
        reader = copy.deepcopy(unlabelled)
        reader["metadata"]["name"] = name
        reader["spec"]["volumes"] = [{"name": "key", "secret": {"secretName": secret}}]
        pods.append(reader)
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": NAMESPACE, "labels": namespace_labels(case)},
    }
    files = {
        "policies.yaml": policies,
        "resources.yaml": [*pods, namespace],
        "injected.yaml": [inject_object(plain, settings)],
    }
    results: list[dict[str, Any]] = []

    def expect(policy: str, rule: str, kind: str, resource: str, result: str, **more: str):
        results.append({"policy": names[policy], "rule": rule, "kind": kind,
                        "resources": [resource], "result": result, **more})  # fmt: skip

    expect(
        "inject-proxy", "mark-injected", "Pod", "plain", "pass", patchedResources="injected.yaml"
    )
    expect("inject-proxy", "mark-injected", "Pod", "injected", "skip")
    validate = [r["name"] for p in policies if p["metadata"]["name"] == names["validate-pods"]
                for r in p["spec"]["rules"]]  # fmt: skip
    for rule in validate:
        if rule != "agent-secrets-elsewhere":  # labelled pods are the other rules' business
            expect("validate-pods", rule, "Pod", "injected", "pass")
    for name, (_, rule) in HOSTILE.items():
        expect("validate-pods", rule, "Pod", name, "fail")
        if rule != "interceptor-present":  # refused for what it added, not for its sidecars
            expect("validate-pods", "interceptor-present", "Pod", name, "pass")
    expect("validate-pods", "interceptor-present", "Pod", "forged", "fail")
    expect("validate-pods", "agent-secrets-elsewhere", "Pod", "unlabelled", "pass")
    for name in readers:
        expect("validate-pods", "agent-secrets-elsewhere", "Pod", name, "fail")
    refused = {r["rule"] for r in results if r["result"] == "fail"}
    assert set(validate) <= refused, (
        f"validate-pods rules no case refuses: {set(validate) - refused}"
    )
    expect("validate-pod-changes", "interceptor-unchanged", "Pod", "injected", "pass",
           operation="UPDATE")  # fmt: skip
    if "pod-security" in names:
        expect("pod-security", "restricted-intercepted-pods", "Pod", "injected", "pass")
        expect("pod-security", "restricted-intercepted-pods", "Pod", "host-network", "fail")
        expect("pod-security", "restricted-other-pods", "Pod", "unlabelled", "fail")
    clones = [
        o
        for o in render.objects(case)
        if (o["kind"], o["metadata"]["name"])
        in (("ConfigMap", settings.policy_config_map), ("Secret", settings.ca_secret))
    ]
    for source in clones:
        kind, name = source["kind"], source["metadata"]["name"]
        copy_ = copy.deepcopy(source)
        # A clone is the source in the namespace, marked as Kyverno's.
        copy_["metadata"]["namespace"] = NAMESPACE
        copy_["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "kyverno"
        files[f"source-{name}.yaml"] = [source]
        files[f"clone-{name}.yaml"] = [copy_]
        rule = "clone-policy" if kind == "ConfigMap" else "clone-ca"
        expect("clone", rule, "Namespace", NAMESPACE, "pass",
               cloneSourceResource=f"source-{name}.yaml",
               generatedResource=f"clone-{name}.yaml")  # fmt: skip
    if "egress" in names:
        files["egress.yaml"] = [expected_network_policy(case)]
        expect("egress", "egress-guard", "Namespace", NAMESPACE, "pass",
               generatedResource="egress.yaml")  # fmt: skip
    variables: dict[str, Any] = {}
    if "gateway-env" in names:
        variables = expect_gateway(case, files, expect)
    if "default-deny-namespaces" in names:
        expect_guardrails(case, files, expect)
    for file, docs in files.items():
        (directory / file).write_text(yaml.safe_dump_all(docs))
    test = {
        "apiVersion": "cli.kyverno.io/v1alpha1",
        "kind": "Test",
        "metadata": {"name": f"intercept-proxy-{case}"},
        "policies": ["policies.yaml"],
        "resources": ["resources.yaml"],
        # The targets of rules that change existing objects (the gateway's Deployment).
        "targetResources": [f for f in ("gateway-deployment.yaml",) if f in files],
        "values": {
            "namespaceSelector": [{"name": NAMESPACE, "labels": namespace_labels(case)}],
            "policies": [
                {
                    "name": names["gateway-clients"],
                    "rules": [{"name": rule, "values": v} for rule, v in variables.items()],
                }
            ]
            if variables
            else [],
        },
        "results": results,
    }
    (directory / "kyverno-test.yaml").write_text(yaml.safe_dump(test, sort_keys=False))
    tested = {names[p] for p in names} - {r["policy"] for r in results}
    assert not tested, f"ClusterPolicies without a result: {tested}"
    return len(results)


@pytest.mark.parametrize("case", render.CASES)
def test_kyverno_test_suite_passes(case, tmp_path):
    expected = write_suite(case, tmp_path)
    result = subprocess.run(
        [str(tool("kubectl-kyverno")), "test", str(tmp_path), "--remove-color",
         "--detailed-results"], capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert f"Test Summary: {expected} tests passed and 0 tests failed" in out, out
