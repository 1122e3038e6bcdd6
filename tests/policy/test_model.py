"""Policy files are validated whole: every error names the file, the key and the problem."""

from __future__ import annotations

import pytest

from intercept_proxy.policy.model import (
    PolicyError,
    granting,
    load_policy,
    parse_domain,
    parse_policy,
)

PROTOTYPE_POLICY = """
allowed_domains: [github.com, pypi.org]
unrestricted_domains: [api.anthropic.com]
github_read_access_enabled: true
github_allowed_users: [myuser]
github_allowed_repos: [myorg/myrepo]
aws_access_enabled: false
aws_allowed_services: []
"""


def test_prototype_keys_are_accepted_unchanged():
    policy = parse_policy(PROTOTYPE_POLICY, "p.yaml")
    assert [d.host for d in policy.allowed_domains] == ["github.com", "pypi.org"]
    assert policy.github_allowed_repos == ("myorg/myrepo",)
    assert policy.github_read_access_enabled is True


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("allowed_domain: [pypi.org]", "allowed_domain", "unknown key"),
        ("allowed_domains: pypi.org", "allowed_domains", "expected a list, got str"),
        ("allowed_domains: [pypi.org, 5]", "allowed_domains[1]", "expected a string"),
        ("allowed_domains: ['exa mple.com']", "allowed_domains[0]", "invalid label"),
        ("allowed_domains: ['https://pypi.org']", "allowed_domains[0]", "is a URL"),
        ("allowed_domains: ['pypi.org/simple']", "allowed_domains[0]", "is a URL"),
        ("allowed_domains: ['*example.com']", "allowed_domains[0]", "wildcard"),
        ("allowed_domains: ['ex*.com']", "allowed_domains[0]", "wildcard"),
        ("allowed_domains: ['*']", "allowed_domains[0]", "wildcard"),
        ("allowed_domains: ['*.com']", "allowed_domains[0]", "top-level domain"),
        ("allowed_domains: ['1.2.3.4']", "allowed_domains[0]", "IP address literal"),
        ("allowed_domains: ['[::1]']", "allowed_domains[0]", "IP address literal"),
        ("allowed_domains: ['pypi.org:0']", "allowed_domains[0]", "invalid port"),
        ("allowed_domains: ['pypi.org:http']", "allowed_domains[0]", "invalid port"),
        ("allowed_domains: ['']", "allowed_domains[0]", "not a domain"),
        ("allowed_domains: [' pypi.org']", "allowed_domains[0]", "not a domain"),
        ("allowed_domains: ['pypí.org']", "allowed_domains[0]", "not ASCII"),
        ("unrestricted_domains: ['-bad.com']", "unrestricted_domains[0]", "invalid label"),
        ("github_read_access_enabled: 'yes'", "github_read_access_enabled", "true or false"),
        ("aws_access_enabled: 1", "aws_access_enabled", "true or false"),
        ("github_admin_access_enabled: 'no'", "github_admin_access_enabled", "true or false"),
        (
            "github_admin_access_enabled: true",
            "github_admin_access_enabled",
            "applies only to the repositories in github_allowed_repos and github_allowed_users",
        ),
        ("github_allowed_repos: [myrepo]", "github_allowed_repos[0]", "owner/repository"),
        ("github_allowed_repos: [a/b/c]", "github_allowed_repos[0]", "owner/repository"),
        ("github_allowed_repos: ['a/..']", "github_allowed_repos[0]", "owner/repository"),
        ("github_allowed_users: ['my user']", "github_allowed_users[0]", "GitHub user"),
        ('github_allowed_users: ["octo\\n"]', "github_allowed_users[0]", "GitHub user"),
        ('github_allowed_repos: ["octo/hello\\n"]', "github_allowed_repos[0]", "owner/repository"),
        ("aws_allowed_services: ['S3 ']", "aws_allowed_services[0]", "AWS service"),
        ("rego_modules: [missing.rego]", "rego_modules[0]", "cannot read"),
        ("credentials: {host: a.test}", "credentials", "expected a list"),
        ("credentials: [a.test]", "credentials[0]", "expected a mapping"),
        ("credentials: [{env: K}]", "credentials[0].host", "expected a host name"),
        ("credentials: [{host: 'https://a.test', env: K}]", "credentials[0].host", "is a URL"),
        ("credentials: [{host: 'a.test:8443', env: K}]", "credentials[0].host", "port 443 only"),
        ("credentials: [{host: a.test}]", "credentials[0]", "exactly one of env"),
        ("credentials: [{host: a.test, env: K, file: /k}]", "credentials[0]", "exactly one of env"),
        ("credentials: [{host: a.test, env: 'K-1'}]", "credentials[0].env", "not an environment"),
        ("credentials: [{host: a.test, file: k}]", "credentials[0].file", "not an absolute path"),
        ("credentials: [{host: a.test, env: K, header: host}]", "credentials[0].header", "not a"),
        (
            "credentials: [{host: a.test, env: K, header: x-intercept-protocol}]",
            "credentials[0].header",
            "not a header",
        ),
        (
            "credentials: [{host: a.test, env: K, scheme: digest}]",
            "credentials[0].scheme",
            "one of",
        ),
        (
            "credentials: [{host: a.test, env: K, placeholder: 'a b'}]",
            "credentials[0].placeholder",
            "no spaces",
        ),
        ("credentials: [{host: a.test, env: K, token: x}]", "credentials[0].token", "unknown key"),
        (
            "aws_signing: [{host: a.test, service: S3, region: r}]",
            "aws_signing[0].service",
            "e.g. s3",
        ),
        ("aws_signing: [{host: a.test, service: s3}]", "aws_signing[0].region", "e.g. us-east-1"),
        (
            "aws_signing: [{host: 'a.test:80', service: s3, region: r}]",
            "aws_signing[0].host",
            "443",
        ),
        (
            "aws_signing: [{host: a.test, service: s3, region: r, session_token_env: 1x}]",
            "aws_signing[0].session_token_env",
            "not an environment variable name",
        ),
        (
            "credentials: [{host: '*.a.test', env: K}]\n"
            "aws_signing: [{host: b.a.test, service: s3, region: r}]",
            "aws_signing[0]",
            "b.a.test: its authorization header is already *.a.test's",
        ),
        ("approvals: [a.test]", "approvals", "expected a mapping"),
        ("approvals: {hosts: []}", "approvals.hosts", "expected a list of hosts (or '*')"),
        ("approvals: {hosts: ['*.com']}", "approvals.hosts[0]", "whole top-level domain"),
        ("approvals: {hosts: [1]}", "approvals.hosts[0]", "expected a string"),
        (
            "approvals: {hosts: ['*'], timeout_seconds: 241}",
            "approvals.timeout_seconds",
            "1 to 240",
        ),
        ("approvals: {hosts: ['*'], ask: true}", "approvals.ask", "unknown key"),
        ("budgets: [{host: a.test}]", "budgets[0]", "name a budget"),
        ("budgets: [{host: a.test, requests: 0}]", "budgets[0].requests", "above 0"),
        ("budgets: [{host: a.test, upload_bytes: 1.5}]", "budgets[0].upload_bytes", "above 0"),
        ("budgets: [{host: a.test, requests: 1, bytes: 2}]", "budgets[0].bytes", "unknown key"),
        (
            "budgets: [{host: '*.a.test', requests: 1}, {host: b.a.test, requests: 2}]",
            "budgets[1]",
            "b.a.test is already *.a.test's budget",
        ),
        ("rate_limits: [{host: a.test}]", "rate_limits[0].requests_per_minute", "whole number"),
        (
            "rate_limits: [{host: a.test, requests_per_minute: 0}]",
            "rate_limits[0].requests_per_minute",
            "from 1 to",
        ),
        (
            "rate_limits: [{host: a.test, requests_per_minute: '5'}]",
            "rate_limits[0].requests_per_minute",
            "whole number",
        ),
        (
            "rate_limits: [{host: 'a.test:80', requests_per_minute: 5}]",
            "rate_limits[0].host",
            "port",
        ),
        (
            "rate_limits: [{host: a.test, requests_per_minute: 5, burst: 2}]",
            "rate_limits[0].burst",
            "unknown key",
        ),
        (
            "rate_limits: [{host: a.test, requests_per_minute: 5},"
            " {host: a.test, requests_per_minute: 6}]",
            "rate_limits[1]",
            "a second rate limit for a.test",
        ),
        (
            "credentials: [{host: '*.a.test', env: K}, {host: b.a.test, env: L}]",
            "credentials[1]",
            "the one for *.a.test covers it",
        ),
        (
            "credentials: [{host: x.a.test, env: K}, {host: '*.a.test', env: L}]",
            "credentials[1]",
            "the one for x.a.test covers it",
        ),
        (
            "credentials: [{host: a.test, env: K}, {host: A.test, file: /k}]",
            "credentials[1]",
            "a second credential for a.test in header authorization",
        ),
    ],
)
def test_invalid_policies_name_file_key_and_problem(text, key, message, tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as e:
        load_policy(path)
    assert e.value.source == str(path)
    assert e.value.key == key
    assert message in e.value.message
    assert str(e.value).startswith(f"{path}: {key}: ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the policy is empty"),
        ("- a\n- b", "expected a mapping"),
        ("allowed_domains: [a\n", "invalid YAML"),
        ("allowed_domains: []\nallowed_domains: [pypi.org]\n", "duplicate key 'allowed_domains'"),
    ],
)
def test_invalid_documents(text, message):
    with pytest.raises(PolicyError) as e:
        parse_policy(text, "p.yaml")
    assert message in str(e.value)
    assert str(e.value).startswith("p.yaml")


