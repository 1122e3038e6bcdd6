"""Injected pods, as the chart's Kyverno policy makes them, executed on the local runtime against
a lab: the prototype's end-to-end suite, re-expressed on the very pod spec a cluster would run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from intercept_proxy import netns
from intercept_proxy.injector.pod import inject_pod
from intercept_proxy.injector.values import settings_from_values
from tests.sandbox.harness import RunningPod

pytestmark = pytest.mark.netns

CHART = Path(__file__).parent.parent.parent / "charts" / "intercept-proxy"
RELEASE = "intercept-proxy"
DEFAULT_POLICY = """\
allowed_domains: [pypi.org, api.github.com, example.com]
unrestricted_domains: [api.anthropic.com]
"""
# What the chart's ConfigMap clone puts into every namespace with intercepted pods.
OBJECTS = {
    ("ConfigMap", f"{RELEASE}-policy"): {
        "kind": "ConfigMap",
        "metadata": {"name": f"{RELEASE}-policy"},
        "data": {"policy.yaml": DEFAULT_POLICY},
    }
}
FETCH = (
    "for u in https://pypi.org/from-init https://unknown.example/from-init; do"
    ' curl -s -o /dev/null -w "$u %{http_code}\\n" $u; done > /data/init.txt'
)


def settings():
    return settings_from_values(yaml.safe_load((CHART / "values.yaml").read_text()), RELEASE)


def pod(name: str, own_policy: str) -> dict:
    """A labelled pod with an init container of its own and an annotation policy."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"intercept-proxy/enabled": "true"},
            "annotations": {"intercept-proxy/opa-data": own_policy},
        },
        "spec": {
            "securityContext": {"runAsUser": 12345, "runAsGroup": 12345},
            "initContainers": [
                {"name": "fetch", "image": "curlimages/curl:8.11.1", "command": ["sh", "-c", FETCH],
                 "volumeMounts": [{"name": "work", "mountPath": "/data"}]},
            ],
            "containers": [
                {"name": "app", "image": "busybox:1.36", "command": ["sleep", "infinity"],
                 "volumeMounts": [{"name": "work", "mountPath": "/data"}]},
            ],
            "volumes": [{"name": "work", "emptyDir": {}}],
        },
    }  # fmt: skip


@pytest.fixture(scope="module")
def pods(sandbox_lab):
    """Two pods side by side, each with its own policy narrowing the default."""
    started = []
    try:
        for name, own in (
            ("pod-a", "allowed_domains: [pypi.org]\n"),
            ("pod-b", "allowed_domains: [example.com]\n"),
        ):
            injected = inject_pod(pod(name, own), settings())
            started.append(RunningPod(sandbox_lab, injected, OBJECTS).start())
        yield dict(zip(("a", "b"), started, strict=True))
    finally:
        for running in started:
            running.close()


def curl(running: RunningPod, *args: str) -> tuple[int, str]:
    out = running.exec("app", ["curl", "-s", "-w", "\n%{http_code}", *args]).stdout.decode()
    body, _, status = out.rpartition("\n")
    return int(status), body


def test_the_injected_pod_and_its_processes(pods):
    spec = pods["a"].spec["spec"]
    assert [c["name"] for c in spec["initContainers"]] == [
        "proxy-init",
        "intercept-agent",
        "envoy",
        "fetch",
    ]
    uids = {c["name"]: c["securityContext"]["runAsUser"] for c in spec["initContainers"][:3]}
    assert uids == {"proxy-init": 0, "intercept-agent": 102, "envoy": 101}
    assert spec["automountServiceAccountToken"] is False
    # The processes run as the spec says.
    owners = {}
    for pid in netns.pids(pods["a"].netns):
        status = Path(f"/proc/{pid}/status").read_text()
        name = status.split("\n", 1)[0].split()[-1]
        uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
        owners.setdefault(name, set()).add(uid)
    assert owners["envoy"] == {101}
    assert owners["sleep"] == {12345}
    assert 102 in owners["python"] or 102 in owners.get("intercept", set())


def test_proxy_init_logs_its_rules(pods):
    log = pods["a"].output("proxy-init")
    assert "-j REDIRECT --to-ports 15001" in log
    assert "rules applied and verified (ipv4, ipv6: nat, filter)" in log


