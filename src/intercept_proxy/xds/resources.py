"""Envoy's clusters and listeners, as pure functions of the data-plane settings.

Resources are plain dicts in the proto3 JSON shape (golden-tested), converted to protobuf only
when served (`intercept_proxy.xds.protos`). The policy's decisions are not here: the listeners
take their routes over RDS (routes.py), so a policy change drains no listener, unless it changes
the policy's credentials (the TLS listener's filters that send them).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import ipaddress
import json
import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

from google.protobuf.message import Message

from intercept_proxy import ports
from intercept_proxy.decision import (
    COUNTED,
    REQUEST_FIELDS,
    SCHEMA,
    VERDICT,
    ErrorCode,
    Judge,
    counted,
    error_body,
)
from intercept_proxy.options import option
from intercept_proxy.policy.credentials import AwsKeys, AwsSigning, Credential, Placeholders
from intercept_proxy.policy.limits import RateLimit
from intercept_proxy.policy.native import NativePolicy
from intercept_proxy.xds.gateway import (
    GATEWAY_LISTENER,
    PROXIED,
    TUNNELED,
    client_state,
    gateway_routes,
    internal_cluster,
    internal_copy,
    own_answers_only,
    proxy_protocol,
    unknown_client_routes,
)
from intercept_proxy.xds.protos import generic_secret
from intercept_proxy.xds.routes import (
    AUTHZ_FILTER,
    BUFFER_FILTER,
    BUFFER_LIMIT_BYTES,
    INTERNAL_HEADERS,
    NO_DECISION,
    ROUTE_DENIES,
    SENT_CHECK_FILTER,
    SNI_CHECK_FILTER,
    BudgetHosts,
    any_spelling,
    denial_body,
    oversized_denial,
    request_facts,
    route_configuration,
    route_field,
    status_filter,
    target,
    unless_status,
    when_status,
    wildcard_regex,
)
from intercept_proxy.xds.types import type_url

# Over the one ADS stream.
ADS = {"ads": {}, "resource_api_version": "V3"}
AUTHZ_CLUSTER = "intercept_authz"
XDS_CLUSTER = "intercept_xds"
UPSTREAM_TLS_CLUSTER = "upstream_tls"
UPSTREAM_PLAIN_CLUSTER = "upstream_plain"
TLS_LISTENER = "intercept_tls"
HTTP_LISTENER = "intercept_http"
TLS_CHAIN = "intercept"
DNS_CACHE = "upstream_dns"
# The secret name for a TLS connection without SNI: such a client cannot be identified, and the
# policy denies it; the name is reserved (RFC 2606), so it is never a real host.
NO_SNI_SECRET = "no-sni.intercept-proxy.invalid"
# The secret of the policy's credential number N. Secret names are the workload's to choose
# (any server name becomes one), but never with a space: the TLS listener refuses such a server
# name (`server_name_matcher`).
CREDENTIAL_SECRET = "credential {}"  # a digest of what the secret is bound to
CREDENTIAL_FILTER = "intercept.credential.{}"
AWS_SIGNING_FILTER = "intercept.aws_signing.{}"
RATE_LIMIT_FILTER = "intercept.rate_limit.{}"
# What the decision log and the 429's body say of a request its host's rate limit refused.
RATE_LIMIT_RULE = "rate_limit"
RATE_LIMITED = ": the policy's rate limit for this host is spent (see Retry-After)"
# What a filter other than the buffer filter may hold of a body (each listener's connection
# buffer limit, Envoy's default): the AWS signer reads a body this large to hash it, unless the
# buffer filter read it first (on its routes, up to BUFFER_LIMIT_BYTES).
SIGNED_BODY_LIMIT_BYTES = 1024 * 1024
# What the decision log and the 413's body say of a request whose body Envoy had to read, to
# judge, count or sign it, and could not: refused, whatever its route.
OVERSIZED_RULE = "body_too_large"
OVERSIZED = (
    ": its body is larger than the sandbox reads before it forwards one"
    f" ({BUFFER_LIMIT_BYTES >> 20} MiB to judge or count it, {SIGNED_BODY_LIMIT_BYTES >> 20} MiB"
    " to sign it otherwise); nothing was forwarded"
)
# Envoy refills a token bucket at most this often.
MIN_FILL_MS = 50


def cidr(text: str) -> str:
    """`text` if it is a CIDR (an upstream private range, a gateway's clients: as every setting
    of one is checked); ValueError saying why not."""
    try:
        ipaddress.ip_network(text)
    except ValueError as e:
        raise ValueError(f"{text!r} is not a CIDR ({e})") from None
    if "%" in text:  # a scoped address (fe80::%eth0/64): Envoy's ranges have no zone
        raise ValueError(f"{text!r} is not a CIDR (it has a zone)")
    return text


def _ranges(flag: str, help: str) -> Any:
    """An option of address ranges: CIDR, repeatable, none by default."""
    return option(flag, help, default=(), parse=cidr, repeatable=True, metavar="CIDR")


@dataclass(frozen=True)
class DataPlane:
    """What the generated Envoy configuration depends on."""

    listen_addresses: tuple[str, ...] = ("127.0.0.1", "::1")
    tls_port: int = option("--tls-port", "Envoy's TLS listener", default=ports.ENVOY_TLS, parse=int)
    http_port: int = option(
        "--plain-port", "Envoy's plain-HTTP listener", default=ports.ENVOY_HTTP, parse=int
    )
    # The agent's own listeners for Envoy (xDS, ext_authz).
    authz_address: str = option(
        "--bind", "address of the agent's listeners", default="127.0.0.1", metavar="ADDRESS"
    )
    authz_port: int = option("--authz-port", "ext_authz", default=ports.AGENT_AUTHZ, parse=int)
    authz_timeout_s: float = 1.0
    # Empty: the system resolver configuration (resolv.conf).
    dns_resolvers: tuple[str, ...] = option(
        "--dns-resolver",
        "DNS server for Envoy's upstream lookups (repeatable; default: resolv.conf)",
        default=(),
        repeatable=True,
        metavar="ADDRESS",
    )
    dns_cache_max_hosts: int = 1024
    # A name gets this long in all (the cache's budget). Each DNS server gets a try of its own
    # within it: with c-ares' default try (5 s, the whole budget), a first server that never
    # answered, or one lost reply, failed the lookup though the next server would have answered.
    dns_query_timeout_s: float = 5.0
    dns_try_timeout_s: int = 1
    dns_tries: int = 2
    upstream_connect_timeout_s: float = 10.0
    # No total request timeout (streams, long polls); a stream idle this long is closed.
    stream_idle_timeout_s: float = 300.0
    # Slow or silent clients (slowloris) hold a connection no longer than this: its first bytes
    # (a ClientHello, a request line), the TLS handshake, a request's headers once they begin,
    # a connection without a request. A request under way (a long poll, a WebSocket) is bound
    # by the stream idle timeout alone.
    first_bytes_timeout_s: float = 10.0
    tls_handshake_timeout_s: float = 10.0
    request_headers_timeout_s: float = 10.0
    connection_idle_timeout_s: float = 60.0
    # Streams of one HTTP/2 connection at once.
    max_concurrent_streams: int = 100
    # Non-public ranges upstreams may be in all the same (an internal registry's); Envoy
    # connects to no other non-public address (`refused_ranges`).
    upstream_private_ranges: tuple[str, ...] = _ranges(
        "--upstream-private-range",
        "a non-public address range upstreams may be in (CIDR, repeatable; default: none)",
    )
    # Ranges upstreams may never be in, public or not, whatever the above (the Kubernetes API's:
    # the egress gateway's NetworkPolicy lets its pod reach them, for its agent).
    upstream_refused_ranges: tuple[str, ...] = _ranges(
        "--upstream-refused-range",
        "an address range upstreams may never be in, public or not (CIDR, repeatable)",
    )
    # The egress gateway (an explicit proxy, xds/gateway.py). None: none.
    gateway_port: int | None = option(
        "--gateway-port", "serve as an explicit proxy (HTTPS_PROXY) on this port", default=None,
        parse=int,
    )  # fmt: skip
    # Where the gateway learns a client's address: the connection, or the PROXY protocol
    # header of the relay that alone reaches it (`intercept gateway`, runtime/relay.py).
    gateway_clients_from: str = option(
        "--gateway-clients-from",
        "where the gateway learns a client's address",
        default="connection",
        choices=("connection", "proxy-protocol"),
    )
    # The gateway's clients (CIDRs; none: every client). Others get the gateway's refusal: a
    # gateway serving one of several policies (`intercept gateway --client`) serves only the
    # clients of that policy, whatever reaches it.
    gateway_clients: tuple[str, ...] = _ranges(
        "--gateway-client",
        "a range of the gateway's clients (CIDR, repeatable; default: every client)",
    )
    # Other policies' clients (`intercept gateway`'s other pairs): refused, even inside the
    # ranges of this one's.
    gateway_other_clients: tuple[str, ...] = _ranges(
        "--gateway-other-client", "a range of clients of another policy, refused (CIDR, repeatable)"
    )
    gateway_addresses: tuple[str, ...] = option(
        "--gateway-address",
        "an address the gateway listens on (repeatable)",
        default=("127.0.0.1", "::1"),
        repeatable=True,
        metavar="ADDRESS",
    )
    # The decision log. None: Envoy's own stdout (no file to open, whoever owns it).
    decision_log_path: str | None = option(
        "--decision-log",
        "the file Envoy appends decisions to, one JSON line per request (default: Envoy's stdout)",
        default=None,
    )


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


def _socket_address(address: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": port}}


def _listener_addresses(addresses: tuple[str, ...], port: int) -> dict[str, Any]:
    first, *rest = addresses
    out: dict[str, Any] = {"address": _socket_address(first, port)}
    if rest:
        out["additional_addresses"] = [{"address": _socket_address(a, port)} for a in rest]
    return out


def _http2_options() -> dict[str, Any]:
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": type_url("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"),
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }


def grpc_cluster(name: str, address: str, port: int) -> dict[str, Any]:
    """A static HTTP/2 cluster for a gRPC service of the agent on loopback."""
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": _http2_options(),
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _socket_address(address, port)}}]}
            ],
        },
    }


# Where no upstream may be, whatever name of the policy's led there (one that resolves to a
# cloud's metadata service, to this machine, to a cluster's Services): the IPv4 and IPv6 ranges
# that are not globally reachable (IANA's special-purpose registries).
NON_PUBLIC_V4 = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/3",
)  # fmt: skip
NON_PUBLIC_V6 = (
    "::/96", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32", "3fff::/20",
    "5f00::/16", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
)  # fmt: skip
# IPv6 forms that carry an IPv4 address, each with the bit its IPv4 address ends at: mapped,
# NAT64's well-known prefix (which DNS64 hands out for every IPv4-only name), 6to4. Refused
# where their IPv4 address would be. (A NAT64 prefix an operator chose is not known here.)
EMBEDDING_V4 = (("::ffff:0:0/96", 0), ("64:ff9b::/96", 0), ("2002::/16", 80))

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _spellings(text: str) -> list[Network]:
    """A range, and for IPv4 the IPv6 ranges that embed it."""
    net = ipaddress.ip_network(text)
    if not isinstance(net, ipaddress.IPv4Network):
        return [net]
    out: list[Network] = [net]
    for prefix, shift in EMBEDDING_V4:
        embedding = ipaddress.IPv6Network(prefix)
        base = int(embedding.network_address) | int(net.network_address) << shift
        out.append(ipaddress.IPv6Network((base, embedding.prefixlen + net.prefixlen)))
    return out


@functools.cache  # every copy of the DNS cache (two clusters, four filters) asks
def refused_ranges(
    allowed: tuple[str, ...] = (), also: tuple[str, ...] = ()
) -> tuple[Network, ...]:
    """The non-public ranges, IPv4 and IPv6, but `allowed`, and `also` whatever `allowed` says
    (CIDRs, ValueError if not)."""
    refused: list[Network] = [ipaddress.ip_network(n) for n in NON_PUBLIC_V6]
    for text in NON_PUBLIC_V4:
        refused += _spellings(text)
    for exempt in map(ipaddress.ip_network, allowed):
        kept: list[Network] = []
        for net in refused:
            if net.version != exempt.version or not net.overlaps(exempt):
                kept.append(net)
            elif not exempt.supernet_of(net):  # type: ignore[arg-type]
                kept.extend(net.address_exclude(exempt))  # type: ignore[arg-type]
        refused = kept
    refused += [net for text in also for net in _spellings(text)]
    return tuple(sorted(set(refused), key=lambda n: (n.version, n)))


def dns_cache_config(dp: DataPlane) -> dict[str, Any]:
    """Shared by both forward-proxy clusters and filters: Envoy requires identical copies."""
    config: dict[str, Any] = {
        "name": DNS_CACHE,
        "dns_lookup_family": "ALL",
        "max_hosts": dp.dns_cache_max_hosts,
        "dns_query_timeout": _duration(dp.dns_query_timeout_s),
        # An answer in these ranges is dropped; a name left without one does not resolve.
        # (Envoy 1.40 has the field, the Python API package not yet: see protos.LACKING.)
        "resolved_address_filter": {
            "ranges": [
                cidr_range(n)
                for n in refused_ranges(dp.upstream_private_ranges, dp.upstream_refused_ranges)
            ]
        },
    }
    resolver: dict[str, Any] = {
        "@type": type_url("envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig"),
        # A name is looked up as it is: never under the search domains of resolv.conf, which
        # a pod's dnsConfig may set (an allowed name under a domain of the pod's choosing).
        "dns_resolver_options": {"no_default_search_domain": True},
        "query_timeout_seconds": dp.dns_try_timeout_s,
        "query_tries": dp.dns_tries,
    }
    if dp.dns_resolvers:  # else resolv.conf's nameservers
        resolver["resolvers"] = [_socket_address(r, 53) for r in dp.dns_resolvers]
    config["typed_dns_resolver_config"] = {
        "name": "envoy.network.dns_resolver.cares",
        "typed_config": resolver,
    }
    return config


def forward_proxy_cluster(dp: DataPlane, upstream_ca_pem: str | None) -> dict[str, Any]:
    """Upstream through the dynamic forward proxy: the host comes from each request's authority.
    With a CA bundle, the upstream is TLS: SNI is that host, and the upstream certificate is
    checked against it (SAN) and against the bundle. Without, it is plain HTTP."""
    tls = upstream_ca_pem is not None
    cluster: dict[str, Any] = {
        "name": UPSTREAM_TLS_CLUSTER if tls else UPSTREAM_PLAIN_CLUSTER,
        "connect_timeout": _duration(dp.upstream_connect_timeout_s),
        "lb_policy": "CLUSTER_PROVIDED",
        "cluster_type": {
            "name": "envoy.clusters.dynamic_forward_proxy",
            "typed_config": {
                "@type": type_url(
                    "envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig"
                ),
                "dns_cache_config": dns_cache_config(dp),
                # Plain HTTP upstream has no SNI or SAN to check.
                "allow_insecure_cluster_options": not tls,
            },
        },
    }
    if tls:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": type_url("envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"),
                "common_tls_context": {
                    "alpn_protocols": ["h2", "http/1.1"],
                    # Inline, not an SDS secret: a secret name without a space is the
                    # workload's to choose (any SNI), see CREDENTIAL_SECRET.
                    "validation_context": {"trusted_ca": {"inline_string": upstream_ca_pem}},
                },
            },
        }
        protocol = {
            "upstream_http_protocol_options": {"auto_sni": True, "auto_san_validation": True},
            "auto_config": {"http_protocol_options": {}, "http2_protocol_options": {}},
        }
    else:
        protocol = {"explicit_http_config": {"http_protocol_options": {}}}
    cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": type_url("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"),
            **protocol,
        }
    }
    return cluster


def clusters(dp: DataPlane, upstream_ca_pem: str) -> list[dict[str, Any]]:
    gateway = [] if dp.gateway_port is None else [internal_cluster(n) for n in (TUNNELED, PROXIED)]
    return [
        grpc_cluster(AUTHZ_CLUSTER, dp.authz_address, dp.authz_port),
        forward_proxy_cluster(dp, upstream_ca_pem),
        forward_proxy_cluster(dp, None),
        *gateway,
    ]


def _json_error(code: ErrorCode, message: str, rule: str) -> dict[str, Any]:
    return {
        "json_format": error_body(code, message, rule=rule),
        "content_type": "application/json",
    }


# Seconds a client is told to wait before retrying what failed for a reason of Envoy's.
RETRY_AFTER_S = 1


def _retry_later(
    rule: str, message: str, flag_filter: dict[str, Any], status: int | None = None
) -> dict[str, Any]:
    """Envoy's own failure (`status`: in place of Envoy's): RETRY_LATER, with `Retry-After`."""
    return {
        "filter": flag_filter,
        **({"status_code": status} if status is not None else {}),
        "body_format_override": _json_error(ErrorCode.RETRY_LATER, message, rule),
        "headers_to_add": [
            {
                "header": {"key": "retry-after", "value": str(RETRY_AFTER_S)},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
    }


def _flag(flag: str) -> dict[str, Any]:
    return {"response_flag_filter": {"flags": [flag]}}


# Envoy's own 413 (its buffer filter's: an upstream's 413 has other details) on a route that
# does not deny (a denying route's is its 403): the status first, the CEL only for a 413.
_UNREAD_CEL = f"response.code_details == 'request_payload_too_large' && !({ROUTE_DENIES})"
_UNREAD = when_status(413, "intercept.oversized_status", _UNREAD_CEL)
_NOT_UNREAD = unless_status(413, "intercept.oversized", f"!({_UNREAD_CEL})")


# Envoy's answer when the agent's check fails (fail closed).
AGENT_FAILED_STATUS = 503


def _agent_failed() -> dict[str, Any]:
    """A filter true for Envoy's answer to a check that failed (UAEX, which a denial has too,
    with AGENT_FAILED_STATUS)."""
    failed = status_filter(AGENT_FAILED_STATUS, "intercept.authz_error_status")
    return {"and_filter": {"filters": [_flag("UAEX"), failed]}}


def local_reply_config(*, tls: bool) -> dict[str, Any]:
    """Explained JSON bodies for Envoy's own error replies. Policy denials carry their own body
    from the agent and match none of these."""
    agent_failed = _agent_failed()
    mappers = [
        _retry_later(
            "policy_unavailable",
            "the policy service did not answer; the request was blocked (fail closed)",
            agent_failed,
        ),
        _retry_later(
            "upstream_dns_failure", "the upstream host name does not resolve", _flag("DF"), 502
        ),
        _retry_later(
            "upstream_connect_failure", "the upstream host could not be reached", _flag("UF"), 502
        ),
        _retry_later(
            "upstream_timeout", "the upstream host did not answer in time", _flag("UT"), 504
        ),
        {
            # Envoy's only local reply with 429 (it flags RL after the reply is mapped).
            "filter": status_filter(429, "intercept.rate_limited_status"),
            "body_format_override": _json_error(
                ErrorCode.RATE_LIMIT_EXCEEDED, target(tls=tls) + RATE_LIMITED, RATE_LIMIT_RULE
            ),
        },
        # A denying route's own denial, then any other route's refusal (an allowing route
        # refused a body it could not read: never its allow rule in a 403).
        oversized_denial(tls=tls),
        {
            "filter": _UNREAD,
            "body_format_override": denial_body(OVERSIZED_RULE, OVERSIZED, tls=tls),
        },
    ]
    return {"mappers": mappers}


def _agent_field(key: str) -> str:
    return f"%DYNAMIC_METADATA({AUTHZ_FILTER}:{key})%"


class Logged(Enum):
    """Whose verdict a decision log line carries."""

    # The route's own: Envoy's decision, or an agent route's no_decision (Envoy refused the
    # request first, or the client left before the agent answered).
    ROUTE = "route"
    AGENT = "agent"  # the agent's (ext_authz metadata)
    # No answer from the agent (failed, timed out) to a check on any route: also on a route
    # that decides in Envoy, whose own decision was never reached.
    UNANSWERED = "unanswered"
    RATE_LIMIT = "rate_limit"  # the policy allowed it, its host's rate limit refused it
    OVERSIZED = "oversized"  # a body Envoy had to read, too large, on a route that denies not


def _refusal(
    rule: str, reason: str, *, tls: bool | None, judge: Judge = Judge.ENVOY
) -> dict[str, Any]:
    """A refusal, whatever the request's route decided: Envoy's own, or no decision."""
    return {
        "judge": judge.value,
        "allow": False,
        "rule": rule,
        "reason": target(tls=tls) + reason,
        "policy_revision": route_field("policy_revision"),
    }


def decision_fields(*, tls: bool | None, logged: Logged) -> dict[str, Any]:
    """The decision log's line (Envoy's access log)."""
    verdict: dict[str, Any]
    if logged is Logged.AGENT:
        verdict = {
            "judge": Judge.AGENT.value,
            **{k: _agent_field(k) for k in (*VERDICT, "eval_ms")},
        }
    elif logged is Logged.OVERSIZED:
        verdict = _refusal(OVERSIZED_RULE, OVERSIZED, tls=tls)
    elif logged is Logged.UNANSWERED:
        verdict = _refusal(NO_DECISION.rule, NO_DECISION.reason, tls=tls, judge=Judge.NONE)
    elif logged is Logged.ROUTE:
        # "envoy", "none" (an agent route whose request Envoy refused first, or whose client
        # left), or null: no route at all (a protocol error, a request no route matches);
        # details say why. A client that leaves during a check on a route that decides in
        # Envoy is logged with the route's decision (status 0, flag DC or DR).
        verdict = {k: route_field(k) for k in ("judge", *VERDICT)}
        verdict["reason"] = target(tls=tls) + route_field("reason")
    else:
        verdict = _refusal(RATE_LIMIT_RULE, RATE_LIMITED, tls=tls)
    return {"schema": SCHEMA, **verdict, **REQUEST_FIELDS}


def _by_agent(*, present: bool) -> dict[str, Any]:
    """Whether the agent's answer carried a decision (it always does, unless it failed)."""
    matcher = {
        "filter": AUTHZ_FILTER,
        "path": [{"key": "rule"}],  # one of VERDICT: the agent always sends it
        "value": {"present_match": present},
    }
    return {"metadata_filter": {"matcher": matcher, "match_if_key_not_found": not present}}


