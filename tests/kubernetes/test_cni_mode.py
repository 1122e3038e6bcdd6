"""CNI mode on the real control plane: the chart with `capture.mode: cni`; its node agent, a
DaemonSet's pod the node runs on its own network, installing the CNI plugin into the node's
chain and leaving it there while it restarts; an intercepted pod in a namespace enforcing Pod
Security `restricted` (admitted by the real PodSecurity admission: no container of it runs as
root or with a capability), captured through that plugin (chained after the bridge, as a
runtime runs it) and checked by its own unprivileged proxy-init; a pod whose node installed
nothing, which its check fails before anything of it runs; the plugin gone once the release is
uninstalled."""

from __future__ import annotations

import json
import time

import pytest

from intercept_proxy.cluster.node.network import CNI_BIN, CNI_CONF, NETWORK_LIST
from intercept_proxy.identities import CHECK_UID
from intercept_proxy.injector import cninode
from intercept_proxy.injector.settings import DEFAULT_IMAGE
from intercept_proxy.netfilter.plugin import PLUGIN
from tests.cluster.harness import LAB_UPSTREAMS, MEASUREMENTS, WORKLOAD_UID, pod
from tests.kubernetes.chart import installed, labelled_pod, probe, refusal, result, results

pytestmark = pytest.mark.netns

RELEASE = "cni"
# Not the chart's default namespace: the guardrails' release installs its own node agent there.
NODE_AGENTS = "cni-node-test"
VALUES = {
    **LAB_UPSTREAMS,
    "policy": {"default": {"allowed_domains": ["pypi.org"]}},
    "capture": {"mode": "cni", "cni": {"namespace": NODE_AGENTS}},
}
RESTRICTED = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
SIDECAR_PORTS = (15000, 15001, 15002, 15020, 15021, 15022, 15053, 15090)


def node_list(cluster) -> dict:
    """The network configuration list of the test node (its own files)."""
    return json.loads(cluster.config.path("network", "host", CNI_CONF, NETWORK_LIST).read_text())


def node_agents(kube) -> list[dict]:
    pods = kube.kubectl("get", "pods", "-n", NODE_AGENTS, "-o", "json").stdout
    return json.loads(pods)["items"]


def node_agent_ready(kube) -> None:
    kube.kubectl(
        "rollout", "status", "-n", NODE_AGENTS, f"daemonset/{cninode.NAME}", "--timeout=120s"
    )


@pytest.fixture(scope="module")
def restricted(kube, cluster):
    """The release in CNI mode with its node agent ready, and a namespace of the seeds' agents:
    `restricted` enforced. Once uninstalled, the node's list has no plugin left."""
    with installed(kube, RELEASE, "cni-system", VALUES):
        node_agent_ready(kube)
        name = f"agents-{int(time.time() * 1000) % 100000}"
        kube.kubectl("create", "namespace", name)
        kube.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
        kube.wait_object(name, "configmap", f"{RELEASE}-policy")
        yield name
        kube.kubectl("delete", "namespace", name, "--wait=false")
    deadline = time.monotonic() + 30
    while PLUGIN in [p["type"] for p in node_list(cluster)["plugins"]]:
        assert time.monotonic() < deadline, "the uninstalled node agent left its plugin"
        time.sleep(0.2)
    kube.kubectl("delete", "namespace", NODE_AGENTS, "--wait=false", "--ignore-not-found")


def test_the_node_agent_runs_on_the_node_and_chains_the_plugin(kube, cluster, restricted):
    (agent,) = node_agents(kube)
    assert agent["metadata"]["ownerReferences"][0]["kind"] == "DaemonSet"
    assert agent["spec"]["hostNetwork"] is True
    plugins = node_list(cluster)["plugins"]
    assert [p["type"] for p in plugins] == ["bridge", PLUGIN]
    assert plugins[-1]["socket"].startswith("@intercept-proxy-cni-")
    assert plugins[-1]["excludeNamespaces"] == [NODE_AGENTS, "kube-system"]
    installed_plugin = cluster.config.path("network", "host", CNI_BIN, PLUGIN)
    assert installed_plugin.stat().st_mode & 0o777 == 0o755
    log = kube.logs(NODE_AGENTS, agent["metadata"]["name"])
    assert "installed: /host/cni/bin/intercept-proxy-cni" in log


