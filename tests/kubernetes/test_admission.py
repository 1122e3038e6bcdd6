"""What the real API server and Kyverno admit, with the chart installed: every refusal with its
message, the pods the chart must not break (controllers' pods, pods injected ahead of time,
namespaces with default limits and quotas), and running pods that try to change."""

from __future__ import annotations

import json

import pytest

from intercept_proxy.injector.pod import inject_pod
from intercept_proxy.injector.values import settings_from_values
from tests.cluster.harness import LAB_UPSTREAMS, WORKLOAD_UID, deployment
from tests.kubernetes.chart import LABEL, installed, labelled_pod, refusal

pytestmark = pytest.mark.netns

RELEASE = "admission"
APPROVERS = "intercept-approvers"
VALUES = {
    **LAB_UPSTREAMS,
    "policy": {"default": {"allowed_domains": ["pypi.org"]}},
    "approvals": {"groups": [APPROVERS]},
}
FETCH = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}\\n"]


@pytest.fixture(scope="module")
def release(kube):
    with installed(kube, RELEASE, "admission-system", VALUES):
        yield settings_from_values(VALUES, RELEASE)


@pytest.fixture
def space(kube, release, namespace):
    """The test's namespace, once the default policy has been cloned into it."""
    kube.wait_object(namespace, "configmap", f"{RELEASE}-policy")
    return namespace


def sleeper(name: str, **spec) -> dict:
    return labelled_pod(name, ["sleep", "3600"], restartPolicy="Always", **spec)


def with_security(pod_context: dict | None = None, **container_context) -> dict:
    pod = labelled_pod("hostile", ["true"])
    if pod_context is not None:
        pod["spec"]["securityContext"] = pod_context
    if container_context:
        pod["spec"]["containers"][0]["securityContext"] = container_context
    return pod