# Envoy's bits for RL and UAEX in `response.flags` (its legacy response flags).
_RATE_LIMITED_FLAG = 0x800
_EXTERNAL_AUTH_FLAG = 0x1000


def _flag_clear(bit: int) -> str:
    """In CEL, which has no bitwise operators: that bit of `response.flags` is not set."""
    return f"response.flags / {bit} % 2 == 0"


def _selection(logged: Logged, *, rate_limited: bool) -> dict[str, Any]:
    """The requests whose line `logged` writes: exactly one for each request. Only where a
    rate limit may refuse a request is there a line of that kind. A CEL expression runs only
    for the status it concerns (413, 429, 503)."""
    if logged is Logged.RATE_LIMIT:
        return _flag("RL")
    if logged is Logged.OVERSIZED:
        return _UNREAD
    if logged is Logged.UNANSWERED:
        # Without the agent's answer: its check failed. The route's line takes exactly the
        # others (below).
        return {"and_filter": {"filters": [_by_agent(present=False), _agent_failed()]}}
    # Not refused for its size (the AWS signer's 413 comes after the agent's allow).
    filters = [_by_agent(present=logged is Logged.AGENT), _NOT_UNREAD]
    if logged is Logged.ROUTE:
        # Nor a check that got no answer: the CEL only for that status.
        answered = _flag_clear(_EXTERNAL_AUTH_FLAG)
        filters.append(unless_status(AGENT_FAILED_STATUS, "intercept.unanswered", answered))
    if rate_limited:
        # Not refused by a rate limit, which answers 429 itself: the CEL only for a 429.
        not_limited = _flag_clear(_RATE_LIMITED_FLAG)
        filters.append(unless_status(429, "intercept.rate_limited", not_limited))
    return {"and_filter": {"filters": filters}}


