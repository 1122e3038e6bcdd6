"""The listeners' route configurations (RDS), as pure functions of the compiled policy.

Every virtual host starts with its gate: routes to the agent, which judges over ext_authz, for
any request that is not canonical (see `intercept_proxy.policy.native`): an unusual scheme or
method, a host name in another spelling than its canonical one, an SNI that is not the host, a
path the policy cannot judge, a protocol upgrade, a read that sends a body where that changes
its decision. Each is one of Envoy's own header matchers; the facts a matcher cannot read
(the SNI, the HTTP version, a transfer encoding, which Envoy takes out of the headers before
routing) are written into request headers first (`request_facts`). A wildcard's virtual host
cannot compare two names with a matcher: its routes that decide in Envoy turn on a check by the
agent that a matcher creates only when the SNI is not the host (`SNI_CHECK_FILTER`). An
HTTP/2 or HTTP/3 read needs no header to send a body: on the routes where that matters, Envoy's
buffer filter reads the body (and writes its length) and the agent judges the read if it sent
one.
The policy's own routes follow: an allow forwards upstream without asking the agent (but for a
wildcard's SNI check), a denial is answered by Envoy with the same JSON body the agent writes,
and a class the policy could not decide natively asks the agent. Without a compiled policy
(custom Rego modules, a pod's policy narrowing the default), one virtual host sends everything
to the agent.

Each route carries its decision in its metadata, where the decision log (an access log, see
resources.py) reads it.
"""

from __future__ import annotations

import re
from typing import Any

from intercept_proxy.decision import (
    CLIENT_STATE,
    COUNTED,
    DECISION_HEADER,
    POLICY_BLOCKED,
    VERDICT,
    Judge,
    counted,
    error_body,
)
from intercept_proxy.policy.credentials import Placeholders
from intercept_proxy.policy.limits import host_matches
from intercept_proxy.policy.native import (
    METHODS,
    NativePolicy,
    Outcome,
    Route,
    VirtualHost,
    rego_facts,
)
from intercept_proxy.xds.types import type_url