HOSTILE = {
    "root": (with_security({"runAsUser": 0}), "pod-security-context"),
    "envoy's uid": (with_security({"runAsUser": 101}), "pod-security-context"),
    "agent's uid": (with_security(runAsUser=102), "workload-containers"),
    "group 0": (with_security({"runAsUser": WORKLOAD_UID, "fsGroup": 0}), "pod-security-context"),
    "the image's user": (with_security({}), "workload-containers"),
    "privileged": (with_security(privileged=True), "workload-containers"),
    "NET_ADMIN": (with_security(capabilities={"add": ["NET_ADMIN"]}), "workload-containers"),
    "hostNetwork": (labelled_pod("hostile", ["true"], hostNetwork=True), "host-namespaces"),
    "its own nameservers": (
        labelled_pod(
            "hostile", ["true"], dnsPolicy="None", dnsConfig={"nameservers": ["198.18.0.53"]}
        ),
        "pod-dns",
    ),
    "host aliases": (
        labelled_pod(
            "hostile", ["true"], hostAliases=[{"ip": "198.18.0.9", "hostnames": ["pypi.org"]}]
        ),
        "pod-dns",
    ),
    "hostPath": (
        labelled_pod("hostile", ["true"], volumes=[{"name": "root", "hostPath": {"path": "/"}}]),
        "pod-volumes",
    ),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_labelled_pod_is_refused_with_the_rule_that_says_why(kube, space, case):
    pod, rule = HOSTILE[case]
    message = refusal(kube, space, pod)
    assert f"{RELEASE}-validate-pods" in message and f"{rule}:" in message, message


def test_a_container_named_like_a_sidecar_is_refused_by_the_api_server(kube, space):
    pod = labelled_pod("hostile", ["true"])
    pod["spec"]["containers"][0]["name"] = "envoy"
    assert 'Duplicate value: "envoy"' in refusal(kube, space, pod)


def test_an_unlabelled_pod_is_left_as_it_is(kube, space):
    pod = labelled_pod("plain", ["true"])
    pod["metadata"]["labels"] = {}
    kube.apply(space, pod)
    stored = kube.pod(space, "plain")["spec"]
    assert "initContainers" not in stored
    assert not [v for v in stored.get("volumes", []) if v["name"].startswith("intercept-")]
    kube.kubectl("delete", "pod", "-n", space, "plain", "--wait=false")


def test_labelling_a_running_pod_is_refused(kube, space):
    pod = sleeper("late")
    pod["metadata"]["labels"] = {}
    kube.apply(space, pod)
    label = ",".join(f"{k}={v}" for k, v in LABEL.items())
    result = kube.kubectl("label", "pod", "-n", space, "late", label, check=False)
    assert result.returncode != 0
    assert "interceptor-present:" in result.stderr, result.stderr
    assert "intercept-proxy/enabled" not in kube.pod(space, "late")["metadata"].get("labels", {})


UNLABEL = {
    "removed": ["label", "--overwrite", "pod", "labelled", "intercept-proxy/enabled-"],
    "changed": ["label", "--overwrite", "pod", "labelled", "intercept-proxy/enabled=false"],
    # pods/status keeps metadata changes
    "removed through status": [
        "patch", "pod", "labelled", "--subresource=status", "--type=json",
        "-p", '[{"op": "remove", "path": "/metadata/labels/intercept-proxy~1enabled"}]',
    ],
}  # fmt: skip


@pytest.mark.parametrize("how", UNLABEL)
def test_the_label_of_a_running_pod_cannot_go(kube, space, how):
    kube.apply(space, sleeper("labelled"))
    result = kube.kubectl("-n", space, *UNLABEL[how], check=False)
    assert result.returncode != 0
    assert "label-kept:" in result.stderr, result.stderr
    assert kube.pod(space, "labelled")["metadata"]["labels"] == LABEL


@pytest.fixture
def running(kube, space):
    kube.apply(space, sleeper("running"))
    kube.wait_ready(space, "running", timeout=120)
    return "running"


def test_a_running_pod_keeps_its_interceptor_and_takes_no_debug_container_or_shell(
    kube, space, running
):
    before = kube.pod(space, running)["spec"]["initContainers"][:3]
    changed = kube.kubectl(
        "set", "image", "-n", space, f"pod/{running}", "envoy=envoyproxy/envoy:v1.0.0",
        check=False,
    )  # fmt: skip
    assert changed.returncode != 0
    assert "interceptor-unchanged:" in changed.stderr, changed.stderr
    debug = kube.kubectl(
        "debug", "-n", space, running, "--image=busybox:1.36", "--profile=general", "--", "true",
        check=False,
    )  # fmt: skip
    assert debug.returncode != 0
    assert "no-ephemeral-containers:" in debug.stderr, debug.stderr
    after = kube.pod(space, running)
    assert after["spec"]["initContainers"][:3] == before
    assert "ephemeralContainers" not in after["spec"]
    # Nor a shell in a sidecar: its traffic is not captured, the agent holds the CA's key.
    for sidecar in ("intercept-agent", "envoy"):
        shell = kube.kubectl("exec", "-n", space, running, "-c", sidecar, "--", "true", check=False)
        assert shell.returncode != 0
        assert "no-exec-into-sidecars:" in shell.stderr, shell.stderr


def test_a_pod_injected_ahead_of_time_is_admitted_as_it_is_and_runs(kube, space, release):
    pod = inject_pod(labelled_pod("ahead", [*FETCH, "https://pypi.org/simple/"]), release)
    kube.apply(space, pod)
    stored = kube.wait_phase(space, "ahead", "Succeeded", timeout=120)
    names = [c["name"] for c in stored["spec"]["initContainers"]]
    assert names == ["proxy-init", "intercept-agent", "envoy"]  # not injected twice
    assert kube.logs(space, "ahead", "-c", "app").split() == ["200"]


# A pod injected ahead of time whose envoy (UID 101: its traffic is never captured) brings
# something of the pod author's that would run in it.
TAMPERED = {
    "environment": lambda c: c.setdefault("env", []).append(
        {"name": "LD_PRELOAD", "value": "/work/hook.so"}
    ),
    "hook": lambda c: c.update(lifecycle={"postStart": {"exec": {"command": ["sh", "-c", "id"]}}}),
    "exec probe": lambda c: c["startupProbe"].update(httpGet=None, exec={"command": ["id"]}),
    "mount over its programs": lambda c: c["volumeMounts"].append(
        {"name": "work", "mountPath": "/usr/local/bin"}
    ),
    "working directory": lambda c: c.update(workingDir="/work"),
}


@pytest.mark.parametrize("change", TAMPERED)
def test_a_sidecar_of_the_pods_own_making_is_refused(kube, space, release, change):
    pod = labelled_pod("tampered", ["true"], volumes=[{"name": "work", "emptyDir": {}}])
    pod = inject_pod(pod, release)
    envoy = pod["spec"]["initContainers"][2]
    assert envoy["name"] == "envoy"
    TAMPERED[change](envoy)
    envoy["startupProbe"] = {k: v for k, v in envoy["startupProbe"].items() if v is not None}
    message = refusal(kube, space, pod)
    assert "interceptor-present:" in message, message


def test_a_pod_injected_ahead_of_time_keeps_the_workloads_hardening(kube, space, release):
    pod = inject_pod(labelled_pod("unhardened", ["true"]), release)
    del pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"]
    message = refusal(kube, space, pod)
    assert "workload-containers:" in message, message


def test_a_forged_injected_annotation_is_refused(kube, space):
    pod = labelled_pod("forged", ["true"])
    pod["metadata"]["annotations"] = {"intercept-proxy/injected": "true"}
    assert "interceptor-present:" in refusal(kube, space, pod)


def wait_condition(kube, namespace: str, kind: str, name: str, condition: str) -> None:
    kube.kubectl(
        "wait", "-n", namespace, f"{kind}/{name}", f"--for=condition={condition}", "--timeout=150s"
    )


def controller_pods(kube, namespace: str, selector: str) -> list[dict]:
    out = kube.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout
    return list(json.loads(out)["items"])


def test_pods_of_deployments_jobs_and_cronjobs_are_injected_and_run(kube, space):
    template = labelled_pod("unused", [*FETCH, "https://pypi.org/simple/"])
    template["spec"]["restartPolicy"] = "Never"
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "fetch"},
        "spec": {"backoffLimit": 0, "template": {k: template[k] for k in ("metadata", "spec")}},
    }
    cron = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "nightly"},
        "spec": {"schedule": "0 3 * * *", "suspend": True, "jobTemplate": {"spec": job["spec"]}},
    }
    kube.apply(space, job, cron, deployment("serving", sleeper("unused")))
    kube.kubectl("create", "job", "-n", space, "from-cron", "--from=cronjob/nightly")
    wait_condition(kube, space, "deployment", "serving", "Available")
    for name in ("fetch", "from-cron"):
        wait_condition(kube, space, "job", name, "Complete")
        (pod,) = controller_pods(kube, space, f"job-name={name}")
        assert [c["name"] for c in pod["spec"]["initContainers"]][:3] == [
            "proxy-init", "intercept-agent", "envoy",
        ]  # fmt: skip
        assert kube.logs(space, pod["metadata"]["name"], "-c", "app").split() == ["200"]
    (pod,) = controller_pods(kube, space, "app=serving")
    assert len(pod["spec"]["initContainers"]) == 3


