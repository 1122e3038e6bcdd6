"""The injector: one pure function from a Pod to the intercepted Pod."""

from __future__ import annotations

import copy
import json
import re

import pytest

from intercept_proxy.injector.pod import (
    TOKEN_PATH,
    TRUST_BUNDLE,
    TRUST_VARIABLES,
    InjectionError,
    inject_pod,
    is_injected,
)
from intercept_proxy.injector.settings import InjectorSettings, Resources, SettingsError
from intercept_proxy.policy.combined import OverrideMode
from tests.golden import assert_golden

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "agent", "labels": {"intercept-proxy/enabled": "true"}},
    "spec": {
        "securityContext": {"runAsUser": 12345, "runAsGroup": 12345},
        "initContainers": [
            {"name": "fetch", "image": "curlimages/curl:8.11.1", "command": ["curl"]}
        ],
        "containers": [
            {
                "name": "app",
                "image": "python:3.12-slim",
                "command": ["python", "-m", "agent"],
                "env": [{"name": "SSL_CERT_FILE", "value": "/mine.pem"}],
            }
        ],
        "volumes": [{"name": "work", "emptyDir": {}}],
    },
}


def test_injected_pod_golden():
    assert_golden("injector/pod-default.json", inject_pod(POD, InjectorSettings()))


def test_injected_pod_golden_with_settings():
    settings = InjectorSettings(
        tls_ports=(443, 8443),
        http_ports=(80, 8080),
        allowed_cidrs=("10.96.0.0/12", "fd00:10:96::/112"),
        dns_forward_suffixes=("cluster.local", "corp.example"),
        automount_service_account_token=True,
    )
    assert_golden("injector/pod-settings.json", inject_pod(POD, settings))


def test_order_proxy_init_then_sidecars_then_the_workloads_own_init():
    spec = inject_pod(POD, InjectorSettings())["spec"]
    assert [c["name"] for c in spec["initContainers"]] == [
        "proxy-init",
        "intercept-agent",
        "envoy",
        "fetch",
    ]
    assert [c.get("restartPolicy") for c in spec["initContainers"]] == [
        None,
        "Always",
        "Always",
        None,
    ]
    assert spec["automountServiceAccountToken"] is False


def test_security_contexts():
    spec = inject_pod(POD, InjectorSettings())["spec"]
    by_name = {c["name"]: c for c in spec["initContainers"]}
    init = by_name["proxy-init"]["securityContext"]
    assert init["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    for name, uid in (("intercept-agent", 102), ("envoy", 101)):
        ctx = by_name[name]["securityContext"]
        assert (ctx["runAsUser"], ctx["runAsNonRoot"], ctx["readOnlyRootFilesystem"]) == (
            uid,
            True,
            True,
        )
        assert ctx["capabilities"] == {"drop": ["ALL"]}
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    text = json.dumps(spec)
    assert "hostPath" not in text
    assert ":latest" not in text


def test_only_the_agent_mounts_the_ca_key():
    spec = inject_pod(POD, InjectorSettings())["spec"]
    for container in [*spec["initContainers"], *spec["containers"]]:
        mounts = {m["name"] for m in container.get("volumeMounts", [])}
        assert ("intercept-ca" in mounts) == (container["name"] == "intercept-agent")


def test_workload_containers_trust_the_sandbox_ca_whatever_they_set():
    spec = inject_pod(POD, InjectorSettings())["spec"]
    for container in (spec["initContainers"][3], spec["containers"][0]):
        env = [(e["name"], e["value"]) for e in container["env"]]
        assert [n for n, _ in env if n == "SSL_CERT_FILE"] == ["SSL_CERT_FILE"]  # once
        assert {n: v for n, v in env if n in TRUST_VARIABLES} == dict.fromkeys(
            TRUST_VARIABLES, TRUST_BUNDLE
        )
        mount = {
            "name": "intercept-trust",
            "mountPath": "/var/run/intercept/trust",
            "readOnly": True,
        }
        assert mount in container["volumeMounts"]
        assert container["securityContext"]["runAsNonRoot"] is True


def test_the_pods_own_policy_reaches_the_agent_unless_overrides_are_off():
    spec = inject_pod(POD, InjectorSettings())["spec"]
    agent = spec["initContainers"][1]
    at = agent["command"].index("--pod-policy")
    assert agent["command"][at : at + 4] == [
        "--pod-policy",
        "/etc/intercept/pod/policy.yaml",
        "--pod-policy-mode",
        "narrow",
    ]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "intercept-pod-policy"]
    field = volume["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"]
    assert field == "metadata.annotations['intercept-proxy/opa-data']"
    # Off: the same pod (one shape for every setting), and the agent told to ignore the file.
    off = inject_pod(POD, InjectorSettings(policy_override=OverrideMode.NONE))["spec"]
    command = off["initContainers"][1]["command"]
    assert command[command.index("--pod-policy-mode") + 1] == "none"


