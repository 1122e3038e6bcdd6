"""Compiling the policy into the classes Envoy's routes decide (the whole data path is proved by
tests/integration/test_differential.py; these pin the compiler's own choices)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from intercept_proxy.policy import native
from intercept_proxy.policy.engine import RegorusEngine, builtin_rego
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


def test_github_hosts_and_aws_regions_are_the_regos():
    rego = builtin_rego()
    block = re.search(r"github_read_hosts := \{(.*?)\}", rego, re.S)
    assert block is not None
    assert set(re.findall(r'"([^"]+)"', block.group(1))) == set(native.GITHUB_HOSTS)
    assert native.AWS_REGION in rego


def test_virtual_hosts_most_specific_first_then_any(compiled):
    domains = [h.domain for h in compiled.hosts]
    assert domains[-1] == "*"
    assert {"pypi.org", "api.anthropic.com", "s3.amazonaws.com", *native.GITHUB_HOSTS} <= set(
        domains
    )
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
    repo = next(r for r in api.routes if r.path and "octo" in r.path and "POST" in r.methods)
    assert repo.outcome.allow is True
    assert re.fullmatch(repo.path, "/repos/OCTO/Hello/issues")
    assert not re.fullmatch(repo.path, "/repos/octo/hello2/issues")
    assert not re.fullmatch(repo.path, "/repos/octo/hello")  # nothing below the repository
    unjudgeable = next(r for r in api.routes if r.path == native._UNJUDGEABLE)
    assert re.fullmatch(unjudgeable.path, "/repos/octo%2Fhello/issues")


def test_a_class_the_representatives_disagree_on_asks_the_agent(compiled):
    github = host(compiled, "github.com")
    discovery = [r for r in github.routes if r.path and r.path.endswith(r"/info/refs/?")]
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
