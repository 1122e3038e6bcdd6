"""A snapshot names only what it holds (go-control-plane's Snapshot.Consistent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from intercept_proxy.agent.main import AgentError, build_snapshot
from intercept_proxy.xds.bootstrap import STATIC_CLUSTERS
from intercept_proxy.xds.consistency import inconsistencies, references
from intercept_proxy.xds.resources import (
    DataPlane,
    Extras,
    clusters,
    listeners,
    route_configurations,
)

CA = Path("/etc/ssl/certs/ca-certificates.crt").read_text()


def resources() -> tuple[list[dict], list[dict], list[dict]]:
    dp = DataPlane()
    return clusters(dp, CA), listeners(dp), route_configurations("r1")


def test_what_the_agent_generates_is_consistent():
    assert inconsistencies(*resources(), STATIC_CLUSTERS) == []


def test_a_route_configuration_a_listener_asks_for_must_exist():
    cs, ls, rs = resources()
    missing = rs[0]["name"]
    asking = [lst["name"] for lst in ls if missing in references(lst, "route_config_name")]
    assert asking, "some listener asks for it over RDS"
    assert inconsistencies(cs, ls, rs[1:], STATIC_CLUSTERS) == [
        f"listener {name} asks for route configuration {missing}" for name in asking
    ]


def test_a_cluster_a_listener_or_a_route_sends_to_must_exist():
    cs, ls, rs = resources()
    for gone in sorted({*references(ls, "cluster_name"), *references(rs, "cluster")}):
        problems = inconsistencies([c for c in cs if c["name"] != gone], ls, rs, STATIC_CLUSTERS)
        assert problems, gone
        assert all(p.endswith(f"sends to cluster {gone}") for p in problems)


def test_the_agent_refuses_to_publish_an_inconsistent_snapshot():
    routes = route_configurations("r1")
    with pytest.raises(AgentError, match="asks for route configuration"):
        build_snapshot(DataPlane(), CA, routes[1:], Extras(), ())
