"""The listeners' routes, from the compiled policy: golden files, protobuf parsing, and the
invariants that keep Envoy's own decisions and the agent's apart."""

from __future__ import annotations

import pytest

from intercept_proxy.decision import COUNTED, Judge, counted
from intercept_proxy.policy import approvals
from intercept_proxy.policy.credentials import placeholders
from intercept_proxy.policy.engine import RegorusEngine
from intercept_proxy.policy.model import parse_policy
from intercept_proxy.policy.native import NativePolicy, Outcome, Route, VirtualHost, compile_policy
from intercept_proxy.xds import gateway, protos, resources, routes, types
from intercept_proxy.xds.types import type_url
from tests.golden import assert_golden
from tests.xds.test_resources import CLIENTS, DEFAULT, GATEWAY

POLICY = parse_policy(
    """
allowed_domains: [pypi.org, "*.pythonhosted.org"]
unrestricted_domains: [api.anthropic.com]
github_read_access_enabled: true
github_allowed_repos: [octo/hello]
aws_access_enabled: true
aws_allowed_services: [s3]
credentials: [{host: api.anthropic.com, header: x-api-key, env: ANTHROPIC_API_KEY}]
"""
)
REVISION = POLICY.revision


@pytest.fixture(scope="module")
def compiled() -> list[dict]:
    engine = RegorusEngine(POLICY)
    return resources.route_configurations(
        REVISION,
        compile_policy(POLICY, engine, tls=True),
        compile_policy(POLICY, engine, tls=False),
        placeholders(POLICY.credentials),
    )


def test_compiled_routes_golden(compiled):
    assert_golden("xds/routes-compiled.json", compiled)


def test_agent_routes_golden():
    assert_golden("xds/routes-agent.json", resources.route_configurations(REVISION))


def test_every_route_configuration_parses_as_protobuf(compiled):
    for config in [*compiled, *resources.route_configurations(REVISION)]:
        assert protos.to_message(types.ROUTE, config).name == config["name"]


def test_every_virtual_host_starts_with_its_gate_to_the_agent(compiled):
    sni_checked = 0
    for config in compiled:
        tls = config["name"] == resources.TLS_LISTENER
        for vhost in config["virtual_hosts"]:
            names = [r["name"] for r in vhost["routes"]]
            gates = [n for n in names if n.startswith("gate:")]
            assert names[: len(gates)] == gates
            assert {"gate:scheme", "gate:method", "gate:upgrade", "gate:host"} <= set(gates)
            # A request carrying a credential's header: the agent looks for its secret.
            assert "gate:credential:x-api-key" in gates
            wildcard = vhost["domains"][0].startswith("*")
            if tls and not wildcard:
                (sni,) = (r for r in vhost["routes"] if r["name"] == "gate:sni")
                (header,) = sni["match"]["headers"]
                assert header["string_match"] == {"exact": vhost["domains"][0]}
            # An exact name's gate compares the SNI with it; a wildcard's routes that decide in
            # Envoy have the agent check an SNI that is not the host (its own filter).
            assert ("gate:sni" in gates) == (tls and not wildcard)
            for route in vhost["routes"][len(gates) :]:
                decides = route.get("metadata", {}).get("filter_metadata", {})
                in_envoy = decides.get(routes.METADATA_KEY, {}).get("judge") == "envoy"
                checked = routes.SNI_CHECK_FILTER in route.get("typed_per_filter_config", {})
                assert checked == (tls and wildcard and in_envoy), (vhost["name"], route["name"])
                sni_checked += checked
            assert ("gate:host-length" in gates) == wildcard
            for route in vhost["routes"][: len(gates)]:
                assert route["route"] and _authz(route)["check_settings"]
                # A fact the listener did not write (an absent header) still opens the gate.
                for header in route["match"].get("headers", []):
                    if header.get("invert_match"):
                        assert header["treat_missing_header_as_empty"], (route["name"], header)
    # *.pythonhosted.org's routes decide in Envoy.
    assert sni_checked > 0


