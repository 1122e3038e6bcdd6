"""The node's pod network, made as a node's container runtime makes it: a network namespace of
the node's own (`PREFIXn`, the node's "host" side) holding the bridge, and each pod attached to
it by the CNI chain of `runtime.cni` (Debian's bridge and host-local plugins). Pods reach one
another by pod IP (IPv4 and IPv6); what leaves the pods' subnets is masqueraded to the node's
own uplink: the lab's, or this machine's network (NAT).
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, field
from typing import Any

from intercept_proxy import netns
from intercept_proxy.cluster.layout import Config
from intercept_proxy.lab import Lab
from intercept_proxy.runtime.cni import Chain, CniUplink, bridge_network
from intercept_proxy.runtime.network import HostUplink, LabUplink, Uplink, release_host_uplink

NETWORK_NAME = "pods"
BRIDGE = "cni0"


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
    _uplink: Uplink = field(init=False)

    def __post_init__(self) -> None:
        name = self.config.node_netns
        self._uplink = LabUplink(self.lab) if self.lab is not None else HostUplink(name)
        self.chain = Chain(
            bridge_network(
                NETWORK_NAME, BRIDGE, self.config.pod_subnets, self.config.path("cni", "ipam")
            ),
            host_netns=name,
            cache_dir=self.config.path("cni", "results"),
        )

    def start(self) -> None:
        """A fresh node network. An earlier agent's (its pods are all started again from
        scratch) goes first, with every allocation and masquerade rule in it."""
        self.stop()
        netns.create(self.config.node_netns)
        self._uplink.attach(self.config.node_netns)

    def stop(self) -> None:
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
