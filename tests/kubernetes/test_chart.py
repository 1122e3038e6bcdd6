"""The chart's life on a real control plane, in order: `helm install`, `helm test`, upgrades that
change the CA mode, the selectors and the network policy's CIDRs (each serving pods), a second
release beside the first, and uninstalls that leave nothing behind."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from cryptography import x509

from intercept_proxy.pki.ca import CertificateAuthority
from tests.cluster.harness import LAB_UPSTREAMS
from tests.kubernetes.chart import (
    der,
    labelled_pod,
    leftovers,
    probe,
    refusal,
    result,
    results,
    uninstall,
    upgrade,
)

pytestmark = pytest.mark.netns

RELEASE, NAMESPACE = "life", "life-system"
OTHER, OTHER_NAMESPACE = "other", "other-system"
TEAM_A, TEAM_B = "team-a", "team-b"
POLICY = {"default": {"allowed_domains": ["pypi.org"]}}
CHECKS = (["request", "GET", "https://pypi.org/simple/"], ["certificate", "pypi.org", "pypi.org"])
SELECT_A = {"matchLabels": {"team": "a"}}
SELECT_B = {"matchLabels": {"team": "b"}}
API_CIDR = "10.96.0.1/32"


def values(**given: Any) -> dict[str, Any]:
    return {**LAB_UPSTREAMS, "policy": POLICY, **given}


@pytest.fixture(scope="module")
def chart(kube):
    """The release of this module, with two team namespaces; uninstalled whatever happens."""
    for name, team in ((TEAM_A, "a"), (TEAM_B, "b")):
        kube.kubectl("create", "namespace", name)
        kube.kubectl("label", "namespace", name, f"team={team}")
    kube.install(RELEASE, NAMESPACE, values())
    yield kube
    for release, namespace in ((OTHER, OTHER_NAMESPACE), (RELEASE, NAMESPACE)):
        if kube.helm("status", release, "-n", namespace, check=False).returncode == 0:
            uninstall(kube, release, namespace)
    for name in (TEAM_A, TEAM_B, NAMESPACE, OTHER_NAMESPACE):
        kube.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


def run_pod(kube, namespace: str, name: str) -> dict[str, Any]:
    """A labelled pod's request and certificate, once it has run; its stored spec as `pod`."""
    kube.apply(namespace, labelled_pod(name, probe(*CHECKS)))
    stored = kube.wait_phase(namespace, name, "Succeeded", timeout=120)
    found = results(kube, namespace, name)
    leaf = x509.load_der_x509_certificate(der(result(found, *CHECKS[1])))
    bundle = x509.load_pem_x509_certificate(found["bundle"]["first"].encode())
    return {"pod": stored, "status": result(found, *CHECKS[0])["status"], "leaf": leaf,
            "bundle": bundle}  # fmt: skip


def secret_ca(kube, namespace: str, name: str) -> x509.Certificate:
    secret = kube.wait_object(namespace, "secret", name)
    return x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))


def test_install_and_helm_test(chart):
    out = chart.helm("test", RELEASE, "-n", NAMESPACE, "--logs").stdout
    assert "Phase:          Succeeded" in out, out
    policies = chart.policies(RELEASE)
    assert {f"{RELEASE}-inject-proxy", f"{RELEASE}-validate-pods"} <= policies


