"""Kyverno as the cluster runs it (out of cluster, as its own service accounts): policies become
Ready, its webhooks mutate pods, its background controller generates, and its stock RBAC is what
it may do: a policy needing more is refused, as in a real cluster."""

from __future__ import annotations

import json
import time

import pytest

from tests.cluster.harness import MEASUREMENTS, pod

pytestmark = pytest.mark.netns


def policy(name: str, rule: dict) -> dict:
    return {
        "apiVersion": "kyverno.io/v1",
        "kind": "ClusterPolicy",
        "metadata": {"name": name},
        "spec": {"rules": [{"name": "rule", **rule}]},
    }


@pytest.fixture
def cluster_policy(kube):
    created = []

    def create(body: dict) -> None:
        kube.kubectl("apply", "-f", "-", input=json.dumps(body))
        created.append(body["metadata"]["name"])
        start = time.monotonic()
        kube.kubectl(
            "wait",
            "--for=condition=Ready",
            f"clusterpolicy/{body['metadata']['name']}",
            "--timeout=90s",
        )
        MEASUREMENTS[f"ClusterPolicy {body['metadata']['name']}: apply to Ready, s"] = round(
            time.monotonic() - start, 2
        )

    yield create
    for name in created:
        kube.kubectl("delete", "clusterpolicy", name, "--wait=true")


def test_kyverno_mutates_pods(kube, namespace, cluster_policy):
    cluster_policy(
        policy(
            "test-add-label",
            {
                "match": {
                    "any": [
                        {
                            "resources": {
                                "kinds": ["Pod"],
                                "selector": {"matchLabels": {"kyverno-test": "mutate"}},
                            }
                        }
                    ]
                },
                "mutate": {
                    "patchStrategicMerge": {"metadata": {"labels": {"mutated-by": "kyverno"}}}
                },
            },
        )
    )
    kube.apply(namespace, pod("mutated", ["true"], metadata={"labels": {"kyverno-test": "mutate"}}))
    labels = kube.pod(namespace, "mutated")["metadata"]["labels"]
    assert labels["mutated-by"] == "kyverno"


def test_kyverno_generates_with_its_background_controller(kube, cluster_policy):
    kube.apply(
        "default",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "kyverno-test-source"},
            "data": {"copied": "yes"},
        },
    )
    cluster_policy(
        policy(
            "test-clone-configmap",
            {
                "match": {
                    "any": [
                        {
                            "resources": {
                                "kinds": ["Namespace"],
                                "selector": {"matchLabels": {"kyverno-test": "generate"}},
                            }
                        }
                    ]
                },
                "generate": {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "name": "copied",
                    "namespace": "{{request.object.metadata.name}}",
                    "synchronize": True,
                    "clone": {"namespace": "default", "name": "kyverno-test-source"},
                },
            },
        )
    )
    name = f"generated-{int(time.time() * 1000) % 100000}"
    kube.kubectl(
        "apply", "-f", "-",
        input=json.dumps({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"kyverno-test": "generate"}},
        }),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            got = kube.kubectl("get", "configmap", "-n", name, "copied", "-o", "json", check=False)
            if got.returncode == 0:
                break
            assert time.monotonic() < deadline, "the background controller generated nothing"
            time.sleep(0.5)
        assert json.loads(got.stdout)["data"] == {"copied": "yes"}
    finally:
        kube.kubectl("delete", "namespace", name, "--wait=true", "--timeout=120s")
        kube.kubectl("delete", "configmap", "-n", "default", "kyverno-test-source")


def test_stock_rbac_is_what_kyverno_may_do(kube):
    """Cloning Secrets needs more than stock Kyverno's RBAC: refused here as in a cluster."""
    refused = kube.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            policy(
                "test-clone-secret",
                {
                    "match": {"any": [{"resources": {"kinds": ["Namespace"]}}]},
                    "generate": {
                        "apiVersion": "v1",
                        "kind": "Secret",
                        "name": "copied",
                        "namespace": "{{request.object.metadata.name}}",
                        "clone": {"namespace": "default", "name": "source"},
                    },
                },
            )
        ),
        check=False,
    )
    assert refused.returncode != 0
    assert 'admission webhook "validate-policy.kyverno.svc" denied the request' in refused.stderr
    # Kyverno asks the API server whether its own service accounts may (SubjectAccessReview).
    assert "system:serviceaccount:kyverno:kyverno-background-controller requires permissions" in (
        refused.stderr
    )
    assert "for resource v1/Secret" in refused.stderr
