"""Every policy semantic, as a table of requests and the decision each must get.

The prototype's flaws each have rows: substring and prefix matching of domains and repository
names, Host/SNI mismatch, dot segments, percent-encoded slashes, wildcard apex.
"""

from __future__ import annotations

import pytest

from intercept_proxy.policy.engine import RegorusEngine
from intercept_proxy.policy.input import http_input, url_input
from intercept_proxy.policy.model import load_policy, parse_policy

POLICY = """
allowed_domains:
  [pypi.org, "*.pythonhosted.org", "alt.example.net:8443", "Mixed.Example.ORG.", kernel.org]
unrestricted_domains: [api.anthropic.com, "*.internal.example"]
github_read_access_enabled: true
github_allowed_repos: [octo/hello]
github_allowed_users: [myuser]
aws_access_enabled: true
aws_allowed_services: [s3, bedrock-runtime]
"""


@pytest.fixture(scope="module")
def engine() -> RegorusEngine:
    return RegorusEngine(parse_policy(POLICY, "test.yaml"))


# (method, url, extra headers, sni override, expected allow, expected rule)
CASES = [
    # host normalisation
    ("GET", "https://pypi.org/simple/", [], None, True, "allowed_domains"),
    ("GET", "https://PyPI.ORG/simple/", [], None, True, "allowed_domains"),
    ("GET", "https://pypi.org./simple/", [], None, True, "allowed_domains"),
    ("GET", "https://pypi.org:443/", [], None, True, "allowed_domains"),
    ("GET", "http://pypi.org:80/", [], None, True, "allowed_domains"),
    ("GET", "https://mixed.example.org/", [], None, True, "allowed_domains"),
    ("GET", "https://pypi.org../", [], None, False, "invalid_host"),
    # never a substring, prefix or suffix match (prototype flaw)
    ("GET", "https://evilpypi.org/", [], None, False, "default_deny"),
    ("GET", "https://pypi.org.evil.test/", [], None, False, "default_deny"),
    ("GET", "https://pypi.organic.test/", [], None, False, "default_deny"),
    ("GET", "https://sub.pypi.org/", [], None, False, "default_deny"),
    # wildcards: any depth, never the apex (prototype flaw)
    ("GET", "https://files.pythonhosted.org/x", [], None, True, "allowed_domains"),
    ("GET", "https://a.b.c.pythonhosted.org/x", [], None, True, "allowed_domains"),
    ("GET", "https://pythonhosted.org/x", [], None, False, "default_deny"),
    ("GET", "https://evilpythonhosted.org/x", [], None, False, "default_deny"),
    ("DELETE", "https://db.internal.example/x", [], None, True, "unrestricted_domains"),
    # methods
    ("HEAD", "https://pypi.org/", [], None, True, "allowed_domains"),
    ("POST", "https://pypi.org/legacy/", [], None, False, "method_not_allowed"),
    ("PUT", "https://files.pythonhosted.org/x", [], None, False, "method_not_allowed"),
    ("OPTIONS", "https://pypi.org/", [], None, False, "method_not_allowed"),
    # reads send nothing: no body, no protocol upgrade (a WebSocket is a two-way channel)
    (
        "GET",
        "https://pypi.org/",
        ["Upgrade: websocket", "Connection: Upgrade"],
        None,
        False,
        "not_read_only",
    ),
    ("GET", "https://pypi.org/", ["Content-Length: 3"], None, False, "not_read_only"),
    ("GET", "https://pypi.org/", ["Transfer-Encoding: chunked"], None, False, "not_read_only"),
    ("GET", "https://pypi.org/", ["Content-Length: 0"], None, True, "allowed_domains"),
    ("GET", "https://github.com/x/y", ["Upgrade: websocket"], None, False, "default_deny"),
    (
        "GET",
        "https://api.anthropic.com/ws",
        ["Upgrade: websocket"],
        None,
        True,
        "unrestricted_domains",
    ),
    ("POST", "https://api.anthropic.com/v1/messages", [], None, True, "unrestricted_domains"),
    ("PATCH", "https://api.anthropic.com/v1/x", [], None, True, "unrestricted_domains"),
    # ports
    ("GET", "https://pypi.org:8443/", [], None, False, "port_not_allowed"),
    ("GET", "http://pypi.org:8080/", [], None, False, "port_not_allowed"),
    ("GET", "https://alt.example.net:8443/", [], None, True, "allowed_domains"),
    ("GET", "https://alt.example.net/", [], None, False, "port_not_allowed"),
    ("GET", "https://pypi.org:0/", [], None, False, "invalid_host"),
    ("GET", "https://pypi.org:99999/", [], None, False, "invalid_host"),
    ("GET", "https://pypi.org:0443/", [], None, False, "invalid_host"),
    # IP literals, empty and non-ASCII hosts
    ("GET", "https://93.184.216.34/", [], None, False, "invalid_host"),
    ("GET", "http://2130706433/", [], None, False, "invalid_host"),
    ("GET", "http://0x7f.1/", [], None, False, "invalid_host"),
    ("GET", "https://[2001:db8::1]/", [], None, False, "invalid_host"),
    ("GET", "https://[2001:db8::1]:443/", [], None, False, "invalid_host"),
    ("GET", "https://pypi.org/", ["Host: "], None, False, "invalid_host"),
    ("GET", "https://pypí.org/", [], None, False, "invalid_host"),
    ("GET", "https://kernel.org/", [], None, True, "allowed_domains"),
    # a Kelvin sign lower-cases to "k": non-ASCII is judged before lower-casing
    ("GET", "https://\u212aernel.org/", [], None, False, "invalid_host"),
    ("GET", "https://kernel.org/", [], "\u212aernel.org", False, "invalid_host"),
    ("GET", "https://xn--pyp-ana.org/", [], None, False, "default_deny"),
    # TLS identity: the SNI is the identity (prototype flaw: Host trusted over SNI)
    ("GET", "https://pypi.org/", ["Host: api.anthropic.com"], None, False, "sni_mismatch"),
    ("POST", "https://pypi.org/", ["Host: api.anthropic.com"], None, False, "sni_mismatch"),
    ("GET", "https://evil.test/", ["Host: pypi.org"], None, False, "sni_mismatch"),
    ("GET", "https://pypi.org/", [], "", False, "missing_sni"),
    ("GET", "https://pypi.org/", [], "PYPI.org.", True, "allowed_domains"),
    ("GET", "https://pypi.org/", ["Host: PYPI.ORG:443"], None, True, "allowed_domains"),
    # GitHub reads
    ("GET", "https://github.com/octo/other", [], None, True, "github_read"),
    ("GET", "https://api.github.com/repos/x/y", [], None, True, "github_read"),
    ("HEAD", "https://raw.githubusercontent.com/x/y/main/f", [], None, True, "github_read"),
    ("GET", "https://codeload.github.com/x/y/tar.gz/main", [], None, True, "github_read"),
    ("GET", "https://objects.githubusercontent.com/x", [], None, True, "github_read"),
    ("GET", "https://gist.github.com/x", [], None, False, "default_deny"),
    ("GET", "https://github.com.evil.test/x", [], None, False, "default_deny"),
    (
        "GET",
        "https://github.com/x/y.git/info/refs?service=git-upload-pack",
        [],
        None,
        True,
        "github_read",
    ),
    ("POST", "https://github.com/x/y.git/git-upload-pack", [], None, True, "github_read"),
    ("POST", "https://github.com/x/y/git-upload-pack", [], None, True, "github_read"),
    ("POST", "https://api.github.com/graphql", [], None, False, "default_deny"),
    # GitHub writes: allowed repositories and users only
    ("POST", "https://api.github.com/repos/octo/hello/issues", [], None, True, "github_write"),
    ("PUT", "https://api.github.com/repos/Octo/HELLO/contents/f", [], None, True, "github_write"),
    (
        "DELETE",
        "https://api.github.com/repos/myuser/any/git/refs/x",
        [],
        None,
        True,
        "github_write",
    ),
    (
        "POST",
        "https://api.github.com/repos/octo/other/issues",
        [],
        None,
        False,
        "github_write_not_allowed",
    ),
    (
        "GET",
        "https://github.com/octo/hello.git/info/refs?service=git-receive-pack",
        [],
        None,
        True,
        "github_write",
    ),
    (
        "GET",
        "https://github.com/octo/hello/info/refs?service=git-receive-pack",
        [],
        None,
        True,
        "github_write",
    ),
    ("POST", "https://github.com/octo/hello.git/git-receive-pack", [], None, True, "github_write"),
    ("POST", "https://github.com/octo/hello/git-receive-pack", [], None, True, "github_write"),
    (
        "GET",
        "https://github.com/octo/other.git/info/refs?service=git-receive-pack",
        [],
        None,
        False,
        "github_write_not_allowed",
    ),
    (
        "GET",
        "https://github.com/octo/other/info/refs?a=1&service=git%2Dreceive-pack",
        [],
        None,
        False,
        "github_write_not_allowed",
    ),
    (
        "GET",
        "https://github.com/octo/other/info/refs?%73ervice=git-receive-pack",
        [],
        None,
        False,
        "github_write_not_allowed",
    ),
    (
        "GET",
        "https://github.com/octo/other/info/refs?service=git-upload-pack",
        [],
        None,
        True,
        "github_read",
    ),
    (
        "POST",
        "https://github.com/octo/other.git/git-receive-pack",
        [],
        None,
        False,
        "github_write_not_allowed",
    ),
    # the repository itself is administration (settings, rename, visibility, deletion)
    (
        "DELETE",
        "https://api.github.com/repos/octo/hello",
        [],
        None,
        False,
        "github_admin_not_allowed",
    ),
    (
        "PATCH",
        "https://api.github.com/repos/octo/hello/",
        [],
        None,
        False,
        "github_admin_not_allowed",
    ),
    # repository names match whole segments (prototype flaw: prefix match)
    (
        "POST",
        "https://api.github.com/repos/octo/hello-world/issues",
        [],
        None,
        False,
        "github_write_not_allowed",
    ),
    (
        "POST",
        "https://api.github.com/repos/octo/hell/issues",
        [],
        None,
        False,
        "github_write_not_allowed",
    ),
    (
        "POST",
        "https://api.github.com/repos/octocat/hello/issues",
        [],
        None,
        False,
        "github_write_not_allowed",
    ),
    (
        "POST",
        "https://api.github.com/repos/myuser2/x/issues",
        [],
        None,
        False,
        "github_write_not_allowed",
    ),
    (
        "POST",
        "https://github.com/octo/hello.git.evil/git-receive-pack",
        [],
        None,
        False,
        "github_write_not_allowed",
    ),
    # dot segments, duplicate slashes, queries (prototype flaw: raw path judged)
    (
        "POST",
        "https://api.github.com/repos/octo/hello/../../evil/repo/issues",
        [],
        None,
        False,
        "github_write_not_allowed",
    ),
    (
        "POST",
        "https://api.github.com/repos/evil/repo/../../octo/hello/issues",
        [],
        None,
        True,
        "github_write",
    ),
    (
        "POST",
        "https://api.github.com/repos/octo/hello/%2e%2e/%2E%2E/evil/repo/issues",
        [],
        None,
        False,
        "github_write_not_allowed",
    ),
    ("POST", "https://api.github.com//repos//octo//hello//issues", [], None, True, "github_write"),
    (
        "POST",
        "https://api.github.com/repos/evil/repo/issues?x=/repos/octo/hello/",
        [],
        None,
        False,
        "github_write_not_allowed",
    ),
    # percent-encoded slashes and backslashes are rejected (prototype flaw)
    ("POST", "https://api.github.com/repos/octo%2Fhello/x/issues", [], None, False, "invalid_path"),
    (
        "POST",
        "https://api.github.com/repos/octo/hello%2F..%2F..%2Fevil/issues",
        [],
        None,
        False,
        "invalid_path",
    ),
    ("POST", "https://github.com/octo%5chello/git-receive-pack", [], None, False, "invalid_path"),
    # AWS
    ("PUT", "https://s3.amazonaws.com/bucket/key", [], None, True, "aws"),
    (
        "POST",
        "https://bedrock-runtime.us-east-1.amazonaws.com/model/x/invoke",
        [],
        None,
        True,
        "aws",
    ),
    ("GET", "https://ec2.amazonaws.com/", [], None, False, "default_deny"),
    ("GET", "https://bucket.s3.us-east-1.amazonaws.com/", [], None, False, "default_deny"),
    ("GET", "https://s3.us-gov-west-1.amazonaws.com/", [], None, True, "aws"),
    # {bucket}.s3.amazonaws.com is an S3 bucket named like an allowed service, not the service
    ("PUT", "https://bedrock-runtime.s3.amazonaws.com/x", [], None, False, "default_deny"),
    ("PUT", "https://s3.s3-accelerate.amazonaws.com/x", [], None, False, "default_deny"),
    ("PUT", "https://s3.dualstack.amazonaws.com/x", [], None, False, "default_deny"),
    ("GET", "https://s3.amazonaws.com.evil.test/", [], None, False, "default_deny"),
    ("GET", "https://evils3.amazonaws.com/", [], None, False, "default_deny"),
    # methods are case-sensitive (RFC 9110): `get` is not GET, so it is no read
    ("get", "https://pypi.org/", [], None, False, "method_not_allowed"),
    ("Get", "https://pypi.org/", [], None, False, "method_not_allowed"),
    ("head", "https://github.com/octo/hello", [], None, False, "default_deny"),
    ("post", "https://github.com/octo/hello.git/git-upload-pack", [], None, False, "default_deny"),
    ("delete", "https://api.anthropic.com/x", [], None, True, "unrestricted_domains"),
    # ... nor a write the github_* keys grant, but a write to a repository all the same
    ("post", "https://api.github.com/repos/octo/hello/issues", [], None, False, "default_deny"),
    (
        "post",
        "https://api.github.com/repos/octo/other/issues",
        [],
        None,
        False,
        "github_write_not_allowed",
    ),
    # everything else
    ("GET", "https://unknown.test/", [], None, False, "default_deny"),
]


