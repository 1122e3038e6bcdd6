"""The node's pod network, made as a node's container runtime makes it: a network namespace of
the node's own (`PREFIXn`, the node's "host" side) holding the bridge, and each pod attached to
it by the CNI chain of `runtime.cni` (Debian's bridge and host-local plugins, then
intercept-proxy's, which captures the pods injected in CNI mode). Pods reach one another by pod
IP (IPv4 and IPv6); what leaves the pods' subnets is masqueraded to the node's own uplink: the
lab's, or this machine's network (NAT).

The node's own filesystem is a directory (`network/host`, its `/` for the pods it trusts as node
agents: their hostPath volumes are found there). Its CNI configuration is in `etc/cni/net.d`
there, where the node writes the bridge's list; CNI mode's node agent (the chart's DaemonSet,
whose pod shares the node's network) adds its plugin to it and installs the plugin into
`opt/cni/bin`, as on a node of a cluster. Until it has, pods are attached by the bridge alone
(and a pod injected in CNI mode fails its own check).

The API server listens on this machine's loopback only; the node's namespace reaches it at its
own loopback, port `API_PORT` (the serving certificate names 127.0.0.1), through a relay whose
listening socket is that namespace's: pods on the node's network (the CNI node agent) reach it
there, as the kubelet tells them (KUBERNETES_SERVICE_HOST), and kube-proxy and CoreDNS too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from intercept_proxy import netns
from intercept_proxy.cluster import dns
from intercept_proxy.cluster.kubeconfig import kubeconfig, write_kubeconfig
from intercept_proxy.cluster.layout import Config
from intercept_proxy.cluster.pki import ClusterPki
from intercept_proxy.cluster.processes import Child, child_env
from intercept_proxy.cluster.tools import Tools
from intercept_proxy.lab import Lab
from intercept_proxy.netfilter.plugin import PLUGIN
from intercept_proxy.runtime.cni import PLUGIN_DIR, Chain, CniUplink, bridge_network
from intercept_proxy.runtime.network import HostUplink, LabUplink, Uplink, release_host_uplink
from intercept_proxy.runtime.pod import HostAccess

log = logging.getLogger(__name__)

NETWORK_NAME = "pods"
BRIDGE = "cni0"
API_PORT = 6443
API_SERVICE_PORT = 443
NETWORK_LIST = "10-pods.conflist"
# The node's CNI directories, where a cluster's nodes have them (the chart's defaults).
CNI_BIN, CNI_CONF = "opt/cni/bin", "etc/cni/net.d"
CHUNK = 65536


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(CHUNK):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)


@dataclass
class ApiRelay:
    """Connections accepted on `listener` (a socket of another namespace), each relayed to
    this machine's loopback at `port`."""

    listener: socket.socket
    port: int

    def start(self) -> None:
        self.listener.listen(64)
        threading.Thread(target=self._accept, name="api-relay", daemon=True).start()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # stopped
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        with client:
            try:
                upstream = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            except OSError as e:
                log.warning("API relay: cannot reach the API server: %s", e)
                return
            with upstream:
                upstream.settimeout(None)
                back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
                back.start()
                _pipe(client, upstream)
                back.join()