def decision_logs(
    path: str | None, *, tls: bool | None, rate_limited: bool = False
) -> list[dict[str, Any]]:
    """One logger per kind of line into one sink, each for the requests its filter selects.
    `rate_limited`: a rate limit may refuse requests."""
    out = []
    kinds = [k for k in Logged if rate_limited or k is not Logged.RATE_LIMIT]
    for logged in kinds:
        log_format = {
            "json_format": decision_fields(tls=tls, logged=logged),
            "formatters": [
                {
                    "name": "envoy.formatter.req_without_query",
                    "typed_config": {
                        "@type": type_url(
                            "envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery"
                        )
                    },
                }
            ],
        }
        if path is None:
            sink = {
                "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": type_url("envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"),
                    "log_format": log_format,
                },
            }
        else:
            sink = {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": type_url("envoy.extensions.access_loggers.file.v3.FileAccessLog"),
                    "path": path,
                    "log_format": log_format,
                },
            }
        selected = _selection(logged, rate_limited=rate_limited)
        out += [
            {**sink, "filter": selected},
            {**decision_counter(logged), "filter": selected},
        ]
    return out


def decision_counter(logged: Logged) -> dict[str, Any]:
    """Counts every decision, whoever made it, in Envoy's statistics, tagged by its judge, result
    and rule in one value (decision.counted; the agent serves them among its metrics)."""
    if logged is Logged.RATE_LIMIT:
        value = counted(Judge.ENVOY, False, RATE_LIMIT_RULE)
    elif logged is Logged.OVERSIZED:
        value = counted(Judge.ENVOY, False, OVERSIZED_RULE)
    elif logged is Logged.UNANSWERED:
        value = counted(Judge.NONE, False, NO_DECISION.rule)
    elif logged is Logged.AGENT:
        value = _agent_field(COUNTED)
    else:
        value = route_field(COUNTED)
    return {
        "name": "envoy.access_loggers.stats",
        # A TypedStruct: the Python API package predates `stats_scope` (`stat_prefix` is
        # deprecated). Tags come from our decisions only, never from the request: few values.
        "typed_config": _typed_struct(
            "envoy.extensions.access_loggers.stats.v3.Config",
            {
                "stats_scope": {"prefix": "intercept"},
                "counters": [
                    {
                        "stat": {
                            "name": "decisions",
                            "tags": [{"name": COUNTED, "value_format": value}],
                        },
                        "value_fixed": 1,
                    }
                ],
            },
        ),
    }