def test_default_limits_and_a_cpu_quota_do_not_break_injection(kube, space):
    """LimitRanger adds resources to the sidecars after Kyverno's mutation and ResourceQuota
    then requires limits.cpu of every container: the validation must still recognise the
    interceptor."""
    limits = {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": {"name": "defaults"},
        "spec": {
            "limits": [
                {
                    "type": "Container",
                    "default": {"cpu": "300m", "memory": "256Mi"},
                    "defaultRequest": {"cpu": "50m", "memory": "64Mi"},
                }
            ]
        },
    }
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "cpu"},
        "spec": {"hard": {"limits.cpu": "20", "limits.memory": "20Gi"}},
    }
    kube.apply(space, limits, quota)
    # The API server refuses pods until the quota controller has written the quota's status.
    kube.kubectl("wait", "-n", space, "resourcequota/cpu", "--for=jsonpath={.status.hard}",
                 "--timeout=60s")  # fmt: skip
    kube.apply(space, labelled_pod("limited", [*FETCH, "https://pypi.org/simple/"]))
    stored = kube.wait_phase(space, "limited", "Succeeded", timeout=120)
    for container in stored["spec"]["initContainers"] + stored["spec"]["containers"]:
        assert "cpu" in container["resources"]["limits"], container["name"]
    assert kube.logs(space, "limited", "-c", "app").split() == ["200"]


RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": WORKLOAD_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER = {
    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
}


def test_pod_security_is_held_where_interception_needs_privileged(kube, space):
    """proxy-init fails Pod Security (root, NET_ADMIN): the API server's own PodSecurity refuses
    an intercepted pod under `restricted`; under `privileged`, the chart's Kyverno policy holds
    every pod to the level the namespace names, proxy-init alone exempt. The injection hardens
    the workload's containers, so a plain labelled pod passes `restricted`."""
    plain = labelled_pod("plain", [*FETCH, "https://pypi.org/simple/"])
    kube.kubectl("label", "namespace", space, "pod-security.kubernetes.io/enforce=restricted")
    message = refusal(kube, space, plain)
    assert 'violates PodSecurity "restricted:latest"' in message and "proxy-init" in message
    kube.kubectl(
        "label", "namespace", space, "--overwrite",
        "pod-security.kubernetes.io/enforce=privileged", "intercept-proxy/pod-security=restricted",
    )  # fmt: skip
    privileged = labelled_pod(
        "privileged", ["true"], container={"securityContext": {"privileged": True}}
    )
    privileged["metadata"]["labels"] = {}
    message = refusal(kube, space, privileged)
    assert f"{RELEASE}-pod-security" in message and "restricted-other-pods:" in message, message
    quiet = sleeper("quiet", securityContext=RESTRICTED_POD, container=RESTRICTED_CONTAINER)
    quiet["metadata"]["labels"] = {}
    kube.apply(space, quiet)
    debug = kube.kubectl(
        "debug", "-n", space, "quiet", "--image=busybox:1.36", "--profile=sysadmin", "--", "true",
        check=False,
    )  # fmt: skip
    assert debug.returncode != 0
    assert "restricted-other-pods:" in debug.stderr, debug.stderr
    host_port = labelled_pod(
        "host-port", ["true"], container={"ports": [{"containerPort": 8080, "hostPort": 8080}]}
    )
    message = refusal(kube, space, host_port)
    assert "restricted-intercepted-pods:" in message and "hostPort" in message, message
    kube.apply(space, plain)
    kube.wait_phase(space, "plain", "Succeeded", timeout=120)
    assert kube.logs(space, "plain", "-c", "app").split() == ["200"]


def strict_policy(name: str, rule: str, condition: str) -> dict:
    """A cluster's own policy of the kind the chart's PolicyException names (Kyverno's sample
    policies by these names refuse root and added capabilities the same way)."""
    return {
        "apiVersion": "kyverno.io/v1",
        "kind": "ClusterPolicy",
        "metadata": {"name": name},
        "spec": {
            "background": False,
            "rules": [{
                "name": rule,
                "match": {"any": [{"resources": {
                    "kinds": ["Pod"], "namespaceSelector": {"matchLabels": {"strict": "true"}},
                }}]},
                "validate": {
                    "failureAction": "Enforce",
                    "message": f"{name}: refused",
                    "deny": {"conditions": {"any": [
                        {"key": "{{ " + condition.format(list=f"request.object.spec.{field}")
                         + " }}", "operator": "GreaterThan", "value": 0}
                        for field in ("initContainers", "containers")
                    ]}},
                },
            }],
        },
    }  # fmt: skip