def pod_arguments(pod: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """CNI_ARGS of a pod, as the kubelet's runtime passes them (pure)."""
    meta = pod["metadata"]
    return (
        ("K8S_POD_NAMESPACE", str(meta["namespace"])),
        ("K8S_POD_NAME", str(meta["name"])),
        ("K8S_POD_UID", str(meta.get("uid", ""))),
    )


@dataclass
class NodeNetwork:
    """The node's network namespace and what runs there: the CNI chain's bridge, the API relay,
    kube-proxy (Services), CoreDNS (the cluster's DNS). Its files are in the state dir's
    `network/`, made again at each start."""

    config: Config
    lab: Lab | None
    pki: ClusterPki
    tools: Tools
    chain: Chain = field(init=False)
    _uplink: Uplink = field(init=False)
    _relays: list[ApiRelay] = field(default_factory=list)  # for the node's network, its pods
    _children: list[Child] = field(default_factory=list)

    def __post_init__(self) -> None:
        name = self.config.node_netns
        self._uplink = LabUplink(self.lab) if self.lab is not None else HostUplink(name)
        self.chain = Chain(
            self.root / CNI_CONF,
            host_netns=name,
            cache_dir=self._dir / "results",
            plugin_path=(PLUGIN_DIR,),
            # Nothing else of the node's directory: a node agent writes it.
            extra_plugins={PLUGIN: self.root / CNI_BIN / PLUGIN},
        )

    @property
    def _dir(self) -> Path:
        return self.config.path("network")

    @property
    def root(self) -> Path:
        """The node's own filesystem."""
        return self._dir / "host"

    def pod_env(self) -> dict[str, str]:
        """What the kubelet tells every container: where the API server is (the `kubernetes`
        Service, which kube-proxy sends to the node's relay)."""
        return api_env(self.config.api_service_ip, API_SERVICE_PORT)

    def host_access(self) -> HostAccess:
        """What the node gives a pod it trusts as a node agent (the relay on its loopback)."""
        return HostAccess(self.config.node_netns, self.root, api_env("127.0.0.1", API_PORT))

    def _relay(self, address: str) -> None:
        """A relay to the API server listening at `address`, port API_PORT, in the node's
        namespace (started with the others)."""
        listener = netns.socket_in(self.config.node_netns, socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind((address, API_PORT))
        except OSError:
            listener.close()
            raise
        self._relays.append(ApiRelay(listener, self.config.ports.apiserver))

    def _kubeconfig(self, user: str, path: Path) -> Path:
        """A kubeconfig of `user`'s PKI files for what runs in the node's namespace: the API
        server through the relay."""
        server = f"https://127.0.0.1:{API_PORT}"
        cert, key = self.pki.cert(user), self.pki.key(user)
        write_kubeconfig(path, kubeconfig(server, self.pki.ca, user, cert=cert, key=key))
        return path

    def start(self) -> None:
        """A fresh node network. An earlier agent's (its pods are all started again from
        scratch) goes first, with every allocation and rule in it."""
        self.stop()
        network = bridge_network(NETWORK_NAME, BRIDGE, self.config.pod_subnets, self._dir / "ipam")
        self.chain.conf_dir.mkdir(parents=True)
        (self.chain.conf_dir / NETWORK_LIST).write_text(json.dumps(network, indent=2))
        (self.root / CNI_BIN).mkdir(parents=True)
        netns.create(self.config.node_netns)
        self._uplink.attach(self.config.node_netns)
        self._relay("127.0.0.1")
        # The node's own address for the Services it serves (CoreDNS, the API server's relay,
        # the `kubernetes` Service's endpoint): pods route to it.
        address = f"{self.config.node_service_address}/32"
        netns.ip("-n", self.config.node_netns, "address", "add", address, "dev", "lo")
        self._relay(self.config.node_service_address)
        for relay in self._relays:
            relay.start()
        corefile = self._dir / "Corefile"
        dns_kubeconfig = self._kubeconfig("coredns", self._dir / "coredns.kubeconfig")
        corefile.write_text(dns.corefile(self.config, dns_kubeconfig, self._uplink.nameservers))
        proxy_kubeconfig = self._kubeconfig("kube-proxy", self._dir / "kube-proxy.kubeconfig")
        programs = {
            "kube-proxy": kube_proxy_argv(
                self.tools.binary("kube-proxy"), proxy_kubeconfig, self.config
            ),
            "coredns": [str(self.tools.binary("coredns")), "-conf", str(corefile)],
        }
        for name, argv in programs.items():
            child = Child(
                name,
                netns.exec_argv(self.config.node_netns, argv),
                self.config.path("logs", f"{name}.log"),
                self._dir,
                env=child_env(),
            )
            child.start()
            self._children.append(child)

    def check(self) -> None:
        """kube-proxy and CoreDNS started again if they exited (the supervisor's back-off)."""
        for child in self._children:
            child.check(stopping=False)

    def stop(self) -> None:
        for child in self._children:
            child.stop()
        self._children.clear()
        for relay in self._relays:
            relay.stop()
        self._relays.clear()
        release_host_uplink(self.config.node_netns)
        if netns.exists(self.config.node_netns):
            netns.delete(self.config.node_netns)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self._dir)

    def uplink(self, pod: dict[str, Any]) -> CniUplink:
        """A pod's: the CNI chain, and the cluster's DNS (its namespace's search domains)."""
        return CniUplink(
            self.chain,
            pod_arguments(pod),
            (self.config.dns_service_ip,),
            self._uplink.extra_trust,
            dns.search(self.config, pod["metadata"]["namespace"]),
        )


def api_env(host: str, port: int) -> dict[str, str]:
    """The kubelet's variables naming the API server."""
    return {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": str(port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
    }


def api_endpoint(config: Config) -> dict[str, Any]:
    """The `kubernetes` Service's endpoint, which the API server writes none of here (its only
    address is loopback): the node's relay."""
    ports = [{"name": "https", "port": API_PORT, "protocol": "TCP"}]
    return dns.node_endpoint(config, "kubernetes", "default", ports)


def kube_proxy_argv(binary: Path, kubeconfig: Path, config: Config) -> list[str]:
    """kube-proxy for the node's namespace (pure): iptables mode, and nothing it would set
    beyond that namespace (conntrack's table size is the machine's)."""
    return [
        str(binary),
        f"--kubeconfig={kubeconfig}",
        f"--hostname-override={config.node_name}",
        "--proxy-mode=iptables",
        f"--cluster-cidr={','.join(config.pod_subnets)}",
        "--conntrack-max-per-core=0",
        "--conntrack-tcp-timeout-established=0",
        "--conntrack-tcp-timeout-close-wait=0",
        "--healthz-bind-address=127.0.0.1:10256",
        "--metrics-bind-address=127.0.0.1:10249",
    ]