# A held request's check outlives the agent's hold by this much: the agent answers first, with a
# denial that says what to do.
HOLD_MARGIN_S = 5.0


def authz_service() -> dict[str, Any]:
    return {"envoy_grpc": {"cluster_name": AUTHZ_CLUSTER}}


def ext_authz(dp: DataPlane) -> dict[str, Any]:
    """The agent's check: fails closed."""
    return {
        "@type": type_url("envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"),
        "grpc_service": {**authz_service(), "timeout": _duration(dp.authz_timeout_s)},
        "transport_api_version": "V3",
        "failure_mode_allow": False,
        "status_on_error": {"code": AGENT_FAILED_STATUS},
        "include_tls_session": True,
        # The first byte of a body, if any: tells a read from a request that sends data when no
        # header says so (HTTP/2 without content-length).
        "with_request_body": {
            "max_request_bytes": 1,
            "allow_partial_message": True,
            "pack_as_bytes": True,
        },
    }


def _check_when(dp: DataPlane, predicate: dict[str, Any]) -> dict[str, Any]:
    """The agent's check (ext_authz), created by a composite filter only for a request that
    `predicate` matches. Its decision lands where the agent's always does (ext_authz's dynamic
    metadata)."""
    check = {
        "name": "check",
        "typed_config": {
            "@type": type_url("envoy.extensions.filters.http.composite.v3.ExecuteFilterAction"),
            "typed_config": {"name": AUTHZ_FILTER, "typed_config": ext_authz(dp)},
        },
    }
    composite = type_url("envoy.extensions.filters.http.composite.v3.Composite")
    return {
        "@type": type_url("envoy.extensions.common.matching.v3.ExtensionWithMatcher"),
        "extension_config": {"name": "composite", "typed_config": {"@type": composite}},
        "xds_matcher": {
            "matcher_list": {"matchers": [{"predicate": predicate, "on_match": {"action": check}}]}
        },
    }