@pytest.mark.parametrize(("method", "url", "headers", "sni", "allow", "rule"), CASES)
def test_decision(engine, method, url, headers, sni, allow, rule):
    decision = engine.evaluate(url_input(method, url, headers, sni))
    assert (decision.allow, decision.rule) == (allow, rule), decision.reason
    assert decision.reason


def test_reasons_say_what_to_change(engine):
    d = engine.evaluate(url_input("POST", "https://api.github.com/repos/octo/other/pulls"))
    assert "add octo/other to github_allowed_repos or octo to github_allowed_users" in d.reason
    d = engine.evaluate(url_input("GET", "https://pypi.org:8443/"))
    assert "list 'pypi.org:8443' to allow it" in d.reason
    d = engine.evaluate(url_input("PUT", "https://pypi.org/"))
    assert "permits only GET and HEAD" in d.reason


def test_a_body_seen_by_envoy_makes_a_get_no_read(engine):
    # HTTP/2 carries a body without content-length; Envoy hands the agent its first byte.
    doc = url_input("GET", "https://pypi.org/")
    doc["attributes"]["request"]["http"]["rawBody"] = "eA=="
    assert engine.evaluate(doc).rule == "not_read_only"


def test_plain_http_has_no_sni_check(engine):
    assert engine.evaluate(url_input("GET", "http://pypi.org/")).allow