# A budget's host, and whether it counts bytes (the body must be read for its length).
BudgetHosts = tuple[tuple[str, bool], ...]
# Facts about the request written before routing. The listener removes any copy the client
# sent; none goes upstream.
SNI_HEADER = "x-intercept-sni"
PROTOCOL_HEADER = "x-intercept-protocol"
ENCODING_HEADER = "x-intercept-transfer-encoding"
# The egress gateway's client (its address, as the gateway saw it): the agent judges a client by
# the policy of its pod (agent/clients.py).
CLIENT_HEADER = "x-intercept-client"
INTERNAL_HEADERS = (SNI_HEADER, PROTOCOL_HEADER, ENCODING_HEADER, CLIENT_HEADER)
# ext_authz context extension naming the listener's transport: "tls" or "plain".
TRANSPORT_KEY = "intercept_transport"
METADATA_KEY = "intercept"
# Filters that are off unless a route turns them on: Envoy's buffer filter, which reads a
# request's body to its end (an upload before a denial, a read's body before the check below),
# and writes its length; and the agent's check of a read that sent a body (ext_authz, created
# only for a request with a length other than 0).
BUFFER_FILTER = "envoy.filters.http.buffer"
SENT_CHECK_FILTER = "intercept.read_with_body"
# The agent's check of a request whose SNI is not its host, created only for such a request (an
# expression compares them: resources.py), on a wildcard's routes that decide in Envoy; an exact
# name's gate compares the SNI with its name, and the agent judges every other route's requests.
SNI_CHECK_FILTER = "intercept.sni_is_not_host"
# Bodies are read up to this size (then Envoy answers 413).
BUFFER_LIMIT_BYTES = 16 * 1024 * 1024
# What the decision log says of a request sent to the agent that got no answer from it: the
# agent did not answer (flags UAEX, Envoy answered 503), or Envoy refused the request first (its
# details say why: a failed upgrade, a client gone).
NO_DECISION = Outcome(
    False,
    "no_decision",
    ": no policy decision was made; the request was not forwarded (see flags and details)",
)
# Host names the routes decide: lower-case labels of letters, digits, '_' and '-' (not at either
# end), the last starting with a letter (never an IP address), at most 253 characters.
_LABEL = "[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_LAST_LABEL = "[a-z](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_NAME_LENGTH = ".{1,253}"


def wildcard_regex(domain: str) -> str:
    """The host names a wildcard domain (`*`, `*.suffix`) matches, as a regular expression."""
    if domain == "*":
        return f"(?:{_LABEL}\\.)*{_LAST_LABEL}"
    return f"(?:{_LABEL}\\.)+{re.escape(domain[2:])}"


def any_spelling(host: str) -> str:
    """Every way a request may name `host` (an exact name or `*.suffix`) that the policy takes
    for it: in any case, with a port (the listener takes a trailing dot off)."""
    name = wildcard_regex(host) if host.startswith("*") else re.escape(host)
    return f"(?i)(?:{name})(?::[0-9]{{1,5}})?"


def request_facts(*, tls: bool, gateway: bool = False) -> dict[str, str]:
    """Headers the listener writes before routing, in Envoy's format language (`gateway`: the
    listener also serves the egress gateway's clients)."""
    # An absent request header formats as nothing, and then no header is written.
    facts = {PROTOCOL_HEADER: "%PROTOCOL%", ENCODING_HEADER: "%REQ(transfer-encoding)%"}
    if tls:
        # A plain substitution: an expression comparing it with the host here would run on
        # every request (about a tenth of Envoy's CPU per request, measured with `make bench`).
        facts[SNI_HEADER] = "%REQUESTED_SERVER_NAME%"
    if gateway:  # the gateway's connections alone carry it: on others, no header is written
        facts[CLIENT_HEADER] = f"%FILTER_STATE({CLIENT_STATE}:PLAIN)%"
    return facts


def target(*, tls: bool | None) -> str:
    """The request's target as the policy's reasons begin, in Envoy's format language (`tls`
    None: a proxy's CONNECT, whose authority has its port)."""
    port = "" if tls is None else f":{443 if tls else 80}"
    return f"%REQ(:METHOD)% %REQ(:AUTHORITY)%{port}"


def route_field(key: str) -> str:
    """A field of the route's decision (its metadata), in Envoy's format language."""
    return f"%METADATA(ROUTE:{METADATA_KEY}:{key})%"


def _escape(text: str) -> str:
    return text.replace("%", "%%")


def _metadata(outcome: Outcome, revision: str | None, *, judge: Judge) -> dict[str, Any]:
    """`judge` ENVOY: the route decides; NONE: the agent should have (it logs its own)."""
    verdict = dict(
        zip(VERDICT, (outcome.allow, outcome.rule, outcome.reason, revision), strict=True)
    )
    count = counted(judge, outcome.allow, outcome.rule)
    return {"filter_metadata": {METADATA_KEY: {**verdict, "judge": judge.value, COUNTED: count}}}


# Off unless a route turns it on: a canonical request the policy decides in Envoy costs no
# more than routing (and, to a wildcard, the SNI check's matcher). Every route that leaves the
# decision to the agent turns it on; a route without a decision of its own forwards nothing
# unjudged (tests/xds/test_routes.py).
AUTHZ_FILTER = "envoy.filters.http.ext_authz"
_AUTHZ_PER_ROUTE = type_url("envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute")


def _authz_per_route(*, tls: bool, name: str = AUTHZ_FILTER) -> dict[str, Any]:
    check = {"context_extensions": {TRANSPORT_KEY: "tls" if tls else "plain"}}
    return _per_route(name, {"@type": _AUTHZ_PER_ROUTE, "check_settings": check})


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


def denial_body(rule: str, reason: str, *, tls: bool | None) -> dict[str, Any]:
    """The agent's JSON denial, in Envoy's format language (`reason` follows the target)."""
    return {
        "content_type": "application/json",
        "json_format": error_body(
            POLICY_BLOCKED, target(tls=tls) + reason, rule=rule, decision_id="%STREAM_ID%"
        ),
    }


def _denial(outcome: Outcome, *, tls: bool | None) -> dict[str, Any]:
    body = denial_body(_escape(outcome.rule), _escape(outcome.reason), tls=tls)
    return {"status": 403, "body_format": body}


def denial_route(
    name: str, match: dict[str, Any], outcome: Outcome, revision: str | None, *, tls: bool | None
) -> dict[str, Any]:
    """A route on which Envoy answers `outcome`'s denial itself, and logs it as its decision
    (`revision`: the policy's, None for the gateway's own refusals)."""
    return {
        "name": name,
        "match": match,
        "metadata": _metadata(outcome, revision, judge=Judge.ENVOY),
        "direct_response": _denial(outcome, tls=tls),
    }


def status_filter(status: int, runtime_key: str, op: str = "EQ") -> dict[str, Any]:
    """An access log filter (a local reply mapper's too) comparing the status code."""
    comparison = {"op": op, "value": {"default_value": status, "runtime_key": runtime_key}}
    return {"status_code_filter": {"comparison": comparison}}


def cel_filter(expression: str) -> dict[str, Any]:
    """An access log filter (a local reply mapper's too) of a CEL expression."""
    config = "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter"
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {"@type": type_url(config), "expression": expression},
        }
    }


