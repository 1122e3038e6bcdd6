"""The cluster package's pure parts, without a cluster: names, PKI, Kyverno's command lines, what
the node does to a pod before running it, which pods it trusts, pod status, log selection."""

from __future__ import annotations

import base64
import copy

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from intercept_proxy.cluster import dns, kyverno, layout
from intercept_proxy.cluster.node import prepare as prep
from intercept_proxy.cluster.node import status as st
from intercept_proxy.cluster.node import trust
from intercept_proxy.cluster.node.logs import select_lines
from intercept_proxy.cluster.pki import ClusterPki
from intercept_proxy.cluster.tools import Tools
from intercept_proxy.injector import cninode
from intercept_proxy.injector.pod import SIDECARS, inject_pod
from intercept_proxy.injector.values import settings_from_values
from tests.chart import render

FACTS = prep.PodFacts(node_name="n1", host_ip="127.0.0.1")


def test_names_derive_from_the_cluster_name():
    prefix = layout.prefix_for("demo")
    assert prefix == layout.prefix_for("demo") != layout.prefix_for("demo2")
    assert len(prefix) == 6 and prefix.startswith("k") and prefix.isalnum()
    pod = layout.pod_prefix(prefix)
    assert pod.startswith(prefix + "p") and len(pod) == 10
    node = layout.Config("demo", prefix, "/tmp/x", "demo-node", layout.Ports()).node_netns
    assert node == prefix + "n" and len(f"{node}h") <= 15  # its host uplink's interface
    assert layout.state_dir_for("demo").name == "intercept-cluster-demo"
    for bad in ("", "Demo", "1st", "a_b", "x" * 40, "-a", "../x"):
        with pytest.raises(layout.LayoutError):
            layout.check_name(bad)


def test_the_pki(tmp_path):
    pki = ClusterPki(tmp_path / "pki")
    pki.create("n1", "10.96.0.1", "cluster.local")
    ca = x509.load_pem_x509_certificate(pki.ca.read_bytes())

    def cert(name: str) -> x509.Certificate:
        c = x509.load_pem_x509_certificate(pki.cert(name).read_bytes())
        c.verify_directly_issued_by(ca)
        assert (pki.key(name).stat().st_mode & 0o777) == 0o600
        return c

    def subject(c: x509.Certificate) -> tuple[str, list[str]]:
        cn = c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        orgs = [a.value for a in c.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
        return cn, orgs

    assert subject(cert("node")) == ("system:node:n1", ["system:nodes"])
    assert subject(cert("admin"))[1] == ["system:masters"]
    assert subject(cert("controller-manager"))[0] == "system:kube-controller-manager"
    apiserver = cert("apiserver")
    sans = apiserver.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"kubernetes.default.svc", "kubernetes.default.svc.cluster.local"} <= set(
        sans.get_values_for_type(x509.DNSName)
    )
    assert {str(i) for i in sans.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1",
        "::1",
        "10.96.0.1",
    }
    usages = cert("apiserver-kubelet-client").extensions.get_extension_for_class(
        x509.ExtendedKeyUsage
    )
    assert list(usages.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert (pki.sa_private.stat().st_mode & 0o777) == 0o600


def test_kyverno_runs_with_its_deployments_arguments_out_of_cluster():
    tools = Tools.locate()
    documents = kyverno.install_documents(tools)
    assert not [d for d in documents if d["kind"] == "CustomResourceDefinition"]
    kinds = {d["kind"] for d in kyverno.cluster_objects(documents)}
    assert "Deployment" not in kinds and {"ClusterRole", "ServiceAccount", "Service"} <= kinds
    assert len(kyverno.crd_documents(tools)) == 22
    config = layout.Config("c", "kabcde", "/tmp/x", "c-node", layout.Ports(1, 2, 3, 4444))
    controller = kyverno.CONTROLLERS[0]
    deployment = kyverno.deployment(documents, controller.deployment)
    argv = kyverno.controller_argv(
        tools, deployment, controller, kyverno.overrides(config, controller, "/tmp/x/k")
    )
    flags = [a.split("=", 1)[0] for a in argv[1:]]
    assert len(flags) == len(set(flags))  # overridden, not repeated
    assert "--serverIP=127.0.0.1:4444" in argv and "--webhookServerPort=4444" in argv
    assert "--admissionReports=false" in argv and "--kubeconfig=/tmp/x/k" in argv
    assert "--caSecretName=kyverno-svc.kyverno.svc.kyverno-tls-ca" in argv  # the Deployment's
    assert not [a for a in argv if a.startswith("--metricsPort")]
    env = kyverno.controller_env(deployment, "kyverno-admission-controller-local", config.dir)
    assert env["KYVERNO_SERVICEACCOUNT_NAME"] == "kyverno-admission-controller"
    assert env["KYVERNO_NAMESPACE"] == "kyverno"
    assert env["KYVERNO_POD_NAME"] == "kyverno-admission-controller-local"
    assert env["TUF_ROOT"].startswith("/tmp/x/")


def _pod(**spec) -> dict:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"a": "b"}},
        "spec": {"containers": [{"name": "app", "image": "busybox", "command": ["true"]}], **spec},
    }


