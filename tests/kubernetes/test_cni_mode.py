"""CNI mode on the real control plane: the chart with `capture.mode: cni`, an intercepted pod in a
namespace enforcing Pod Security `restricted` (admitted by the real PodSecurity admission: no
container of it runs as root or with a capability), captured by the node's CNI plugin (chained
after the bridge, as a runtime runs it) and checked by its own unprivileged proxy-init; and a
pod whose node installed nothing, which its check fails before anything of it runs."""

from __future__ import annotations

import json
import time

import pytest

from intercept_proxy.identities import CHECK_UID
from intercept_proxy.injector.settings import DEFAULT_IMAGE
from tests.cluster.harness import LAB_UPSTREAMS, MEASUREMENTS, WORKLOAD_UID, pod
from tests.kubernetes.chart import installed, labelled_pod, probe, refusal, result, results

pytestmark = pytest.mark.netns

RELEASE = "cni"
VALUES = {
    **LAB_UPSTREAMS,
    "policy": {"default": {"allowed_domains": ["pypi.org"]}},
    "capture": {"mode": "cni"},
}
RESTRICTED = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
SIDECAR_PORTS = (15000, 15001, 15002, 15020, 15021, 15022, 15053, 15090)


@pytest.fixture(scope="module")
def restricted(kube):
    """The release in CNI mode, and a namespace of the seeds' agents: `restricted` enforced."""
    with installed(kube, RELEASE, "cni-system", VALUES):
        name = f"agents-{int(time.time() * 1000) % 100000}"
        kube.kubectl("create", "namespace", name)
        kube.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
        kube.wait_object(name, "configmap", f"{RELEASE}-policy")
        yield name
        kube.kubectl("delete", "namespace", name, "--wait=false")


def test_an_intercepted_pod_runs_restricted_captured_by_the_node(kube, cluster, restricted):
    lab = cluster.lab.host("pypi.org")
    checks = [
        ["request", "GET", "https://pypi.org/simple/"],
        ["request", "GET", "https://unknown.example/"],
        ["certificate", lab.ipv6, "pypi.org"],
        # Past the capture, straight to a lab address: refused by the rules the node installed.
        ["connect", [lab.ipv4, 22], [lab.ipv6, 22], *[["127.0.0.1", p] for p in SIDECAR_PORTS]],
    ]
    agent = labelled_pod("agent", probe(*checks), container={"securityContext": RESTRICTED})
    start = time.monotonic()
    kube.apply(restricted, agent)
    done = kube.wait_phase(restricted, "agent", "Succeeded", timeout=120)
    MEASUREMENTS["CNI mode: restricted pod create to Succeeded, s"] = round(
        time.monotonic() - start, 2
    )
    # What the real PodSecurity admission admitted: no root, no capability, anywhere.
    for container in done["spec"]["initContainers"] + done["spec"]["containers"]:
        context = container["securityContext"]
        assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert context["runAsNonRoot"], container["name"]
    proxy_init = done["spec"]["initContainers"][0]
    assert proxy_init["command"][:3] == ["intercept", "proxy-init", "--check"]
    assert proxy_init["securityContext"]["runAsUser"] == CHECK_UID
    checked = kube.logs(restricted, "agent", "-c", "proxy-init")
    assert "ipv6 tcp/443 (TLS): ok" in checked
    assert checked.splitlines()[-1] == "intercept proxy-init: capture checked (ipv4, ipv6)"
    found = results(kube, restricted, "agent")
    assert result(found, "request", "GET", "https://pypi.org/simple/")["status"] == 200
    denied = result(found, "request", "GET", "https://unknown.example/")
    assert denied["status"] == 403
    assert json.loads(denied["body"])["error"]["code"] == "POLICY_BLOCKED"
    assert "der" in result(found, "certificate", lab.ipv6, "pypi.org")
    (connects,) = [v for k, v in found.items() if "connect" in k]
    assert connects["control"] == "connected"
    assert set(connects["results"].values()) == {"ConnectionRefusedError"}, connects


def test_the_namespace_refuses_what_init_mode_would_need(kube, restricted):
    """The contrast: a pod with proxy-init's privileges of init mode is refused here by the
    real PodSecurity admission (it is not the interceptor's to grant)."""
    privileges = {"runAsUser": 0, "capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}}
    root = pod("root", ["true"], container={"securityContext": privileges})
    message = refusal(kube, restricted, root)
    assert 'violates PodSecurity "restricted:latest"' in message
    assert "NET_ADMIN" in message and "runAsNonRoot" in message


def test_a_pod_its_node_did_not_capture_never_runs(kube):
    """In a namespace the node's plugin passes without reading (kube-system, excluded): it
    installs nothing, so the pod's own check, CNI mode's proxy-init, fails it before its app
    container starts. Fail closed, as a pod whose node has no plugin yet."""
    check = {
        "name": "proxy-init",
        "image": DEFAULT_IMAGE,
        "command": ["intercept", "proxy-init", "--check"],
        "securityContext": {**RESTRICTED, "runAsUser": WORKLOAD_UID},
    }
    name = f"uncaptured-{int(time.time() * 1000) % 100000}"
    uncaptured = pod(
        name,
        ["echo", "ran"],
        container={"securityContext": RESTRICTED},
        initContainers=[check],
    )
    kube.apply("kube-system", uncaptured)
    try:
        failed = kube.wait_phase("kube-system", name, "Failed", timeout=60)
        log = kube.logs("kube-system", name, "-c", "proxy-init")
    finally:
        kube.kubectl("delete", "pod", "-n", "kube-system", name, "--wait=false")
    (status,) = failed["status"]["initContainerStatuses"]
    assert status["state"]["terminated"]["exitCode"] == 1
    assert "ipv4 tcp/443 (TLS): the connection failed" in log
    assert "the capture is not in force: the pod must not start" in log
    (app,) = failed["status"]["containerStatuses"]
    assert "terminated" not in app["state"] and "running" not in app["state"], app