def test_https_scheme_without_tls_session_is_missing_sni(engine):
    # An absolute-form https:// target sent over a plain connection carries no SNI.
    doc = http_input(method="GET", host="pypi.org", path="/", scheme="https", headers={}, sni=None)
    assert engine.evaluate(doc).rule == "missing_sni"


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"attributes": None},
        {"attributes": {"request": {"http": {}}}},
        {"attributes": {"request": {"http": {"method": "GET", "host": 5, "path": "/"}}}},
        {"attributes": {"request": {"http": {"method": "GET", "host": "pypi.org", "path": []}}}},
    ],
)
def test_unknown_or_malformed_input_is_denied(engine, doc):
    decision = engine.evaluate(doc)
    assert decision.allow is False
    assert decision.rule in ("invalid_request", "evaluation_error")


def test_empty_policy_denies_everything():
    engine = RegorusEngine(parse_policy("{}"))
    for url in ("https://pypi.org/", "https://github.com/", "https://s3.amazonaws.com/"):
        assert engine.evaluate(url_input("GET", url)).rule == "default_deny"


# GitHub writes are decided by the github_* keys alone, whatever else matches the host.
GRANTS_EVERYTHING = """
allowed_domains: [github.com, "*.github.com"]
unrestricted_domains: [api.github.com, github.com, uploads.github.com]
github_read_access_enabled: true
github_allowed_repos: [octo/hello]
"""


