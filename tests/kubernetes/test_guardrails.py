"""The seeds' guardrails on the real control plane (guardrails.enabled, with the gateway and CNI
mode): the isolated namespaces Kyverno generates and protects, the real PodSecurity admission
refusing the seeds' privileged and root pods, the minimum security context with its named
exclusions, an intercepted pod running in a guarded namespace, the connectivity the
NetworkPolicies allow read off them by np-guard's netpol-analyzer (the test node's bridge
enforces none), and the seeds' rollback, NetworkPolicies first."""

from __future__ import annotations

import copy
import ipaddress
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from intercept_proxy.injector import cninode
from tests.cluster.harness import CHART, LAB_UPSTREAMS, MEASUREMENTS, WORKLOAD_UID, pod
from tests.kubernetes.chart import (
    labelled_pod,
    probe,
    refusal,
    result,
    results,
    uninstall,
    upgrade,
)
from tests.tools import tool

pytestmark = pytest.mark.netns

RELEASE, NAMESPACE = "guard", "guard-system"
GUARDED = ("agents", "production")
GATEWAY_NAMESPACE = "guard-egress"
AMBASSADOR = "ambassador"
ISOLATION = (
    "default-deny",
    "allow-dns",
    "allow-internal",
    "allow-ingress",
    "allow-prometheus-scrape",
)
EXAMPLES = CHART / "examples"
# The Telepresence example as it is (CNI mode, the guardrails, ambassador's exclusions, the
# cluster's mirror for every image), with the lab's upstreams, a policy and the gateway.
EXAMPLE = yaml.safe_load((EXAMPLES / "telepresence-values.yaml").read_text())
VALUES: dict[str, Any] = {
    **EXAMPLE,
    **LAB_UPSTREAMS,
    "policy": {"default": {"allowed_domains": ["pypi.org"]}},
    "gateway": {
        "enabled": True,
        "namespace": GATEWAY_NAMESPACE,
        "replicas": 2,
        "autoscaling": {"enabled": False},
        "topologySpread": False,
    },
}
MIRROR = "registry.example.com/mirror/"
# The seeds' minimum, and the pod-level settings of the Telepresence notes' rule.
CONTAINER = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
POD = {
    "runAsNonRoot": True,
    "runAsUser": WORKLOAD_UID,
    "runAsGroup": WORKLOAD_UID,
    "fsGroup": WORKLOAD_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def unique(name: str) -> str:
    return f"{name}-{int(time.time() * 1000) % 100000}"


@pytest.fixture(scope="module")
def guarded(kube):
    """The release with the guardrails; everything it made, kept namespaces too, removed."""
    try:
        kube.kubectl("create", "namespace", AMBASSADOR)
        kube.install(RELEASE, NAMESPACE, VALUES)
        # CNI mode's node agent (its namespace exempt from the rules it breaks) on the node.
        kube.kubectl(
            "rollout", "status", "-n", "intercept-proxy-cni", f"daemonset/{cninode.NAME}",
            "--timeout=120s",
        )  # fmt: skip
        yield kube
    finally:
        if kube.helm("status", RELEASE, "-n", NAMESPACE, check=False).returncode == 0:
            uninstall(kube, RELEASE, NAMESPACE)
        for name in (*GUARDED, AMBASSADOR, NAMESPACE):
            kube.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


def secure_pod(name: str, command: list[str], **context: Any) -> dict[str, Any]:
    return pod(name, command, container={"securityContext": {**CONTAINER, **context}},
               securityContext=copy.deepcopy(POD))  # fmt: skip


def test_the_namespaces_are_created_isolated_and_guarded(guarded):
    for name in GUARDED:
        labels = guarded.get("", "namespace", name)["metadata"]["labels"]
        assert labels["kyverno.io/isolate"] == "true"
        for mode in ("enforce", "audit", "warn"):
            assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
        assert guarded.get(name, "resourcequota", "guardrails")["spec"]["hard"]["pods"] == "50"
        (limits,) = guarded.get(name, "limitrange", "guardrails")["spec"]["limits"]
        assert limits["default"] == {"cpu": "500m", "memory": "512Mi"}
        for policy in ISOLATION:
            guarded.wait_object(name, "networkpolicy", policy)
    deny = guarded.get("agents", "networkpolicy", "default-deny")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    assert deny["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kyverno"


def test_kyverno_keeps_the_isolation_and_refuses_its_removal(guarded):
    for args in (
        ("delete", "networkpolicy", "default-deny"),
        ("label", "networkpolicy", "default-deny", "opened=true"),
    ):
        attempt = guarded.kubectl(*args, "-n", "agents", check=False)
        assert attempt.returncode != 0, attempt.stdout
        assert "protect-isolation" in attempt.stderr, attempt.stderr
        assert "isolates this namespace (kyverno.io/isolate=true)" in attempt.stderr
    assert "opened" not in guarded.get("agents", "networkpolicy", "default-deny")["metadata"].get(
        "labels", {}
    )
    # A namespace labelled later gets them; its label taken off, Kyverno withdraws them.
    name = unique("isolated")
    guarded.kubectl("create", "namespace", name)
    guarded.kubectl("label", "namespace", name, "kyverno.io/isolate=true")
    for policy in ISOLATION:
        guarded.wait_object(name, "networkpolicy", policy)
    guarded.kubectl("label", "namespace", name, "kyverno.io/isolate-")
    for policy in ISOLATION:
        guarded.wait_object(name, "networkpolicy", policy, gone=True)
    # Deleting an isolated namespace is not refused: the namespace controller may delete them.
    guarded.kubectl("label", "namespace", name, "kyverno.io/isolate=true")
    guarded.wait_object(name, "networkpolicy", "default-deny")
    guarded.kubectl("delete", "namespace", name, "--timeout=60s")


def test_pod_security_refuses_the_seeds_privileged_and_root_pods(guarded):
    privileged = pod("test-privileged", ["sleep", "3600"],
                     container={"securityContext": {"privileged": True}})  # fmt: skip
    root = pod("test-root", ["sleep", "3600"], container={"securityContext": {"runAsUser": 0}})
    for test, expected in ((privileged, 'privileged (container "app" must not set'),
                           (root, "runAsUser=0")):  # fmt: skip
        message = refusal(guarded, "production", test)
        assert 'violates PodSecurity "restricted:latest"' in message, message
        assert expected in message, message
        MEASUREMENTS[f"guardrails: {test['metadata']['name']} in production"] = message


def test_the_minimum_security_context_and_its_named_exclusions(guarded, namespace):
    guarded.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-",
                    input=yaml.safe_dump(secure_pod("minimal", ["true"])))  # fmt: skip
    writable = secure_pod("writable", ["true"], readOnlyRootFilesystem=False)
    message = refusal(guarded, namespace, writable)
    assert "require-security-context-constraints" in message, message
    loose = secure_pod("loose", ["true"])
    del loose["spec"]["securityContext"]["fsGroup"]
    message = refusal(guarded, namespace, loose)
    assert "require-pod-security-context" in message, message
    # Telepresence's traffic agent, in the one namespace exempt from those two rules.
    agent = pod("traffic-agent", ["true"], container={"securityContext": {
        "allowPrivilegeEscalation": True, "readOnlyRootFilesystem": False,
        "runAsNonRoot": False, "capabilities": {"add": ["SYS_PTRACE", "NET_ADMIN"]},
    }})  # fmt: skip
    guarded.kubectl("apply", "--dry-run=server", "-n", AMBASSADOR, "-f", "-",
                    input=yaml.safe_dump(agent))  # fmt: skip
    message = refusal(guarded, namespace, agent)
    assert "require-security-context-constraints" in message, message
    # A wildcard is not ALL; a container may not turn seccomp off under the pod's.
    for name, context in (("wildcard", {"capabilities": {"drop": ["*"]}}),
                          ("unconfined", {"seccompProfile": {"type": "Unconfined"}})):  # fmt: skip
        message = refusal(guarded, namespace, secure_pod(name, ["true"], **context))
        assert "require-security-context-constraints" in message, message
    # kubectl debug's container is held to it too (a sysadmin profile: privileged, root).
    running = secure_pod("running", ["sleep", "3600"])
    running["spec"]["restartPolicy"] = "Always"
    guarded.apply(namespace, running)
    guarded.wait_phase(namespace, "running", "Running")
    debug = guarded.kubectl("debug", "-n", namespace, "running", "--image=busybox:1.36",
                            "--profile=sysadmin", "--", "true", check=False)  # fmt: skip
    assert debug.returncode != 0
    assert "require-debug-container-security-context" in debug.stderr, debug.stderr


def test_an_intercepted_pod_runs_in_a_guarded_namespace(guarded):
    checks = (["request", "GET", "https://pypi.org/simple/"],
              ["request", "GET", "https://unknown.example/"])  # fmt: skip
    sandboxed = labelled_pod("sandboxed", probe(*checks), container={"securityContext": CONTAINER},
                             securityContext=copy.deepcopy(POD))  # fmt: skip
    guarded.wait_object("agents", "configmap", f"{RELEASE}-policy")
    guarded.apply("agents", sandboxed)
    done = guarded.wait_phase("agents", "sandboxed", "Succeeded", timeout=120)
    found = results(guarded, "agents", "sandboxed")
    assert result(found, *checks[0])["status"] == 200
    assert result(found, *checks[1])["status"] == 403
    # The LimitRange gave the workload the defaults the quota asks for.
    (app,) = [c for c in done["spec"]["containers"] if c["name"] == "app"]
    assert app["resources"]["limits"] == {"cpu": "500m", "memory": "512Mi"}


def workload(namespace: str, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"containers": [{"name": "app", "image": "busybox:1.36"}]}}  # fmt: skip


