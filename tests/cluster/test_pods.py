"""Pods on the cluster's node, through the real API server, controllers and Kyverno: logs through
the API server, Jobs, Deployments, deletion, the node's refusals, and an injected pod whose
workload reaches the lab through its interceptor."""

from __future__ import annotations

import base64
import ipaddress
import json
import time

import pytest

from intercept_proxy import netns
from intercept_proxy.cluster.layout import POD_SUBNETS
from tests.cluster.harness import MEASUREMENTS, WORKLOAD_UID, deployment, pod

pytestmark = pytest.mark.netns


def _decode_jwt(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_a_pod_runs_on_the_node_and_its_logs_come_back(kube, namespace, cluster):
    start = time.monotonic()
    kube.apply(
        namespace,
        pod("hello", ["sh", "-c", "echo one; echo two; echo three; id -u"]),
    )
    done = kube.wait_phase(namespace, "hello", "Succeeded")
    MEASUREMENTS["plain pod: create to Succeeded (kubectl), s"] = round(time.monotonic() - start, 2)
    assert done["spec"]["nodeName"] == cluster.node_name
    status = done["status"]["containerStatuses"][0]
    assert status["state"]["terminated"]["exitCode"] == 0
    assert status["state"]["terminated"]["reason"] == "Completed"
    # One address per family from the node's pod subnets, IPv4 first.
    addresses = [ipaddress.ip_address(a["ip"]) for a in done["status"]["podIPs"]]
    assert [a.version for a in addresses] == [4, 6]
    assert str(addresses[0]) == done["status"]["podIP"]
    assert all(a in ipaddress.ip_network(n) for a, n in zip(addresses, POD_SUBNETS, strict=True))
    assert kube.logs(namespace, "hello") == f"one\ntwo\nthree\n{WORKLOAD_UID}\n"
    assert kube.logs(namespace, "hello", "--tail=1") == f"{WORKLOAD_UID}\n"
    stamped = kube.logs(namespace, "hello", "--timestamps").splitlines()
    assert [line.split(" ", 1)[1] for line in stamped] == ["one", "two", "three", str(WORKLOAD_UID)]
    assert all(line[:4].isdigit() and "T" in line.split(" ", 1)[0] for line in stamped)


def test_logs_follow_a_running_container(kube, namespace):
    kube.apply(
        namespace, pod("ticker", ["sh", "-c", "for i in 1 2 3; do echo tick $i; sleep 1; done"])
    )
    kube.wait_phase(namespace, "ticker", "Running")
    followed = kube.logs(namespace, "ticker", "-f")  # returns when the container ends
    assert followed == "tick 1\ntick 2\ntick 3\n"


def test_pod_start_latency(cluster, namespace):
    """Create (API) to Running and to Ready, as the API server reports it, polled every 20 ms."""
    client = cluster.client
    path = f"/api/v1/namespaces/{namespace}/pods"
    figures = {"Running": [], "Ready": []}
    for i in range(3):
        start = time.monotonic()
        client.create(path, pod(f"waits-{i}", ["sleep", "600"]))
        seen: dict[str, float] = {}
        while "Ready" not in seen:
            status = client.get(f"{path}/waits-{i}").get("status") or {}
            if status.get("phase") == "Running":
                seen.setdefault("Running", time.monotonic() - start)
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in status.get("conditions") or []
            ):
                seen["Ready"] = time.monotonic() - start
            assert time.monotonic() - start < 60, status
            time.sleep(0.02)
        for key in figures:
            figures[key].append(round(seen[key], 2))
    MEASUREMENTS["plain pod: create to Running (3 pods), s"] = figures["Running"]
    MEASUREMENTS["plain pod: create to Ready (3 pods), s"] = figures["Ready"]


def test_a_job_completes(kube, namespace):
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "count"},
        "spec": {
            "completions": 2,
            "backoffLimit": 0,
            "template": {"spec": pod("x", ["sh", "-c", "echo counted"])["spec"]},
        },
    }
    start = time.monotonic()
    kube.apply(namespace, job)
    kube.kubectl("wait", "-n", namespace, "--for=condition=complete", "job/count", "--timeout=120s")
    MEASUREMENTS["Job of 2 completions: apply to complete, s"] = round(time.monotonic() - start, 2)
    status = kube.get(namespace, "job", "count")["status"]
    assert status["succeeded"] == 2
    assert kube.logs(namespace, "job/count") == "counted\n"


