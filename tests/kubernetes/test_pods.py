"""The prototype's end-to-end suite on a real control plane: pods created with kubectl, injected
and validated by the real Kyverno from the chart installed by the real Helm, stored by the real
API server (with AlwaysPullImages rewriting them too) and run by the cluster's node against its
lab."""

from __future__ import annotations

import json
import secrets
import time

import pytest
from cryptography import x509

from intercept_proxy.decision import parse_log
from intercept_proxy.injector.pod import inject_pod, verified
from intercept_proxy.injector.values import settings_from_values
from tests.cluster.harness import LAB_UPSTREAMS, MEASUREMENTS, WORKLOAD_UID
from tests.kubernetes.chart import (
    der,
    installed,
    labelled_pod,
    probe,
    result,
    results,
)

pytestmark = pytest.mark.netns

RELEASE = "intercept-proxy"
VALUES = {
    **LAB_UPSTREAMS,
    "policy": {
        "default": {
            "allowed_domains": ["pypi.org", "example.com"],
            "unrestricted_domains": ["api.anthropic.com"],
            "credentials": [{"host": "api.anthropic.com", "header": "x-api-key", "env": "API_KEY"}],
        }
    },
}
# The operator's key, in the Secret <release>-credentials of the pods' namespace.
API_KEY = "sk-ant-" + secrets.token_hex(16)
SIDECAR_PORTS = (15000, 15001, 15002, 15020, 15021, 15022, 15053, 15090)
FROM_INIT = (
    "for u in https://pypi.org/from-init https://unknown.example/from-init; do"
    ' curl -s -o /dev/null -w "$u %{http_code}\\n" $u; done'
)


@pytest.fixture(scope="module")
def release(kube):
    with installed(kube, RELEASE, "intercept-proxy", VALUES):
        yield settings_from_values(VALUES, RELEASE)


@pytest.fixture(scope="module")
def space(kube, release):
    """A namespace of this module's, with the default policy cloned into it."""
    name = f"pods-{int(time.time() * 1000) % 100000}"
    kube.kubectl("create", "namespace", name)
    kube.kubectl(
        "create", "secret", "generic", f"{RELEASE}-credentials", "-n", name,
        f"--from-literal=API_KEY={API_KEY}",
    )  # fmt: skip
    kube.wait_object(name, "configmap", f"{RELEASE}-policy")
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false")


def checks(cluster) -> list[list]:
    lab = cluster.lab.host("pypi.org")
    return [
        ["request", "GET", "https://pypi.org/simple/"],
        ["request", "GET", "http://pypi.org/simple/"],
        ["request", "POST", "https://pypi.org/upload"],
        ["request", "GET", "https://unknown.example/"],
        ["request", "GET", "https://example.com/"],
        ["request", "POST", "https://api.anthropic.com/v1/messages"],
        ["certificate", "pypi.org", "pypi.org"],
        # Straight to the lab's addresses, no DNS: captured all the same, in both families.
        ["certificate", lab.ipv4, "pypi.org"],
        ["certificate", lab.ipv6, "pypi.org"],
        ["connect", *[[a, p] for a in ("127.0.0.1", "::1") for p in SIDECAR_PORTS]],
    ]


@pytest.fixture(scope="module")
def pods(kube, space, cluster):
    """Two labelled pods side by side, each narrowing the default policy its own way; pod a
    has an init container of its own; pod c follows the default policy."""
    start = time.monotonic()
    a = labelled_pod(
        "pod-a",
        probe(*checks(cluster)),
        metadata={"annotations": {"intercept-proxy/opa-data": "allowed_domains: [pypi.org]\n"}},
        initContainers=[{"name": "fetch", "image": "curlimages/curl:8.11.1",
                         "command": ["sh", "-c", FROM_INIT]}],
    )  # fmt: skip
    b = labelled_pod(
        "pod-b",
        probe(*checks(cluster)),
        metadata={"annotations": {"intercept-proxy/opa-data": "allowed_domains: [example.com]\n"}},
    )
    c = labelled_pod("pod-c", probe(["request", "POST", "https://api.anthropic.com/v1/messages"]))
    kube.apply(space, a, b, c)
    done = {
        name: kube.wait_phase(space, name, "Succeeded", timeout=120)
        for name in ("pod-a", "pod-b", "pod-c")
    }
    MEASUREMENTS["kubectl apply of 3 labelled pods to all Succeeded (Kyverno-injected), s"] = round(
        time.monotonic() - start, 2
    )
    return {
        key: {"pod": done[name], "results": results(kube, space, name)}
        for key, name in (("a", "pod-a"), ("b", "pod-b"), ("c", "pod-c"))
    }