def test_reads_decided_only_if_they_send_nothing_are_looked_at_first(compiled):
    """A read-only host's reads: HTTP/1.1 shows in its headers whether it sends something (the
    gate looks), later versions get their body read, and judged by the agent if they sent one."""
    sends_gates = {"gate:sends-length", "gate:sends-chunked"}
    checked = set()
    for config in compiled:
        tls = config["name"] == resources.TLS_LISTENER
        for vhost in config["virtual_hosts"]:
            by_name = {r["name"]: r for r in vhost["routes"]}
            for name, route in by_name.items():
                filters = route.get("typed_per_filter_config", {})
                sends = routes.SENT_CHECK_FILTER in filters
                assert sends == name.endswith(":sends")
                if sends:
                    assert sends_gates <= by_name.keys()
                    http1 = by_name[name.removesuffix(":sends")]
                    assert http1["match"]["headers"][-1]["name"] == routes.PROTOCOL_HEADER
                    # The body is read first, then the agent judges a read that sent one.
                    assert routes.BUFFER_FILTER in filters
                    transport = "tls" if tls else "plain"
                    check = filters[routes.SENT_CHECK_FILTER]["config"]["check_settings"]
                    assert check["context_extensions"] == {routes.TRANSPORT_KEY: transport}
                    checked.add(vhost["domains"][0])
    # pypi.org is in allowed_domains (reads only); api.anthropic.com is unrestricted.
    assert "pypi.org" in checked and "api.anthropic.com" not in checked


def _authz(route: dict) -> dict | None:
    """The agent's check as the route turns it on (ext_authz is off by default)."""
    wrapper = route.get("typed_per_filter_config", {}).get(routes.AUTHZ_FILTER)
    if wrapper is None:
        return None
    assert wrapper["@type"].endswith("envoy.config.route.v3.FilterConfig")
    return wrapper["config"]


@pytest.mark.parametrize("compiled_or_not", ["compiled", "agent only"])
def test_nothing_is_forwarded_unjudged(compiled, compiled_or_not):
    """ext_authz is off unless a route turns it on: every route either carries Envoy's own
    decision, or turns the agent's check on."""
    configs = compiled if compiled_or_not == "compiled" else resources.route_configurations("r")
    for config in configs:
        tls = config["name"] == resources.TLS_LISTENER
        for vhost in config["virtual_hosts"]:
            for route in vhost["routes"]:
                decision = route["metadata"]["filter_metadata"][routes.METADATA_KEY]
                # What Envoy counts is what the route decides.
                judge = Judge(decision["judge"])
                assert decision[COUNTED] == counted(judge, decision["allow"], decision["rule"])
                authz = _authz(route)
                if decision["judge"] == "envoy":
                    assert decision["allow"] in (True, False)
                    assert route.get("direct_response") or route["route"]
                    assert authz is None
                else:  # the agent decides; if it cannot answer, the log says so
                    expected = {
                        **routes.NO_DECISION.__dict__,
                        "judge": "none",
                        "counted": "none|false|no_decision",
                    }
                    policy_revision = decision["policy_revision"]
                    assert decision == {**expected, "policy_revision": policy_revision}
                    transport = "tls" if tls else "plain"
                    assert authz == {
                        "@type": type_url(
                            "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
                        ),
                        "check_settings": {"context_extensions": {routes.TRANSPORT_KEY: transport}},
                    }


def test_a_policy_compiled_for_one_listener_is_refused_for_the_other():
    compiled_tls = compile_policy(POLICY, RegorusEngine(POLICY), tls=True)
    with pytest.raises(ValueError, match="other listener"):
        routes.route_configuration("x", "c", compiled_tls, REVISION, tls=False)


@pytest.mark.parametrize("compiled_or_not", ["compiled", "agent only"])
def test_requests_to_budgeted_hosts_go_to_the_agent_with_their_body_read(compiled_or_not):
    engine = RegorusEngine(POLICY)
    budgets = (("api.anthropic.com", True), ("*.pythonhosted.org", False))
    native = [compile_policy(POLICY, engine, tls=t) for t in (True, False)]
    args = native if compiled_or_not == "compiled" else [None, None]
    for config in resources.route_configurations(REVISION, *args, budget_hosts=budgets):
        for vhost in config["virtual_hosts"]:
            first = vhost["routes"][:2]
            assert [r["name"] for r in first] == [f"budget:{h}" for h, _ in budgets]
            for route, (_, counts_bytes) in zip(first, budgets, strict=True):
                filters = route["typed_per_filter_config"]
                # The body is read where bytes are counted, never otherwise.
                assert routes.AUTHZ_FILTER in filters
                assert (routes.BUFFER_FILTER in filters) == counts_bytes
                # Any spelling of the host; never an upgrade (its body does not end).
                authority, upgrade = route["match"]["headers"]
                assert authority["name"] == ":authority"
                assert authority["string_match"]["safe_regex"]["regex"].startswith("(?i)")
                assert upgrade == {"name": "upgrade", "present_match": False}


