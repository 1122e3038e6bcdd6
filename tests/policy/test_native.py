"""Compiling the policy into the classes Envoy's routes decide (the whole data path is proved by
tests/integration/test_differential.py; these pin the compiler's own choices)."""

from __future__ import annotations

import dataclasses
import random
import re

import pytest

from intercept_proxy.policy import native
from intercept_proxy.policy.engine import RegorusEngine
from intercept_proxy.policy.input import url_input
from intercept_proxy.policy.model import RegoModule, parse_policy

POLICY = """
allowed_domains: [pypi.org, "*.pythonhosted.org"]
unrestricted_domains: [api.anthropic.com, "*.files.pythonhosted.org"]
github_read_access_enabled: true
github_allowed_repos: [octo/hello]
github_allowed_users: [trusted]
aws_access_enabled: true
aws_allowed_services: [s3]
"""


@pytest.fixture(scope="module")
def compiled() -> native.NativePolicy:
    policy = parse_policy(POLICY)
    return native.compile_policy(policy, RegorusEngine(policy), tls=True)


def host(compiled: native.NativePolicy, domain: str) -> native.VirtualHost:
    return next(h for h in compiled.hosts if h.domain == domain)


def outcomes(vhost: native.VirtualHost, path: str | None = None) -> dict[str, native.Outcome]:
    return {m: r.outcome for r in vhost.routes if r.path == path for m in r.methods}


def test_the_compilers_facts_are_read_from_the_rego():
    facts = native.rego_facts()
    assert "github.com" in facts.github_hosts and "uploads.github.com" in facts.github_api_hosts
    region = re.compile(facts.aws_region)
    assert all(region.fullmatch(r) for r in ("us-east-1", "us-gov-west-1", "eu-isob-east-1"))
    assert not any(region.fullmatch(r) for r in ("mybucket", "us-east", "s3"))


def test_virtual_hosts_most_specific_first_then_any(compiled):
    domains = [h.domain for h in compiled.hosts]
    assert domains[-1] == "*"
    assert {
        "pypi.org",
        "api.anthropic.com",
        "s3.amazonaws.com",
        *native.rego_facts().github_hosts,
    } <= set(domains)
    assert {"*.pythonhosted.org", "*.files.pythonhosted.org"} <= set(domains)


def test_reads_only_domain(compiled):
    got = outcomes(host(compiled, "pypi.org"))
    assert got["GET"] == got["HEAD"]
    assert got["GET"].allow is True and got["GET"].rule == "allowed_domains"
    for method in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        assert got[method].allow is False and got[method].rule == "method_not_allowed"
    # Envoy writes the request's target; the compiled reason is what follows it.
    assert got["GET"].reason == ": pypi.org is in allowed_domains (reads)"


def test_nested_wildcards_are_separate_classes(compiled):
    inner = outcomes(host(compiled, "*.files.pythonhosted.org"))
    outer = outcomes(host(compiled, "*.pythonhosted.org"))
    assert inner["POST"].allow is True and inner["POST"].rule == "unrestricted_domains"
    assert outer["POST"].allow is False


def test_everything_else_is_denied(compiled):
    got = outcomes(host(compiled, "*"))
    assert {o.rule for o in got.values()} == {"default_deny"}


def test_aws_regional_endpoints_are_an_authority_class(compiled):
    regional = [r for r in host(compiled, "*").routes if r.authority is not None]
    assert regional and all(r.outcome.allow for r in regional)
    assert re.fullmatch(regional[0].authority, "s3.eu-west-1.amazonaws.com")
    assert not re.fullmatch(regional[0].authority, "s3.eu-west-1.amazonaws.com.evil.test")
    assert not re.fullmatch(regional[0].authority, "ec2.eu-west-1.amazonaws.com")


