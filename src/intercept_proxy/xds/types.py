"""The xDS type URLs the agent serves. No dependencies: the server, the wire helpers and the tests
name resource kinds without loading the policy compiler."""

from __future__ import annotations

PREFIX = "type.googleapis.com/"


def type_url(message: str) -> str:
    """The type URL of a protobuf message's full name (also an `@type` in Envoy's JSON)."""
    return PREFIX + message


CLUSTER = type_url("envoy.config.cluster.v3.Cluster")
LISTENER = type_url("envoy.config.listener.v3.Listener")
ROUTE = type_url("envoy.config.route.v3.RouteConfiguration")
SECRET = type_url("envoy.extensions.transport_sockets.tls.v3.Secret")