def _checks(config: dict, name: str = routes.AUTHZ_FILTER) -> list[dict]:
    """Every per-route setting of the agent's checks in a route configuration (by `name`: the
    agent's own, or the wildcards' SNI check)."""
    return [
        route["typed_per_filter_config"][name]["config"]["check_settings"]
        for vhost in config["virtual_hosts"]
        for route in vhost["routes"]
        if name in route.get("typed_per_filter_config", {})
    ]


def _held(config: dict, timeout: str) -> dict[str, bool]:
    """Each virtual host: whether its checks of the agent wait `timeout` (all, or none)."""
    service = {"envoy_grpc": {"cluster_name": resources.AUTHZ_CLUSTER}, "timeout": timeout}
    out = {}
    for vhost in config["virtual_hosts"]:
        checks = _checks({"virtual_hosts": [vhost]})
        held = [c.get("grpc_service") == service for c in checks]
        assert all(held) or not any(held), vhost["name"]
        assert all("grpc_service" not in c for c, h in zip(checks, held, strict=True) if not h)
        out[vhost["name"]] = bool(held) and all(held)
    return out


def test_with_approvals_the_checks_that_may_be_asked_wait_for_a_person():
    engine = RegorusEngine(POLICY)
    native = [compile_policy(POLICY, engine, tls=t) for t in (True, False)]
    for config in resources.route_configurations(
        REVISION, *native, hold_s=30, held_hosts=("api.anthropic.com", "*.pythonhosted.org")
    ):
        held = _held(config, "35s")
        # Their hosts, and `*`: names no other takes, other ports included.
        assert {name for name, h in held.items() if h} == {
            "api.anthropic.com",
            "*.pythonhosted.org",
            "any",
        }, held
        protos.to_message(types.ROUTE, config)
        # The SNI checks of routes deciding in Envoy never wait: no person is asked about them.
        sni_checks = _checks(config, routes.SNI_CHECK_FILTER)
        assert sni_checks or config["name"] != resources.TLS_LISTENER, config["name"]
        assert not any("grpc_service" in c for c in sni_checks)
        # A read that sent a body may be asked about: its check waits where the others do.
        sent_held = [
            ("grpc_service" in c, held[vhost["name"]])
            for vhost in config["virtual_hosts"]
            for c in _checks({"virtual_hosts": [vhost]}, routes.SENT_CHECK_FILTER)
        ]
        assert all(waits == should for waits, should in sent_held), config["name"]
        assert any(waits for waits, _ in sent_held), config["name"]
    for held_hosts in (("*",), ("b.pythonhosted.org",)):
        config = resources.route_configurations(
            REVISION, *native, hold_s=30, held_hosts=held_hosts
        )[0]
        held = _held(config, "35s")
        assert held["*.pythonhosted.org"] and held["any"]
        assert held["pypi.org"] == (held_hosts == ("*",))
    # The agent alone: its one virtual host.
    for config in resources.route_configurations(REVISION, hold_s=30, held_hosts=("a.test",)):
        assert _held(config, "35s") == {"any": True}
    # A held request sends nothing: it must not outlast Envoy's stream idle timeout.
    longest = approvals.MAX_TIMEOUT_SECONDS + resources.HOLD_MARGIN_S
    assert longest < resources.DataPlane().stream_idle_timeout_s
    # Without approvals: the filter's own (short) timeout everywhere.
    for config in resources.route_configurations(REVISION, *native):
        assert not any("grpc_service" in c for c in _checks(config))


def _gateway_routes(**kwargs) -> dict:
    engine = RegorusEngine(POLICY)
    tls, plain = (compile_policy(POLICY, engine, tls=t) for t in (True, False))
    *_, gateway_config = resources.route_configurations(
        REVISION, tls, plain, gateway=True, **kwargs
    )
    return gateway_config