def when_status(status: int, runtime_key: str, expression: str) -> dict[str, Any]:
    """A filter true for that status where the CEL expression holds: the CEL only runs for it."""
    return {"and_filter": {"filters": [status_filter(status, runtime_key), cel_filter(expression)]}}


def unless_status(status: int, runtime_key: str, expression: str) -> dict[str, Any]:
    """A filter true for any other status, and for that one where the CEL expression holds: the
    CEL only runs for it."""
    below = status_filter(status - 1, f"{runtime_key}_below", "LE")
    above = status_filter(status + 1, f"{runtime_key}_above", "GE")
    return {"or_filter": {"filters": [below, above, cel_filter(expression)]}}


def _route_says(key: str) -> str:
    return f"xds.route_metadata.filter_metadata['{METADATA_KEY}']['{key}']"


# In CEL: the request's route is one on which Envoy denies (not an agent's, not an allow). True
# or false, never an error (which a filter takes for false, either way round): a request with no
# route, or a route without our metadata, is no denial.
ROUTE_DENIES = (
    f"has(xds.route_metadata) && has(xds.route_metadata.filter_metadata.{METADATA_KEY})"
    f" && {_route_says('judge')} == '{Judge.ENVOY.value}' && {_route_says('allow')} == false"
)


def oversized_denial(*, tls: bool) -> dict[str, Any]:
    """A local-reply mapper: an upload too large to read to its end on a denying route still
    gets its route's denial (other routes' 413s are refused as such: resources.py)."""
    return {
        "filter": when_status(413, "intercept.drain_status", ROUTE_DENIES),
        "status_code": 403,
        "body_format_override": denial_body(route_field("rule"), route_field("reason"), tls=tls),
    }


