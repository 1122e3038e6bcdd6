"""The injector: one pure function from a Pod to the intercepted Pod."""

from __future__ import annotations

import copy
import json
import re

import pytest

from intercept_proxy.injector.pod import (
    TRUST_BUNDLE,
    TRUST_VARIABLES,
    InjectionError,
    inject_pod,
    is_injected,
)
from intercept_proxy.injector.settings import InjectorSettings, SettingsError
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
    assert agent["command"][-4:] == [
        "--pod-policy",
        "/etc/intercept/pod/policy.yaml",
        "--pod-policy-mode",
        "narrow",
    ]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "intercept-pod-policy"]
    field = volume["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"]
    assert field == "metadata.annotations['intercept-proxy/opa-data']"
    off = inject_pod(POD, InjectorSettings(policy_override=OverrideMode.NONE))["spec"]
    assert "--pod-policy" not in off["initContainers"][1]["command"]
    assert "intercept-pod-policy" not in {v["name"] for v in off["volumes"]}


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


def test_pod_level_reserved_uid_is_refused():
    pod = copy.deepcopy(POD)
    pod["spec"]["securityContext"]["runAsUser"] = 101
    with pytest.raises(InjectionError, match=re.escape("spec.securityContext.runAsUser 101")):
        inject_pod(pod, InjectorSettings())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"envoy_uid": 102}, "distinct"),
        ({"tls_ports": (15001,)}, "outside 15000-15099"),
        ({"tls_ports": (443,), "http_ports": (443,)}, "overlap"),
        ({"allowed_cidrs": ("10.0.0.0/33",)}, "allowed_cidrs"),
        ({"image": "intercept-proxy/intercept-proxy:latest"}, "pinned"),
        ({"envoy_image": "envoyproxy/envoy"}, "pinned"),
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