def test_yaml_errors_carry_line_and_column():
    with pytest.raises(PolicyError) as e:
        parse_policy("allowed_domains:\n  - pypi.org\n  bad: [\n", "p.yaml")
    assert str(e.value).startswith("p.yaml:3:")


def test_unreadable_file():
    with pytest.raises(PolicyError, match="cannot read the policy"):
        load_policy(__import__("pathlib").Path("/nonexistent/p.yaml"))


def test_domains_are_normalised():
    entry = parse_domain("*.Example.COM.:8443")
    assert (entry.host, entry.wildcard, entry.port, entry.entry) == (
        "example.com",
        True,
        8443,
        "*.example.com.:8443",
    )


def test_repository_names_are_normalised():
    policy = parse_policy("github_allowed_repos: [Octo/Hello.git]")
    assert policy.github_allowed_repos == ("octo/hello",)


def test_revision_changes_with_content_only():
    a = parse_policy("allowed_domains: [pypi.org]", "a.yaml")
    b = parse_policy("allowed_domains: [PYPI.org]", "b.yaml")
    c = parse_policy("allowed_domains: [files.pythonhosted.org]", "a.yaml")
    assert a.revision == b.revision
    assert a.revision != c.revision


def test_github_administration_is_an_explicit_opt_in():
    assert parse_policy("github_allowed_repos: [octo/hello]").github_admin_access_enabled is False
    policy = parse_policy("github_allowed_repos: [octo/hello]\ngithub_admin_access_enabled: true")
    assert policy.github_admin_access_enabled is True
    assert policy.to_data()["intercept_policy"]["github_admin_access_enabled"] is True


