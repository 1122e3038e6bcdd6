"""The chart's egress gateway on the real control plane: the Deployment's replicas (brought to
the HorizontalPodAutoscaler's minimum by the real controller) admitted by the real PodSecurity
admission in a `restricted` namespace, run by the node without root or capability, Ready, and
serving as an explicit proxy judged by the default policy; Kyverno gives a client namespace the
gateway's CA and NetworkPolicy, and a labelled client pod its proxy variables; client pods in a
`restricted` namespace reach allowed hosts through each replica and through the Service, by the
name their variables hold, over the node's pod network, its kube-proxy and the cluster's DNS."""

from __future__ import annotations

import base64
import ipaddress
import itertools
import json
import shlex
import time
from typing import Any

import pytest

from intercept_proxy.agent import clients
from intercept_proxy.decision import parse_log
from intercept_proxy.injector import gateway
from intercept_proxy.injector.pod import NO_TOKEN_VOLUME, TOKEN_PATH, TRUST_VARIABLES
from intercept_proxy.injector.settings import POLICY_ANNOTATION
from tests.cluster.harness import LAB_UPSTREAMS, MEASUREMENTS, WORKLOAD_UID, pod

pytestmark = pytest.mark.netns

RELEASE = "egress"
RELEASE_NAMESPACE = "egress-release"
GATEWAY_NAMESPACE = "egress-system"
PROXY = f"http://{gateway.NAME}.{GATEWAY_NAMESPACE}.svc.cluster.local:3128"
SELECTOR = f"app.kubernetes.io/name={gateway.NAME}"


@pytest.fixture(scope="module")
def release(kube):
    """The chart with its gateway and the clients' proxy variables, by the real Helm."""
    start = time.monotonic()
    kube.install(
        RELEASE,
        RELEASE_NAMESPACE,
        {
            **LAB_UPSTREAMS,
            "policy": {"default": {"allowed_domains": ["pypi.org", "example.com"]}},
            "gateway": {"enabled": True, "clients": {"proxyEnv": True}},
        },
    )
    replicas_ready(kube, 2)
    MEASUREMENTS["gateway: install to 2 replicas Ready, s"] = round(time.monotonic() - start, 2)
    yield
    kube.helm("uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait", "--no-hooks")
    kube.kubectl("delete", "namespace", RELEASE_NAMESPACE, "--wait=false")


def replicas_ready(kube, count: int, timeout: float = 120.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    pods: list[dict] = []
    while time.monotonic() < deadline:
        listed = kube.kubectl("get", "pods", "-n", GATEWAY_NAMESPACE, "-l", SELECTOR, "-o", "json")
        pods = json.loads(listed.stdout)["items"]
        ready = [
            p
            for p in pods
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p["status"].get("conditions") or []
            )
        ]
        if len(ready) >= count:
            return ready
        time.sleep(0.5)
    raise AssertionError(
        f"{count} gateway replicas never Ready in {timeout}s: "
        + json.dumps([p["status"] for p in pods], indent=1)[:4000]
    )


def client_ca(kube) -> str:
    data = kube.get(RELEASE_NAMESPACE, "configmap", gateway.CLIENT_CA_CONFIG_MAP)["data"]
    return data[gateway.CLIENT_CA_KEY]


