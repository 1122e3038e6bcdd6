"""Conversion of resource dicts to protobuf, and the secrets built directly as protobuf.

Importing the generated modules registers their types, so `@type` URLs inside the dicts resolve.
"""

from __future__ import annotations

from typing import Any

# Registers every type the generated configuration names.
from envoy.config.bootstrap.v3 import bootstrap_pb2  # noqa: F401
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2  # noqa: F401
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2  # noqa: F401
from envoy.extensions.access_loggers.stats.v3 import stats_pb2  # noqa: F401
from envoy.extensions.access_loggers.stream.v3 import stream_pb2  # noqa: F401
from envoy.extensions.clusters.dynamic_forward_proxy.v3 import cluster_pb2 as dfp_cluster_pb2  # noqa: F401
from envoy.extensions.common.matching.v3 import extension_matcher_pb2  # noqa: F401
from envoy.extensions.filters.common.matcher.action.v3 import skip_action_pb2  # noqa: F401
from envoy.extensions.filters.http.aws_request_signing.v3 import (  # noqa: F401
    aws_request_signing_pb2,
)
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2  # noqa: F401
from envoy.extensions.filters.http.composite.v3 import composite_pb2  # noqa: F401
from envoy.extensions.filters.http.credential_injector.v3 import (  # noqa: F401
    credential_injector_pb2,
)
from envoy.extensions.filters.http.dynamic_forward_proxy.v3 import (  # noqa: F401
    dynamic_forward_proxy_pb2,
)
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2  # noqa: F401
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2  # noqa: F401
from envoy.extensions.filters.listener.proxy_protocol.v3 import proxy_protocol_pb2  # noqa: F401
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.extensions.filters.network.set_filter_state.v3 import set_filter_state_pb2  # noqa: F401
from envoy.extensions.formatter.req_without_query.v3 import req_without_query_pb2  # noqa: F401
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import (  # noqa: F401
    header_mutation_pb2,
)
from envoy.extensions.http.injected_credentials.generic.v3 import generic_pb2  # noqa: F401
from envoy.extensions.matching.common_inputs.network.v3 import network_inputs_pb2  # noqa: F401
from envoy.extensions.network.dns_resolver.cares.v3 import cares_dns_resolver_pb2  # noqa: F401
from envoy.extensions.resource_monitors.downstream_connections.v3 import (  # noqa: F401
    downstream_connections_pb2,
)
from envoy.extensions.transport_sockets.internal_upstream.v3 import (  # noqa: F401
    internal_upstream_pb2,
)
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from envoy.type.matcher.v3 import (
    address_pb2,
    http_inputs_pb2,  # noqa: F401
)
from google.protobuf import (
    any_pb2,
    descriptor_pool,
    json_format,
    message_factory,
    wrappers_pb2,  # noqa: F401
)
from google.protobuf.message import Message
from xds.type.matcher.v3 import cel_pb2 as cel_matcher_pb2  # noqa: F401
from xds.type.matcher.v3 import http_inputs_pb2 as xds_http_inputs_pb2  # noqa: F401
from xds.type.v3 import typed_struct_pb2  # noqa: F401

from intercept_proxy.xds.types import CLUSTER, LISTENER, ROUTE

_MESSAGES: dict[str, type[Message]] = {
    CLUSTER: cluster_pb2.Cluster,
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
}

# Fields of Envoy 1.40 that the Python API package (xds-protos) lacks, by name: their number
# and type. They are kept out of what json_format parses and added to the message as the
# unknown fields they are to Python, which serializes them as they are.
LACKING: dict[str, tuple[int, type[Message]]] = {
    "resolved_address_filter": (16, address_pb2.AddressMatcher),  # DnsCacheConfig
}
Path = tuple[str | int, ...]


def to_message(type_url: str, resource: dict[str, Any]) -> Message:
    """Parse a resource dict; unknown fields are an error, never silently dropped."""
    lacking: list[tuple[Path, bytes]] = []
    message = json_format.ParseDict(_without_lacking(resource, (), lacking), _MESSAGES[type_url]())
    for path, raw in lacking:
        _merge(message, path, raw)
    return message


def _without_lacking(node: Any, path: Path, found: list[tuple[Path, bytes]]) -> Any:
    """`node` without the LACKING fields, each found as (the path of its message, its bytes)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in LACKING:
                number, cls = LACKING[key]
                raw = json_format.ParseDict(value, cls()).SerializeToString()
                found.append((path, encoded_field(number, raw)))
            else:
                out[key] = _without_lacking(value, (*path, key), found)
        return out
    if isinstance(node, list):
        return [_without_lacking(v, (*path, i), found) for i, v in enumerate(node)]
    return node


def encoded_field(number: int, raw: bytes) -> bytes:
    """Field `number` holding the serialized message `raw`, in protobuf's wire format."""
    return _varint(number << 3 | 2) + _varint(len(raw)) + raw


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out) + bytes([n])


def _merge(message: Any, path: Path, raw: bytes) -> None:
    """Add the encoded field `raw` to the message at `path`, through the Any messages on it."""
    if isinstance(message, any_pb2.Any):
        descriptor = descriptor_pool.Default().FindMessageTypeByName(message.TypeName())
        inner = message_factory.GetMessageClass(descriptor)()
        message.Unpack(inner)
        _merge(inner, path, raw)
        message.Pack(inner)
    elif not path:
        message.MergeFromString(raw)
    else:
        key, *rest = path
        # A field by name; an item of a repeated field or of a map by its index or key.
        child = getattr(message, str(key)) if isinstance(message, Message) else message[key]
        _merge(child, tuple(rest), raw)


def pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def leaf_secret(name: str, cert_pem: bytes, key_pem: bytes) -> secret_pb2.Secret:
    secret = secret_pb2.Secret(name=name)
    secret.tls_certificate.certificate_chain.inline_bytes = cert_pem
    secret.tls_certificate.private_key.inline_bytes = key_pem
    return secret


def generic_secret(name: str, value: str) -> secret_pb2.Secret:
    secret = secret_pb2.Secret(name=name)
    secret.generic_secret.secret.inline_string = value
    return secret