def test_github_writes_to_allowed_repositories(compiled):
    api = host(compiled, "api.github.com")
    octo = [r for r in api.routes if r.path and "octo" in r.path and "POST" in r.methods]
    admin, contribution = octo
    assert contribution.outcome.allow is True and contribution.outcome.rule == "github_write"
    assert re.fullmatch(contribution.path, "/repos/OCTO/Hello/issues")
    assert not re.fullmatch(contribution.path, "/repos/octo/hello2/issues")
    # The repository itself and its administration come first, denied by default.
    assert (admin.outcome.allow, admin.outcome.rule) == (False, "github_admin_not_allowed")
    for suffix in ("", "/", "/HOOKS/1", "/branches/feature/x/protection/restrictions",
                   "/actions/secrets/TOKEN", "/pages"):  # fmt: skip
        assert re.fullmatch(admin.path, "/Repos/Octo/Hello" + suffix), suffix
    for suffix in ("/issues", "/pages/builds", "/branches/protection", "/actions/runs"):
        assert not re.fullmatch(admin.path, "/repos/octo/hello" + suffix), suffix
    unjudgeable = next(r for r in api.routes if r.path == native._UNJUDGEABLE)
    assert re.fullmatch(unjudgeable.path, "/repos/octo%2Fhello/issues")
    assert "uploads.github.com" in {h.domain for h in compiled.hosts}


def test_percent_encoded_github_paths_ask_the_agent(compiled):
    """The upstream decodes `%68ooks` into `hooks`: only the agent, which decodes it too, may
    judge such a path."""
    for domain in native.rego_facts().github_hosts | native.rego_facts().github_api_hosts:
        encoded = [r for r in host(compiled, domain).routes if r.path == native._ENCODED]
        assert [r.outcome for r in encoded] == [native.ASK_AGENT]


def test_github_admin_opt_in():
    policy = parse_policy(POLICY + "github_admin_access_enabled: true\n")
    compiled = native.compile_policy(policy, RegorusEngine(policy), tls=True)
    api = host(compiled, "api.github.com")
    admin = next(r for r in api.routes if r.path and "octo" in r.path and "DELETE" in r.methods)
    assert (admin.outcome.allow, admin.outcome.rule) == (True, "github_admin")


def test_a_class_the_representatives_disagree_on_asks_the_agent(compiled):
    github = host(compiled, "github.com")
    discovery = [r for r in github.routes if r.path and r.path.endswith(native.REFS)]
    assert discovery and all(r.outcome == native.ASK_AGENT for r in discovery)


def test_custom_modules_are_for_the_agent_alone():
    policy = parse_policy(POLICY)
    custom = dataclasses.replace(
        policy, rego_modules=(RegoModule("x.rego", "package intercept.custom"),)
    )
    with pytest.raises(ValueError, match="custom Rego modules"):
        native.compile_policy(custom, RegorusEngine(policy), tls=True)


def test_regional_endpoints_no_sample_reaches_ask_the_agent():
    """Wildcards naming every sample region leave the other regions to the `*` class: there, no
    representative exists, so the agent decides (never the generic default route)."""
    regions = ("us-east-1", "eu-west-3", "ap-southeast-2", "us-gov-west-1", "ca-central-1")
    text = (
        "allowed_domains: ["
        + ", ".join(f'"*.{r}.amazonaws.com"' for r in regions)
        + "]\naws_access_enabled: true\naws_allowed_services: [s3]\n"
    )
    policy = parse_policy(text)
    compiled = native.compile_policy(policy, RegorusEngine(policy), tls=True)
    regional = [r for r in host(compiled, "*").routes if r.authority is not None]
    assert [r.outcome for r in regional] == [native.ASK_AGENT]
    assert re.fullmatch(regional[0].authority, "s3.eu-central-2.amazonaws.com")
    # A wildcard that cannot hold an AWS endpoint gets no regional route at all.
    other = parse_policy(
        "allowed_domains: ['*.example.org']\naws_access_enabled: true\naws_allowed_services: [s3]\n"
    )
    compiled = native.compile_policy(other, RegorusEngine(other), tls=True)
    assert not [r for r in host(compiled, "*.example.org").routes if r.authority is not None]


# A quick differential (the real one runs through Envoy: tests/integration/test_differential.py):
# canonical requests matched against the compiled routes as Envoy matches them get the Rego's
# own decision, wherever a route decides.
DIFFERENTIAL_POLICY = """
allowed_domains: [pypi.org, "*.pythonhosted.org", "*.example.com"]
unrestricted_domains: [api.github.com, github.com, "*.corp.test"]
github_read_access_enabled: true
github_allowed_repos: [octo/hello, acme/widgets.js]
github_allowed_users: [trusted]
aws_access_enabled: true
aws_allowed_services: [s3]
"""
HOSTS = ["pypi.org", "files.pythonhosted.org", "x.y.example.com", "api.github.com", "github.com",
         "uploads.github.com", "raw.githubusercontent.com", "db.corp.test", "s3.amazonaws.com",
         "s3.eu-west-1.amazonaws.com", "unknown.test"]  # fmt: skip