def test_a_shared_ca_comes_from_a_secret():
    spec = inject_pod(POD, InjectorSettings(ca_mode="secret", ca_secret="intercept-ca"))["spec"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "intercept-ca"]
    assert volume["secret"] == {"secretName": "intercept-ca", "defaultMode": 0o444}
    command = spec["initContainers"][1]["command"]
    assert "/var/run/intercept/ca/tls.key" in command
    with pytest.raises(SettingsError, match="ca_secret"):
        InjectorSettings(ca_mode="secret")


def test_injection_is_idempotent_and_pure():
    original = copy.deepcopy(POD)
    once = inject_pod(POD, InjectorSettings())
    assert original == POD
    assert is_injected(once["metadata"])
    assert inject_pod(once, InjectorSettings()) == once


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"securityContext": {"runAsUser": 0}}, "runAsUser 0 is reserved (root"),
        ({"securityContext": {"runAsUser": 101}}, "runAsUser 101 is reserved (a sidecar"),
        ({"securityContext": {"runAsUser": 102}}, "runAsUser 102 is reserved"),
        ({"securityContext": {"privileged": True}}, "privileged is not allowed"),
        ({"securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}, "NET_ADMIN"),
        ({"securityContext": {"capabilities": {"add": ["NET_RAW"]}}}, "NET_RAW"),
        # Case does not matter to a runtime, so it must not matter here.
        ({"securityContext": {"capabilities": {"add": ["net_admin"]}}}, "NET_ADMIN"),
        ({"securityContext": {"capabilities": {"add": ["SETUID"]}}}, "SETUID"),
        ({"securityContext": {"capabilities": {"add": ["DAC_OVERRIDE"]}}}, "DAC_OVERRIDE"),
        # A string would slip past a comparison with 101.
        ({"securityContext": {"runAsUser": "101"}}, "'101' is not an integer"),
        ({"securityContext": {"runAsGroup": 0}}, "runAsGroup 0"),
        ({"securityContext": {"allowPrivilegeEscalation": True}}, "allowPrivilegeEscalation"),
        ({"volumeMounts": [{"name": "intercept-ca", "mountPath": "/x"}]}, "the interceptor's"),
        ({"name": "envoy"}, "reserved for the interceptor"),
    ],
)
def test_unsafe_workloads_are_refused(patch, message):
    pod = copy.deepcopy(POD)
    pod["spec"]["containers"][0] |= patch
    with pytest.raises(InjectionError, match=re.escape(message)):
        inject_pod(pod, InjectorSettings())


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"securityContext": {"seccompProfile": {"type": "Unconfined"}}}, "seccompProfile: Unconf"),
        ({"securityContext": {"appArmorProfile": {"type": "Unconfined"}}}, "appArmorProfile: Unc"),
        ({"envFrom": [{"secretRef": {"name": "shared-ca"}}]}, "Secret 'shared-ca' holds"),
        (
            {
                "env": [
                    {"name": "K", "valueFrom": {"secretKeyRef": {"name": "shared-ca", "key": "k"}}}
                ]
            },
            "Secret 'shared-ca' holds",
        ),
    ],
)
def test_unsafe_workloads_are_refused_with_a_shared_ca(patch, message):
    pod = copy.deepcopy(POD)
    pod["spec"]["containers"][0] |= patch
    with pytest.raises(InjectionError, match=re.escape(message)):
        inject_pod(pod, InjectorSettings(ca_mode="secret", ca_secret="shared-ca"))
    if "Secret" in message:  # an ephemeral CA has no Secret: one of that name is any other
        inject_pod(pod, InjectorSettings())


def test_every_container_needs_a_uid():
    # An image's own user may be 101 (nginx-unprivileged) or 102: exempt from capture.
    pod = copy.deepcopy(POD)
    del pod["spec"]["securityContext"]["runAsUser"]
    with pytest.raises(InjectionError, match=r"container 'fetch': no runAsUser .* 101"):
        inject_pod(pod, InjectorSettings())
    for container in pod["spec"]["initContainers"] + pod["spec"]["containers"]:
        container["securityContext"] = {"runAsUser": 12345}
    inject_pod(pod, InjectorSettings())