@pytest.mark.parametrize(
    ("method", "url", "rule"),
    [
        # a push's first step, allowed as a read by allowed_domains before
        ("GET", "https://github.com/octo/other.git/info/refs?service=git-receive-pack",
         "github_write_not_allowed"),
        ("HEAD", "https://github.com/octo/other/info/refs?service=git-receive-pack",
         "github_write_not_allowed"),
        ("POST", "https://github.com/octo/other/info/refs?service=git-receive-pack",
         "github_write_not_allowed"),
        ("POST", "https://github.com/octo/other.git/git-receive-pack", "github_write_not_allowed"),
        ("PUT", "https://github.com/octo/other/git-receive-pack", "github_write_not_allowed"),
        ("POST", "https://api.github.com/repos/octo/other/issues", "github_write_not_allowed"),
        ("DELETE", "https://api.github.com/repos/octo/other", "github_write_not_allowed"),
        ("PATCH", "https://api.github.com/Repos/Octo/Other/pulls/1", "github_write_not_allowed"),
        ("PROPPATCH", "https://api.github.com/repos/octo/other/x", "github_write_not_allowed"),
        ("post", "https://api.github.com/repos/octo/other/issues", "github_write_not_allowed"),
        ("POST", "https://uploads.github.com/repos/octo/other/releases/1/assets",
         "github_write_not_allowed"),
        ("POST", "https://api.github.com/repos/octo%2Fother/issues", "invalid_path"),
        ("POST", "https://api.github.com/repos/octo/hell%6f/../other/issues",
         "github_write_not_allowed"),
        # administration of an allowed repository needs its own opt-in
        ("DELETE", "https://api.github.com/repos/octo/hello", "github_admin_not_allowed"),
        ("POST", "https://api.github.com/repos/octo/hello/hooks", "github_admin_not_allowed"),
        ("PATCH", "https://api.github.com/repos/octo/hello/%68ooks/1", "github_admin_not_allowed"),
        # what stays with the other grants: reads, and GitHub paths that name no repository
        ("GET", "https://github.com/octo/other/info/refs?service=git-upload-pack",
         "allowed_domains"),
        ("POST", "https://github.com/octo/other/git-upload-pack", "github_read"),
        ("GET", "https://api.github.com/repos/octo/other/hooks", "allowed_domains"),
        ("OPTIONS", "https://api.github.com/repos/octo/other/issues", "unrestricted_domains"),
        ("POST", "https://api.github.com/graphql", "unrestricted_domains"),
        ("POST", "https://api.github.com/user/repos", "unrestricted_domains"),
        ("POST", "https://api.github.com/repos/octo/hello/issues", "github_write"),
        ("POST", "https://github.com/octo/hello.git/git-receive-pack", "github_write"),
    ],
)  # fmt: skip
def test_github_writes_whatever_other_grant_matches(method, url, rule):
    engine = RegorusEngine(parse_policy(GRANTS_EVERYTHING))
    decision = engine.evaluate(url_input(method, url))
    assert decision.rule == rule, decision.reason
    granted = {"allowed_domains", "github_read", "github_write", "unrestricted_domains"}
    assert decision.allow is (rule in granted)


