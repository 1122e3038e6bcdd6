"""The CNI chain the cluster's node attaches its pods with, run on Debian's real plugins (bridge,
host-local, tuning) as a container runtime runs them: pods get one address per family and reach
each other; DEL gives every address and masquerade rule back; a failing plugin is named, and what
the plugins before it made is undone."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import subprocess
from pathlib import Path

import pytest

from intercept_proxy import netns
from intercept_proxy.runtime.cni import (
    Attachment,
    Chain,
    CniError,
    CniUplink,
    bridge_network,
    plugin_environment,
    plugin_input,
)

pytestmark = pytest.mark.netns

SUBNETS = ("10.250.0.0/24", "fc00:10:250::/64")


def test_the_bridge_network_gives_each_family_a_range_and_a_default_route():
    network = bridge_network("pods", "cni0", SUBNETS, Path("/state/ipam"))
    (bridge,) = network["plugins"]
    assert (network["cniVersion"], network["name"]) == ("1.0.0", "pods")
    assert bridge["type"] == "bridge" and bridge["isDefaultGateway"] and bridge["ipMasq"]
    assert bridge["ipam"] == {
        "type": "host-local",
        "dataDir": "/state/ipam",
        "ranges": [[{"subnet": "10.250.0.0/24"}], [{"subnet": "fc00:10:250::/64"}]],
    }


def test_an_invocation_is_what_the_specification_names():
    attachment = Attachment("c1", Path("/run/netns/p1"), args=(("K8S_POD_NAME", "web"),))
    assert plugin_environment("ADD", attachment, (Path("/usr/lib/cni"), Path("/opt/b"))) == {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "c1",
        "CNI_NETNS": "/run/netns/p1",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/usr/lib/cni:/opt/b",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web",
    }
    network = {"cniVersion": "1.0.0", "name": "pods", "plugins": []}
    assert plugin_input(network, {"type": "tuning"}, {"ips": []}) == {
        "type": "tuning",
        "cniVersion": "1.0.0",
        "name": "pods",
        "prevResult": {"ips": []},
    }
    assert "prevResult" not in plugin_input(network, {"type": "bridge"}, None)


@pytest.fixture
def node(netns_prefix, tmp_path):
    """A node's namespace and two pods' namespaces, removed whatever happens."""
    names = [f"{netns_prefix}c{n}" for n in ("n", "a", "b")]
    for name in names:
        netns.create(name)
    try:
        yield names
    finally:
        for name in names:
            if netns.exists(name):
                netns.delete(name)


def chain(node_netns: str, tmp_path: Path, *extra: dict) -> Chain:
    """A chain of the node's configuration directory, holding the bridge's list (and `extra`)."""
    network = bridge_network("pods", "cni0", SUBNETS, tmp_path / "ipam")
    network["plugins"] += list(extra)
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir(exist_ok=True)
    (conf_dir / "10-pods.conflist").write_text(json.dumps(network))
    return Chain(conf_dir, node_netns, tmp_path / "results")


def masquerade_rules(node_netns: str) -> list[str]:
    rules = []
    for tool in ("iptables-save", "ip6tables-save"):
        out = netns.run(node_netns, [tool]).stdout
        rules += [line for line in out.splitlines() if line.startswith("-A") and "CNI-" in line]
    return rules


def allocations(tmp_path: Path) -> set[str]:
    """The addresses host-local holds (one file each, beside its bookkeeping)."""
    held = set()
    for entry in (tmp_path / "ipam" / "pods").iterdir():
        with contextlib.suppress(ValueError):
            held.add(str(ipaddress.ip_address(entry.name)))
    return held


def test_pods_attached_by_the_real_plugins_reach_each_other_and_detach_leaves_nothing(
    node, tmp_path
):
    node_ns, pod_a, pod_b = node
    pods = chain(node_ns, tmp_path)
    uplinks = {
        name: CniUplink(pods, (("K8S_POD_NAME", name),), ("198.18.0.53",), None)
        for name in (pod_a, pod_b)
    }
    for name, uplink in uplinks.items():
        uplink.attach(name)
    result = json.loads((tmp_path / "results" / f"{pod_b}-eth0.json").read_text())["result"]
    assert [ip["address"] for ip in result["ips"]] == ["10.250.0.3/24", "fc00:10:250::3/64"]
    assert allocations(tmp_path) == {"10.250.0.2", "10.250.0.3", "fc00:10:250::2", "fc00:10:250::3"}
    assert masquerade_rules(node_ns), "ipMasq: what leaves the pods' subnets is masqueraded"
    server = subprocess.Popen(
        netns.exec_argv(pod_a, ["/usr/bin/python3", "-m", "http.server", "--bind", "::", "8080"]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for url in ("http://10.250.0.2:8080/", "http://[fc00:10:250::2]:8080/"):
            fetched = netns.run(
                pod_b,
                ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--retry", "20",
                 "--retry-connrefused", "--retry-delay", "0", "--max-time", "10", url],
            )  # fmt: skip
            assert fetched.stdout == "200", (url, fetched.stderr)
    finally:
        server.kill()
        server.wait()
    for uplink in uplinks.values():
        uplink.detach()
    assert allocations(tmp_path) == set()
    assert masquerade_rules(node_ns) == []
    assert list((tmp_path / "results").iterdir()) == []
    assert [link for link in netns.links(pod_a) if link != "lo"] == []


def test_a_failing_plugin_is_named_and_the_plugins_before_it_are_undone(node, tmp_path):
    node_ns, pod_a, _ = node
    # tuning refuses a MAC address that is none: the bridge before it has attached the pod.
    tuning = {"type": "tuning", "mac": "not-a-mac", "dataDir": str(tmp_path / "tuning")}
    pods = chain(node_ns, tmp_path, tuning)
    with pytest.raises(CniError) as refused:
        pods.add(Attachment(pod_a, netns.NETNS_RUN_DIR / pod_a))
    assert str(refused.value).startswith(f"CNI ADD of {pod_a}: plugin tuning: code ")
    assert "not-a-mac" in str(refused.value)
    assert allocations(tmp_path) == set()
    assert masquerade_rules(node_ns) == []
    assert [link for link in netns.links(pod_a) if link != "lo"] == []


def test_a_namespace_that_is_not_there_and_a_missing_plugin_are_clear_errors(node, tmp_path):
    node_ns, _, _ = node
    pods = chain(node_ns, tmp_path)
    with pytest.raises(CniError) as refused:
        pods.add(Attachment("ghost", netns.NETNS_RUN_DIR / "no-such-pod"))
    assert "CNI ADD of ghost: plugin bridge: code " in str(refused.value)
    assert "no-such-pod" in str(refused.value)
    elsewhere = Chain(pods.conf_dir, node_ns, tmp_path / "results", plugin_path=(tmp_path,))
    with pytest.raises(CniError, match=rf"CNI plugin bridge is not in {tmp_path} .*make install"):
        elsewhere.add(Attachment("ghost", netns.NETNS_RUN_DIR / "no-such-pod"))


def test_the_list_is_the_directorys_first_and_a_del_uses_the_adds(node, tmp_path):
    """As containerd: the first configuration by name at each ADD; the DEL runs the plugins
    the ADD ran, whatever the directory holds by then (CNI mode's node agent edits it)."""
    node_ns, pod_a, _ = node
    empty = Chain(tmp_path / "none", node_ns, tmp_path / "results")
    (tmp_path / "none").mkdir()
    with pytest.raises(CniError, match="none has no configuration"):
        empty.add(Attachment(pod_a, netns.NETNS_RUN_DIR / pod_a))
    pods = chain(node_ns, tmp_path)
    (pods.conf_dir / "20-later.conflist").write_text("not read")
    attachment = Attachment(pod_a, netns.NETNS_RUN_DIR / pod_a)
    pods.add(attachment)
    listed = pods.conf_dir / "10-pods.conflist"
    network = json.loads(listed.read_text())
    # A plugin that is nowhere, added after the ADD: the DEL does not look for it.
    network["plugins"].append({"type": "no-such-plugin"})
    listed.write_text(json.dumps(network))
    pods.delete(attachment)
    assert allocations(tmp_path) == set()
    assert [link for link in netns.links(pod_a) if link != "lo"] == []


def test_plugins_come_from_the_systems_directory_and_the_named_extras_only(node, tmp_path):
    """A node agent writes the node's own plugin directory: only the plugin named for it is
    taken from there (a `bridge` planted beside it is not), and a type is never a path."""
    node_ns, pod_a, _ = node
    planted = tmp_path / "node-bin"
    planted.mkdir()
    for name in ("bridge", "mine"):
        script = planted / name
        script.write_text(
            "#!/usr/bin/python3\nimport json, pathlib, sys\n"
            f"pathlib.Path({str(tmp_path / f'{name}.ran')!r}).touch()\n"
            "print(json.dumps(json.load(sys.stdin).get('prevResult') or {}))\n"
        )
        script.chmod(0o755)
    pods = chain(node_ns, tmp_path, {"type": "mine"})
    pods.extra_plugins = {"mine": planted / "mine"}
    attachment = Attachment(pod_a, netns.NETNS_RUN_DIR / pod_a)
    pods.add(attachment)
    assert (tmp_path / "mine.ran").exists() and not (tmp_path / "bridge.ran").exists()
    pods.delete(attachment)
    for kind in ("../node-bin/mine", "/usr/bin/true", ".hidden"):
        bad = chain(node_ns, tmp_path, {"type": kind})
        with pytest.raises(CniError, match=f"type {kind!r} is no name"):
            bad.add(attachment)
    assert [link for link in netns.links(pod_a) if link != "lo"] == []
