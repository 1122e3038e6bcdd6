"""Envoy's bootstrap: only the node identity, the admin endpoint and the way to the agent.

Everything else (listeners, clusters, secrets) arrives over ADS from the agent, incremental
(delta) xDS: the agent can tell Envoy to drop a certificate (see `intercept_proxy.xds.server`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from intercept_proxy import ports
from intercept_proxy.xds.gateway import INTERNAL_LISTENER_EXTENSION
from intercept_proxy.xds.resources import XDS_CLUSTER, grpc_cluster

# The clusters Envoy has before any xDS: the one that brings it the rest.
STATIC_CLUSTERS = (XDS_CLUSTER,)


@dataclass(frozen=True)
class Bootstrap:
    node_id: str
    node_cluster: str = "intercept-proxy"
    admin_address: str = "127.0.0.1"
    admin_port: int = ports.ENVOY_ADMIN
    xds_address: str = "127.0.0.1"
    xds_port: int = ports.AGENT_XDS
    max_downstream_connections: int = 10000
    gateway: bool = False  # it serves the egress gateway (xds/gateway.py)


def bootstrap(b: Bootstrap) -> dict[str, Any]:
    ads = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {"id": b.node_id, "cluster": b.node_cluster},
        # Loopback only: the admin interface can change Envoy's state.
        "admin": {
            "address": {"socket_address": {"address": b.admin_address, "port_value": b.admin_port}}
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        # The egress gateway hands its requests to the listeners' internal copies.
        **({"bootstrap_extensions": [INTERNAL_LISTENER_EXTENSION]} if b.gateway else {}),
        "static_resources": {
            "clusters": [grpc_cluster(name, b.xds_address, b.xds_port) for name in STATIC_CLUSTERS]
        },
        # The policy's routes match repository names case-insensitively: RE2 programs beyond
        # Envoy's default size limit (100) for long names.
        "layered_runtime": {
            "layers": [
                {
                    "name": "regex-limits",
                    "static_layer": {
                        "re2.max_program_size.error_level": 2000,
                        "re2.max_program_size.warn_level": 1000,
                    },
                }
            ]
        },
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.resource_monitors."
                        "downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": b.max_downstream_connections,
                    },
                }
            ]
        },
    }
