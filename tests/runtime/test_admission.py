"""A Pod manifest is untrusted input to the local runtime: every field it uses is checked, and a
refusal names the field."""

from __future__ import annotations

import copy
import re

import pytest

from intercept_proxy.injector.pod import SIDECARS, inject_pod
from intercept_proxy.injector.settings import InjectorSettings
from intercept_proxy.runtime.admission import Accounts, AdmissionError, check_pod

APP = {"name": "app", "image": "busybox:1.36", "command": ["true"]}
BASE = {
    "metadata": {"name": "p"},
    "spec": {"securityContext": {"runAsUser": 12345}, "containers": [APP], "volumes": []},
}


def pod(**changes) -> dict:
    """BASE with `changes` applied: dotted paths into the spec, lists by index."""
    out = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = out["spec"]
        keys = [int(k) if k.isdigit() else k for k in path.split("__")]
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return out


def refused(manifest: dict, field: str, problem: str, trusted=()) -> None:
    with pytest.raises(AdmissionError, match=re.escape(problem)) as error:
        check_pod(manifest, trusted)
    assert error.value.field == field


def test_an_ordinary_pod_is_admitted():
    check_pod(pod())


def test_an_injected_pod_is_admitted_with_its_interceptor_trusted():
    injected = inject_pod(pod() | {"metadata": {"name": "p"}}, InjectorSettings())
    check_pod(injected, SIDECARS)
    # Untrusted, proxy-init is what it is: a root container with NET_ADMIN.
    refused(injected, "spec.initContainers[0].securityContext.capabilities.add[0]", "NET_ADMIN")
    injected["spec"]["initContainers"][0]["securityContext"].pop("capabilities")
    refused(injected, "spec.initContainers[0].securityContext.runAsUser", "is not a user ID")


@pytest.mark.parametrize("uid", [-1, 0, 2**31, 2**32 - 1, "12345", 1.5, True], ids=repr)
def test_user_ids_outside_the_valid_range(uid):
    # (uid_t)-1 is "leave unchanged" to setuid and setpriv: the workload would stay root.
    refused(pod(securityContext={"runAsUser": uid}), "spec.securityContext.runAsUser", "user ID")


@pytest.mark.parametrize("gid", [0, 4, 27, 999, -1, 2**31, "2000"], ids=repr)
def test_run_as_group_is_checked_like_the_other_groups(gid):
    refused(
        pod(containers__0__securityContext={"runAsGroup": gid}),
        "spec.containers[0].securityContext.runAsGroup",
        "group ID of no system group",
    )


def test_system_users_are_refused():
    refused(pod(securityContext={"runAsUser": 33}), "spec.securityContext.runAsUser", "system")


def test_the_default_group_is_the_user_and_is_checked_too():
    # 5000 is no system account, but this machine has a group 5000.
    accounts = Accounts(users=frozenset(), groups=frozenset({5000}))
    with pytest.raises(AdmissionError) as error:
        check_pod(pod(securityContext={"runAsUser": 5000}), (), accounts)
    assert error.value.field == "spec.securityContext.runAsGroup (defaults to runAsUser 5000)"
    assert "is a group of this machine" in str(error.value)


def test_this_machines_accounts_are_refused_unless_the_operator_chose_them():
    accounts = Accounts(users=frozenset({1000}), groups=frozenset({1000}))
    manifest = pod(securityContext={"runAsUser": 1000})
    with pytest.raises(AdmissionError, match="1000 is an account of this machine"):
        check_pod(manifest, (), accounts)
    check_pod(manifest, (), Accounts(accounts.users, accounts.groups, frozenset({1000})))


@pytest.mark.parametrize(
    ("field", "value", "where"),
    [
        ("supplementalGroups", [6], "spec.securityContext.supplementalGroups[0]"),
        ("supplementalGroups", [2000, -1], "spec.securityContext.supplementalGroups[1]"),
        ("fsGroup", 27, "spec.securityContext.fsGroup"),
    ],
)
def test_extra_groups(field, value, where):
    refused(pod(securityContext={"runAsUser": 12345, field: value}), where, "group ID")


def test_the_interceptors_users_are_reserved_for_its_containers():
    injected = inject_pod(pod(), InjectorSettings())
    for uid in (101, 102):
        manifest = copy.deepcopy(injected)
        manifest["spec"]["containers"][0]["securityContext"]["runAsUser"] = uid
        refused(
            manifest,
            "spec.containers[0].securityContext.runAsUser",
            "is the interceptor's",
            SIDECARS,
        )


@pytest.mark.parametrize(
    ("context", "field", "problem"),
    [
        ({"privileged": True}, "privileged", "not supported"),
        ({"allowPrivilegeEscalation": True}, "allowPrivilegeEscalation", "setuid"),
        ({"capabilities": {"add": ["SYS_ADMIN"]}}, "capabilities.add[0]", "not allowed"),
        ({"capabilities": {"add": ["CAP_NET_RAW"]}}, "capabilities.add[0]", "unknown"),
        ({"capabilities": {"drop": ["EVERYTHING"]}}, "capabilities.drop[0]", "unknown"),
        ({"seccompProfile": {"type": "Unconfined"}}, "seccompProfile.type", "default profile"),
        ({"seccompProfile": {"type": "Localhost"}}, "seccompProfile.type", "default profile"),
    ],
)
def test_privileges(context, field, problem):
    refused(
        pod(containers__0__securityContext=context),
        f"spec.containers[0].securityContext.{field}",
        problem,
    )