def sent_check(dp: DataPlane) -> dict[str, Any]:
    """The agent's check of a read that sent a body: for a request with a length other than 0
    (the buffer filter before it writes the length of the body it read)."""
    # The xds matcher's own regex message: the engine is named.
    sent = {"safe_regex": {"google_re2": {}, "regex": "[1-9][0-9]*"}}
    return _check_when(dp, _header_is("content-length", sent))


def _select(ident: str, field: str, first_id: int) -> dict[str, Any]:
    """`ident.field` in CEL's parsed form (Envoy 1.40 compiles no CEL text in a matcher)."""
    operand = {"id": first_id + 1, "ident_expr": {"name": ident}}
    return {"id": first_id, "select_expr": {"operand": operand, "field": field}}


# request.host == connection.requested_server_name
_SNI_IS_HOST = {
    "expr": {
        "id": 1,
        "call_expr": {
            "function": "_==_",
            "args": [
                _select("request", "host", 2),
                _select("connection", "requested_server_name", 4),
            ],
        },
    }
}


def sni_check(dp: DataPlane) -> dict[str, Any]:
    """The agent's check of a request whose SNI is not its host (routes.SNI_CHECK_FILTER)."""
    attributes = {
        "name": "attributes",
        "typed_config": {"@type": type_url("xds.type.matcher.v3.HttpAttributesCelMatchInput")},
    }
    cel = {
        "@type": type_url("xds.type.matcher.v3.CelMatcher"),
        "expr_match": {"cel_expr_parsed": _SNI_IS_HOST},
    }
    holds = {
        "single_predicate": {
            "input": attributes,
            "custom_match": {"name": "sni-is-host", "typed_config": cel},
        }
    }
    # Created unless the SNI is the host: a matcher takes an expression's error for no match.
    return _check_when(dp, {"not_matcher": holds})


def early_mutations(*, tls: bool, gateway: bool = False) -> list[dict[str, Any]]:
    """Before routing: only Envoy's own request ids (the decision id is one, and a client must
    not choose it), and only the listener's own facts about the request (routes.py)."""
    removed = [{"remove": name} for name in ("x-request-id", *INTERNAL_HEADERS)]
    facts = [
        {"append": {"header": {"key": name, "value": value}, "append_action": "ADD_IF_ABSENT"}}
        for name, value in request_facts(tls=tls, gateway=gateway).items()
    ]
    return removed + facts


def _header_is(name: str, match: dict[str, Any]) -> dict[str, Any]:
    header = {
        "name": name.lstrip(":"),
        "typed_config": {
            "@type": type_url("envoy.type.matcher.v3.HttpRequestHeaderMatchInput"),
            "header_name": name,
        },
    }
    return {"single_predicate": {"input": header, "value_match": match}}


def _authority_is(host: str, *, spelled_any_way: bool) -> dict[str, Any]:
    # The listener takes a trailing dot off; otherwise, only the canonical spelling unless
    # `spelled_any_way` (capitals, a port).
    if spelled_any_way:
        match: dict[str, Any] = {"safe_regex": {"google_re2": {}, "regex": any_spelling(host)}}
    elif host.startswith("*."):
        match = {"safe_regex": {"google_re2": {}, "regex": wildcard_regex(host)}}
    else:
        match = {"exact": host}
    return _header_is(":authority", match)


_SIDESTEP = {"safe_regex": {"google_re2": {}, "regex": "(?i).*(?:%2f|%5c|%2e|;).*"}}


def _any_of(predicates: list[dict[str, Any]]) -> dict[str, Any]:
    if len(predicates) == 1:
        return predicates[0]
    return {"or_matcher": {"predicate": predicates}}