def test_a_restarted_node_agent_takes_over_under_a_name_of_its_own(kube, cluster, restricted):
    """The next agent serves a socket name no one could take before it (a new random suffix)
    and writes it into the entry; the plugin stays last in the list. (That the entry stays
    while no agent runs: the test after the next.)"""
    before = node_list(cluster)["plugins"][-1]["socket"]
    (agent,) = node_agents(kube)
    name = agent["metadata"]["name"]
    kube.kubectl("delete", "pod", "-n", NODE_AGENTS, name, "--wait=true")
    node_agent_ready(kube)
    (replacement,) = node_agents(kube)
    assert replacement["metadata"]["name"] != name
    plugins = node_list(cluster)["plugins"]
    assert [p["type"] for p in plugins] == ["bridge", PLUGIN]
    assert plugins[-1]["socket"].startswith("@intercept-proxy-cni-")
    assert plugins[-1]["socket"] != before


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


def test_a_pod_made_while_the_node_agent_is_away_waits_and_runs_captured(kube, cluster, restricted):
    """The race of a node whose agent is not there yet: the pod's network is refused (try again
    later) and made again, as a kubelet does, until the agent is back; then it runs captured.
    The agent is kept off the node by a node selector no node has (its DaemonSet stays, and so
    does the plugin)."""
    away = {"spec": {"template": {"spec": {"nodeSelector": {"intercept-test/none": "x"}}}}}
    back = [{"op": "remove", "path": "/spec/template/spec/nodeSelector"}]
    daemonset = ["-n", NODE_AGENTS, "daemonset", cninode.NAME]
    kube.kubectl("patch", *daemonset, "--type=merge", "-p", json.dumps(away))
    try:
        deadline = time.monotonic() + 60
        while any(p["spec"].get("nodeName") for p in node_agents(kube)):
            assert time.monotonic() < deadline, "the node agent did not leave the node"
            time.sleep(0.3)
        waiting = labelled_pod(
            "waiting",
            probe(["request", "GET", "https://pypi.org/simple/"]),
            container={"securityContext": RESTRICTED},
        )
        # The agent is gone, its DaemonSet is not: the plugin stays, naming the agent's socket.
        assert node_list(cluster)["plugins"][-1]["type"] == PLUGIN
        kube.apply(restricted, waiting)
        events = ""
        deadline = time.monotonic() + 60
        while "FailedCreatePodSandBox" not in events:
            assert time.monotonic() < deadline, events
            time.sleep(0.5)
            events = kube.kubectl(
                "get", "events", "-n", restricted, "--field-selector",
                "involvedObject.name=waiting", "-o", "json",
            ).stdout  # fmt: skip
        (refused, *_) = [
            e["message"]
            for e in json.loads(events)["items"]
            if e["reason"] == "FailedCreatePodSandBox"
        ]
        assert f"plugin {PLUGIN}: code 11" in refused
        assert "the node agent does not answer at @intercept-proxy-cni-" in refused
        assert kube.pod(restricted, "waiting")["status"]["phase"] == "Pending"
    finally:
        kube.kubectl("patch", *daemonset, "--type=json", "-p", json.dumps(back))
    node_agent_ready(kube)
    kube.wait_phase(restricted, "waiting", "Succeeded", timeout=120)
    found = results(kube, restricted, "waiting")
    assert result(found, "request", "GET", "https://pypi.org/simple/")["status"] == 200
    checked = kube.logs(restricted, "waiting", "-c", "proxy-init")
    assert checked.splitlines()[-1] == "intercept proxy-init: capture checked (ipv4, ipv6)"


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
