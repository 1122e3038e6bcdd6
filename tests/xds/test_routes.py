"""The listeners' routes, from the compiled policy: golden files, protobuf parsing, and the
invariants that keep Envoy's own decisions and the agent's apart."""

from __future__ import annotations

import pytest

from intercept_proxy.policy.engine import RegorusEngine
from intercept_proxy.policy.model import parse_policy
from intercept_proxy.policy.native import compile_policy
from intercept_proxy.xds import protos, resources, routes, types
from tests.golden import assert_golden

POLICY = parse_policy(
    """
allowed_domains: [pypi.org, "*.pythonhosted.org"]
unrestricted_domains: [api.anthropic.com]
github_read_access_enabled: true
github_allowed_repos: [octo/hello]
aws_access_enabled: true
aws_allowed_services: [s3]
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
    )


def test_compiled_routes_golden(compiled):
    assert_golden("xds/routes-compiled.json", compiled)


def test_agent_routes_golden():
    assert_golden("xds/routes-agent.json", resources.route_configurations(REVISION))


def test_every_route_configuration_parses_as_protobuf(compiled):
    for config in [*compiled, *resources.route_configurations(REVISION)]:
        assert protos.to_message(types.ROUTE, config).name == config["name"]


def test_unmarked_requests_always_reach_the_agent_first(compiled):
    for config in compiled:
        for vhost in config["virtual_hosts"]:
            first = vhost["routes"][0]
            assert first["name"] == "unmarked"
            assert first["match"]["headers"][0]["name"] == routes.NATIVE_HEADER
            assert "disabled" not in str(first.get("typed_per_filter_config"))


def test_envoy_decisions_skip_ext_authz_and_carry_their_decision(compiled):
    for config in compiled:
        for vhost in config["virtual_hosts"]:
            for route in vhost["routes"]:
                decision = route["metadata"]["filter_metadata"][routes.METADATA_KEY]
                per_filter = route["typed_per_filter_config"]["envoy.filters.http.ext_authz"]
                if route.get("direct_response") or per_filter.get("disabled"):
                    assert decision["allow"] in (True, False)
                    assert decision["judge"] == "envoy"
                    assert per_filter.get("disabled") is True
                else:  # the agent decides; if it cannot answer, the log says so
                    expected = {**routes.NO_DECISION.__dict__, "judge": "none"}
                    assert decision == {**expected, "policy_revision": REVISION}


def test_a_policy_compiled_for_one_listener_is_refused_for_the_other():
    compiled_tls = compile_policy(POLICY, RegorusEngine(POLICY), tls=True)
    with pytest.raises(ValueError, match="other listener"):
        routes.route_configuration("x", "c", compiled_tls, REVISION, tls=False)