STRICT = [
    strict_policy(
        "require-run-as-nonroot", "run-as-non-root",
        "{list}[?to_string(securityContext.runAsUser || `-1`) == '0'] || `[]` | length(@)",
    ),
    strict_policy(
        "disallow-capabilities-strict", "adding-capabilities-strict",
        "{list}[].securityContext.capabilities.add[] || `[]` | length(@)",
    ),
]  # fmt: skip


def test_the_policy_exception_lets_proxy_init_past_strict_policies(kube, space):
    kube.apply("default", *STRICT)
    try:
        for policy in STRICT:
            kube.kubectl("wait", f"clusterpolicy/{policy['metadata']['name']}",
                         "--for=condition=Ready", "--timeout=60s")  # fmt: skip
        kube.kubectl("label", "namespace", space, "strict=true")
        plain = labelled_pod("plain", ["true"], initContainers=[{
            "name": "raw", "image": "busybox:1.36", "command": ["true"],
            "securityContext": {"runAsUser": 0, "capabilities": {"add": ["NET_RAW"]}},
        }])  # fmt: skip
        plain["metadata"]["labels"] = {}
        message = refusal(kube, space, plain)
        assert "run-as-non-root:" in message and "adding-capabilities-strict:" in message
        kube.apply(space, labelled_pod("excepted", [*FETCH, "https://pypi.org/simple/"]))
        kube.wait_phase(space, "excepted", "Succeeded", timeout=120)
        assert kube.logs(space, "excepted", "-c", "app").split() == ["200"]
    finally:
        kube.kubectl("delete", "clusterpolicy", *[p["metadata"]["name"] for p in STRICT])


def test_approvers_alone_answer_approvals_and_run_nothing_else_in_the_agent(kube, space, running):
    """The one exception to no-exec-into-sidecars: `intercept approvals list|allow|deny` in the
    agent's container, by the chart's approvers. Both people may exec into pods (RBAC): the chart
    decides. Admitted, the exec reaches this cluster's node, which runs no streaming server and
    says so; the command itself runs in the agent's container in tests/sandbox/test_approvals.py."""
    rbac = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "exec"},
            "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "exec"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "exec"},
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": APPROVERS},
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bob"},
            ],
        },
    ]
    kube.apply(space, *rbac)

    def exec_as(who: list[str], *command: str) -> str:
        result = kube.kubectl(
            *who, "exec", "-n", space, running, "-c", "intercept-agent", "--", *command,
            check=False,
        )  # fmt: skip
        assert result.returncode != 0  # this node runs no exec, when it gets that far
        return result.stderr

    alice = ["--as=alice", f"--as-group={APPROVERS}"]
    for command in (
        ["list"],
        ["allow", "0123abcd"],
        ["allow", "0123abcd", "--for", "run"],
        ["deny", "0123abcd"],
    ):
        admitted = exec_as(alice, "intercept", "approvals", *command)
        assert "runs no streaming server" in admitted, (command, admitted)
    for command in (
        ["sh"],
        ["intercept", "approvals", "allow", "0123abcd", "--for", "always", "--policy", "/x"],
        ["intercept", "approvals", "--socket", "/tmp/s", "list"],
        ["intercept", "approvals", "list", ";", "sh"],
    ):
        assert "no-exec-into-sidecars:" in exec_as(alice, *command), command
    refused = exec_as(["--as=bob"], "intercept", "approvals", "list")
    assert "approvals-by-approvers-only:" in refused, refused