def test_a_custom_allow_cannot_grant_a_github_write(tmp_path):
    (tmp_path / "allow.rego").write_text(
        "package intercept.custom\n"
        'allow contains {"rule": "everything", "reason": "all of it"} if true\n'
    )
    path = tmp_path / "p.yaml"
    path.write_text("github_allowed_repos: [octo/hello]\nrego_modules: [allow.rego]\n")
    engine = RegorusEngine(load_policy(path))
    other = engine.evaluate(url_input("POST", "https://api.github.com/repos/octo/other/issues"))
    assert other.rule == "github_write_not_allowed"
    admin = engine.evaluate(url_input("DELETE", "https://api.github.com/repos/octo/hello"))
    assert admin.rule == "github_admin_not_allowed"
    assert engine.evaluate(url_input("POST", "https://api.github.com/graphql")).allow


# Administration: what needs the repository's admin role on GitHub (its "Administration"
# permission), and its webhooks, secrets and variables (docs/policy.md lists them).
ADMIN_PATHS = [
    ("PATCH", ""), ("DELETE", ""), ("POST", "/transfer"), ("POST", "/hooks"),
    ("PATCH", "/hooks/1/config"), ("POST", "/hooks/1/deliveries/2/attempts"), ("POST", "/keys"),
    ("DELETE", "/keys/1"), ("PUT", "/collaborators/someone"), ("PATCH", "/invitations/1"),
    ("PUT", "/branches/main/protection"),
    ("POST", "/branches/release/v1/protection/enforce_admins"),
    ("DELETE", "/branches/main/protection/restrictions/users"), ("POST", "/rulesets"),
    ("PUT", "/rulesets/1"), ("PUT", "/environments/prod"),
    ("PUT", "/environments/prod/secrets/TOKEN"), ("POST", "/environments/prod/variables"),
    ("POST", "/environments/prod/deployment-branch-policies"), ("PUT", "/actions/secrets/TOKEN"),
    ("POST", "/actions/variables"), ("PUT", "/actions/permissions"),
    ("PUT", "/actions/permissions/workflow"), ("POST", "/actions/runners/registration-token"),
    ("DELETE", "/actions/runners/1"), ("PUT", "/actions/oidc/customization/sub"),
    ("PUT", "/actions/cache/retention-limit"), ("PUT", "/dependabot/secrets/TOKEN"),
    ("PUT", "/codespaces/secrets/TOKEN"), ("PUT", "/agents/secrets/TOKEN"),
    ("POST", "/agents/variables"), ("POST", "/pages"), ("PUT", "/pages"), ("DELETE", "/pages"),
    ("POST", "/autolinks"), ("PUT", "/vulnerability-alerts"),
    ("DELETE", "/automated-security-fixes"), ("PUT", "/private-vulnerability-reporting"),
    ("PATCH", "/code-scanning/default-setup"), ("PATCH", "/code-quality/setup"),
    ("PUT", "/interaction-limits"), ("PATCH", "/interaction-limits/pulls/creation-cap"),
    ("PUT", "/teams"), ("PATCH", "/properties/values"), ("POST", "/tags/protection"),
    ("PUT", "/immutable-releases"), ("PUT", "/topics"), ("POST", "/forks"), ("POST", "/generate"),
    ("POST", "/security-advisories/GHSA-xxxx/forks"), ("PUT", "/HOOKS"),
]  # fmt: skip
CONTRIBUTION_PATHS = [
    ("POST", "/issues"), ("PATCH", "/pulls/1"), ("PUT", "/pulls/1/merge"),
    ("PUT", "/contents/README.md"), ("DELETE", "/git/refs/heads/x"), ("POST", "/releases"),
    ("POST", "/branches/main/rename"), ("POST", "/pages/builds"), ("POST", "/dispatches"),
    ("DELETE", "/actions/caches"), ("POST", "/actions/workflows/ci.yml/dispatches"),
    ("PATCH", "/code-scanning/alerts/1"), ("POST", "/security-advisories"),
    ("POST", "/statuses/abc"), ("PUT", "/branches/protection"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "suffix"), ADMIN_PATHS)
def test_administration_needs_the_opt_in(method, suffix):
    url = f"https://api.github.com/repos/octo/hello{suffix}"
    denied = RegorusEngine(parse_policy("github_allowed_repos: [octo/hello]"))
    decision = denied.evaluate(url_input(method, url))
    assert (decision.allow, decision.rule) == (False, "github_admin_not_allowed")
    assert "set github_admin_access_enabled: true" in decision.reason
    opted_in = RegorusEngine(
        parse_policy("github_allowed_users: [octo]\ngithub_admin_access_enabled: true")
    )
    decision = opted_in.evaluate(url_input(method, url))
    assert (decision.allow, decision.rule) == (True, "github_admin")
    # Reading the same endpoint is a read.
    reader = RegorusEngine(parse_policy("github_read_access_enabled: true"))
    assert reader.evaluate(url_input("GET", url)).rule == "github_read"


@pytest.mark.parametrize(("method", "suffix"), CONTRIBUTION_PATHS)
def test_contribution_is_no_administration(method, suffix):
    url = f"https://api.github.com/repos/octo/hello{suffix}"
    engine = RegorusEngine(parse_policy("github_allowed_repos: [octo/hello]"))
    assert engine.evaluate(url_input(method, url)).rule == "github_write"
