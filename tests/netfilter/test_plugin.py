"""The CNI plugin's side of the protocol, without a pod: its version answer, its errors (the
specification's codes and a message naming what is wrong), and which pods it captures (those
injected in CNI mode, from their check's arguments). Its ADD on real pods is tested on the
cluster (tests/kubernetes/test_cni_mode.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from intercept_proxy.injector.pod import cni_capture, inject_pod
from intercept_proxy.injector.settings import InjectorSettings
from intercept_proxy.netfilter.plugin import PluginError, capture_config, cni_args, run

PLUGIN = str(Path(sys.executable).with_name("intercept-proxy-cni"))
POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "p", "namespace": "n", "labels": {"intercept-proxy/enabled": "true"}},
    "spec": {
        "securityContext": {"runAsUser": 12345},
        "containers": [{"name": "app", "image": "busybox", "command": ["true"]}],
    },
}
ADD = {"CNI_NETNS": "/run/netns/x", "CNI_ARGS": "K8S_POD_NAMESPACE=n;K8S_POD_NAME=p"}


def invoke(command: str, config: object) -> tuple[int, dict]:
    """The installed plugin, run as a runtime runs it."""
    result = subprocess.run(
        [PLUGIN],
        input=json.dumps(config),
        env={"CNI_COMMAND": command, **ADD},
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode, json.loads(result.stdout)


def test_the_installed_plugin_answers_version_and_errors_as_the_specification_says():
    assert invoke("VERSION", {}) == (
        0,
        {"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]},
    )
    code, error = invoke("ADD", {"cniVersion": "1.0.0", "name": "pods", "type": "x"})
    assert code == 1
    assert error["code"] == 7 and "needs the attaching plugin's prevResult" in error["msg"]
    code, error = invoke("ADD", {"cniVersion": "0.3.1", "prevResult": {}})
    assert (code, error["code"]) == (1, 1) and "'0.3.1' is not one of 0.4.0, 1.0.0" in error["msg"]


@pytest.mark.parametrize(
    ("config", "env", "code", "message"),
    [
        ("{", ADD, 6, "its configuration is not JSON"),
        ('["x"]', ADD, 6, "its configuration is not an object"),
        ('{"cniVersion": "1.0.0", "prevResult": {}}', {}, 4, "CNI_NETNS not set"),
        (
            '{"cniVersion": "1.0.0", "prevResult": {}}',
            {**ADD, "CNI_ARGS": "K8S_POD_NAME"},
            4,
            "CNI_ARGS: 'K8S_POD_NAME' is not KEY=VALUE",
        ),
        ('{"cniVersion": "1.0.0", "prevResult": {}}', ADD, 7, "names no kubeconfig"),
        (
            '{"cniVersion": "1.0.0", "prevResult": {}, "kubeconfig": "/nonexistent"}',
            ADD,
            11,
            "cannot read pod n/p",
        ),
    ],
)
def test_what_is_wrong_is_named_with_its_code(config, env, code, message):
    with pytest.raises(PluginError) as refused:
        run("ADD", config, env)
    assert refused.value.code == code
    assert message in refused.value.message


def test_a_pod_that_is_not_kubernetes_passes_through_and_del_changes_nothing():
    previous = {"cniVersion": "1.0.0", "ips": [{"address": "10.244.0.2/24"}]}
    config = json.dumps({"cniVersion": "1.0.0", "prevResult": previous})
    assert run("ADD", config, {"CNI_NETNS": "/run/netns/x"}) == previous
    # An excluded namespace's pods are not read (no kubeconfig is needed for them).
    excluded = json.dumps({**json.loads(config), "excludeNamespaces": ["n"]})
    assert run("ADD", excluded, ADD) == previous
    with pytest.raises(PluginError, match="CNI_NETNS 'x' is not a path"):
        run("ADD", config, {**ADD, "CNI_NETNS": "x"})
    assert run("DEL", config, ADD) is None
    with pytest.raises(PluginError, match="CNI_COMMAND 'FROB' is not known"):
        run("FROB", config, ADD)
    assert cni_args("IgnoreUnknown=1;K8S_POD_NAME=a=b;") == {
        "IgnoreUnknown": "1",
        "K8S_POD_NAME": "a=b",
    }


def test_only_pods_injected_in_cni_mode_ask_for_a_capture():
    cni = InjectorSettings(capture_mode="cni", inbound_ports=(8080,))
    injected = inject_pod(POD, cni)
    arguments = cni_capture(injected)
    assert arguments is not None
    assert capture_config(arguments) == cni.capture_config()
    # Init mode: proxy-init captures itself; a pod not injected: nothing of ours.
    assert cni_capture(inject_pod(POD, InjectorSettings())) is None
    assert cni_capture(POD) is None
    # Decided by proxy-init alone: an annotation taken off before scheduling changes nothing.
    stripped = {**injected, "metadata": {**injected["metadata"], "annotations": {}}}
    assert cni_capture(stripped) == arguments


def test_check_arguments_that_do_not_parse_are_named():
    with pytest.raises(PluginError, match="the pod's capture check: unrecognized arguments"):
        capture_config(["--frob"])
    with pytest.raises(PluginError, match="the pod's capture check: --envoy-uid: "):
        capture_config(["--envoy-uid", "0"])