def test_ephemeral_mode_a_pods_certificates_come_from_its_own_ca(chart):
    a = run_pod(chart, TEAM_A, "eph")
    assert a["status"] == 200
    a["leaf"].verify_directly_issued_by(a["bundle"])
    egress = chart.wait_object(TEAM_A, "networkpolicy", f"{RELEASE}-egress")
    assert egress["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    # DNS to the DNS pods by selector (an ipBlock misses cluster pods on some network plugins).
    (dns,) = egress["spec"]["egress"][0]["to"]
    assert dns["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    # A namespace may opt out; the policy is withdrawn from it.
    chart.wait_object(TEAM_B, "networkpolicy", f"{RELEASE}-egress")
    chart.kubectl("label", "namespace", TEAM_B, "intercept-proxy/network-policy=disabled")
    chart.wait_object(TEAM_B, "networkpolicy", f"{RELEASE}-egress", gone=True)


def test_upgrade_to_a_shared_secret_ca_with_selectors_and_cidrs(chart):
    before = chart.policies(RELEASE)
    given = values(
        ca={"mode": "secret"},
        injection={"namespaceSelector": SELECT_A},
        clone={"namespaceSelector": SELECT_A},
        networkPolicy={"kubernetesApiCidrs": [API_CIDR]},
    )
    deleted = upgrade(chart, RELEASE, NAMESPACE, given)
    after = chart.policies(RELEASE)
    renamed = {n.rpartition("-")[0] for n in before ^ after}
    assert renamed == {f"{RELEASE}-clone", f"{RELEASE}-egress"}, (before, after)
    # The pre-upgrade hook deleted the replaced generating policies, and no other.
    assert set(deleted) == before - after, (deleted, before, after)
    ca = secret_ca(chart, NAMESPACE, f"{RELEASE}-ca")
    assert secret_ca(chart, TEAM_A, f"{RELEASE}-ca") == ca
    a = run_pod(chart, TEAM_A, "shared")
    assert a["status"] == 200
    a["leaf"].verify_directly_issued_by(ca)
    assert a["bundle"] == ca
    egress = chart.get(TEAM_A, "networkpolicy", f"{RELEASE}-egress")
    excepted = [b["ipBlock"].get("except", []) for b in egress["spec"]["egress"][1]["to"]]
    assert API_CIDR in excepted[0]
    # Team b is no longer selected: its copies go, its pods are not injected.
    chart.wait_object(TEAM_B, "configmap", f"{RELEASE}-policy", gone=True)
    chart.apply(TEAM_B, labelled_pod("unselected", ["true"]))
    assert "initContainers" not in chart.pod(TEAM_B, "unselected")["spec"]
    chart.kubectl("delete", "pod", "-n", TEAM_B, "unselected", "--wait=false")
    # No other pod may hold the CA's key, labelled or not.
    reader = labelled_pod(
        "reader", ["true"], volumes=[{"name": "key", "secret": {"secretName": f"{RELEASE}-ca"}}]
    )
    reader["metadata"]["labels"] = {}
    message = refusal(chart, TEAM_A, reader)
    assert "agent-secrets-elsewhere:" in message, message
    # An upgrade keeps the CA the running pods trust; nothing to replace, no hook.
    assert upgrade(chart, RELEASE, NAMESPACE, given) == []
    assert secret_ca(chart, NAMESPACE, f"{RELEASE}-ca") == ca


def test_upgrade_to_cert_manager_clones_the_ca_once_issued(chart):
    chart.kubectl("apply", "-f", str(chart.cluster.tools.cert_manager_crds))
    upgrade(chart, RELEASE, NAMESPACE, values(
        ca={"mode": "certManager", "certManager": {"issuerRef": {"name": "corp"}}},
        injection={"namespaceSelector": SELECT_A},
        clone={"namespaceSelector": SELECT_A},
    ))  # fmt: skip
    certificate = chart.get(NAMESPACE, "certificate", f"{RELEASE}-ca")
    assert certificate["spec"]["secretName"] == f"{RELEASE}-ca"
    # cert-manager's part, done here: the Secret it would issue, written after the policies.
    issued = CertificateAuthority.generate("issued by cert-manager's stand-in")
    chart.apply(NAMESPACE, {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": f"{RELEASE}-ca"},
        "stringData": {"tls.crt": issued.cert_pem.decode(), "tls.key": issued.key_pem().decode()},
    })  # fmt: skip
    deadline = time.monotonic() + 60
    while secret_ca(chart, TEAM_A, f"{RELEASE}-ca") != issued.cert:
        assert time.monotonic() < deadline, "the issued CA was never cloned into team-a"
        time.sleep(0.3)
    a = run_pod(chart, TEAM_A, "issued")
    assert a["status"] == 200
    a["leaf"].verify_directly_issued_by(issued.cert)


def test_a_second_release_serves_other_namespaces(chart):
    chart.install(OTHER, OTHER_NAMESPACE, values(
        injection={"namespaceSelector": SELECT_B}, clone={"namespaceSelector": SELECT_B},
    ))  # fmt: skip
    chart.wait_object(TEAM_B, "configmap", f"{OTHER}-policy")
    b = run_pod(chart, TEAM_B, "by-other")
    assert b["status"] == 200
    agent = [c for c in b["pod"]["spec"]["initContainers"] if c["name"] == "intercept-agent"]
    volumes = json.dumps(b["pod"]["spec"]["volumes"])
    assert agent and f"{OTHER}-policy" in volumes and f"{RELEASE}-" not in volumes
    assert run_pod(chart, TEAM_A, "by-first")["status"] == 200
    uninstall(chart, OTHER, OTHER_NAMESPACE)
    assert leftovers(chart, OTHER) == []
    assert run_pod(chart, TEAM_A, "after-other")["status"] == 200


def test_uninstall_leaves_nothing(chart):
    uninstall(chart, RELEASE, NAMESPACE)
    # The Secret written in cert-manager's place is cert-manager's, which keeps what it issued
    # when its Certificate goes: the chart's objects and every clone of it are gone.
    assert leftovers(chart, RELEASE) == [f"Secret {NAMESPACE}/{RELEASE}-ca"]
    chart.kubectl("delete", "secret", "-n", NAMESPACE, f"{RELEASE}-ca")
    assert leftovers(chart, RELEASE) == []
