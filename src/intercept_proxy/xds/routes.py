"""The listeners' route configurations (RDS), as pure functions of the compiled policy.

Every virtual host starts with the route for requests the gate did not mark (gate.lua): the agent
judges those over ext_authz. The policy's own routes follow (intercept_proxy.policy.native): an
allow forwards upstream without asking the agent, a denial is answered by Envoy with the same
JSON body the agent writes, and a class the policy could not decide natively asks the agent.
Without a compiled policy (custom Rego modules, a pod's policy narrowing the default), one
virtual host sends everything to the agent.

Each route carries its decision in its metadata, where the decision log (an access log, see
resources.py) reads it.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from intercept_proxy.decision import DECISION_HEADER, POLICY_BLOCKED, VERDICT, Judge, error_body
from intercept_proxy.policy.native import METHODS, NativePolicy, Outcome, Route, VirtualHost
from intercept_proxy.xds.types import type_url

NATIVE_HEADER = "x-intercept-native"
# ext_authz context extension naming the listener's transport: "tls" or "plain".
TRANSPORT_KEY = "intercept_transport"
METADATA_KEY = "intercept"
GATE_FILTER = "envoy.filters.http.lua"
# Uploads to a denied route are read before the answer, up to this size (then Envoy answers 413).
DRAIN_LIMIT_BYTES = 16 * 1024 * 1024
# What the decision log says of a request sent to the agent that got no answer from it: the
# agent did not answer (flags UAEX, Envoy answered 503), or Envoy refused the request first (its
# details say why: a failed upgrade, a client gone).
NO_DECISION = Outcome(
    False,
    "no_decision",
    ": no policy decision was made; the request was not forwarded (see flags and details)",
)


def gate_source(*, tls: bool) -> str:
    """The gate's Lua code for one listener."""
    settings = (
        f"local TLS = {'true' if tls else 'false'}\n"
        f'local SCHEME = "{"https" if tls else "http"}"\n'
        f'local MARK = "{NATIVE_HEADER}"\n'
    )
    return settings + resources.files(__package__).joinpath("gate.lua").read_text()


def target(*, tls: bool) -> str:
    """The request's target as the policy's reasons begin, in Envoy's format language."""
    return f"%REQ(:METHOD)% %REQ(:AUTHORITY)%:{443 if tls else 80}"


def route_field(key: str) -> str:
    """A field of the route's decision (its metadata), in Envoy's format language."""
    return f"%METADATA(ROUTE:{METADATA_KEY}:{key})%"


def _escape(text: str) -> str:
    return text.replace("%", "%%")


def _metadata(outcome: Outcome, revision: str, *, judge: Judge) -> dict[str, Any]:
    """`judge` ENVOY: the route decides; NONE: the agent should have (it logs its own)."""
    verdict = dict(
        zip(VERDICT, (outcome.allow, outcome.rule, outcome.reason, revision), strict=True)
    )
    return {"filter_metadata": {METADATA_KEY: {**verdict, "judge": judge.value}}}


def _authz_per_route(*, tls: bool) -> dict[str, Any]:
    return {
        "envoy.filters.http.ext_authz": {
            "@type": type_url("envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"),
            "check_settings": {"context_extensions": {TRANSPORT_KEY: "tls" if tls else "plain"}},
        }
    }


_NO_AUTHZ = {
    "envoy.filters.http.ext_authz": {
        "@type": type_url("envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"),
        "disabled": True,
    }
}
_DECISION_ID = [
    {
        "header": {"key": DECISION_HEADER, "value": "%STREAM_ID%"},
        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
    }
]


def _forward(cluster: str) -> dict[str, Any]:
    # No total timeout: streams and long polls; the listener's idle timeout applies.
    return {"cluster": cluster, "timeout": "0s"}


def agent_route(cluster: str, revision: str, *, tls: bool) -> dict[str, Any]:
    """Judged by the agent (ext_authz), then forwarded."""
    return {
        "name": "agent",
        "match": {"prefix": "/"},
        "route": _forward(cluster),
        "typed_per_filter_config": _authz_per_route(tls=tls),
        "metadata": _metadata(NO_DECISION, revision, judge=Judge.NONE),
    }