def _cm(name: str, **data: str) -> dict:
    return {"kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def _secret(name: str, **data: str) -> dict:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    return {"kind": "Secret", "metadata": {"name": name}, "data": encoded}


def test_env_becomes_literal():
    container = {
        "name": "app",
        "envFrom": [
            {"configMapRef": {"name": "cm"}, "prefix": "CM_"},
            {"secretRef": {"name": "s"}},
        ],
        "env": [
            {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}},
            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}},
            {"name": "C", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['a']"}}},
            {"name": "D", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {
                "name": "E",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
            {"name": "F", "value": "$(A)"},
            {
                "name": "G",
                "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "no", "optional": True}},
            },
        ],
        "resources": {"limits": {"memory": "64Mi"}},
    }
    pod = _pod(containers=[container])
    objects = {
        ("ConfigMap", "cm"): _cm("cm", k="v $(X)", **{"bad name": "x"}),
        ("Secret", "s"): _secret("s", pw="p"),
    }
    prepared = prep.prepare(pod, objects, FACTS, lambda a, s: "token", {"memory": "1Gi"})
    env = prepared.pod["spec"]["containers"][0]["env"]
    values = {e["name"]: e.get("value") for e in env}
    assert [e["name"] for e in env][:2] == ["CM_k", "pw"]  # envFrom first, invalid names skipped
    assert values["A"] == "v $$(X)"  # escaped: a ConfigMap's value is not expanded
    assert (
        values["B"] == "p" and values["C"] == "b" and values["E"] == "64" and values["F"] == "$(A)"
    )
    assert values["G"] == ""
    assert "valueFrom" in next(e for e in env if e["name"] == "D")  # known once the network is
    prep.fill_pod_ips(prepared.pod["spec"], pod, prep.PodFacts("n1", "127.0.0.1", ("198.19.0.1",)))
    assert prepared.pod["spec"]["containers"][0]["env"][5] == {"name": "D", "value": "198.19.0.1"}


def test_a_missing_object_keeps_the_pod_waiting():
    pod = _pod(volumes=[{"name": "v", "configMap": {"name": "absent"}}])
    with pytest.raises(prep.PrepareError) as e:
        prep.prepare(pod, {("ConfigMap", "absent"): None}, FACTS, lambda a, s: "t", {})
    assert e.value.waiting and "configmap 'absent' not found" in str(e.value)
    optional = _pod(volumes=[{"name": "v", "configMap": {"name": "absent", "optional": True}}])
    prep.prepare(optional, {("ConfigMap", "absent"): None}, FACTS, lambda a, s: "t", {})


def test_a_projected_volume_becomes_a_secret_volume():
    tokens = []

    def token(audience, seconds):
        tokens.append((audience, seconds))
        return "jwt"

    volume = {
        "name": "kube-api-access-x",
        "projected": {
            "defaultMode": 0o444,
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                {
                    "configMap": {
                        "name": "kube-root-ca.crt",
                        "items": [{"key": "ca.crt", "path": "ca.crt"}],
                    }
                },
                {
                    "downwardAPI": {
                        "items": [
                            {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}
                        ]
                    }
                },
            ],
        },
    }
    pod = _pod(volumes=[volume])
    objects = {("ConfigMap", "kube-root-ca.crt"): _cm("kube-root-ca.crt", **{"ca.crt": "CA"})}
    assert prep.references(pod["spec"]) == [prep.Reference("ConfigMap", "kube-root-ca.crt", False)]
    prepared = prep.prepare(pod, objects, FACTS, token, {})
    (converted,) = prepared.pod["spec"]["volumes"]
    assert converted["name"] == "kube-api-access-x"
    source = converted["secret"]
    assert source["secretName"] == "projected/kube-api-access-x" and source["defaultMode"] == 0o444
    assert [i["path"] for i in source["items"]] == ["token", "ca.crt", "namespace"]
    secret = prepared.objects[("Secret", "projected/kube-api-access-x")]
    files = {
        i["path"]: base64.b64decode(secret["data"][i["key"]]).decode() for i in source["items"]
    }
    assert files == {"token": "jwt", "ca.crt": "CA", "namespace": "ns"}
    assert tokens == [(None, 3607)]
    (projection,) = prepared.projections
    assert projection.tokens == [(None, 3607)] and projection.reads_metadata
    unsupported = _pod(
        volumes=[{"name": "v", "projected": {"sources": [{"clusterTrustBundle": {}}]}}]
    )
    with pytest.raises(prep.PrepareError, match="not supported"):
        prep.prepare(unsupported, {}, FACTS, token, {})