def test_kyverno_injects_what_the_injector_writes(pods, release):
    """The stored pod's interceptor is, field by field that matters, what `intercept inject`
    writes for the same values; the API server's AlwaysPullImages changed it besides."""
    stored = pods["a"]["pod"]
    init = stored["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["proxy-init", "intercept-agent", "envoy", "fetch"]
    submitted = labelled_pod("pod-a", ["true"], initContainers=[{"name": "fetch"}])
    expected = inject_pod(submitted, release)["spec"]["initContainers"][:3]
    assert [verified(c) for c in init[:3]] == [verified(c) for c in expected]
    assert {c["imagePullPolicy"] for c in init} == {"Always"}
    uids = {c["name"]: c["securityContext"]["runAsUser"] for c in init[:3]}
    assert uids == {"proxy-init": 0, "intercept-agent": 102, "envoy": 101}
    assert init[0]["securityContext"]["capabilities"]["add"] == ["NET_ADMIN", "NET_RAW"]
    assert stored["spec"]["automountServiceAccountToken"] is False
    assert not [v for v in stored["spec"]["volumes"] if v["name"].startswith("kube-api-access")]
    assert pods["a"]["results"]["bundle"]["uid"] == WORKLOAD_UID


def test_proxy_init_ran_and_logged_its_rules(kube, space, pods):
    log = kube.logs(space, "pod-a", "-c", "proxy-init")
    assert "-j REDIRECT --to-ports 15001" in log
    assert "rules applied and verified (ipv4, ipv6: nat, filter)" in log
    status = {s["name"]: s for s in pods["a"]["pod"]["status"]["initContainerStatuses"]}
    assert status["proxy-init"]["state"]["terminated"]["exitCode"] == 0


def test_the_certificate_is_the_pods_own_cas(pods, cluster):
    """Whatever address the workload dials, the certificate is minted by its pod's CA (first in
    the bundle its variables name), which the workload verified; each pod has its own."""
    cas = []
    lab = cluster.lab.host("pypi.org")
    for key in ("a", "b"):
        found = pods[key]["results"]
        ca = x509.load_pem_x509_certificate(found["bundle"]["first"].encode())
        for address in ("pypi.org", lab.ipv4, lab.ipv6):
            leaf = x509.load_der_x509_certificate(
                der(result(found, "certificate", address, "pypi.org"))
            )
            leaf.verify_directly_issued_by(ca)
        cas.append(ca.fingerprint(ca.signature_hash_algorithm))
    assert cas[0] != cas[1]


def status_of(found, *check) -> int | None:
    return result(found, *check)["status"]


def error_of(found, *check) -> dict:
    return json.loads(result(found, *check)["body"])["error"]


def test_allowed_get_denied_post_unknown_host_plain_and_tls(pods, cluster):
    a = pods["a"]["results"]
    assert status_of(a, "request", "GET", "https://pypi.org/simple/") == 200
    assert status_of(a, "request", "GET", "http://pypi.org/simple/") == 200
    assert status_of(a, "request", "POST", "https://pypi.org/upload") == 403
    assert error_of(a, "request", "POST", "https://pypi.org/upload")["rule"] == "method_not_allowed"
    assert status_of(a, "request", "GET", "https://unknown.example/") == 403
    error = error_of(a, "request", "GET", "https://unknown.example/")
    assert error["code"] == "POLICY_BLOCKED"
    assert "is not allowed by the policy" in error["message"]
    receipts = cluster.lab.receipts()
    assert [r["path"] for r in receipts if r.get("host") == "pypi.org"].count("/upload") == 0
    assert "/simple/" in [r["path"] for r in receipts if r.get("host") == "pypi.org"]


def test_sidecar_ports_are_unreachable_from_the_workload(pods):
    for key in ("a", "b"):
        (found,) = [v for k, v in pods[key]["results"].items() if "connect" in k]
        assert found["control"] == "connected"  # a refusal, not a probe that reaches nothing
        assert len(found["results"]) == 2 * len(SIDECAR_PORTS)
        assert "connected" not in found["results"].values(), found


def test_each_pod_gets_its_own_policy(pods):
    a, b = pods["a"]["results"], pods["b"]["results"]
    assert status_of(a, "request", "GET", "https://example.com/") == 403
    error = error_of(a, "request", "GET", "https://example.com/")
    assert error["rule"] == "pod:default_deny"
    assert "this pod's own policy" in error["message"]
    assert status_of(b, "request", "GET", "https://example.com/") == 200
    assert status_of(b, "request", "GET", "https://pypi.org/simple/") == 403
    # A pod's policy only narrows: api.anthropic.com is the default's, not pod-b's.
    assert status_of(b, "request", "POST", "https://api.anthropic.com/v1/messages") == 403


def test_the_agent_sends_the_credential_from_the_namespaces_secret(pods):
    """The workload sends no key; the API gets the operator's, from the Secret only the agent
    reads (its echo says what it received)."""
    c = pods["c"]["results"]
    assert status_of(c, "request", "POST", "https://api.anthropic.com/v1/messages") == 200
    echo = json.loads(result(c, "request", "POST", "https://api.anthropic.com/v1/messages")["body"])
    assert echo["headers"]["x-api-key"] == API_KEY
    agent = pods["c"]["pod"]["spec"]["initContainers"][1]
    assert agent["envFrom"] == [{"secretRef": {"name": f"{RELEASE}-credentials", "optional": True}}]
    workload = pods["c"]["pod"]["spec"]["containers"][0]
    assert "envFrom" not in workload and "API_KEY" not in json.dumps(workload.get("env"))


def test_the_workloads_own_init_container_is_intercepted(kube, space, pods):
    lines = kube.logs(space, "pod-a", "-c", "fetch").splitlines()
    assert lines == ["https://pypi.org/from-init 200", "https://unknown.example/from-init 403"]
    decisions = parse_log(kube.logs(space, "pod-a", "-c", "envoy"))
    from_init = [(d.host, d.allow) for d in decisions if d.path == "/from-init"]
    assert from_init == [("pypi.org", True), ("unknown.example", False)]


def test_an_annotation_change_is_enforced_without_a_restart(kube, space):
    script = (
        "while true; do curl -s -o /dev/null -w '%{http_code}\\n' https://example.com/;"
        " sleep 0.3; done"
    )
    start = time.monotonic()
    kube.apply(space, labelled_pod("looper", ["sh", "-c", script], restartPolicy="Always"))
    ready = kube.wait_ready(space, "looper", timeout=120)
    MEASUREMENTS["labelled pod: kubectl apply to Ready (injected, sidecars ready), s"] = round(
        time.monotonic() - start, 2
    )
    sidecars = {s["name"]: s for s in ready["status"]["initContainerStatuses"]}
    assert sidecars["envoy"]["ready"] and sidecars["intercept-agent"]["started"]

    def codes() -> list[str]:
        return kube.logs(space, "looper", "-c", "app").split()

    deadline = time.monotonic() + 30
    while "200" not in codes():
        assert time.monotonic() < deadline, codes()
        time.sleep(0.3)
    kube.kubectl(
        "annotate", "pod", "-n", space, "looper", "--overwrite",
        "intercept-proxy/opa-data=allowed_domains: [pypi.org]",
    )  # fmt: skip
    start, seen = time.monotonic(), len(codes())
    while "403" not in codes()[seen:]:
        assert time.monotonic() - start < 30, codes()
        time.sleep(0.3)
    MEASUREMENTS["kubectl annotate to the first denial under the new policy, s"] = round(
        time.monotonic() - start, 2
    )
    statuses = kube.pod(space, "looper")["status"]
    restarts = [s["restartCount"] for s in statuses["initContainerStatuses"]]
    restarts += [s["restartCount"] for s in statuses["containerStatuses"]]
    assert restarts == [0, 0, 0, 0]