def test_the_gateway_refuses_a_tunnel_to_a_host_the_policy_denies_whatever_is_asked():
    """The policy's names get their tunnel (the request inside decides), so do the names its
    catch-all may allow (regional S3 endpoints); any other host's CONNECT gets the policy's
    denial of every request to it, with the policy's revision."""
    config = _gateway_routes()
    assert_golden("xds/routes-gateway.json", config)
    assert protos.to_message(types.ROUTE, config).ignore_port_in_host_matching
    named, unnamed = config["virtual_hosts"]
    assert set(named["domains"]) >= {"pypi.org", "*.pythonhosted.org", "api.anthropic.com"}
    assert "*" not in named["domains"] and unnamed["domains"] == ["*"]
    assert named["routes"][0]["route"]["cluster"] == gateway.TUNNELED
    regional, refused, *others = unnamed["routes"]
    assert regional["route"] == named["routes"][0]["route"]
    [authority] = regional["match"]["headers"]
    assert authority["string_match"]["safe_regex"]["regex"].startswith("(?i)(?:s3\\.")
    assert authority["string_match"]["safe_regex"]["regex"].endswith(":443")
    assert refused["match"] == named["routes"][0]["match"]  # CONNECT to port 443
    verdict = refused["metadata"]["filter_metadata"][routes.METADATA_KEY]
    assert (verdict["allow"], verdict["rule"], verdict["policy_revision"]) == (
        False, "default_deny", REVISION
    )  # fmt: skip
    error = refused["direct_response"]["body_format"]["json_format"]["error"]
    assert error["message"] == (
        "%REQ(:METHOD)% %REQ(:AUTHORITY)% is not allowed by the policy (no rule matches it)"
    )
    # Other ports, plain HTTP, https in the clear: the same in both.
    assert named["routes"][1:] == others


@pytest.mark.parametrize(
    "why", ["the agent judges", "a person may approve", "not one denial", "a body decides"]
)
def test_the_gateway_opens_every_tunnel_when_the_host_alone_does_not_decide(why):
    """The agent judging everything (custom Rego, a pod's own policy), approvals that may
    allow any host (`*`), a catch-all that does not deny every request alike: the request inside
    decides."""
    if why == "the agent judges":
        [*_, config] = resources.route_configurations(REVISION, gateway=True)
    elif why == "a person may approve":
        config = _gateway_routes(hold_s=30, held_hosts=("*",))
    elif why == "a body decides":
        deny = Outcome(False, "d", ": no")
        # Every route denies, but a read that sends a body goes to the agent (the gate).
        reads = (Route(("GET",), deny, bodyless=True), Route(("POST",), deny))
        config = gateway.gateway_routes(NativePolicy(True, (VirtualHost("*", reads),)), ())
    else:
        reads = Route(("GET",), Outcome(True, "r", ": reads"))
        writes = Route(("POST",), Outcome(False, "w", ": no writes"))
        native = NativePolicy(True, (VirtualHost("*", (reads, writes)),))
        config = gateway.gateway_routes(native, (), REVISION)
    [host] = config["virtual_hosts"]
    assert host["domains"] == ["*"] and host["routes"][0]["route"]["cluster"] == gateway.TUNNELED
    assert len(resources.route_configurations(REVISION)) == 2  # no gateway: no routes of its


def test_the_hosts_approvals_name_get_their_tunnels_the_others_none():
    """A person may allow the hosts the approvals name (virtual hosts of their own): their
    tunnels open; a host no entry names still gets no tunnel."""
    policy = parse_policy("allowed_domains: [pypi.org]\napprovals: {hosts: [new.example]}\n")
    native = compile_policy(policy, RegorusEngine(policy), tls=True)
    config = gateway.gateway_routes(native, ("new.example",), policy.revision)
    named, unnamed = config["virtual_hosts"]
    assert {"new.example", "pypi.org"} <= set(named["domains"])
    assert unnamed["routes"][0]["direct_response"]["status"] == 403


def test_every_filter_a_route_turns_on_is_in_the_chain_of_every_listener_using_it(compiled):
    """Envoy ignores a route's setting for a filter its listener lacks: a check a route turns on
    must exist wherever the route is served, the gateway's copies of the listeners included."""
    by_name = {config["name"]: config for config in compiled}
    served = 0
    for dp in (DEFAULT, GATEWAY, CLIENTS):
        for listener in resources.listeners(dp):
            for chain in listener["filter_chains"]:
                manager = chain["filters"][0]["typed_config"]
                config = by_name.get(manager.get("rds", {}).get("route_config_name"))
                if config is None:
                    continue
                served += 1
                chain_filters = {f["name"] for f in manager["http_filters"]}
                for vhost in config["virtual_hosts"]:
                    for route in vhost["routes"]:
                        turned_on = set(route.get("typed_per_filter_config", {}))
                        assert turned_on <= chain_filters, (listener["name"], route["name"])
    assert served >= 6  # both listeners, and the gateway's copies of them