def _release(name: str, values: dict) -> dict:
    """The chart's injection ClusterPolicy, as the real Helm renders it for `values`."""
    return render.find_in(render.install_dry_run(name, values), "ClusterPolicy", "inject-proxy")


def test_only_a_releases_own_injection_is_trusted():
    workload = {
        "metadata": {"name": "w", "labels": {"intercept-proxy/enabled": "true"}},
        "spec": {
            "securityContext": {"runAsUser": 12345},
            "containers": [{"name": "app", "image": "busybox", "command": ["true"]}],
        },
    }
    default = settings_from_values({}, "intercept-proxy")
    pod = inject_pod(workload, default)
    releases = trust.releases(
        [_release("other", {"agent": {"uid": 1102}}), _release("intercept-proxy", {})]
    )
    decided = trust.decide(pod, releases)
    assert decided.trusted == frozenset(SIDECARS)
    assert decided.explanation == "interceptor verified against intercept-proxy-inject-proxy"
    assert not trust.decide(workload, releases).trusted
    others = [r for r in releases if r.source == "other-inject-proxy"]
    assert not trust.decide(pod, others).trusted
    assert "no release's" in trust.decide(pod, others).explanation
    assert "no injection ClusterPolicy" in trust.decide(pod, []).explanation
    # Other admission plugins may set what the validation does not compare.
    limited = copy.deepcopy(pod)
    for container in limited["spec"]["initContainers"][:3]:
        container["resources"] = {"limits": {"cpu": "2"}}
        container["imagePullPolicy"] = "Always"
    assert trust.decide(limited, releases).trusted
    broken = trust.releases([{"metadata": {"name": "y-inject-proxy"}, "spec": {"rules": []}}])
    assert "not the chart's injection" in trust.decide(pod, broken).explanation


def test_a_pod_asking_for_the_node_runs_only_as_a_node_agent():
    """The chart's CNI node agent, as the DaemonSet controller makes its pod: all its containers
    trusted, in a namespace whose Pod Security level is privileged; nothing else."""
    spec = cninode.pod_spec(settings_from_values({"capture": {"mode": "cni"}}, "r"))
    owner = {"kind": "DaemonSet", "name": cninode.NAME, "controller": True, "uid": "u1"}
    agent = {
        "metadata": {"name": "a", "namespace": "cni", "ownerReferences": [owner]},
        "spec": spec,
    }
    daemonset = {"metadata": {"name": cninode.NAME, "uid": "u1"}}
    privileged = {trust.PRIVILEGED_LABEL: trust.PRIVILEGED}
    assert trust.wants_host(agent)
    decided = trust.node_agent(agent, privileged, daemonset)
    assert decided.trusted == frozenset({cninode.CONTAINER})
    assert decided.explanation == (
        f"a node agent: DaemonSet {cninode.NAME} in cni, {trust.PRIVILEGED_LABEL}=privileged"
    )
    assert not trust.node_agent(agent, {trust.PRIVILEGED_LABEL: "baseline"}, daemonset).trusted
    assert "is not labelled" in trust.node_agent(agent, {}, daemonset).explanation
    # A reference anyone could write: to no DaemonSet, another one, or no controller at all.
    assert not trust.node_agent(agent, privileged, None).trusted
    assert not trust.node_agent(agent, privileged, {"metadata": {"uid": "u2"}}).trusted
    for owners in ([], [{**owner, "kind": "ReplicaSet"}], [{**owner, "controller": False}]):
        bare = {**agent, "metadata": {**agent["metadata"], "ownerReferences": owners}}
        decided = trust.node_agent(bare, privileged, daemonset)
        assert decided.explanation == "it asks for the node, and no DaemonSet controls it"
    assert not trust.wants_host({"spec": {"volumes": [{"name": "v", "emptyDir": {}}]}})


