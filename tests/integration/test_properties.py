"""For any policy and any requests, the routes compiled from the policy decide as the Rego does.

Hypothesis generates both: policies from overlapping entries (exact names, wildcards at several
depths, ports, GitHub and AWS settings on and off) and requests to the hosts and paths those
entries are about, with their traps. Each policy goes through the real Envoy twice, compiled into
routes and judged by the agent, as in the differential test (which holds one rich policy fixed).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from intercept_proxy.policy.native import METHODS
from tests.integration.test_differential import PATHS, gate_may_mark, judged_both_ways

pytestmark = pytest.mark.netns

ENTRIES = (
    "pypi.org", "*.pythonhosted.org", "files.pythonhosted.org", "*.files.pythonhosted.org",
    "example.com:8443", "*.example.net", "*.deep.example.net", "deep.example.net",
    "*.us-east-1.amazonaws.com", "s3.amazonaws.com", "github.com", "api.github.com",
    "uploads.github.com", "*.github.com", "*.githubusercontent.com", "api.anthropic.com",
)  # fmt: skip
HOSTS = (
    "pypi.org", "files.pythonhosted.org", "a.files.pythonhosted.org", "x.pythonhosted.org",
    "example.com", "x.example.net", "x.deep.example.net", "deep.example.net",
    "s3.us-east-1.amazonaws.com", "sts.us-east-1.amazonaws.com", "s3.eu-west-3.amazonaws.com",
    "s3.amazonaws.com", "sts.amazonaws.com", "bucket.s3.amazonaws.com", "github.com",
    "api.github.com", "uploads.github.com", "gist.github.com", "raw.githubusercontent.com",
    "api.anthropic.com", "unknown.example",
)  # fmt: skip


@st.composite
def policies(draw: st.DrawFn) -> str:
    entries = draw(st.lists(st.sampled_from(ENTRIES), max_size=6, unique=True))
    unrestricted = draw(st.lists(st.booleans(), min_size=len(entries), max_size=len(entries)))
    lines = [
        f"allowed_domains: {[e for e, u in zip(entries, unrestricted, strict=True) if not u]}",
        f"unrestricted_domains: {[e for e, u in zip(entries, unrestricted, strict=True) if u]}",
    ]
    if draw(st.booleans()):
        repos = draw(st.lists(st.sampled_from(["octo/hello", "Acme/Widgets"]), unique=True))
        users = draw(st.lists(st.sampled_from(["trusted", "octo"]), unique=True, max_size=1))
        admin = bool(repos or users) and draw(st.booleans())
        lines += [
            "github_read_access_enabled: true",
            f"github_allowed_repos: {repos}",
            f"github_allowed_users: {users}",
            # Administration needs repositories or users to apply to (the model says so).
            f"github_admin_access_enabled: {str(admin).lower()}",
        ]
    services = draw(st.lists(st.sampled_from(["s3", "sts"]), unique=True))
    if services:
        lines += ["aws_access_enabled: true", f"aws_allowed_services: {services}"]
    return "\n".join(lines).replace("'", '"') + "\n"


@st.composite
def requests(draw: st.DrawFn) -> dict[str, object]:
    host = draw(st.sampled_from(HOSTS))
    tls = draw(st.booleans())
    request: dict[str, object] = {
        "tls": tls,
        "host": host,
        "method": draw(st.sampled_from(METHODS)),
        "path": draw(st.sampled_from(PATHS)),
    }
    if tls:
        request["sni"] = host
    return request


@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,  # the same examples in every run: a failure is reproduced by re-running
    database=None,  # nothing written into the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(policy=policies(), corpus=st.lists(requests(), min_size=40, max_size=40))
def test_any_policy_compiled_into_routes_decides_as_the_rego(interceptor, policy, corpus):
    native = judged_both_ways(interceptor, policy, corpus)
    by_envoy = [q for q, r in zip(corpus, native, strict=True) if r["judge"] == "envoy"]
    assert not [q for q in by_envoy if not gate_may_mark(q)]
    # The routes decide most of these canonical requests: the property is about them.
    assert len(by_envoy) >= len(corpus) // 2, (policy, len(by_envoy))
