"""The egress gateway with a CA of the operator's (`gateway.ca.mode: secret`) on the real control
plane: the replicas mint from the operator's Secret, Kyverno gives the clients its certificate read
from that Secret (and again when it changes, when Kyverno also rolls the replicas onto the new CA),
and a client pod trusting that alone reaches an allowed host through a replica. A replica deleted
in the middle of a client's stream drains first: the stream ends whole. Then `certManager` mode:
the chart's Certificate is accepted by the API server under cert-manager's CRD (no cert-manager
controller runs here: the Secret stays the operator's)."""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from intercept_proxy.injector import gateway
from intercept_proxy.pki.ca import CertificateAuthority
from tests.cluster.harness import CHART, LAB_UPSTREAMS, MEASUREMENTS
from tests.cluster.test_gateway import client, through

pytestmark = pytest.mark.netns

RELEASE = "own-ca"
RELEASE_NAMESPACE = "own-ca-release"
GATEWAY_NAMESPACE = "own-ca-egress"
CLIENTS = {"own-ca": "client"}
SELECTOR = f"app.kubernetes.io/name={gateway.NAME},app.kubernetes.io/instance={RELEASE}"


def ca_secret(ca: CertificateAuthority) -> dict:
    """The Secret as an operator makes it (`kubectl create secret tls`)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": gateway.CA_SECRET, "namespace": GATEWAY_NAMESPACE},
        "stringData": {"tls.crt": ca.cert_pem.decode(), "tls.key": ca.key_pem().decode()},
    }


def values(mode: dict) -> dict:
    return {
        **LAB_UPSTREAMS,
        "policy": {"default": {"allowed_domains": ["pypi.org"]}},
        "gateway": {
            "enabled": True,
            "namespace": GATEWAY_NAMESPACE,
            "createNamespace": False,
            "ca": mode,
            "autoscaling": {"enabled": False},
            "clients": {"namespaceSelector": {"matchLabels": CLIENTS}, "proxyEnv": True},
        },
    }


@pytest.fixture(scope="module")
def operator_ca(kube):
    """The operator's namespace (Pod Security restricted) and CA, then the chart in `secret`
    mode, by the real Helm."""
    ca = CertificateAuthority.generate("the operator's egress CA")
    kube.kubectl("create", "namespace", GATEWAY_NAMESPACE)
    kube.kubectl(
        "label", "namespace", GATEWAY_NAMESPACE, "pod-security.kubernetes.io/enforce=restricted"
    )
    kube.apply(GATEWAY_NAMESPACE, ca_secret(ca))
    start = time.monotonic()
    kube.install(RELEASE, RELEASE_NAMESPACE, values({"mode": "secret"}))
    replica = ready_replica(kube)
    MEASUREMENTS["gateway, own CA: install to a replica Ready, s"] = round(
        time.monotonic() - start, 2
    )
    yield ca, replica
    kube.helm("uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait", "--no-hooks")
    for namespace in (RELEASE_NAMESPACE, GATEWAY_NAMESPACE):
        kube.kubectl("delete", "namespace", namespace, "--wait=false")


def ready_replica(kube, timeout: float = 120.0, annotated: str | None = None) -> dict:
    """A Ready replica (`annotated`: of a template with that CA digest, Kyverno's)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = kube.kubectl("get", "pods", "-n", GATEWAY_NAMESPACE, "-l", SELECTOR, "-o", "json")
        for replica in json.loads(listed.stdout)["items"]:
            conditions = replica["status"].get("conditions") or []
            digest = (replica["metadata"].get("annotations") or {}).get("checksum/ca")
            if annotated is not None and digest != annotated:
                continue
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                return replica
        time.sleep(0.5)
    raise AssertionError(f"no gateway replica Ready in {timeout}s (annotated {annotated})")


def copied_certificate(kube, namespace: str, expected: bytes, timeout: float = 60.0) -> str:
    """The certificate in the client namespace's ConfigMap, once it is `expected`."""
    deadline = time.monotonic() + timeout
    found = ""
    while time.monotonic() < deadline:
        config_map = kube.wait_object(namespace, "configmap", gateway.CLIENT_CA_CONFIG_MAP)
        found = config_map["data"][gateway.CLIENT_CA_KEY]
        if found == expected.decode():
            return found
        time.sleep(0.5)
    raise AssertionError(f"the clients' certificate is still {found[:80]!r} after {timeout}s")


def test_the_replicas_mint_from_the_operators_ca_and_the_clients_trust_it(
    kube, namespace, operator_ca
):
    ca, replica = operator_ca
    # The chart made no CA of its own, and no copy in its namespace.
    secret = kube.get(GATEWAY_NAMESPACE, "secret", gateway.CA_SECRET)
    assert "app.kubernetes.io/managed-by" not in (secret["metadata"].get("labels") or {})
    missing = kube.kubectl(
        "get", "configmap", "-n", RELEASE_NAMESPACE, gateway.CLIENT_CA_CONFIG_MAP, check=False
    )
    assert missing.returncode != 0
    # A client namespace (restricted) gets the certificate, read from the operator's Secret.
    kube.kubectl("label", "namespace", namespace, "own-ca=client")
    kube.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    copied_certificate(kube, namespace, ca.cert_pem)
    # A client trusting that certificate alone (Kyverno mounts it and names it in the usual
    # variables) gets the allowed host through the replica, its leaf the operator's CA's, and
    # the refusal elsewhere.
    address = replica["status"]["podIP"]
    cases = [(address, "https://pypi.org/simple/", ()), (address, "https://exfil.example/", ())]
    (allowed, refused) = through(kube, namespace, cases)
    assert allowed[0] == "200" and allowed[2] == "", allowed
    assert refused[2] == "curl: (56) CONNECT tunnel failed, response 403", refused


def test_a_stopping_replica_finishes_the_streams_under_way(kube, namespace, operator_ca):
    """Deleted in the middle of a client's stream (a rollout, a scale-down, a node drain), a
    replica drains first: the stream ends whole, then the replica goes."""
    kube.kubectl("label", "namespace", namespace, "own-ca=client")
    ca, replica = operator_ca
    copied_certificate(kube, namespace, ca.cert_pem)
    address = replica["status"]["podIP"]
    events = 6
    stream = ["curl", "-sS", "-N", "--proxy", f"http://{address}:3128",
              f"https://pypi.org/stream/{events}"]  # fmt: skip
    kube.apply(namespace, client("streaming", stream))
    deadline = time.monotonic() + 60
    while "id: 1" not in kube.kubectl("logs", "-n", namespace, "streaming", check=False).stdout:
        assert time.monotonic() < deadline, "the stream never began"
        time.sleep(0.2)
    deleted = time.monotonic()
    name = replica["metadata"]["name"]
    kube.kubectl("delete", "pod", "-n", GATEWAY_NAMESPACE, name, "--wait=false")
    kube.wait_phase(namespace, "streaming", "Succeeded", timeout=60)
    received = [line for line in kube.logs(namespace, "streaming").splitlines() if line]
    assert [line for line in received if line.startswith("id: ")] == [
        f"id: {i}" for i in range(1, events + 1)
    ]
    # Gone once its client left, not at the grace period's end (30 s).
    kube.wait_object(GATEWAY_NAMESPACE, "pod", name, gone=True, timeout=15)
    MEASUREMENTS["gateway: replica deleted mid-stream to gone, s"] = round(
        time.monotonic() - deleted, 2
    )


def test_a_new_ca_reaches_the_clients_and_cert_manager_mode_renders(kube, namespace, operator_ca):
    kube.kubectl("label", "namespace", namespace, "own-ca=client")
    ca, _ = operator_ca
    copied_certificate(kube, namespace, ca.cert_pem)
    # The operator replaces the CA: Kyverno follows the Secret.
    renewed = CertificateAuthority.generate("the operator's renewed egress CA")
    kube.apply(GATEWAY_NAMESPACE, ca_secret(renewed))
    copied_certificate(kube, namespace, renewed.cert_pem)
    # ... and rolls the replicas, which then mint from the new CA: a client trusting it alone
    # (its namespace's new copy) reaches the allowed host.
    digest = hashlib.sha256(renewed.cert_pem).hexdigest()[:16]
    replica = ready_replica(kube, annotated=digest)
    ((status, _, complaint),) = through(
        kube, namespace, [(replica["status"]["podIP"], "https://pypi.org/simple/", ())]
    )
    assert (status, complaint) == ("200", ""), complaint
    # certManager mode: the Certificate of the issuer given, for the same Secret.
    kube.kubectl("apply", "-f", str(kube.cluster.tools.cert_manager_crds))
    issuer = {"name": "corp-ca", "kind": "ClusterIssuer"}
    mode = {"mode": "certManager", "certManager": {"issuerRef": issuer}}
    kube.helm(
        "upgrade", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE, "--reuse-values",
        "--set-json", f"gateway.ca={json.dumps(mode)}", "--wait", "--no-hooks",
    )  # fmt: skip
    certificate = kube.get(GATEWAY_NAMESPACE, "certificate", gateway.CA_SECRET)
    assert certificate["spec"]["isCA"] is True
    assert certificate["spec"]["secretName"] == gateway.CA_SECRET
    assert certificate["spec"]["issuerRef"] == {**issuer, "group": "cert-manager.io"}