def test_pod_status_as_a_kubelet_reports_it():
    spec = {
        "initContainers": [
            {"name": "init", "image": "i"},
            {"name": "side", "image": "s", "restartPolicy": "Always"},
        ],
        "containers": [{"name": "app", "image": "a"}],
    }
    states = st.container_states(spec)
    conditions = st.Conditions()
    pending = st.pod_status(st.PodState(states, sandbox=True), conditions)
    assert pending["phase"] == "Pending"
    assert pending["containerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}
    init, side, app = states
    init.started_at, init.exit_code, init.finished_at = "t0", 0, "t1"
    side.started_at, side.started, side.ready = "t1", True, False
    app.started_at, app.started, app.ready = "t2", True, True
    running = st.pod_status(st.PodState(states, sandbox=True, apps_started=True), conditions)
    assert running["phase"] == "Running"
    kinds = {c["type"]: c["status"] for c in running["conditions"]}
    assert kinds == {
        "PodReadyToStartContainers": "True",
        "Initialized": "True",
        "Ready": "False",  # the sidecar is not ready yet
        "ContainersReady": "False",
    }
    side.ready = True
    ready = st.pod_status(st.PodState(states, sandbox=True, apps_started=True), conditions)
    assert {c["type"]: c["status"] for c in ready["conditions"]}["Ready"] == "True"
    app.exit_code, app.finished_at = 3, "t3"
    done = st.pod_status(st.PodState(states, apps_started=True, finished=True), conditions)
    assert done["phase"] == "Failed"
    assert done["containerStatuses"][0]["state"]["terminated"]["reason"] == "Error"
    refused = st.pod_status(
        st.PodState(st.container_states(spec), failed="no", reason="RuntimeAdmissionRejected"),
        st.Conditions(),
    )
    assert refused["phase"] == "Failed" and refused["reason"] == "RuntimeAdmissionRejected"
    assert (
        refused["containerStatuses"][0]["state"]["waiting"]["reason"] == "RuntimeAdmissionRejected"
    )


def test_previous_containers_count_a_restart():
    states = st.container_states({"containers": [{"name": "app", "image": "a"}]})
    st.carry_over(
        states,
        {
            "containerStatuses": [
                {"name": "app", "restartCount": 2, "state": {"running": {"startedAt": "t"}}}
            ]
        },
    )
    assert states[0].restarts == 3 and states[0].last_terminated["reason"] == "Unknown"


def test_log_selection():
    lines = [
        "2026-01-01T00:00:00.000000001Z one\n",
        "2026-01-01T00:00:10.500000000Z two\n",
        "2026-01-01T00:00:20.000000000Z three\n",
    ]
    assert select_lines(lines, tail=None, since=None, timestamps=False) == [
        "one\n",
        "two\n",
        "three\n",
    ]
    assert select_lines(lines, tail=1, since=None, timestamps=True) == [lines[2]]
    assert select_lines(lines, tail=0, since=None, timestamps=False) == []
    since = 1767225610.0  # 2026-01-01T00:00:10Z
    assert select_lines(lines, tail=None, since=since, timestamps=False) == ["two\n", "three\n"]


def test_a_missing_engine_names_the_command_that_builds_it(tmp_path, monkeypatch):
    from intercept_proxy.cluster.tools import ToolsError

    monkeypatch.setenv("INTERCEPT_TOOLS", str(tmp_path))
    with pytest.raises(ToolsError) as e:
        Tools.locate()
    assert f"{tmp_path}/bin/etcd" in str(e.value)
    assert "make install" in str(e.value) and "scripts/install-tools" in str(e.value)


def test_the_cluster_dns_is_coredns_behind_the_kube_dns_service(tmp_path):
    config = layout.Config("demo", "kabcde", str(tmp_path), "demo-node", layout.Ports())
    text = dns.corefile(config, tmp_path / "coredns.kubeconfig", ("198.18.0.53", "fd00::53"))
    assert text == (
        "cluster.local:53 {\n    bind 10.244.255.1\n    errors\n"
        "    kubernetes cluster.local {\n"
        f"        kubeconfig {tmp_path}/coredns.kubeconfig\n"
        "        pods verified\n    }\n}\n"
        ".:53 {\n    bind 10.244.255.1\n    errors\n    cache 10\n"
        "    forward . 198.18.0.53 fd00::53\n}\n"
    )
    assert dns.search(config, "team-a") == (
        "team-a.svc.cluster.local",
        "svc.cluster.local",
        "cluster.local",
    )
    by_kind = {o["kind"]: o for o in dns.objects(config)}
    assert by_kind["Service"]["spec"]["clusterIP"] == "10.96.0.10"
    assert "selector" not in by_kind["Service"]["spec"]  # its EndpointSlice is the cluster's
    (endpoint,) = by_kind["EndpointSlice"]["endpoints"]
    assert endpoint["addresses"] == ["10.244.255.1"]
    assert by_kind["ClusterRoleBinding"]["subjects"][0]["name"] == "system:coredns"