REPOS = ["octo/hello", "OCTO/Hello", "acme/widgets.js", "trusted/any", "Trusted/x", "octo/other",
         "evil/repo", "octo/hello.git", "octo/hello-world"]  # fmt: skip
SUFFIXES = ["", "/", "/issues", "/pulls/1/", "/hooks", "/hooks/1/config", "/HOOKS", "/keys/2",
            "/collaborators/u", "/branches/main", "/branches/main/protection",
            "/branches/feature/x/protection/restrictions", "/branches/main/rename", "/pages",
            "/pages/builds", "/actions/secrets/T", "/actions/runs", "/actions/cache/usage",
            "/actions/cache/storage-limit", "/dependabot/secrets", "/environments/prod/secrets",
            "/rulesets/1", "/transfer", "/topics", "/forks", "/properties/values",
            "/security-advisories/GHSA-1/forks", "/security-advisories/GHSA-1", "/%68ooks",
            "/contents/a%2Fb", "/info/refs?service=git-receive-pack",
            "/info/refs?service=git-upload-pack", "/INFO/refs?service=git-receive-pack",
            "/git-receive-pack", "/Git-Receive-Pack/", "/git-upload-pack",
            "/info/refs?x=1&service=git-receive-pack", "/vulnerability-alerts",
            "/automated-security-fixes", "/private-vulnerability-reporting",
            "/immutable-releases", "/interaction-limits", "/invitations/3", "/autolinks",
            "/generate", "/teams", "/tags/protection", "/code-scanning/default-setup",
            "/code-scanning/alerts", "/code-quality/setup", "/agents/variables/x",
            "/codespaces/secrets", "/actions/oidc/customization/sub", "/actions/permissions",
            "/actions/runners/1", "/actions/variables", "/environments"]  # fmt: skip
ODD_PATHS = ["/", "/repos", "/repos/octo", "/graphql", "/user/repos", "/simple/x/"]
GITHUB = ["api.github.com", "github.com", "uploads.github.com"]


def _envoy_route(compiled: native.NativePolicy, method: str, host: str, path: str):
    exact = {h.domain: h for h in compiled.hosts}
    vhost = exact.get(host)
    if vhost is None:
        wildcards = [d for d in exact if d.startswith("*.") and host.endswith(d[1:])]
        vhost = exact[max(wildcards, key=len)] if wildcards else exact["*"]
    for route in vhost.routes:
        if method not in route.methods:
            continue
        if route.path is not None and not re.fullmatch(route.path, path.split("?")[0]):
            continue
        if route.path_and_query is not None and not re.fullmatch(route.path_and_query, path):
            continue
        if route.authority is not None and not re.fullmatch(route.authority, host):
            continue
        return route
    return None


@pytest.mark.parametrize("tls", [True, False])
def test_compiled_routes_decide_as_the_rego_on_canonical_requests(tls):
    policy = parse_policy(DIFFERENTIAL_POLICY)
    engine = RegorusEngine(policy)
    compiled = native.compile_policy(policy, engine, tls=tls)
    paths = ODD_PATHS + [f"/repos/{r}{s}" for r in REPOS for s in SUFFIXES]
    paths += [f"/{r}{s}" for r in REPOS for s in SUFFIXES if s.startswith(("/info", "/git", "/I"))]
    rng = random.Random(20261202)
    checked = asked = 0
    for _ in range(3000):
        method, path = rng.choice(native.METHODS), rng.choice(paths)
        host_name = rng.choice(HOSTS if rng.random() < 0.3 else GITHUB)
        route = _envoy_route(compiled, method, host_name, path)
        assert route is not None, (method, host_name, path)
        if route.outcome.allow is None:
            asked += 1
            continue
        scheme = "https" if tls else "http"
        decision = engine.evaluate(url_input(method, f"{scheme}://{host_name}{path}"))
        target = f"{method} {host_name}:{443 if tls else 80}"
        got = (route.outcome.allow, route.outcome.rule, target + route.outcome.reason)
        assert got == (decision.allow, decision.rule, decision.reason), (method, path)
        checked += 1
    assert checked > 3 * asked  # most canonical requests are Envoy's own
