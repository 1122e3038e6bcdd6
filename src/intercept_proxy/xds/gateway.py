"""The egress gateway: an explicit forward proxy (clients set `HTTPS_PROXY`, `HTTP_PROXY`).

Its listener only routes. A `CONNECT host:443` tunnel is terminated there and its bytes go,
over an Envoy internal connection, to a copy of the TLS listener; any other request (a proxy's
absolute-form `GET http://host/...`) goes to a copy of the plain-HTTP listener. The copies have
the listeners' own filters and routes (RDS): a request through the gateway is judged, logged and
answered exactly as an intercepted one. The gateway itself refuses only what neither listener
could take: a tunnel to another port, an https request sent to it in the clear.
"""

from __future__ import annotations

from typing import Any

from intercept_proxy.decision import CLIENT_STATE
from intercept_proxy.policy.native import NativePolicy, Outcome
from intercept_proxy.xds.routes import denial_route
from intercept_proxy.xds.types import type_url

GATEWAY_LISTENER = "intercept_gateway"
# The listeners' internal copies, each also the name of the cluster that reaches it.
TUNNELED = "intercept_tls_tunneled"
PROXIED = "intercept_http_proxied"
TUNNEL_PORT = 443
TUNNEL_PORT_RULE = "gateway_tunnel_port"
IN_THE_CLEAR_RULE = "gateway_https_in_the_clear"
UNKNOWN_CLIENT_RULE = "gateway_unknown_client"
INTERNAL_LISTENER_EXTENSION = {
    "name": "envoy.bootstrap.internal_listener",
    "typed_config": {
        "@type": type_url("envoy.extensions.bootstrap.internal_listener.v3.InternalListener")
    },
}


def internal_cluster(name: str) -> dict[str, Any]:
    """The cluster whose one endpoint is the internal listener of the same name; its
    connections carry the filter state shared with them (the client, `client_state`)."""
    address = {"envoy_internal_address": {"server_listener_name": name}}
    raw = {
        "name": "envoy.transport_sockets.raw_buffer",
        "typed_config": {
            "@type": type_url("envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer")
        },
    }
    return {
        "name": name,
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
        "transport_socket": {
            "name": "envoy.transport_sockets.internal_upstream",
            "typed_config": {
                "@type": type_url(
                    "envoy.extensions.transport_sockets.internal_upstream.v3."
                    "InternalUpstreamTransport"
                ),
                "transport_socket": raw,
            },
        },
    }


def client_state() -> dict[str, Any]:
    """The gateway's network filter that records each connection's client (its address) for
    the listener that will judge its requests: the decision log's `client`. Per connection,
    before any HTTP: no header (X-Forwarded-For) has a say. Hashable: Envoy keeps the internal
    connections of different clients apart, never handing one client's requests over
    another's."""
    value = {
        "object_key": CLIENT_STATE,
        "factory_key": "envoy.hashable_string",
        "format_string": {
            "text_format_source": {"inline_string": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}
        },
        "read_only": True,
        "shared_with_upstream": "ONCE",
    }
    return {
        "name": "envoy.filters.network.set_filter_state",
        "typed_config": {
            "@type": type_url("envoy.extensions.filters.network.set_filter_state.v3.Config"),
            "on_new_connection": [value],
        },
    }


def proxy_protocol() -> dict[str, Any]:
    """A listener filter that takes the client's address from the PROXY protocol header of
    the relay in front of the gateway (runtime/relay.py), which alone reaches it."""
    return {
        "name": "envoy.filters.listener.proxy_protocol",
        "typed_config": {
            "@type": type_url("envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol")
        },
    }


def internal_copy(listener: dict[str, Any], name: str) -> dict[str, Any]:
    """`listener` (its filters, its routes), reached only through Envoy's internal connections.
    Its statistics are Envoy's for an internal listener (`listener.envoy_internal_<name>.`), never
    the listener's own prefix: a drain counts only the listeners clients reach (envoy.py)."""
    dropped = ("address", "additional_addresses", "stat_prefix")
    copy = {k: v for k, v in listener.items() if k not in dropped}
    return {**copy, "name": name, "internal_listener": {}}


def _connect_to(port_regex: str) -> dict[str, Any]:
    authority = {"name": ":authority", "string_match": {"safe_regex": {"regex": port_regex}}}
    return {"connect_matcher": {}, "headers": [authority]}


def _refusal(name: str, match: dict[str, Any], rule: str, reason: str) -> dict[str, Any]:
    """A route on which the gateway answers itself, with a denial as the policy's, logged."""
    return denial_route(name, match, Outcome(False, rule, reason), None, tls=None)