def _match(route: Route) -> dict[str, Any]:
    match: dict[str, Any] = (
        {"safe_regex": {"regex": route.path}} if route.path is not None else {"prefix": "/"}
    )
    methods = "|".join(route.methods) if set(route.methods) != set(METHODS) else None
    headers = [
        _regex(name, regex)
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


def _per_route(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """Turns on, for one route, a filter that is off by default."""
    return {name: {"@type": type_url("envoy.config.route.v3.FilterConfig"), "config": config}}


def _buffer() -> dict[str, Any]:
    return _per_route(
        BUFFER_FILTER,
        {
            "@type": type_url("envoy.extensions.filters.http.buffer.v3.BufferPerRoute"),
            "buffer": {"max_request_bytes": BUFFER_LIMIT_BYTES},
        },
    )


def policy_route(
    route: Route, name: str, cluster: str, revision: str, *, tls: bool
) -> dict[str, Any]:
    outcome = route.outcome
    if outcome.allow is None:
        return {**agent_route(cluster, revision, tls=tls), "name": name, "match": _match(route)}
    # Envoy decides: ext_authz stays off.
    out: dict[str, Any] = {
        "name": name,
        "match": _match(route),
        "metadata": _metadata(outcome, revision, judge=Judge.ENVOY),
    }
    if outcome.allow:
        out["route"] = _forward(cluster)
    else:
        out["direct_response"] = _denial(outcome, tls=tls)
        # The upload is read to its end first: HTTP/2 clients such as curl take an answer that
        # overtakes their upload (and Envoy's reset after it) for a stream error.
        out["typed_per_filter_config"] = _buffer()
    out["response_headers_to_add"] = _DECISION_ID
    return out


def _header(name: str, **match: Any) -> dict[str, Any]:
    return {"name": name, **match}


def _string(name: str, match: dict[str, Any], *, invert: bool) -> dict[str, Any]:
    # Inverted, an absent header must match (Envoy's default is not to): a fact the listener
    # failed to write sends the request to the agent rather than past it.
    inverted = {"invert_match": True, "treat_missing_header_as_empty": True}
    return _header(name, string_match=match, **(inverted if invert else {}))


def _exact(name: str, value: str, *, invert: bool = False) -> dict[str, Any]:
    return _string(name, {"exact": value}, invert=invert)


def _regex(name: str, regex: str, *, invert: bool = False) -> dict[str, Any]:
    return _string(name, {"safe_regex": {"regex": regex}}, invert=invert)


def _present(name: str) -> dict[str, Any]:
    return _header(name, present_match=True)


def gate(
    host: VirtualHost, *, tls: bool, credential_headers: Placeholders = ()
) -> list[tuple[str, dict[str, Any]]]:
    """The conditions (each a name and a route match) under which a request to this virtual
    host goes to the agent rather than to the policy's routes."""
    any_path = {"prefix": "/"}
    conditions = [
        ("scheme", [_exact(":scheme", "https" if tls else "http", invert=True)]),
        ("method", [_regex(":method", "|".join(METHODS), invert=True)]),
        # A protocol upgrade (a WebSocket) never ends its request: no route that reads an upload
        # first could answer it.
        ("upgrade", [_present("upgrade")]),
        # A credential's header holding anything but a placeholder (as it is, as a bearer
        # token, signed with AWS placeholder keys): the agent looks for the secret in it (see
        # authz/service.py).
        *(
            (f"credential:{name}", [_present(name), _regex(name, _sent_as(values), invert=True)])
            for name, values in credential_headers
        ),
    ]
    if host.domain.startswith("*"):
        conditions += [
            ("host", [_regex(":authority", wildcard_regex(host.domain), invert=True)]),
            ("host-length", [_regex(":authority", _NAME_LENGTH, invert=True)]),
        ]
    else:
        conditions.append(("host", [_exact(":authority", host.domain, invert=True)]))
        if tls:
            # The host is the name (above): so must the SNI be. A wildcard's: SNI_CHECK_FILTER.
            conditions.append(("sni", [_exact(SNI_HEADER, host.domain, invert=True)]))
    if any(r.bodyless for r in host.routes):
        reads = _regex(":method", "|".join(rego_facts().read_methods))
        conditions += [
            # No length: nothing sent, or chunked (the next gate), or a later HTTP version
            # (its body is read on the `:sends` route).
            ("sends-length", [reads, _regex("content-length", "0*[1-9][0-9]*")]),
            ("sends-chunked", [reads, _present(ENCODING_HEADER)]),
        ]
    out: list[tuple[str, dict[str, Any]]] = [
        (name, {**any_path, "headers": headers}) for name, headers in conditions
    ]
    if any(r.path is not None or r.path_and_query is not None for r in host.routes):
        segments = f"(?:[^/]*/){{{rego_facts().max_segments + 1}}}.*"
        out.append(("segments", {"safe_regex": {"regex": segments}}))
    return out


def _sent_as(forms: tuple[str, ...]) -> str:
    return "|".join(f"(?:{form})" for form in forms)


def _policy_routes(
    host: VirtualHost, cluster: str, revision: str, *, tls: bool
) -> list[dict[str, Any]]:
    out = []
    for i, route in enumerate(host.routes):
        entry = policy_route(
            route, f"{i}:{route.outcome.rule or 'agent'}", cluster, revision, tls=tls
        )
        if tls and host.domain.startswith("*") and route.outcome.allow is not None:
            check = _authz_per_route(tls=True, name=SNI_CHECK_FILTER)
            entry = {
                **entry,
                "typed_per_filter_config": {**entry.get("typed_per_filter_config", {}), **check},
            }
        if route.bodyless and route.outcome.allow is not None:
            # HTTP/1.1 passed the gate's look at its headers; later versions get their body
            # read, and judged by the agent if there was one.
            http1 = _exact(PROTOCOL_HEADER, "HTTP/1.1")
            match = entry["match"]
            out.append({**entry, "match": {**match, "headers": [*match.get("headers", []), http1]}})
            entry = {
                **entry,
                "name": entry["name"] + ":sends",
                "typed_per_filter_config": {
                    **entry.get("typed_per_filter_config", {}),
                    **_buffer(),
                    **_authz_per_route(tls=tls, name=SENT_CHECK_FILTER),
                },
            }
        out.append(entry)
    return out


def budget_routes(
    budget_hosts: BudgetHosts, cluster: str, revision: str, *, tls: bool
) -> list[dict[str, Any]]:
    """First in every virtual host: each request to a budgeted host, however it names it, goes
    to the agent, which charges its budget; where the budget counts bytes, with its body read
    first (its length known, HTTP/2 or chunked). Not a protocol upgrade (its body never ends):
    the gate sends that to the agent as it is, which refuses it where bytes are counted."""
    routes = []
    for host, read_body in budget_hosts:
        headers = [
            _regex(":authority", any_spelling(host)),
            _header("upgrade", present_match=False),
        ]
        route = agent_route(cluster, revision, tls=tls)
        filters = {**route["typed_per_filter_config"], **(_buffer() if read_body else {})}
        routes.append(
            {
                **route,
                "name": f"budget:{host}",
                "match": {"prefix": "/", "headers": headers},
                "typed_per_filter_config": filters,
            }
        )
    return routes


def _virtual_host(
    host: VirtualHost,
    cluster: str,
    revision: str,
    *,
    tls: bool,
    credential_headers: Placeholders,
    budget_hosts: BudgetHosts,
) -> dict[str, Any]:
    name = "any" if host.domain == "*" else host.domain
    routes = budget_routes(budget_hosts, cluster, revision, tls=tls)
    routes += [
        {**agent_route(cluster, revision, tls=tls), "name": f"gate:{condition}", "match": match}
        for condition, match in gate(host, tls=tls, credential_headers=credential_headers)
    ]
    routes += _policy_routes(host, cluster, revision, tls=tls)
    return {"name": name, "domains": [host.domain], "routes": routes}


def _may_ask(domain: str, held_hosts: tuple[str, ...]) -> bool:
    """Whether a request in the virtual host of `domain` may be held for approval: `*` gets
    whatever no other takes (other ports included), a name or a wildcard what it shares with
    an approvals host."""
    if domain == "*" or "*" in held_hosts:
        return True
    return any(host_matches(h, domain) or host_matches(domain, h) for h in held_hosts)


def _holding(route: dict[str, Any], service: dict[str, Any]) -> dict[str, Any]:
    """`route` with each of its checks by the agent made through `service` (a read that sent a
    body may be asked about too). Not the SNI check of a route that decides in Envoy: no person
    is ever asked about what it finds (a mismatch, or the route's own decision), so a hung agent
    fails it closed at once."""

    def held(name: str, wrapper: dict[str, Any]) -> dict[str, Any]:
        config = wrapper["config"]
        if name == SNI_CHECK_FILTER or config.get("@type") != _AUTHZ_PER_ROUTE:
            return wrapper
        check = {**config["check_settings"], "grpc_service": service}
        return {**wrapper, "config": {**config, "check_settings": check}}

    filters = route.get("typed_per_filter_config", {})
    if not filters:
        return route
    return {**route, "typed_per_filter_config": {n: held(n, w) for n, w in filters.items()}}


def route_configuration(
    name: str,
    cluster: str,
    policy: NativePolicy | None,
    revision: str,
    *,
    tls: bool,
    credential_headers: Placeholders = (),
    budget_hosts: BudgetHosts = (),
    holding_service: dict[str, Any] | None = None,
    held_hosts: tuple[str, ...] = (),
) -> dict[str, Any]:
    """`policy` None: the agent judges every request. `credential_headers`: the headers the
    credentials of the operator's policy are sent in (whichever policy decides), with their
    placeholders: a request that carries one with another value goes to the agent, which
    refuses it if it holds a secret. `budget_hosts`: the operator's budgets' hosts, each with
    whether its budget counts bytes. `holding_service`: the agent's check service with the
    timeout of a request held for a person's approval, on the virtual hosts whose names may be
    asked about (`held_hosts`: the approvals' hosts, `*` for any); the others keep the
    filter's short timeout, so a hung agent fails them closed at once."""
    if policy is not None and policy.tls != tls:
        raise ValueError(
            f"route configuration {name}: the policy was compiled for the other listener"
        )
    if policy is None:
        routes = budget_routes(budget_hosts, cluster, revision, tls=tls)
        routes.append(agent_route(cluster, revision, tls=tls))
        virtual_hosts: list[dict[str, Any]] = [{"name": "any", "domains": ["*"], "routes": routes}]
    else:
        virtual_hosts = [
            _virtual_host(
                h,
                cluster,
                revision,
                tls=tls,
                credential_headers=credential_headers,
                budget_hosts=budget_hosts,
            )
            for h in policy.hosts
        ]
    if holding_service is not None:
        virtual_hosts = [
            {**vh, "routes": [_holding(r, holding_service) for r in vh["routes"]]}
            if _may_ask(vh["domains"][0], held_hosts)
            else vh
            for vh in virtual_hosts
        ]
    return {
        "name": name,
        "virtual_hosts": virtual_hosts,
        # What the workload sent goes upstream, with the decision id (x-request-id: the decision
        # log and the response header read it from there); not the listener's own headers.
        "request_headers_to_remove": ["x-forwarded-proto", *INTERNAL_HEADERS],
    }