def _sent_to(credential: Credential) -> dict[str, Any]:
    """The requests a credential goes with: its host's, and its methods' and paths' if named
    (the path as Envoy normalised it, query included)."""
    conditions = [_authority_is(credential.host, spelled_any_way=False)]
    if credential.methods:
        conditions.append(
            _any_of([_header_is(":method", {"exact": m}) for m in credential.methods])
        )
    if credential.paths:
        conditions.append(_any_of([_header_is(":path", {"prefix": p}) for p in credential.paths]))
        # What an upstream may decode or read as a dot segment after Envoy's normalisation
        # (%2F, %5C, %2E, a `;` parameter): such a path could leave the prefix there.
        conditions.append({"not_matcher": _header_is(":path", _SIDESTEP)})
    return conditions[0] if len(conditions) == 1 else {"and_matcher": {"predicate": conditions}}


def credential_filter(index: int, credential: Credential) -> dict[str, Any]:
    """Envoy's credential injector for one credential: after the decision (the filters before
    it stop a denied request), for requests to its host only, on the TLS listener only. The
    header's value is the secret Envoy gets over ADS; whatever the workload sent is replaced, and
    without the secret nothing goes (Envoy answers 401)."""
    secret = {"name": credential_secret_name(credential), "sds_config": ADS}
    injector = {
        "@type": type_url(
            "envoy.extensions.filters.http.credential_injector.v3.CredentialInjector"
        ),
        "overwrite": True,
        "allow_request_without_credential": False,
        "credential": {
            "name": "envoy.http.injected_credentials.generic",
            "typed_config": {
                "@type": type_url("envoy.extensions.http.injected_credentials.generic.v3.Generic"),
                "credential": secret,
                "header": credential.header,
            },
        },
    }
    # A secret goes to the canonical name only.
    return _only_for(
        CREDENTIAL_FILTER.format(index),
        "envoy.filters.http.credential_injector",
        injector,
        _sent_to(credential),
    )


def aws_signing_filter(index: int, signing: AwsSigning, keys: AwsKeys) -> dict[str, Any]:
    """Envoy's SigV4 signer for one host, with the operator's keys (inline: a field Envoy's
    admin interface redacts), where the credential injectors are: after the decision, TLS
    only. The workload's own signature, made with the placeholder keys, is replaced."""
    inline = {"access_key_id": keys.access_key_id, "secret_access_key": keys.secret_access_key}
    if keys.session_token is not None:
        inline["session_token"] = keys.session_token
    config = {
        "@type": type_url("envoy.extensions.filters.http.aws_request_signing.v3.AwsRequestSigning"),
        "service_name": signing.service,
        "region": signing.region,
        # S3 takes a payload it need not hash over TLS; other services' bodies are hashed
        # (Envoy reads them first).
        "use_unsigned_payload": signing.service == "s3",
        # The listener's own headers are gone before the request is, and Envoy's may be: signed,
        # they would break the signature.
        "match_excluded_headers": [{"prefix": "x-intercept-"}, {"prefix": "x-envoy-"}],
        # These keys, never Envoy's environment, files or an instance's metadata service.
        "credential_provider": {
            "custom_credential_provider_chain": True,
            "inline_credential": inline,
        },
    }
    return _for_host(
        AWS_SIGNING_FILTER.format(index),
        "envoy.filters.http.aws_request_signing",
        config,
        signing.host,
        spelled_any_way=False,
    )


def _for_host(
    name: str, extension: str, config: dict[str, Any], host: str, *, spelled_any_way: bool
) -> dict[str, Any]:
    """An HTTP filter that skips every request whose host is not `host` (exact, or `*.suffix`;
    `spelled_any_way`: in any case, with any port)."""
    return _only_for(name, extension, config, _authority_is(host, spelled_any_way=spelled_any_way))


def _only_for(
    name: str, extension: str, config: dict[str, Any], applies: dict[str, Any]
) -> dict[str, Any]:
    """An HTTP filter that skips every request the predicate `applies` does not match."""
    skip = {
        "name": "skip",
        "typed_config": {
            "@type": type_url("envoy.extensions.filters.common.matcher.action.v3.SkipFilter")
        },
    }
    elsewhere = {"not_matcher": applies}
    return {
        "name": name,
        "typed_config": {
            "@type": type_url("envoy.extensions.common.matching.v3.ExtensionWithMatcher"),
            "extension_config": {"name": extension, "typed_config": config},
            "xds_matcher": {
                "matcher_list": {
                    "matchers": [{"predicate": elsewhere, "on_match": {"action": skip}}]
                }
            },
        },
    }