def unnamed_hosts(
    policy: NativePolicy | None, held_hosts: tuple[str, ...]
) -> tuple[tuple[str, ...], Outcome] | None:
    """What the policy does with the hosts it has no virtual host of its own for, if the host
    alone decides it: the patterns (RE2, of an authority) of those it may allow some requests
    to (regional AWS endpoints), and its denial of every request to any other. None when a
    request could change it (the agent judges: custom Rego, a pod's own policy; a person may
    approve any host). The hosts approvals name are virtual hosts of their own (classes of
    the compiled policy): their tunnels open."""
    if policy is None or "*" in held_hosts:
        return None
    routes = [r for h in policy.hosts if h.domain == "*" for r in h.routes]
    if any(r.bodyless for r in routes):  # a body could change the decision
        return None
    patterns = tuple(dict.fromkeys(r.authority for r in routes if r.authority is not None))
    rest = {r.outcome for r in routes if r.authority is None}
    if len(rest) != 1:
        return None
    [outcome] = rest
    return (patterns, outcome) if outcome.allow is False else None


def gateway_routes(
    policy: NativePolicy | None = None, held_hosts: tuple[str, ...] = (), revision: str = ""
) -> dict[str, Any]:
    """The gateway's route table: it routes, the listeners' copies judge. Except a `CONNECT` to
    a host whose requests the policy (the TLS listener's, `policy`) denies whatever they are:
    refused before the tunnel, with that denial. Hosts are matched as the TLS listener's
    virtual hosts match them (the port aside)."""
    tunnel = {"cluster": TUNNELED, "timeout": "0s", "upgrade_configs": [
        {"upgrade_type": "CONNECT", "connect_config": {}}  # terminated here
    ]}  # fmt: skip
    plain = {"name": ":scheme", "string_match": {"exact": "http"}}
    to_port = _connect_to(f"[^/]+:{TUNNEL_PORT}")
    routes = [
        {"name": "tunnel", "match": to_port, "route": tunnel},
        _refusal(
            "tunnel-port",
            {"connect_matcher": {}},
            TUNNEL_PORT_RULE,
            f": the gateway opens tunnels to port {TUNNEL_PORT} only",
        ),
        {
            "name": "proxied",
            "match": {"prefix": "/", "headers": [plain]},
            "route": {"cluster": PROXIED, "timeout": "0s"},
        },
        # `GET https://...` (or HTTP/2's :scheme https) to a plain-HTTP listener:
        # Envoy would forward it in the clear.
        _refusal(
            "in-the-clear",
            {"prefix": "/"},
            IN_THE_CLEAR_RULE,
            ": an https request goes through a CONNECT tunnel, never in the clear",
        ),
    ]
    virtual_hosts = [{"name": "any", "domains": ["*"], "routes": routes}]
    unnamed_ones = unnamed_hosts(policy, held_hosts)
    if policy is not None and unnamed_ones is not None:
        patterns, denial = unnamed_ones
        named = [h.domain for h in policy.hosts if h.domain != "*"]
        unnamed = [
            *(
                {
                    **routes[0],
                    "name": f"tunnel:{i}",
                    "match": _connect_to(f"(?i)(?:{p}):{TUNNEL_PORT}"),
                }
                for i, p in enumerate(patterns)
            ),
            denial_route("denied-host", to_port, denial, revision, tls=None),
            *routes[1:],
        ]
        virtual_hosts = [
            *([{"name": "policy", "domains": named, "routes": routes}] if named else []),
            {"name": "any", "domains": ["*"], "routes": unnamed},
        ]
    return {
        "name": GATEWAY_LISTENER,
        "virtual_hosts": virtual_hosts,
        "ignore_port_in_host_matching": True,
        # The client's own: its proxy's credentials go no further, and the copies take the
        # scheme from their connection, never from a header.
        "request_headers_to_remove": ["proxy-authorization", "x-forwarded-proto"],
    }


def unknown_client_routes() -> dict[str, Any]:
    """The route table of a client the gateway has no policy for: every request refused."""
    reason = ": this gateway has no policy for this client's address"
    return {
        "name": f"{GATEWAY_LISTENER}_unknown_client",
        "virtual_hosts": [
            {
                "name": "any",
                "domains": ["*"],
                "routes": [
                    _refusal(
                        "unknown-tunnel", {"connect_matcher": {}}, UNKNOWN_CLIENT_RULE, reason
                    ),
                    _refusal("unknown", {"prefix": "/"}, UNKNOWN_CLIENT_RULE, reason),
                ],
            }
        ],
    }


def own_answers_only(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The gateway's own lines of the decision log: what it answered itself (its refusals, a
    request it could not hand on); what went through is logged by the copy that judged it."""
    own = {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {
                "@type": type_url(
                    "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter"
                ),
                # Not what went through, nor a client that left while the copy answered: the
                # copy logs those.
                "expression": "!(response.code_details in "
                '["via_upstream", "downstream_remote_disconnect"])',
            },
        }
    }
    return [{**log, "filter": {"and_filter": {"filters": [log["filter"], own]}}} for log in logs]