RESTRICTED = {
    "runAsNonRoot": True,
    "runAsUser": WORKLOAD_UID,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def client(
    name: str, command: list[str], annotations: dict[str, str] | None = None, **spec: Any
) -> dict:
    """A client pod as the seeds' example: labelled for the gateway, restricted."""
    container = {"securityContext": RESTRICTED, **spec.pop("container", {})}
    metadata = {"labels": {"networking/allow-egress": "true"}, "annotations": annotations or {}}
    return pod(name, command, metadata=metadata, container=container, **spec)


CLIENTS = itertools.count()
VARIABLES = "the variables"


def through(
    kube,
    namespace: str,
    requests: list[tuple[str, str, tuple[str, ...]]],
    annotations: dict[str, str] | None = None,
) -> list[tuple[str, str, str]]:
    """Each (gateway address, url, curl options) fetched by curl in one client pod (with
    `annotations`), through that address (VARIABLES: the proxy Kyverno's variables name),
    trusting what they name: (status, body, curl's complaint)."""
    lines = []
    for address, url, options in requests:
        if address == VARIABLES:
            proxy: list[str] = []
        else:
            host = f"[{address}]" if ":" in address else address
            proxy = ["--proxy", f"http://{host}:3128"]
        fetch = shlex.join(
            ["curl", "-sS", "--max-time", "20", *proxy, "-o", "/w/body",
             "-w", "%{http_code}", *options, url]
        )  # fmt: skip
        lines.append(
            f"rm -f /w/*; {fetch} >/w/status 2>/w/error; "
            'echo "@@|$(cat /w/status)|$(base64 -w0 /w/body 2>/dev/null)|$(base64 -w0 /w/error)"'
        )
    name = f"client-{next(CLIENTS)}"
    kube.apply(
        namespace,
        client(
            name,
            ["sh", "-c", "\n".join(lines)],
            annotations,
            container={"volumeMounts": [{"name": "w", "mountPath": "/w"}]},
            volumes=[{"name": "w", "emptyDir": {}}],
        ),
    )
    kube.wait_phase(namespace, name, "Succeeded", timeout=120)
    results = []
    for line in kube.logs(namespace, name).splitlines():
        if line.startswith("@@|"):
            _, status, body, error = line.split("|")
            decoded = (base64.b64decode(body).decode(), base64.b64decode(error).decode())
            results.append((status, decoded[0], decoded[1].strip()))
    assert len(results) == len(requests), kube.logs(namespace, name)
    return results


def test_the_replicas_run_restricted_and_judge_their_client_pods(kube, namespace, release):
    # Admitted in a namespace enforcing `restricted`, by the real PodSecurity admission.
    labels = kube.get("", "namespace", GATEWAY_NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    # Two replicas although the Deployment names none: the real HPA controller raised it to
    # its minimum (the cluster has no metrics API, so it can scale on nothing else).
    hpa = kube.get(GATEWAY_NAMESPACE, "hpa", gateway.NAME)
    assert hpa["spec"]["minReplicas"] == 2
    assert kube.get(GATEWAY_NAMESPACE, "pdb", gateway.NAME)["spec"]["minAvailable"] == 1
    service = kube.get(GATEWAY_NAMESPACE, "service", gateway.NAME)
    assert service["spec"]["ports"][0]["port"] == 3128
    replicas = replicas_ready(kube, 2)
    for replica in replicas:
        for container in replica["spec"]["containers"]:
            context = container["securityContext"]
            assert context["runAsNonRoot"] and context["capabilities"] == {"drop": ["ALL"]}
    # The clients: restricted pods of another namespace, trusting the CA Kyverno copied there.
    kube.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    kube.wait_object(namespace, "configmap", gateway.CLIENT_CA_CONFIG_MAP)
    # Both address families of each replica (the same CA whichever answers): an allowed host,
    # a host the policy names nowhere (refused before any tunnel), plain HTTP in absolute form
    # (the explained denial); and HTTP/2 inside the tunnel.
    cases = [
        ("https://pypi.org/simple/", ()),
        ("https://exfil.attacker.example/x", ()),
        ("http://exfil.attacker.example/x", ()),
    ]
    requests = [
        (a["ip"], url, options)
        for replica in replicas
        for a in replica["status"]["podIPs"]
        for url, options in cases
    ]
    requests += [(r["status"]["podIP"], "https://pypi.org/simple/", ("--http2",)) for r in replicas]
    # And through the Service, as the clients' variables name it (the cluster's DNS, CoreDNS,
    # gives its name; kube-proxy takes its ClusterIP to a replica), and by its ClusterIP.
    requests += [(VARIABLES, url, options) for url, options in cases]
    requests += [(service["spec"]["clusterIP"], url, options) for url, options in cases]
    results = dict(zip(requests, through(kube, namespace, requests), strict=True))
    for (address, url, options), (status, body, complaint) in results.items():
        if url.startswith("https://pypi.org"):
            assert (status, complaint) == ("200", ""), (address, options)
        elif url.startswith("https://"):
            assert complaint == "curl: (56) CONNECT tunnel failed, response 403", address
        else:
            assert (status, json.loads(body)["error"]["rule"]) == ("403", "default_deny"), address
    for replica in replicas:
        families = [ipaddress.ip_address(a["ip"]).version for a in replica["status"]["podIPs"]]
        assert families == [4, 6], "an IPv4 and an IPv6 address per replica"
    # The decision log is Envoy's: kubectl logs (Envoy writes it out every second).
    expected = {
        ("pypi.org", True, "allowed_domains"),
        ("exfil.attacker.example", False, "default_deny"),
    }
    deadline, logged = time.monotonic() + 10, set()
    while not expected <= logged and time.monotonic() < deadline:
        time.sleep(0.5)
        log = kube.logs(GATEWAY_NAMESPACE, replicas[0]["metadata"]["name"], "-c", "envoy")
        logged = {(d.host, d.allow, d.rule) for d in parse_log(log)}
    assert expected <= logged


def test_a_client_pods_own_policy_narrows_the_gateways(kube, namespace, release):
    """gateway.podPolicy narrow (the default): the replicas' agents read the cluster's pods with
    their own token (Envoy has none) and judge each client by the default policy and its pod's
    annotation both, whichever replica and address it reaches."""
    for replica in replicas_ready(kube, 2):
        mounts = {
            c["name"]: {m["mountPath"]: m["name"] for m in c.get("volumeMounts") or []}
            for c in replica["spec"]["containers"]
        }
        assert mounts["intercept-agent"][TOKEN_PATH] == gateway.API_ACCESS_VOLUME
        assert mounts["envoy"][TOKEN_PATH] == NO_TOKEN_VOLUME
    kube.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    kube.wait_object(namespace, "configmap", gateway.CLIENT_CA_CONFIG_MAP)
    replica_ips = [a["ip"] for r in replicas_ready(kube, 2) for a in r["status"]["podIPs"]]
    urls = ("https://example.com/", "https://pypi.org/simple/", "http://example.com/")
    requests = [(a, url, ()) for a in (VARIABLES, *replica_ips) for url in urls]
    own = {POLICY_ANNOTATION: "allowed_domains: [pypi.org]"}
    for (address, url, _), (status, body, complaint) in zip(
        requests, through(kube, namespace, requests, own), strict=True
    ):
        if url.startswith("https://pypi.org"):
            assert (status, complaint) == ("200", ""), address
        else:  # the default allows it, the pod's own policy does not
            error = json.loads(body)["error"]
            assert (status, error["rule"]) == ("403", "pod:default_deny"), address
            assert "own policy)" in error["message"], error
    # The decision log (Envoy's, the agent's decision) says whose policy refused whom.
    deadline, refused = time.monotonic() + 10, []
    while not refused and time.monotonic() < deadline:
        time.sleep(0.5)
        logs = [
            kube.logs(GATEWAY_NAMESPACE, r["metadata"]["name"], "-c", "envoy")
            for r in replicas_ready(kube, 2)
        ]
        refused = [d for log in logs for d in parse_log(log) if d.rule == "pod:default_deny"]
    assert refused, "no refusal of the pod's own policy logged"
    assert all("+narrow:" in (d.policy_revision or "") and d.client for d in refused), refused
    # Without an annotation: the default policy alone.
    plain = [(VARIABLES, url, ()) for url in urls]
    assert [r[0] for r in through(kube, namespace, plain)] == ["200", "200", "200"]
    # An annotation that is no valid policy: the pod's requests are refused, explained.
    broken = through(kube, namespace, plain[1:2], {POLICY_ANNOTATION: "allowed_domains: 5"})
    error = json.loads(broken[0][1])["error"]
    assert (broken[0][0], error["rule"]) == ("403", clients.INVALID_POLICY_RULE)
    assert POLICY_ANNOTATION in error["message"], error


def test_the_gateway_ca_is_the_shared_secret_and_no_replica_mounts_it_into_envoy(kube, release):
    secret = kube.get(GATEWAY_NAMESPACE, "secret", gateway.CA_SECRET)
    assert base64.b64decode(secret["data"]["tls.crt"]).decode() == client_ca(kube)
    for replica in replicas_ready(kube, 2):
        mounts = {
            c["name"]: {m["name"] for m in c.get("volumeMounts") or []}
            for c in replica["spec"]["containers"]
        }
        assert "intercept-ca" in mounts["intercept-agent"]
        assert "intercept-ca" not in mounts["envoy"]


def test_a_client_namespace_gets_the_ca_and_its_network_policy(kube, namespace, release):
    kube.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    copied = kube.wait_object(namespace, "configmap", gateway.CLIENT_CA_CONFIG_MAP)
    assert copied["data"] == {gateway.CLIENT_CA_KEY: client_ca(kube)}
    policy = kube.wait_object(namespace, "networkpolicy", f"{gateway.NAME}-clients")
    assert policy["spec"]["podSelector"]["matchLabels"] == {"networking/allow-egress": "true"}
    to_gateway = [
        r for r in policy["spec"]["egress"] if {"port": 3128, "protocol": "TCP"} in r["ports"]
    ]
    assert (
        to_gateway[0]["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
        == gateway.NAME
    )
    # A labelled pod, restricted as the seeds' example: Kyverno sets its variables and mounts
    # the CA; it runs (no root, no capability) and reads them.
    labelled = client(
        "client",
        ["sh", "-c", 'echo "$HTTPS_PROXY $NO_PROXY"; cat "$SSL_CERT_FILE"'],
        container={"env": [{"name": "HTTPS_PROXY", "value": "http://elsewhere:8080"}]},
    )
    kube.apply(namespace, labelled)
    stored = kube.pod(namespace, "client")
    env = {e["name"]: e["value"] for e in stored["spec"]["containers"][0]["env"]}
    assert env["HTTPS_PROXY"] == env["HTTP_PROXY"] == env["https_proxy"] == PROXY  # replaced
    assert env["NO_PROXY"] == ".cluster.local,.svc,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16"
    assert {env[v] for v in TRUST_VARIABLES} == {gateway.CLIENT_TRUST_FILE}
    kube.wait_phase(namespace, "client", "Succeeded")
    first, _, cert = kube.logs(namespace, "client").partition("\n")
    assert first == f"{PROXY} {env['NO_PROXY']}"
    assert cert == client_ca(kube)


def test_a_replica_lost_is_replaced_under_the_charts_own_policies(kube, release):
    """Made long after Kyverno serves the release's policies (the first replicas may win that
    race): none of them refuses a gateway pod."""
    gone = replicas_ready(kube, 2)[0]["metadata"]["name"]
    kube.kubectl("delete", "pod", "-n", GATEWAY_NAMESPACE, gone, "--wait=true")
    replaced = replicas_ready(kube, 2)
    assert gone not in {p["metadata"]["name"] for p in replaced}