def rate_limit_filter(index: int, limit: RateLimit) -> dict[str, Any]:
    """Envoy's local rate limit for one host: a token bucket shared by Envoy's workers, as many
    tokens as requests a minute, refilled evenly. A request without a token gets 429 with
    `Retry-After` (the refill interval) and RATE_LIMIT_EXCEEDED (`local_reply_config`)."""
    # As many tokens per fill as it takes for the interval to be at least Envoy's shortest;
    # the interval then exact (to the nanosecond).
    rate = limit.requests_per_minute
    tokens = math.ceil(rate * MIN_FILL_MS / 60_000)
    interval_ns = round(tokens * 60e9 / rate)
    always = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": ""}
    config = {
        "@type": type_url("envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"),
        "stat_prefix": f"intercept_rate_limit_{index}",
        "token_bucket": {
            "max_tokens": limit.requests_per_minute,
            "tokens_per_fill": tokens,
            "fill_interval": f"{interval_ns // 10**9}.{interval_ns % 10**9:09d}s",
        },
        "filter_enabled": always,
        "filter_enforced": always,
        "response_headers_to_add": [
            {
                "header": {"key": "retry-after", "value": str(math.ceil(interval_ns / 1e9))},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
    }
    # Every spelling of the host the policy takes for it counts.
    return _for_host(
        RATE_LIMIT_FILTER.format(index),
        "envoy.filters.http.local_ratelimit",
        config,
        limit.host,
        spelled_any_way=True,
    )


def credential_secrets(
    credentials: tuple[Credential, ...], secrets: tuple[str, ...]
) -> list[Message]:
    """The credentials' secrets as Envoy gets them (over ADS: never in a file)."""
    return [
        generic_secret(credential_secret_name(c), c.header_value(secret))
        for c, secret in zip(credentials, secrets, strict=True)
    ]


def credential_secret_name(credential: Credential) -> str:
    """Named after what it is bound to, never its place in the list: an Envoy still running the
    previous listener (or draining it) must never get another credential's secret under the
    name its injector watches."""
    binding = json.dumps(dataclasses.asdict(credential), sort_keys=True).encode()
    return CREDENTIAL_SECRET.format(hashlib.sha256(binding).hexdigest()[:16])


@dataclass(frozen=True)
class Extras:
    """What the policy has Envoy do besides deciding: send credentials, count requests."""

    credentials: tuple[Credential, ...] = ()
    rate_limits: tuple[RateLimit, ...] = ()
    aws_signing: tuple[tuple[AwsSigning, AwsKeys], ...] = ()


def _connection_manager(dp: DataPlane, name: str) -> dict[str, Any]:
    """What every HTTP connection manager of ours has: its name, Envoy's bounds on slow
    clients and idle streams (see DataPlane)."""
    return {
        "@type": type_url(
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
        ),
        "stat_prefix": name,
        "codec_type": "AUTO",
        "server_name": "intercept-proxy",
        "stream_idle_timeout": _duration(dp.stream_idle_timeout_s),
        "request_timeout": "0s",
        "request_headers_timeout": _duration(dp.request_headers_timeout_s),
        "common_http_protocol_options": {"idle_timeout": _duration(dp.connection_idle_timeout_s)},
    }


# Last in every chain of HTTP filters.
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {
        "@type": type_url("envoy.extensions.filters.http.router.v3.Router"),
        "suppress_envoy_headers": True,
    },
}


def http_connection_manager(
    dp: DataPlane, *, tls: bool, extras: Extras = Extras()
) -> dict[str, Any]:
    name = TLS_LISTENER if tls else HTTP_LISTENER
    return {
        **_connection_manager(dp, name),
        "server_header_transformation": "PASS_THROUGH",
        # Judge the path as the upstream will see it: dot segments resolved, slashes merged.
        # Encoded slashes pass unchanged (registries such as npm use them in package names);
        # the policy refuses them where it judges the path.
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        "strip_trailing_host_dot": True,
        "http2_protocol_options": {"max_concurrent_streams": dp.max_concurrent_streams},
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        "local_reply_config": local_reply_config(tls=tls),
        "access_log": decision_logs(
            dp.decision_log_path, tls=tls, rate_limited=bool(extras.rate_limits)
        ),
        "early_header_mutation_extensions": [
            {
                "name": "envoy.http.early_header_mutation.header_mutation",
                "typed_config": {
                    "@type": type_url(
                        "envoy.extensions.http.early_header_mutation.header_mutation.v3."
                        "HeaderMutation"
                    ),
                    "mutations": early_mutations(tls=tls, gateway=dp.gateway_port is not None),
                },
            }
        ],
        # Routes come over ADS (RDS): a policy change replaces them without touching listeners.
        "rds": {
            "config_source": ADS,
            "route_config_name": name,
        },
        "http_filters": [
            # Every request to a rate-limited host counts, before any decision: one refused
            # here reaches no one (the agent charges no budget for it).
            *(rate_limit_filter(i, limit) for i, limit in enumerate(extras.rate_limits)),
            # These are off unless a route turns them on (see routes.py). A request whose SNI
            # is not its host is judged before its upload is read.
            *(
                [{"name": SNI_CHECK_FILTER, "disabled": True, "typed_config": sni_check(dp)}]
                if tls
                else []
            ),
            {
                "name": BUFFER_FILTER,
                "disabled": True,
                "typed_config": {
                    "@type": type_url("envoy.extensions.filters.http.buffer.v3.Buffer"),
                    "max_request_bytes": BUFFER_LIMIT_BYTES,
                },
            },
            {"name": SENT_CHECK_FILTER, "disabled": True, "typed_config": sent_check(dp)},
            {"name": AUTHZ_FILTER, "disabled": True, "typed_config": ext_authz(dp)},
            # Never over plain HTTP.
            *(credential_filter(i, c) for i, c in enumerate(extras.credentials) if tls),
            *(aws_signing_filter(i, *s) for i, s in enumerate(extras.aws_signing) if tls),
            {
                "name": "envoy.filters.http.dynamic_forward_proxy",
                "typed_config": {
                    "@type": type_url(
                        "envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig"
                    ),
                    "dns_cache_config": dns_cache_config(dp),
                },
            },
            ROUTER,
        ],
    }


def _typed_struct(type_name: str, value: dict[str, Any]) -> dict[str, Any]:
    """An extension whose proto the Python API package lacks; Envoy converts it by type URL."""
    return {
        "@type": type_url("xds.type.v3.TypedStruct"),
        "type_url": type_url(type_name),
        "value": value,
    }


def downstream_tls_context() -> dict[str, Any]:
    """TLS termination with a certificate fetched on demand, per SNI, over ADS."""
    selector = _typed_struct(
        "envoy.extensions.transport_sockets.tls.cert_selectors.on_demand_secret.v3.Config",
        {
            # Over the one ADS stream: any other source opens a gRPC stream per certificate.
            "config_source": ADS,
            "certificate_mapper": {
                "name": "envoy.tls.certificate_mappers.sni",
                "typed_config": _typed_struct(
                    "envoy.extensions.transport_sockets.tls.cert_mappers.sni.v3.SNI",
                    {"default_value": NO_SNI_SECRET},
                ),
            },
        },
    )
    return {
        "@type": type_url("envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"),
        # On-demand certificates require both kinds of session resumption off; it also keeps
        # every connection's certificate choice tied to its own SNI.
        "disable_stateless_session_resumption": True,
        "disable_stateful_session_resumption": True,
        "common_tls_context": {
            "alpn_protocols": ["h2", "http/1.1"],
            "custom_tls_certificate_selector": {
                "name": "envoy.tls.certificate_selectors.on_demand_secret",
                "typed_config": selector,
            },
        },
    }


def _hcm_filter(hcm: dict[str, Any]) -> dict[str, Any]:
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}


def _string_action(name: str) -> dict[str, Any]:
    return {
        "action": {
            "name": name,
            "typed_config": {"@type": type_url("google.protobuf.StringValue"), "value": name},
        }
    }


def _server_name_matches(regex: str) -> dict[str, Any]:
    return {
        "single_predicate": {
            "input": {
                "name": "server_name",
                "typed_config": {
                    "@type": type_url(
                        "envoy.extensions.matching.common_inputs.network.v3.ServerNameInput"
                    )
                },
            },
            "value_match": {"safe_regex": {"google_re2": {}, "regex": regex}},
        }
    }


def server_name_matcher() -> dict[str, Any]:
    """The TLS listener's one filter chain, for a ClientHello without a server name or with one
    in printable ASCII (RFC 6066: a host name in ASCII). Any other server name would become a
    certificate subscription that the agent cannot read (a proto3 string is UTF-8): that
    connection is closed (its action names no filter chain), and nothing else notices."""
    return {
        "matcher_list": {
            "matchers": [
                {
                    "predicate": _server_name_matches("[!-~]+"),
                    "on_match": _string_action(TLS_CHAIN),
                },
                # \C: any byte, UTF-8 or not.
                {"predicate": _server_name_matches(r"\C+"), "on_match": _string_action("refused")},
            ]
        },
        "on_no_match": _string_action(TLS_CHAIN),  # no server name: the policy says why not
    }