def test_a_deployment_rolls_out(kube, namespace):
    template = pod(
        "x",
        ["python3", "-m", "http.server", "8080"],
        container={
            "image": "python:3.11",
            "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
        },
    )
    template["spec"]["restartPolicy"] = "Always"
    start = time.monotonic()
    kube.apply(namespace, deployment("web", template, replicas=2))
    kube.kubectl("rollout", "status", "-n", namespace, "deployment/web", "--timeout=120s")
    MEASUREMENTS["Deployment of 2 (readiness probe): apply to rolled out, s"] = round(
        time.monotonic() - start, 2
    )
    pods = json.loads(kube.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
    assert len(pods) == 2
    for p in pods:
        ready = {c["type"]: c["status"] for c in p["status"]["conditions"]}
        assert ready["Ready"] == ready["ContainersReady"] == "True"
        assert p["status"]["containerStatuses"][0]["ready"] is True
    available = kube.get(namespace, "deployment", "web")["status"]
    assert available["availableReplicas"] == 2


def test_deleting_a_pod_and_a_namespace_completes(kube, cluster):
    def pod_namespaces() -> set[str]:
        return {n for n in netns.namespaces() if n.startswith(cluster.prefix + "p")}

    baseline = pod_namespaces()
    name = f"gone-{int(time.time() * 1000) % 100000}"
    kube.kubectl("create", "namespace", name)
    kube.apply(name, pod("a", ["sleep", "600"]), pod("b", ["sleep", "600"]))
    kube.wait_ready(name, "a")
    kube.wait_ready(name, "b")
    assert len(pod_namespaces() - baseline) == 2
    start = time.monotonic()
    kube.kubectl("delete", "pod", "-n", name, "a", "--wait=true", "--timeout=60s")
    MEASUREMENTS["pod deletion (a sleep, SIGTERM), s"] = round(time.monotonic() - start, 2)
    assert len(pod_namespaces() - baseline) == 1
    start = time.monotonic()
    kube.kubectl("delete", "namespace", name, "--wait=true", "--timeout=120s")
    MEASUREMENTS["namespace deletion with a running pod, s"] = round(time.monotonic() - start, 2)
    assert kube.kubectl("get", "namespace", name, check=False).returncode != 0
    assert not pod_namespaces() - baseline  # the pods' network namespaces went with them


def test_a_root_container_without_trust_is_refused(kube, namespace):
    root = pod("root", ["id"], container={"securityContext": {"runAsUser": 0}})
    kube.apply(namespace, root)
    failed = kube.wait_phase(namespace, "root", "Failed", timeout=60)
    assert failed["status"]["reason"] == "RuntimeAdmissionRejected"
    message = failed["status"]["message"]
    assert "spec.containers[0].securityContext.runAsUser" in message
    assert "0 is not a user ID" in message
    assert "untrusted" in message and "not annotated intercept-proxy/injected" in message
    waiting = failed["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "RuntimeAdmissionRejected"
    shown = kube.kubectl("get", "pod", "-n", namespace, "root").stdout
    assert "RuntimeAdmissionRejected" in shown
    events = kube.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert "RuntimeAdmissionRejected" in events


def test_an_unschedulable_pod_waits(kube, namespace):
    kube.apply(namespace, pod("nowhere", ["true"], nodeSelector={"disk": "ssd"}))
    pending = kube.wait_pod(
        namespace,
        "nowhere",
        lambda p: any(
            c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"
            for c in p["status"].get("conditions") or []
        ),
        "was marked unschedulable",
        timeout=30,
    )
    assert pending["status"]["phase"] == "Pending"
    assert "nodeName" not in pending["spec"]


def test_configmaps_secrets_env_and_projected_token(kube, namespace):
    objects = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "settings"},
            "data": {"greeting": "hello $(NOT_EXPANDED)", "file.txt": "from a configmap"},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds"},
            "stringData": {"password": "s3cret", "USER_NAME": "octo"},
        },
    ]
    script = (
        'echo "greeting=$GREETING"; echo "password=$PASSWORD"; echo "user=$USER_NAME";'
        ' echo "ip=$MY_IP"; echo "node=$NODE";'
        " cat /config/file.txt; echo; cat /sa/namespace; echo;"
        " cat /sa/token > /dev/null && echo token; cat /sa/token; echo"
    )
    spec = pod(
        "reader",
        ["sh", "-c", script],
        container={
            "env": [
                {
                    "name": "GREETING",
                    "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}},
                },
                {
                    "name": "PASSWORD",
                    "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}},
                },
                {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            ],
            "envFrom": [{"secretRef": {"name": "creds"}}],
            "volumeMounts": [
                {"name": "config", "mountPath": "/config"},
                {"name": "sa", "mountPath": "/sa"},
            ],
        },
        volumes=[
            {"name": "config", "configMap": {"name": "settings"}},
            {
                "name": "sa",
                "projected": {
                    "sources": [
                        {
                            "serviceAccountToken": {
                                "path": "token",
                                "audience": "lab",
                                "expirationSeconds": 3600,
                            }
                        },
                        {
                            "downwardAPI": {
                                "items": [
                                    {
                                        "path": "namespace",
                                        "fieldRef": {"fieldPath": "metadata.namespace"},
                                    }
                                ]
                            }
                        },
                    ]
                },
            },
        ],
    )
    kube.apply(namespace, *objects, spec)
    done = kube.wait_phase(namespace, "reader", "Succeeded")
    lines = kube.logs(namespace, "reader").splitlines()
    assert lines[:5] == [
        "greeting=hello $(NOT_EXPANDED)",
        "password=s3cret",
        "user=octo",
        f"ip={done['status']['podIP']}",
        f"node={done['spec']['nodeName']}",
    ]
    assert lines[5:8] == ["from a configmap", namespace, "token"]
    claims = _decode_jwt(lines[8])
    assert claims["aud"] == ["lab"]
    assert claims["kubernetes.io"]["pod"]["name"] == "reader"
    assert claims["kubernetes.io"]["pod"]["uid"] == done["metadata"]["uid"]
    assert claims["sub"] == f"system:serviceaccount:{namespace}:default"


def test_the_default_service_account_token_is_mounted(kube, namespace):
    """The ServiceAccount admission plugin's kube-api-access-* projected volume, as-is."""
    mounted = "/var/run/secrets/kubernetes.io/serviceaccount"
    kube.apply(namespace, pod("sa", ["sh", "-c", f"ls {mounted}; cat {mounted}/namespace"]))
    kube.wait_phase(namespace, "sa", "Succeeded")
    assert kube.logs(namespace, "sa").split() == ["ca.crt", "namespace", "token", namespace]


def test_pods_reach_each_other_by_pod_ip_and_give_their_addresses_back(kube, cluster, namespace):
    """The node's pod network (a real CNI chain): a pod reaches another by its IPv4 and its IPv6
    address; finished or deleted, a pod gives the node's address allocator its addresses back."""
    kube.apply(
        namespace,
        pod("server", ["/usr/bin/python3", "-m", "http.server", "--bind", "::", "8080"]),
    )
    server = kube.wait_phase(namespace, "server", "Running")
    urls = [
        f"http://[{a['ip']}]:8080/" if ":" in a["ip"] else f"http://{a['ip']}:8080/"
        for a in server["status"]["podIPs"]
    ]
    fetch = "; ".join(
        f"curl -sS -o /dev/null -w '%{{http_code}}\\n' --retry 20 --retry-connrefused "
        f"--retry-delay 0 --max-time 10 '{url}'"
        for url in urls
    )
    kube.apply(namespace, pod("client", ["sh", "-c", fetch]))
    client = kube.wait_phase(namespace, "client", "Succeeded")
    assert kube.logs(namespace, "client") == "200\n200\n"

    def held() -> set[str]:
        return {p.name for p in (cluster.state_dir / "network" / "ipam" / "pods").iterdir()}

    def given_back(addresses: set[str]) -> bool:
        deadline = time.monotonic() + 10
        while addresses & held() and time.monotonic() < deadline:
            time.sleep(0.1)
        return not addresses & held()

    # A finished pod's network goes (as a kubelet removes its sandbox); a running one's stays.
    running = {a["ip"] for a in server["status"]["podIPs"]}
    assert running <= held()
    assert given_back({a["ip"] for a in client["status"]["podIPs"]})
    kube.kubectl("delete", "pod", "-n", namespace, "server", "--wait=true")
    assert not running & held()


def test_a_service_reaches_its_ready_pods_by_name_and_address(kube, namespace):
    """kube-proxy, in the node's namespace (iptables mode), sends a Service's ClusterIP to the
    pods the real EndpointSlice controller lists once they are Ready; the cluster's DNS
    (CoreDNS) gives its name, short (the pod's search domains) and whole."""
    probe = {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}
    server = pod(
        "web",
        ["/usr/bin/python3", "-m", "http.server", "--bind", "::", "8080"],
        metadata={"labels": {"app": "web"}},
        container={"readinessProbe": probe},
    )
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    kube.apply(namespace, server, service)
    kube.wait_ready(namespace, "web")
    address = kube.get(namespace, "service", "web")["spec"]["clusterIP"]
    # Refused (or unreachable) until kube-proxy has the endpoint: retried.
    fetch = "; ".join(
        f"curl -sS -o /dev/null -w '%{{http_code}} {host}\\n' --retry 30 --retry-all-errors "
        f"--retry-delay 1 --max-time 60 http://{host}/"
        for host in (address, "web", f"web.{namespace}.svc.cluster.local")
    )
    kube.apply(namespace, pod("client", ["sh", "-c", fetch]))
    kube.wait_phase(namespace, "client", "Succeeded", timeout=90)
    lines = kube.logs(namespace, "client").splitlines()
    # curl -S writes an error line for every failed attempt, a retried one too: the answers
    # are the rest.
    answers = [line for line in lines if not line.startswith("curl: (")]
    assert answers == [
        f"200 {address}",
        "200 web",
        f"200 web.{namespace}.svc.cluster.local",
    ], lines