def test_credentials_defaults_and_revision():
    policy = parse_policy(
        "credentials: [{host: '*.Example.org', env: TOKEN},"
        " {host: a.test, header: X-Key, file: /k}]"
    )
    bearer, raw = policy.credentials
    assert (bearer.host, bearer.header, bearer.scheme) == (
        "*.example.org",
        "authorization",
        "bearer",
    )
    assert (raw.host, raw.header, raw.scheme, raw.file) == ("a.test", "x-key", "none", "/k")
    assert bearer.placeholder == raw.placeholder == "intercept-proxy-placeholder"
    assert bearer.header_value("s3cr3t-value") == "Bearer s3cr3t-value"
    basic = parse_policy("credentials: [{host: a.test, env: K, scheme: basic}]").credentials[0]
    assert basic.header_value("user:password") == "Basic dXNlcjpwYXNzd29yZA=="
    # Credentials change what goes upstream: a policy with them is another revision.
    assert policy.revision != parse_policy("{}").revision


@pytest.mark.parametrize(
    "text",
    [
        "credentials: [{host: a.test, env: K}]",
        "rate_limits: [{host: a.test, requests_per_minute: 1}]",
        "budgets: [{host: a.test, requests: 1}]",
        "approvals: {hosts: ['*']}",
        "aws_signing: [{host: a.test, service: s3, region: r}]",
    ],
)
def test_a_pod_policy_names_no_credential_rate_limit_budget_or_approval(text):
    with pytest.raises(PolicyError, match="not allowed in a pod's policy"):
        parse_policy(text, modules=False)


def test_approvals_are_data_for_the_policy_and_a_revision_of_their_own():
    policy = parse_policy("approvals: {hosts: ['*', '*.a.test', 'b.test:8443']}")
    approvals = policy.approvals
    assert approvals is not None and approvals.any_host and approvals.timeout_seconds == 60
    assert [e.entry for e in approvals.hosts] == ["*.a.test", "b.test:8443"]
    assert policy.to_data()["intercept_policy"]["approvals"]["any_host"] is True
    # Without approvals, the data (and every revision before them) is what it was.
    assert "approvals" not in parse_policy("{}").to_data()["intercept_policy"]
    longer = parse_policy(
        "approvals: {hosts: ['*', '*.a.test', 'b.test:8443'], timeout_seconds: 9}"
    )
    assert len({policy.revision, longer.revision, parse_policy("{}").revision}) == 3


def test_granting_adds_an_entry_once():
    policy = parse_policy("allowed_domains: [a.test]")
    granted = granting(
        policy, (("allowed_domains", "a.test"), ("unrestricted_domains", "b.test:8443"))
    )
    assert [e.entry for e in granted.allowed_domains] == ["a.test"]
    assert [e.entry for e in granted.unrestricted_domains] == ["b.test:8443"]
    assert granted.revision != policy.revision
    assert granting(policy, ()) is policy
    with pytest.raises(ValueError, match="a grant goes in allowed_domains or unrestricted_domains"):
        granting(policy, (("budgets", "a.test"),))
    with pytest.raises(ValueError, match="is a URL"):
        granting(policy, (("allowed_domains", "https://a.test"),))
