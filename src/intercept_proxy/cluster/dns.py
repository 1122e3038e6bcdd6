"""The cluster's DNS, as pure functions: CoreDNS on the node (in the node's network namespace, at
`Config.node_service_address`), the `kube-dns` Service that pods name in their resolv.conf
(its ClusterIP, `Config.dns_service_ip`, which kube-proxy sends to that address), and what
CoreDNS may read of the API (as kubeadm grants it).

CoreDNS answers for the cluster's domain from the API server (its kubernetes plugin: Services,
and pods by address) and forwards every other name to the node's own resolvers (the lab's).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from intercept_proxy.cluster.layout import Config

COREDNS_USER = "system:coredns"
SERVICE = "kube-dns"
NAMESPACE = "kube-system"
PORT = 53


def corefile(config: Config, kubeconfig: Path, upstreams: Sequence[str]) -> str:
    """CoreDNS's configuration."""
    bind = f"    bind {config.node_service_address}\n"
    return (
        f"{config.cluster_domain}:{PORT} {{\n{bind}    errors\n"
        f"    kubernetes {config.cluster_domain} {{\n"
        f"        kubeconfig {kubeconfig}\n"
        "        pods verified\n"
        "    }\n}\n"
        f".:{PORT} {{\n{bind}    errors\n    cache 10\n"
        f"    forward . {' '.join(upstreams)}\n}}\n"
    )


def search(config: Config, namespace: str) -> tuple[str, ...]:
    """A pod's search domains, as the kubelet writes them."""
    domain = config.cluster_domain
    return (f"{namespace}.svc.{domain}", f"svc.{domain}", domain)


def objects(config: Config) -> list[dict[str, Any]]:
    """What the cluster needs for its DNS: CoreDNS's right to read Services, EndpointSlices,
    pods and namespaces; the kube-dns Service; and its one endpoint, the node's address (a
    Service without a selector: its EndpointSlice is ours)."""
    role = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": COREDNS_USER}
    ports = [
        {"name": "dns", "port": PORT, "protocol": "UDP"},
        {"name": "dns-tcp", "port": PORT, "protocol": "TCP"},
    ]
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": COREDNS_USER},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": COREDNS_USER},
            "roleRef": role,
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": COREDNS_USER}
            ],
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": SERVICE, "namespace": NAMESPACE},
            "spec": {"clusterIP": config.dns_service_ip, "ports": ports},
        },
        node_endpoint(config, SERVICE, NAMESPACE, ports),
    ]


def node_endpoint(
    config: Config, service: str, namespace: str, ports: list[dict[str, Any]]
) -> dict[str, Any]:
    """The one endpoint of a Service the node serves itself, at its own address (a Service
    without a selector: its EndpointSlice is ours)."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": service,
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "intercept-cluster",
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [config.node_service_address], "conditions": {"ready": True}}],
        "ports": ports,
    }