def denial_body(rule: str, reason: str, *, tls: bool) -> dict[str, Any]:
    """The agent's JSON denial, in Envoy's format language (`reason` follows the target)."""
    return {
        "content_type": "application/json",
        "json_format": error_body(
            POLICY_BLOCKED, target(tls=tls) + reason, rule=rule, decision_id="%STREAM_ID%"
        ),
    }


def _denial(outcome: Outcome, *, tls: bool) -> dict[str, Any]:
    body = denial_body(_escape(outcome.rule), _escape(outcome.reason), tls=tls)
    return {"status": 403, "body_format": body}


def oversized_denial(*, tls: bool) -> dict[str, Any]:
    """A local-reply mapper: an upload too large to read to its end (only denying routes read
    one, see gate.lua) still gets its route's denial."""
    return {
        "filter": {
            "status_code_filter": {
                "comparison": {
                    "op": "EQ",
                    "value": {"default_value": 413, "runtime_key": "intercept.drain_status"},
                }
            }
        },
        "status_code": 403,
        "body_format_override": denial_body(route_field("rule"), route_field("reason"), tls=tls),
    }


def _match(route: Route) -> dict[str, Any]:
    match: dict[str, Any] = (
        {"safe_regex": {"regex": route.path}} if route.path is not None else {"prefix": "/"}
    )
    methods = "|".join(route.methods) if set(route.methods) != set(METHODS) else None
    headers = [
        {"name": name, "string_match": {"safe_regex": {"regex": regex}}}
        for name, regex in (
            (":method", methods),
            (":path", route.path_and_query),
            (":authority", route.authority),
        )
        if regex is not None
    ]
    if headers:
        match["headers"] = headers
    return match


def policy_route(
    route: Route, name: str, cluster: str, revision: str, *, tls: bool
) -> dict[str, Any]:
    outcome = route.outcome
    if outcome.allow is None:
        return {**agent_route(cluster, revision, tls=tls), "name": name, "match": _match(route)}
    # Envoy decides: ext_authz (before the router, which answers a direct response) stays out.
    out: dict[str, Any] = {
        "name": name,
        "match": _match(route),
        "typed_per_filter_config": _NO_AUTHZ,
        "metadata": _metadata(outcome, revision, judge=Judge.ENVOY),
    }
    if outcome.allow:
        out["route"] = _forward(cluster)
    else:
        out["direct_response"] = _denial(outcome, tls=tls)
        # The gate reads the upload to its end first (gate.lua), up to this much.
        out["metadata"]["filter_metadata"][GATE_FILTER] = {"drain": True}
        out["request_body_buffer_limit"] = DRAIN_LIMIT_BYTES
    out["response_headers_to_add"] = _DECISION_ID
    return out


def _unmarked(cluster: str, revision: str, *, tls: bool) -> dict[str, Any]:
    route = agent_route(cluster, revision, tls=tls)
    mark = {"name": NATIVE_HEADER, "present_match": True, "invert_match": True}
    return {**route, "name": "unmarked", "match": {"prefix": "/", "headers": [mark]}}


def _virtual_host(host: VirtualHost, cluster: str, revision: str, *, tls: bool) -> dict[str, Any]:
    name = "any" if host.domain == "*" else host.domain
    routes = [_unmarked(cluster, revision, tls=tls)]
    routes += [
        policy_route(route, f"{i}:{route.outcome.rule or 'agent'}", cluster, revision, tls=tls)
        for i, route in enumerate(host.routes)
    ]
    return {"name": name, "domains": [host.domain], "routes": routes}


def route_configuration(
    name: str, cluster: str, policy: NativePolicy | None, revision: str, *, tls: bool
) -> dict[str, Any]:
    """`policy` None: the agent judges every request."""
    if policy is not None and policy.tls != tls:
        raise ValueError(
            f"route configuration {name}: the policy was compiled for the other listener"
        )
    if policy is None:
        virtual_hosts = [
            {"name": "any", "domains": ["*"], "routes": [agent_route(cluster, revision, tls=tls)]}
        ]
    else:
        virtual_hosts = [_virtual_host(h, cluster, revision, tls=tls) for h in policy.hosts]
    return {
        "name": name,
        "virtual_hosts": virtual_hosts,
        # What the workload sent goes upstream, with the decision id (x-request-id: the decision
        # log and the response header read it from there); not the gate's mark.
        "request_headers_to_remove": ["x-forwarded-proto", NATIVE_HEADER],
    }