def listeners(dp: DataPlane, extras: Extras = Extras()) -> list[dict[str, Any]]:
    """`extras`: the policy's (they change the listeners' filters, and only when they change do
    the listeners drain; routes come over RDS)."""
    tls_listener = {
        "name": TLS_LISTENER,
        **_listener_addresses(dp.listen_addresses, dp.tls_port),
        "listener_filters": [
            {
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {
                    "@type": type_url(
                        "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
                    )
                },
            }
        ],
        # The ClientHello; then the handshake (its certificate fetched on demand) has its own.
        "listener_filters_timeout": _duration(dp.first_bytes_timeout_s),
        "filter_chains": [
            {
                "name": TLS_CHAIN,
                "filters": [_hcm_filter(http_connection_manager(dp, tls=True, extras=extras))],
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": downstream_tls_context(),
                },
                "transport_socket_connect_timeout": _duration(dp.tls_handshake_timeout_s),
            }
        ],
        "filter_chain_matcher": server_name_matcher(),
        "per_connection_buffer_limit_bytes": SIGNED_BODY_LIMIT_BYTES,
    }
    http_listener = {
        "name": HTTP_LISTENER,
        **_listener_addresses(dp.listen_addresses, dp.http_port),
        # It waits for the request line: a connection that sends nothing (or next to nothing)
        # is closed after the same time as on the TLS listener.
        "listener_filters": [
            {
                "name": "envoy.filters.listener.http_inspector",
                "typed_config": {
                    "@type": type_url(
                        "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"
                    )
                },
            }
        ],
        "listener_filters_timeout": _duration(dp.first_bytes_timeout_s),
        "filter_chains": [
            {"filters": [_hcm_filter(http_connection_manager(dp, tls=False, extras=extras))]}
        ],
        "per_connection_buffer_limit_bytes": SIGNED_BODY_LIMIT_BYTES,
    }
    if dp.gateway_port is None:
        return [tls_listener, http_listener]
    return [
        tls_listener,
        http_listener,
        gateway_listener(dp),
        internal_copy(tls_listener, TUNNELED),
        internal_copy(http_listener, PROXIED),
    ]


def gateway_listener(dp: DataPlane) -> dict[str, Any]:
    """The explicit proxy's listener (xds/gateway.py): it routes, the listeners' copies judge."""
    assert dp.gateway_port is not None

    def chain(routes: dict[str, Any]) -> dict[str, Any]:
        return {"filters": [client_state(), _hcm_filter({**hcm, **routes})]}

    hcm = {
        **_connection_manager(dp, GATEWAY_LISTENER),
        # Python's http.client asks for its tunnels in HTTP/1.0.
        "http_protocol_options": {"accept_http_10": True},
        # `CONNECT pypi.org.:443` is pypi.org's tunnel, as the listeners judge pypi.org.
        "strip_trailing_host_dot": True,
        "http2_protocol_options": {
            "max_concurrent_streams": dp.max_concurrent_streams,
            "allow_connect": True,
        },
        # ws:// goes absolute-form, with its upgrade, to the plain-HTTP listener's copy.
        "upgrade_configs": [{"upgrade_type": "CONNECT"}, {"upgrade_type": "websocket"}],
        "access_log": own_answers_only(decision_logs(dp.decision_log_path, tls=None)),
        "http_filters": [
            ROUTER,
        ],
    }
    relayed = dp.gateway_clients_from == "proxy-protocol"
    listener = {
        "name": GATEWAY_LISTENER,
        **_listener_addresses(dp.gateway_addresses, dp.gateway_port),
        "listener_filters": [proxy_protocol()] if relayed else [],
        # Its routes depend on the policy (a host it denies is refused before the tunnel).
        "filter_chains": [
            chain({"rds": {"config_source": ADS, "route_config_name": GATEWAY_LISTENER}})
        ],
    }
    # Matched on the client's address (the PROXY protocol's if relayed), the most specific
    # range winning: another policy's range inside this one's is refused here.
    refused = chain({"route_config": unknown_client_routes()})
    if dp.gateway_clients:
        listener["filter_chains"][0]["filter_chain_match"] = _sources(dp.gateway_clients)
        listener["default_filter_chain"] = refused
    if dp.gateway_other_clients:
        listener["filter_chains"].append(
            {**refused, "filter_chain_match": _sources(dp.gateway_other_clients)}
        )
    return listener


def _sources(ranges: tuple[str, ...]) -> dict[str, Any]:
    return {"source_prefix_ranges": [cidr_range(ipaddress.ip_network(r)) for r in ranges]}


def cidr_range(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> dict[str, Any]:
    """Envoy's CidrRange of `network`."""
    return {"address_prefix": str(network.network_address), "prefix_len": network.prefixlen}


def route_configurations(
    revision: str,
    tls: NativePolicy | None = None,
    plain: NativePolicy | None = None,
    credential_headers: Placeholders = (),
    budget_hosts: BudgetHosts = (),
    hold_s: float | None = None,
    held_hosts: tuple[str, ...] = (),
    gateway: bool = False,
    per_client: bool = False,
) -> list[dict[str, Any]]:
    """Both listeners' routes: the compiled policy's, or (None) the agent's for everything.
    `hold_s`: how long the agent may hold a request for a person's approval (None: never), to
    the hosts of `held_hosts` (exact names, `*.suffix`, `*` for any); `gateway`: the egress
    gateway's routes too; `per_client`: the agent judges every request (each of the gateway's
    clients by its own policy, which only narrows `tls`: the gateway still refuses the tunnels
    `tls` refuses whatever their requests)."""
    holding = (
        None
        if hold_s is None
        else {**authz_service(), "timeout": _duration(hold_s + HOLD_MARGIN_S)}
    )
    listeners = [
        route_configuration(
            name,
            cluster,
            policy,
            revision,
            tls=is_tls,
            credential_headers=credential_headers,
            budget_hosts=budget_hosts,
            holding_service=holding,
            held_hosts=held_hosts,
        )
        for name, cluster, policy, is_tls in (
            (TLS_LISTENER, UPSTREAM_TLS_CLUSTER, None if per_client else tls, True),
            (HTTP_LISTENER, UPSTREAM_PLAIN_CLUSTER, None if per_client else plain, False),
        )
    ]
    return [*listeners, gateway_routes(tls, held_hosts, revision)] if gateway else listeners