@pytest.mark.parametrize(
    ("volume", "field", "problem"),
    [
        # A volume's name is a directory of the pod's: never a path.
        ({"name": "../../etc", "emptyDir": {}}, "name", "DNS label"),
        ({"name": "/etc", "emptyDir": {}}, "name", "DNS label"),
        ({"name": "Data", "emptyDir": {}}, "name", "DNS label"),
        ({"name": "h", "hostPath": {"path": "/"}}, "", "not supported here"),
        ({"name": "n", "nfs": {"server": "x", "path": "/"}}, "", "not supported here"),
        ({"name": "two", "emptyDir": {}, "secret": {}}, "", "not supported here"),
        (
            {"name": "c", "configMap": {"name": "x", "items": [{"key": "../k", "path": "k"}]}},
            ".configMap.items[0].key",
            "not a key",
        ),
        (
            {"name": "c", "configMap": {"name": "x", "items": [{"key": "k", "path": "/etc/x"}]}},
            ".configMap.items[0].path",
            "absolute",
        ),
        (
            {
                "name": "s",
                "secret": {"secretName": "x", "items": [{"key": "k", "path": "a/../../b"}]},
            },
            ".secret.items[0].path",
            "climbs out",
        ),
        (
            {
                "name": "d",
                "downwardAPI": {
                    "items": [{"path": "../x", "fieldRef": {"fieldPath": "metadata.name"}}]
                },
            },
            ".downwardAPI.items[0].path",
            "climbs out",
        ),
        (
            {"name": "c", "configMap": {"name": "x", "defaultMode": 0o4755}},
            ".configMap.defaultMode",
            "file mode",
        ),
    ],
)
def test_volume_names_keys_and_paths(volume, field, problem):
    refused(
        pod(volumes=[volume]), f"spec.volumes[0]{'.' if field == 'name' else ''}{field}", problem
    )


def test_mounts():
    refused(
        pod(containers__0__volumeMounts=[{"name": "nope", "mountPath": "/x"}]),
        "spec.containers[0].volumeMounts[0].name",
        "no volume named",
    )
    with_volume = {"volumes": [{"name": "v", "emptyDir": {}}]}
    for mount, field, problem in (
        ({"name": "v", "mountPath": "x"}, "mountPath", "not an absolute path"),
        ({"name": "v", "mountPath": "/x", "subPath": "a"}, "subPath", "not supported"),
    ):
        manifest = pod(**{"volumes": with_volume["volumes"]}, containers__0__volumeMounts=[mount])
        refused(manifest, f"spec.containers[0].volumeMounts[0].{field}", problem)


def test_names_and_probes():
    refused(pod(containers__0__name="../x"), "spec.containers[0].name", "DNS label")
    refused(pod(containers=[APP, APP]), "spec", "two containers have the same name")
    for probe, field, problem in (
        ({"httpGet": {"port": "8080 -K /etc/shadow"}}, "httpGet.port", "not a port"),
        ({"httpGet": {"port": 80, "path": "/ -o /tmp/x"}}, "httpGet.path", "space"),
        ({"tcpSocket": {"port": 80}}, "", "only httpGet and exec"),
    ):
        manifest = pod(containers__0__readinessProbe=probe)
        dotted = f".{field}" if field else ""
        refused(manifest, f"spec.containers[0].readinessProbe{dotted}", problem)


def test_only_the_nodes_own_agent_shares_the_node():
    """hostNetwork and hostPath are refused unless the caller grants the node (a node agent);
    hostPID and hostIPC always."""
    host_path = {"name": "h", "hostPath": {"path": "/etc/cni/net.d", "type": "Directory"}}
    for manifest, field, problem in (
        (pod(hostNetwork=True), "spec.hostNetwork", "only the node's own agent"),
        (pod(volumes=[host_path]), "spec.volumes[0]", "volume type ['hostPath']"),
        (pod(hostPID=True), "spec.hostPID", "not supported here"),
    ):
        refused(manifest, field, problem)
    check_pod(pod(hostNetwork=True, volumes=[host_path]), host=True)
    with pytest.raises(AdmissionError, match="not supported here") as error:
        check_pod(pod(hostIPC=True), host=True)
    assert error.value.field == "spec.hostIPC"
    for source, field, problem in (
        ({"path": "etc"}, ".path", "not an absolute path"),
        ({"path": "/etc/../root"}, ".path", "climbs out"),
        ({"path": "/dev/sda", "type": "BlockDevice"}, ".type", "only Directory"),
    ):
        with pytest.raises(AdmissionError, match=re.escape(problem)) as error:
            check_pod(pod(volumes=[{"name": "h", "hostPath": source}]), host=True)
        assert error.value.field == f"spec.volumes[0].hostPath{field}"