def test_pod_level_reserved_uid_is_refused():
    pod = copy.deepcopy(POD)
    pod["spec"]["securityContext"]["runAsUser"] = 101
    with pytest.raises(InjectionError, match=re.escape("spec.securityContext.runAsUser 101")):
        inject_pod(pod, InjectorSettings())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"envoy_uid": 102}, "distinct"),
        ({"tls_ports": (15001,)}, "in the sidecar range 15000-15099"),
        ({"tls_ports": (53,)}, "53 is DNS"),
        ({"tls_ports": (443,), "http_ports": (443,)}, "443 is also in tls_ports"),
        ({"inbound_ports": (15053,)}, "15053 is dns_port"),
        ({"allowed_cidrs": ("10.0.0.0/33",)}, "allowed_cidrs"),
        ({"image": "intercept-proxy/intercept-proxy:latest"}, "pinned"),
        ({"envoy_image": "envoyproxy/envoy"}, "pinned"),
        ({"image_pull_policy": "Sometimes"}, "image_pull_policy"),
        ({"cert_validity_hours": 0}, "cert_validity_hours"),
    ],
)
def test_settings_are_validated(kwargs, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        InjectorSettings(**kwargs)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"hostNetwork": True}, "spec.hostNetwork"),
        ({"hostPID": True}, "spec.hostPID"),
        ({"hostIPC": True}, "spec.hostIPC"),
        ({"shareProcessNamespace": True}, "spec.shareProcessNamespace"),
        ({"securityContext": {"runAsUser": 12345, "supplementalGroups": [0]}}, "group 0"),
        ({"securityContext": {"runAsUser": 12345, "fsGroup": 0}}, "group 0"),
        ({"volumes": [{"name": "intercept-trust", "emptyDir": {}}]}, "reserved"),
        ({"volumes": [{"name": "intercept-mine", "emptyDir": {}}]}, "'intercept-' are reserved"),
        ({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}, "hostPath is not allowed"),
        ({"volumes": [{"name": "n", "nfs": {"server": "x", "path": "/"}}]}, "nfs is not allowed"),
        (
            {"volumes": [{"name": "t", "projected": {"sources": [{"serviceAccountToken": {}}]}}]},
            "volume 't': a serviceAccountToken source is not allowed",
        ),
        ({"ephemeralContainers": [{"name": "debug"}]}, "kubectl debug --copy-to"),
        ({"securityContext": {"runAsUser": 1, "seccompProfile": {"type": "Unconfined"}}}, "Unc"),
    ],
)
def test_unsafe_pods_are_refused(patch, message):
    pod = copy.deepcopy(POD)
    pod["spec"] |= patch
    with pytest.raises(InjectionError, match=re.escape(message)):
        inject_pod(pod, InjectorSettings())


def test_workloads_get_no_privilege_escalation_no_capabilities_and_a_seccomp_profile():
    pod = copy.deepcopy(POD)
    pod["spec"]["containers"][0]["securityContext"] = {
        "capabilities": {"add": ["net_bind_service"]}
    }
    ctx = inject_pod(pod, InjectorSettings())["spec"]["containers"][0]["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"add": ["net_bind_service"], "drop": ["ALL"]}
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}


def test_a_workload_may_not_mount_a_shared_cas_secret():
    pod = copy.deepcopy(POD)
    secret = {"name": "mine", "secret": {"secretName": "shared-ca"}}
    projected = {"name": "mine", "projected": {"sources": [{"secret": {"name": "shared-ca"}}]}}
    shared = InjectorSettings(ca_mode="secret", ca_secret="shared-ca")
    for volume in (secret, projected):
        pod["spec"]["volumes"] = [volume]
        with pytest.raises(InjectionError, match="volume 'mine': Secret 'shared-ca' holds"):
            inject_pod(pod, shared)


