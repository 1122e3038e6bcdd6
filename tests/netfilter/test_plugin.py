"""CNI mode on one node, without a cluster: the plugin (the Go program `make install` builds, run
as a container runtime runs it) and the node agent (`cninode`, serving its socket in this
process). What the plugin answers alone (the specification's codes, pods it passes), a capture
installed through the agent in a real namespace, the agent away (try again later), and the
agent's install into a node's CNI directories. The agent's pods come from a function here; on
the cluster the API server gives them (tests/kubernetes/test_cni_mode.py)."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from intercept_proxy import netns
from intercept_proxy.injector.pod import cni_capture, inject_pod
from intercept_proxy.injector.settings import InjectorSettings
from intercept_proxy.netfilter.apply import verify
from intercept_proxy.netfilter.builder import render
from intercept_proxy.netfilter.cninode import (
    InstallError,
    Node,
    Server,
    chained,
    installed_plugin,
    supported_versions,
)
from intercept_proxy.netfilter.plugin import (
    PLUGIN,
    PluginError,
    answer,
    capture_config,
    cni_args,
    plugin_config,
)

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "p", "namespace": "n", "labels": {"intercept-proxy/enabled": "true"}},
    "spec": {
        "securityContext": {"runAsUser": 12345},
        "containers": [{"name": "app", "image": "busybox", "command": ["true"]}],
    },
}
CNI = InjectorSettings(capture_mode="cni", inbound_ports=(8080,))
INJECTED = {**inject_pod(POD, CNI), "metadata": {**POD["metadata"], "uid": "u-1"}}
ARGS = "IgnoreUnknown=1;K8S_POD_NAMESPACE=n;K8S_POD_NAME=p;K8S_POD_UID=u-1"
# An abstract socket no one listens on.
ABSENT = f"@intercept-proxy-cni-absent-{uuid.uuid4().hex}"
VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
PREVIOUS = {"cniVersion": "1.0.0", "ips": [{"address": "10.244.0.2/24"}]}


def invoke(command: str, config: object, as_user: int = 0, **env: str) -> tuple[int, dict | None]:
    """The installed plugin, run as a runtime runs it (as root): its exit status and printed
    JSON."""
    user = ["setpriv", f"--reuid={as_user}", f"--regid={as_user}", "--clear-groups"]
    result = subprocess.run(
        [*(user if as_user else []), str(installed_plugin())],
        input=config if isinstance(config, str) else json.dumps(config),
        env={"CNI_COMMAND": command, "CNI_IFNAME": "eth0", "CNI_CONTAINERID": "c1", **env},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.stderr == ""
    return result.returncode, json.loads(result.stdout) if result.stdout else None


def network(socket: str, exclude: tuple[str, ...] = ()) -> dict:
    return {
        "cniVersion": "1.0.0",
        "name": "pods",
        **plugin_config(socket, exclude),
        "prevResult": PREVIOUS,
    }


def test_the_plugin_answers_version_and_errors_as_the_specification_says():
    assert invoke("VERSION", {}) == (
        0,
        {"cniVersion": "1.1.0", "supportedVersions": VERSIONS},
    )
    cases = [
        ("{", 6, "its configuration is not a JSON object"),
        ({"cniVersion": "0.2.0", "prevResult": {}}, 1, '"0.2.0" is not one of 0.3.0, 0.3.1'),
        ({"cniVersion": "1.0.0", "name": "pods"}, 7, "needs the attaching plugin's prevResult"),
        ({"cniVersion": "1.0.0", "prevResult": {}}, 7, "names no node agent socket"),
    ]
    for config, code, message in cases:
        status, error = invoke("ADD", config, CNI_ARGS=ARGS, CNI_NETNS="/proc/self/ns/net")
        assert status == 1 and error is not None, config
        assert error["code"] == code and message in error["msg"], error
        assert error["msg"].startswith(f"{PLUGIN}: ")
    # An error of a list of a version the plugin speaks is in that version.
    older = {"cniVersion": "0.4.0", "prevResult": {}}
    status, error = invoke("ADD", older, CNI_ARGS=ARGS, CNI_NETNS="/proc/self/ns/net")
    assert (status, error["cniVersion"], error["code"]) == (1, "0.4.0", 7)
    status, error = invoke("FROB", network(ABSENT), CNI_ARGS=ARGS)
    assert (status, error["code"]) == (1, 4) and '"FROB" is not known' in error["msg"]
    status, error = invoke("ADD", network(ABSENT), CNI_ARGS=ARGS, CNI_NETNS="x")
    assert (status, error["code"]) == (1, 4) and 'CNI_NETNS "x" is not a path' in error["msg"]


def test_what_needs_no_pod_is_answered_without_the_agent():
    """No agent listens on the socket: DEL and pods the plugin passes still work."""
    config = network(ABSENT, exclude=("kube-system",))
    # DEL (and GC, STATUS) change nothing, whatever the configuration: the rules go with the
    # pod's namespace.
    for command in ("DEL", "GC", "STATUS"):
        assert invoke(command, config, CNI_ARGS=ARGS) == (0, None)
        assert invoke(command, "{", CNI_ARGS=ARGS) == (0, None)
    # No Kubernetes pod, or one of an excluded namespace: the previous plugin's result.
    for args in (
        "",
        "IgnoreUnknown=1",
        "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=d",
    ):
        assert invoke("ADD", config, CNI_ARGS=args, CNI_NETNS="/proc/self/ns/net") == (0, PREVIOUS)
        assert invoke("CHECK", config, CNI_ARGS=args, CNI_NETNS="/proc/self/ns/net") == (0, None)
    # In the list's version.
    for version in VERSIONS:
        older = {**config, "cniVersion": version}
        result = invoke("ADD", older, CNI_NETNS="/proc/self/ns/net")
        assert result == (0, {**PREVIOUS, "cniVersion": version})
    # Half a Kubernetes pod's arguments: for the agent to refuse, never passed.
    halves = ("K8S_POD_NAMESPACE=n", "K8S_POD_NAME=p")
    for args in halves:
        status, error = invoke("ADD", config, CNI_ARGS=args, CNI_NETNS="/proc/self/ns/net")
        assert (status, error["code"]) == (1, 11), error


def test_a_pod_whose_agent_is_away_waits(fresh_netns):
    """Fail closed: the ADD of any other pod fails, try again later, and nothing is installed."""
    status, error = invoke(
        "ADD",
        network(ABSENT),
        CNI_ARGS=ARGS,
        CNI_NETNS=str(netns.NETNS_RUN_DIR / fresh_netns),
    )
    assert status == 1 and error["code"] == 11
    assert "the node agent does not answer at" in error["msg"] and "try again later" in error["msg"]
    assert verify(render(CNI.capture_config()), fresh_netns)  # differences: none installed


@pytest.fixture
def agent():
    """A node agent on a socket of its own, its pods read from `pods`."""
    pods = {
        ("n", "p"): INJECTED,
        ("n", "plain"): {**POD, "metadata": {**POD["metadata"], "name": "plain"}},
    }

    def read(namespace: str, name: str) -> dict:
        if (namespace, name) not in pods:
            raise PluginError(11, f"cannot read pod {namespace}/{name}", "404")
        return pods[(namespace, name)]

    server = Server(f"@intercept-proxy-cni-test-{uuid.uuid4().hex[:8]}", read)
    server.serve()
    try:
        yield server
    finally:
        server.close()


def test_the_agent_installs_a_pods_capture_in_the_namespace_it_was_handed(agent, fresh_netns):
    path = str(netns.NETNS_RUN_DIR / fresh_netns)
    rules = render(capture_config(cni_capture(INJECTED)))
    assert verify(rules, fresh_netns)  # not yet
    assert invoke("ADD", network(agent.name), CNI_ARGS=ARGS, CNI_NETNS=path) == (
        0,
        PREVIOUS,
    )
    assert verify(rules, fresh_netns) == []
    assert invoke("CHECK", network(agent.name), CNI_ARGS=ARGS, CNI_NETNS=path) == (0, None)
    # The rules changed under it: CHECK says how, and fails.
    netns.run(fresh_netns, ["iptables", "-t", "nat", "-F"])
    status, error = invoke("CHECK", network(agent.name), CNI_ARGS=ARGS, CNI_NETNS=path)
    assert status == 1 and error["code"] == 100 and "the rules in force differ" in error["msg"]
    assert "nat" in error["details"]


def test_only_root_calls_and_answers(agent, fresh_netns):
    """A caller holding a namespace could otherwise have it captured as any pod's; a listener
    that squats the agent's name while it is away is not answered."""
    path = str(netns.NETNS_RUN_DIR / fresh_netns)
    status, error = invoke("ADD", network(agent.name), as_user=65534, CNI_ARGS=ARGS, CNI_NETNS=path)
    assert (status, error["code"]) == (1, 11) and "node agent" in error["msg"]
    assert verify(render(capture_config(cni_capture(INJECTED))), fresh_netns)  # none installed
    squatter = f"@intercept-proxy-cni-squat-{uuid.uuid4().hex}"
    listen = (
        "import socket, sys; s = socket.socket(socket.AF_UNIX); "
        f"s.bind('\\0{squatter[1:]}'); s.listen(); print('ready', flush=True); sys.stdin.read()"
    )
    user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    with subprocess.Popen(
        [*user, "/usr/bin/python3", "-c", listen],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as held:
        try:
            assert held.stdout is not None and held.stdout.readline() == "ready\n"
            status, error = invoke("ADD", network(squatter), CNI_ARGS=ARGS, CNI_NETNS=path)
            assert (status, error["code"]) == (1, 11)
            assert error["msg"].endswith(f"{squatter} is not the node agent's (held by UID 65534)")
            # Nor does the name keep an agent out: each serves the name and a suffix of its own.
            later = Server(squatter, agent.read_pod)
            later.serve()
            try:
                assert invoke("ADD", network(later.name), CNI_ARGS=ARGS, CNI_NETNS=path)[0] == 0
            finally:
                later.close()
        finally:
            held.communicate("")


def test_the_agent_leaves_other_pods_alone_and_names_what_it_cannot_do(agent, fresh_netns):
    path = str(netns.NETNS_RUN_DIR / fresh_netns)
    plain = ARGS.replace("K8S_POD_NAME=p", "K8S_POD_NAME=plain").replace(";K8S_POD_UID=u-1", "")
    assert invoke("ADD", network(agent.name), CNI_ARGS=plain, CNI_NETNS=path) == (0, PREVIOUS)
    assert netns.run(fresh_netns, ["iptables-save", "-t", "nat"]).stdout.count("-A ") == 0
    status, error = invoke(
        "ADD", network(agent.name), CNI_ARGS=ARGS.replace("u-1", "u-2"), CNI_NETNS=path
    )
    assert (status, error["code"]) == (1, 11) and "another pod of that name" in error["msg"]
    status, error = invoke(
        "ADD", network(agent.name), CNI_ARGS=ARGS.replace("=p;", "=gone;"), CNI_NETNS=path
    )
    assert (status, error["code"]) == (1, 11) and error["msg"] == "cannot read pod n/gone"


def test_the_agents_handler_names_what_is_wrong():
    config = json.dumps(network(ABSENT))
    env = {"CNI_COMMAND": "ADD", "CNI_ARGS": "K8S_POD_NAME"}
    status, output = answer(config, env, "/proc/self/ns/net", lambda ns, n: INJECTED)
    assert status == 1 and json.loads(output) == {
        "cniVersion": "1.0.0",
        "code": 4,
        "msg": "CNI_ARGS: 'K8S_POD_NAME' is not KEY=VALUE",
    }
    env = {"CNI_COMMAND": "ADD", "CNI_ARGS": "K8S_POD_NAME=p"}
    status, output = answer(config, env, "/proc/self/ns/net", lambda ns, n: INJECTED)
    assert "K8S_POD_NAMESPACE and K8S_POD_NAME are needed" in json.loads(output)["msg"]

    def broken(namespace: str, name: str) -> dict:
        raise RuntimeError("boom")

    status, output = answer(config, {**env, "CNI_ARGS": ARGS}, "/x", broken)
    assert status == 1 and json.loads(output)["code"] == 999 and "boom" in output
    assert cni_args("IgnoreUnknown=1;K8S_POD_NAME=a=b;") == {
        "IgnoreUnknown": "1",
        "K8S_POD_NAME": "a=b",
    }


def test_only_pods_injected_in_cni_mode_ask_for_a_capture():
    arguments = cni_capture(INJECTED)
    assert arguments is not None
    assert capture_config(arguments) == CNI.capture_config()
    # Init mode: proxy-init captures itself; a pod not injected: nothing of ours.
    assert cni_capture(inject_pod(POD, InjectorSettings())) is None
    assert cni_capture(POD) is None
    # Decided by proxy-init alone: an annotation taken off before scheduling changes nothing.
    stripped = {**INJECTED, "metadata": {**INJECTED["metadata"], "annotations": {}}}
    assert cni_capture(stripped) == arguments


def test_check_arguments_that_do_not_parse_are_named():
    with pytest.raises(PluginError, match="the pod's capture check: unrecognized arguments"):
        capture_config(["--frob"])
    with pytest.raises(PluginError, match="the pod's capture check: --envoy-uid: "):
        capture_config(["--envoy-uid", "0"])


BRIDGE = {"cniVersion": "1.0.0", "name": "pods", "plugins": [{"type": "bridge"}]}


def test_the_entry_goes_last_once():
    entry = plugin_config("@s", ("kube-system",))
    ours = chained(BRIDGE, entry, VERSIONS)
    assert ours["plugins"] == [{"type": "bridge"}, entry]
    # Again, or after the node's CNI appended a plugin of its own: still one, still last.
    grown = {**ours, "plugins": [*ours["plugins"], {"type": "portmap"}]}
    assert chained(grown, entry, VERSIONS)["plugins"] == [
        {"type": "bridge"},
        {"type": "portmap"},
        entry,
    ]
    with pytest.raises(InstallError, match="a single plugin's configuration"):
        chained({"cniVersion": "1.0.0", "type": "bridge"}, entry, VERSIONS)
    with pytest.raises(InstallError, match=r"CNI version '0\.2\.0': the plugin supports 0\.3\.0, "):
        chained({**BRIDGE, "cniVersion": "0.2.0"}, entry, VERSIONS)


def test_the_agent_installs_on_the_node_keeps_it_there_and_removes_it(tmp_path):
    node = Node(tmp_path / "bin", tmp_path / "net.d")
    node.bin_dir.mkdir()
    node.conf_dir.mkdir()
    entry = plugin_config("@s")
    versions = supported_versions(installed_plugin())

    def install() -> bool:
        return node.install(installed_plugin(), entry, versions)

    with pytest.raises(InstallError, match="has no network configuration: the node's own CNI"):
        install()
    # The runtime's network is the first of *.conf, *.conflist, *.json by name.
    first, second = node.conf_dir / "10-pods.conflist", node.conf_dir / "20-other.conflist"
    first.write_text(json.dumps(BRIDGE))
    first.chmod(0o600)
    second.write_text(json.dumps(BRIDGE))
    single = node.conf_dir / "05-single.conf"
    single.write_text(json.dumps({"cniVersion": "1.0.0", "name": "x", "type": "bridge"}))
    with pytest.raises(InstallError, match=r"05-single\.conf: no `plugins` list"):
        install()
    single.unlink()
    assert install() is True
    assert install() is False  # nothing to change
    assert json.loads(first.read_text())["plugins"][-1] == entry
    assert first.stat().st_mode & 0o777 == 0o600  # the node's mode kept
    assert json.loads(second.read_text()) == BRIDGE  # the runtime reads the first only
    installed = node.bin_dir / PLUGIN
    assert installed.read_bytes() == installed_plugin().read_bytes()
    assert installed.stat().st_mode & 0o777 == 0o755
    # The node's CNI rewrote its list: the next look puts the entry back.
    first.write_text(json.dumps(BRIDGE))
    assert install() is True
    assert json.loads(first.read_text())["plugins"][-1] == entry
    assert sorted(p.name for p in node.conf_dir.iterdir()) == [first.name, second.name]
    node.uninstall()
    assert json.loads(first.read_text()) == BRIDGE
    assert not installed.exists()
