"""The node's pod network, made as a node's container runtime makes it: a network namespace of
the node's own (`PREFIXn`, the node's "host" side) holding the bridge, and each pod attached to
it by the CNI chain of `runtime.cni` (Debian's bridge and host-local plugins, then
intercept-proxy's, which captures the pods injected in CNI mode). Pods reach one another by pod
IP (IPv4 and IPv6); what leaves the pods' subnets is masqueraded to the node's own uplink: the
lab's, or this machine's network (NAT).

The API server listens on this machine's loopback only; the node's namespace reaches it at its
own loopback, port `API_PORT` (the serving certificate names 127.0.0.1), through a relay whose
listening socket is that namespace's: there the CNI plugin reads the pod it attaches, as on a
node's host.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from intercept_proxy import netns
from intercept_proxy.cluster.kubeconfig import kubeconfig, write_kubeconfig
from intercept_proxy.cluster.layout import Config
from intercept_proxy.cluster.pki import ClusterPki
from intercept_proxy.lab import Lab
from intercept_proxy.netfilter.plugin import PLUGIN, plugin_config
from intercept_proxy.runtime.cni import PLUGIN_DIR, Chain, CniUplink, bridge_network
from intercept_proxy.runtime.network import HostUplink, LabUplink, Uplink, release_host_uplink

log = logging.getLogger(__name__)

NETWORK_NAME = "pods"
BRIDGE = "cni0"
API_PORT = 6443
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
    config: Config
    lab: Lab | None
    pki: ClusterPki
    chain: Chain = field(init=False)
    _uplink: Uplink = field(init=False)
    _relay: ApiRelay | None = None

    def __post_init__(self) -> None:
        name = self.config.node_netns
        self._uplink = LabUplink(self.lab) if self.lab is not None else HostUplink(name)
        network = bridge_network(
            NETWORK_NAME, BRIDGE, self.config.pod_subnets, self.config.path("cni", "ipam")
        )
        network["plugins"].append(plugin_config(self._kubeconfig))
        # Our plugin is installed beside the interpreter running the node (the venv's bin).
        ours = Path(sys.executable).with_name(PLUGIN).parent
        self.chain = Chain(
            network,
            host_netns=name,
            cache_dir=self.config.path("cni", "results"),
            plugin_path=(PLUGIN_DIR, ours),
        )

    @property
    def _kubeconfig(self) -> Path:
        """The plugin's: the node's identity, the API server through the relay."""
        return self.config.path("cni", "kubeconfig")

    def start(self) -> None:
        """A fresh node network. An earlier agent's (its pods are all started again from
        scratch) goes first, with every allocation and masquerade rule in it."""
        self.stop()
        config = kubeconfig(
            f"https://127.0.0.1:{API_PORT}",
            self.pki.ca,
            self.config.node_name,
            cert=self.pki.cert("node"),
            key=self.pki.key("node"),
        )
        write_kubeconfig(self._kubeconfig, config)
        netns.create(self.config.node_netns)
        self._uplink.attach(self.config.node_netns)
        listener = netns.socket_in(self.config.node_netns, socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", API_PORT))
        self._relay = ApiRelay(listener, self.config.ports.apiserver)
        self._relay.start()

    def stop(self) -> None:
        if self._relay is not None:
            self._relay.stop()
            self._relay = None
        release_host_uplink(self.config.node_netns)
        if netns.exists(self.config.node_netns):
            netns.delete(self.config.node_netns)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.config.path("cni"))

    def uplink(self, pod: dict[str, Any]) -> CniUplink:
        return CniUplink(
            self.chain,
            pod_arguments(pod),
            self._uplink.nameservers,
            self._uplink.extra_trust,
        )