def test_the_workloads_own_token_volume_is_allowed_when_the_token_is_mounted():
    pod = copy.deepcopy(POD)
    pod["spec"]["volumes"] = [
        {"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}
    ]
    inject_pod(pod, InjectorSettings(automount_service_account_token=True))


def test_the_sidecars_hold_no_token_whatever_automount_says():
    # The ServiceAccount plugin skips a container with something mounted at the token's path.
    for automount in (True, False):
        spec = inject_pod(POD, InjectorSettings(automount_service_account_token=automount))
        spec = spec["spec"]
        for sidecar in spec["initContainers"][:3]:
            assert {"name": "intercept-no-token", "mountPath": TOKEN_PATH, "readOnly": True} in (
                sidecar["volumeMounts"]
            )
        assert {"name": "intercept-no-token", "emptyDir": {}} in spec["volumes"]
        assert ("automountServiceAccountToken" not in spec) == automount


# Pods injected ahead of time: the annotation is the pod's word, the interceptor is verified.
def injected(**settings: object) -> dict:
    return inject_pod(POD, InjectorSettings(**settings))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda p: p["spec"].update(copy.deepcopy(POD["spec"])),
            r"initContainers\[0\] \(proxy-init\)",
        ),
        (
            lambda p: p["spec"]["initContainers"][1]["securityContext"].update(privileged=True),
            r"initContainers\[1\] \(intercept-agent\): securityContext not as the injection",
        ),
        (
            lambda p: p["spec"]["initContainers"][0].update(command=["true"]),
            r"initContainers\[0\] \(proxy-init\): command not as",
        ),
        (
            lambda p: p["spec"]["initContainers"][2].update(image="envoyproxy/envoy:v1.39.0"),
            r"\(envoy\): image not as",
        ),
        (lambda p: p["spec"]["initContainers"].pop(2), r"\(envoy\): .*not as"),
        (
            lambda p: p["spec"]["volumes"].append({"name": "intercept-x", "emptyDir": {}}),
            r"spec.volumes \[.*'intercept-x'\]: the intercept-\* volumes",
        ),
        (
            lambda p: p["spec"].pop("automountServiceAccountToken"),
            "spec.automountServiceAccountToken: must be false",
        ),
        (
            lambda p: p["spec"]["containers"][0]["volumeMounts"][-1].pop("readOnly"),
            r"container 'app': volumeMounts \['intercept-trust'\]",
        ),
        (
            lambda p: p["spec"]["containers"][0]["securityContext"].update(runAsUser=101),
            "container 'app': runAsUser 101 is reserved",
        ),
        (
            lambda p: p["spec"]["volumes"].append({"name": "n", "hostPath": {"path": "/"}}),
            "volume 'n': hostPath is not allowed",
        ),
    ],
)
def test_a_pod_cannot_fake_its_own_injection(change, message):
    pod = injected()
    change(pod)
    with pytest.raises(InjectionError, match=message):
        inject_pod(pod, InjectorSettings())


def test_a_pod_injected_with_other_settings_is_refused():
    with pytest.raises(InjectionError, match=r"initContainers\[0\] \(proxy-init\): command"):
        inject_pod(injected(tls_ports=(443, 8443)), InjectorSettings())


HARDENED = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def test_a_debug_copy_of_an_injected_pod_is_accepted():
    # A copy to debug: one more container, without the trust bundle, hardened as the
    # injection hardens the workload.
    pod = injected()
    debugger = {"name": "debugger", "image": "busybox:1.36", "securityContext": dict(HARDENED)}
    pod["spec"]["containers"].append(debugger)
    assert inject_pod(pod, InjectorSettings()) == pod


@pytest.mark.parametrize("missing", sorted(HARDENED))
def test_a_pod_injected_ahead_of_time_keeps_the_workloads_hardening(missing):
    """Without no_new_privs a file capability in the image could make the workload a
    sidecar's UID, whose traffic is never captured."""
    pod = injected()
    context = {k: v for k, v in HARDENED.items() if k != missing}
    pod["spec"]["containers"].append({"name": "debugger", "securityContext": context})
    with pytest.raises(
        InjectionError, match="'debugger': securityContext: allowPrivilegeEscalation"
    ):
        inject_pod(pod, InjectorSettings())


@pytest.mark.parametrize(
    "field",
    [
        {"dnsPolicy": "None", "dnsConfig": {"nameservers": ["203.0.113.7"]}},
        {"dnsConfig": {"nameservers": ["203.0.113.7"]}},
        {"hostAliases": [{"ip": "203.0.113.7", "hostnames": ["pypi.org"]}]},
    ],
)
def test_the_pods_own_name_resolution_is_refused(field):
    pod = {"metadata": {}, "spec": {"securityContext": {"runAsUser": 12345}, **field,
           "containers": [{"name": "app", "image": "busybox:1.36"}]}}  # fmt: skip
    with pytest.raises(InjectionError, match=f"spec.{next(iter(field))}"):
        inject_pod(pod, InjectorSettings())


@pytest.mark.parametrize("quantity", ["0.5", "1e3", "lots", "1.5.2", "", None, [1]], ids=repr)
def test_quantities_are_checked_and_kept_as_given(quantity):
    if quantity in ("0.5", "1e3"):  # what the API server reads, kept as written
        assert InjectorSettings(init_resources=Resources({"cpu": quantity}, {})).init_resources
        return
    with pytest.raises(SettingsError, match="is not a resource quantity"):
        InjectorSettings(init_resources=Resources({"cpu": quantity}, {}))  # type: ignore[dict-item]