def ipv4_view(policy: dict[str, Any]) -> dict[str, Any]:
    """The NetworkPolicy as IPv4 traffic sees it, its IPv6 ipBlocks left out: the analyser reads
    an IPv6 block as the IPv4 range of its first four bytes (measured: ::/0 became every IPv4
    address, fd00:ec2::254 became 253.0.14.194). A rule whose peers were all IPv6 allows no
    IPv4 traffic and goes (an empty list of peers would mean every peer)."""
    out = copy.deepcopy(policy)
    for direction, peers in (("ingress", "from"), ("egress", "to")):
        rules = []
        for rule in out["spec"].get(direction) or []:
            given = rule.get(peers)
            kept = [p for p in given or [] if ":" not in p.get("ipBlock", {}).get("cidr", "")]
            if given and not kept:
                continue
            rules.append({**rule, peers: kept} if given else rule)
        if direction in out["spec"]:
            out["spec"][direction] = rules
    return out


def connections(objects: list[dict[str, Any]], directory: Path) -> dict[tuple[str, str], str]:
    """netpol-analyzer's allowed connections between the objects: (source, destination) -> what."""
    (directory / "objects.yaml").write_text(yaml.safe_dump_all(objects))
    listed = subprocess.run(
        [str(tool("netpolicy")), "list", "--dirpath", str(directory), "-o", "json"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    return {(c["src"], c["dst"]): c["conn"] for c in json.loads(listed)}


def covers(bounds: list[str], address: str) -> bool:
    """Whether the analyser's range `first-last` (or one address) holds `address`."""
    first, last = ipaddress.ip_address(bounds[0]), ipaddress.ip_address(bounds[-1])
    return first <= ipaddress.ip_address(address) <= last


def test_the_connectivity_the_network_policies_allow(guarded, tmp_path):
    """What Kyverno generated on the control plane (the NetworkPolicies, the namespaces, the
    gateway's Deployment), with pods of the test's making for the peers: read by the analyser."""
    for policy in ISOLATION:
        guarded.wait_object("agents", "networkpolicy", policy)
    guarded.wait_object("agents", "networkpolicy", "egress-proxy-clients")
    guarded.wait_object("agents", "networkpolicy", f"{RELEASE}-egress")
    live = json.loads(guarded.kubectl("get", "namespaces,networkpolicies", "-A", "-o",
                                      "json").stdout)["items"]  # fmt: skip
    gateway = guarded.get(GATEWAY_NAMESPACE, "deployment", "egress-proxy")
    peers = [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": n, "labels": {"kubernetes.io/metadata.name": n, **labels}}}
        for n, labels in (("ingress-nginx", {}), ("monitoring", {"name": "monitoring"}))
    ] + [
        workload("agents", "plain", {}),
        workload("agents", "client", {"networking/allow-egress": "true"}),
        workload("agents", "internal-a", {"networking/internal": "true"}),
        workload("agents", "internal-b", {"networking/internal": "true"}),
        workload("agents", "web", {"networking/allow-ingress": "true"}),
        workload("agents", "metrics", {"monitoring/prometheus-scrape": "true"}),
        workload("agents", "sandboxed", {"intercept-proxy/enabled": "true"}),
        # The node runs CoreDNS as a process behind kube-dns; a cluster runs these pods.
        workload("kube-system", "coredns", {"k8s-app": "kube-dns"}),
        workload("ingress-nginx", "controller", {"app": "ingress-nginx"}),
        workload("monitoring", "prometheus", {"app": "prometheus"}),
    ]  # fmt: skip
    live = [ipv4_view(o) if o["kind"] == "NetworkPolicy" else o for o in live]
    found = connections([*live, gateway, *peers], tmp_path)
    MEASUREMENTS["guardrails: connectivity (netpol-analyzer)"] = "\n" + "\n".join(
        f"  {s} => {d} : {c}" for (s, d), c in sorted(found.items()) if "agents/" in s + d
    )
    dns = "kube-system/coredns[Pod]"
    proxy = f"{GATEWAY_NAMESPACE}/egress-proxy[Deployment]"

    def out_of(name: str) -> dict[str, str]:
        return {d: c for (s, d), c in found.items() if s == f"agents/{name}[Pod]"}

    def into(name: str) -> dict[str, str]:
        return {s: c for (s, d), c in found.items() if d == f"agents/{name}[Pod]"}

    assert out_of("plain") == {dns: "TCP 53,UDP 53"}
    assert out_of("client") == {dns: "TCP 53,UDP 53", proxy: "TCP 3128"}
    peer = "agents/internal-b[Pod]"
    assert out_of("internal-a") == {dns: "TCP 53,UDP 53", peer: "All Connections"}
    assert into("internal-b") == {"agents/internal-a[Pod]": "All Connections"}
    assert into("plain") == {}
    assert into("web") == {"ingress-nginx/controller[Pod]": "All Connections"}
    assert into("metrics") == {"monitoring/prometheus[Pod]": "All Connections"}
    # Intercepted pods: their Envoy reaches the internet, but not the API or metadata service.
    external = [d for d in out_of("sandboxed") if d[0].isdigit()]
    assert external, out_of("sandboxed")
    reached = [r.split("-") for d in external for r in d.split(",")]
    assert any(covers(r, "203.0.113.7") for r in reached), external
    assert not any(covers(r, "169.254.169.254") for r in reached), external


def test_the_telepresence_example_beside_the_clusters_registry_policy(guarded, namespace):
    """The example's cluster: its own restrict-image-registries beside the release. The chart's
    images come from the mirror, so intercepted pods run under it; Telepresence's traffic agent
    (its registry, its privileges) is admitted in ambassador alone."""
    policy = EXAMPLES / "telepresence-cluster-policies.yaml"
    guarded.kubectl("apply", "-f", str(policy))
    try:
        guarded.kubectl("wait", "clusterpolicy/restrict-image-registries", "--for=condition=Ready",
                        "--timeout=60s")  # fmt: skip
        tested = guarded.helm("test", RELEASE, "-n", NAMESPACE, "--logs").stdout
        assert "Phase:          Succeeded" in tested, tested
        checks = (["request", "GET", "https://pypi.org/simple/"],)
        mirrored = labelled_pod("mirrored", probe(*checks), securityContext=copy.deepcopy(POD),
                                container={"securityContext": CONTAINER,
                                           "image": MIRROR + "python:3.12-slim"})  # fmt: skip
        guarded.apply("agents", mirrored)
        guarded.wait_phase("agents", "mirrored", "Succeeded", timeout=120)
        assert result(results(guarded, "agents", "mirrored"), *checks[0])["status"] == 200
        elsewhere = secure_pod("elsewhere", ["true"])
        message = refusal(guarded, namespace, elsewhere)
        assert "validate-registries" in message, message
        agent = pod("traffic-agent", ["true"], container={
            "image": "ghcr.io/telepresenceio/tel2:2.20.0",
            "securityContext": {"allowPrivilegeEscalation": True, "runAsNonRoot": False,
                                "capabilities": {"add": ["SYS_PTRACE", "NET_ADMIN"]}},
        })  # fmt: skip
        guarded.kubectl("apply", "--dry-run=server", "-n", AMBASSADOR, "-f", "-",
                        input=yaml.safe_dump(agent))  # fmt: skip
    finally:
        guarded.kubectl("delete", "-f", str(policy), "--ignore-not-found")


def test_the_rollback_in_the_seeds_order(guarded):
    """NetworkPolicies first (connectivity comes back), then Pod Security, then the rest."""
    guarded.kubectl("delete", "clusterpolicy", "protect-default-deny-netpol",
                    "default-deny-namespaces")  # fmt: skip
    for name in GUARDED:
        for policy in ISOLATION:
            guarded.wait_object(name, "networkpolicy", policy, gone=True)
    for name in GUARDED:
        guarded.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce-")
    upgrade(guarded, RELEASE, NAMESPACE, {**VALUES, "guardrails": {"enabled": False}})
    assert (
        "require-security-context"
        not in guarded.kubectl("get", "clusterpolicy", "-o", "name").stdout
    )
    for name in GUARDED:
        kept = guarded.get("", "namespace", name)["metadata"]
        assert "pod-security.kubernetes.io/enforce" not in kept["labels"]
        left = guarded.kubectl("get", "resourcequota,limitrange", "-n", name, "-o", "name")
        assert left.stdout == "", left.stdout
    # A root pod is admitted in production again (PodSecurity warns; nothing refuses).
    root = pod("test-root", ["true"], container={"securityContext": {"runAsUser": 0}})
    guarded.kubectl("apply", "--dry-run=server", "-n", "production", "-f", "-",
                    input=yaml.safe_dump(root))  # fmt: skip