def test_the_certificate_is_issued_by_the_pods_own_ca(pods):
    issuers = []
    for running in pods.values():
        out = running.exec(
            "app",
            ["sh", "-c", "openssl s_client -connect pypi.org:443 -servername pypi.org"
             " </dev/null 2>/dev/null | openssl x509"],
        ).stdout  # fmt: skip
        cert = x509.load_pem_x509_certificate(out)
        ca_file = running.pod.volumes.path("intercept-ca") / "ca.pem"
        ca = x509.load_pem_x509_certificate(ca_file.read_bytes())
        cert.verify_directly_issued_by(ca)
        issuers.append(ca.fingerprint(ca.signature_hash_algorithm))
    assert issuers[0] != issuers[1]  # an ephemeral CA per pod


def test_allowed_get_denied_post_unknown_host_plain_and_tls(pods, sandbox_lab):
    a = pods["a"]
    assert curl(a, "https://pypi.org/simple/")[0] == 200
    assert curl(a, "http://pypi.org/simple/")[0] == 200
    status, body = curl(a, "-X", "POST", "https://pypi.org/upload")
    assert status == 403
    assert json.loads(body)["error"]["rule"] == "method_not_allowed"
    before = len(a.received("unknown.example"))
    status, body = curl(a, "https://unknown.example/")
    assert status == 403
    assert "is not allowed by the policy" in json.loads(body)["error"]["message"]
    time.sleep(0.2)
    assert len(a.received("unknown.example")) == before


def test_sidecar_ports_are_unreachable_from_the_workload(pods):
    for port in (15000, 15001, 15020, 15021, 15090):
        result = pods["a"].exec(
            "app", ["curl", "-s", "--max-time", "3", f"http://127.0.0.1:{port}/"]
        )
        assert result.returncode != 0, port


def test_each_pod_gets_its_own_policy(pods):
    status, body = curl(pods["a"], "https://example.com/")
    assert status == 403
    error = json.loads(body)["error"]
    assert error["rule"] == "pod:default_deny"
    assert "this pod's own policy" in error["message"]
    assert curl(pods["b"], "https://example.com/")[0] == 200
    assert curl(pods["b"], "https://pypi.org/")[0] == 403
    # A pod's policy only narrows: api.anthropic.com is the default's, not pod-b's.
    assert curl(pods["b"], "-X", "POST", "https://api.anthropic.com/v1/messages")[0] == 403


def test_an_annotation_change_is_enforced_without_a_restart(pods):
    a = pods["a"]
    agent_pids = {
        p for p in netns.pids(a.netns) if b"agent" in Path(f"/proc/{p}/cmdline").read_bytes()
    }
    assert curl(a, "https://example.com/")[0] == 403
    a.pod.set_annotations(
        {"intercept-proxy/opa-data": "allowed_domains: [pypi.org, example.com]\n"}
    )
    deadline = time.monotonic() + 10
    while curl(a, "https://example.com/")[0] != 200:
        assert time.monotonic() < deadline, a.output("intercept-agent")
        time.sleep(0.2)
    still = {p for p in netns.pids(a.netns) if b"agent" in Path(f"/proc/{p}/cmdline").read_bytes()}
    assert agent_pids and still == agent_pids  # the same agent process: no restart


def test_the_workloads_own_init_container_is_intercepted(pods):
    out = pods["a"].exec("app", ["cat", "/data/init.txt"]).stdout.decode().split("\n")
    assert "https://pypi.org/from-init 200" in out
    assert "https://unknown.example/from-init 403" in out
    logged = pods["a"].decisions(lambda d: d["path"] == "/from-init")
    rules = {d["path"]: d["rule"] for d in logged}
    assert rules  # decided by the interceptor, with the init container's traffic


def test_a_job_completes(sandbox_lab):
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "fetch-once"},
        "spec": {"template": pod("job", "")},
    }
    template = job["spec"]["template"]
    template["spec"]["restartPolicy"] = "Never"
    template["spec"]["containers"][0]["command"] = [
        "sh",
        "-c",
        "curl -sf https://pypi.org/ >/dev/null",
    ]
    running = RunningPod(sandbox_lab, inject_pod(template, settings()), OBJECTS)
    try:
        running.start()
        assert running.wait(120) == 0, running.output()
    finally:
        running.close()
    assert not netns.exists(running.netns)
